//! Transports: thin adapters between sockets and the connection driver. Bytes in, frames out;
//! no business state lives here.

pub mod quic;
pub mod websocket;
pub mod webtransport;

use std::time::Duration;

/// ALPN of raw QUIC protocol v1 (native and mobile clients).
pub const ALPN_RAW: &[u8] = b"edgerelay/1";

/// How long writers get to flush queued frames when a connection closes.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Frames a writer takes from its queue per write.
pub const WRITE_BATCH: usize = 64;
