//! WebTransport (ALPN `h3`) on the relay's quinn endpoint: the HTTP/3 `CONNECT` that opens a
//! session at [`PATH`].
//!
//! Why this is so small: once the session is accepted, a WebTransport session is handled exactly
//! like a raw QUIC connection ([`super::quic`]): the browser's first bidirectional stream is the
//! control stream, then one bidirectional stream per room, every frame `[u32 length][body]`.
//! `web-transport-quinn` strips the WebTransport stream headers, so the same code reads both.
//! Each QUIC connection carries one session (no HTTP/3 pooling); browsers open one connection per
//! `new WebTransport(url)`.

use std::time::{Duration, Instant};

use web_transport_quinn::Session;
use web_transport_quinn::http::StatusCode;

/// ALPN of HTTP/3, which WebTransport runs over.
pub const ALPN: &[u8] = b"h3";

/// The URL path WebTransport sessions are served at.
pub const PATH: &str = "/v1/wt";

/// How long a refused session's connection stays open for its 404 to arrive.
const REJECT_LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("WebTransport handshake: {0}")]
    Handshake(#[from] web_transport_quinn::ServerError),
    #[error("no WebTransport CONNECT before the authentication deadline")]
    Timeout,
    #[error("WebTransport session requested at {0}, not {PATH}")]
    WrongPath(String),
}

/// Completes the HTTP/3 handshake (SETTINGS, then the extended `CONNECT`) on a connection that
/// negotiated ALPN `h3`, and answers 200 when the path is [`PATH`] (404 otherwise). The
/// `CONNECT` must arrive before `deadline`, the same bound a raw client has to say `hello`.
pub async fn accept(conn: quinn::Connection, deadline: Instant) -> Result<Session, AcceptError> {
    let request = tokio::time::timeout_at(deadline.into(), web_transport_quinn::Request::accept(conn.clone())).await;
    let request = match request {
        Ok(request) => request?,
        Err(_) => {
            conn.close(0u32.into(), b"auth_timeout");
            return Err(AcceptError::Timeout);
        }
    };
    let path = request.url.path().to_owned();
    if path != PATH {
        // `Request::reject` drops the HTTP/3 control streams as it returns, and the peer must
        // treat their end as a connection error (RFC 9114 §6.2.1) before reading the 404. The
        // session `respond` returns keeps them open until the connection closes.
        let refused = request.respond(StatusCode::NOT_FOUND).await;
        // Closing at once could discard the 404 before it is sent: let the client close first.
        let _ = tokio::time::timeout(REJECT_LINGER, conn.closed()).await;
        drop(refused);
        conn.close(0u32.into(), b"not found");
        return Err(AcceptError::WrongPath(path));
    }
    Ok(request.ok().await?)
}
