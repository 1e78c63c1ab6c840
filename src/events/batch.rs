//! Batching of normal-priority events (`events.batch_delay_ms`, `events.batch_bytes`; off by
//! default): fanout queues a normal event without waking the subscriber's writer, and the
//! writer is woken `batch_delay_ms` later, when the connection's queue reaches `batch_bytes`,
//! or when anything else (a critical event, a chat message, an answer) wakes it first. The
//! writer then takes every frame queued and writes them in one transport write (one syscall on
//! WebSocket, one stream write on QUIC), as it does for any backlog: no wire change.
//!
//! [`Deferred`] is the pending wake-ups as a plain value with `now` passed in; [`run`] is the
//! timer that fires them (one task per relay).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::lock::lock;
use crate::outbox::Wakes;

/// Wake-ups held back, oldest first. Every batch waits the same delay, so deadlines are in
/// push order.
#[derive(Default)]
pub struct Deferred {
    pending: VecDeque<(Instant, Wakes)>,
}

impl Deferred {
    /// Holds `wakes` until `at`.
    pub fn push(&mut self, at: Instant, wakes: Wakes) {
        if !wakes.is_empty() {
            self.pending.push_back((at, wakes));
        }
    }

    /// The wake-ups due at `now` (dropping them wakes their writers).
    pub fn due(&mut self, now: Instant) -> Vec<Wakes> {
        let mut due = Vec::new();
        while self.pending.front().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, wakes)) = self.pending.pop_front() {
                due.push(wakes);
            }
        }
        due
    }

    /// When the next wake-up is due.
    pub fn next(&self) -> Option<Instant> {
        self.pending.front().map(|(at, _)| *at)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// The batching settings and the wake-ups waiting for their delay.
pub struct Batcher {
    pub delay: Duration,
    /// A connection with this many bytes queued is woken at once.
    pub max_bytes: usize,
    deferred: Mutex<Deferred>,
    changed: Notify,
}

impl Batcher {
    pub fn new(delay: Duration, max_bytes: usize) -> Batcher {
        Batcher { delay, max_bytes, deferred: Mutex::default(), changed: Notify::new() }
    }

    /// Wakes `wakes` after the delay.
    pub fn defer(&self, wakes: Wakes) {
        if wakes.is_empty() {
            return;
        }
        let mut deferred = lock(&self.deferred);
        let was_empty = deferred.is_empty();
        deferred.push(Instant::now() + self.delay, wakes);
        drop(deferred);
        if was_empty {
            self.changed.notify_one();
        }
    }

    pub(crate) fn due(&self, now: Instant) -> (Vec<Wakes>, Option<Instant>) {
        let mut deferred = lock(&self.deferred);
        (deferred.due(now), deferred.next())
    }
}

/// Fires deferred wake-ups when due, until `stop` (then at once, so nothing stays queued).
pub async fn run(batcher: Arc<Batcher>, stop: CancellationToken) {
    loop {
        let (due, next) = batcher.due(Instant::now());
        drop(due);
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = batcher.changed.notified() => {}
            _ = sleep => {}
        }
    }
    let (due, _) = batcher.due(Instant::now() + batcher.delay);
    drop(due);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{CONTROL, Outbox, Take};
    use crate::proto::{Codec, ServerFrame};

    #[test]
    fn wake_ups_are_held_until_due_in_order() {
        let outbox = Outbox::new(Codec::Json, 1 << 20);
        let t0 = Instant::now();
        let mut deferred = Deferred::default();
        let mut wakes = Wakes::new();
        let frame = Codec::Json.frame(&ServerFrame::Pong { req: 1, server_time: 0 });
        outbox.push_batched(CONTROL, frame, 1 << 20, &mut wakes).unwrap();
        assert_eq!(wakes.len(), 1);
        deferred.push(t0 + Duration::from_millis(5), wakes);
        deferred.push(t0 + Duration::from_millis(9), Wakes::new());
        assert_eq!(deferred.len(), 1, "an empty batch is not kept");
        assert!(deferred.due(t0 + Duration::from_millis(4)).is_empty());
        assert_eq!(deferred.next(), Some(t0 + Duration::from_millis(5)));
        // The frame is queued all along; the writer is only woken late.
        assert!(matches!(outbox.take_all(64), Take::Frames(f) if f.len() == 1));
        assert_eq!(deferred.due(t0 + Duration::from_millis(5)).len(), 1);
        assert!(deferred.is_empty());
    }
}
