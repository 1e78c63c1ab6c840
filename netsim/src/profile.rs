//! Named network profiles: the link parameters of common mobile and wireless paths.
//!
//! Each profile is a pair of [`LinkConfig`]s, `up` (client to relay) and `down` (relay to
//! client), plus blackout and rebinding schedules. The figures and where each comes from are in
//! `docs/netsim.md`; many are estimates, and the doc says which. Keep the two in step.

use std::time::Duration;

use crate::model::{LinkConfig, Loss};
use crate::schedule::{Blackouts, Rebinds};

/// A named set of impairments.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub name: String,
    pub up: LinkConfig,
    pub down: LinkConfig,
    pub blackouts: Blackouts,
    pub rebinds: Rebinds,
}

/// The names [`Profile::named`] knows, in the order `netsim profiles` lists them.
pub const NAMES: [&str; 9] = ["none", "wifi", "wifi-lossy", "5g", "4g", "3g", "satellite", "edge-of-cell", "train"];

const fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

const MBIT: u64 = 1_000_000;

/// One direction: `delay ± jitter`, a bottleneck of `rate_bps` with `buffer` of queueing at that
/// rate, the given loss, and a 1500-byte MTU.
fn link(delay: Duration, jitter: Duration, loss: Loss, rate_bps: u64, buffer: Duration) -> LinkConfig {
    let queue_bytes = (u128::from(rate_bps) * buffer.as_millis() / 8 / 1000) as usize;
    LinkConfig {
        delay,
        jitter,
        loss,
        reorder: 0.0,
        reorder_gap: Duration::ZERO,
        duplicate: 0.0,
        rate_bps: Some(rate_bps),
        queue_bytes: queue_bytes.max(64 * 1024),
        mtu: Some(1500),
    }
}

impl Profile {
    /// A profile that changes nothing, under a name.
    pub fn perfect(name: &str) -> Profile {
        Profile {
            name: name.into(),
            up: LinkConfig::perfect(),
            down: LinkConfig::perfect(),
            blackouts: Blackouts::none(),
            rebinds: Rebinds::none(),
        }
    }

    /// The profile called `name` (see [`NAMES`]).
    pub fn named(name: &str) -> Option<Profile> {
        let symmetric = |link: LinkConfig| (link.clone(), link);
        let (up, down) = match name {
            "none" => return Some(Profile::perfect("none")),
            "wifi" => symmetric(link(ms(4), ms(2), Loss::Random(0.002), 50 * MBIT, ms(50))),
            "wifi-lossy" => {
                let loss =
                    Loss::GilbertElliott { good_to_bad: 0.02, bad_to_good: 0.3, loss_good: 0.005, loss_bad: 0.5 };
                let link = LinkConfig {
                    reorder: 0.005,
                    reorder_gap: ms(10),
                    duplicate: 0.001,
                    ..link(ms(8), ms(8), loss, 10 * MBIT, ms(100))
                };
                symmetric(link)
            }
            "5g" => (
                link(ms(12), ms(3), Loss::Random(0.001), 40 * MBIT, ms(50)),
                link(ms(12), ms(3), Loss::Random(0.001), 200 * MBIT, ms(50)),
            ),
            "4g" => {
                let shape = |rate| LinkConfig {
                    reorder: 0.001,
                    reorder_gap: ms(5),
                    ..link(ms(30), ms(8), Loss::Random(0.005), rate, ms(200))
                };
                (shape(8 * MBIT), shape(20 * MBIT))
            }
            "3g" => (
                link(ms(80), ms(20), Loss::Random(0.01), MBIT / 2, ms(1000)),
                link(ms(80), ms(20), Loss::Random(0.01), 2 * MBIT, ms(1000)),
            ),
            "satellite" => (
                link(ms(300), ms(15), Loss::Random(0.005), 3 * MBIT, ms(500)),
                link(ms(300), ms(15), Loss::Random(0.005), 25 * MBIT, ms(500)),
            ),
            "edge-of-cell" => {
                let loss = Loss::GilbertElliott { good_to_bad: 0.03, bad_to_good: 0.2, loss_good: 0.01, loss_bad: 0.6 };
                let shape = |rate| LinkConfig {
                    reorder: 0.01,
                    reorder_gap: ms(20),
                    duplicate: 0.002,
                    mtu: Some(1380),
                    ..link(ms(50), ms(30), loss, rate, ms(500))
                };
                (shape(MBIT / 4), shape(MBIT))
            }
            "train" => {
                let loss =
                    Loss::GilbertElliott { good_to_bad: 0.01, bad_to_good: 0.25, loss_good: 0.005, loss_bad: 0.4 };
                let shape = |rate| LinkConfig {
                    reorder: 0.002,
                    reorder_gap: ms(10),
                    ..link(ms(40), ms(15), loss, rate, ms(300))
                };
                let blackouts = Blackouts::periodic(ms(1000), ms(15_000), ms(2000));
                return Some(Profile {
                    name: name.into(),
                    up: shape(4 * MBIT),
                    down: shape(10 * MBIT),
                    blackouts,
                    rebinds: Rebinds::none(),
                });
            }
            _ => return None,
        };
        Some(Profile { name: name.into(), up, down, blackouts: Blackouts::none(), rebinds: Rebinds::none() })
    }

    /// Every named profile.
    pub fn all() -> Vec<Profile> {
        NAMES.iter().filter_map(|name| Profile::named(name)).collect()
    }

    /// One line per direction, for `netsim profiles` and logs.
    pub fn describe(&self) -> String {
        let mut out = format!("{}:\n", self.name);
        for (dir, link) in [("up", &self.up), ("down", &self.down)] {
            let rate = link.rate_bps.map_or("unlimited".to_owned(), |r| format!("{:.2} Mbit/s", r as f64 / 1e6));
            out.push_str(&format!(
                "  {dir:<4} delay {:?} ± {:?}, loss {:.2}%, rate {rate}, queue {} KiB, reorder {:.1}%, dup {:.1}%, mtu {}\n",
                link.delay,
                link.jitter,
                link.loss.mean() * 100.0,
                if link.queue_bytes == usize::MAX { 0 } else { link.queue_bytes / 1024 },
                link.reorder * 100.0,
                link.duplicate * 100.0,
                link.mtu.map_or("none".to_owned(), |m| m.to_string()),
            ));
        }
        if let Some(p) = self.blackouts.periodic {
            out.push_str(&format!("  blackout {:?} every {:?}, first at {:?}\n", p.duration, p.every, p.first));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves_and_names_itself() {
        for name in NAMES {
            let profile = Profile::named(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(profile.name, name);
            let description = profile.describe();
            assert!(description.starts_with(&format!("{name}:\n")), "{description}");
        }
        assert_eq!(Profile::all().len(), NAMES.len());
        assert!(Profile::named("dialup").is_none());
    }

    #[test]
    fn profiles_are_plausible() {
        for profile in Profile::all() {
            for link in [&profile.up, &profile.down] {
                assert!(link.loss.mean() < 0.1, "{}", profile.name);
                // QUIC needs 1200-byte datagrams to pass.
                assert!(link.mtu.is_none_or(|m| m >= 1280), "{}", profile.name);
                assert!(link.delay >= link.jitter, "{}", profile.name);
            }
        }
        let train = Profile::named("train").unwrap();
        assert!(train.blackouts.active(Duration::from_millis(1500)).is_some());
    }
}
