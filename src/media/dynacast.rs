//! Which layers of a track anybody receives, so the publisher encodes and sends only those
//! (LiveKit calls it dynacast): a 720p layer nobody watches costs the publisher's CPU and uplink
//! for nothing. Pure state per track: subscribers report the layer they target, the track says
//! when the set of wanted layers changed, and the relay tells the publisher.
//!
//! A layer is wanted while some subscriber targets it or still receives it (a switch down keeps
//! the old layer until the new one's group starts). Pausing is delayed by [`PAUSE_AFTER_MS`], so
//! a subscriber that flaps between layers does not make the publisher flap too; resuming is
//! immediate, because someone is waiting for it.

use std::collections::HashMap;

use super::MAX_LAYERS;

/// How long a layer nobody wants keeps being sent before the publisher is told to pause it.
pub const PAUSE_AFTER_MS: u64 = 2000;

/// Layers as a bit set: bit `n` is layer `n`.
pub type LayerSet = u8;

/// Every layer of a track with `count` layers.
pub fn all_layers(count: usize) -> LayerSet {
    ((1u16 << count.min(MAX_LAYERS)) - 1) as LayerSet
}

#[derive(Debug, Clone)]
pub struct Dynacast<S> {
    /// Layers the publisher announced.
    announced: LayerSet,
    /// What each subscriber needs: the layers it targets or still receives.
    needs: HashMap<S, LayerSet>,
    /// What the publisher was last told to send.
    told: LayerSet,
    /// Since when each layer the publisher sends has been unwanted (ms).
    unwanted_since: [Option<u64>; MAX_LAYERS],
}

impl<S: std::hash::Hash + Eq> Dynacast<S> {
    /// A track with `layers` layers; the publisher starts sending all of them.
    pub fn new(layers: usize) -> Dynacast<S> {
        let announced = all_layers(layers);
        Dynacast { announced, needs: HashMap::new(), told: announced, unwanted_since: [None; MAX_LAYERS] }
    }

    /// A subscriber's needs: its target and current layers (`None`: paused or nothing yet).
    pub fn set(&mut self, subscriber: S, target: Option<u8>, current: Option<u8>) {
        let bit = |layer: Option<u8>| layer.filter(|l| usize::from(*l) < MAX_LAYERS).map_or(0, |l| 1u8 << l);
        let need = (bit(target) | bit(current)) & self.announced;
        if need == 0 {
            self.needs.remove(&subscriber);
        } else {
            self.needs.insert(subscriber, need);
        }
    }

    pub fn remove(&mut self, subscriber: &S) {
        self.needs.remove(subscriber);
    }

    fn wanted(&self) -> LayerSet {
        self.needs.values().fold(0, |all, need| all | need)
    }

    /// The layers the publisher should send now, when that differs from what it was last told.
    /// Call it after changes and periodically (pauses wait [`PAUSE_AFTER_MS`]).
    pub fn update(&mut self, now_ms: u64) -> Option<LayerSet> {
        let wanted = self.wanted();
        let mut send = self.told | wanted;
        for layer in 0..MAX_LAYERS {
            let bit = 1u8 << layer;
            if wanted & bit != 0 || self.told & bit == 0 {
                self.unwanted_since[layer] = None;
                continue;
            }
            let since = *self.unwanted_since[layer].get_or_insert(now_ms);
            if now_ms.saturating_sub(since) >= PAUSE_AFTER_MS {
                send &= !bit;
                self.unwanted_since[layer] = None;
            }
        }
        (send != self.told).then(|| {
            self.told = send;
            send
        })
    }

    /// What the publisher was last told to send.
    pub fn sending(&self) -> LayerSet {
        self.told
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwanted_layers_pause_after_a_while_and_resume_at_once() {
        let mut d = Dynacast::new(3);
        assert_eq!(d.sending(), 0b111);
        d.set("a", Some(0), Some(0));
        assert_eq!(d.update(0), None, "nothing paused before PAUSE_AFTER_MS");
        assert_eq!(d.update(PAUSE_AFTER_MS - 1), None);
        assert_eq!(d.update(PAUSE_AFTER_MS), Some(0b001));
        assert_eq!(d.update(PAUSE_AFTER_MS + 1), None, "told once");
        // A subscriber with a better link wants the top layer: resumed at once.
        d.set("b", Some(2), Some(0));
        assert_eq!(d.update(PAUSE_AFTER_MS + 2), Some(0b101));
        d.remove(&"b");
        d.remove(&"a");
        assert_eq!(d.update(10_000), None);
        assert_eq!(d.update(10_000 + PAUSE_AFTER_MS), Some(0), "nobody watches: pause everything");
    }

    #[test]
    fn a_layer_still_received_during_a_switch_stays_wanted() {
        let mut d = Dynacast::new(3);
        d.set(1u64, Some(0), Some(2));
        d.update(0);
        assert_eq!(d.update(PAUSE_AFTER_MS), Some(0b101), "layer 1 paused; 2 flows until the switch");
        d.set(1u64, Some(0), Some(0));
        d.update(PAUSE_AFTER_MS + 1);
        assert_eq!(d.update(2 * PAUSE_AFTER_MS + 1), Some(0b001));
    }

    #[test]
    fn a_flapping_subscriber_does_not_make_the_publisher_flap() {
        let mut d = Dynacast::new(2);
        for step in 0..20u64 {
            d.set("a", Some((step % 2) as u8), None);
            assert_eq!(d.update(step * 100), None, "step {step}");
        }
        assert_eq!(all_layers(5), 0b111, "at most MAX_LAYERS");
    }
}
