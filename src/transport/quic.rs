//! The relay's one quinn endpoint: raw QUIC (ALPN `edgerelay/1`) and WebTransport (ALPN `h3`,
//! see [`super::webtransport`]) on the same UDP port, dispatched on the negotiated ALPN.
//!
//! Both end up as a [`Session`] of `web-transport-quinn` (a raw connection wrapped by
//! [`Session::raw`], or an HTTP/3 WebTransport session), so the stream handling below is written
//! once and protocol v1 is byte for byte the same on both.
//!
//! Stream layout: the client's first bidirectional stream is the control stream (hello,
//! welcome, ping, errors). Each room gets a bidirectional stream of its own, opened by the
//! client with `join` as its first frame; the room's acks and messages come back on it. A lost
//! packet therefore only ever delays the one room whose stream it belongs to. Every frame on
//! every stream is `[u32 big-endian length][body]`.
//!
//! QUIC datagrams carry latest-wins state (typing, presence, datagram pings): each datagram is
//! one frame body, no prefix. Received ones go to the connection loop with `try_send` (dropped
//! when it is busy); the outbox's datagram queue is sent by one writer, and a frame larger than
//! the path's `max_datagram_size()` goes on the control stream instead (see `outbox.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::{Endpoint, Incoming};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use web_transport_quinn::{RecvStream, SendStream, Session, SessionError};

use super::{ALPN_RAW, FLUSH_TIMEOUT, WRITE_BATCH, webtransport};
use crate::admission::{Admission, Ticket, Verdict};
use crate::connection::{self, ConnectionContext, Handshake, Inbound, Link};
use crate::mailbox::{MailSender, Mailbox, Refused, bounded_mailbox, mailbox};
use crate::media::calls::Calls;
use crate::media::out::{GroupOpen, MediaOut};
use crate::metrics::{TransportMetrics, datagram_dropped, disconnected};
use crate::outbox::{CONTROL, CloseReason, LaneId, Outbox, Take};
use crate::proto::{Codec, DecodeError, ErrorCode, FrameReader, WireFrame};
use crate::transport;
use crate::transport::answer::{FadeProbes, Heartbeats};

/// Bidirectional streams a new connection may open: the control stream, a few rooms, and
/// the WebTransport `CONNECT` stream. [`StreamCredit`] raises it as rooms are joined.
const INITIAL_BIDI_STREAMS: u32 = 8;
/// Streams allowed beyond the room limit (control, `CONNECT`, one being refused).
const EXTRA_BIDI_STREAMS: u32 = 4;

/// How many bidirectional streams the peer may have open. quinn keeps per-stream state for the
/// whole allowance from the start, so it begins small and doubles (up to the room limit) when
/// the room streams in use come near it, early enough that a client's next `join` rarely waits
/// for the credit.
pub struct StreamCredit {
    conn: quinn::Connection,
    allowed: u32,
    max: u32,
}

impl StreamCredit {
    /// The allowance a connection starts with.
    pub fn initial(limits: &crate::config::LimitsConfig) -> u32 {
        INITIAL_BIDI_STREAMS.min(limits.max_rooms_per_connection + EXTRA_BIDI_STREAMS)
    }

    fn new(conn: quinn::Connection, limits: &crate::config::LimitsConfig) -> Self {
        StreamCredit { conn, allowed: Self::initial(limits), max: limits.max_rooms_per_connection + EXTRA_BIDI_STREAMS }
    }

    /// Called with the number of room streams open now.
    fn rooms_open(&mut self, rooms: u32) {
        if rooms + EXTRA_BIDI_STREAMS >= self.allowed && self.allowed < self.max {
            self.allowed = (self.allowed * 2).min(self.max);
            self.conn.set_max_concurrent_bi_streams(self.allowed.into());
        }
    }
}

/// Handshakes in flight above which unvalidated clients must first answer a Retry.
const RETRY_ABOVE_HANDSHAKES: usize = 256;
/// Frames the stream readers may hand the connection loop before they wait for it.
const INBOUND_BACKLOG: usize = 64;
/// Time allowed for the QUIC/TLS handshake itself.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

struct Shared {
    ctx: Arc<ConnectionContext>,
    /// The connections probed when their data stalls (`quic.probe_fades`).
    fades: Option<Arc<FadeProbes>>,
    quic_metrics: TransportMetrics,
    wt_metrics: TransportMetrics,
    handshakes: AtomicUsize,
    open: AtomicUsize,
}

