//! A multi-producer, single-consumer queue that allocates nothing until it is used, unbounded
//! or bounded.
//!
//! Every connection has mailboxes that stay empty for most of its life: catch-up requests from
//! the hub, orders from the server API, and on QUIC the frames its stream readers hand to the
//! connection loop. tokio's channels allocate a block of 32 slots up front, 1-2 KiB per channel
//! and connection; a mailbox is an empty `VecDeque` and a `Notify` (two when bounded) until
//! something is sent.
//! The API follows tokio's channels.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    receiver: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    /// `None` for an unbounded mailbox.
    bound: Option<Bound>,
}

struct Bound {
    capacity: usize,
    /// Senders waiting for room.
    room: Notify,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Sends to a [`Mailbox`]; clone it for more senders.
pub struct MailSender<T>(Arc<Shared<T>>);

/// The receiving end.
pub struct Mailbox<T>(Arc<Shared<T>>);

/// `try_recv` found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the mailbox is empty")]
pub struct Empty;

/// Why [`MailSender::try_send`] gave an item back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused<T> {
    /// A bounded mailbox holds `capacity` items.
    Full(T),
    /// The mailbox was dropped.
    Closed(T),
}

/// A new unbounded mailbox and its first sender.
pub fn mailbox<T>() -> (MailSender<T>, Mailbox<T>) {
    new_mailbox(None)
}

/// A new mailbox that holds at most `capacity` items, and its first sender.
pub fn bounded_mailbox<T>(capacity: usize) -> (MailSender<T>, Mailbox<T>) {
    new_mailbox(Some(Bound { capacity: capacity.max(1), room: Notify::new() }))
}

fn new_mailbox<T>(bound: Option<Bound>) -> (MailSender<T>, Mailbox<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { queue: VecDeque::new(), senders: 1, receiver: true }),
        notify: Notify::new(),
        bound,
    });
    (MailSender(shared.clone()), Mailbox(shared))
}

impl<T> MailSender<T> {
    /// Queues `item`; gives it back if the mailbox was dropped (or, bounded, is full).
    pub fn send(&self, item: T) -> Result<(), T> {
        self.try_send(item).map_err(|(Refused::Full(item) | Refused::Closed(item))| item)
    }

    /// Queues `item` if there is room; says why not otherwise.
    pub fn try_send(&self, item: T) -> Result<(), Refused<T>> {
        let mut state = self.0.lock();
        if !state.receiver {
            return Err(Refused::Closed(item));
        }
        if self.0.bound.as_ref().is_some_and(|b| state.queue.len() >= b.capacity) {
            return Err(Refused::Full(item));
        }
        state.queue.push_back(item);
        drop(state);
        self.0.notify.notify_one();
        Ok(())
    }

    /// Queues `item`, waiting while a bounded mailbox is full; gives it back if the mailbox was
    /// dropped. Cancel-safe: a cancelled wait queued nothing.
    pub async fn send_waiting(&self, item: T) -> Result<(), T> {
        let Some(bound) = &self.0.bound else { return self.send(item) };
        let mut item = item;
        loop {
            // Registered before the check, so room made between the check and the wait is seen.
            let room = bound.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(item) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed(back)) => return Err(back),
                Err(Refused::Full(back)) => item = back,
            }
            room.await;
        }
    }
}

impl<T> Clone for MailSender<T> {
    fn clone(&self) -> Self {
        self.0.lock().senders += 1;
        MailSender(self.0.clone())
    }
}

impl<T> Drop for MailSender<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.0.notify.notify_one();
        }
    }
}

impl<T> Mailbox<T> {
    /// The next item; `None` once every sender is gone and the queue is empty. Cancel-safe.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            let item = {
                let mut state = self.0.lock();
                match state.queue.pop_front() {
                    None if state.senders == 0 => return None,
                    item => item,
                }
            };
            if let Some(item) = item {
                self.made_room();
                return Some(item);
            }
            // A send between the check and here leaves a permit, so it is not missed.
            self.0.notify.notified().await;
        }
    }

    pub fn try_recv(&mut self) -> Result<T, Empty> {
        self.take().ok_or(Empty)
    }

    fn take(&self) -> Option<T> {
        let item = self.0.lock().queue.pop_front();
        if item.is_some() {
            self.made_room();
        }
        item
    }

    /// Wakes a sender waiting for room in a bounded mailbox.
    fn made_room(&self) {
        if let Some(bound) = &self.0.bound {
            bound.room.notify_one();
        }
    }
}

impl<T> Drop for Mailbox<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver = false;
        state.queue.clear();
        drop(state);
        if let Some(bound) = &self.0.bound {
            bound.room.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_recv_ends_when_senders_are_gone() {
        let (tx, mut rx) = mailbox();
        let tx2 = tx.clone();
        tx.send(1).unwrap();
        tx2.send(2).unwrap();
        assert_eq!(rx.recv().await, Some(1));
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.try_recv(), Err(Empty));
        let waiter = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::task::yield_now().await;
        tx.send(3).unwrap();
        drop((tx, tx2));
        assert_eq!(waiter.await.unwrap(), (Some(3), None));
    }

    #[tokio::test]
    async fn a_bounded_mailbox_refuses_or_waits_when_full_and_wakes_its_sender_when_emptied() {
        let (tx, mut rx) = bounded_mailbox(2);
        tx.send(1).unwrap();
        tx.try_send(2).unwrap();
        assert_eq!(tx.try_send(3), Err(Refused::Full(3)));
        assert_eq!(tx.send(3), Err(3));
        let waiting = tokio::spawn(async move { tx.send_waiting(3).await });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "the sender waits while the mailbox is full");
        assert_eq!(rx.recv().await, Some(1));
        within_a_second(waiting).await.unwrap().unwrap();
        assert_eq!((rx.try_recv(), rx.try_recv(), rx.recv().await), (Ok(2), Ok(3), None));
    }

    #[tokio::test]
    async fn a_sender_waiting_for_room_gets_its_item_back_when_the_mailbox_is_dropped() {
        let (tx, rx) = bounded_mailbox(1);
        tx.send("first").unwrap();
        let waiting = tokio::spawn(async move { tx.send_waiting("second").await });
        tokio::task::yield_now().await;
        drop(rx);
        assert_eq!(within_a_second(waiting).await.unwrap(), Err("second"));
    }

    async fn within_a_second<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(std::time::Duration::from_secs(1), f).await.expect("finished within a second")
    }

    #[test]
    fn sending_to_a_dropped_mailbox_gives_the_item_back() {
        let (tx, rx) = mailbox();
        drop(rx);
        assert_eq!(tx.send("x"), Err("x"));
    }
}
