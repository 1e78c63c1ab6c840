//! The impairment model for one direction of a link: what happens to each packet.
//!
//! Pure logic. Time comes in as a [`Duration`] since the simulation started, randomness from a
//! seeded RNG, so a run can be replayed exactly and tested with plain values. The proxies and the
//! namespace emulator feed it packets and carry out its verdicts.
//!
//! A packet goes through the stages a real path has, in this order:
//! 1. blackout (no coverage: dropped),
//! 2. MTU clamp (too big for the path: dropped, as a router with DF set would),
//! 3. the bottleneck: a bandwidth cap with a byte-bounded FIFO in front of it (tail drop when
//!    full; a packet queued there leaves after the packets ahead of it have been serialised),
//! 4. loss on the air (random or bursty Gilbert-Elliott; a lost packet still used the link),
//! 5. propagation delay with jitter, and reordering (a packet held back so later ones pass it),
//! 6. duplication (a second copy right behind the first).
//!
//! The TCP proxy carries a byte stream, not packets, over a loopback TCP connection that never
//! loses anything; [`LinkModel::decide_stream`] maps the same model onto it: nothing is dropped
//! or duplicated, a segment the model loses arrives one round trip late (the retransmission),
//! and bytes keep their order, so everything behind a late segment waits for it
//! (head-of-line blocking, which is what loss does to TCP).

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::schedule::Blackouts;

/// How packets get lost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    None,
    /// Each packet independently, with this probability.
    Random(f64),
    /// Gilbert-Elliott: a two-state Markov chain (good, bad) stepped once per packet, each state
    /// with its own loss probability. The mean time spent in the bad state is `1 / bad_to_good`
    /// packets, so losses come in bursts, as they do on radio links in a fade.
    GilbertElliott {
        good_to_bad: f64,
        bad_to_good: f64,
        loss_good: f64,
        loss_bad: f64,
    },
}

impl Loss {
    /// The long-run fraction of packets lost.
    pub fn mean(&self) -> f64 {
        match *self {
            Loss::None => 0.0,
            Loss::Random(p) => p,
            Loss::GilbertElliott { good_to_bad, bad_to_good, loss_good, loss_bad } => {
                let total = good_to_bad + bad_to_good;
                if total <= 0.0 {
                    return loss_good;
                }
                (bad_to_good * loss_good + good_to_bad * loss_bad) / total
            }
        }
    }
}

/// One direction of a link.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkConfig {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Each packet's delay is uniform in `delay ± jitter` (never below zero).
    pub jitter: Duration,
    pub loss: Loss,
    /// Probability that a packet is held back by `reorder_gap`, so later packets overtake it.
    pub reorder: f64,
    pub reorder_gap: Duration,
    /// Probability that a packet arrives twice.
    pub duplicate: f64,
    /// Bottleneck rate in bits per second; `None` is unlimited.
    pub rate_bps: Option<u64>,
    /// Bytes the bottleneck queue holds before it tail-drops.
    pub queue_bytes: usize,
    /// Largest packet that passes; `None` is unlimited.
    pub mtu: Option<usize>,
}

impl LinkConfig {
    /// A link that changes nothing.
    pub fn perfect() -> Self {
        LinkConfig {
            delay: Duration::ZERO,
            jitter: Duration::ZERO,
            loss: Loss::None,
            reorder: 0.0,
            reorder_gap: Duration::ZERO,
            duplicate: 0.0,
            rate_bps: None,
            queue_bytes: usize::MAX,
            mtu: None,
        }
    }

    /// Time to serialise `len` bytes at the bottleneck rate.
    fn serialisation(&self, len: usize) -> Duration {
        match self.rate_bps {
            Some(rate) if rate > 0 => {
                let nanos = (len as u128 * 8 * 1_000_000_000) / u128::from(rate);
                Duration::from_nanos(nanos.min(u128::from(u64::MAX)) as u64)
            }
            _ => Duration::ZERO,
        }
    }
}

/// Why a packet did not arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    Blackout,
    Mtu,
    Queue,
    Loss,
}

