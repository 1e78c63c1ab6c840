//! SFU-lite: the media plane (see docs/media.md).
//!
//! A participant publishes **tracks** (audio, video, screen). A track is a sequence of **groups**
//! (a video group starts at a keyframe; an audio group is a few frames); a group is a sequence of
//! **frames**, each with a timestamp and, for audio, a level. A video track may come in up to
//! [`MAX_LAYERS`] simulcast layers, each its own sequence of groups. The relay forwards frames as
//! opaque bytes: everything it decides on lives in small headers, so end-to-end encrypted media
//! passes through unchanged.
//!
//! The decisions are pure objects with `now` passed in, tested without sockets, as the design
//! brief asks (LiveKit's forwarder is the model):
//! - [`forwarder::Forwarder`]: per subscriber and track, which layer to forward, switching only
//!   at group starts, and when to ask the publisher for a keyframe;
//! - [`probe::Probe`] and [`probe::PathMonitor`]: per subscriber, when to try a layer above
//!   what the bandwidth estimate affords, and what congestion looks like;
//! - [`dynacast::Dynacast`]: per track, which layers anybody receives, so the publisher pauses
//!   the others;
//! - [`cache::GroupCache`]: per track and layer, the latest group, so a new subscriber starts at
//!   a keyframe at once;
//! - [`queue::GroupQueue`]: per subscriber, the groups on their way out, cancelling stale ones
//!   and bounding memory;
//! - [`speaker::SpeakerDetector`]: per call, who is speaking, from the audio levels;
//! - [`pacer::Pacer`]: per relay, how much of the big writes (keyframes) is handed to the
//!   subscribers' connections at once, so audio and delta frames never wait behind a whole
//!   keyframe burst.
//!
//! The IO (group streams, priorities, resets) stays in the transports.

pub mod cache;
pub mod calls;
pub mod dynacast;
pub mod forwarder;
pub mod out;
pub mod pacer;
pub mod probe;
pub mod queue;
pub mod speaker;

pub use crate::proto::media::{LayerInfo, TrackKind};

/// Identifies a published track within the relay.
pub type TrackId = u64;

/// Most simulcast layers of one video track (0 is the base layer, the smallest).
pub const MAX_LAYERS: usize = 3;

/// The QUIC stream priority of a group (higher is sent first): control and chat streams keep
/// quinn's default 0, above all media; then audio, screen, the video base layer, and higher
/// video layers last. In one congestion domain this keeps chat and audio flowing while video
/// waits.
pub fn priority(kind: TrackKind, layer: u8) -> i32 {
    match kind {
        TrackKind::Audio => -1,
        TrackKind::Screen => -2 - i32::from(layer),
        TrackKind::Video => -3 - i32::from(layer),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_before_audio_before_screen_before_video_layers() {
        let order = [
            0,
            priority(TrackKind::Audio, 0),
            priority(TrackKind::Screen, 0),
            priority(TrackKind::Video, 0),
            priority(TrackKind::Video, 1),
            priority(TrackKind::Video, 2),
        ];
        assert!(order.windows(2).all(|w| w[0] > w[1]), "{order:?}");
    }
}
