//! The relay-wide fanout pacer: big media writes (keyframes) go to the subscribers' QUIC
//! connections a bounded number of bytes at a time, so audio and small delta frames never queue
//! behind a keyframe burst of *other* subscribers.
//!
//! Why: quinn's stream priorities order the streams of one connection, not the CPU between
//! connections. A 50 KB keyframe to 200 subscribers is about 7,200 packets; written at once,
//! 200 connection drivers each get work for several of their turns (at most 20 datagrams a
//! turn, then back to the end of tokio's run queue), and an audio frame that arrives meanwhile
//! waits at the back of that queue, for every subscriber, about one full round of all 200
//! (docs/performance.md, media appendix). Bounding what is handed to quinn and not yet sent
//! bounds that wait, whatever the number of subscribers.
//!
//! The rule, per relay: a write of at most [`SMALL_BYTES`] (an audio frame, a delta frame) is
//! never paced. A bigger one is cut into chunks of at most [`CHUNK_BYTES`]; a chunk is written
//! only under a grant, and grants add up to at most a budget (bytes). A grant returns when its
//! chunk has been written and its connection has had a turn to send it (the writer yields once
//! after writing: its connection's driver, woken by the write, runs first), or after
//! [`HOLD_MS`] at the latest (a write that flow control blocks must not hold the budget).
//! Waiting writes are granted by their track's priority (higher first: screen before video's
//! base layer before higher layers), then by when their write began, so each subscriber gets a
//! whole keyframe before the next one starts (the mean time to a complete keyframe is half what
//! a round-robin gives, and the delta frames behind it on the same stream wait less).
//!
//! Pure: `now` passed in, wakers handed back to the caller (see [`SharedPacer`] for the IO glue).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;

/// Writes up to this many bytes are never paced: about one turn of a connection's driver
/// (quinn sends up to 20 datagrams of up to 1,452 bytes a turn), so they cost one turn.
pub const SMALL_BYTES: usize = 16 * 1024;

/// The most one grant covers: a big write is cut into chunks of this size.
pub const CHUNK_BYTES: usize = 16 * 1024;

/// Bytes of big writes that may be handed to the connections and not yet sent, over the whole
/// relay: four chunks, about 46 packets (about 0.4 ms of relay CPU at 9 µs per packet) ahead of
/// an audio frame at worst. Enough to keep both cores of a small box busy with keyframes when
/// nothing else waits.
pub const BUDGET_BYTES: usize = 4 * CHUNK_BYTES;

/// A grant older than this returns to the budget even if its writer has not said so (a write
/// that the subscriber's flow control blocks).
pub const HOLD_MS: u64 = 20;

/// Identifies one big write (all its chunks) in the pacer.
pub type Ticket = u64;

#[derive(Debug)]
struct Granted {
    bytes: usize,
    at_ms: u64,
}

/// Orders waiting writes: higher priority first, then the earlier write.
type WaitKey = (Reverse<i32>, Ticket);

#[derive(Debug)]
pub struct Pacer<W> {
    budget: usize,
    in_use: usize,
    next_ticket: Ticket,
    waiting: BTreeMap<WaitKey, (usize, W)>,
    /// Where each waiting ticket is in `waiting`.
    priorities: HashMap<Ticket, i32>,
    granted: HashMap<Ticket, Granted>,
}

impl<W> Pacer<W> {
    pub fn new(budget: usize) -> Pacer<W> {
        Pacer {
            budget: budget.max(1),
            in_use: 0,
            next_ticket: 1,
            waiting: BTreeMap::new(),
            priorities: HashMap::new(),
            granted: HashMap::new(),
        }
    }

    /// A new big write; its chunks all use this ticket, so they keep its place.
    pub fn ticket(&mut self) -> Ticket {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        ticket
    }

    /// Asks for `bytes` (one chunk) for `ticket` at `priority`. Granted at once (true) when it
    /// fits and no earlier write waits; else it waits and `waker` comes back from
    /// [`Pacer::release`] (or [`Pacer::expire`]) when it is granted. Also returns the wakers of
    /// writes that expiring grants let through.
    pub fn request(&mut self, ticket: Ticket, priority: i32, bytes: usize, waker: W, now_ms: u64) -> (bool, Vec<W>) {
        let mut wake = self.expire(now_ms);
        let ahead = self.waiting.keys().next().is_some_and(|first| *first < (Reverse(priority), ticket));
        if !ahead && self.fits(bytes) {
            self.grant(ticket, bytes, now_ms);
            return (true, wake);
        }
        self.waiting.insert((Reverse(priority), ticket), (bytes, waker));
        self.priorities.insert(ticket, priority);
        wake.extend(self.grant_waiting(now_ms));
        (self.granted.contains_key(&ticket), wake)
    }

