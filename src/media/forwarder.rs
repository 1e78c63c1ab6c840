//! Which groups of one track reach one subscriber: the per-subscriber forwarding decision of
//! SFU-lite, without IO.
//!
//! A subscriber receives one layer of a track at a time. The layer it should receive (the
//! *target*) is the highest one within both its request (`max_layer`) and its bandwidth budget
//! (from its connection's congestion window and RTT, or its receiver reports); the layer it
//! receives (the *current* one) changes only where a group of the target layer starts, because
//! every group starts with a keyframe and a decoder can only start there. Until then the current
//! layer keeps flowing, so a switch never shows a broken picture.
//!
//! Two shortcuts make joins instant and switches prompt:
//! - a subscriber that receives nothing yet takes the first group of any layer at or below its
//!   target (the relay's cache offers the latest one at once) and climbs later;
//! - when the target layer has not started a group for [`KEYFRAME_WAIT_MS`], the forwarder asks
//!   for a keyframe of it (the relay passes the request to the publisher, at most once per
//!   [`KEYFRAME_REPEAT_MS`]).
//!
//! The estimate alone never climbs back after a step down (a connection sending less than its
//! window allows does not grow it), so the target may be one layer above the estimate while a
//! [`Probe`] tries it (see [`super::probe`]). Hysteresis keeps a layer from flapping on a noisy
//! estimate: a layer is climbed to when its bitrate fits [`HEADROOM`] of the budget, and left
//! only when it no longer fits the whole budget.
//!
//! Audio has one layer and is forwarded whole unless the subscriber paused it.

use super::probe::{Outcome, PathState, Probe};
use super::{LayerInfo, MAX_LAYERS};

/// How long a switch may wait for the target layer's next group before a keyframe is requested.
pub const KEYFRAME_WAIT_MS: u64 = 300;

/// Least time between two keyframe requests for the same subscriber and track.
pub const KEYFRAME_REPEAT_MS: u64 = 1000;

/// Share of the bandwidth budget a layer's bitrate may use to be climbed to; the rest absorbs
/// bursts (keyframes are several times the average frame) and the subscriber's other tracks'
/// variations. The layer received now, and those below it, are kept up to the whole budget.
pub const HEADROOM: f64 = 0.85;

/// The verdict on one group for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Forward the group; `switched` when it starts a new current layer (tell the subscriber).
    Forward { switched: bool },
    /// Not for this subscriber (another layer, paused, or too big for its budget).
    Skip,
}

#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Bitrate of each layer the publisher announced, base layer first.
    bitrates: Vec<u32>,
    /// The highest layer the subscriber asked for.
    max_layer: u8,
    paused: bool,
    /// Bits per second the subscriber's link can take for this track; `None` until known (then
    /// the base layer is targeted, the safe start).
    budget: Option<u64>,
    current: Option<u8>,
    target: u8,
    /// Since when the current layer differs from the target (ms).
    waiting_since: Option<u64>,
    last_keyframe_request: Option<u64>,
    probe: Probe,
}

impl Forwarder {
    /// A forwarder for a track with `layers` (at most [`MAX_LAYERS`]; an audio track has one).
    pub fn new(layers: &[LayerInfo], max_layer: u8, now_ms: u64) -> Forwarder {
        let bitrates: Vec<u32> = layers.iter().take(MAX_LAYERS).map(|l| l.bitrate).collect();
        let mut forwarder = Forwarder {
            bitrates,
            max_layer,
            paused: false,
            budget: None,
            current: None,
            target: 0,
            waiting_since: None,
            last_keyframe_request: None,
            probe: Probe::new(now_ms),
        };
        forwarder.retarget(now_ms);
        forwarder
    }

    /// The layer the subscriber receives now, if any.
    pub fn current(&self) -> Option<u8> {
        self.current
    }

    /// The layer the subscriber should receive; `None` while paused.
    pub fn target(&self) -> Option<u8> {
        (!self.paused).then_some(self.target)
    }

    /// The subscriber's request changed: the highest layer it wants, or pausing the track.
    pub fn set_request(&mut self, max_layer: u8, paused: bool, now_ms: u64) {
        self.max_layer = max_layer;
        self.paused = paused;
        if paused {
            self.current = None;
            self.waiting_since = None;
        }
        self.retarget(now_ms);
    }

    /// The bandwidth this track may use on the subscriber's link, bits per second.
    pub fn set_budget(&mut self, bits_per_second: u64, now_ms: u64) {
        self.observe(PathState { budget: Some(bits_per_second), congested_at: None }, now_ms);
    }

