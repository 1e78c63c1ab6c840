//! One subscriber's media groups on their way out, and the rule that keeps them fresh: **never
//! queue stale media**. Pure state; the transport runs one writer per group (a QUIC
//! unidirectional stream at the group's priority) that takes the group's frames from here and
//! resets its stream when the group is cancelled.
//!
//! A group is in flight from its start until the subscriber acknowledged all of it. It becomes
//! stale, and is cancelled, when a newer group of the same track starts while it still has
//! frames to write (queued here, or not yet sent by the publisher): a video group is useless
//! once the next keyframe is out. Under congestion the subscriber therefore gets the newest
//! group, not a backlog.
//!
//! Audio groups overlap instead: they are short (a few 20 ms frames), each on its own stream,
//! so a lost packet delays only its own group while the next ones flow. An audio group is reset
//! only when it is past any use: [`audio_deadline_ms`] after the publisher finished it (the
//! time this subscriber's path needs to recover a lost packet, which grows with its RTT: a
//! fixed deadline cut off 3g's retransmissions), or [`AUDIO_MAX_MS`] after it started,
//! whatever the paths. Audio is tiny (32 kbit/s is 4 KB a second), so this bounds the audio in
//! flight to a few kilobytes per subscriber while no retransmission that can still arrive in
//! time is thrown away. One exception: the group just before the new one, if it was already written whole (its stream
//! finished, waiting for acknowledgements) is left to finish, because on a healthy link that is
//! where the previous group is when the next one starts, and resetting it would throw away
//! frames already on their way. It is reset when yet another group starts, so at most one
//! finished group trails the current one.
//!
//! Memory is bounded per subscriber: frames not yet taken by a writer count against a byte cap;
//! past it the queue cancels groups, lowest priority (highest video layer) first and the oldest
//! among equals, until the new frame fits. Audio outranks video, so a saturated video
//! subscriber keeps its audio.
//!
//! Some cancellations say the subscriber's path cannot keep up, which the layer probing needs
//! to know ([`GroupQueue::take_behind`]): a full queue, or a stale group of the same layer that
//! still had frames to write or was written but not yet acknowledged a whole group later. An
//! audio group written whole and still unacknowledged [`AUDIO_LATE_MS`] after the publisher
//! finished it says so too (once), though it is kept: the layer choice stays as careful as when
//! such groups were reset at 400 ms. Counted from the publisher's finish, not the group's
//! start, so a publisher's slow uplink does not pass for the subscriber's path. A
//! stale group the publisher had not finished (a group boundary racing its stream's end) or one
//! of another layer (a layer switch) says nothing about the path.

use std::collections::VecDeque;

use bytes::Bytes;

use super::{TrackId, TrackKind};

/// The least time an audio group stays in flight after the publisher finished it (a path
/// with a short RTT; the deadline of the first version, measured from the group's start).
pub const AUDIO_STALE_MS: u64 = 400;

/// An audio group written whole and unacknowledged this long after the publisher finished it
/// says the subscriber is behind (the 400 ms the first version allowed from the start of a
/// 100 ms group).
pub const AUDIO_LATE_MS: u64 = 300;

/// The most time an audio group stays in flight after the publisher finished it, however long
/// the subscriber's RTT: a mobile link's deep buffers can hold acknowledgements that long
/// (behind netsim's `3g`, 1 s buffers each way, one came 1.6 s after its group).
pub const AUDIO_DEADLINE_MAX_MS: u64 = 2500;

/// The most time an audio group stays in flight after it started, finished or not (a
/// publisher whose own uplink stalls it cannot hold it longer). At 32 kbit/s that is 12 KB.
pub const AUDIO_MAX_MS: u64 = 3000;

/// Added to the RTT-based part of [`audio_deadline_ms`]: what readings taken every 250 ms have
/// not seen yet.
pub const AUDIO_DEADLINE_MARGIN_MS: u64 = 250;

