//! WebSocket at `/v1/ws` on the TCP listener: the fallback for clients without QUIC.
//!
//! One WebSocket message carries one frame body, text for JSON and binary for postcard. All
//! lanes share the socket, in the order `Outbox::take_all` interleaves them.
//!
//! The relay speaks the WebSocket framing itself (`framing.rs`) on the raw `TcpStream` it takes
//! back from the HTTP upgrade (`handshake.rs`), with TLS on it for `wss://` (`socket.rs`), so that a connection is one task and no buffer
//! while idle, and so that the fanout writes each subscriber's frames straight to its socket on
//! the fanout's own thread (`wire.rs`) instead of waking a writer task per delivery.
//!
//! The connection loop reads the socket ([`SocketInbound`]), answers pings, sends a ping every
//! `ping_interval_ms`, closes a connection that sends nothing (not even a pong) for
//! `idle_timeout_ms`, and writes whatever a direct write could not. Close codes are 1000
//! (normal) or 4000 + the error code; a WebSocket protocol violation (unmasked frame, reserved
//! bits, text that is not UTF-8...) closes with `bad_frame` (4101), a message over
//! `limits.max_frame_bytes` with `frame_too_large` (4102) as soon as its header arrives, a
//! compressed one that inflates past it with `message_too_big` (1009; `deflate.rs`). After
//! the close frame the relay shuts its sending side and reads until the client closes too, so
//! that unread client bytes never turn the close into a reset that could discard it.

pub mod deflate;
mod echo;
// Public (undocumented) for the fuzz targets in fuzz/.
#[doc(hidden)]
pub mod framing;
pub mod handshake;
pub mod socket;
mod wire;

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use self::deflate::{Agreed, Deflater, Inflater};
use self::framing::{Decoder, Event, FramingError, opcode};
use self::socket::Socket;
use self::wire::{Flushed, Wire};
use crate::config::WebSocketConfig;
use crate::connection::{self, ConnectionContext, Handshake, Inbound, InboundSource};
use crate::metrics::{TransportMetrics, disconnected};
use crate::outbox::{CONTROL, CloseReason, Outbox};
use crate::proto::{Codec, ErrorCode};

/// The URL path WebSocket connections are upgraded at.
pub const PATH: &str = "/v1/ws";

/// The echo path for conformance runs (`websocket.echo`): see `echo.rs`.
pub const ECHO_PATH: &str = "/v1/ws-echo";

/// Bytes read from the socket per call, into a buffer on the stack: a connection keeps only an
/// unfinished frame between reads.
const READ_CHUNK: usize = 4096;

/// Reads per wake-up before the loop lets its other work run (a flooding peer cannot starve it).
const READS_PER_TURN: usize = 16;

/// The transport's shared state, built once per relay.
pub struct WebSocketTransport {
    pub ctx: Arc<ConnectionContext>,
    pub config: WebSocketConfig,
    metrics: TransportMetrics,
}

/// One upgraded connection, as the handshake left it.
pub struct Upgraded {
    pub socket: Socket,
    /// Bytes the client sent right after its upgrade request.
    pub early: Bytes,
    /// When the TCP connection was accepted (for the handshake time).
    pub accepted: Instant,
    /// permessage-deflate, if it was negotiated.
    pub deflate: Option<Agreed>,
}

impl WebSocketTransport {
    pub fn new(ctx: Arc<ConnectionContext>, config: WebSocketConfig) -> Self {
        WebSocketTransport { ctx, config, metrics: TransportMetrics::new("websocket") }
    }

    /// Serves one upgraded socket until it closes.
    pub async fn serve(self: Arc<Self>, upgraded: Upgraded, stop: CancellationToken) {
        let _open = self.metrics.opened();
        let reason = self.run(upgraded, stop).await;
        disconnected(reason.slug());
    }

