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
//! arrives, [`Heartbeats::received`] opens the window for one transmission of at most two packets
//! (what a probe timeout would send), carrying the ACK and the next data. The client's ACK of
//! those packets then lets the relay declare the fade's packets lost and resend them: recovery
//! starts one round trip after the path returns instead of at the backed-off timer. A grant is
//! given at most once per round trip, so heartbeats cannot turn congestion control off.
//!
//! A client that stops hearing the relay sends heartbeats on its own schedule, which thins out
//! as a fade goes on (every 2 s after 10 s for the Rust client), and a browser sends none. So
//! the relay also probes ([`FadeProbes`]): a connection whose client has sent a heartbeat (it
//! takes heartbeats, docs/protocol.md) and whose data has gone unacknowledged for
//! [`STALL_AFTER`] gets a heartbeat of the relay's through a grant every 50 ms while the stall
//! is young (the outages users meet most last seconds), then every [`PROBE_EVERY`]. The first
//! one after the path's return reaches the client, whose ACK (of a packet sent a moment ago, so
//! the round-trip estimate stays true) starts the resend. The probes cost the phone nothing
//! while its network is gone, where heartbeats of its own would.
//!
//! The Rust client has the same problem the other way round: after an outage its window is
//! full of what it sent into it, and a move to a new socket would send nothing until its own
//! backed-off probe timer. So its connections use [`AnsweringCubic`] too, and its path probes
//! open the window ([`Window`]) for each move's `PING` and each heartbeat from the new socket.

use std::any::Any;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::congestion::{Controller, ControllerFactory, ControllerMetrics, CubicConfig};
use quinn_proto::RttEstimator;
use tokio_util::sync::CancellationToken;
use web_transport_quinn::Session;

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
        Box::new(Answering { inner: self.inner.clone().build(now, current_mtu), grant: Arc::new(Grant::new(now)) })
    }
}

/// A congestion controller whose window a heartbeat can open for one transmission.
struct Answering {
    inner: Box<dyn Controller>,
    /// Shared by every copy of this controller (quinn copies it when the client's port changes,
    /// and hands the application a copy), so a grant reaches the one in use.
    grant: Arc<Grant>,
}

/// One connection's grant, and how long its data has gone unacknowledged.
#[derive(Debug)]
struct Grant {
    /// The clock of the millisecond fields: when the connection's controller was built.
    epoch: Instant,
    /// `window()` calls still answered with an open window.
    calls: AtomicU32,
    /// When the last grant was given (0: none yet).
    last_ms: AtomicU64,
    /// Since when something sent has waited for an acknowledgement: the first send after
    /// everything was acknowledged, then every ACK that leaves something in flight (the path
    /// still works). 0: nothing in flight.
    unacked_since_ms: AtomicU64,
}

impl Grant {
    fn new(epoch: Instant) -> Self {
        Grant { epoch, calls: AtomicU32::new(0), last_ms: AtomicU64::new(0), unacked_since_ms: AtomicU64::new(0) }
    }

    /// `now` on this grant's clock, at least 1 (0 means "never" in its fields).
    fn ms(&self, now: Instant) -> u64 {
        (now.saturating_duration_since(self.epoch).as_millis() as u64).max(1)
    }

    /// Opens the window for the next transmission, unless a grant was given less than `every`
    /// ago (`now_ms` counts from any fixed point). True when it was opened.
    fn open(&self, now_ms: u64, every: Duration) -> bool {
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

    /// A packet went out at `now` (once per packet: the clock is read only when it starts).
    fn sent(&self, now: Instant) {
        if self.unacked_since_ms.load(Ordering::Relaxed) == 0 {
            self.unacked_since_ms.store(self.ms(now), Ordering::Relaxed);
        }
    }

    /// An ACK was processed at `now_ms`, leaving `in_flight` bytes unacknowledged.
    fn acked(&self, now_ms: u64, in_flight: u64) {
        self.unacked_since_ms.store(if in_flight == 0 { 0 } else { now_ms }, Ordering::Relaxed);
    }

    /// How long the oldest unacknowledged send (or the last ACK, if something is still in
    /// flight) is past at `now_ms`; zero when nothing is in flight.
    fn unacked_for(&self, now_ms: u64) -> Duration {
        match self.unacked_since_ms.load(Ordering::Relaxed) {
            0 => Duration::ZERO,
            since => Duration::from_millis(now_ms.saturating_sub(since)),
        }
    }
}

impl Controller for Answering {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.grant.close();
        self.grant.sent(now);
        self.inner.on_sent(now, bytes, last_packet_number);
    }