/// How long an audio group the publisher finished stays useful to a subscriber whose path has
/// smoothed RTT `srtt_ms` varying by `rttvar_ms`: `6 × srtt + 4 × rttvar` plus
/// [`AUDIO_DEADLINE_MARGIN_MS`], at least [`AUDIO_STALE_MS`], at most [`AUDIO_DEADLINE_MAX_MS`].
/// QUIC needs about 9/8 of an RTT to declare a packet lost and one more to see its
/// retransmission acknowledged, so four RTTs cover a loss twice; the rest is for queues that
/// fill faster than the readings follow: behind netsim's `3g` (1 s buffers each way) a call
/// page's acknowledgements came 1,005 ms after the group while its RTT read 180 ms.
pub fn audio_deadline_ms(srtt_ms: u64, rttvar_ms: u64) -> u64 {
    (6 * srtt_ms + 4 * rttvar_ms + AUDIO_DEADLINE_MARGIN_MS).clamp(AUDIO_STALE_MS, AUDIO_DEADLINE_MAX_MS)
}

/// A group of one track, as the subscriber sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GroupKey {
    pub track: TrackId,
    pub group: u64,
}

/// What a group's writer does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Write these frames, in order.
    Frames(Vec<Bytes>),
    /// Nothing queued yet: wait for more.
    Wait,
    /// Every frame was taken and the group is complete: finish the stream, then report
    /// [`GroupQueue::acknowledged`] once the subscriber has it all.
    Finish,
    /// The group was cancelled (stale or over the cap): reset the stream.
    Reset,
}

#[derive(Debug)]
struct InFlight {
    key: GroupKey,
    priority: i32,
    started_ms: u64,
    /// When the publisher finished the group (ms); `None` while it sends.
    completed_ms: Option<u64>,
    /// An audio group already reported late (see [`GroupQueue::take_behind`]).
    late: bool,
    frames: VecDeque<Bytes>,
    /// Bytes of `frames`.
    bytes: usize,
    /// Every frame was taken and the writer finished the stream.
    written: bool,
}

/// Why groups were cancelled; counted by the relay's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// A newer group of the same track started.
    Stale,
    /// The subscriber's byte cap was reached.
    Full,
}

#[derive(Debug)]
pub struct GroupQueue {
    cap: usize,
    bytes: usize,
    /// In start order.
    groups: Vec<InFlight>,
    /// Cancelled groups whose writers have not seen it yet.
    cancelled: Vec<GroupKey>,
    /// A cancellation since the last [`GroupQueue::take_behind`] showed the subscriber behind.
    behind: bool,
    /// See [`audio_deadline_ms`].
    audio_deadline_ms: u64,
}

impl GroupQueue {
    /// A queue holding at most `cap` bytes of frames not yet taken by writers.
    pub fn new(cap: usize) -> GroupQueue {
        GroupQueue {
            cap,
            bytes: 0,
            groups: Vec::new(),
            cancelled: Vec::new(),
            behind: false,
            audio_deadline_ms: AUDIO_STALE_MS,
        }
    }

    /// The subscriber's path was measured: audio groups stay as long as it needs to recover a
    /// lost packet (see [`audio_deadline_ms`]).
    pub fn set_rtt(&mut self, srtt_ms: u64, rttvar_ms: u64) {
        self.audio_deadline_ms = audio_deadline_ms(srtt_ms, rttvar_ms);
    }

    /// A group starts for this subscriber; returns the groups it makes stale (cancelled).
    pub fn start(&mut self, key: GroupKey, kind: TrackKind, priority: i32, now_ms: u64) -> Vec<(GroupKey, Cancel)> {
        // The group just before this one, if it was written whole, may trail it.
        let trailing = self
            .groups
            .iter()
            .filter(|g| g.key.track == key.track && g.key.group < key.group)
            .max_by_key(|g| g.key.group)
            .filter(|g| g.written)
            .map(|g| g.key.group);
        let deadline = self.audio_deadline_ms;
        let past_use = |g: &InFlight| {
            now_ms.saturating_sub(g.started_ms) >= AUDIO_MAX_MS
                || g.completed_ms.is_some_and(|done| now_ms.saturating_sub(done) >= deadline)
        };
        let stale = |g: &InFlight| {
            g.key.track == key.track
                && g.key.group < key.group
                && Some(g.key.group) != trailing
                && (kind != TrackKind::Audio || past_use(g))
        };
        let behind = |g: &InFlight| g.priority == priority && (g.written || g.bytes > 0);
        self.behind |= self.groups.iter().any(|g| stale(g) && behind(g));
        if kind == TrackKind::Audio {
            for g in self.groups.iter_mut().filter(|g| g.key.track == key.track && g.key.group < key.group) {
                let late = !g.late
                    && g.completed_ms.is_some_and(|done| now_ms.saturating_sub(done) >= AUDIO_LATE_MS)
                    && behind(g);
                g.late |= late;
                self.behind |= late;
            }
        }
        let cancelled = self.cancel_where(stale, Cancel::Stale);
        self.groups.push(InFlight {
            key,
            priority,
            started_ms: now_ms,
            completed_ms: None,
            late: false,
            frames: VecDeque::new(),
            bytes: 0,
            written: false,
        });
        cancelled
    }

