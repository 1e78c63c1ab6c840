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
//!
//! Room messages never get that far: fanout and replay queue with a limit
//! ([`Outbox::push_within`]) and a room whose frames would pass it catches up from history
//! instead. The limit is checked twice: the connection's queued bytes against the caller's
//! limit, and a room lane's own bytes against [`Outbox::lane_limit`] (a quarter of the cap).
//! So a room stream the client stops reading (QUIC flow control) fills at most its own quarter
//! and falls behind alone, while the other rooms keep the rest of the cap and stay live.
//!
//! **Answers keep the order of their requests.** An answer that needs IO (a publish's `ack`
//! after the commit, `joined` after the engine's metadata, a history page) takes a slot in its
//! lane when the request arrives ([`Outbox::reserve`] returns a [`Reply`]); whatever is queued
//! on that lane after it (answers to later requests, messages) is held behind the slot until
//! it is answered. A [`Reply`] dropped unanswered frees its slot, so a lane never waits forever.
//!
//! Besides the reliable lanes there is one lossy **datagram queue** for state where only the
//! latest value matters (typing, presence, datagram pongs). Each entry has a [`DatagramKey`]
//! (kind + scope, e.g. presence of user U in room R): a push replaces a queued entry with the
//! same key (latest wins), the queue holds at most [`DATAGRAM_QUEUE_MAX`] entries (the oldest
//! is dropped), and its bytes count against the same cap as the lanes but are dropped first:
//! a reliable push that would overflow first evicts queued datagrams, and a datagram push never
//! closes the connection. How the queue leaves depends on the transport, which is the only
//! thing a transport decides:
//! - datagram-capable transports (raw QUIC, WebTransport) run a writer that calls
//!   [`Outbox::take_datagrams`] and sends each body as one datagram, or, when it does not fit
//!   the path's `max_datagram_size()` (or the peer disabled datagrams), re-queues it on the
//!   control lane with [`Outbox::push`] so it arrives reliably instead of not at all;
//! - single-stream transports (WebSocket) call [`Outbox::take_all`], which interleaves the
//!   datagram queue with the lanes right after the control lane.
//!
//! Fanout of a batch (the messages of one group commit) queues with [`Outbox::push_batched`]
//! and wakes each writer once, when [`Wakes`] is dropped at the end of the batch: a writer
//! then takes the whole batch and writes it with one syscall, instead of waking (and writing)
//! once per message while the batch is still being queued.
//!
//! A transport that can write without waiting installs a [`DirectWrite`] (WebSocket: a
//! non-blocking write to its socket). Whoever queues a frame then writes it at once, on its own
//! thread, and the connection's task is woken only when the socket is full or another thread is
//! writing. Without it, each delivery hands over to the writer on another thread: a wake-up and a
//! context switch per message, which costs more than the write itself.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::proto::codes::CloseReason;
use crate::proto::{Codec, ErrorCode, ServerFrame, WireFrame};

/// Identifies a lane of a connection's outbox.
pub type LaneId = u64;

/// The control lane: welcome, pong, errors, and everything on single-stream transports.
pub const CONTROL: LaneId = 0;

/// Most datagrams queued per connection; beyond it the oldest is dropped.
pub const DATAGRAM_QUEUE_MAX: usize = 256;

/// What a queued datagram is about: a newer datagram with the same key supersedes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DatagramKey {
    /// The kind of state (one of the `KIND_*` constants of the code that pushes it).
    pub kind: u8,
    /// What the state belongs to, e.g. `tenant/room/user`; shared by every subscriber's copy.
    pub scope: Arc<str>,
}

impl DatagramKey {
    pub fn new(kind: u8, scope: impl Into<Arc<str>>) -> Self {
        DatagramKey { kind, scope: scope.into() }
    }
}

/// Datagrams dropped from outboxes, by cause; read by metrics and tests.
#[derive(Debug, Default)]
pub struct DatagramDrops {
    /// Replaced by a newer datagram with the same key before it was sent.
    pub superseded: AtomicU64,
    /// Evicted because the queue was full or the byte cap was reached.
    pub evicted: AtomicU64,
}