/// Accepts connections until `stop` is cancelled. Each connection runs as a task in `tasks`.
/// `admission` decides, per attempt, between accepting, asking for a Retry (address
/// validation) and refusing (per-IP limits); see `admission.rs`.
pub async fn serve(
    endpoint: Endpoint,
    ctx: Arc<ConnectionContext>,
    admission: Arc<Admission>,
    fades: Option<Arc<FadeProbes>>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let shared = Arc::new(Shared {
        fades,
        ctx,
        quic_metrics: TransportMetrics::new(Kind::Raw.name()),
        wt_metrics: TransportMetrics::new(Kind::WebTransport.name()),
        handshakes: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
    });
    loop {
        let incoming = tokio::select! {
            _ = stop.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        if shared.ctx.drain.is_cancelled() {
            tasks.spawn(refuse_draining(Box::new(incoming)));
            continue;
        }
        let max = shared.ctx.session.limits.max_connections as usize;
        if shared.open.load(Ordering::Relaxed) >= max {
            crate::metrics::admission("udp", "max_connections");
            incoming.refuse();
            continue;
        }
        let validated = incoming.remote_address_validated();
        if shared.handshakes.load(Ordering::Relaxed) >= RETRY_ABOVE_HANDSHAKES && !validated {
            // Under a handshake flood, make clients prove their address before spending state.
            crate::metrics::admission("udp", "retry");
            let _ = incoming.retry();
            continue;
        }
        let now_ms = started.elapsed().as_millis() as u64;
        let ticket = match admission.quic(incoming.remote_address().ip(), validated, now_ms) {
            Verdict::Accept(ticket) => ticket,
            Verdict::Retry => {
                crate::metrics::admission("udp", "retry");
                // Fails only for an Initial that already carried a Retry token: drop it then.
                if let Err(retry) = incoming.retry() {
                    retry.into_incoming().ignore();
                }
                continue;
            }
            Verdict::Refuse(refusal) => {
                crate::metrics::admission("udp", refusal.code().slug());
                incoming.refuse();
                continue;
            }
        };
        crate::metrics::admission("udp", "accept");
        tasks.spawn(connection(Box::new(incoming), ticket, shared.clone(), stop.child_token()));
    }
}

/// The QUIC close reason a connection arriving during the drain gets.
pub const DRAINING_REASON: &[u8] = b"relay is draining";

/// A connection arriving while the relay drains completes its handshake and is closed at once
/// with the application close code `going_away` (131) and reason [`DRAINING_REASON`], raw QUIC
/// and WebTransport alike (before any WebTransport session exists), so the client learns at once
/// that it should connect elsewhere instead of waiting out its handshake timeout.
async fn refuse_draining(incoming: Box<Incoming>) {
    let Ok(connecting) = incoming.accept() else { return };
    if let Ok(Ok(conn)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        conn.close(CloseReason::Error(ErrorCode::GOING_AWAY).quic_code().into(), DRAINING_REASON);
    }
}

/// `incoming` comes boxed and the session is shared behind an `Arc` (with the peer task): this
/// future lives as long as the connection, and whatever it holds by value it holds in every
/// state (quinn's `Incoming` and the session are hundreds of bytes each).
/// `_ticket` counts the connection against its address until it ends.
async fn connection(incoming: Box<Incoming>, _ticket: Ticket, shared: Arc<Shared>, stop: CancellationToken) {
    let accepted = Instant::now();
    let remote = incoming.remote_address();
    let auth_deadline = shared.ctx.auth_deadline();
    shared.handshakes.fetch_add(1, Ordering::Relaxed);
    // Boxed: the handshake's state (WebTransport's HTTP/3 request among it) is freed when it is
    // done instead of staying part of the connection's task for its whole life.
    let session = tokio::select! {
        session = tokio::time::timeout(HANDSHAKE_TIMEOUT, Box::pin(handshake(*incoming, auth_deadline))) => Some(session),
        // A handshake under way when the drain starts is abandoned.
        _ = shared.ctx.drain.cancelled() => None,
    };
    shared.handshakes.fetch_sub(1, Ordering::Relaxed);
    let Some(session) = session else { return };
    let (session, kind, quic, established) = match session {
        Ok(Ok(accepted)) => accepted,
        Ok(Err(err)) => return tracing::debug!(%remote, %err, "quic handshake failed"),
        Err(_) => return tracing::debug!(%remote, "quic handshake timed out"),
    };
    let metrics = match kind {
        Kind::Raw => shared.quic_metrics.clone(),
        Kind::WebTransport => shared.wt_metrics.clone(),
    };
    shared.open.fetch_add(1, Ordering::Relaxed);
    let _open = metrics.opened();
    let credit = StreamCredit::new(quic, &shared.ctx.session.limits);
    let handshake = Handshake { accepted, seconds: metrics.handshake_seconds.clone() };
    let reason = run(&session, credit, &shared, metrics, auth_deadline, (handshake, established), stop).await;
    shared.open.fetch_sub(1, Ordering::Relaxed);
    disconnected(reason.slug());
    tracing::debug!(%remote, transport = kind.name(), reason = reason.slug(), "quic connection closed");
}

/// Which protocol a QUIC connection negotiated.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Raw,
    WebTransport,
}

