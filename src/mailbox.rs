//! An unbounded multi-producer, single-consumer queue that allocates nothing until it is used.
//!
//! Every connection has mailboxes that stay empty for most of its life: catch-up requests from
//! the hub, orders from the server API. tokio's channels allocate a block of 32 slots up front,
//! 1-2 KiB per channel and connection; a mailbox is an empty `VecDeque` and a `Notify` until
//! something is sent. The API follows tokio's unbounded channel.

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

/// A new mailbox and its first sender.
pub fn mailbox<T>() -> (MailSender<T>, Mailbox<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State { queue: VecDeque::new(), senders: 1, receiver: true }),
        notify: Notify::new(),
    });
    (MailSender(shared.clone()), Mailbox(shared))
}

impl<T> MailSender<T> {
    /// Queues `item`; gives it back if the mailbox was dropped.
    pub fn send(&self, item: T) -> Result<(), T> {
        let mut state = self.0.lock();
        if !state.receiver {
            return Err(item);
        }
        state.queue.push_back(item);
        drop(state);
        self.0.notify.notify_one();
        Ok(())
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
            {
                let mut state = self.0.lock();
                if let Some(item) = state.queue.pop_front() {
                    return Some(item);
                }
                if state.senders == 0 {
                    return None;
                }
            }
            // A send between the check and here leaves a permit, so it is not missed.
            self.0.notify.notified().await;
        }
    }

    pub fn try_recv(&mut self) -> Result<T, Empty> {
        self.0.lock().queue.pop_front().ok_or(Empty)
    }
}

impl<T> Drop for Mailbox<T> {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.receiver = false;
        state.queue.clear();
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

    #[test]
    fn sending_to_a_dropped_mailbox_gives_the_item_back() {
        let (tx, rx) = mailbox();
        drop(rx);
        assert_eq!(tx.send("x"), Err("x"));
    }
}
