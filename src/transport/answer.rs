//! A client's heartbeat is answered even when the relay's congestion window is full.
//!
//! When a path fades while the relay has messages to send, the relay's QUIC window fills with
//! packets that never arrive and its probe timer backs off (0.5 s, 1 s, 2 s, 4 s, ...). When the
//! path returns, the client's heartbeats (empty datagrams, docs/protocol.md) reach the relay at
//! once, and QUIC says an ACK-only packet is not congestion controlled (RFC 9002, section 7).
//! quinn 0.11 sends none while it also has data waiting and the window is full: the ACK waits
//! with the data for the next probe timeout. The client then hears nothing, the relay learns
//! nothing of what the fade lost, and both wait for that timer: 9 s after a 10 s outage in the
//! trace of docs/decisions.md ("A heartbeat is answered through a full window").
//!
//! So the relay's connections use quinn's Cubic wrapped ([`AnsweringCubic`]): when a heartbeat
//! arrives, [`answer_heartbeat`] opens the window for one transmission of at most two packets
//! (what a probe timeout would send), carrying the ACK and the next data. The client's ACK of
//! those packets then lets the relay declare the fade's packets lost and resend them: recovery
//! starts one round trip after the path returns instead of at the backed-off timer. A grant is
//! given at most once per round trip, so heartbeats cannot turn congestion control off.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;

/// `window()` calls a grant lets through: quinn asks once for the congestion check and once for
/// pacing per packet, so four let two packets past a full window.
const GRANTED_CALLS: u32 = 4;

/// The relay's congestion controller: quinn's default (Cubic), answering heartbeats.
#[derive(Debug, Default)]
pub struct AnsweringCubic {
    inner: Arc<CubicConfig>,
}

impl ControllerFactory for AnsweringCubic {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        Box::new(Answering { inner: self.inner.clone().build(now, current_mtu), grant: Arc::default() })
    }
}

/// A congestion controller whose window a heartbeat can open for one transmission.
struct Answering {
    inner: Box<dyn Controller>,
    /// Shared by every copy of this controller (quinn copies it when the client's port changes,
    /// and hands the application a copy), so a grant reaches the one in use.
    grant: Arc<Grant>,
}

/// One connection's grant.
#[derive(Debug, Default)]
struct Grant {
    /// `window()` calls still answered with an open window.
    calls: AtomicU32,
    /// When the last grant was given, in milliseconds since the first (0: none yet).
    last_ms: AtomicU64,
}

impl Grant {
    /// Opens the window for the next transmission, unless a grant was given less than `every`
    /// ago (`now_ms` counts from any fixed point). True when it was opened.
    fn open(&self, now_ms: u64, every: Duration) -> bool {
        let now_ms = now_ms.max(1);
        let last = self.last_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < every.as_millis() as u64 {
            return false;
        }
        self.last_ms.store(now_ms, Ordering::Relaxed);
        self.calls.store(GRANTED_CALLS, Ordering::Relaxed);
        true
    }

    /// Whether this `window()` call is answered with an open window (using up one call).
    fn take(&self) -> bool {
        self.calls.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
    }

    /// A transmission went out: whatever is left of the grant ends.
    fn close(&self) {
        self.calls.store(0, Ordering::Relaxed);
    }
}

impl Controller for Answering {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.grant.close();
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest: Option<u64>) {
        self.inner.on_end_acks(now, in_flight, app_limited, largest);
    }

    fn on_congestion_event(&mut self, now: Instant, sent: Instant, is_persistent_congestion: bool, lost_bytes: u64) {
        self.inner.on_congestion_event(now, sent, is_persistent_congestion, lost_bytes);
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu);
    }

    fn window(&self) -> u64 {
        if self.grant.take() { u64::MAX } else { self.inner.window() }
    }

    fn metrics(&self) -> ControllerMetrics {
        // The inner controller's own figures: a grant is no window size worth reporting.
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(Answering { inner: self.inner.clone_box(), grant: self.grant.clone() })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The send window the relay configures, set again by [`answer_heartbeat`] only to wake the
/// connection (quinn sends on its next turn, which a grant alone does not start).
pub const SEND_WINDOW: u64 = 10_000_000;

/// Answers a heartbeat that arrived on `conn`: opens its window for one transmission (at most
/// once per round trip) and wakes it, so its ACK and next data go out even if the window is
/// full. Nothing happens on a connection that does not use [`AnsweringCubic`].
pub fn answer_heartbeat(conn: &quinn::Connection, now_ms: u64) {
    let Ok(answering) = conn.congestion_state().into_any().downcast::<Answering>() else {
        return;
    };
    if answering.grant.open(now_ms, conn.rtt()) {
        conn.set_send_window(SEND_WINDOW);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Box<dyn Controller> {
        Arc::new(AnsweringCubic::default()).build(Instant::now(), 1200)
    }

    fn grant_of(controller: &dyn Controller) -> Arc<Grant> {
        controller.clone_box().into_any().downcast::<Answering>().map(|a| a.grant.clone()).expect("answering")
    }

    #[test]
    fn a_grant_opens_the_window_for_two_packets_then_closes() {
        let controller = controller();
        let window = controller.window();
        assert!(window < u64::MAX);
        let grant = grant_of(controller.as_ref());
        assert!(grant.open(1_000, Duration::from_millis(100)));
        // Congestion check and pacing for two packets.
        for _ in 0..GRANTED_CALLS {
            assert_eq!(controller.window(), u64::MAX);
        }
        assert_eq!(controller.window(), window);
    }

    #[test]
    fn a_transmission_ends_the_grant() {
        let mut controller = controller();
        let window = controller.window();
        let grant = grant_of(controller.as_ref());
        grant.open(1_000, Duration::from_millis(100));
        assert_eq!(controller.window(), u64::MAX);
        controller.on_sent(Instant::now(), 1200, 7);
        assert_eq!(controller.window(), window);
    }

    #[test]
    fn one_grant_per_round_trip() {
        let controller = controller();
        let grant = grant_of(controller.as_ref());
        let rtt = Duration::from_millis(100);
        assert!(grant.open(1_000, rtt));
        assert!(!grant.open(1_050, rtt), "a second heartbeat within the round trip");
        assert!(grant.open(1_100, rtt));
    }

    #[test]
    fn copies_share_the_grant() {
        // quinn copies the controller when the client's port changes; a grant given through the
        // application's copy reaches the copy in use.
        let controller = controller();
        let moved = controller.clone_box();
        grant_of(controller.as_ref()).open(1_000, Duration::from_millis(100));
        assert_eq!(moved.window(), u64::MAX);
    }
}
