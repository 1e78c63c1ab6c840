//! Climbing back to a higher layer. A subscriber's bandwidth estimate (the congestion window
//! over the round-trip time) only grows while the connection sends as much as the window
//! allows; a viewer that stepped down to the base layer sends far less than that, so its window
//! stays where the congestion left it and the estimate never says the path has room again. And
//! on a congested path the estimate is noisy upwards (the window grows while the bottleneck
//! queue fills, the smoothed RTT lags). The relay therefore treats every climb as a trial, and
//! *probes* (tries the next layer though the estimate does not afford it), as LiveKit's stream
//! allocator and libwebrtc's probe controller do, with the next layer instead of padding:
//! - a climb starts after the path has been clean for [`STABLE_MS`] and the back-off passed,
//!   one layer at a time (straight to the estimate's layer only while no congestion was ever
//!   seen), from that layer's next group, so the switch lands on a keyframe;
//! - congestion (see [`PathMonitor`]) within [`PROBE_HOLD_MS`] of receiving the layer: the
//!   trial failed, back to the layer it came from, and the next trial waits twice as long
//!   (up to [`MAX_BACKOFF_MS`]), so a path that stays narrow is tried a bounded number of times;
//! - [`PROBE_HOLD_MS`] without congestion: the layer is kept (a floor under the estimate) until
//!   congestion appears, and the next layer may be tried after [`STABLE_MS`] more.
//!
//! Two pure objects, `now` passed in: [`PathMonitor`] per subscriber connection turns the
//! transport's readings into a budget and the time congestion was last seen; [`Probe`] per
//! subscription decides the target layer from the estimate's. The [`super::forwarder`]
//! combines them.

use std::time::Duration;

/// Queueing delay (smoothed RTT above the lowest RTT seen recently) that counts as congestion:
/// above jitter of mobile links (3g's ±20 ms each way, smoothed), below what a filling
/// bottleneck queue adds within a second.
pub const QUEUE_DELAY_MS: u64 = 80;

/// The lowest RTT is taken over the last one to two of these windows, so a path whose base
/// delay grows (a route change) is relearned.
pub const MIN_RTT_WINDOW_MS: u64 = 5_000;

/// How long the path must be free of congestion, on the layer the estimate affords, before a
/// probe starts.
pub const STABLE_MS: u64 = 2_000;

/// How long a probed layer may take to start a group (the publisher resumes it and sends a
/// keyframe) before the probe is abandoned.
pub const PROBE_WAIT_MS: u64 = 3_000;

/// How long a probed layer must flow without congestion to count as carried.
pub const PROBE_HOLD_MS: u64 = 2_500;

/// The wait before the next probe after a failed one; doubled by every failure in a row, up to
/// [`MAX_BACKOFF_MS`]; back to this after a success.
pub const BACKOFF_MS: u64 = 4_000;

pub const MAX_BACKOFF_MS: u64 = 32_000;

/// A subscriber connection's path as the forwarders see it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathState {
    /// Bits per second the connection can carry; `None` until measured.
    pub budget: Option<u64>,
    /// When congestion was last seen (ms): queueing delay, or media dropped because the
    /// subscriber fell behind.
    pub congested_at: Option<u64>,
}

/// Turns a connection's transport readings (congestion window, smoothed RTT) and its media
/// queue's verdicts into a [`PathState`].
#[derive(Debug, Default)]
pub struct PathMonitor {
    state: PathState,
    /// The lowest RTT of the current window and of the previous one (µs).
    min_rtt: [Option<u64>; 2],
    window_start: Option<u64>,
    /// The subscriber fell behind since the last reading.
    behind: bool,
    /// The last smoothed RTT read, and how much the readings vary (µs; an RFC 6298 style mean
    /// deviation of the readings, which are themselves smoothed).
    srtt_us: Option<u64>,
    rttvar_us: u64,
}

