//! Server-sent events (`text/event-stream`): a receive-only stream of a user's topic
//! subscriptions, for clients that only listen (browsers' `EventSource`, curl).
//!
//! A thin adapter like the other transports: the stream's subscriptions queue frames in a JSON
//! outbox exactly as a connection's do, and this module turns each queued frame into one SSE
//! message. An `event` frame becomes a default (`message`) SSE event whose data is the event's
//! JSON; any other frame (`subscribed`, `error`) becomes an SSE event named after the frame.
//! A resumable stream (one exact persistent topic) gives each event the SSE id
//! `<epoch>-<offset>`, which the browser sends back as `Last-Event-ID` when it reconnects.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::events::{Events, Subscription};
use crate::outbox::{CloseReason, Outbox, Take};
use crate::proto::{Codec, ErrorCode, Position};

/// The `retry:` field sent first: how long a browser waits before reconnecting (ms).
pub const RETRY_MS: u32 = 2000;

/// Parses a `Last-Event-ID` this relay issued: `<epoch>-<offset>`.
pub fn parse_event_id(id: &str) -> Option<Position> {
    let (epoch, offset) = id.trim().split_once('-')?;
    Some(Position { epoch: epoch.parse().ok()?, offset: offset.parse().ok()? })
}

/// One SSE message for a frame body in JSON, or `None` if it is not a JSON frame. `with_id`:
/// events with a position carry it as the SSE id.
pub fn message(body: &[u8], with_id: bool) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let (kind, inner) = value.as_object()?.iter().next()?;
    let mut out = String::new();
    if kind == "event" {
        if with_id
            && let Some(p) = inner.get("position").filter(|p| !p.is_null())
            && let (Some(epoch), Some(offset)) = (p.get("epoch"), p.get("offset"))
        {
            out.push_str(&format!("id: {epoch}-{offset}\n"));
        }
    } else {
        out.push_str(&format!("event: {kind}\n"));
    }
    // Serialized JSON has no raw newline, so one `data:` line carries it.
    out.push_str(&format!("data: {inner}\n\n"));
    Some(out)
}

/// Unsubscribes the stream's subscriptions when the response body is dropped (the client went
/// away, or the stream ended).
pub struct StreamGuard {
    pub events: Arc<Events>,
    pub tenant: Arc<str>,
    pub subs: Vec<Arc<Subscription>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        for sub in &self.subs {
            self.events.unsubscribe(&self.tenant, sub);
            // Nobody reads it any more: a resume waiting for room in it stops.
            sub.outbox.close(CloseReason::Normal);
        }
    }
}

/// What the body stream holds between chunks.
pub struct Stream {
    pub outbox: Arc<Outbox>,
    pub guard: StreamGuard,
    /// The server API's orders for this user (disconnect, revoke, user events); the
    /// registration ends with the stream.
    pub orders: crate::mailbox::Mailbox<crate::control::Order>,
    pub registration: crate::control::Registration,
    /// The user's connection slot (`limits.max_connections_per_user`), given back with the stream.
    pub _slot: crate::session::limits::ConnectionSlot,
    pub resumable: bool,
    pub heartbeat: Duration,
    /// When the token expires (unix ms): the stream ends with `token_expired` then.
    pub expires_at_ms: u64,
    pub stop: CancellationToken,
    /// The first chunk (`retry:`) was sent; the stream ended.
    pub started: bool,
    pub ended: bool,
}

/// The `error` SSE event that ends a stream.
fn ending(code: ErrorCode, message: &str) -> Bytes {
    let frame = crate::proto::ServerFrame::error(0, code, message);
    Bytes::from(message_or_empty(&Codec::Json.encode(&frame)))
}

fn message_or_empty(body: &[u8]) -> String {
    message(body, false).unwrap_or_default()
}

impl Stream {
    /// The next chunk of the response body, or `None` when the stream is over.
    pub async fn next(&mut self, now_ms: impl Fn() -> u64) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        if !std::mem::replace(&mut self.started, true) {
            return Some(Bytes::from(format!("retry: {RETRY_MS}\n\n")));
        }
        loop {
            match self.outbox.take_all(crate::transport::WRITE_BATCH) {
                Take::Frames(frames) => {
                    let text: String =
                        frames.iter().filter_map(|f| message(&f.body(), self.resumable)).collect::<Vec<_>>().concat();
                    metrics::counter!(crate::metrics::FRAMES_OUT_TOTAL, "transport" => "sse")
                        .increment(frames.len() as u64);
                    metrics::counter!(crate::metrics::BYTES_OUT_TOTAL, "transport" => "sse")
                        .increment(text.len() as u64);
                    return Some(Bytes::from(text));
                }
                Take::Close(reason) => {
                    self.ended = true;
                    return match reason {
                        // `slow_consumer` dropped the queue: say why before ending.
                        CloseReason::Error(code) if code == ErrorCode::SLOW_CONSUMER => {
                            Some(ending(code, "the stream was read too slowly; reconnect to resume"))
                        }
                        _ => None,
                    };
                }
                Take::Empty | Take::Finished => {}
            }
            let expires_in = Duration::from_millis(self.expires_at_ms.saturating_sub(now_ms()));
            tokio::select! {
                _ = self.outbox.changed() => {}
                _ = tokio::time::sleep(self.heartbeat) => return Some(Bytes::from_static(b": heartbeat\n\n")),
                _ = tokio::time::sleep(expires_in) => {
                    self.ended = true;
                    return Some(ending(ErrorCode::TOKEN_EXPIRED, "token expired; reconnect with a fresh token"));
                }
                _ = self.stop.cancelled() => {
                    self.ended = true;
                    return Some(ending(ErrorCode::GOING_AWAY, "the relay is going away; reconnect"));
                }
                Some(order) = self.orders.recv() => match order {
                    crate::control::Order::Close { code, reason } => {
                        self.ended = true;
                        return Some(ending(code, &reason));
                    }
                    crate::control::Order::Event(event) => {
                        let _ = self.outbox.send(crate::outbox::CONTROL, &event.frame());
                    }
                    crate::control::Order::LeaveRoom { .. } => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_become_sse_messages() {
        let event = br#"{"event":{"topic":"a.b","position":{"epoch":3,"offset":7},"data":1}}"#;
        assert_eq!(
            message(event, true).unwrap(),
            "id: 3-7\ndata: {\"data\":1,\"position\":{\"epoch\":3,\"offset\":7},\"topic\":\"a.b\"}\n\n"
        );
        assert!(!message(event, false).unwrap().contains("id:"));
        let ephemeral = br#"{"event":{"topic":"a","position":null}}"#;
        assert!(!message(ephemeral, true).unwrap().contains("id:"));
        let subscribed = br#"{"subscribed":{"req":0,"pattern":"a.>"}}"#;
        assert!(message(subscribed, true).unwrap().starts_with("event: subscribed\ndata: {"));
        assert_eq!(message(b"\x01\x02", true), None);
    }

    #[test]
    fn event_ids_parse() {
        assert_eq!(parse_event_id("3-7"), Some(Position { epoch: 3, offset: 7 }));
        assert_eq!(parse_event_id(" 3-7 "), Some(Position { epoch: 3, offset: 7 }));
        for bad in ["", "3", "3-", "-7", "a-b", "3-7-1"] {
            assert_eq!(parse_event_id(bad), None, "{bad:?}");
        }
    }
}
