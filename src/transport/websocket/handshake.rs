//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 section 4.2), and taking the upgraded
//! connection's `TcpStream` back from hyper (with its TLS session, for `wss://`), so the
//! transport can read and write the socket itself (see `wire.rs`, `socket.rs`). hyper hands the
//! stream back only as the exact type it served the connection on, which is why the HTTP
//! listener has its own accept loop (`http::serve`).

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::deflate::{self, Agreed};
use super::socket::Socket;
use crate::config::WebSocketConfig;

/// The only WebSocket version there is.
const VERSION: &str = "13";

/// Why an upgrade request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a WebSocket upgrade: `Connection: upgrade` and `Upgrade: websocket` are required")]
    NotAnUpgrade,
    #[error("only WebSocket version 13 is served")]
    Version,
    #[error("Sec-WebSocket-Key is missing")]
    NoKey,
    #[error("this connection cannot be upgraded")]
    NotUpgradable,
}

impl IntoResponse for Refusal {
    /// 400 for a request that is not a WebSocket handshake, 426 for another protocol version
    /// (with the version served) or a connection that cannot be upgraded.
    fn into_response(self) -> Response {
        let status = match self {
            Refusal::NotAnUpgrade | Refusal::NoKey => StatusCode::BAD_REQUEST,
            Refusal::Version | Refusal::NotUpgradable => StatusCode::UPGRADE_REQUIRED,
        };
        let mut response = (status, format!("{self}\n")).into_response();
        if self == Refusal::Version {
            response.headers_mut().insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static(VERSION));
        }
        response
    }
}

/// An accepted upgrade: the `101 Switching Protocols` response, the upgrade to await once it is
/// sent, and the permessage-deflate parameters if the client's offer was accepted.
pub struct Accepted {
    pub response: Response,
    pub upgrade: OnUpgrade,
    pub deflate: Option<Agreed>,
}

/// Checks an upgrade request and negotiates permessage-deflate (as `cfg` allows).
pub fn accept(mut request: Request, cfg: &WebSocketConfig) -> Result<Accepted, Refusal> {
    let headers = request.headers();
    if !has_token(headers, header::CONNECTION, "upgrade") || !has_token(headers, header::UPGRADE, "websocket") {
        return Err(Refusal::NotAnUpgrade);
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != VERSION) {
        return Err(Refusal::Version);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(Refusal::NoKey);
    };
    let accept = derive_accept_key(key.as_bytes());
    let offers = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|v| v.to_str().ok());
    let agreed = deflate::negotiate(offers, cfg);
    let Some(upgrade) = request.extensions_mut().remove::<OnUpgrade>() else {
        return Err(Refusal::NotUpgradable);
    };
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let out = response.headers_mut();
    out.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    out.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    // The accept key is base64, always a valid header value.
    if let Ok(value) = HeaderValue::from_str(&accept) {
        out.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    // Made of fixed names and numbers, always a valid header value.
    if let Some(value) = agreed.and_then(|a| HeaderValue::from_str(&a.response_header()).ok()) {
        out.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    }
    Ok(Accepted { response, upgrade, deflate: agreed })
}

/// The upgraded connection's socket, and any bytes the client sent after its request that the
/// HTTP server (or TLS) already read. `None` if the upgrade failed (the client left) or the
/// connection was not served on a `TcpStream` or a TLS stream over one.
pub async fn into_socket(upgrade: OnUpgrade) -> Option<(Socket, Bytes)> {
    let upgraded = match upgrade.await {
        Ok(upgraded) => upgraded,
        Err(err) => {
            tracing::debug!(%err, "WebSocket upgrade failed");
            return None;
        }
    };
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => return Some((Socket::plain(parts.io.into_inner()), parts.read_buf)),
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<TlsStream<TcpStream>>>() {
        Ok(parts) => {
            let (stream, mut conn) = parts.io.into_inner().into_inner();
            // Plaintext rustls decrypted but hyper did not read: it comes first (see `socket.rs`).
            let mut early = BytesMut::from(parts.read_buf);
            let mut chunk = [0u8; 4096];
            loop {
                match std::io::Read::read(&mut conn.reader(), &mut chunk) {
                    Ok(n) if n > 0 => early.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            Some((Socket::tls(stream, conn), early.freeze()))
        }
        Err(_) => {
            tracing::error!("WebSocket upgrade on a connection that is neither TCP nor TLS over TCP");
            None
        }
    }
}

/// The header holds `token` in its comma-separated list (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut builder = axum::http::Request::get("/v1/ws");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(axum::body::Body::empty()).unwrap()
    }

    const GOOD: [(&str, &str); 4] = [
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn requests_that_are_not_websocket_handshakes_are_refused_with_a_reason() {
        let cases = [
            (&GOOD[1..], Refusal::NotAnUpgrade, StatusCode::BAD_REQUEST),
            (&[GOOD[0], GOOD[2], GOOD[3]][..], Refusal::NotAnUpgrade, StatusCode::BAD_REQUEST),
            (
                &[GOOD[0], GOOD[1], ("sec-websocket-version", "8"), GOOD[3]][..],
                Refusal::Version,
                StatusCode::UPGRADE_REQUIRED,
            ),
            (&GOOD[..3], Refusal::NoKey, StatusCode::BAD_REQUEST),
            // A good handshake outside a hyper connection has nothing to upgrade.
            (&GOOD[..], Refusal::NotUpgradable, StatusCode::UPGRADE_REQUIRED),
        ];
        for (headers, refusal, status) in cases {
            assert_eq!(accept(request(headers), &WebSocketConfig::default()).err(), Some(refusal), "{headers:?}");
            assert_eq!(refusal.into_response().status(), status);
        }
    }
}