    /// A frame of a group in flight (frames of unknown or cancelled groups are ignored);
    /// returns the groups cancelled to make room for it, which may include its own.
    pub fn push(&mut self, key: GroupKey, frame: Bytes) -> Vec<(GroupKey, Cancel)> {
        let mut cancelled = Vec::new();
        while self.bytes + frame.len() > self.cap {
            // The lowest priority, oldest first: `min_by_key` keeps the first of equals.
            let victim =
                self.groups.iter().filter(|g| g.bytes > 0 || g.key == key).min_by_key(|g| g.priority).map(|g| g.key);
            let Some(victim) = victim else { break };
            self.behind = true;
            cancelled.extend(self.cancel_where(|g| g.key == victim, Cancel::Full));
        }
        if let Some(g) = self.groups.iter_mut().find(|g| g.key == key)
            && self.bytes + frame.len() <= self.cap
        {
            self.bytes += frame.len();
            g.bytes += frame.len();
            g.frames.push_back(frame);
        }
        cancelled
    }

    /// The publisher finished a group.
    pub fn complete(&mut self, key: GroupKey, now_ms: u64) {
        if let Some(g) = self.groups.iter_mut().find(|g| g.key == key) {
            g.completed_ms = Some(now_ms);
        }
    }

    /// What the writer of `key` does next (see [`Next`]).
    pub fn next(&mut self, key: GroupKey) -> Next {
        if let Some(at) = self.cancelled.iter().position(|k| *k == key) {
            self.cancelled.swap_remove(at);
            return Next::Reset;
        }
        let Some(g) = self.groups.iter_mut().find(|g| g.key == key) else { return Next::Reset };
        if g.frames.is_empty() {
            g.written = g.completed_ms.is_some();
            return if g.written { Next::Finish } else { Next::Wait };
        }
        let frames: Vec<Bytes> = g.frames.drain(..).collect();
        self.bytes -= g.bytes;
        g.bytes = 0;
        Next::Frames(frames)
    }

    /// The subscriber has all of `key` (or its writer gave up): it is no longer in flight.
    pub fn acknowledged(&mut self, key: GroupKey) {
        self.groups.retain(|g| g.key != key);
        self.cancelled.retain(|k| *k != key);
    }

    /// The publisher abandoned a group (reset its stream, or the relay refused the rest of it).
    pub fn cancel(&mut self, key: GroupKey) -> Vec<(GroupKey, Cancel)> {
        self.cancel_where(|g| g.key == key, Cancel::Stale)
    }

    /// The track ended (unpublished, unsubscribed or its publisher left): its groups are
    /// cancelled.
    pub fn end_track(&mut self, track: TrackId) -> Vec<(GroupKey, Cancel)> {
        self.cancel_where(|g| g.key.track == track, Cancel::Stale)
    }

    fn cancel_where(&mut self, mut which: impl FnMut(&InFlight) -> bool, why: Cancel) -> Vec<(GroupKey, Cancel)> {
        let mut cancelled = Vec::new();
        let bytes = &mut self.bytes;
        self.groups.retain(|g| {
            if !which(g) {
                return true;
            }
            *bytes -= g.bytes;
            cancelled.push((g.key, why));
            false
        });
        self.cancelled.extend(cancelled.iter().map(|(k, _)| *k));
        cancelled
    }

    /// Whether a cancellation since the last call showed the subscriber falling behind (see
    /// the module's docs).
    pub fn take_behind(&mut self) -> bool {
        std::mem::take(&mut self.behind)
    }