    /// Whether `ticket` waits for a grant.
    pub fn is_waiting(&self, ticket: Ticket) -> bool {
        self.priorities.contains_key(&ticket)
    }

    /// Whether `ticket` holds a grant now.
    pub fn is_granted(&self, ticket: Ticket) -> bool {
        self.granted.contains_key(&ticket)
    }

    /// The chunk of `ticket` was written and sent, or the write was abandoned (waiting or
    /// not): its bytes return to the budget. The wakers of the writes granted now.
    pub fn release(&mut self, ticket: Ticket, now_ms: u64) -> Vec<W> {
        if let Some(granted) = self.granted.remove(&ticket) {
            self.in_use -= granted.bytes;
        }
        if let Some(priority) = self.priorities.remove(&ticket) {
            self.waiting.remove(&(Reverse(priority), ticket));
        }
        let mut wake = self.expire(now_ms);
        wake.extend(self.grant_waiting(now_ms));
        wake
    }

    /// Returns grants older than [`HOLD_MS`] to the budget; the wakers of the writes granted now.
    pub fn expire(&mut self, now_ms: u64) -> Vec<W> {
        let before = self.granted.len();
        let mut freed = 0;
        self.granted.retain(|_, g| {
            let keep = now_ms.saturating_sub(g.at_ms) < HOLD_MS;
            if !keep {
                freed += g.bytes;
            }
            keep
        });
        self.in_use -= freed;
        if self.granted.len() == before { Vec::new() } else { self.grant_waiting(now_ms) }
    }

    /// Bytes granted and not yet returned.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Writes waiting for a grant.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// A chunk fits when the budget has room for it, or when nothing is granted (a chunk
    /// bigger than the whole budget still goes, alone).
    fn fits(&self, bytes: usize) -> bool {
        self.in_use == 0 || self.in_use + bytes <= self.budget
    }

    fn grant(&mut self, ticket: Ticket, bytes: usize, now_ms: u64) {
        // A ticket holds one grant at a time; a second request replaces the first.
        if let Some(old) = self.granted.insert(ticket, Granted { bytes, at_ms: now_ms }) {
            self.in_use -= old.bytes;
        }
        self.in_use += bytes;
    }

    /// Grants waiting writes in order while they fit (strictly in order: a big chunk at the head
    /// is not overtaken by smaller ones behind it).
    fn grant_waiting(&mut self, now_ms: u64) -> Vec<W> {
        let mut wake = Vec::new();
        while let Some((_, (bytes, _))) = self.waiting.first_key_value() {
            if !self.fits(*bytes) {
                break;
            }
            let Some(((_, ticket), (bytes, waker))) = self.waiting.pop_first() else { break };
            self.priorities.remove(&ticket);
            self.grant(ticket, bytes, now_ms);
            wake.push(waker);
        }
        wake
    }
}