impl Kind {
    /// The `transport` label of its metrics and logs.
    fn name(self) -> &'static str {
        match self {
            Kind::Raw => "quic",
            Kind::WebTransport => "webtransport",
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error(transparent)]
    Quic(#[from] quinn::ConnectionError),
    #[error(transparent)]
    WebTransport(#[from] webtransport::AcceptError),
    #[error("no ALPN negotiated")]
    NoAlpn,
}

/// The QUIC/TLS handshake, then the protocol the ALPN names: raw QUIC is ready at once, while
/// WebTransport first needs its HTTP/3 `CONNECT` (which must arrive before `auth_deadline`).
async fn handshake(
    incoming: Incoming,
    auth_deadline: Instant,
) -> Result<(Arc<Session>, Kind, quinn::Connection, Option<quinn::ZeroRttAccepted>), HandshakeError> {
    let mut connecting = incoming.accept()?;
    let alpn = connecting
        .handshake_data()
        .await?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .ok()
        .and_then(|data| data.protocol);
    // 0.5-RTT: the connection is served before the client's handshake completes, so a `hello`
    // the client sent as 0-RTT data (resuming a session) is answered at once, a round trip
    // sooner (docs/decisions.md, "0-RTT resumption"). Always `Ok` on the server side.
    let (conn, established) = match connecting.into_0rtt() {
        Ok((conn, established)) => (conn, Some(established)),
        Err(connecting) => (connecting.await?, None),
    };
    match alpn.as_deref() {
        Some(ALPN_RAW) => Ok((Arc::new(Session::raw(conn.clone())), Kind::Raw, conn, established)),
        Some(webtransport::ALPN) => Ok((
            Arc::new(webtransport::accept(conn.clone(), auth_deadline).await?),
            Kind::WebTransport,
            conn,
            established,
        )),
        // rustls refuses any ALPN the server config does not list; this is defence in depth.
        _ => {
            conn.close(0u32.into(), b"no application protocol");
            Err(HandshakeError::NoAlpn)
        }
    }
}

async fn run(
    conn: &Arc<Session>,
    credit: StreamCredit,
    shared: &Shared,
    metrics: TransportMetrics,
    auth_deadline: Instant,
    // The handshake completing, when the connection was served before (0.5-RTT).
    (handshake, established): (Handshake, Option<quinn::ZeroRttAccepted>),
    stop: CancellationToken,
) -> CloseReason {
    let ctx = &*shared.ctx;
    let max_frame = ctx.session.limits.max_frame_bytes as usize;

    // The control stream and its first frame, within the authentication deadline. Boxed, so
    // the connection's task does not keep this phase's state for its whole life.
    let first = tokio::time::timeout_at(
        auth_deadline.into(),
        Box::pin(async {
            let (send, mut recv) = conn.accept_bi().await.ok()?;
            let mut reader = FrameReader::new(max_frame);
            let first = read_frame(&mut recv, &mut reader).await;
            Some((send, recv, reader, first))
        }),
    );
    // Until its hello the connection is not driven: the drain is watched here.
    let first = tokio::select! {
        first = first => first,
        _ = ctx.drain.cancelled() => return close_now(conn, CloseReason::Error(ErrorCode::GOING_AWAY)),
    };
    let (ctrl_send, ctrl_recv, reader, first) = match first {
        Ok(Some(parts)) => parts,
        Ok(None) => return CloseReason::Normal,
        Err(_) => return close_now(conn, CloseReason::Error(ErrorCode::AUTH_TIMEOUT)),
    };
    let first = match first {
        Ok(Some(body)) => body,
        Ok(None) => return close_now(conn, CloseReason::Normal),
        Err(err) => return close_now(conn, CloseReason::Error(err.code())),
    };
    metrics.frames_in.increment(1);
    metrics.bytes_in.increment(first.len() as u64 + 4);
    // A `hello` read before the handshake completed came as 0-RTT data: a resumed session.
    if established.is_some_and(|mut done| futures_util::FutureExt::now_or_never(&mut done).is_none()) {
        metrics.zero_rtt.increment(1);
    }

    let outbox = Outbox::new(Codec::detect(&first), ctx.session.limits.outbox_bytes);
    let id = ctx.next_id();
    let metrics_transport = metrics.transport;
    let (opens_tx, opens) = mailbox();
    let media = MediaOut::new(ctx.session.calls.config().queue_bytes, opens_tx);
    // Bounded: a reader waits while the connection loop is behind.
    let (tx, mut rx) = bounded_mailbox(INBOUND_BACKLOG);
    let writers = TaskTracker::new();
    let readers = TaskTracker::new();
    let cancel = stop.child_token();
    let lanes = Lanes {
        outbox: outbox.clone(),
        tx,
        cancel: cancel.clone(),
        writers: writers.clone(),
        readers: readers.clone(),
        max_frame,
        metrics,
    };
    let media_side = MediaSide { id, media: media.clone(), calls: ctx.session.calls.clone(), opens };
    lanes.spawn(CONTROL, ctrl_send, ctrl_recv, reader);
    let datagrams = Datagrams {
        max: ctx.session.limits.max_datagram_bytes as usize,
        loss: ctx.session.test_datagram_loss,
        heartbeats: Heartbeats::new(conn, shared.fades.clone()),
    };
    // `lanes` holds the last sender the connection loop listens to: once every reader has
    // ended, the loop sees its channel close.
    readers.spawn(serve_peer(conn.clone(), lanes, credit, datagrams, media_side));

    // Boxed: moved into `select!`, an unboxed future would take its size twice in this task.
    let drive = Box::pin(connection::drive(
        ctx,
        Link { id, outbox: outbox.clone(), media: Some(media), transport: metrics_transport },
        first,
        &mut rx,
        auth_deadline,
        handshake,
    ));
    let reason = tokio::select! {
        reason = drive => reason,
        _ = stop.cancelled() => CloseReason::Error(ErrorCode::GOING_AWAY),
    };
    outbox.close(reason);
    writers.close();
    super::flush_wait(writers.wait(), &stop).await;
    close(conn, reason);
    cancel.cancel();
    readers.close();
    readers.wait().await;
    // WebTransport sends its close capsule from a task of its own; give it time to arrive.
    super::flush_wait(conn.closed(), &stop).await;
    reason
}

/// Closes with the reason's code: the QUIC application error code on raw QUIC, the
/// `CLOSE_WEBTRANSPORT_SESSION` code (what a browser's `WebTransport.closed` reports) on
/// WebTransport.
fn close(conn: &Session, reason: CloseReason) {
    conn.close(reason.quic_code(), reason.slug().as_bytes());
}

fn close_now(conn: &Session, reason: CloseReason) -> CloseReason {
    close(conn, reason);
    reason
}

/// The receiving half of a QUIC stream, raw (quinn's) or WebTransport's: frames are read the
/// same way from both.
pub trait ChunkRecv: Send {
    /// The next bytes in order, or `None` when the stream ended, was reset or the connection is
    /// gone.
    fn next_chunk(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

/// Largest chunk taken from a stream at once.
const READ_CHUNK: usize = 64 * 1024;

impl ChunkRecv for quinn::RecvStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        self.read_chunk(READ_CHUNK, true).await.ok().flatten().map(|chunk| chunk.bytes)
    }
}

impl ChunkRecv for RecvStream {
    async fn next_chunk(&mut self) -> Option<Bytes> {
        self.read_chunk(READ_CHUNK, true).await.ok().flatten().map(|chunk| chunk.bytes)
    }
}

/// Reads one length-prefixed frame body from a QUIC stream. `Ok(None)` when the stream ends
/// cleanly before a frame starts.
pub async fn read_frame(recv: &mut impl ChunkRecv, reader: &mut FrameReader) -> Result<Option<Bytes>, DecodeError> {
    loop {
        if let Some(body) = reader.next_frame()? {
            return Ok(Some(body));
        }
        match recv.next_chunk().await {
            Some(chunk) => reader.push(&chunk),
            None if reader.pending() > 0 => {
                return Err(DecodeError::Malformed("stream ended inside a frame".into()));
            }
            None => return Ok(None),
        }
    }
}

async fn read_lane(
    lane: LaneId,
    mut recv: RecvStream,
    mut reader: FrameReader,
    tx: MailSender<Inbound>,
    cancel: CancellationToken,
    metrics: TransportMetrics,
) {
    let ended = if lane == CONTROL { Inbound::Closed } else { Inbound::LaneClosed(lane) };
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return,
            frame = read_frame(&mut recv, &mut reader) => frame,
        };
        let event = match frame {
            Ok(Some(body)) => {
                metrics.frames_in.increment(1);
                metrics.bytes_in.increment(body.len() as u64 + 4);
                Inbound::Frame { lane, body }
            }
            Ok(None) => {
                let _ = tx.send_waiting(ended).await;
                return;
            }
            Err(err) => {
                let _ = tx.send_waiting(Inbound::Failed(err.code(), err.to_string())).await;
                return;
            }
        };
        if tx.send_waiting(event).await.is_err() {
            return;
        }
    }
}

