//! The client's raw QUIC link: a control stream plus one bidirectional stream per joined room,
//! and QUIC datagrams for latest-wins frames (one frame body per datagram, no prefix).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::{Connection, ConnectionError, Endpoint, RecvStream, SendStream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{ClientError, ServerTrust, Shared};
use crate::proto::{Codec, ErrorCode, FrameReader, ServerFrame, WireFrame};
use crate::tls;
use crate::transport::{ALPN_RAW, quic::read_frame};

/// Largest frame the client accepts from the relay.
const MAX_INBOUND_FRAME: usize = 16 << 20;

pub(super) struct QuicLink {
    endpoint: Endpoint,
    conn: Connection,
    codec: Codec,
    shared: Arc<Shared>,
    control: Mutex<SendStream>,
    /// Each room's stream has its own lock, so a room waiting on flow control never holds up
    /// another room's publishes.
    rooms: std::sync::Mutex<HashMap<String, Arc<Mutex<SendStream>>>>,
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn connect(
    addr: SocketAddr,
    server_name: &str,
    trust: &ServerTrust,
    codec: Codec,
    hello: WireFrame,
    shared: Arc<Shared>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(QuicLink, ServerFrame), ClientError> {
    let crypto = match trust {
        ServerTrust::Pinned(pins) => tls::pinned_client_config(pins.clone(), &[ALPN_RAW]),
        ServerTrust::Roots(pem) => {
            tls::roots_client_config(pem, &[ALPN_RAW]).map_err(|e| ClientError::Connect(e.to_string()))?
        }
    };
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    config.transport_config(Arc::new(transport));

    let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|_| ClientError::Connect("bind address".into()))?;
    let mut endpoint = Endpoint::client(bind).map_err(|e| ClientError::Connect(e.to_string()))?;
    endpoint.set_default_client_config(config);
    let conn = endpoint
        .connect(addr, server_name)
        .map_err(|e| ClientError::Connect(e.to_string()))?
        .await
        .map_err(|e| ClientError::Connect(e.to_string()))?;

    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| closed(&e))?;
    send.write_all(hello.prefixed()).await.map_err(|e| ClientError::Connect(e.to_string()))?;
    let mut reader = FrameReader::new(MAX_INBOUND_FRAME);
    let first = match read_frame(&mut recv, &mut reader).await {
        Ok(Some(body)) => codec.decode::<ServerFrame>(&body).map_err(|e| ClientError::Protocol(e.to_string()))?,
        Ok(None) | Err(_) => {
            // The relay closed before welcome: report its close code.
            return Err(closed(&conn.closed().await));
        }
    };
    if let ServerFrame::Error { code, message, .. } = first {
        return Err(ClientError::Rejected { code, message });
    }

    tasks.spawn(read_stream(recv, reader, codec, shared.clone(), cancel.clone()));
    tasks.spawn(watch(conn.clone(), shared.clone(), cancel.clone()));
    tasks.spawn(read_datagrams(conn.clone(), codec, shared.clone(), cancel.clone()));
    let link = QuicLink { endpoint, conn, codec, shared, control: Mutex::new(send), rooms: Default::default() };
    Ok((link, first))
}

fn closed(err: &ConnectionError) -> ClientError {
    let (code, reason) = close_info(err);
    ClientError::Closed { code, reason }
}

fn close_info(err: &ConnectionError) -> (Option<ErrorCode>, String) {
    match err {
        ConnectionError::ApplicationClosed(close) => {
            let code = u16::try_from(close.error_code.into_inner()).ok().filter(|c| *c != 0).map(ErrorCode);
            (code, String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => (None, other.to_string()),
    }
}

async fn watch(conn: Connection, shared: Arc<Shared>, cancel: CancellationToken) {
    tokio::select! {
        err = conn.closed() => {
            let (code, reason) = close_info(&err);
            shared.closed(code, reason).await;
        }
        _ = cancel.cancelled() => {}
    }
}

async fn read_stream(
    mut recv: RecvStream,
    mut reader: FrameReader,
    codec: Codec,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = cancel.cancelled() => return,
            frame = read_frame(&mut recv, &mut reader) => frame,
        };
        match frame {
            Ok(Some(body)) => match codec.decode::<ServerFrame>(&body) {
                Ok(frame) => shared.dispatch(frame).await,
                Err(err) => tracing::warn!(%err, "undecodable frame from relay"),
            },
            Ok(None) | Err(_) => return,
        }
    }
}

