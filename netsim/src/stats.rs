//! Counters a running proxy keeps, per direction, and the snapshot [`Stats`] it hands out.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::model::{DropReason, Fate};

/// What happened to the packets (or stream segments) of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Packets (segments) offered to the model, and their bytes.
    pub packets: u64,
    pub bytes: u64,
    pub delivered: u64,
    pub duplicated: u64,
    pub dropped_blackout: u64,
    pub dropped_mtu: u64,
    pub dropped_queue: u64,
    pub dropped_loss: u64,
    /// Stream mode: segments that arrived late because the model lost them (a retransmission).
    pub retransmitted: u64,
}

impl DirectionStats {
    pub fn dropped(&self) -> u64 {
        self.dropped_blackout + self.dropped_mtu + self.dropped_queue + self.dropped_loss
    }
}

/// A proxy's counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client to upstream.
    pub up: DirectionStats,
    /// Upstream to client.
    pub down: DirectionStats,
    /// Flows (UDP, one per client address) or connections (TCP) seen so far.
    pub flows: u64,
    /// Flows or connections open now.
    pub active_flows: u64,
    /// Flows moved to a new source port (UDP).
    pub rebinds: u64,
}

#[derive(Default)]
pub(crate) struct DirectionCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    delivered: AtomicU64,
    duplicated: AtomicU64,
    dropped_blackout: AtomicU64,
    dropped_mtu: AtomicU64,
    dropped_queue: AtomicU64,
    dropped_loss: AtomicU64,
    retransmitted: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl DirectionCounters {
    /// Counts a packet of `len` bytes and what the model decided for it.
    pub(crate) fn record(&self, len: usize, fate: &Fate) {
        bump(&self.packets);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        match fate {
            Fate::Deliver { duplicate, .. } => {
                bump(&self.delivered);
                if duplicate.is_some() {
                    bump(&self.duplicated);
                }
            }
            Fate::Drop(reason) => self.dropped(*reason),
        }
    }

    /// Counts a drop decided outside the model (a manual blackout, a full delay line).
    pub(crate) fn dropped(&self, reason: DropReason) {
        bump(match reason {
            DropReason::Blackout => &self.dropped_blackout,
            DropReason::Mtu => &self.dropped_mtu,
            DropReason::Queue => &self.dropped_queue,
            DropReason::Loss => &self.dropped_loss,
        });
    }

    /// Counts a stream segment; `retransmitted` when the model lost it.
    pub(crate) fn record_segment(&self, len: usize, retransmitted: bool) {
        bump(&self.packets);
        bump(&self.delivered);
        self.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if retransmitted {
            bump(&self.retransmitted);
        }
    }

    pub(crate) fn snapshot(&self) -> DirectionStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DirectionStats {
            packets: get(&self.packets),
            bytes: get(&self.bytes),
            delivered: get(&self.delivered),
            duplicated: get(&self.duplicated),
            dropped_blackout: get(&self.dropped_blackout),
            dropped_mtu: get(&self.dropped_mtu),
            dropped_queue: get(&self.dropped_queue),
            dropped_loss: get(&self.dropped_loss),
            retransmitted: get(&self.retransmitted),
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) up: DirectionCounters,
    pub(crate) down: DirectionCounters,
    pub(crate) flows: AtomicU64,
    pub(crate) active_flows: AtomicU64,
    pub(crate) rebinds: AtomicU64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> Stats {
        Stats {
            up: self.up.snapshot(),
            down: self.down.snapshot(),
            flows: self.flows.load(Ordering::Relaxed),
            active_flows: self.active_flows.load(Ordering::Relaxed),
            rebinds: self.rebinds.load(Ordering::Relaxed),
        }
    }
}
