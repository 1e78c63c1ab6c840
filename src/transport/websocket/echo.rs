//! `/v1/ws-echo`: a WebSocket that sends every message back, for conformance runs only (the
//! Autobahn cases in tests/autobahn.rs). Served only with `websocket.echo = true`.
//!
//! The relay's endpoint expects edgerelay frames and closes on anything else, which a generic
//! conformance client cannot send. This path runs the very same framing, permessage-deflate and
//! socket code (`framing.rs`, `deflate.rs`, `wire.rs`) with no session behind it, so the cases
//! test what `/v1/ws` runs. The one difference is the close code on bad input: here RFC 6455's
//! own (1002 protocol error, 1007 invalid UTF-8, 1009 too big) where `/v1/ws` sends its
//! documented 4101 / 4102 (docs/protocol.md).

use tokio_util::sync::CancellationToken;

use super::framing::{Event, FramingError, opcode};
use super::wire::{Flushed, Wire};
use super::{Reader, close_and_drain};

/// Echoes until the client closes (answering its close with the same code), breaks the
/// protocol (closing with RFC 6455's code for it) or `stop`.
pub(super) async fn run(wire: &Wire, mut reader: Reader, stop: &CancellationToken) {
    let (code, text) = loop {
        let blocked = wire.is_blocked();
        let event = tokio::select! {
            event = reader.next(wire.socket()) => event,
            writable = wire.socket().tcp().writable(), if blocked => {
                if writable.is_err() || wire.flush_pending() == Flushed::Ended {
                    return;
                }
                continue;
            }
            _ = stop.cancelled() => break (1001, "going away"),
        };
        match event {
            None => return,
            Some(Ok(Event::Message { text, body })) => {
                if !wire.send_message(if text { opcode::TEXT } else { opcode::BINARY }, &body) {
                    return;
                }
            }
            Some(Ok(Event::Ping(payload))) => wire.send_control(opcode::PONG, &payload),
            Some(Ok(Event::Pong)) => {}
            Some(Ok(Event::Close(code))) => break (code.unwrap_or(1000), ""),
            Some(Err(err)) => break (rfc_close_code(&err), "bad input"),
        }
    };
    super::super::flush_wait(close_and_drain(wire, code, text), stop).await;
}

/// RFC 6455 section 7.4.1's close code for bad input.
fn rfc_close_code(err: &FramingError) -> u16 {
    match err {
        FramingError::Protocol(_) => 1002,
        FramingError::NotUtf8 => 1007,
        FramingError::TooLarge { .. } | FramingError::InflatedTooLarge { .. } => 1009,
    }
}
