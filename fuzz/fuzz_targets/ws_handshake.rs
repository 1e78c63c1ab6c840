//! The WebSocket upgrade request checks and the permessage-deflate negotiation
//! (`handshake::accept`) on a request built from the input: a request line, then `name: value`
//! lines (those HTTP itself would refuse are skipped, as hyper refuses them before the relay
//! sees them). Never a panic; an agreed window is one RFC 7692 allows.
#![no_main]

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Request};
use edgerelay::config::WebSocketConfig;
use edgerelay::transport::websocket::handshake;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let uri = lines.next().and_then(|line| std::str::from_utf8(line).ok()).unwrap_or("/v1/ws");
    let mut builder = Request::get(uri);
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
        let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(line[colon + 1..].trim_ascii()))
        else {
            continue;
        };
        builder = builder.header(name, value);
    }
    let Ok(request) = builder.body(Body::empty()) else { return };
    let cfg = WebSocketConfig { permessage_deflate: true, client_max_window_bits: 12, ..WebSocketConfig::default() };
    match handshake::accept(request, &cfg) {
        Ok(accepted) => {
            if let Some(agreed) = accepted.deflate {
                assert!((8..=15).contains(&agreed.server_max_window_bits));
                assert!(agreed.client_max_window_bits.is_none_or(|bits| (8..=12).contains(&bits)));
                let _ = agreed.response_header();
            }
        }
        Err(refusal) => {
            let _ = axum::response::IntoResponse::into_response(refusal);
        }
    }
});