/// True when the test knob (`presence.test_datagram_loss`, 0 in production) says to lose this
/// datagram.
fn lose(loss: f64) -> bool {
    loss > 0.0 && rand::random::<f64>() < loss
}

/// How datagrams are handled: received ones over `max` (`limits.max_datagram_bytes`) are
/// dropped, and `loss` is the test knob (both ways). A heartbeat is handled here, not
/// forwarded: answered through a full congestion window, and the first one has the connection
/// probed when its data stalls (see [`transport::answer`]).
struct Datagrams {
    max: usize,
    loss: f64,
    heartbeats: Heartbeats,
}

impl Datagrams {
    /// Hands a datagram to the connection loop, dropping it when the loop is backed up. False
    /// once the loop is gone.
    fn forward(&self, body: Bytes, tx: &MailSender<Inbound>, metrics: &TransportMetrics) -> bool {
        if body.len() > self.max {
            datagram_dropped("too_large");
            return true;
        }
        metrics.datagrams_in.increment(1);
        if lose(self.loss) {
            datagram_dropped("test_loss");
            return true;
        }
        match tx.try_send(Inbound::Datagram(body)) {
            Ok(()) => true,
            Err(Refused::Full(_)) => {
                datagram_dropped("backlog");
                true
            }
            Err(Refused::Closed(_)) => false,
        }
    }