    fn on_ack(&mut self, now: Instant, sent: Instant, bytes: u64, app_limited: bool, rtt: &RttEstimator) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt);
    }

    fn on_end_acks(&mut self, now: Instant, in_flight: u64, app_limited: bool, largest: Option<u64>) {
        self.grant.acked(self.grant.ms(now), in_flight);
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

/// The send window the relay configures, set again by [`Heartbeats::received`] only to wake
/// the connection (quinn sends on its next turn, which a grant alone does not start).
pub const SEND_WINDOW: u64 = 10_000_000;

/// One connection's heartbeats on the relay's side: its grant (looked up once: quinn hands out
/// a copy of the controller, behind a lock, on every ask) and, until its first heartbeat, the
/// probes that will watch it.
pub struct Heartbeats {
    /// `None` when the connection does not use [`AnsweringCubic`]: nothing is answered.
    grant: Option<Arc<Grant>>,
    fades: Option<Arc<FadeProbes>>,
}

/// The grant of `conn`'s controller, when it is an [`AnsweringCubic`].
fn grant_of(conn: &quinn::Connection) -> Option<Arc<Grant>> {
    conn.congestion_state().into_any().downcast::<Answering>().ok().map(|answering| answering.grant)
}

/// A handle on a connection's window, for the client: a packet that must go out when the
/// network returns (the `PING` of a move to a new socket, a heartbeat from it) would otherwise
/// wait behind a window full of what the client sent into the outage, until its backed-off
/// probe timer.
#[derive(Clone)]
pub struct Window(Arc<Grant>);

impl Window {
    /// `conn`'s window, when the connection uses [`AnsweringCubic`].
    pub fn of(conn: &quinn::Connection) -> Option<Window> {
        grant_of(conn).map(Window)
    }

    /// Opens the window for the next transmission (at most two packets), which the caller
    /// then starts (a datagram, a move's `PING`).
    pub fn open(&self) {
        self.0.open(self.0.ms(Instant::now()), Duration::ZERO);
    }
}

impl Heartbeats {
    pub fn new(conn: &quinn::Connection, fades: Option<Arc<FadeProbes>>) -> Self {
        Heartbeats { grant: grant_of(conn), fades }
    }

    /// A heartbeat arrived on `conn`: its window opens for one transmission (at most once per
    /// round trip) and the connection is woken, so its ACK and next data go out even if the
    /// window is full. The first one also puts the connection among those [`FadeProbes`]
    /// watches: its client takes heartbeats.
    pub fn received(&mut self, conn: &Arc<Session>, now: Instant) {
        let Some(grant) = &self.grant else { return };
        if grant.open(grant.ms(now), conn.rtt()) {
            conn.set_send_window(SEND_WINDOW);
        }
        if let Some(fades) = self.fades.take() {
            fades.watch(conn, grant.clone());
        }
    }
}

/// Data unacknowledged this long (or four round trips, if longer) means the path is down: the
/// relay's own probe timeout has fired at least once by then and is backing off.
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// How often a young stall is probed (or every half round trip, if longer): most outages users
/// meet (a lift, a tunnel, a handover) last seconds, and a client waits up to this long, plus
/// a round trip and a half, to get what the outage held after its network returns.
const QUICK_PROBE_EVERY: Duration = Duration::from_millis(50);
/// Probes are quick until data has gone unacknowledged this long.
const QUICK_PROBES_UNTIL: Duration = Duration::from_secs(5);
/// How often an older stall is probed (or once a round trip, if longer), until the
/// connection's idle timeout ends it.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How often every watched connection is looked at for a new stall.
const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Sweeps of the stalled connections are at least this far apart.
const MIN_SWEEP_GAP: Duration = Duration::from_millis(10);
/// At most this many probes a second in all, and this many at once, so an outage of the
/// relay's own network, which stalls every connection at once, costs a bounded packet rate;
/// the rest wait for the next sweeps.
const PROBES_PER_SECOND: u64 = 4_000;
const PROBES_AT_ONCE: u64 = 1_000;

/// The connections the relay probes when their data stalls: those whose client sent a
/// heartbeat, so it takes the relay's (and ignores it). One sweeper task looks at them all
/// every [`SWEEP_EVERY`], reading an atomic per connection, and moves a stalled one to a
/// short list it visits when that list's next probe is due; a connection is let go when it
/// ends.
#[derive(Default)]
pub struct FadeProbes {
    lists: Mutex<Lists>,
}

#[derive(Default)]
struct Lists {
    watched: Vec<Watched>,
    stalled: Vec<Watched>,
    budget: Budget,
}

struct Watched {
    conn: Weak<Session>,
    grant: Arc<Grant>,
    /// When it was last probed, on the grant's clock (0: never).
    probed_ms: u64,
    /// The connection's round trip, looked up when a probe was last due (a stall brings no
    /// new estimate: nothing is acknowledged).
    rtt: Duration,
}

impl Watched {
    /// How long its data has gone unacknowledged at `now_ms`, if that is a stall (at least
    /// [`STALL_AFTER`]; four round trips are checked when its probe is due).
    fn stall(&self, now_ms: u64) -> Option<Duration> {
        Some(self.grant.unacked_for(now_ms)).filter(|unacked| *unacked >= STALL_AFTER)
    }

    /// When its next probe is due, on the grant's clock, at `now_ms` with data unacknowledged
    /// for `unacked` on a path of round trip `rtt`: four round trips into the stall at the
    /// soonest, then [`QUICK_PROBE_EVERY`] after the last probe while the stall is young, and
    /// [`PROBE_EVERY`] later.
    fn next_probe_ms(&self, now_ms: u64, unacked: Duration, rtt: Duration) -> u64 {
        let stalled_ms = now_ms.saturating_sub(unacked.as_millis() as u64);
        let every = if unacked < QUICK_PROBES_UNTIL { QUICK_PROBE_EVERY.max(rtt / 2) } else { PROBE_EVERY.max(rtt) };
        (stalled_ms + (rtt * 4).max(STALL_AFTER).as_millis() as u64).max(self.probed_ms + every.as_millis() as u64)
    }
}

/// Probes left to send: refilled at [`PROBES_PER_SECOND`], holding at most [`PROBES_AT_ONCE`].
struct Budget {
    left: u64,
    refilled: Option<Instant>,
}

impl Default for Budget {
    fn default() -> Self {
        Budget { left: PROBES_AT_ONCE, refilled: None }
    }
}

impl Budget {
    fn refill(&mut self, now: Instant) -> u64 {
        let since = self.refilled.map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        let more = (since.as_millis() as u64).saturating_mul(PROBES_PER_SECOND) / 1_000;
        if more > 0 {
            self.left = self.left.saturating_add(more).min(PROBES_AT_ONCE);
            self.refilled = Some(now);
        }
        self.left
    }
}

impl FadeProbes {
    /// Probes `conn`, whose controller holds `grant`, from now on when its data stalls.
    fn watch(&self, conn: &Arc<Session>, grant: Arc<Grant>) {
        let watched = Watched { conn: Arc::downgrade(conn), grant, probed_ms: 0, rtt: Duration::ZERO };
        self.lists.lock().unwrap_or_else(|e| e.into_inner()).watched.push(watched);
    }

    /// Probes stalled connections until `stop`: every watched connection is looked at every
    /// [`SWEEP_EVERY`], the stalled ones whenever one of them is due.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        stop.run_until_cancelled(async {
            let mut everyone_at = Instant::now() + SWEEP_EVERY;
            loop {
                let now = Instant::now();
                let everyone = now >= everyone_at;
                if everyone {
                    everyone_at = now + SWEEP_EVERY;
                }
                let (due, next) = self.sweep(now, everyone);
                for conn in due {
                    probe(&conn);
                }
                let wake = next.map_or(everyone_at, |next| next.max(now + MIN_SWEEP_GAP).min(everyone_at));
                tokio::time::sleep_until(wake.into()).await;
            }
        })
        .await;
    }

    /// Forgets ended connections, moves those whose data stalled (with `everyone`, all are
    /// looked at) to the stalled list and recovered ones back, and returns those to probe now,
    /// marked as probed, with when the next stalled one is due.
    fn sweep(&self, now: Instant, everyone: bool) -> (Vec<Arc<Session>>, Option<Instant>) {
        let mut lists = self.lists.lock().unwrap_or_else(|e| e.into_inner());
        let Lists { watched, stalled, budget } = &mut *lists;
        if everyone {
            watched.retain(|watched| watched.conn.strong_count() > 0);
            stalled.extend(watched.extract_if(.., |watched| watched.stall(watched.grant.ms(now)).is_some()));
        }
        let recovered = stalled.extract_if(.., |watched| watched.stall(watched.grant.ms(now)).is_none());
        watched.extend(recovered.filter(|watched| watched.conn.strong_count() > 0));

        let mut left = budget.refill(now);
        let mut due = Vec::new();
        let mut next: Option<Instant> = None;
        stalled.retain_mut(|watched| {
            let now_ms = watched.grant.ms(now);
            let unacked = watched.grant.unacked_for(now_ms);
            // The round trip kept from the last look: no ACK, no new estimate.
            let mut at_ms = watched.next_probe_ms(now_ms, unacked, watched.rtt);
            if at_ms <= now_ms && left > 0 {
                let Some(conn) = watched.conn.upgrade() else { return false };
                if conn.close_reason().is_some() {
                    return false;
                }
                watched.rtt = conn.rtt();
                at_ms = watched.next_probe_ms(now_ms, unacked, watched.rtt);
                if at_ms <= now_ms {
                    // Opened here, under the same clock as the round-trip check; the datagram
                    // wakes the connection, which sends it and whatever else waits past the
                    // window.
                    watched.grant.open(now_ms, Duration::ZERO);
                    watched.probed_ms = now_ms;
                    left -= 1;
                    due.push(conn);
                    at_ms = watched.next_probe_ms(now_ms, unacked, watched.rtt);
                }
            } else if watched.conn.strong_count() == 0 {
                return false;
            }
            let at = watched.grant.epoch + Duration::from_millis(at_ms);
            next = Some(next.map_or(at, |next| next.min(at)));
            true
        });
        budget.left = left;
        (due, next)
    }
}