/// What becomes of one packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Arrives at `at`; a second copy arrives at `duplicate` if set.
    Deliver {
        at: Duration,
        duplicate: Option<Duration>,
    },
    Drop(DropReason),
}

/// The state of one direction of a link: its RNG, the loss chain and the bottleneck queue.
#[derive(Debug)]
pub struct LinkModel {
    config: LinkConfig,
    blackouts: Blackouts,
    rng: StdRng,
    /// Gilbert-Elliott state.
    bad: bool,
    /// When the bottleneck finishes sending what is queued.
    link_free_at: Duration,
    /// Stream mode: when the previous segment arrived (arrivals keep order).
    stream_last: Duration,
}

impl LinkModel {
    pub fn new(config: LinkConfig, blackouts: Blackouts, seed: u64) -> Self {
        LinkModel {
            config,
            blackouts,
            rng: StdRng::seed_from_u64(seed),
            bad: false,
            link_free_at: Duration::ZERO,
            stream_last: Duration::ZERO,
        }
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Changes the link from now on (a path that gets congested or frees up). Packets already
    /// in the bottleneck queue keep their departure times; the loss chain keeps its state.
    pub fn set_config(&mut self, config: LinkConfig) {
        self.config = config;
    }

    /// Decides the fate of a packet of `len` bytes offered at `now`.
    pub fn decide(&mut self, now: Duration, len: usize) -> Fate {
        if self.blackouts.active(now).is_some() {
            return Fate::Drop(DropReason::Blackout);
        }
        if self.config.mtu.is_some_and(|mtu| len > mtu) {
            return Fate::Drop(DropReason::Mtu);
        }
        let Some(departs) = self.enqueue(now, len) else {
            return Fate::Drop(DropReason::Queue);
        };
        if self.lost() {
            return Fate::Drop(DropReason::Loss);
        }
        let mut at = departs + self.propagation();
        if self.config.reorder > 0.0 && self.rng.random_bool(self.config.reorder.clamp(0.0, 1.0)) {
            at += self.config.reorder_gap;
        }
        let duplicate = (self.config.duplicate > 0.0 && self.rng.random_bool(self.config.duplicate.clamp(0.0, 1.0)))
            .then_some(at + Duration::from_micros(10));
        Fate::Deliver { at, duplicate }
    }

    /// Stream mode: when a segment of `len` bytes read at `now` arrives. Never drops: the queue
    /// is bounded by the caller's backpressure, a lost segment arrives a round trip late, and a
    /// segment due inside a blackout arrives when it ends. Returns the arrival time and whether
    /// the segment was lost (and so retransmitted).
    pub fn decide_stream(&mut self, now: Duration, len: usize) -> (Duration, bool) {
        let mut at = self.occupy(now, len) + self.propagation();
        let lost = self.lost();
        if lost {
            at += self.retransmission();
        }
        let at = self.blackouts.clear_at(at.max(self.stream_last));
        self.stream_last = at;
        (at, lost)
    }

    /// What a loss costs a TCP stream: about one round trip (fast retransmit), at least 1 ms.
    fn retransmission(&self) -> Duration {
        (self.config.delay * 2 + self.config.jitter).max(Duration::from_millis(1))
    }

    /// Bytes waiting in the bottleneck queue at `now`.
    fn queued_bytes(&self, now: Duration) -> usize {
        let Some(rate) = self.config.rate_bps.filter(|&r| r > 0) else {
            return 0;
        };
        let backlog = self.link_free_at.saturating_sub(now).as_nanos();
        (backlog * u128::from(rate) / 8 / 1_000_000_000).min(usize::MAX as u128) as usize
    }

    /// Puts a packet in the bottleneck queue; returns when its last bit leaves, or `None` when the
    /// queue is full.
    fn enqueue(&mut self, now: Duration, len: usize) -> Option<Duration> {
        if self.config.rate_bps.is_some() && self.queued_bytes(now).saturating_add(len) > self.config.queue_bytes {
            return None;
        }
        Some(self.occupy(now, len))
    }

    /// Sends `len` bytes through the bottleneck after what it already holds; returns when the
    /// last bit leaves (`now` on an unlimited link).
    fn occupy(&mut self, now: Duration, len: usize) -> Duration {
        if self.config.rate_bps.is_none() {
            return now;
        }
        self.link_free_at = self.link_free_at.max(now) + self.config.serialisation(len);
        self.link_free_at
    }

    fn lost(&mut self) -> bool {
        match self.config.loss {
            Loss::None => false,
            Loss::Random(p) => self.rng.random_bool(p.clamp(0.0, 1.0)),
            Loss::GilbertElliott { good_to_bad, bad_to_good, loss_good, loss_bad } => {
                let p = if self.bad { loss_bad } else { loss_good };
                let lost = self.rng.random_bool(p.clamp(0.0, 1.0));
                let flip = if self.bad { bad_to_good } else { good_to_bad };
                if self.rng.random_bool(flip.clamp(0.0, 1.0)) {
                    self.bad = !self.bad;
                }
                lost
            }
        }
    }

    /// Delay plus jitter, uniform in `delay ± jitter`, never negative.
    fn propagation(&mut self) -> Duration {
        let jitter = self.config.jitter.as_nanos() as i128;
        if jitter == 0 {
            return self.config.delay;
        }
        let offset = self.rng.random_range(-jitter..=jitter);
        let nanos = (self.config.delay.as_nanos() as i128 + offset).max(0);
        Duration::from_nanos(nanos as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Window;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn model(config: LinkConfig, seed: u64) -> LinkModel {
        LinkModel::new(config, Blackouts::none(), seed)
    }

    fn lost_fraction(model: &mut LinkModel, n: u64) -> f64 {
        let lost = (0..n).filter(|&i| model.decide(ms(i), 100) == Fate::Drop(DropReason::Loss)).count();
        lost as f64 / n as f64
    }

    #[test]
    fn perfect_link_delivers_at_once() {
        let mut m = model(LinkConfig::perfect(), 1);
        for i in 0..1000 {
            assert_eq!(m.decide(ms(i), 1500), Fate::Deliver { at: ms(i), duplicate: None });
        }
    }

    #[test]
    fn random_loss_converges_to_configured_rate() {
        for (p, seed) in [(0.01, 1), (0.05, 2), (0.2, 3)] {
            let mut m = model(LinkConfig { loss: Loss::Random(p), ..LinkConfig::perfect() }, seed);
            let measured = lost_fraction(&mut m, 200_000);
            assert!((measured - p).abs() < p * 0.05 + 0.001, "p={p} measured={measured}");
        }
    }

    #[test]
    fn gilbert_elliott_loss_is_bursty_with_expected_mean_and_burst_length() {
        // Bad state loses everything, good state nothing: loss runs are the bad-state sojourns,
        // geometric with mean 1 / bad_to_good.
        let loss = Loss::GilbertElliott { good_to_bad: 0.01, bad_to_good: 0.25, loss_good: 0.0, loss_bad: 1.0 };
        let mut m = model(LinkConfig { loss, ..LinkConfig::perfect() }, 7);
        let n = 400_000;
        let lost: Vec<bool> = (0..n).map(|i| m.decide(ms(i), 100) == Fate::Drop(DropReason::Loss)).collect();
        let fraction = lost.iter().filter(|&&l| l).count() as f64 / n as f64;
        let expected = loss.mean();
        assert!((fraction - expected).abs() < expected * 0.08, "mean loss {fraction} vs {expected}");

        let mut runs = Vec::new();
        let mut run = 0u32;
        for &l in &lost {
            if l {
                run += 1;
            } else if run > 0 {
                runs.push(run);
                run = 0;
            }
        }
        let mean_run = runs.iter().map(|&r| f64::from(r)).sum::<f64>() / runs.len() as f64;
        assert!((mean_run - 4.0).abs() < 0.3, "mean burst {mean_run}");
        // Random loss at the same mean has runs barely above one packet.
        let mut random = model(LinkConfig { loss: Loss::Random(expected), ..LinkConfig::perfect() }, 7);
        let mut random_runs = (0u32, 0u32);
        let mut previous = false;
        for i in 0..n {
            let l = random.decide(ms(i), 100) == Fate::Drop(DropReason::Loss);
            if l && !previous {
                random_runs.0 += 1;
            }
            random_runs.1 += u32::from(l);
            previous = l;
        }
        let random_mean_run = f64::from(random_runs.1) / f64::from(random_runs.0);
        assert!(random_mean_run < 1.1, "random loss runs {random_mean_run}");
    }

    #[test]
    fn bandwidth_cap_paces_and_tail_drops() {
        // 1 Mbit/s: a 1250-byte packet takes 10 ms. The queue holds 10 such packets.
        let config = LinkConfig { rate_bps: Some(1_000_000), queue_bytes: 12_500, ..LinkConfig::perfect() };
        let mut m = model(config, 1);
        let fates: Vec<Fate> = (0..12).map(|_| m.decide(Duration::ZERO, 1250)).collect();
        for (i, fate) in fates.iter().take(10).enumerate() {
            assert_eq!(*fate, Fate::Deliver { at: ms(10 * (i as u64 + 1)), duplicate: None });
        }
        assert_eq!(fates[10], Fate::Drop(DropReason::Queue));
        assert_eq!(fates[11], Fate::Drop(DropReason::Queue));
        assert_eq!(m.queued_bytes(Duration::ZERO), 12_500);
        // After 25 ms two and a half packets have left: two more fit, the third does not.
        assert_eq!(m.queued_bytes(ms(25)), 9_375);
        assert_eq!(m.decide(ms(25), 1250), Fate::Deliver { at: ms(110), duplicate: None });
        assert_eq!(m.decide(ms(25), 1250), Fate::Deliver { at: ms(120), duplicate: None });
        assert_eq!(m.decide(ms(25), 1250), Fate::Drop(DropReason::Queue));
        // An idle link sends at once.
        assert_eq!(m.decide(ms(1000), 1250), Fate::Deliver { at: ms(1010), duplicate: None });
    }

    #[test]
    fn paced_throughput_matches_rate() {
        let config = LinkConfig { rate_bps: Some(8_000_000), queue_bytes: 64_000, ..LinkConfig::perfect() };
        let mut m = model(config, 1);
        // Offer 2x the rate for one second: about half gets through, at the cap.
        let mut delivered = 0usize;
        let mut last = Duration::ZERO;
        for i in 0..2000u64 {
            if let Fate::Deliver { at, .. } = m.decide(Duration::from_micros(i * 500), 1000) {
                delivered += 1000;
                last = at;
            }
        }
        let rate = delivered as f64 * 8.0 / last.as_secs_f64();
        assert!((rate - 8_000_000.0).abs() < 8_000_000.0 * 0.02, "rate {rate}");
    }

    #[test]
    fn mtu_clamp_drops_oversized_packets() {
        let mut m = model(LinkConfig { mtu: Some(1200), ..LinkConfig::perfect() }, 1);
        assert!(matches!(m.decide(ms(0), 1200), Fate::Deliver { .. }));
        assert_eq!(m.decide(ms(0), 1201), Fate::Drop(DropReason::Mtu));
    }

    #[test]
    fn delay_and_jitter_stay_in_range_and_reorder() {
        let config = LinkConfig { delay: ms(50), jitter: ms(10), ..LinkConfig::perfect() };
        let mut m = model(config, 3);
        let mut arrivals = Vec::new();
        for i in 0..10_000u64 {
            let Fate::Deliver { at, .. } = m.decide(ms(i), 100) else { panic!("dropped") };
            let delay = at - ms(i);
            assert!(delay >= ms(40) && delay <= ms(60), "{delay:?}");
            arrivals.push(at);
        }
        let mean = arrivals.iter().enumerate().map(|(i, at)| (*at - ms(i as u64)).as_secs_f64()).sum::<f64>() / 1e4;
        assert!((mean - 0.050).abs() < 0.001, "mean delay {mean}");
        // 1 ms apart with ±10 ms jitter: plenty overtake each other.
        assert!(arrivals.windows(2).any(|w| w[1] < w[0]));
    }

    #[test]
    fn reordering_holds_packets_back() {
        let config = LinkConfig { delay: ms(20), reorder: 0.1, reorder_gap: ms(5), ..LinkConfig::perfect() };
        let mut m = model(config, 4);
        let n = 20_000u64;
        let held = (0..n)
            .filter(|&i| matches!(m.decide(ms(i), 100), Fate::Deliver { at, .. } if at - ms(i) == ms(25)))
            .count();
        let fraction = held as f64 / n as f64;
        assert!((fraction - 0.1).abs() < 0.01, "reordered {fraction}");
    }

    #[test]
    fn duplication_rate() {
        let mut m = model(LinkConfig { duplicate: 0.02, ..LinkConfig::perfect() }, 5);
        let n = 100_000u64;
        let dups = (0..n).filter(|&i| matches!(m.decide(ms(i), 100), Fate::Deliver { duplicate: Some(_), .. })).count();
        let fraction = dups as f64 / n as f64;
        assert!((fraction - 0.02).abs() < 0.002, "duplicated {fraction}");
    }

    #[test]
    fn blackout_drops_everything_inside_the_window() {
        let blackouts = Blackouts::at([Window { start: ms(100), duration: ms(50) }]);
        let mut m = LinkModel::new(LinkConfig::perfect(), blackouts, 1);
        assert!(matches!(m.decide(ms(99), 10), Fate::Deliver { .. }));
        assert_eq!(m.decide(ms(100), 10), Fate::Drop(DropReason::Blackout));
        assert_eq!(m.decide(ms(149), 10), Fate::Drop(DropReason::Blackout));
        assert!(matches!(m.decide(ms(150), 10), Fate::Deliver { .. }));
    }

    #[test]
    fn stream_mode_keeps_order_delays_losses_and_holds_through_blackouts() {
        let config = LinkConfig {
            delay: ms(20),
            jitter: ms(5),
            loss: Loss::Random(0.1),
            rate_bps: Some(8_000_000),
            ..LinkConfig::perfect()
        };
        let blackouts = Blackouts::at([Window { start: ms(500), duration: ms(300) }]);
        let mut m = LinkModel::new(config, blackouts, 9);
        let mut previous = Duration::ZERO;
        let mut late = 0;
        let mut lost = 0;
        for i in 0..1000u64 {
            let now = ms(i);
            let (at, retransmitted) = m.decide_stream(now, 1000);
            lost += u32::from(retransmitted);
            assert!(at >= previous, "out of order at {i}");
            assert!(!(ms(500)..ms(800)).contains(&at), "arrived during the blackout: {at:?}");
            // 1000 bytes at 8 Mbit/s take 1 ms; anything much later than delay + jitter was lost
            // and retransmitted, or queued behind a segment that was.
            if at - now > ms(27) {
                late += 1;
            }
            previous = at;
        }
        assert!(late > 100, "losses should delay segments: {late}");
        assert!((70..130).contains(&lost), "lost {lost} of 1000 at 10%");
        assert_eq!(m.retransmission(), ms(45));
    }

    #[test]
    fn same_seed_same_decisions() {
        let config = LinkConfig {
            delay: ms(30),
            jitter: ms(10),
            loss: Loss::GilbertElliott { good_to_bad: 0.05, bad_to_good: 0.3, loss_good: 0.01, loss_bad: 0.5 },
            reorder: 0.05,
            reorder_gap: ms(10),
            duplicate: 0.01,
            rate_bps: Some(2_000_000),
            queue_bytes: 30_000,
            mtu: Some(1400),
        };
        let run = |seed| {
            let mut m = model(config.clone(), seed);
            (0..5000u64).map(|i| m.decide(Duration::from_micros(i * 700), 200 + (i as usize * 37) % 1300)).collect()
        };
        let a: Vec<Fate> = run(42);
        assert_eq!(a, run(42));
        assert_ne!(a, run(43));
    }
}
