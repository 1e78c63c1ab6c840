//! Per-connection outgoing queues and their slow-consumer policy.
//!
//! The hub pushes encoded frames here without ever waiting: a push is a short lock and a
//! `VecDeque` append. Writers (one per connection on WebSocket, one per stream on QUIC) drain
//! the queues at the pace the peer reads.
//!
//! A connection has lanes: lane 0 is the control lane; on QUIC every room stream is a lane of
//! its own, so a stalled room stream never holds back another room. All lanes of a connection
//! share one byte cap (`limits.outbox_bytes`). When a push would exceed it, the client is not
//! keeping up: the queues are dropped at once (memory is bounded, other subscribers are never
//! slowed) and the connection is closed with `slow_consumer` (130), a retryable code. The
//! client reconnects and rejoins with its last positions.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::proto::codes::CloseReason;
use crate::proto::{Codec, ErrorCode, WireFrame};

/// Identifies a lane of a connection's outbox.
pub type LaneId = u64;

/// The control lane: welcome, pong, errors, and everything on single-stream transports.
pub const CONTROL: LaneId = 0;

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("outbox overflow: the connection is closed as a slow consumer")]
    Overflow,
    #[error("the connection is closing")]
    Closed,
}

/// What a writer should do after taking from its lane.
#[derive(Debug, PartialEq, Eq)]
pub enum Take {
    /// Frames to write, in order.
    Frames(Vec<WireFrame>),
    /// Nothing queued; wait for the lane's notification.
    Empty,
    /// The lane was closed and is drained: finish the stream.
    Finished,
    /// The connection is closing: everything queued was written (for `slow_consumer`, dropped).
    Close(CloseReason),
}

struct Lane {
    queue: VecDeque<WireFrame>,
    notify: Arc<Notify>,
    closing: bool,
}

struct Inner {
    lanes: HashMap<LaneId, Lane>,
    /// Bytes queued across all lanes, checked against the cap.
    bytes: usize,
    closing: Option<CloseReason>,
}

/// The outgoing side of one connection.
pub struct Outbox {
    codec: Codec,
    cap: usize,
    inner: Mutex<Inner>,
    /// Wakes a single writer that serves every lane (WebSocket) and the connection driver.
    any: Notify,
    /// Cancelled once the connection starts closing.
    closed: CancellationToken,
}