    /// Sends what the outbox's datagram queue holds. False once nothing more will be sent (the
    /// connection is closing or lost).
    fn send_queued(&self, conn: &Session, outbox: &Outbox, metrics: &TransportMetrics) -> bool {
        loop {
            match outbox.take_datagrams(WRITE_BATCH) {
                Take::Frames(frames) => {
                    for frame in frames {
                        if !send_datagram(conn, outbox, frame, self.loss, metrics) {
                            return false;
                        }
                    }
                }
                Take::Empty => return true,
                Take::Finished | Take::Close(_) => return false,
            }
        }
    }
}

/// Sends one frame as a datagram. A frame that does not fit `max_datagram_size()` (or any frame
/// when the peer does not accept datagrams) is re-queued on the control stream: the state it
/// carries still arrives, late but reliably, instead of never. False once the connection is lost.
fn send_datagram(conn: &Session, outbox: &Outbox, frame: WireFrame, loss: f64, metrics: &TransportMetrics) -> bool {
    let body = frame.body();
    // 0 when the peer takes no datagrams; WebTransport's session header is deducted.
    if body.len() > conn.max_datagram_size() {
        if outbox.push(CONTROL, frame).is_ok() {
            metrics.datagrams_rerouted.increment(1);
        }
        return true;
    }
    if lose(loss) {
        datagram_dropped("test_loss");
        return true;
    }
    match conn.send_datagram(body) {
        Ok(()) => metrics.datagrams_out.increment(1),
        Err(SessionError::SendDatagramError(err)) if !matches!(err, quinn::SendDatagramError::ConnectionLost(_)) => {
            datagram_dropped("send_failed")
        }
        Err(_) => return false,
    }
    true
}