    /// Serves one upgraded socket of the echo path until it closes (see `echo.rs`).
    pub async fn serve_echo(self: Arc<Self>, upgraded: Upgraded, stop: CancellationToken) {
        let max_message = self.ctx.session.limits.max_frame_bytes as usize;
        let (wire, reader) = self.wire_and_reader(upgraded.socket, upgraded.deflate, max_message);
        echo::run(&wire, reader, &stop).await;
    }

    /// The connection's socket and its read side, with permessage-deflate when agreed.
    fn wire_and_reader(&self, socket: Socket, deflate: Option<Agreed>, max_message: usize) -> (Arc<Wire>, Reader) {
        let deflater = deflate.map(|agreed| Deflater::new(&agreed, &self.config));
        let wire = Arc::new(Wire::new(socket, self.metrics.clone(), deflater));
        let decoder = match deflate {
            Some(agreed) => Decoder::with_inflater(max_message, Inflater::new(&agreed)),
            None => Decoder::new(max_message),
        };
        (wire, Reader::new(decoder))
    }

    async fn run(&self, upgraded: Upgraded, stop: CancellationToken) -> CloseReason {
        let Upgraded { socket, early, accepted, deflate } = upgraded;
        let ctx = &self.ctx;
        let limits = &ctx.session.limits;
        let (wire, mut reader) = self.wire_and_reader(socket, deflate, limits.max_frame_bytes as usize);
        reader.decode(&early);
        // A slice of hyper's read buffer (8 KiB or more): freed now, not when the connection ends.
        drop(early);
        let auth_deadline = ctx.auth_deadline();

        // Until its hello the connection is not driven: the drain is watched here. Boxed, like
        // every phase that ends, so the connection's task holds only what it needs while live.
        let first = Box::pin(async {
            tokio::select! {
                first = tokio::time::timeout_at(auth_deadline.into(), first_message(&wire, &mut reader)) => match first {
                    Ok(Ok(Some(body))) => Ok(body),
                    Ok(Ok(None)) => Err(CloseReason::Normal),
                    Ok(Err(code)) => Err(CloseReason::Error(code)),
                    Err(_) => Err(CloseReason::Error(ErrorCode::AUTH_TIMEOUT)),
                },
                _ = ctx.drain.cancelled() => Err(CloseReason::Error(ErrorCode::GOING_AWAY)),
            }
        })
        .await;
        let first = match first {
            Ok(body) => body,
            Err(reason) => return close_early(&wire, reason, &stop).await,
        };
        self.metrics.frames_in.increment(1);
        self.metrics.bytes_in.increment(first.len() as u64);
        let handshake = Handshake { accepted, seconds: self.metrics.handshake_seconds.clone() };

        let outbox = Outbox::new(Codec::detect(&first), limits.outbox_bytes);
        outbox.write_directly(wire.clone());
        let mut inbound = SocketInbound::new(wire.clone(), outbox.clone(), reader, limits, self.metrics.clone());
        // Boxed: moved into `select!`, an unboxed future would take its size twice in this task.
        let drive = Box::pin(connection::drive(
            ctx,
            connection::Link { id: ctx.next_id(), outbox: outbox.clone(), media: None, transport: "websocket" },
            first,
            &mut inbound,
            auth_deadline,
            handshake,
        ));
        let reason = tokio::select! {
            reason = drive => reason,
            _ = stop.cancelled() => CloseReason::Error(ErrorCode::GOING_AWAY),
        };
        outbox.close(reason);
        Box::pin(super::flush_wait(finish(&wire, Some(&outbox), reason), &stop)).await;
        reason
    }
}

/// Ends a connection that never got a session.
async fn close_early(wire: &Wire, reason: CloseReason, stop: &CancellationToken) -> CloseReason {
    Box::pin(super::flush_wait(finish(wire, None, reason), stop)).await;
    reason
}

