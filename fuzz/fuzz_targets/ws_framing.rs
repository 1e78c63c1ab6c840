//! The WebSocket frame decoder (RFC 6455 framing, as clients send it), fed in pieces whose
//! sizes the input chooses, with permessage-deflate (inflating RSV1 messages) when the first
//! byte is odd: never a panic, no message (inflated or not) over the limit, text always UTF-8,
//! and the same events whatever the split.
#![no_main]

use edgerelay::config::WebSocketConfig;
use edgerelay::transport::websocket::deflate::{Inflater, negotiate};
use edgerelay::transport::websocket::framing::{Decoder, Event};
use libfuzzer_sys::fuzz_target;

const MAX_MESSAGE: usize = 4096;

fn events(input: &[u8], step: usize, deflate: bool) -> (Vec<Event>, bool) {
    let cfg = WebSocketConfig { permessage_deflate: true, ..WebSocketConfig::default() };
    let mut decoder = match negotiate(["permessage-deflate"], &cfg).filter(|_| deflate) {
        Some(agreed) => Decoder::with_inflater(MAX_MESSAGE, Inflater::new(&agreed)),
        None => Decoder::new(MAX_MESSAGE),
    };
    let mut out = Vec::new();
    for piece in input.chunks(step.max(1)) {
        if decoder.feed(piece, &mut |event| out.push(event)).is_err() {
            return (out, true);
        }
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else { return };
    let deflate = step & 1 == 1;
    let whole = events(input, input.len(), deflate);
    for event in &whole.0 {
        if let Event::Message { text, body } = event {
            assert!(body.len() <= MAX_MESSAGE);
            assert!(!text || std::str::from_utf8(body).is_ok());
        }
    }
    assert_eq!(whole, events(input, usize::from(step >> 1), deflate));
});
