//! WebSocket at `/v1/ws` on the TCP listener: the fallback for clients without QUIC.
//!
//! One WebSocket message carries one frame body, text for JSON and binary for postcard. All
//! lanes share the socket, so the writer drains them round-robin. The connection loop reads the
//! socket itself ([`SocketInbound`]); only the writer is a task of its own. The relay sends
//! WebSocket pings every `ping_interval_ms` and closes a connection that sends nothing (not even
//! a pong) for `idle_timeout_ms`. Close codes are 1000 (normal) or 4000 + the error code.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{FLUSH_TIMEOUT, WRITE_BATCH};
use crate::connection::{self, ConnectionContext, Inbound, InboundSource};
use crate::metrics::{TransportMetrics, disconnected};
use crate::outbox::{CONTROL, CloseReason, Outbox, Take};
use crate::proto::{Codec, ErrorCode};

/// The URL path WebSocket connections are upgraded at.
pub const PATH: &str = "/v1/ws";

/// The transport's shared state, built once per relay.
pub struct WebSocketTransport {
    pub ctx: Arc<ConnectionContext>,
    metrics: TransportMetrics,
}

impl WebSocketTransport {
    pub fn new(ctx: Arc<ConnectionContext>) -> Self {
        WebSocketTransport { ctx, metrics: TransportMetrics::new("websocket") }
    }

    /// Largest WebSocket message the socket library accepts before failing the stream. Larger
    /// than the frame limit so that moderately oversized frames get a clean `frame_too_large`.
    pub fn socket_message_limit(&self) -> usize {
        (self.ctx.session.limits.max_frame_bytes as usize).saturating_mul(2).max(64 * 1024)
    }

    /// Serves one upgraded socket until it closes.
    pub async fn serve(self: Arc<Self>, socket: WebSocket, stop: CancellationToken) {
        let _open = self.metrics.opened();
        let reason = self.run(socket, stop).await;
        disconnected(reason.slug());
    }

    async fn run(&self, socket: WebSocket, stop: CancellationToken) -> CloseReason {
        let ctx = &self.ctx;
        let limits = &ctx.session.limits;
        let max_frame = limits.max_frame_bytes as usize;
        let idle = Duration::from_millis(u64::from(limits.idle_timeout_ms));
        let (mut sink, mut stream) = socket.split();
        let auth_deadline = ctx.auth_deadline();

        let first = match tokio::time::timeout_at(auth_deadline.into(), next_frame(&mut stream, max_frame)).await {
            Ok(Ok(Some(body))) => body,
            Ok(Ok(None)) => return CloseReason::Normal,
            Ok(Err((code, _))) => return close_now(&mut sink, CloseReason::Error(code)).await,
            Err(_) => return close_now(&mut sink, CloseReason::Error(ErrorCode::AUTH_TIMEOUT)).await,
        };
        self.metrics.frames_in.increment(1);
        self.metrics.bytes_in.increment(first.len() as u64);

        let outbox = Outbox::new(Codec::detect(&first), limits.outbox_bytes);
        let tasks = TaskTracker::new();
        let cancel = stop.child_token();
        let ping_every = Duration::from_millis(u64::from(limits.ping_interval_ms.max(100)));
        let writer = tasks.spawn(write(outbox.clone(), sink, ping_every, cancel.clone(), self.metrics.clone()));
        let mut inbound = SocketInbound::new(stream, max_frame, idle, self.metrics.clone());

        let reason = tokio::select! {
            reason = connection::drive(ctx, outbox.clone(), first, &mut inbound, auth_deadline) => reason,
            _ = stop.cancelled() => CloseReason::Error(ErrorCode::GOING_AWAY),
        };
        outbox.close(reason);
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, writer).await;
        cancel.cancel();
        tasks.close();
        tasks.wait().await;
        reason
    }
}

type Sink = SplitSink<WebSocket, Message>;

async fn close_now(sink: &mut Sink, reason: CloseReason) -> CloseReason {
    let _ = sink.send(close_message(reason)).await;
    let _ = sink.close().await;
    reason
}

fn close_message(reason: CloseReason) -> Message {
    Message::Close(Some(CloseFrame { code: reason.ws_code(), reason: Utf8Bytes::from(reason.slug()) }))
}

/// The next frame body; `Ok(None)` when the peer closed. Pings and pongs are skipped (the
/// socket library answers pings).
async fn next_frame(
    stream: &mut SplitStream<WebSocket>,
    max_frame: usize,
) -> Result<Option<Bytes>, (ErrorCode, String)> {
    loop {
        match next_message(stream, max_frame).await? {
            Received::Frame(body) => return Ok(Some(body)),
            Received::Heartbeat => continue,
            Received::End => return Ok(None),
        }
    }
}