impl PathMonitor {
    /// A reading of the transport: its congestion window (bytes) and smoothed RTT.
    pub fn sample(&mut self, cwnd_bytes: u64, rtt: Duration, now_ms: u64) {
        let rtt_us = (rtt.as_micros() as u64).max(1000);
        if let Some(last) = self.srtt_us {
            self.rttvar_us = (3 * self.rttvar_us + last.abs_diff(rtt_us)) / 4;
        } else {
            self.rttvar_us = rtt_us / 2;
        }
        self.srtt_us = Some(rtt_us);
        self.state.budget = Some(cwnd_bytes.saturating_mul(8).saturating_mul(1_000_000) / rtt_us);
        if self.window_start.is_none_or(|start| now_ms.saturating_sub(start) >= MIN_RTT_WINDOW_MS) {
            self.min_rtt = [None, self.min_rtt[0]];
            self.window_start = Some(now_ms);
        }
        self.min_rtt[0] = Some(self.min_rtt[0].map_or(rtt_us, |m| m.min(rtt_us)));
        let lowest = self.min_rtt.iter().flatten().min().copied().unwrap_or(rtt_us);
        let queueing = rtt_us.saturating_sub(lowest) / 1000 > QUEUE_DELAY_MS;
        if queueing || std::mem::take(&mut self.behind) {
            self.state.congested_at = Some(now_ms);
        }
    }

    /// The media queue dropped groups because the subscriber fell behind (reported with the
    /// next [`PathMonitor::sample`]).
    pub fn fell_behind(&mut self) {
        self.behind = true;
    }

    pub fn state(&self) -> PathState {
        self.state
    }

    /// The smoothed RTT and its variation (ms), once read.
    pub fn rtt_ms(&self) -> Option<(u64, u64)> {
        self.srtt_us.map(|srtt| (srtt / 1000, self.rttvar_us / 1000))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not above the layer received now.
    Idle,
    /// Trying `layer` (coming `from` a lower one) since `since`; receiving it since `reached`.
    Trial { layer: u8, from: u8, since: u64, reached: Option<u64> },
    /// `layer` was carried without congestion: kept until congestion appears.
    Carried(u8),
}

/// What a probe came to, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Started,
    Succeeded,
    Failed,
    /// The layer tried did not start in time, or congestion came before it did.
    Abandoned,
}

/// When a subscriber may receive more than now. Every climb is a trial, whether the estimate
/// asks for it or a probe does, because the estimate is noisy on a congested path (the window
/// grows while the bottleneck queue fills, and the smoothed RTT lags behind): a climb needs a
/// path clean for [`STABLE_MS`] and the back-off passed, and it is undone when congestion
/// appears within [`PROBE_HOLD_MS`] of reaching the layer. Down is immediate: the target
/// follows the estimate below the layer received, except under a layer a trial proved.
#[derive(Debug, Clone)]
pub struct Probe {
    state: State,
    /// Since when no congestion was seen (ms).
    clean_since: u64,
    last_congestion: Option<u64>,
    backoff_ms: u64,
    /// No trial starts before this (ms).
    not_before: u64,
    /// The layer a failed trial came from: nothing above it until the next trial.
    ceiling: Option<u8>,
    outcome: Option<Outcome>,
}

impl Probe {
    pub fn new(now_ms: u64) -> Probe {
        Probe {
            state: State::Idle,
            clean_since: now_ms,
            last_congestion: None,
            backoff_ms: BACKOFF_MS,
            not_before: now_ms,
            ceiling: None,
            outcome: None,
        }
    }

    /// The layer being tried, if any.
    pub fn probing(&self) -> Option<u8> {
        match self.state {
            State::Trial { layer, .. } => Some(layer),
            _ => None,
        }
    }

    /// What the last change of state was, once (for metrics).
    pub fn take_outcome(&mut self) -> Option<Outcome> {
        self.outcome.take()
    }

    /// Congestion seen at `at` (ms; repeated readings of the same instant count once).
    pub fn congestion(&mut self, at: u64) {
        if self.last_congestion.is_some_and(|last| at <= last) {
            return;
        }
        self.last_congestion = Some(at);
        self.clean_since = at;
        match self.state {
            State::Trial { from, reached: Some(_), .. } => {
                self.end_trial(from, at, Outcome::Failed);
                self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
            }
            State::Trial { from, reached: None, .. } => self.end_trial(from, at, Outcome::Abandoned),
            State::Carried(_) => {
                self.state = State::Idle;
                self.not_before = at + self.backoff_ms;
            }
            State::Idle => {}
        }
    }

    fn end_trial(&mut self, from: u8, now_ms: u64, outcome: Outcome) {
        self.state = State::Idle;
        self.ceiling = Some(from);
        self.not_before = now_ms + self.backoff_ms;
        self.outcome = Some(outcome);
    }