/// What every stream of one connection shares: frames read go to the connection loop over
/// `tx`, frames to write come from the lane's queue in `outbox`.
struct Lanes {
    outbox: Arc<Outbox>,
    tx: MailSender<Inbound>,
    cancel: CancellationToken,
    writers: TaskTracker,
    readers: TaskTracker,
    max_frame: usize,
    metrics: TransportMetrics,
}

impl Lanes {
    /// Serves a bidirectional stream as `lane`: a writer draining the lane's queue into it, a
    /// reader feeding its frames (read on from `reader`) to the connection loop.
    fn spawn(&self, lane: LaneId, send: SendStream, recv: RecvStream, reader: FrameReader) {
        let notify = self.outbox.open_lane(lane);
        self.writers.spawn(write_lane(self.outbox.clone(), lane, notify, send, self.metrics.clone()));
        self.readers.spawn(read_lane(lane, recv, reader, self.tx.clone(), self.cancel.clone(), self.metrics.clone()));
    }
}

/// A connection's media: its id in the calls, its outgoing groups, and where the calls ask for
/// group streams.
struct MediaSide {
    id: u64,
    media: Arc<MediaOut>,
    calls: Arc<Calls>,
    opens: Mailbox<GroupOpen>,
}

/// How often a connection's bandwidth estimate is handed to its media forwarders.
const BUDGET_EVERY: Duration = Duration::from_millis(250);

