//! Admission of new connections under floods: per-IP attempt rates and open connections, and
//! when a QUIC client must first prove its address with a Retry round trip. Plain values with
//! `now` passed in; the UDP and TCP listeners each own one and ask it for every new connection.
//!
//! A QUIC Initial's source address can be forged, so an unvalidated address is never refused
//! for its own rate (a forger could lock a victim out): it is asked to validate with a Retry
//! instead, which a forger cannot answer. Retry is also the answer for every unvalidated client
//! while new connections arrive faster than `connections.retry_above_per_sec`. TCP addresses
//! are validated by the TCP handshake itself.
//!
//! Memory stays bounded: an address is tracked only while it has connections open or its
//! bucket is refilling, and never more than [`MAX_TRACKED`] of them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::config::ConnectionsConfig;
use crate::proto::ErrorCode;
use crate::rate::TokenBucket;

/// Addresses tracked at most; past it, untracked addresses are admitted without a per-IP limit
/// (QUIC: asked to validate first).
pub const MAX_TRACKED: usize = 100_000;

/// Why a connection attempt is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("more than connections.per_ip_rate connection attempts per second from this address")]
    Rate,
    #[error("connections.per_ip_max connections already open from this address")]
    Concurrent,
}

impl Refusal {
    pub fn code(self) -> ErrorCode {
        match self {
            Refusal::Rate => ErrorCode::CONNECTION_RATE_LIMITED,
            Refusal::Concurrent => ErrorCode::TOO_MANY_FROM_ADDRESS,
        }
    }
}

/// What to do with a QUIC connection attempt.
#[derive(Debug)]
pub enum Verdict {
    Accept(Ticket),
    /// Answer with a Retry: the client must prove its address first.
    Retry,
    Refuse(Refusal),
}

struct PerIp {
    bucket: TokenBucket,
    open: u32,
}

#[derive(Default)]
struct Inner {
    ips: HashMap<IpAddr, PerIp>,
    /// Attempts in the current second and the one before, for the rate that triggers Retry.
    window_start_ms: u64,
    this_window: u32,
    last_window: u32,
}

/// One listener's admission state, shared by its accept loop and its connections' tickets.
pub struct Admission {
    cfg: ConnectionsConfig,
    inner: Mutex<Inner>,
}

/// An admitted connection: it counts against its address until dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Option<Arc<Admission>>,
    ip: IpAddr,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(admission) = self.admission.take() {
            let mut inner = admission.lock();
            if let Some(entry) = inner.ips.get_mut(&self.ip) {
                entry.open = entry.open.saturating_sub(1);
            }
        }
    }
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission").field("cfg", &self.cfg).finish()
    }
}

impl Admission {
    pub fn new(cfg: &ConnectionsConfig) -> Arc<Admission> {
        Arc::new(Admission { cfg: cfg.clone(), inner: Mutex::new(Inner::default()) })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Counters only: a panic elsewhere leaves them usable.
        crate::lock::lock(&self.inner)
    }

    /// A QUIC connection attempt from `ip`; `validated` when quinn checked its address (a Retry
    /// or NEW_TOKEN token).
    pub fn quic(self: &Arc<Self>, ip: IpAddr, validated: bool, now_ms: u64) -> Verdict {
        let mut inner = self.lock();
        let recent = inner.count_attempt(now_ms);
        if !validated && recent > u64::from(self.cfg.retry_above_per_sec) {
            return Verdict::Retry;
        }
        match self.admit(&mut inner, ip, now_ms) {
            Ok(ticket) => Verdict::Accept(ticket),
            // Only a proven address is refused for its own rate (see the module docs).
            Err(_) if !validated => Verdict::Retry,
            Err(refusal) => Verdict::Refuse(refusal),
        }
    }

    /// A TCP connection from `ip` (its address is proven by the TCP handshake).
    pub fn tcp(self: &Arc<Self>, ip: IpAddr, now_ms: u64) -> Result<Ticket, Refusal> {
        let mut inner = self.lock();
        inner.count_attempt(now_ms);
        self.admit(&mut inner, ip, now_ms)
    }

    fn admit(self: &Arc<Self>, inner: &mut Inner, ip: IpAddr, now_ms: u64) -> Result<Ticket, Refusal> {
        if self.cfg.exempt_loopback && ip.is_loopback() {
            return Ok(Ticket { admission: None, ip });
        }
        if !inner.ips.contains_key(&ip) && inner.ips.len() >= MAX_TRACKED {
            inner.prune(now_ms);
            if inner.ips.len() >= MAX_TRACKED {
                return Ok(Ticket { admission: None, ip });
            }
        }
        let cfg = &self.cfg;
        let entry = inner
            .ips
            .entry(ip)
            .or_insert_with(|| PerIp { bucket: TokenBucket::new(cfg.per_ip_rate, cfg.per_ip_burst, now_ms), open: 0 });
        if entry.open >= cfg.per_ip_max {
            return Err(Refusal::Concurrent);
        }
        if !entry.bucket.try_take(now_ms) {
            return Err(Refusal::Rate);
        }
        entry.open += 1;
        Ok(Ticket { admission: Some(self.clone()), ip })
    }