/// Ends the connection (callers bound it with [`super::flush_wait`]): writes what the outbox
/// still holds, then the close frame (with the reason the outbox closed with, if there is one),
/// shuts the sending side and reads until the client closes. Returns `reason`.
async fn finish(wire: &Wire, outbox: Option<&Outbox>, reason: CloseReason) -> CloseReason {
    let ending = async {
        let mut close = reason;
        if let Some(outbox) = outbox {
            loop {
                match wire.flush(outbox) {
                    Flushed::Blocked => {
                        if wire.socket().tcp().writable().await.is_err() {
                            return;
                        }
                    }
                    Flushed::Closing(first) => {
                        close = first;
                        break;
                    }
                    Flushed::All => break,
                    Flushed::Ended => return,
                }
            }
        }
        close_and_drain(wire, close.ws_code(), close.slug()).await;
    };
    ending.await;
    reason
}

/// Writes the close frame (`code`, `text`) after what is pending, shuts the sending side and
/// reads until the client closes too (callers bound it with [`super::flush_wait`]).
async fn close_and_drain(wire: &Wire, code: u16, text: &str) {
    let mut flushed = wire.close(code, text);
    while flushed == Flushed::Blocked {
        if wire.socket().tcp().writable().await.is_err() {
            return;
        }
        flushed = wire.flush_pending();
    }
    if flushed != Flushed::All {
        return;
    }
    wire.socket().shutdown_write();
    loop {
        if wire.socket().tcp().readable().await.is_err() {
            return;
        }
        // Declared after the await, so the connection's future does not hold it.
        let mut sink = [0u8; 1024];
        match wire.socket().tcp().try_read(&mut sink) {
            Ok(0) => return,
            Err(err) if err.kind() != std::io::ErrorKind::WouldBlock => return,
            _ => {}
        }
    }
}

/// The client's first message (its `hello`), answering pings meanwhile; `None` if it left first.
async fn first_message(wire: &Wire, reader: &mut Reader) -> Result<Option<Bytes>, ErrorCode> {
    loop {
        match reader.next(wire.socket()).await {
            None | Some(Ok(Event::Close(_))) => return Ok(None),
            Some(Ok(Event::Message { body, .. })) => return Ok(Some(body)),
            Some(Ok(Event::Ping(payload))) => wire.send_control(opcode::PONG, &payload),
            Some(Ok(Event::Pong)) => {}
            Some(Err(err)) => return Err(error_code(&err)),
        }
    }
}

fn error_code(err: &FramingError) -> ErrorCode {
    match err {
        FramingError::TooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
        FramingError::InflatedTooLarge { .. } => ErrorCode::MESSAGE_TOO_BIG,
        FramingError::Protocol(_) | FramingError::NotUtf8 => ErrorCode::BAD_FRAME,
    }
}

/// The read side of the socket: the decoder, and what it decoded that the loop has not taken.
struct Reader {
    decoder: Decoder,
    events: VecDeque<Event>,
    /// The bytes broke the protocol; reported after the events decoded before it.
    failed: Option<FramingError>,
    /// The peer closed the TCP connection (or reading failed).
    eof: bool,
}

impl Reader {
    fn new(decoder: Decoder) -> Reader {
        Reader { decoder, events: VecDeque::new(), failed: None, eof: false }
    }

    fn decode(&mut self, bytes: &[u8]) {
        if self.failed.is_some() || bytes.is_empty() {
            return;
        }
        let events = &mut self.events;
        if let Err(err) = self.decoder.feed(bytes, &mut |event| events.push_back(event)) {
            self.failed = Some(err);
        }
    }

    /// The next event from the peer, reading the socket when nothing is decoded yet; `None`
    /// once the peer closed the TCP connection. Cancel-safe: it only awaits readiness.
    async fn next(&mut self, socket: &Socket) -> Option<Result<Event, FramingError>> {
        loop {
            if let Some(event) = self.events.pop_front() {
                return Some(Ok(event));
            }
            if let Some(err) = self.failed.take() {
                self.eof = true;
                return Some(Err(err));
            }
            if self.eof {
                return None;
            }
            if socket.tcp().readable().await.is_err() {
                self.eof = true;
                continue;
            }
            self.read_available(socket);
        }
    }