    /// The subscriber connection's path (budget and congestion); called periodically, which
    /// also moves a probe along.
    pub fn observe(&mut self, path: PathState, now_ms: u64) {
        if path.budget.is_some() {
            self.budget = path.budget;
        }
        if let Some(at) = path.congested_at {
            self.probe.congestion(at);
        }
        self.retarget(now_ms);
    }

    /// What the last probe did, once (for metrics).
    pub fn probe_outcome(&mut self) -> Option<Outcome> {
        self.probe.take_outcome()
    }

    /// A layer tried failed: the subscriber stops receiving it at once instead of at the next
    /// group of the target layer (its group in flight is what congests the path). Returns
    /// whether the current layer was dropped; the next group at or below the target is taken.
    pub fn drop_failed_layer(&mut self) -> bool {
        let above = self.current.is_some_and(|current| current > self.target);
        if above {
            self.current = None;
        }
        above
    }

    fn retarget(&mut self, now_ms: u64) {
        let top = self.bitrates.len().saturating_sub(1).min(usize::from(self.max_layer));
        let current = self.current.map(usize::from);
        let affordable = |layer: usize| match (self.budget, self.bitrates.get(layer)) {
            (Some(budget), Some(&bitrate)) => {
                let share = if current.is_some_and(|c| layer <= c) { 1.0 } else { HEADROOM };
                f64::from(bitrate) <= budget as f64 * share
            }
            _ => layer == 0,
        };
        let estimate = (0..=top).rev().find(|&layer| affordable(layer)).unwrap_or(0) as u8;
        let target = if self.paused { estimate } else { self.probe.target(estimate, top as u8, self.current, now_ms) };
        if target != self.target || self.waiting_since.is_none() {
            self.target = target;
            self.waiting_since = (!self.paused && self.current != Some(target)).then_some(now_ms);
        }
    }

    /// A group of `layer` starts at the publisher: forward it to this subscriber or not.
    pub fn on_group(&mut self, layer: u8) -> Verdict {
        if self.paused {
            return Verdict::Skip;
        }
        match self.current {
            _ if layer == self.target => {
                let switched = self.current != Some(layer);
                self.current = Some(layer);
                self.waiting_since = None;
                Verdict::Forward { switched }
            }
            Some(current) if current == layer => Verdict::Forward { switched: false },
            // Nothing flows yet: any layer up to the target beats a black tile.
            None if layer < self.target => {
                self.current = Some(layer);
                Verdict::Forward { switched: true }
            }
            _ => Verdict::Skip,
        }
    }

