//! Outages as phones have them, played on a network (the user-space proxy or the packet-level
//! emulator) while a publisher keeps publishing to a `Resilient` subscriber behind it: once for
//! 2, 5, 10 or 30 s, several short times in a row, or a handover (a new local address while the
//! path's delay and loss change at once). Shared by `tests/blackout.rs` (proxy) and
//! `benches/outages.rs` (emulator), so both measure and check the same thing: the subscriber
//! holds every message published, in order, exactly once, without a `NotRecovered`.

use std::time::{Duration, Instant};

use edgerelay::client::resilient::{Reconnect, Resilient, ResilientEvent};
use edgerelay::client::{Client, ClientOptions, Target};
use edgerelay::proto::Payload;
use netsim::Profile;

/// Published per scenario, spread evenly over the outage pattern.
pub const MESSAGES: u64 = 100;
/// How long the subscriber gets to catch up once the network is back.
pub const CATCH_UP: Duration = Duration::from_secs(30);
/// How the error of a subscriber not caught up within [`CATCH_UP`] starts (what it holds is
/// still right: a bench reports it as a time over 30 s, not as a broken guarantee).
pub const NOT_CAUGHT_UP: &str = "not caught up";

/// Where the outage happens: what a test can switch off and on, or hand over.
pub trait Network {
    fn set_blackout(&self, on: bool);
    /// Every link gets `to`'s parameters, and the client a new address.
    fn handover(&self, to: Profile);
}

impl Network for netsim::Proxy {
    fn set_blackout(&self, on: bool) {
        netsim::Proxy::set_blackout(self, on);
    }

    fn handover(&self, to: Profile) {
        netsim::Proxy::handover(self, to);
    }
}

impl Network for netsim::ns::Emulator {
    fn set_blackout(&self, on: bool) {
        netsim::ns::Emulator::set_blackout(self, on);
    }