/// The relay's heartbeat: one zero byte. Not an empty datagram: in Chromium a page stopped
/// receiving a WebTransport session's datagrams after one with an empty payload.
static PROBE: [u8; 1] = [0];

/// Sends a probe, a heartbeat, past the window opened for it.
fn probe(conn: &Session) {
    if conn.send_datagram(Bytes::from_static(&PROBE)).is_ok() {
        metrics::counter!(crate::metrics::QUIC_FADE_PROBES).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller() -> Box<dyn Controller> {
        Arc::new(AnsweringCubic::default()).build(Instant::now(), 1200)
    }

    fn grant_in(controller: &dyn Controller) -> Arc<Grant> {
        controller.clone_box().into_any().downcast::<Answering>().map(|a| a.grant.clone()).expect("answering")
    }

    #[test]
    fn a_grant_opens_the_window_for_two_packets_then_closes() {
        let controller = controller();
        let window = controller.window();
        assert!(window < u64::MAX);
        let grant = grant_in(controller.as_ref());
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
        let grant = grant_in(controller.as_ref());
        grant.open(1_000, Duration::from_millis(100));
        assert_eq!(controller.window(), u64::MAX);
        controller.on_sent(Instant::now(), 1200, 7);
        assert_eq!(controller.window(), window);
    }

    #[test]
    fn one_grant_per_round_trip() {
        let controller = controller();
        let grant = grant_in(controller.as_ref());
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
        grant_in(controller.as_ref()).open(1_000, Duration::from_millis(100));
        assert_eq!(moved.window(), u64::MAX);
    }

    #[test]
    fn data_is_unacknowledged_from_its_send_until_an_ack_and_every_ack_restarts_the_clock() {
        let start = Instant::now();
        let mut controller = Arc::new(AnsweringCubic::default()).build(start, 1200);
        let grant = grant_in(controller.as_ref());
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(grant.unacked_for(grant.ms(at(5_000))), Duration::ZERO, "nothing sent");
        controller.on_sent(at(1_000), 1200, 1);
        controller.on_sent(at(1_200), 1200, 2);
        assert_eq!(grant.unacked_for(grant.ms(at(2_500))), Duration::from_millis(1_500), "from the first send");
        // An ACK that leaves packet 2 in flight: the path works, the clock restarts.
        controller.on_end_acks(at(2_000), 1200, false, Some(1));
        assert_eq!(grant.unacked_for(grant.ms(at(2_500))), Duration::from_millis(500));
        controller.on_end_acks(at(2_100), 0, false, Some(2));
        assert_eq!(grant.unacked_for(grant.ms(at(9_000))), Duration::ZERO, "all acknowledged");
    }

    fn watched(grant: Arc<Grant>) -> Watched {
        Watched { conn: Weak::new(), grant, probed_ms: 0, rtt: Duration::ZERO }
    }

    /// As the sweep decides: stalled, and its next probe is due.
    fn due(watched: &Watched, now_ms: u64, rtt: Duration) -> bool {
        watched.stall(now_ms).is_some_and(|unacked| watched.next_probe_ms(now_ms, unacked, rtt) <= now_ms)
    }

    #[test]
    fn a_stall_is_probed_quickly_while_it_is_young_and_then_every_probe_interval() {
        let epoch = Instant::now();
        let grant = Arc::new(Grant::new(epoch));
        let mut watched = watched(grant.clone());
        let rtt = Duration::from_millis(50);
        assert!(!due(&watched, 10_000, rtt), "nothing in flight");
        grant.sent(epoch + Duration::from_millis(10_000));
        assert!(!due(&watched, 10_999, rtt));
        assert!(due(&watched, 11_000, rtt), "unacknowledged for STALL_AFTER");
        watched.probed_ms = 11_000;
        assert!(!due(&watched, 11_049, rtt));
        assert!(due(&watched, 11_050, rtt), "QUICK_PROBE_EVERY after the last probe");
        watched.probed_ms = 15_000;
        assert!(!due(&watched, 15_499, rtt), "five seconds into the stall");
        assert!(due(&watched, 15_500, rtt), "PROBE_EVERY after the last probe");
        grant.acked(15_600, 0);
        assert!(!due(&watched, 20_000, rtt), "acknowledged");
    }

    #[test]
    fn a_long_round_trip_stretches_the_stall_and_the_probe_intervals() {
        let epoch = Instant::now();
        let grant = Arc::new(Grant::new(epoch));
        let mut watched = watched(grant.clone());
        let rtt = Duration::from_millis(600);
        grant.sent(epoch + Duration::from_millis(10_000));
        assert!(!due(&watched, 12_000, rtt), "four round trips are 2.4 s");
        assert!(due(&watched, 12_400, rtt));
        watched.probed_ms = 12_400;
        assert!(!due(&watched, 12_699, rtt), "every half round trip while young");
        assert!(due(&watched, 12_700, rtt));
        watched.probed_ms = 15_000;
        assert!(!due(&watched, 15_599, rtt), "once a round trip later");
        assert!(due(&watched, 15_600, rtt));
    }

    #[test]
    fn the_probe_budget_refills_at_its_rate_up_to_its_cap() {
        let start = Instant::now();
        let mut budget = Budget::default();
        assert_eq!(budget.refill(start), PROBES_AT_ONCE, "full at first");
        budget.left = 0;
        assert_eq!(budget.refill(start + Duration::from_millis(100)), PROBES_PER_SECOND / 10);
        assert_eq!(budget.refill(start + Duration::from_secs(10)), PROBES_AT_ONCE, "capped");
    }
}