/// Everything of a connection but its streams' bytes, in one task (tasks cost memory per
/// connection): every further bidirectional stream is a room's lane; received datagrams go to
/// the connection loop and the outbox's datagram queue is sent; unidirectional streams are
/// media groups (docs/media.md), read and written by a task each. A connection that publishes
/// nothing may open only the few unidirectional streams HTTP/3 needs.
async fn serve_peer(
    conn: Arc<Session>,
    lanes: Lanes,
    mut credit: StreamCredit,
    mut datagrams: Datagrams,
    mut media: MediaSide,
) {
    // The bandwidth estimate's timer, made once the connection subscribed to media: an idle
    // or chat-only connection holds none.
    let mut budget: Option<tokio::time::Interval> = None;
    let mut next_lane: LaneId = CONTROL + 1;
    let mut datagrams_open = true;
    // Every datagram push notifies (a permit is kept when nobody waits), so the queue is sent
    // exactly when something was queued, not on every turn of the loop.
    let queued = lanes.outbox.datagram_notify();
    let mut sending = true;
    loop {
        if budget.is_none() && media.media.is_receiving() {
            let mut every = tokio::time::interval(BUDGET_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            budget = Some(every);
        }
        tokio::select! {
            _ = queued.notified(), if sending => {
                sending = datagrams.send_queued(&conn, &lanes.outbox, &lanes.metrics);
            }
            _ = lanes.cancel.cancelled() => return,
            accepted = conn.accept_bi() => {
                let Ok((send, recv)) = accepted else {
                    let _ = lanes.tx.send_waiting(Inbound::Closed).await;
                    return;
                };
                let lane = next_lane;
                next_lane += 1;
                lanes.spawn(lane, send, recv, FrameReader::new(lanes.max_frame));
                credit.rooms_open(lanes.outbox.lanes_open().saturating_sub(1));
            }
            Ok(recv) = conn.accept_uni() => {
                let (calls, cancel) = (media.calls.clone(), lanes.cancel.clone());
                lanes.readers.spawn(transport::media::read_group(recv, calls, media.id, cancel));
            }
            Some(open) = media.opens.recv() => {
                let pacer = media.calls.pacer().clone();
                let writer = transport::media::write_group(conn.clone(), media.media.clone(), pacer, open, lanes.cancel.clone());
                lanes.readers.spawn(writer);
            }
            _ = media.media.publishing() => {
                conn.set_max_concurrent_uni_streams(transport::media::PUBLISHER_UNI_STREAMS.into());
            }
            Some(_) = async { Some(budget.as_mut()?.tick().await) }, if budget.is_some() => {
                transport::media::observe_path(&conn, &media.media);
            }
            datagram = conn.read_datagram(), if datagrams_open => match datagram {
                Ok(body) if crate::proto::is_heartbeat(&body) => {
                    lanes.metrics.datagrams_in.increment(1);
                    datagrams.heartbeats.received(&conn, Instant::now());
                }
                Ok(body) => {
                    if !datagrams.forward(body, &lanes.tx, &lanes.metrics) {
                        return;
                    }
                }
                // Datagrams refused or the connection lost: `accept_bi` reports the latter.
                Err(_) => datagrams_open = false,
            },
        }
    }
}

/// Writes one lane's frames to its stream until the lane finishes or the connection closes.
async fn write_lane(
    outbox: Arc<Outbox>,
    lane: LaneId,
    notify: Arc<Notify>,
    mut send: SendStream,
    metrics: TransportMetrics,
) {
    // Grows to the largest batch written; an idle lane holds none.
    let mut chunks: Vec<Bytes> = Vec::new();
    loop {
        match outbox.take(lane, WRITE_BATCH) {
            Take::Frames(frames) => {
                chunks.clear();
                let mut bytes = 0;
                for frame in &frames {
                    bytes += frame.len();
                    chunks.push(frame.prefixed().clone());
                }
                if send.write_all_chunks(&mut chunks).await.is_err() {
                    return;
                }
                metrics.frames_out.increment(frames.len() as u64);
                metrics.bytes_out.increment(bytes as u64);
            }
            Take::Empty => notify.notified().await,
            Take::Finished | Take::Close(_) => {
                let _ = send.finish();
                let deadline = Instant::now() + FLUSH_TIMEOUT;
                let _ = tokio::time::timeout_at(deadline.into(), send.stopped()).await;
                return;
            }
        }
    }
}

/// Receive and send buffer asked for the UDP socket. One socket carries every QUIC connection,
/// and with the kernel's default (about 200 KiB) bursts of small datagrams (presence, typing)
/// overflowed it on loopback with 1,000 clients (`benches/presence.rs`). The kernel caps the
/// request at `net.core.rmem_max` / `wmem_max`.
pub(crate) const UDP_BUFFER_BYTES: usize = 4 << 20;

/// Path MTU discovery for the relay and the Rust client: quinn's, but its binary search between
/// 1,200 bytes and 1,452 stops when the next step is under [`MTU_PROBE_MIN_STEP`] bytes, then
/// tries 1,452 itself. On a path that carries 1,452 (most do) that is two probes on each side,
/// 1,326 then 1,452, instead of quinn's four (1,326, 1,389, 1,420, 1,452). Each probe is a
/// full-size packet with an immediate acknowledgement, so this drops 8 of the 26 packets of a
/// QUIC connect + hello + join, and the relay's CPU per connect in a storm fell by about 8 %
/// (docs/decisions.md, "Two MTU probes, not four"). A path that needs a size between still finds
/// it within 64 bytes.
pub(crate) fn mtu_discovery() -> quinn::MtuDiscoveryConfig {
    let mut config = quinn::MtuDiscoveryConfig::default();
    config.minimum_change(MTU_PROBE_MIN_STEP);
    config
}

/// See [`mtu_discovery`].
const MTU_PROBE_MIN_STEP: u16 = 64;

/// Asks for [`UDP_BUFFER_BYTES`] of receive and send buffer on `socket`; what the kernel granted.
/// The Rust client's endpoints ask too: one shared by many connections takes their handshakes'
/// bursts on one socket.
pub(crate) fn try_enlarge_udp_buffers(socket: &std::net::UdpSocket) -> std::io::Result<(usize, usize)> {
    let state = quinn::udp::UdpSocketState::new(socket.into())?;
    state.set_recv_buffer_size(socket.into(), UDP_BUFFER_BYTES)?;
    state.set_send_buffer_size(socket.into(), UDP_BUFFER_BYTES)?;
    Ok((state.recv_buffer_size(socket.into())?, state.send_buffer_size(socket.into())?))
}