impl Outbox {
    pub fn new(codec: Codec, cap_bytes: usize) -> Arc<Outbox> {
        let mut lanes = HashMap::new();
        lanes.insert(CONTROL, Lane { queue: VecDeque::new(), notify: Arc::new(Notify::new()), closing: false });
        Arc::new(Outbox {
            codec,
            cap: cap_bytes,
            inner: Mutex::new(Inner { lanes, bytes: 0, closing: None }),
            any: Notify::new(),
            closed: CancellationToken::new(),
        })
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave the queues inconsistent in a way that
        // matters more than losing the connection, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a lane and returns the notification its writer waits on.
    pub fn open_lane(&self, lane: LaneId) -> Arc<Notify> {
        let mut inner = self.lock();
        let entry = inner.lanes.entry(lane).or_insert_with(|| Lane {
            queue: VecDeque::new(),
            notify: Arc::new(Notify::new()),
            closing: false,
        });
        entry.notify.clone()
    }

    /// Marks a lane to be finished once its queued frames are written.
    pub fn close_lane(&self, lane: LaneId) {
        let mut inner = self.lock();
        if let Some(l) = inner.lanes.get_mut(&lane) {
            l.closing = true;
            l.notify.notify_one();
        }
        drop(inner);
        self.any.notify_one();
    }

    /// Queues an encoded frame on a lane. Never blocks.
    pub fn push(&self, lane: LaneId, frame: WireFrame) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return Err(PushError::Closed);
        }
        if inner.bytes + frame.len() > self.cap {
            Self::overflow(&mut inner);
            drop(inner);
            self.closed.cancel();
            self.any.notify_one();
            return Err(PushError::Overflow);
        }
        let len = frame.len();
        let Some(l) = inner.lanes.get_mut(&lane).filter(|l| !l.closing) else {
            return Err(PushError::Closed);
        };
        l.queue.push_back(frame);
        l.notify.notify_one();
        inner.bytes += len;
        drop(inner);
        self.any.notify_one();
        Ok(())
    }

    fn overflow(inner: &mut Inner) {
        inner.closing = Some(CloseReason::Error(ErrorCode::SLOW_CONSUMER));
        inner.bytes = 0;
        for lane in inner.lanes.values_mut() {
            lane.queue = VecDeque::new();
            lane.notify.notify_one();
        }
    }

    /// Closes the connection with `code` once everything queued so far is written.
    /// The first close wins.
    pub fn close(&self, reason: CloseReason) {
        let mut inner = self.lock();
        if inner.closing.is_none() {
            inner.closing = Some(reason);
        }
        for lane in inner.lanes.values() {
            lane.notify.notify_one();
        }
        drop(inner);
        self.closed.cancel();
        self.any.notify_one();
    }

    /// Why the connection is closing, once it is.
    pub fn closing(&self) -> Option<CloseReason> {
        self.lock().closing
    }

    /// Completes once the connection starts closing.
    pub async fn closed(&self) {
        self.closed.cancelled().await
    }

    /// Takes up to `max` frames from one lane (for per-stream writers).
    pub fn take(&self, lane: LaneId, max: usize) -> Take {
        let mut inner = self.lock();
        let closing = inner.closing;
        let Some(l) = inner.lanes.get_mut(&lane) else {
            return closing.map_or(Take::Finished, Take::Close);
        };
        if l.queue.is_empty() {
            if let Some(code) = closing {
                return Take::Close(code);
            }
            if l.closing {
                inner.lanes.remove(&lane);
                return Take::Finished;
            }
            return Take::Empty;
        }
        let n = l.queue.len().min(max);
        let frames: Vec<WireFrame> = l.queue.drain(..n).collect();
        inner.bytes -= frames.iter().map(WireFrame::len).sum::<usize>();
        Take::Frames(frames)
    }

    /// Takes up to `max` frames from all lanes, round-robin one frame per lane per pass,
    /// control lane first (for single-stream writers). Closed lanes that are drained are removed.
    pub fn take_all(&self, max: usize) -> Take {
        let mut inner = self.lock();
        let mut frames = Vec::new();
        let mut ids: Vec<LaneId> = inner.lanes.keys().copied().collect();
        ids.sort_unstable();
        loop {
            let before = frames.len();
            for id in &ids {
                if frames.len() >= max {
                    break;
                }
                if let Some(frame) = inner.lanes.get_mut(id).and_then(|l| l.queue.pop_front()) {
                    frames.push(frame);
                }
            }
            if frames.len() == before || frames.len() >= max {
                break;
            }
        }
        inner.bytes -= frames.iter().map(WireFrame::len).sum::<usize>();
        inner.lanes.retain(|id, l| *id == CONTROL || !(l.closing && l.queue.is_empty()));
        if !frames.is_empty() {
            return Take::Frames(frames);
        }
        match inner.closing {
            Some(code) => Take::Close(code),
            None => Take::Empty,
        }
    }

    /// Waits until something may have changed for a single-stream writer or the driver.
    pub async fn changed(&self) {
        self.any.notified().await
    }

    /// Bytes queued and not yet taken by a writer.
    pub fn queued_bytes(&self) -> usize {
        self.lock().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: usize) -> WireFrame {
        WireFrame::from_body(&vec![7u8; n.saturating_sub(4)])
    }

    fn named(name: &str) -> WireFrame {
        WireFrame::from_body(name.as_bytes())
    }

    #[test]
    fn frames_come_out_in_order_per_lane() {
        let ob = Outbox::new(Codec::Json, 1000);
        ob.open_lane(5);
        ob.push(5, named("a")).unwrap();
        ob.push(5, named("b")).unwrap();
        ob.push(CONTROL, named("c")).unwrap();
        assert_eq!(ob.queued_bytes(), 3 + 3 * 4);
        assert_eq!(ob.take(5, 10), Take::Frames(vec![named("a"), named("b")]));
        assert_eq!(ob.take(5, 10), Take::Empty);
        assert_eq!(ob.queued_bytes(), 5);
    }

    #[test]
    fn take_all_interleaves_lanes_control_first() {
        let ob = Outbox::new(Codec::Json, 1000);
        ob.open_lane(1);
        ob.push(1, named("r1")).unwrap();
        ob.push(1, named("r2")).unwrap();
        ob.push(CONTROL, named("c1")).unwrap();
        let Take::Frames(frames) = ob.take_all(10) else { panic!("expected frames") };
        assert_eq!(frames, vec![named("c1"), named("r1"), named("r2")]);
    }

    #[test]
    fn overflow_drops_everything_and_closes_as_slow_consumer() {
        let ob = Outbox::new(Codec::Postcard, 100);
        ob.push(CONTROL, frame(60)).unwrap();
        assert_eq!(ob.push(CONTROL, frame(60)), Err(PushError::Overflow));
        assert_eq!(ob.queued_bytes(), 0);
        let slow = CloseReason::Error(ErrorCode::SLOW_CONSUMER);
        assert_eq!(ob.closing(), Some(slow));
        assert_eq!(ob.take(CONTROL, 10), Take::Close(slow));
        assert_eq!(ob.push(CONTROL, frame(1)), Err(PushError::Closed));
    }

    #[test]
    fn close_flushes_queued_frames_first() {
        let ob = Outbox::new(Codec::Json, 100);
        ob.push(CONTROL, frame(3)).unwrap();
        ob.close(CloseReason::Error(ErrorCode::GOING_AWAY));
        ob.close(CloseReason::Normal);
        assert_eq!(ob.take_all(10), Take::Frames(vec![frame(3)]));
        assert_eq!(ob.take_all(10), Take::Close(CloseReason::Error(ErrorCode::GOING_AWAY)));
    }

    #[test]
    fn closed_lane_finishes_after_drain() {
        let ob = Outbox::new(Codec::Json, 100);
        ob.open_lane(9);
        ob.push(9, frame(2)).unwrap();
        ob.close_lane(9);
        assert_eq!(ob.push(9, frame(2)), Err(PushError::Closed));
        assert_eq!(ob.take(9, 10), Take::Frames(vec![frame(2)]));
        assert_eq!(ob.take(9, 10), Take::Finished);
    }
}