    /// Reads what the socket holds, without waiting.
    fn read_available(&mut self, socket: &Socket) {
        let mut chunk = [0u8; READ_CHUNK];
        for _ in 0..READS_PER_TURN {
            match socket.try_read(&mut chunk) {
                Ok(0) => self.eof = true,
                Ok(n) => {
                    self.decode(&chunk[..n]);
                    if n == READ_CHUNK && self.failed.is_none() {
                        continue;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => self.eof = true,
            }
            return;
        }
    }
}

/// The socket as the connection loop's [`InboundSource`]: reads and decodes client messages,
/// answers pings, sends pings, enforces the idle timeout (any message restarts it, pongs
/// included: a member that only receives answers the relay's pings and nothing else), and
/// flushes what direct writes left (see `wire.rs`).
struct SocketInbound {
    wire: Arc<Wire>,
    outbox: Arc<Outbox>,
    reader: Reader,
    idle: Duration,
    /// When the peer last sent anything; the timer is re-armed from it when it fires, not on
    /// every message.
    heard: Instant,
    ping_every: Duration,
    next_ping: Instant,
    /// One timer for the pings and the idle timeout: it fires at the next ping or at the idle
    /// deadline as of its last firing, whichever is first.
    timer: Pin<Box<Sleep>>,
    metrics: TransportMetrics,
}

impl SocketInbound {
    fn new(
        wire: Arc<Wire>,
        outbox: Arc<Outbox>,
        reader: Reader,
        limits: &crate::config::LimitsConfig,
        metrics: TransportMetrics,
    ) -> Self {
        let idle = Duration::from_millis(u64::from(limits.idle_timeout_ms));
        let ping_every = Duration::from_millis(u64::from(limits.ping_interval_ms.max(100)));
        let heard = Instant::now();
        let next_ping = heard + ping_every;
        let timer = Box::pin(tokio::time::sleep_until(next_ping.min(heard + idle).into()));
        SocketInbound { wire, outbox, reader, idle, heard, ping_every, next_ping, timer, metrics }
    }

    /// Writes what direct writes left; `false` once the socket failed.
    fn flush(&self) -> bool {
        self.wire.flush(&self.outbox) != Flushed::Ended
    }
}

impl InboundSource for SocketInbound {
    async fn next(&mut self) -> Option<Inbound> {
        loop {
            let blocked = self.wire.is_blocked();
            let socket = self.wire.socket();
            tokio::select! {
                biased;
                event = self.reader.next(socket) => {
                    self.heard = Instant::now();
                    match event {
                        None | Some(Ok(Event::Close(_))) => return Some(Inbound::Closed),
                        Some(Ok(Event::Message { body, .. })) => {
                            self.metrics.frames_in.increment(1);
                            self.metrics.bytes_in.increment(body.len() as u64);
                            return Some(Inbound::Frame { lane: CONTROL, body });
                        }
                        Some(Ok(Event::Ping(payload))) => self.wire.send_control(opcode::PONG, &payload),
                        Some(Ok(Event::Pong)) => {}
                        Some(Err(err)) => return Some(Inbound::Failed(error_code(&err), err.to_string())),
                    }
                }
                _ = self.outbox.changed() => {
                    if !self.flush() {
                        return Some(Inbound::Closed);
                    }
                }
                writable = socket.tcp().writable(), if blocked => {
                    if writable.is_err() || !self.flush() {
                        return Some(Inbound::Closed);
                    }
                }
                _ = self.timer.as_mut() => {
                    let now = Instant::now();
                    let quiet_until = self.heard + self.idle;
                    if quiet_until <= now {
                        let idle = self.idle;
                        return Some(Inbound::Failed(ErrorCode::IDLE_TIMEOUT, format!("nothing received for {idle:?}")));
                    }
                    if self.next_ping <= now {
                        self.wire.send_control(opcode::PING, b"");
                        self.next_ping = now + self.ping_every;
                    }
                    self.timer.as_mut().reset(self.next_ping.min(quiet_until).into());
                }
            }
        }
    }
}