impl DatagramDrops {
    fn count(&self, counter: &AtomicU64, reason: &'static str) {
        counter.fetch_add(1, Ordering::Relaxed);
        crate::metrics::datagram_dropped(reason);
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    #[error("outbox overflow: the connection is closed as a slow consumer")]
    Overflow,
    #[error("the connection is closing")]
    Closed,
    /// Only from [`Outbox::push_within`]: the frame would take the outbox past the given limit.
    /// Nothing changed; the caller decides (room messages switch to catch-up from history).
    #[error("outbox above its limit for this frame")]
    Full,
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
    /// Frames queued behind an unanswered [`Reply`] slot, in order; empty almost always.
    held: VecDeque<Held>,
    /// Bytes in `queue` and `held`.
    bytes: usize,
    notify: Arc<Notify>,
    closing: bool,
    /// Frames were queued by [`Outbox::push_batched`] and a [`Wakes`] holds this lane's wake-up.
    wake_pending: bool,
}

impl Lane {
    fn new() -> Lane {
        Lane {
            queue: VecDeque::new(),
            held: VecDeque::new(),
            bytes: 0,
            notify: Arc::new(Notify::new()),
            closing: false,
            wake_pending: false,
        }
    }

    /// Nothing queued or held: a closing lane in this state is finished.
    fn is_drained(&self) -> bool {
        self.queue.is_empty() && self.held.is_empty()
    }

    /// Moves what the answered slots at the front of `held` release to `queue`; true if any.
    fn release(&mut self) -> bool {
        let mut released = false;
        while let Some(Held::Ready(_)) = self.held.front() {
            if let Some(Held::Ready(Some(frame))) = self.held.pop_front() {
                self.queue.push_back(frame);
                released = true;
            }
        }
        released
    }
}

/// An entry of a lane's `held` queue.
enum Held {
    /// The slot of an unanswered request.
    Awaiting(u64),
    /// An answer (or `None`: a slot freed unanswered), or a frame queued behind a slot.
    Ready(Option<WireFrame>),
}

/// A connection's lanes in id order, the control lane first. A connection has a handful (one
/// per room joined), so a sorted vector: no hashing per queued frame, no table sized for growth
/// in every idle connection, and [`Outbox::take_all`] walks it in order without collecting and
/// sorting the ids each time.
struct Lanes(Vec<(LaneId, Lane)>);

impl Lanes {
    fn new() -> Lanes {
        Lanes(vec![(CONTROL, Lane::new())])
    }

    fn get_mut(&mut self, id: LaneId) -> Option<&mut Lane> {
        let at = self.0.binary_search_by_key(&id, |(id, _)| *id).ok()?;
        Some(&mut self.0[at].1)
    }

    fn get_or_open(&mut self, id: LaneId) -> &mut Lane {
        let at = match self.0.binary_search_by_key(&id, |(id, _)| *id) {
            Ok(at) => at,
            Err(at) => {
                self.0.insert(at, (id, Lane::new()));
                at
            }
        };
        &mut self.0[at].1
    }