/// Dispatches every datagram from the relay like a frame read from a stream.
async fn read_datagrams(conn: Connection, codec: Codec, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let datagram = tokio::select! {
            _ = cancel.cancelled() => return,
            datagram = conn.read_datagram() => datagram,
        };
        let Ok(body) = datagram else { return };
        match codec.decode::<ServerFrame>(&body) {
            Ok(frame) => shared.dispatch(frame).await,
            Err(err) => tracing::warn!(%err, "undecodable datagram from relay"),
        }
    }
}

impl QuicLink {
    /// Sends a frame as one datagram when it fits the path; otherwise on the control stream.
    pub(super) async fn send_datagram(&self, frame: WireFrame) -> Result<(), ClientError> {
        let body = frame.body();
        if self.conn.max_datagram_size().is_some_and(|max| body.len() <= max) {
            match self.conn.send_datagram(body) {
                Ok(()) => return Ok(()),
                Err(quinn::SendDatagramError::ConnectionLost(e)) => return Err(closed(&e)),
                Err(_) => {}
            }
        }
        self.send_control(frame).await
    }

    /// Largest datagram the path carries now, if the relay accepts datagrams.
    pub(super) fn max_datagram_size(&self) -> Option<usize> {
        self.conn.max_datagram_size()
    }

    /// Opens the room's stream with its `join` frame and starts reading it. Returns false when
    /// the room already had a stream (the relay will refuse this join; the new stream is finished
    /// at once and the existing one is kept).
    pub(super) async fn open_room(
        &self,
        room: &str,
        join: WireFrame,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<bool, ClientError> {
        let (mut send, recv) = self.conn.open_bi().await.map_err(|e| closed(&e))?;
        send.write_all(join.prefixed()).await.map_err(|e| self.write_error(e))?;
        tasks.spawn(read_stream(
            recv,
            FrameReader::new(MAX_INBOUND_FRAME),
            self.codec,
            self.shared.clone(),
            cancel.clone(),
        ));
        let mut rooms = self.rooms_lock();
        if rooms.contains_key(room) {
            let _ = send.finish();
            return Ok(false);
        }
        rooms.insert(room.to_owned(), Arc::new(Mutex::new(send)));
        Ok(true)
    }

    /// Forgets a room's stream after leave (or a failed join) and finishes it.
    pub(super) async fn forget_room(&self, room: &str) {
        let stream = self.rooms_lock().remove(room);
        if let Some(send) = stream {
            let _ = send.lock().await.finish();
        }
    }

    /// Sends on the room's stream, or on the control stream when the room is not joined.
    pub(super) async fn send_for_room(&self, room: &str, frame: WireFrame) -> Result<(), ClientError> {
        let stream = self.rooms_lock().get(room).cloned();
        match stream {
            Some(send) => send.lock().await.write_all(frame.prefixed()).await.map_err(|e| self.write_error(e)),
            None => self.send_control(frame).await,
        }
    }

    fn rooms_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<SendStream>>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) async fn send_control(&self, frame: WireFrame) -> Result<(), ClientError> {
        self.control.lock().await.write_all(frame.prefixed()).await.map_err(|e| self.write_error(e))
    }

    fn write_error(&self, err: quinn::WriteError) -> ClientError {
        self.shared.closed_error().unwrap_or(ClientError::Closed { code: None, reason: err.to_string() })
    }

    pub(super) fn close(&self) {
        self.conn.close(0u32.into(), b"bye");
        self.endpoint.close(0u32.into(), b"bye");
    }
}