    /// The layer to target, given `estimate` (the best layer the bandwidth estimate affords),
    /// `top` (the best the subscriber asked for) and `current` (the layer it receives).
    pub fn target(&mut self, estimate: u8, top: u8, current: Option<u8>, now_ms: u64) -> u8 {
        let estimate = estimate.min(top);
        if let State::Trial { layer, from, since, reached } = self.state {
            if layer > top {
                // The subscriber asked for less than the layer tried.
                self.state = State::Idle;
            } else if current == Some(layer) {
                let reached = reached.unwrap_or(now_ms);
                self.state = State::Trial { layer, from, since, reached: Some(reached) };
                if now_ms.saturating_sub(reached) < PROBE_HOLD_MS {
                    return layer;
                }
                self.state = State::Carried(layer);
                self.backoff_ms = BACKOFF_MS;
                // The next layer after the path stayed clean on this one for a while.
                self.not_before = now_ms + STABLE_MS;
                self.outcome = Some(Outcome::Succeeded);
            } else if reached.is_none() && now_ms.saturating_sub(since) >= PROBE_WAIT_MS {
                self.end_trial(from, now_ms, Outcome::Abandoned);
            } else {
                return layer;
            }
        }
        // Nothing flows yet: a start, not a climb; the estimate decides.
        let Some(current) = current else { return estimate };
        let floor = match self.state {
            State::Carried(layer) => layer.min(top),
            _ => 0,
        };
        let here = current.min(top).max(floor);
        let keep = estimate.max(floor).min(here).min(self.ceiling.unwrap_or(u8::MAX).max(floor));
        // A climb: straight to what the estimate affords while it can be trusted (no congestion
        // seen yet), else one layer at a time on a path clean for a while (a probe, when the
        // estimate does not afford it either).
        let trusted = estimate > here && self.last_congestion.is_none();
        let clean = now_ms.saturating_sub(self.clean_since) >= STABLE_MS;
        let climb = if trusted { Some(estimate) } else { clean.then_some(here + 1) };
        match climb {
            Some(layer) if current == keep && keep < top && now_ms >= self.not_before => {
                self.state = State::Trial { layer, from: keep, since: now_ms, reached: None };
                self.ceiling = None;
                self.outcome = Some(Outcome::Started);
                layer
            }
            _ => keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_budget_is_the_window_over_the_rtt_and_queueing_delay_is_congestion() {
        let mut path = PathMonitor::default();
        assert_eq!(path.state(), PathState::default());
        assert_eq!(path.rtt_ms(), None);
        path.sample(25_000, 100 * MS, 0);
        assert_eq!(path.state().budget, Some(2_000_000));
        assert_eq!(path.rtt_ms(), Some((100, 50)), "the first reading's variation is half of it");
        path.sample(25_000, 150 * MS, 250);
        assert_eq!(path.state().congested_at, None, "50 ms above the lowest RTT: jitter");
        path.sample(25_000, 200 * MS, 500);
        assert_eq!(path.state().congested_at, Some(500), "100 ms of queueing");
        // The lowest RTT is forgotten after one to two windows: a longer path is relearned.
        for t in (750..3 * MIN_RTT_WINDOW_MS).step_by(250) {
            path.sample(25_000, 200 * MS, t);
        }
        let last = path.state().congested_at;
        path.sample(25_000, 200 * MS, 3 * MIN_RTT_WINDOW_MS);
        assert_eq!(path.state().congested_at, last, "200 ms is the path's RTT now");
        path.fell_behind();
        assert_eq!(path.state().congested_at, last, "reported with the next reading");
        path.sample(25_000, 200 * MS, 3 * MIN_RTT_WINDOW_MS + 250);
        assert_eq!(path.state().congested_at, Some(3 * MIN_RTT_WINDOW_MS + 250));
    }

    /// Runs a probe every 100 ms from `from` to `to` with a fixed estimate, the subscriber
    /// switching to the target at once; returns the targets seen.
    fn run(probe: &mut Probe, estimate: u8, top: u8, current: &mut u8, from: u64, to: u64) -> Vec<u8> {
        (from..to)
            .step_by(100)
            .map(|now| {
                let target = probe.target(estimate, top, Some(*current), now);
                *current = target;
                target
            })
            .collect()
    }

    #[test]
    fn a_clean_path_is_probed_one_layer_at_a_time_and_a_carried_layer_is_kept() {
        let mut probe = Probe::new(0);
        let mut current = 0;
        assert_eq!(probe.target(0, 2, None, 0), 0, "nothing received yet: no probe");
        let targets = run(&mut probe, 0, 2, &mut current, 0, STABLE_MS);
        assert!(targets.iter().all(|&t| t == 0), "not before the path was clean for a while");
        assert_eq!(probe.target(0, 2, Some(0), STABLE_MS), 1);
        assert_eq!(probe.take_outcome(), Some(Outcome::Started));
        assert_eq!(probe.probing(), Some(1));
        // The layer starts 300 ms later, and flows cleanly for PROBE_HOLD_MS: carried.
        assert_eq!(probe.target(0, 2, Some(0), STABLE_MS + 200), 1);
        let on = STABLE_MS + 300;
        assert_eq!(probe.target(0, 2, Some(1), on), 1);
        assert_eq!(probe.target(0, 2, Some(1), on + PROBE_HOLD_MS), 1);
        assert_eq!(probe.take_outcome(), Some(Outcome::Succeeded));
        assert_eq!(probe.probing(), None);
        assert_eq!(probe.target(0, 2, Some(1), on + PROBE_HOLD_MS + STABLE_MS - 100), 1, "kept; no probe yet");
        // Kept, and the next layer is probed in turn.
        current = 1;
        let targets = run(&mut probe, 0, 2, &mut current, on + PROBE_HOLD_MS + 100, on + 20_000);
        assert_eq!(targets.last(), Some(&2), "{targets:?}");
        // Congestion: back to the estimate.
        probe.congestion(on + 20_000);
        assert_eq!(probe.target(0, 2, Some(2), on + 20_000), 0);
    }

    #[test]
    fn a_failed_probe_backs_off_so_a_narrow_path_is_probed_a_bounded_number_of_times() {
        let mut probe = Probe::new(0);
        let mut current = 0u8;
        let mut probes = 0;
        // Every probe causes congestion 500 ms after the probed layer starts.
        let mut reached_at = None;
        for now in (0..120_000).step_by(100) {
            if let Some(at) = reached_at
                && now >= at + 500
            {
                probe.congestion(now);
                reached_at = None;
            }
            let target = probe.target(0, 2, Some(current), now);
            if target > current {
                probes += 1;
                reached_at = Some(now);
            }
            current = target;
        }
        // Probes at about 2, 6.5, 15, 31.5, 64 and 96.5 s: the wait doubles up to MAX_BACKOFF_MS.
        assert_eq!(probes, 6, "a bounded number of probes in two minutes");
        assert_eq!(current, 0);
    }

    #[test]
    fn a_climb_the_estimate_asks_for_is_a_trial_too() {
        let mut probe = Probe::new(0);
        assert_eq!(probe.target(2, 2, None, 0), 2, "a start follows the estimate");
        assert_eq!(probe.target(0, 2, Some(2), 100), 0, "down at once");
        // No congestion seen yet: the estimate is trusted, the climb starts at once.
        assert_eq!(probe.target(2, 2, Some(0), 200), 2);
        assert_eq!(probe.take_outcome(), Some(Outcome::Started));
        assert_eq!(probe.target(2, 2, Some(2), 300), 2);
        probe.congestion(400);
        assert_eq!(probe.take_outcome(), Some(Outcome::Failed));
        // The estimate still says 2 (noisy): nothing above the layer the trial came from until
        // the path was clean for a while and the back-off passed.
        let mut current = 2;
        let targets = run(&mut probe, 2, 2, &mut current, 500, 400 + BACKOFF_MS);
        assert!(targets.iter().all(|&t| t == 0), "{targets:?}");
        assert_eq!(probe.target(2, 2, Some(0), 400 + BACKOFF_MS), 1, "now one layer at a time");
    }

    #[test]
    fn a_trial_whose_layer_never_starts_is_abandoned_and_a_lower_request_ends_it() {
        let mut probe = Probe::new(0);
        assert_eq!(probe.target(1, 2, Some(1), STABLE_MS), 2);
        assert_eq!(probe.target(1, 2, Some(1), STABLE_MS + PROBE_WAIT_MS - 100), 2);
        assert_eq!(probe.target(1, 2, Some(1), STABLE_MS + PROBE_WAIT_MS), 1);
        assert_eq!(probe.take_outcome(), Some(Outcome::Abandoned));
        let again = STABLE_MS + PROBE_WAIT_MS + BACKOFF_MS;
        assert_eq!(probe.target(1, 2, Some(1), again - 100), 1, "the back-off applies");
        assert_eq!(probe.target(1, 2, Some(1), again), 2);
        assert_eq!(probe.target(1, 1, Some(1), again + 100), 1, "never above the layer asked for");
        assert_eq!(probe.probing(), None);
    }
}