    /// The layer to ask the publisher a keyframe of, when the target layer has kept the
    /// subscriber waiting too long (at most once per [`KEYFRAME_REPEAT_MS`]).
    pub fn keyframe_needed(&mut self, now_ms: u64) -> Option<u8> {
        let since = self.waiting_since?;
        if self.paused || now_ms.saturating_sub(since) < KEYFRAME_WAIT_MS {
            return None;
        }
        if self.last_keyframe_request.is_some_and(|at| now_ms.saturating_sub(at) < KEYFRAME_REPEAT_MS) {
            return None;
        }
        self.last_keyframe_request = Some(now_ms);
        Some(self.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KBPS: u64 = 1000;

    fn simulcast() -> Vec<LayerInfo> {
        [(320, 180, 150_000), (640, 360, 500_000), (1280, 720, 1_500_000)]
            .map(|(width, height, bitrate)| LayerInfo { width, height, bitrate })
            .to_vec()
    }

    fn video(max_layer: u8) -> Forwarder {
        Forwarder::new(&simulcast(), max_layer, 0)
    }

    const FWD: Verdict = Verdict::Forward { switched: false };
    const SWITCH: Verdict = Verdict::Forward { switched: true };

    #[test]
    fn without_a_budget_the_base_layer_is_targeted() {
        let mut f = video(2);
        assert_eq!(f.target(), Some(0));
        assert_eq!(f.on_group(2), Verdict::Skip);
        assert_eq!(f.on_group(0), SWITCH);
        assert_eq!(f.on_group(0), FWD);
    }

    #[test]
    fn the_target_is_the_highest_layer_within_budget_and_request() {
        let mut f = video(2);
        f.set_budget(2_000 * KBPS, 0);
        assert_eq!(f.target(), Some(2));
        f.set_budget(1_000 * KBPS, 0);
        assert_eq!(f.target(), Some(1), "1.5 Mbit/s does not fit 85 % of 1 Mbit/s");
        f.set_budget(100 * KBPS, 0);
        assert_eq!(f.target(), Some(0), "the base layer even when it does not fit");
        f.set_budget(10_000 * KBPS, 0);
        f.set_request(1, false, 0);
        assert_eq!(f.target(), Some(1), "never above the requested layer");
    }

    #[test]
    fn layers_switch_only_where_a_group_of_the_target_starts() {
        let mut f = video(2);
        f.set_budget(10_000 * KBPS, 0);
        assert_eq!(f.on_group(0), SWITCH, "nothing flows yet: the base layer meanwhile");
        assert_eq!(f.on_group(1), Verdict::Skip, "not the target, not the current layer");
        assert_eq!(f.on_group(0), FWD);
        assert_eq!(f.on_group(2), SWITCH, "up at the top layer's group start");
        assert_eq!(f.on_group(0), Verdict::Skip);
        // Bandwidth drops: the top layer keeps flowing until a base-layer group starts.
        f.set_budget(300 * KBPS, 40);
        assert_eq!(f.on_group(2), FWD);
        assert_eq!(f.on_group(0), SWITCH);
        assert_eq!(f.on_group(2), Verdict::Skip);
        assert_eq!(f.current(), Some(0));
    }

    #[test]
    fn a_paused_track_forwards_nothing_until_resumed() {
        let mut f = video(2);
        f.set_request(2, true, 0);
        assert_eq!(f.target(), None);
        assert_eq!(f.on_group(0), Verdict::Skip);
        assert_eq!(f.keyframe_needed(10_000), None);
        f.set_request(2, false, 20_000);
        assert_eq!(f.on_group(0), SWITCH);
    }

    #[test]
    fn a_keyframe_is_requested_when_the_target_layer_keeps_the_subscriber_waiting() {
        let mut f = video(2);
        f.set_budget(10_000 * KBPS, 0);
        assert_eq!(f.on_group(0), SWITCH);
        assert_eq!(f.keyframe_needed(KEYFRAME_WAIT_MS - 1), None);
        assert_eq!(f.keyframe_needed(KEYFRAME_WAIT_MS), Some(2));
        assert_eq!(f.keyframe_needed(KEYFRAME_WAIT_MS + 10), None, "not again at once");
        assert_eq!(f.keyframe_needed(KEYFRAME_WAIT_MS + KEYFRAME_REPEAT_MS), Some(2));
        assert_eq!(f.on_group(2), SWITCH);
        assert_eq!(f.keyframe_needed(10_000), None, "nothing to wait for on the target layer");
    }

    #[test]
    fn a_layer_is_climbed_with_headroom_and_kept_up_to_the_whole_budget() {
        let mut f = video(2);
        f.set_budget(600 * KBPS, 0);
        assert_eq!(f.target(), Some(1), "500 kbit/s fits 85 % of 600");
        assert_eq!(f.on_group(1), SWITCH);
        f.set_budget(520 * KBPS, 0);
        assert_eq!(f.target(), Some(1), "kept: it still fits the whole budget");
        f.set_budget(490 * KBPS, 0);
        assert_eq!(f.target(), Some(0));
    }

    #[test]
    fn a_viewer_that_stepped_down_probes_the_next_layer_and_steps_back_on_congestion() {
        use crate::media::probe::STABLE_MS;
        let path = |budget: u64, congested_at| PathState { budget: Some(budget * KBPS), congested_at };
        let mut f = video(2);
        f.observe(path(200, None), 0);
        assert_eq!(f.on_group(0), SWITCH);
        // The estimate stays where congestion left it (an app-limited window does not grow):
        // once the path was clean for a while, layer 1 is tried from its next group.
        f.observe(path(200, None), STABLE_MS - 100);
        assert_eq!(f.target(), Some(0));
        f.observe(path(200, None), STABLE_MS);
        assert_eq!(f.target(), Some(1));
        assert_eq!(f.probe_outcome(), Some(Outcome::Started));
        assert_eq!(f.on_group(0), FWD, "the base layer flows until the probed layer starts");
        assert_eq!(f.on_group(1), SWITCH);
        f.observe(path(200, None), STABLE_MS + 100);
        // Congestion: back to the base layer at its next group; the next probe waits.
        f.observe(path(200, Some(STABLE_MS + 500)), STABLE_MS + 500);
        assert_eq!(f.probe_outcome(), Some(Outcome::Failed));
        assert_eq!(f.target(), Some(0));
        assert_eq!(f.on_group(1), FWD);
        assert_eq!(f.on_group(0), SWITCH);
        f.observe(path(200, Some(STABLE_MS + 500)), 3 * STABLE_MS);
        assert_eq!(f.target(), Some(0), "backing off");
    }

    #[test]
    fn audio_is_one_layer_forwarded_whole() {
        let opus = [LayerInfo { width: 0, height: 0, bitrate: 32_000 }];
        let mut f = Forwarder::new(&opus, 0, 0);
        f.set_budget(1, 0);
        assert_eq!(f.on_group(0), SWITCH);
        assert_eq!(f.on_group(0), FWD);
        assert_eq!(f.on_group(1), Verdict::Skip, "no such layer");
    }
}