    /// Bytes queued and not yet taken.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Groups in flight.
    pub fn in_flight(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::priority;
    use super::*;

    fn key(track: TrackId, group: u64) -> GroupKey {
        GroupKey { track, group }
    }

    fn frame(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    fn video(q: &mut GroupQueue, k: GroupKey, layer: u8, now: u64) -> Vec<(GroupKey, Cancel)> {
        q.start(k, TrackKind::Video, priority(TrackKind::Video, layer), now)
    }

    #[test]
    fn frames_go_out_in_order_then_the_group_finishes() {
        let mut q = GroupQueue::new(1000);
        video(&mut q, key(1, 1), 0, 0);
        assert_eq!(q.next(key(1, 1)), Next::Wait);
        q.push(key(1, 1), frame(10));
        q.push(key(1, 1), frame(20));
        assert_eq!(q.next(key(1, 1)), Next::Frames(vec![frame(10), frame(20)]));
        assert_eq!(q.bytes(), 0);
        q.complete(key(1, 1), 0);
        assert_eq!(q.next(key(1, 1)), Next::Finish);
        q.acknowledged(key(1, 1));
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn a_new_video_group_cancels_the_one_still_in_flight() {
        let mut q = GroupQueue::new(1000);
        video(&mut q, key(1, 1), 0, 0);
        q.push(key(1, 1), frame(100));
        video(&mut q, key(2, 7), 0, 0);
        // Its frames are written, but the publisher has not finished it: still stale.
        assert!(matches!(q.next(key(1, 1)), Next::Frames(_)));
        assert!(!q.take_behind(), "the publisher had not finished it: a boundary, not the path");
        assert_eq!(video(&mut q, key(1, 2), 0, 10), vec![(key(1, 1), Cancel::Stale)]);
        assert!(!q.take_behind());
        assert_eq!(q.next(key(1, 1)), Next::Reset);
        assert_eq!(q.in_flight(), 2, "another track's group is untouched");
        q.acknowledged(key(1, 1));
        assert_eq!(q.next(key(1, 1)), Next::Reset, "unknown groups are reset, never waited on");
        // A group written whole and finished is left to be acknowledged, until one more starts.
        q.push(key(1, 2), frame(10));
        q.complete(key(1, 2), 10);
        assert!(matches!(q.next(key(1, 2)), Next::Frames(_)));
        assert_eq!(q.next(key(1, 2)), Next::Finish);
        assert!(video(&mut q, key(1, 3), 0, 20).is_empty());
        assert_eq!(q.in_flight(), 3);
        assert_eq!(video(&mut q, key(1, 4), 0, 30), vec![(key(1, 2), Cancel::Stale), (key(1, 3), Cancel::Stale)]);
        assert!(q.take_behind(), "group 2 was written whole and still not acknowledged: behind");
        assert!(!q.take_behind(), "reported once");
    }

    #[test]
    fn a_layer_switch_cancels_without_saying_the_subscriber_is_behind() {
        let mut q = GroupQueue::new(1000);
        video(&mut q, key(1, 1), 0, 0);
        q.push(key(1, 1), frame(100));
        assert_eq!(video(&mut q, key(1, 2), 2, 10), vec![(key(1, 1), Cancel::Stale)]);
        assert!(!q.take_behind());
        q.push(key(1, 2), frame(100));
        assert_eq!(video(&mut q, key(1, 3), 2, 20), vec![(key(1, 2), Cancel::Stale)]);
        assert!(q.take_behind(), "frames of the same layer never written: behind");
    }

    fn audio(q: &mut GroupQueue, g: u64, now: u64) -> Vec<(GroupKey, Cancel)> {
        q.start(key(5, g), TrackKind::Audio, priority(TrackKind::Audio, 0), now)
    }

    #[test]
    fn audio_groups_overlap_until_a_retransmission_could_no_longer_arrive() {
        let mut q = GroupQueue::new(1000);
        audio(&mut q, 1, 0);
        q.complete(key(5, 1), 100);
        assert!(audio(&mut q, 2, 100).is_empty(), "a retransmission may still make it");
        assert!(audio(&mut q, 3, 100 + AUDIO_STALE_MS - 1).is_empty());
        assert_eq!(audio(&mut q, 4, 100 + AUDIO_STALE_MS), vec![(key(5, 1), Cancel::Stale)]);
        assert_eq!(q.in_flight(), 3, "groups 2-4 were never finished by the publisher: kept");
    }

    #[test]
    fn audio_kept_past_its_first_deadline_still_says_the_subscriber_is_behind_once() {
        let mut q = GroupQueue::new(1000);
        q.set_rtt(200, 20);
        audio(&mut q, 1, 0);
        q.push(key(5, 1), frame(10));
        q.complete(key(5, 1), 100);
        assert!(matches!(q.next(key(5, 1)), Next::Frames(_)));
        assert_eq!(q.next(key(5, 1)), Next::Finish);
        assert!(audio(&mut q, 2, 100 + AUDIO_LATE_MS - 1).is_empty());
        assert!(!q.take_behind());
        assert!(audio(&mut q, 3, 100 + AUDIO_LATE_MS).is_empty(), "kept: a retransmission may still make it");
        assert!(q.take_behind(), "written whole and unacknowledged for 300 ms after its end");
        assert!(audio(&mut q, 4, 200 + AUDIO_LATE_MS).is_empty());
        assert!(!q.take_behind(), "reported once");
        // A group the publisher's uplink held back is not the subscriber's delay.
        q.push(key(5, 2), frame(10));
        q.complete(key(5, 2), 1_000);
        assert!(matches!(q.next(key(5, 2)), Next::Frames(_)));
        assert_eq!(q.next(key(5, 2)), Next::Finish);
        assert!(audio(&mut q, 5, 1_001).is_empty());
        assert!(!q.take_behind(), "started 600 ms ago, but finished just now");
    }

    #[test]
    fn a_long_round_trip_keeps_audio_longer_but_not_forever() {
        // 3g: 180 ms smoothed RTT varying by 15 ms. A packet lost at the end of a group is
        // detected after 9/8 RTT and its retransmission acknowledged an RTT later: ~400 ms
        // after the group was finished, up to 1 s when 3g's deep buffers fill: past the
        // short-path deadline.
        let mut q = GroupQueue::new(1000);
        q.set_rtt(180, 15);
        let deadline = audio_deadline_ms(180, 15);
        assert_eq!(deadline, 1390);
        audio(&mut q, 1, 0);
        q.complete(key(5, 1), 100);
        assert!(audio(&mut q, 2, 600).is_empty(), "kept past the 400 ms of a short path");
        assert!(audio(&mut q, 3, 99 + deadline).is_empty());
        assert_eq!(audio(&mut q, 4, 100 + deadline), vec![(key(5, 1), Cancel::Stale)]);
        // A group its publisher never finishes (its own uplink stalls it) goes at AUDIO_MAX_MS.
        assert!(audio(&mut q, 5, AUDIO_MAX_MS - 1).is_empty());
        assert_eq!(audio(&mut q, 6, 600 + AUDIO_MAX_MS), vec![(key(5, 2), Cancel::Stale)]);
        // However long the RTT, a finished group goes after AUDIO_DEADLINE_MAX_MS.
        assert_eq!(audio_deadline_ms(2_000, 500), AUDIO_DEADLINE_MAX_MS);
        assert_eq!(audio_deadline_ms(1, 0), AUDIO_STALE_MS);
    }

    #[test]
    fn the_byte_cap_cancels_video_layers_before_audio() {
        let mut q = GroupQueue::new(300);
        q.start(key(9, 1), TrackKind::Audio, priority(TrackKind::Audio, 0), 0);
        video(&mut q, key(1, 1), 0, 0);
        video(&mut q, key(2, 1), 2, 0);
        q.push(key(9, 1), frame(50));
        q.push(key(1, 1), frame(100));
        q.push(key(2, 1), frame(100));
        assert_eq!(q.push(key(9, 1), frame(60)), vec![(key(2, 1), Cancel::Full)], "the top layer goes first");
        assert!(q.take_behind());
        assert_eq!(q.push(key(9, 1), frame(100)), vec![(key(1, 1), Cancel::Full)]);
        assert_eq!(q.bytes(), 210);
        assert_eq!(q.next(key(9, 1)), Next::Frames(vec![frame(50), frame(60), frame(100)]));
        // A frame bigger than the cap cancels its own group rather than passing the cap.
        assert_eq!(q.push(key(9, 1), frame(500)), vec![(key(9, 1), Cancel::Full)]);
        assert_eq!(q.bytes(), 0);
    }

    #[test]
    fn an_ended_track_cancels_its_groups() {
        let mut q = GroupQueue::new(1000);
        video(&mut q, key(1, 1), 0, 0);
        video(&mut q, key(2, 1), 0, 0);
        assert_eq!(q.end_track(1), vec![(key(1, 1), Cancel::Stale)]);
        assert_eq!(q.next(key(1, 1)), Next::Reset);
        assert_eq!(q.in_flight(), 1);
    }
}