    /// Addresses tracked now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.lock().ips.len()
    }
}

impl Inner {
    /// Counts an attempt; returns the attempts over about the last second.
    fn count_attempt(&mut self, now_ms: u64) -> u64 {
        let elapsed = now_ms.saturating_sub(self.window_start_ms);
        if elapsed >= 2000 {
            (self.last_window, self.this_window, self.window_start_ms) = (0, 0, now_ms);
        } else if elapsed >= 1000 {
            (self.last_window, self.this_window, self.window_start_ms) =
                (self.this_window, 0, self.window_start_ms + 1000);
        }
        self.this_window = self.this_window.saturating_add(1);
        // The previous second, weighted by how much of it the last second still covers.
        let into = now_ms.saturating_sub(self.window_start_ms).min(1000);
        u64::from(self.this_window) + u64::from(self.last_window) * (1000 - into) / 1000
    }

    /// Forgets addresses with nothing open and a full bucket: they would start afresh anyway.
    fn prune(&mut self, now_ms: u64) {
        self.ips.retain(|_, entry| entry.open > 0 || !entry.bucket.is_full(now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(retry_above_per_sec: u32, per_ip_rate: u32, per_ip_burst: u32, per_ip_max: u32) -> ConnectionsConfig {
        ConnectionsConfig { retry_above_per_sec, per_ip_rate, per_ip_burst, per_ip_max, exempt_loopback: true }
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 2));

    #[test]
    fn unvalidated_clients_retry_above_the_connection_rate_and_validated_ones_pass() {
        let admission = Admission::new(&cfg(10, 1000, 1000, 1000));
        let mut retries = 0;
        let mut tickets = Vec::new();
        for i in 0..30 {
            match admission.quic(A, false, 1000 + i) {
                Verdict::Accept(ticket) => tickets.push(ticket),
                Verdict::Retry => retries += 1,
                Verdict::Refuse(why) => panic!("{why}"),
            }
        }
        assert_eq!((tickets.len(), retries), (10, 20));
        assert!(matches!(admission.quic(A, true, 1100), Verdict::Accept(_)));
        // Two quiet seconds later the rate is low again.
        assert!(matches!(admission.quic(B, false, 3500), Verdict::Accept(_)));
        // 0: always validate first.
        assert!(matches!(Admission::new(&cfg(0, 10, 10, 10)).quic(A, false, 0), Verdict::Retry));
    }

    #[test]
    fn per_ip_rate_and_concurrency_refuse_proven_addresses_and_retry_unproven_ones() {
        let admission = Admission::new(&cfg(1_000_000, 1, 3, 2));
        let first = admission.tcp(A, 0).unwrap();
        let _second = admission.tcp(A, 0).unwrap();
        assert_eq!(admission.tcp(A, 0).unwrap_err(), Refusal::Concurrent);
        // Another address is not affected.
        let _other = admission.tcp(B, 0).unwrap();
        drop(first);
        let _third = admission.tcp(A, 0).unwrap();
        drop(_third);
        // Burst of 3 spent: the rate now.
        assert_eq!(admission.tcp(A, 0).unwrap_err(), Refusal::Rate);
        assert_eq!(Refusal::Rate.code(), ErrorCode::CONNECTION_RATE_LIMITED);
        assert!(matches!(admission.quic(A, true, 10), Verdict::Refuse(Refusal::Rate)));
        assert!(matches!(admission.quic(A, false, 10), Verdict::Retry));
        // A token a second.
        assert!(matches!(admission.quic(A, true, 1010), Verdict::Accept(_)));
    }

    #[test]
    fn tracked_addresses_are_bounded() {
        let admission = Admission::new(&cfg(u32::MAX, 100, 100, 100));
        for i in 0..(MAX_TRACKED as u32 + 10) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            drop(admission.tcp(ip, 0).unwrap());
        }
        assert!(admission.tracked() <= MAX_TRACKED);
        // Once their buckets refilled, the old entries make room.
        drop(admission.tcp(A, 10_000).unwrap());
        assert!(admission.tracked() <= MAX_TRACKED);
        assert!(admission.lock().ips.contains_key(&A));
    }
}
