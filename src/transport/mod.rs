//! Transports: thin adapters between sockets and the connection driver. Bytes in, frames out;
//! no business state lives here.

pub mod answer;
pub mod cid;
pub mod media;
pub mod quic;
pub mod sse;
pub mod websocket;
pub mod webtransport;

use std::time::Duration;

/// ALPN of raw QUIC protocol v1 (native and mobile clients).
pub const ALPN_RAW: &[u8] = b"edgerelay/1";

/// How long writers get to flush queued frames when a connection closes.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits for a closing connection's `flush` at most [`FLUSH_TIMEOUT`], and not past `stop` (the
/// drain deadline, after which connections still open are closed hard).
pub async fn flush_wait<F: Future>(flush: F, stop: &tokio_util::sync::CancellationToken) {
    tokio::select! {
        _ = tokio::time::timeout(FLUSH_TIMEOUT, flush) => {}
        _ = stop.cancelled() => {}
    }
}

/// Frames a writer takes from its queue per write.
pub const WRITE_BATCH: usize = 64;