/// Cuts frames (in order) into chunks of at most `max` bytes each, splitting frames where
/// needed (a slice of a `Bytes` shares its memory: nothing is copied).
pub fn chunks(frames: Vec<Bytes>, max: usize) -> Vec<Vec<Bytes>> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut room = max;
    for mut frame in frames {
        while !frame.is_empty() {
            let piece = frame.split_to(frame.len().min(room));
            room -= piece.len();
            chunk.push(piece);
            if room == 0 {
                out.push(std::mem::take(&mut chunk));
                room = max;
            }
        }
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

/// The pacer shared by every subscriber connection's group writers, with the waiting done on
/// tokio's [`Notify`]. The transport's writer calls [`SharedPacer::acquire`] before each chunk
/// and drops the [`Grant`] once the chunk is written and its connection had a turn.
pub struct SharedPacer {
    pacer: Mutex<Pacer<Arc<Notify>>>,
}

impl Default for SharedPacer {
    fn default() -> Self {
        SharedPacer::new(BUDGET_BYTES)
    }
}

impl SharedPacer {
    pub fn new(budget: usize) -> SharedPacer {
        SharedPacer { pacer: Mutex::new(Pacer::new(budget)) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pacer<Arc<Notify>>> {
        self.pacer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new big write (see [`Pacer::ticket`]).
    pub fn ticket(&self) -> Ticket {
        self.lock().ticket()
    }

    /// Waits for a grant of `bytes` for `ticket`; `clock` is the time in ms (the transport's).
    /// Dropping the future (the group was reset) or the grant gives the place or the bytes back.
    pub async fn acquire(&self, ticket: Ticket, priority: i32, bytes: usize, clock: fn() -> u64) -> Grant<'_> {
        let grant = Grant { pacer: self, ticket, clock };
        let notify = Arc::new(Notify::new());
        let (granted, wake) = self.lock().request(ticket, priority, bytes, notify.clone(), clock());
        wake_all(wake);
        if granted {
            return grant;
        }
        loop {
            // A grant expiring elsewhere is noticed by whoever touches the pacer next; when
            // nobody does, the waiter looks itself.
            let _ = tokio::time::timeout(Duration::from_millis(HOLD_MS), notify.notified()).await;
            let mut pacer = self.lock();
            let now_ms = clock();
            let (granted, wake) = if pacer.is_granted(ticket) {
                (true, Vec::new())
            } else if pacer.is_waiting(ticket) {
                let wake = pacer.expire(now_ms);
                (pacer.is_granted(ticket), wake)
            } else {
                // Granted, but this task ran too late to use it: the grant expired. Ask again
                // (the ticket keeps its place).
                pacer.request(ticket, priority, bytes, notify.clone(), now_ms)
            };
            drop(pacer);
            wake_all(wake);
            if granted {
                return grant;
            }
        }
    }
}

fn wake_all(wake: Vec<Arc<Notify>>) {
    for notify in wake {
        notify.notify_one();
    }
}

/// A chunk's place in the budget (or in the queue, while waiting); returned when dropped.
pub struct Grant<'a> {
    pacer: &'a SharedPacer,
    ticket: Ticket,
    clock: fn() -> u64,
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        let wake = self.pacer.lock().release(self.ticket, (self.clock)());
        wake_all(wake);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIDEO_TOP: i32 = -5;
    const VIDEO_BASE: i32 = -3;

    #[test]
    fn frames_are_cut_into_chunks_in_order_without_gaps() {
        let frames = vec![Bytes::from(vec![1u8; 10]), Bytes::from(vec![2u8; 3]), Bytes::from(vec![3u8; 9])];
        let chunks = chunks(frames, 8);
        let sizes: Vec<Vec<usize>> = chunks.iter().map(|c| c.iter().map(Bytes::len).collect()).collect();
        assert_eq!(sizes, vec![vec![8], vec![2, 3, 3], vec![6]]);
        let joined: Vec<u8> = chunks.concat().concat().to_vec();
        assert_eq!(joined, [[1u8; 10].as_slice(), &[2u8; 3], &[3u8; 9]].concat());
        assert!(super::chunks(Vec::new(), 8).is_empty());
    }

    #[test]
    fn chunks_are_granted_up_to_the_budget_then_wait_in_order() {
        let mut p = Pacer::new(3 * CHUNK_BYTES);
        let t: Vec<Ticket> = (0..5).map(|_| p.ticket()).collect();
        for &ticket in &t[..3] {
            assert!(p.request(ticket, VIDEO_TOP, CHUNK_BYTES, ticket, 0).0);
        }
        assert!(!p.request(t[3], VIDEO_TOP, CHUNK_BYTES, t[3], 0).0);
        assert!(!p.request(t[4], VIDEO_TOP, CHUNK_BYTES, t[4], 0).0);
        assert_eq!(p.in_use(), 3 * CHUNK_BYTES);
        // One chunk sent: the write that waited longest goes next, only that one.
        assert_eq!(p.release(t[0], 1), vec![t[3]]);
        assert!(p.is_granted(t[3]) && !p.is_granted(t[4]));
        assert_eq!(p.release(t[1], 1), vec![t[4]]);
        assert_eq!(p.in_use(), 3 * CHUNK_BYTES);
    }

    #[test]
    fn a_write_keeps_its_place_for_its_next_chunk() {
        // Subscriber A's keyframe began first: its next chunk goes before B's first, so A has
        // the whole keyframe before B starts (not both half-way when time runs out).
        let mut p = Pacer::new(CHUNK_BYTES);
        let (a, b) = (p.ticket(), p.ticket());
        assert!(p.request(a, VIDEO_TOP, CHUNK_BYTES, "a", 0).0);
        assert!(!p.request(b, VIDEO_TOP, CHUNK_BYTES, "b", 0).0);
        // A's chunk is sent: B is granted now, but A's next chunk, asked at once, queues ahead
        // of anything that comes after B.
        assert_eq!(p.release(a, 1), vec!["b"]);
        assert!(!p.request(a, VIDEO_TOP, CHUNK_BYTES, "a", 1).0);
        let c = p.ticket();
        assert!(!p.request(c, VIDEO_TOP, CHUNK_BYTES, "c", 1).0);
        assert_eq!(p.release(b, 2), vec!["a"]);
    }

    #[test]
    fn a_later_write_of_a_higher_priority_goes_first() {
        let mut p = Pacer::new(CHUNK_BYTES);
        let (busy, top, base) = (p.ticket(), p.ticket(), p.ticket());
        assert!(p.request(busy, VIDEO_TOP, CHUNK_BYTES, "busy", 0).0);
        assert!(!p.request(top, VIDEO_TOP, CHUNK_BYTES, "top", 0).0);
        assert!(!p.request(base, VIDEO_BASE, CHUNK_BYTES, "base", 0).0);
        assert_eq!(p.release(busy, 1), vec!["base"]);
        assert_eq!(p.release(base, 2), vec!["top"]);
    }

    #[test]
    fn a_new_write_does_not_overtake_waiting_ones_even_when_it_would_fit() {
        let mut p = Pacer::new(2 * CHUNK_BYTES);
        let (a, b, c) = (p.ticket(), p.ticket(), p.ticket());
        assert!(p.request(a, VIDEO_TOP, CHUNK_BYTES + 1, "a", 0).0);
        assert!(!p.request(b, VIDEO_TOP, CHUNK_BYTES, "b", 0).0);
        // c is small enough for what is left, but b waits ahead of it.
        assert!(!p.request(c, VIDEO_TOP, 100, "c", 0).0);
        assert_eq!(p.release(a, 1), vec!["b", "c"]);
    }

    #[test]
    fn a_chunk_bigger_than_the_budget_goes_alone() {
        let mut p = Pacer::new(1000);
        let (a, b) = (p.ticket(), p.ticket());
        assert!(p.request(a, VIDEO_TOP, 5000, "a", 0).0);
        assert!(!p.request(b, VIDEO_TOP, 10, "b", 0).0);
        assert_eq!(p.release(a, 1), vec!["b"]);
    }

    #[test]
    fn an_abandoned_write_gives_back_its_grant_and_its_place() {
        let mut p = Pacer::new(CHUNK_BYTES);
        let (a, b, c) = (p.ticket(), p.ticket(), p.ticket());
        assert!(p.request(a, VIDEO_TOP, CHUNK_BYTES, "a", 0).0);
        assert!(!p.request(b, VIDEO_TOP, CHUNK_BYTES, "b", 0).0);
        assert!(!p.request(c, VIDEO_TOP, CHUNK_BYTES, "c", 0).0);
        // b's group was reset while it waited: it leaves the queue, granting nothing.
        assert!(p.release(b, 1).is_empty());
        assert_eq!(p.waiting(), 1);
        assert_eq!(p.release(a, 1), vec!["c"]);
        assert_eq!(p.release(c, 2), Vec::<&str>::new());
        assert_eq!((p.in_use(), p.waiting()), (0, 0));
    }

    #[test]
    fn a_grant_held_too_long_returns_to_the_budget() {
        // A write blocked by the subscriber's flow control must not stop every other keyframe.
        let mut p = Pacer::new(CHUNK_BYTES);
        let (stuck, next) = (p.ticket(), p.ticket());
        assert!(p.request(stuck, VIDEO_TOP, CHUNK_BYTES, "stuck", 0).0);
        assert!(!p.request(next, VIDEO_TOP, CHUNK_BYTES, "next", 0).0);
        assert!(p.expire(HOLD_MS - 1).is_empty());
        assert_eq!(p.expire(HOLD_MS), vec!["next"]);
        // The late release of the expired grant does not return its bytes twice.
        assert!(p.release(stuck, HOLD_MS + 1).is_empty());
        assert_eq!(p.in_use(), CHUNK_BYTES);
        // A grant that expired before its writer ran: neither granted nor waiting, so the writer
        // asks again, keeping its place ahead of later writes.
        let (late, after) = (p.ticket(), p.ticket());
        assert!(!p.request(late, VIDEO_TOP, CHUNK_BYTES, "late", HOLD_MS + 1).0);
        assert_eq!(p.expire(2 * HOLD_MS), vec!["late"]);
        assert!(!p.request(after, VIDEO_TOP, CHUNK_BYTES, "after", 2 * HOLD_MS).0);
        assert!(p.expire(3 * HOLD_MS).len() == 1 && !p.is_granted(late) && !p.is_waiting(late));
        assert!(p.is_granted(after));
        assert!(!p.request(late, VIDEO_TOP, CHUNK_BYTES, "late", 3 * HOLD_MS).0);
        assert_eq!(p.release(after, 3 * HOLD_MS), vec!["late"]);
    }
}