    fn remove(&mut self, id: LaneId) {
        if let Ok(at) = self.0.binary_search_by_key(&id, |(id, _)| *id) {
            self.0.remove(at);
        }
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = &mut Lane> {
        self.0.iter_mut().map(|(_, lane)| lane)
    }

    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Writes queued frames on the thread that queued them (see the module docs).
pub trait DirectWrite: Send + Sync {
    /// Writes what `outbox` holds if the transport takes it now. False when the connection's
    /// own writer must be woken to finish: the socket is full, another thread is writing, or the
    /// connection is closing.
    fn write_now(&self, outbox: &Outbox) -> bool;
}

/// Writers to wake once a batch of pushes is queued (see the module docs). Wakes them all when
/// dropped, so a wake-up can never be forgotten.
#[derive(Default)]
pub struct Wakes {
    lanes: Vec<(Arc<Outbox>, LaneId)>,
}

impl Wakes {
    pub fn new() -> Wakes {
        Wakes::default()
    }

    /// Writers this batch wakes.
    pub fn len(&self) -> usize {
        self.lanes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lanes.is_empty()
    }

    /// Splits the wake-ups into parts of at most `per_part` writers (with direct writes, a
    /// wake-up is a write: parts let several threads share a big fanout).
    pub fn split(mut self, per_part: usize) -> Vec<Wakes> {
        let per_part = per_part.max(1);
        let mut parts = Vec::with_capacity(self.lanes.len().div_ceil(per_part));
        while self.lanes.len() > per_part {
            let rest = self.lanes.split_off(per_part);
            parts.push(Wakes { lanes: std::mem::replace(&mut self.lanes, rest) });
        }
        if !self.lanes.is_empty() {
            parts.push(Wakes { lanes: std::mem::take(&mut self.lanes) });
        }
        parts
    }

    /// Takes `other`'s wake-ups into this batch.
    pub fn append(&mut self, mut other: Wakes) {
        self.lanes.append(&mut other.lanes);
    }

    /// Wakes every writer that has frames from this batch.
    fn wake_all(&mut self) {
        for (outbox, lane) in self.lanes.drain(..) {
            outbox.wake(lane);
        }
    }
}

impl Drop for Wakes {
    fn drop(&mut self) {
        self.wake_all();
    }
}

/// The slot of a request's answer in its lane (see the module docs): answer it with
/// [`Reply::send`]. Dropped unanswered (the request was cancelled or needs no answer), it frees
/// the slot and the frames behind it go out.
pub struct Reply {
    outbox: Arc<Outbox>,
    lane: LaneId,
    slot: u64,
    req: u64,
    answered: bool,
}

impl Reply {
    /// The request this answers.
    pub fn req(&self) -> u64 {
        self.req
    }

    /// The lane the answer goes to (the request's, or the control lane if that was closed).
    pub fn lane(&self) -> LaneId {
        self.lane
    }

    /// Answers the request; only the first answer counts.
    pub fn send(&mut self, frame: &ServerFrame) -> Result<(), PushError> {
        if std::mem::replace(&mut self.answered, true) {
            return Err(PushError::Closed);
        }
        self.outbox.answer(self.lane, self.slot, Some(self.outbox.codec.frame(frame)))
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.answered {
            let _ = self.outbox.answer(self.lane, self.slot, None);
        }
    }
}

struct Inner {
    lanes: Lanes,
    /// The next [`Reply`] slot id.
    next_slot: u64,
    /// The lossy queue, oldest first; keys are unique.
    datagrams: VecDeque<(DatagramKey, WireFrame)>,
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
    /// Wakes the datagram writer (datagram-capable transports).
    datagram_notify: Arc<Notify>,
    drops: DatagramDrops,
    /// Notified whenever a writer takes frames: room for [`Outbox::push_waiting`].
    space: Notify,
    direct: OnceLock<Arc<dyn DirectWrite>>,
}

impl Outbox {
    pub fn new(codec: Codec, cap_bytes: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            codec,
            cap: cap_bytes,
            inner: Mutex::new(Inner {
                lanes: Lanes::new(),
                next_slot: 0,
                datagrams: VecDeque::new(),
                bytes: 0,
                closing: None,
            }),
            any: Notify::new(),
            closed: CancellationToken::new(),
            datagram_notify: Arc::new(Notify::new()),
            drops: DatagramDrops::default(),
            space: Notify::new(),
            direct: OnceLock::new(),
        })
    }

    /// From now on, frames are written by `writer` on the thread that queues them whenever it
    /// can; the single-stream writer is woken only when it cannot. Set once.
    pub fn write_directly(&self, writer: Arc<dyn DirectWrite>) {
        let _ = self.direct.set(writer);
    }

    /// Frames were queued for the single-stream writer: write them here if the transport can,
    /// else wake the writer.
    fn frames_queued(&self) {
        if let Some(direct) = self.direct.get()
            && direct.write_now(self)
        {
            return;
        }
        self.any.notify_one();
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
        inner.lanes.get_or_open(lane).notify.clone()
    }

    /// Marks a lane to be finished once its queued frames are written.
    pub fn close_lane(&self, lane: LaneId) {
        let mut inner = self.lock();
        if let Some(l) = inner.lanes.get_mut(lane) {
            l.closing = true;
            l.notify.notify_one();
        }
        drop(inner);
        self.any.notify_one();
    }

    /// Encodes `frame` in this connection's codec and queues it on a lane. Never blocks.
    pub fn send(&self, lane: LaneId, frame: &ServerFrame) -> Result<(), PushError> {
        self.push(lane, self.codec.frame(frame))
    }