/// What one WebSocket message from the peer was.
enum Received {
    Frame(Bytes),
    /// A ping or a pong: no frame, but the peer is alive.
    Heartbeat,
    End,
}

async fn next_message(stream: &mut SplitStream<WebSocket>, max_frame: usize) -> Result<Received, (ErrorCode, String)> {
    let body = match stream.next().await {
        None | Some(Ok(Message::Close(_))) => return Ok(Received::End),
        Some(Err(err)) => {
            // The socket library refuses messages beyond its own cap; anything else means
            // the peer is gone.
            let err = err.into_inner();
            return match err.downcast_ref::<tungstenite::Error>() {
                Some(tungstenite::Error::Capacity(cap)) => Err((ErrorCode::FRAME_TOO_LARGE, cap.to_string())),
                _ => Ok(Received::End),
            };
        }
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Ok(Received::Heartbeat),
        Some(Ok(Message::Text(text))) => Bytes::copy_from_slice(text.as_bytes()),
        Some(Ok(Message::Binary(bytes))) => bytes,
    };
    if body.len() > max_frame {
        return Err((ErrorCode::FRAME_TOO_LARGE, format!("frame of {} bytes exceeds {max_frame}", body.len())));
    }
    Ok(Received::Frame(body))
}

/// The socket's read half as the connection loop's [`InboundSource`], with the idle timeout:
/// any message restarts it, pongs included (a member that only receives answers the relay's
/// pings and nothing else).
struct SocketInbound {
    stream: SplitStream<WebSocket>,
    max_frame: usize,
    idle: Duration,
    idle_deadline: Pin<Box<Sleep>>,
    metrics: TransportMetrics,
}

impl SocketInbound {
    fn new(stream: SplitStream<WebSocket>, max_frame: usize, idle: Duration, metrics: TransportMetrics) -> Self {
        let idle_deadline = Box::pin(tokio::time::sleep(idle));
        SocketInbound { stream, max_frame, idle, idle_deadline, metrics }
    }
}

impl InboundSource for SocketInbound {
    async fn next(&mut self) -> Option<Inbound> {
        loop {
            // Cancel-safe: `next_message` only awaits the stream's next message.
            let received = tokio::select! {
                received = next_message(&mut self.stream, self.max_frame) => received,
                _ = self.idle_deadline.as_mut() => {
                    let idle = self.idle;
                    return Some(Inbound::Failed(ErrorCode::IDLE_TIMEOUT, format!("nothing received for {idle:?}")));
                }
            };
            self.idle_deadline.as_mut().reset((Instant::now() + self.idle).into());
            return Some(match received {
                Ok(Received::Frame(body)) => {
                    self.metrics.frames_in.increment(1);
                    self.metrics.bytes_in.increment(body.len() as u64);
                    Inbound::Frame { lane: CONTROL, body }
                }
                Ok(Received::Heartbeat) => continue,
                Ok(Received::End) => Inbound::Closed,
                Err((code, message)) => Inbound::Failed(code, message),
            });
        }
    }
}

async fn write(
    outbox: Arc<Outbox>,
    mut sink: Sink,
    ping_every: Duration,
    cancel: CancellationToken,
    metrics: TransportMetrics,
) {
    let json = outbox.codec() == Codec::Json;
    let mut ping = tokio::time::interval_at((Instant::now() + ping_every).into(), ping_every);
    loop {
        match outbox.take_all(WRITE_BATCH) {
            Take::Frames(frames) => {
                let mut bytes = 0;
                for frame in &frames {
                    let body = frame.body();
                    bytes += body.len();
                    let message = if json {
                        match Utf8Bytes::try_from(body) {
                            Ok(text) => Message::Text(text),
                            Err(_) => continue,
                        }
                    } else {
                        Message::Binary(body)
                    };
                    if sink.feed(message).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
                metrics.frames_out.increment(frames.len() as u64);
                metrics.bytes_out.increment(bytes as u64);
            }
            Take::Empty | Take::Finished => {
                tokio::select! {
                    _ = outbox.changed() => {}
                    _ = cancel.cancelled() => return,
                    _ = ping.tick() => {
                        if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Take::Close(reason) => {
                let _ = close_now(&mut sink, reason).await;
                return;
            }
        }
    }
}
