//! The transport-independent life of one connection: the session driven by inbound frames,
//! timers (authentication deadline, token expiry) and the relay's drain signal.
//!
//! Transports read bytes, split them into frames and send them here as [`Inbound`] events; they
//! write whatever the outbox holds. This loop is the single owner of the [`Session`].
//!
//! Datagrams are transport-generic: any transport that has unreliable datagrams (raw QUIC today,
//! WebTransport next) hands each received datagram body to [`Inbound::Datagram`], ideally with
//! `try_send` so a busy connection drops datagrams rather than delaying its streams, and drains
//! the outbox's datagram queue (see `outbox.rs`). A datagram is one frame body in the connection's
//! codec, no length prefix. Nothing about a datagram is ever fatal: undecodable or disallowed
//! datagrams are dropped and counted (`edgerelay_datagram_drops_total`), because a lost or
//! garbled datagram is indistinguishable from loss, which the protocol tolerates by design.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::control::Order;
use crate::hub::CatchUp;
use crate::mailbox::{Mailbox, mailbox};
use crate::session::Job;
use crate::session::JoinSettled;

use crate::outbox::{CloseReason, LaneId, Outbox};
use crate::proto::{ClientFrame, ErrorCode, ServerFrame};
use crate::session::{Fatal, Session, SessionContext};

/// What a transport reports about its connection.
#[derive(Debug)]
pub enum Inbound {
    /// A complete frame body arrived on a lane.
    Frame { lane: LaneId, body: Bytes },
    /// One datagram arrived (an unreliable, unordered frame body without length prefix).
    Datagram(Bytes),
    /// The peer finished or reset the stream behind a lane.
    LaneClosed(LaneId),
    /// The peer ended the connection (closed it, or finished its control stream).
    Closed,
    /// The transport saw a protocol violation (oversized frame, idle timeout...).
    Failed(ErrorCode, String),
}

/// Where a connection's [`Inbound`] events come from: a channel fed by reader tasks (QUIC: one
/// per stream), or the socket itself (WebSocket: one stream, read by the connection loop, so no
/// reader task and no channel per connection).
pub trait InboundSource: Send {
    /// The next event; `None` when every reader is gone. Must be cancel-safe: the connection
    /// loop polls it in a `select!`.
    fn next(&mut self) -> impl Future<Output = Option<Inbound>> + Send;
}

impl InboundSource for Mailbox<Inbound> {
    fn next(&mut self) -> impl Future<Output = Option<Inbound>> + Send {
        self.recv()
    }
}

/// Wall-clock milliseconds since the Unix epoch: the `now` handed to sessions and rooms.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How the relay wants connections to behave; shared by every connection.
pub struct ConnectionContext {
    pub session: Arc<SessionContext>,
    /// Cancelled when the relay starts draining.
    pub drain: CancellationToken,
    pub reconnect_after_ms: u32,
    next_id: std::sync::atomic::AtomicU64,
}

impl ConnectionContext {
    pub fn new(session: Arc<SessionContext>, drain: CancellationToken, reconnect_after_ms: u32) -> Self {
        ConnectionContext { session, drain, reconnect_after_ms, next_id: std::sync::atomic::AtomicU64::new(1) }
    }

    /// A relay-unique connection id.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// When a connection accepted now must have said hello.
    pub fn auth_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.session.limits.auth_timeout_ms)
    }
}

/// A connection's handshake time: from its accept until its `hello` is accepted (the session
/// then has queued `welcome`), recorded once in the transport's histogram
/// ([`crate::metrics::HANDSHAKE_SECONDS`]).
pub struct Handshake {
    pub accepted: Instant,
    pub seconds: metrics::Histogram,
}

impl Handshake {
    fn welcomed(self) {
        self.seconds.record(self.accepted.elapsed().as_secs_f64());
    }
}

/// What reaches a connection from inside the relay: the hub's catch-up requests for its rooms,
/// and the server API's orders.
struct Mailboxes {
    catch_up: Mailbox<CatchUp>,
    orders: Mailbox<Order>,
}

/// What a transport gives its connection: the relay-unique id (from
/// [`ConnectionContext::next_id`]), the outbox its writers drain, and where media goes on
/// transports that carry it.
pub struct Link {
    pub id: u64,
    pub outbox: Arc<Outbox>,
    pub media: Option<Arc<crate::media::out::MediaOut>>,
    /// `quic`, `webtransport` or `websocket`.
    pub transport: &'static str,
}

/// Runs a session until the peer leaves, a fatal error, or the relay drains. Returns why the
/// connection ends; the outbox is then closing with that reason, and the transport's writers
/// flush it and close the transport.
pub async fn drive(
    ctx: &ConnectionContext,
    link: Link,
    first: Bytes,
    inbound: &mut impl InboundSource,
    auth_deadline: Instant,
    handshake: Handshake,
) -> CloseReason {
    let (catch_up_tx, catch_up) = mailbox();
    let (orders_tx, orders) = mailbox();
    let mut mail = Mailboxes { catch_up, orders };
    let outbox = link.outbox.clone();
    let mut session = Session::new(link, ctx.session.clone(), catch_up_tx, orders_tx, unix_ms());
    // The session's jobs (joins, replays, history reads) live exactly as long as the connection.
    let mut jobs = JoinSet::new();
    // The first frame is handled here, so the connection's task does not keep its bytes.
    let reason = match handle(ctx, &mut session, crate::outbox::CONTROL, &first).await {
        Ok(()) => {
            drop(first);
            let mut handshake = Some(handshake);
            if session.is_authenticated()
                && let Some(handshake) = handshake.take()
            {
                handshake.welcomed();
            }
            run(ctx, &mut session, inbound, &mut mail, &mut jobs, auth_deadline, handshake).await
        }
        Err(fatal) => CloseReason::Error(fatal.code),
    };
    session.close(unix_ms());
    jobs.abort_all();
    outbox.close(reason);
    outbox.closing().unwrap_or(reason)
}