    fn handover(&self, to: Profile) {
        netsim::ns::Emulator::handover(self, to).expect("the client's new address");
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outage {
    /// The network gone once, this long.
    Blackout(Duration),
    /// `count` outages of `dark`, `light` apart.
    Repeated { count: u32, dark: Duration, light: Duration },
    /// Half way through, the path becomes the named profile's and the client moves to a new
    /// socket (its address changes).
    Handover(&'static str),
    /// The network gone this long, everything published in its first [`QUIET_AFTER`]: a fade
    /// in a quiet moment, through which the relay's probe timer backs off (publishing all
    /// through an outage re-arms it at its base value with every new packet).
    QuietFade(Duration),
}

/// How long publishing lasts in an [`Outage::QuietFade`].
pub const QUIET_AFTER: Duration = Duration::from_millis(500);

impl Outage {
    /// Five outages of 1.5 s, 1 s apart.
    pub const REPEATED: Outage =
        Outage::Repeated { count: 5, dark: Duration::from_millis(1_500), light: Duration::from_millis(1_000) };

    /// How long the pattern lasts.
    pub fn span(self) -> Duration {
        match self {
            Outage::Blackout(dark) | Outage::QuietFade(dark) => dark,
            Outage::Repeated { count, dark, light } => dark * count + light * count.saturating_sub(1),
            Outage::Handover(_) => Duration::from_secs(4),
        }
    }

    /// A short label for tables.
    pub fn label(self) -> String {
        match self {
            Outage::Blackout(dark) => format!("{} s", dark.as_secs_f64()),
            Outage::Repeated { count, dark, light } => {
                format!("{count} x {} s, {} s apart", dark.as_secs_f64(), light.as_secs_f64())
            }
            Outage::Handover(to) => format!("handover to {to}"),
            Outage::QuietFade(dark) => format!("{} s, quiet", dark.as_secs_f64()),
        }
    }

    /// How long publishing lasts: the whole pattern but for a quiet fade.
    fn publishing(self) -> Duration {
        match self {
            Outage::QuietFade(_) => QUIET_AFTER,
            _ => self.span(),
        }
    }

    /// Plays the pattern on `network`; returns when the network was last back (or changed).
    /// With `hook` the subscriber is told at once, as an app's path monitor would.
    async fn play(self, network: &impl Network, subscriber: &Resilient, hook: bool) -> Instant {
        let back = |network: &dyn Fn()| {
            network();
            let at = Instant::now();
            // Marks the return in a trace (`NETSIM_LOG`).
            tracing::info!(hook, "network back");
            if hook {
                subscriber.network_changed();
            }
            at
        };
        match self {
            Outage::Blackout(dark) | Outage::QuietFade(dark) => {
                network.set_blackout(true);
                tokio::time::sleep(dark).await;
                back(&|| network.set_blackout(false))
            }
            Outage::Repeated { count, dark, light } => {
                let mut at = Instant::now();
                for k in 0..count {
                    network.set_blackout(true);
                    tokio::time::sleep(dark).await;
                    at = back(&|| network.set_blackout(false));
                    if k + 1 < count {
                        tokio::time::sleep(light).await;
                    }
                }
                at
            }
            Outage::Handover(to) => {
                tokio::time::sleep(self.span() / 2).await;
                back(&|| network.handover(Profile::named(to).expect("profile")))
            }
        }
    }
}

/// What a scenario measured.
pub struct Outcome {
    /// From the network's return (the handover), or the last ack when later, to holding every
    /// message.
    pub caught_up: Duration,
    /// Whether the subscriber's connection dropped (and it resumed on a new one).
    pub dropped: bool,
}

/// A `Resilient` subscriber at `target` (fast reconnects), joined to `room` once it holds a
/// position there.
pub async fn subscribe(target: Target, options: ClientOptions, room: &str) -> Result<Resilient, String> {
    let reconnect =
        Reconnect { base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1), ..Reconnect::default() };
    let subscriber = Resilient::start(target, options, reconnect);
    subscriber.join(room);
    // A setup deadline, not a measurement: the wait ends at the join. Generous, because a
    // starved 2-core machine running several of these scenarios at once once took over 20 s.
    let joined = tokio::time::timeout(Duration::from_secs(60), async {
        while subscriber.positions().get(room).is_none_or(Option::is_none) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    joined.map_err(|_| "subscriber never joined")?;
    Ok(subscriber)
}

/// Publishes [`MESSAGES`] to `room` spread over `outage` (its first [`QUIET_AFTER`] for a quiet
/// fade), which plays on `network` meanwhile,
/// and checks that `subscriber` then holds them all, in order, once each.
pub async fn run(
    network: &impl Network,
    subscriber: &mut Resilient,
    publisher: &Client,
    room: &str,
    outage: Outage,
    hook: bool,
) -> Result<Outcome, String> {
    let start = Instant::now();
    let mut last_ack = start;
    let publishing = async {
        let mut acked = Vec::new();
        for i in 0..MESSAGES {
            let position =
                publisher.publish(room, &format!("m{i}"), Payload::from("1")).await.map_err(|e| e.to_string())?;
            acked.push(position.offset);
            last_ack = Instant::now();
            let next = start + outage.publishing().mul_f64((i + 1) as f64 / MESSAGES as f64);
            tokio::time::sleep_until(next.into()).await;
        }
        Ok::<_, String>(acked)
    };
    let (acked, back) = tokio::join!(publishing, outage.play(network, subscriber, hook));
    let acked = acked?;
    // Measured from the network's return (the handover), or from the last ack if publishing
    // ran later than planned (a busy machine): what was published after the return is live.
    let back = back.max(last_ack);

    let mut dropped = false;
    let mut received = Vec::new();
    let caught_up = tokio::time::timeout(CATCH_UP, async {
        while received.len() < acked.len() {
            match subscriber.next_event().await {
                Some(ResilientEvent::Message(m)) => received.push(m.position.offset),
                Some(ResilientEvent::Disconnected { .. }) => dropped = true,
                Some(ResilientEvent::NotRecovered { room, position }) => {
                    return Err(format!("not recovered in {room} at {position:?}"));
                }
                Some(ResilientEvent::Connected { .. }) => {}
                None => return Err("subscriber stopped".to_string()),
            }
        }
        Ok(back.elapsed())
    })
    .await
    .map_err(|_| {
        format!("{NOT_CAUGHT_UP} {CATCH_UP:?} after the network came back: {} of {}", received.len(), MESSAGES)
    })??;
    if received != acked {
        return Err(format!("received {received:?}, acked {acked:?}"));
    }
    // Nothing after the last: a duplicate would show up here.
    if let Ok(Some(ResilientEvent::Message(extra))) =
        tokio::time::timeout(Duration::from_millis(300), subscriber.next_event()).await
    {
        return Err(format!("unexpected delivery after the last message: {extra:?}"));
    }
    Ok(Outcome { caught_up, dropped })
}