    /// Queues the answer to a request that came on `lane`, on the control lane instead when
    /// `lane` has been closed meanwhile: a client's request can cross the `leave` that closed its
    /// room's stream (QUIC), and a publish's ack comes after its commit. Fails only once the
    /// connection is closing.
    pub fn reply(&self, lane: LaneId, frame: &ServerFrame) -> Result<(), PushError> {
        let frame = self.codec.frame(frame);
        match self.push(lane, frame.clone()) {
            Err(PushError::Closed) if lane != CONTROL && self.closing().is_none() => self.push(CONTROL, frame),
            sent => sent,
        }
    }

    /// Queues an encoded frame on a lane and wakes its writer. Never blocks.
    pub fn push(&self, lane: LaneId, frame: WireFrame) -> Result<(), PushError> {
        self.enqueue(lane, frame, None, false)?;
        self.frames_queued();
        Ok(())
    }

    /// Queues a frame only if the outbox stays within `limit` bytes; otherwise returns
    /// [`PushError::Full`] and changes nothing (no slow-consumer close).
    pub fn push_within(&self, lane: LaneId, frame: WireFrame, limit: usize) -> Result<(), PushError> {
        self.enqueue(lane, frame, Some(limit), false)?;
        self.frames_queued();
        Ok(())
    }

    /// [`Outbox::push_within`], but the writer is woken when `wakes` is, at the end of the batch.
    pub fn push_batched(
        self: &Arc<Self>,
        lane: LaneId,
        frame: WireFrame,
        limit: usize,
        wakes: &mut Wakes,
    ) -> Result<(), PushError> {
        if self.enqueue(lane, frame, Some(limit), true)? {
            wakes.lanes.push((self.clone(), lane));
        }
        Ok(())
    }

    /// Bytes a room lane may hold before its room catches up from history instead (a quarter of
    /// the cap; see the module docs). A lane holding nothing takes any frame.
    pub fn lane_limit(&self) -> usize {
        self.cap / 4
    }

    /// Queues a frame under one lock: `Full` past `limit` (or a room lane past its own limit),
    /// `Overflow` past the cap once datagrams are evicted. Unless `batched`, the lane's writer is
    /// notified at once (the caller still notifies `any`); if `batched`, true means the lane had
    /// no batched wake-up pending yet and the caller owes it one.
    fn enqueue(&self, lane: LaneId, frame: WireFrame, limit: Option<usize>, batched: bool) -> Result<bool, PushError> {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return Err(PushError::Closed);
        }
        let len = frame.len();
        let queued = inner.bytes;
        let Some(l) = inner.lanes.get_mut(lane).filter(|l| !l.closing) else {
            return Err(PushError::Closed);
        };
        if let Some(limit) = limit {
            let connection_full = queued > 0 && queued + len > limit.min(self.cap);
            let lane_full = lane != CONTROL && l.bytes > 0 && l.bytes + len > self.lane_limit();
            if connection_full || lane_full {
                return Err(PushError::Full);
            }
        }
        self.make_room(&mut inner, len)?;
        let Some(l) = inner.lanes.get_mut(lane) else { return Err(PushError::Closed) };
        l.bytes += len;
        let owed = if !l.held.is_empty() {
            // Behind an unanswered request: released (and its writer woken) when that is answered.
            l.held.push_back(Held::Ready(Some(frame)));
            false
        } else if batched {
            l.queue.push_back(frame);
            !std::mem::replace(&mut l.wake_pending, true)
        } else {
            l.queue.push_back(frame);
            l.notify.notify_one();
            false
        };
        inner.bytes += len;
        Ok(owed)
    }

    /// Makes `incoming` more bytes fit under the cap, evicting datagrams first (lossy state goes
    /// first); when they cannot fit, the connection overflows and closes as a slow consumer.
    fn make_room(&self, inner: &mut MutexGuard<'_, Inner>, incoming: usize) -> Result<(), PushError> {
        if inner.bytes + incoming > self.cap {
            self.evict_datagrams(inner, incoming);
        }
        if inner.bytes + incoming > self.cap {
            Self::overflow(inner);
            self.closed.cancel();
            self.any.notify_one();
            return Err(PushError::Overflow);
        }
        Ok(())
    }

