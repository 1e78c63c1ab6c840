//! A delay line: items go in with the instant they are due and come out at that instant, in due
//! order (not insertion order, so jitter can reorder packets the way a real path does).
//!
//! One task per line holds a min-heap and sleeps until the earliest item is due. The input
//! channel is bounded; a full line is a full queue, and the caller drops the packet.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::future::Future;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many items a line holds before senders see it full.
pub(crate) const CAPACITY: usize = 8192;

pub(crate) type Sender<T> = mpsc::Sender<(Instant, T)>;

struct Due<T> {
    at: Instant,
    seq: u64,
    item: T,
}

impl<T> PartialEq for Due<T> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<T> Eq for Due<T> {}
impl<T> PartialOrd for Due<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Due<T> {
    /// Reversed, so `BinaryHeap` pops the earliest; equal instants leave in insertion order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Creates a line; run the returned future in a task. It ends when cancelled or when every sender
/// is gone and nothing is left to deliver.
pub(crate) fn line<T, F, Fut>(cancel: CancellationToken, deliver: F) -> (Sender<T>, impl Future<Output = ()>)
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = ()>,
{
    let (tx, rx) = mpsc::channel(CAPACITY);
    (tx, run(rx, cancel, deliver))
}

async fn run<T, F, Fut>(mut rx: mpsc::Receiver<(Instant, T)>, cancel: CancellationToken, mut deliver: F)
where
    F: FnMut(T) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut heap: BinaryHeap<Due<T>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut open = true;
    loop {
        let next = heap.peek().map(|d| d.at);
        if !open && next.is_none() {
            return;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            received = rx.recv(), if open => match received {
                Some((at, item)) => {
                    seq += 1;
                    heap.push(Due { at, seq, item });
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while heap.peek().is_some_and(|d| d.at <= now) {
                    if let Some(due) = heap.pop() {
                        deliver(due.item).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn items_leave_when_due_in_due_order() {
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let (tx, run) = line(CancellationToken::new(), move |item: (u32, Instant)| {
            let sink = sink.clone();
            async move { sink.lock().unwrap().push((item.0, Instant::now() - item.1)) }
        });
        let task = tokio::spawn(run);
        let start = Instant::now();
        for (id, ms) in [(1, 30), (2, 10), (3, 20), (4, 10)] {
            tx.send((start + Duration::from_millis(ms), (id, start))).await.unwrap();
        }
        drop(tx);
        task.await.unwrap();
        let out = out.lock().unwrap().clone();
        let ms = Duration::from_millis;
        assert_eq!(out, vec![(2, ms(10)), (4, ms(10)), (3, ms(20)), (1, ms(30))]);
    }
}
