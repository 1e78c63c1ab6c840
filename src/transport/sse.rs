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

/// Appends the SSE message for a frame body in JSON to `out`; returns `false` (appending
/// nothing) if it is not a JSON frame. `with_id`: events with a position carry it as the SSE id.
///
/// The frame is `{"<kind>":<inner>}` as the JSON codec wrote it (compact, fields in protocol
/// order), so the message is made from those bytes without parsing them again: every stream of
/// an event gets the same `data:` bytes the fanout encoded once, at the cost of a copy.
pub fn message(body: &[u8], with_id: bool, out: &mut Vec<u8>) -> bool {
    let Some((kind, inner)) = split_frame(body) else { return false };
    if kind == b"event" {
        if with_id && let Some(Position { epoch, offset }) = event_position(inner) {
            out.extend_from_slice(format!("id: {epoch}-{offset}\n").as_bytes());
        }
    } else {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind);
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    let start = out.len();
    out.extend_from_slice(inner);
    // A line break would end the `data:` line. In JSON one can only be whitespace between
    // tokens (an application's `data` is kept verbatim, so it may have some): a space is the
    // same JSON.
    for byte in &mut out[start..] {
        if matches!(*byte, b'\n' | b'\r') {
            *byte = b' ';
        }
    }
    out.extend_from_slice(b"\n\n");
    true
}

/// `{"<kind>":<inner>}` → `(kind, inner)`; `None` for anything else (a unit frame, postcard).
fn split_frame(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = body.strip_prefix(b"{\"")?.strip_suffix(b"}")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    let (kind, inner) = (&rest[..end], rest[end + 1..].strip_prefix(b":")?);
    let plain = !kind.is_empty() && kind.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_');
    (plain && inner.first() == Some(&b'{')).then_some((kind, inner))
}

/// The `position` of an event frame's inner object, if it has one.
fn event_position(inner: &[u8]) -> Option<Position> {
    #[derive(serde::Deserialize)]
    struct Positioned {
        position: Option<Position>,
    }
    serde_json::from_slice::<Positioned>(inner).ok()?.position
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
fn ending(code: ErrorCode, text: &str) -> Bytes {
    let frame = crate::proto::ServerFrame::error(0, code, text);
    let mut out = Vec::new();
    message(&Codec::Json.encode(&frame), false, &mut out);
    Bytes::from(out)
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
                    let mut text = Vec::with_capacity(frames.iter().map(|f| f.body_slice().len() + 16).sum());
                    for frame in &frames {
                        message(frame.body_slice(), self.resumable, &mut text);
                    }
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
        let sse = |body: &[u8], with_id| {
            let mut out = Vec::new();
            message(body, with_id, &mut out).then(|| String::from_utf8(out).unwrap())
        };
        let event = br#"{"event":{"topic":"a.b","position":{"epoch":3,"offset":7},"data":1}}"#;
        assert_eq!(
            sse(event, true).unwrap(),
            "id: 3-7\ndata: {\"topic\":\"a.b\",\"position\":{\"epoch\":3,\"offset\":7},\"data\":1}\n\n"
        );
        assert!(!sse(event, false).unwrap().contains("id:"));
        let ephemeral = br#"{"event":{"topic":"a","position":null}}"#;
        assert!(!sse(ephemeral, true).unwrap().contains("id:"));
        let subscribed = br#"{"subscribed":{"req":0,"pattern":"a.>"}}"#;
        assert!(sse(subscribed, true).unwrap().starts_with("event: subscribed\ndata: {"));
        // Line breaks in an application's verbatim JSON stay inside the one `data:` line.
        let pretty = b"{\"event\":{\"topic\":\"a\",\"position\":null,\"data\":{\r\n \"k\": [1,\n2]}}}";
        let text = sse(pretty, true).unwrap();
        let data = text.strip_prefix("data: ").unwrap().strip_suffix("\n\n").unwrap();
        assert!(!data.contains(['\n', '\r']), "{text:?}");
        let value: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(value["data"]["k"], serde_json::json!([1, 2]));
        for bad in [&b"\x01\x02"[..], b"\"pong\"", b"{}", b"{\"event\":1}"] {
            assert_eq!(sse(bad, true), None, "{bad:?}");
        }
    }

    /// The fanout's JSON encoding of every frame an SSE stream gets becomes one message whose
    /// `data` is that frame's content.
    #[test]
    fn real_frames_become_sse_messages() {
        use crate::proto::ServerFrame;
        let event = ServerFrame::Event {
            topic: "orders.eu".into(),
            position: Some(Position { epoch: 2, offset: 9 }),
            time: 5,
            id: "o-1".into(),
            tags: [("qty".to_string(), "3".to_string())].into(),
            data: crate::proto::Payload::from("{\n  \"order\": 1\n}"),
        };
        let subscribed =
            ServerFrame::Subscribed { req: 0, pattern: "orders.>".into(), position: None, recovered: false };
        let error = ServerFrame::error(0, ErrorCode::SLOW_CONSUMER, "line\nbreak");
        for (frame, prefix) in [(event, "id: 2-9\n"), (subscribed, "event: subscribed\n"), (error, "event: error\n")] {
            let body = Codec::Json.encode(&frame);
            let mut out = Vec::new();
            assert!(message(&body, true, &mut out));
            let text = String::from_utf8(out).unwrap();
            let data = text.strip_prefix(prefix).and_then(|t| t.strip_prefix("data: ")).unwrap();
            let data = data.strip_suffix("\n\n").unwrap();
            assert!(!data.contains('\n'));
            let whole: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let inner = whole.as_object().unwrap().values().next().unwrap();
            assert_eq!(&serde_json::from_str::<serde_json::Value>(data).unwrap(), inner, "{text}");
        }
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