    /// Takes a slot for the answer to a request that arrived on `lane` now: frames queued on the
    /// lane later wait until the answer is given (see the module docs). The slot is on the
    /// control lane when `lane` is closed or unknown.
    pub fn reserve(self: &Arc<Self>, lane: LaneId, req: u64) -> Reply {
        let mut inner = self.lock();
        let slot = inner.next_slot;
        inner.next_slot += 1;
        let open = inner.closing.is_none();
        let lane = if inner.lanes.get_mut(lane).is_some_and(|l| !l.closing) { lane } else { CONTROL };
        if open && let Some(l) = inner.lanes.get_mut(lane) {
            l.held.push_back(Held::Awaiting(slot));
        }
        Reply { outbox: self.clone(), lane, slot, req, answered: !open }
    }

    /// Fills a reserved slot (`None`: frees it unanswered) and releases what it held back.
    fn answer(&self, lane: LaneId, slot: u64, frame: Option<WireFrame>) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return Err(PushError::Closed);
        }
        let len = frame.as_ref().map_or(0, WireFrame::len);
        self.make_room(&mut inner, len)?;
        let Some(l) = inner.lanes.get_mut(lane) else { return Err(PushError::Closed) };
        let Some(entry) = l.held.iter_mut().find(|h| matches!(h, Held::Awaiting(s) if *s == slot)) else {
            return Err(PushError::Closed);
        };
        *entry = Held::Ready(frame);
        l.bytes += len;
        let released = l.release();
        if released {
            l.notify.notify_one();
        }
        inner.bytes += len;
        drop(inner);
        if released {
            self.frames_queued();
        }
        Ok(())
    }

    /// Wakes a lane's writer (and the single-stream writer).
    /// Wakes the lane's writer now: a batch that events batching held back (`events::batch`)
    /// goes out with a critical event, or once it is big enough.
    pub fn wake_now(&self, lane: LaneId) {
        self.wake(lane)
    }

    fn wake(&self, lane: LaneId) {
        let mut inner = self.lock();
        if let Some(l) = inner.lanes.get_mut(lane) {
            l.wake_pending = false;
            l.notify.notify_one();
        }
        drop(inner);
        self.frames_queued();
    }

    /// Queues a lossy frame: it replaces a queued frame with the same key, and when the queue or
    /// the byte cap is full the oldest datagrams are dropped. Never closes the connection.
    pub fn push_datagram(&self, key: DatagramKey, frame: WireFrame) -> Result<(), PushError> {
        let mut inner = self.lock();
        if inner.closing.is_some() {
            return Err(PushError::Closed);
        }
        if let Some(pos) = inner.datagrams.iter().position(|(k, _)| *k == key)
            && let Some((_, old)) = inner.datagrams.remove(pos)
        {
            inner.bytes -= old.len();
            self.drops.count(&self.drops.superseded, "superseded");
        }
        if inner.datagrams.len() >= DATAGRAM_QUEUE_MAX
            && let Some((_, old)) = inner.datagrams.pop_front()
        {
            inner.bytes -= old.len();
            self.drops.count(&self.drops.evicted, "evicted");
        }
        if inner.bytes + frame.len() > self.cap {
            self.evict_datagrams(&mut inner, frame.len());
            if inner.bytes + frame.len() > self.cap {
                self.drops.count(&self.drops.evicted, "evicted");
                return Ok(());
            }
        }
        inner.bytes += frame.len();
        inner.datagrams.push_back((key, frame));
        drop(inner);
        self.datagram_notify.notify_one();
        self.frames_queued();
        Ok(())
    }

    /// Drops the oldest datagrams until `incoming` more bytes fit under the cap (or none is left).
    fn evict_datagrams(&self, inner: &mut Inner, incoming: usize) {
        while inner.bytes + incoming > self.cap {
            let Some((_, old)) = inner.datagrams.pop_front() else { break };
            inner.bytes -= old.len();
            self.drops.count(&self.drops.evicted, "evicted");
        }
    }

    /// Takes up to `max` queued datagrams, oldest first (for datagram writers). `Empty` means
    /// wait on [`Outbox::datagram_notify`]; `Close` that the connection is closing.
    pub fn take_datagrams(&self, max: usize) -> Take {
        let mut inner = self.lock();
        if let Some(reason) = inner.closing {
            return Take::Close(reason);
        }
        let n = inner.datagrams.len().min(max);
        if n == 0 {
            return Take::Empty;
        }
        let frames: Vec<WireFrame> = inner.datagrams.drain(..n).map(|(_, f)| f).collect();
        inner.bytes -= frames.iter().map(WireFrame::len).sum::<usize>();
        drop(inner);
        self.space.notify_waiters();
        Take::Frames(frames)
    }

    /// The notification a datagram writer waits on.
    pub fn datagram_notify(&self) -> Arc<Notify> {
        self.datagram_notify.clone()
    }

    /// Datagrams this outbox dropped so far.
    pub fn datagram_drops(&self) -> &DatagramDrops {
        &self.drops
    }

    /// The byte cap shared by all lanes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Queues a frame once the outbox holds at most `limit - frame.len()` bytes, waiting for the
    /// writer to make room. Used by replay, which reads history at the pace the client reads.
    pub async fn push_waiting(&self, lane: LaneId, frame: WireFrame, limit: usize) -> Result<(), PushError> {
        loop {
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            match self.push_within(lane, frame.clone(), limit) {
                Err(PushError::Full) => {}
                other => return other,
            }
            tokio::select! {
                _ = space => {}
                _ = self.closed.cancelled() => return Err(PushError::Closed),
            }
        }
    }

    fn overflow(inner: &mut Inner) {
        inner.closing = Some(CloseReason::Error(ErrorCode::SLOW_CONSUMER));
        inner.bytes = 0;
        inner.datagrams = VecDeque::new();
        for lane in inner.lanes.iter_mut() {
            lane.queue = VecDeque::new();
            lane.held = VecDeque::new();
            lane.bytes = 0;
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
        for lane in inner.lanes.iter_mut() {
            lane.notify.notify_one();
        }
        drop(inner);
        self.closed.cancel();
        self.datagram_notify.notify_one();
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
        let Some(l) = inner.lanes.get_mut(lane) else {
            return closing.map_or(Take::Finished, Take::Close);
        };
        if l.queue.is_empty() {
            if let Some(code) = closing {
                return Take::Close(code);
            }
            if l.closing && l.held.is_empty() {
                inner.lanes.remove(lane);
                return Take::Finished;
            }
            return Take::Empty;
        }
        let n = l.queue.len().min(max);
        let frames: Vec<WireFrame> = l.queue.drain(..n).collect();
        let taken = frames.iter().map(WireFrame::len).sum::<usize>();
        l.bytes -= taken;
        inner.bytes -= taken;
        drop(inner);
        self.space.notify_waiters();
        Take::Frames(frames)
    }

    /// Takes up to `max` frames from all lanes, round-robin one frame per lane per pass,
    /// control lane first, then the datagram queue, then the rooms (for single-stream writers).
    /// Datagrams wait while the control lane has frames queued or held, so on a single stream
    /// a presence or typing frame never overtakes a reliable frame queued before it (a
    /// `presence_snapshot` comes before the updates that follow it). Closed lanes that are
    /// drained are removed.
    pub fn take_all(&self, max: usize) -> Take {
        let mut inner = self.lock();
        let mut frames = Vec::new();
        let Inner { lanes, datagrams, .. } = &mut *inner;
        loop {
            let before = frames.len();
            for (id, lane) in &mut lanes.0 {
                if frames.len() >= max {
                    break;
                }
                if let Some(frame) = lane.queue.pop_front() {
                    lane.bytes -= frame.len();
                    frames.push(frame);
                }
                if *id == CONTROL
                    && lane.is_drained()
                    && frames.len() < max
                    && let Some((_, frame)) = datagrams.pop_front()
                {
                    frames.push(frame);
                }
            }
            if frames.len() == before || frames.len() >= max {
                break;
            }
        }
        lanes.0.retain(|(id, l)| *id == CONTROL || !(l.closing && l.is_drained()));
        inner.bytes -= frames.iter().map(WireFrame::len).sum::<usize>();
        if !frames.is_empty() {
            drop(inner);
            self.space.notify_waiters();
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

    /// Lanes open, the control lane included.
    pub fn lanes_open(&self) -> u32 {
        self.lock().lanes.len() as u32
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
    fn batched_pushes_wake_each_writer_once_when_the_batch_ends() {
        use futures_util::FutureExt;
        let ob = Outbox::new(Codec::Json, 1000);
        let notify = ob.open_lane(3);
        let mut wakes = Wakes::new();
        for name in ["a", "b", "c"] {
            ob.push_batched(3, named(name), 500, &mut wakes).unwrap();
        }
        assert_eq!(wakes.lanes.len(), 1, "one wake-up per lane and batch");
        assert!(notify.notified().now_or_never().is_none(), "no writer woken while the batch is queued");
        drop(wakes);
        assert!(notify.notified().now_or_never().is_some());
        assert_eq!(ob.take(3, 10), Take::Frames(vec![named("a"), named("b"), named("c")]));
        // The next batch owes a wake-up again; past the limit a batched push is refused.
        let mut wakes = Wakes::new();
        ob.push_batched(3, frame(400), 500, &mut wakes).unwrap();
        assert_eq!(ob.push_batched(3, frame(200), 500, &mut wakes), Err(PushError::Full));
        assert_eq!(wakes.lanes.len(), 1);
    }

    #[test]
    fn a_batch_split_in_parts_still_wakes_every_writer_once() {
        use futures_util::FutureExt;
        let outboxes: Vec<_> = (0..5).map(|_| Outbox::new(Codec::Json, 1000)).collect();
        let notifies: Vec<_> = outboxes.iter().map(|ob| ob.open_lane(1)).collect();
        let mut wakes = Wakes::new();
        for ob in &outboxes {
            ob.push_batched(1, named("m"), 500, &mut wakes).unwrap();
        }
        let parts = wakes.split(2);
        assert_eq!(parts.iter().map(|p| p.lanes.len()).collect::<Vec<_>>(), [2, 2, 1]);
        assert!(notifies.iter().all(|n| n.notified().now_or_never().is_none()), "nobody woken before the parts run");
        drop(parts);
        assert!(notifies.iter().all(|n| n.notified().now_or_never().is_some()));
        assert!(Wakes::new().split(3).is_empty());
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

    fn key(scope: &str) -> DatagramKey {
        DatagramKey::new(1, scope)
    }

    #[test]
    fn datagrams_are_latest_wins_per_key() {
        let ob = Outbox::new(Codec::Json, 1000);
        ob.push_datagram(key("alice"), named("a1")).unwrap();
        ob.push_datagram(key("bob"), named("b1")).unwrap();
        ob.push_datagram(key("alice"), named("a2")).unwrap();
        assert_eq!(ob.datagram_drops().superseded.load(Ordering::Relaxed), 1);
        assert_eq!(ob.queued_bytes(), 2 * 6);
        assert_eq!(ob.take_datagrams(10), Take::Frames(vec![named("b1"), named("a2")]));
        assert_eq!(ob.take_datagrams(10), Take::Empty);
        assert_eq!(ob.queued_bytes(), 0);
    }

    #[test]
    fn datagram_queue_is_bounded_dropping_the_oldest() {
        let ob = Outbox::new(Codec::Json, 1 << 20);
        for i in 0..DATAGRAM_QUEUE_MAX + 3 {
            ob.push_datagram(key(&i.to_string()), named(&i.to_string())).unwrap();
        }
        assert_eq!(ob.datagram_drops().evicted.load(Ordering::Relaxed), 3);
        let Take::Frames(frames) = ob.take_datagrams(usize::MAX) else { panic!("expected frames") };
        assert_eq!(frames.len(), DATAGRAM_QUEUE_MAX);
        assert_eq!(frames.first(), Some(&named("3")), "the three oldest were dropped");
    }

    #[test]
    fn reliable_frames_evict_datagrams_before_overflowing() {
        let ob = Outbox::new(Codec::Json, 100);
        ob.push_datagram(key("a"), frame(40)).unwrap();
        ob.push_datagram(key("b"), frame(40)).unwrap();
        ob.push(CONTROL, frame(50)).unwrap();
        assert_eq!(ob.closing(), None, "datagrams made room; the connection lives");
        assert_eq!(ob.datagram_drops().evicted.load(Ordering::Relaxed), 1);
        assert_eq!(ob.queued_bytes(), 90);
        // A datagram that cannot fit is dropped, never fatal.
        ob.push_datagram(key("c"), frame(60)).unwrap();
        assert_eq!(ob.closing(), None);
        assert_eq!(ob.queued_bytes(), 50);
        assert_eq!(ob.take_datagrams(10), Take::Empty);
    }

    #[test]
    fn single_stream_writers_send_datagrams_once_the_control_lane_is_drained() {
        let ob = Outbox::new(Codec::Json, 1000);
        ob.open_lane(1);
        ob.push(1, named("r1")).unwrap();
        ob.push_datagram(key("t"), named("d1")).unwrap();
        ob.push(CONTROL, named("c1")).unwrap();
        ob.push(CONTROL, named("c2")).unwrap();
        let Take::Frames(frames) = ob.take_all(10) else { panic!("expected frames") };
        assert_eq!(frames, vec![named("c1"), named("r1"), named("c2"), named("d1")]);
        ob.push_datagram(key("t"), named("d2")).unwrap();
        ob.close(CloseReason::Normal);
        assert_eq!(ob.take_datagrams(10), Take::Close(CloseReason::Normal));
    }

    #[test]
    fn answers_keep_the_order_of_their_requests() {
        let ob = Outbox::new(Codec::Json, 1000);
        let mut ack = ob.reserve(CONTROL, 1);
        ob.push(CONTROL, named("pong")).unwrap();
        ob.push_datagram(key("p"), named("presence")).unwrap();
        assert_eq!(ob.take_all(10), Take::Empty, "everything waits behind the unanswered request");
        let mut joined = ob.reserve(CONTROL, 2);
        ob.push(CONTROL, named("message")).unwrap();
        joined.send(&ServerFrame::Pong { req: 2, server_time: 0 }).unwrap();
        assert_eq!(ob.take_all(10), Take::Empty, "a later answer waits for the earlier one");
        ack.send(&ServerFrame::Pong { req: 1, server_time: 0 }).unwrap();
        let Take::Frames(frames) = ob.take_all(10) else { panic!("expected frames") };
        let reqs: Vec<_> = frames
            .iter()
            .map(|f| match ob.codec().decode::<ServerFrame>(&f.body()) {
                Ok(ServerFrame::Pong { req, .. }) => format!("answer {req}"),
                _ => String::from_utf8_lossy(f.body_slice()).into_owned(),
            })
            .collect();
        assert_eq!(reqs, ["answer 1", "pong", "answer 2", "message", "presence"]);
        assert_eq!(ob.queued_bytes(), 0);
    }

    #[test]
    fn a_reply_dropped_unanswered_frees_its_slot_and_a_closing_lane_waits_for_it() {
        let ob = Outbox::new(Codec::Json, 1000);
        ob.open_lane(4);
        let reply = ob.reserve(4, 1);
        assert_eq!(reply.lane(), 4);
        ob.push(4, named("left")).unwrap();
        ob.close_lane(4);
        assert_eq!(ob.take(4, 10), Take::Empty, "not finished while an answer is due");
        drop(reply);
        assert_eq!(ob.take(4, 10), Take::Frames(vec![named("left")]));
        assert_eq!(ob.take(4, 10), Take::Finished);
        // A request arriving on a lane that is gone is answered on the control lane.
        assert_eq!(ob.reserve(4, 2).lane(), CONTROL);
    }

    #[test]
    fn a_full_room_lane_falls_behind_alone() {
        let ob = Outbox::new(Codec::Json, 1000);
        ob.open_lane(1);
        ob.open_lane(2);
        assert_eq!(ob.lane_limit(), 250);
        // Lane 1's reader stalls: its frames stay queued until its own limit.
        ob.push_within(1, frame(200), 750).unwrap();
        assert_eq!(ob.push_within(1, frame(100), 750), Err(PushError::Full));
        // Lane 2 is read; it keeps taking frames while the connection is within the limit.
        for _ in 0..20 {
            ob.push_within(2, frame(200), 750).unwrap();
            assert!(matches!(ob.take(2, 10), Take::Frames(_)));
        }
        assert_eq!(ob.push_within(1, frame(100), 750), Err(PushError::Full), "still behind");
        // An empty lane takes a frame bigger than its limit (it would never fit otherwise).
        ob.push_within(2, frame(300), 750).unwrap();
        assert_eq!(ob.closing(), None);
    }
}