async fn run(
    ctx: &ConnectionContext,
    session: &mut Session,
    inbound: &mut impl InboundSource,
    mail: &mut Mailboxes,
    jobs: &mut JoinSet<Option<JoinSettled>>,
    auth_deadline: Instant,
    mut handshake: Option<Handshake>,
) -> CloseReason {
    let outbox = session.outbox().clone();
    let leeway = ctx.session.verifier.leeway_secs();
    // One timer, kept across iterations: the authentication deadline until a valid hello, then
    // the token's expiry. It is re-armed only when either changes (hello, refresh), not for
    // every frame.
    let deadline = |authenticated: bool, expires_at: Option<u64>| {
        if authenticated { expiry_instant(expires_at, leeway) } else { auth_deadline }
    };
    let mut authenticated = session.is_authenticated();
    let mut expires_at = session.expires_at();
    let timer = tokio::time::sleep_until(deadline(authenticated, expires_at).into());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            biased;
            _ = outbox.closed() => return outbox.closing().unwrap_or(CloseReason::Normal),
            _ = ctx.drain.cancelled() => {
                let away = ServerFrame::GoAway {
                    code: ErrorCode::GOING_AWAY,
                    reason: "relay is draining".into(),
                    reconnect_after_ms: ctx.reconnect_after_ms,
                };
                let _ = outbox.send(crate::outbox::CONTROL, &away);
                return CloseReason::Error(ErrorCode::GOING_AWAY);
            }
            _ = &mut timer => {
                let fatal = if authenticated {
                    session.fail(ErrorCode::TOKEN_EXPIRED, "token expired; refresh before exp")
                } else {
                    session.fail(ErrorCode::AUTH_TIMEOUT, "no valid hello in time")
                };
                return CloseReason::Error(fatal.code);
            }
            Some(order) = mail.orders.recv() => match order {
                Order::Close { code, reason } => {
                    let fatal = session.fail(code, reason);
                    return CloseReason::Error(fatal.code);
                }
                Order::LeaveRoom { room, reason } => session.evict(&room, &reason, unix_ms()),
                Order::Event(event) => {
                    // Only refused once the connection is closing.
                    let _ = session.outbox().send(crate::outbox::CONTROL, &event.frame());
                }
            },
            Some(lagging) = mail.catch_up.recv() => {
                jobs.spawn(crate::session::jobs::run(Job::CatchUp(lagging), ctx.session.clone()));
            }
            Some(done) = jobs.join_next(), if !jobs.is_empty() => {
                if let Ok(Some(settled)) = done {
                    session.join_settled(settled);
                }
            }
            event = inbound.next() => match event {
                None | Some(Inbound::Closed) => return CloseReason::Normal,
                Some(Inbound::Frame { lane, body }) => {
                    if let Err(fatal) = handle(ctx, session, lane, &body).await {
                        return CloseReason::Error(fatal.code);
                    }
                    for job in session.take_jobs() {
                        jobs.spawn(crate::session::jobs::run(job, ctx.session.clone()));
                    }
                    if session.is_authenticated() != authenticated || session.expires_at() != expires_at {
                        authenticated = session.is_authenticated();
                        expires_at = session.expires_at();
                        if authenticated
                            && let Some(handshake) = handshake.take()
                        {
                            handshake.welcomed();
                        }
                        timer.as_mut().reset(deadline(authenticated, expires_at).into());
                    }
                }
                Some(Inbound::Datagram(body)) => session.handle_datagram(&body, unix_ms()),
                Some(Inbound::LaneClosed(lane)) => session.lane_closed(lane, unix_ms()),
                Some(Inbound::Failed(code, message)) => {
                    let fatal = session.fail(code, message);
                    return CloseReason::Error(fatal.code);
                }
            },
        }
    }
}

/// Handles one frame. When a backend hook covers it (docs/events.md, "Backend hooks"), the
/// backend is asked first: the connection's next frames wait meanwhile, so its requests keep
/// their order, and the hook's timeout bounds the wait. Other connections never wait.
async fn handle(ctx: &ConnectionContext, session: &mut Session, lane: LaneId, body: &[u8]) -> Result<(), Fatal> {
    let hooks = &ctx.session.hooks;
    if !hooks.any() {
        return session.handle(lane, body, unix_ms());
    }
    // An undecodable frame is the session's to report.
    let Ok(frame) = session.outbox().codec().decode::<ClientFrame>(body) else {
        return session.handle(lane, body, unix_ms());
    };
    let Some((hook, call)) = session.hook_call(&frame, unix_ms()) else {
        return session.handle_frame(lane, frame, unix_ms());
    };
    // Boxed: the call's state (an HTTP request) exists only while one is in flight, not in
    // every connection's task.
    let outcome = Box::pin(hooks.ask(hook, call, unix_ms())).await;
    match session.settle_hook(lane, frame, outcome)? {
        Some(frame) => session.handle_frame(lane, frame, unix_ms()),
        None => Ok(()),
    }
}

/// Longest timer the loop arms: a token without a near expiry never fires it.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365);

/// The instant a token expiring at `expires_at` (unix seconds) stops being accepted.
fn expiry_instant(expires_at: Option<u64>, leeway_secs: u64) -> Instant {
    let remaining = match expires_at {
        Some(exp) => {
            Duration::from_millis(exp.saturating_add(leeway_secs).saturating_mul(1000).saturating_sub(unix_ms()))
        }
        None => FAR_FUTURE,
    };
    Instant::now() + remaining.min(FAR_FUTURE)
}
