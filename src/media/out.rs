//! A subscriber connection's media on its way out: its [`GroupQueue`] behind a lock, shared by
//! the calls that forward to it and the transport that writes it. For every group the calls
//! start, the transport receives a [`GroupOpen`] (through a mailbox its connection task reads)
//! and runs one writer: a unidirectional stream at the group's priority that takes the group's
//! frames with [`MediaOut::next`] and is reset when the group is cancelled.
//!
//! The transport also reports the connection's path here ([`MediaOut::observe_path`]: congestion
//! window and RTT), which, with the queue's word on whether the subscriber keeps up, the
//! forwarders use to pick and probe layers ([`PathMonitor`]).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::probe::{PathMonitor, PathState};
use super::queue::{Cancel, GroupKey, GroupQueue, Next};
use super::{TrackId, TrackKind};
use crate::mailbox::MailSender;
use crate::proto::media::GroupHeader;

/// A group stream the transport must open.
#[derive(Debug)]
pub struct GroupOpen {
    pub key: GroupKey,
    /// What the stream starts with (the subscriber's group number and the layer).
    pub header: GroupHeader,
    pub priority: i32,
    /// Notified when frames are queued or the group completes.
    pub notify: Arc<Notify>,
    /// Cancelled when the group is (stale, queue full, track ended): reset the stream.
    pub cancel: CancellationToken,
}

struct Writer {
    notify: Arc<Notify>,
    cancel: CancellationToken,
}

struct State {
    queue: GroupQueue,
    writers: HashMap<GroupKey, Writer>,
}

pub struct MediaOut {
    state: Mutex<State>,
    opens: MailSender<GroupOpen>,
    /// The connection's budget and congestion, from the transport's readings and the queue.
    path: Mutex<PathMonitor>,
    /// Notified when the connection starts publishing (the transport allows it more streams).
    publishing: Notify,
    /// The connection subscribed to a track: its transport starts reporting [`MediaOut::budget`]
    /// (connections that receive no media never pay for the estimate).
    receiving: std::sync::atomic::AtomicBool,
}

impl MediaOut {
    /// `cap`: bytes of frames queued for writers at most (see [`GroupQueue`]).
    pub fn new(cap: usize, opens: MailSender<GroupOpen>) -> Arc<MediaOut> {
        Arc::new(MediaOut {
            state: Mutex::new(State { queue: GroupQueue::new(cap), writers: HashMap::new() }),
            opens,
            path: Mutex::new(PathMonitor::default()),
            publishing: Notify::new(),
            receiving: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Starts a group: cancels the groups it makes stale and asks the transport for a writer.
    pub fn start(&self, header: GroupHeader, kind: TrackKind, priority: i32, now_ms: u64) {
        let key = GroupKey { track: header.track, group: header.group };
        let mut state = self.lock();
        let cancelled = state.queue.start(key, kind, priority, now_ms);
        self.cancel_writers(&mut state, &cancelled);
        let writer = Writer { notify: Arc::new(Notify::new()), cancel: CancellationToken::new() };
        let open = GroupOpen { key, header, priority, notify: writer.notify.clone(), cancel: writer.cancel.clone() };
        state.writers.insert(key, writer);
        drop(state);
        count(&cancelled);
        if self.opens.send(open).is_err() {
            // The connection is gone; its calls forget it soon.
            self.lock().queue.acknowledged(key);
        }
    }

    /// Queues a frame (its wire bytes) of a started group.
    pub fn push(&self, key: GroupKey, frame: Bytes) {
        let mut state = self.lock();
        let cancelled = state.queue.push(key, frame);
        self.cancel_writers(&mut state, &cancelled);
        if let Some(writer) = state.writers.get(&key) {
            writer.notify.notify_one();
        }
        drop(state);
        count(&cancelled);
    }

    /// The publisher finished a group.
    pub fn complete(&self, key: GroupKey, now_ms: u64) {
        let mut state = self.lock();
        state.queue.complete(key, now_ms);
        if let Some(writer) = state.writers.get(&key) {
            writer.notify.notify_one();
        }
    }

    /// The publisher abandoned the group: its stream to this subscriber is reset.
    pub fn cancel(&self, key: GroupKey) {
        let mut state = self.lock();
        let cancelled = state.queue.cancel(key);
        self.cancel_writers(&mut state, &cancelled);
    }

    /// The track ended for this subscriber: its groups are reset.
    pub fn end_track(&self, track: TrackId) {
        let mut state = self.lock();
        let cancelled = state.queue.end_track(track);
        self.cancel_writers(&mut state, &cancelled);
    }

    fn cancel_writers(&self, state: &mut State, cancelled: &[(GroupKey, Cancel)]) {
        if state.queue.take_behind() {
            lock(&self.path).fell_behind();
        }
        for (key, _) in cancelled {
            if let Some(writer) = state.writers.remove(key) {
                writer.cancel.cancel();
            }
        }
    }

    /// For the group's writer: what to do next.
    pub fn next(&self, key: GroupKey) -> Next {
        self.lock().queue.next(key)
    }

    /// For the group's writer, when it is done (all acknowledged, reset, or the stream failed).
    pub fn done(&self, key: GroupKey) {
        let mut state = self.lock();
        state.queue.acknowledged(key);
        state.writers.remove(&key);
    }

    /// The connection publishes a track: its transport should accept group streams.
    pub fn will_publish(&self) {
        self.publishing.notify_one();
    }

    /// Completes when [`MediaOut::will_publish`] was called (a permit is kept).
    pub async fn publishing(&self) {
        self.publishing.notified().await
    }

    /// The connection subscribed to a track.
    pub fn will_receive(&self) {
        self.receiving.store(true, Ordering::Relaxed);
    }

    /// Whether the connection ever subscribed to a track (see [`MediaOut::will_receive`]).
    pub fn is_receiving(&self) -> bool {
        self.receiving.load(Ordering::Relaxed)
    }

    /// A reading of the connection's congestion controller: its window (bytes) and smoothed
    /// RTT.
    pub fn observe_path(&self, cwnd_bytes: u64, rtt: Duration, now_ms: u64) {
        let mut path = lock(&self.path);
        path.sample(cwnd_bytes, rtt, now_ms);
        let rtt = path.rtt_ms();
        drop(path);
        if let Some((srtt_ms, rttvar_ms)) = rtt {
            self.lock().queue.set_rtt(srtt_ms, rttvar_ms);
        }
    }

    /// The connection's budget and congestion, as the forwarders see them.
    pub fn path(&self) -> PathState {
        lock(&self.path).state()
    }
}

use crate::lock::lock;

fn count(cancelled: &[(GroupKey, Cancel)]) {
    for (_, why) in cancelled {
        let reason = match why {
            Cancel::Stale => "stale",
            Cancel::Full => "full",
        };
        metrics::counter!(crate::metrics::MEDIA_GROUPS_CANCELLED_TOTAL, "reason" => reason).increment(1);
    }
}
