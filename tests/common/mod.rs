//! A real relay on loopback for integration tests, with helpers to mint tokens and connect.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use edgerelay::auth::{Caps, Claims};
use edgerelay::client::{Client, ClientError, ClientOptions, ServerTrust, Target};
use edgerelay::config::Config;
use edgerelay::proto::codec::length_prefix;
use edgerelay::proto::{ClientFrame, Codec, ErrorCode, PROTOCOL_VERSION, ServerFrame};
use edgerelay::relay::Relay;

/// The transport and codec combinations every protocol test runs over.
pub const VARIANTS: [(Transport, Codec); 6] = [
    (Transport::Quic, Codec::Postcard),
    (Transport::Quic, Codec::Json),
    (Transport::WebSocket, Codec::Json),
    (Transport::WebSocket, Codec::Postcard),
    (Transport::WebTransport, Codec::Json),
    (Transport::WebTransport, Codec::Postcard),
];

// `WebTransport` is the protocol's name, not a repetition of the enum's.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Quic,
    WebSocket,
    /// WebTransport at `/v1/wt` on the QUIC port, as browsers connect.
    WebTransport,
}

pub struct TestRelay {
    pub relay: Relay,
    pub dir: tempfile::TempDir,
}

pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config { data_dir: dir.to_path_buf(), ..Config::default() };
    config.listen.udp = "127.0.0.1:0".parse().unwrap();
    config.listen.tcp = "127.0.0.1:0".parse().unwrap();
    config.shutdown.drain_timeout_ms = 3000;
    config
}

pub async fn start() -> TestRelay {
    start_with(|_| {}).await
}

/// Sets a small outbox (`limits.outbox_bytes`) and lowers the session document limit with it,
/// which config validation keeps at most half an outbox (a `joined` carries the document).
pub fn small_outbox(config: &mut Config, bytes: usize) {
    config.limits.outbox_bytes = bytes;
    config.sessions.max_document_bytes = config.sessions.max_document_bytes.min((bytes / 2) as u32);
}

pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestRelay {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    let relay = Relay::start(config).await.expect("relay starts");
    TestRelay { relay, dir }
}

impl TestRelay {
    /// Drains and stops the relay, leaves it down for `down`, then starts it again on the same
    /// ports and data directory (same certificate, keys and history).
    pub async fn restart(self, down: Duration) -> TestRelay {
        let TestRelay { relay, dir } = self;
        let mut config = relay.config().clone();
        config.listen.udp = relay.udp_addr();
        config.listen.tcp = relay.tcp_addr();
        relay.shutdown().await;
        tokio::time::sleep(down).await;
        // In one process the old endpoint lets go of its UDP port a moment after `shutdown`
        // returns (its driver task ends on its next poll): retry the bind briefly, as a
        // supervisor restarting a process would.
        let mut attempts = 0;
        let relay = loop {
            match Relay::start(config.clone()).await {
                Err(edgerelay::relay::RelayError::Bind { error, .. })
                    if error.kind() == std::io::ErrorKind::AddrInUse && attempts < 20 =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                started => break started.expect("relay restarts"),
            }
        };
        TestRelay { relay, dir }
    }
}

pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn claims(sub: &str, tenant: &str, rooms: &[&str]) -> Claims {
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    Claims {
        sub: sub.into(),
        tenant: tenant.into(),
        exp: now_secs() + 3600,
        nbf: None,
        iat: Some(now_secs()),
        jti: None,
        iss: None,
        aud: None,
        caps: Caps { join: rooms.clone(), publish: rooms.clone(), media: rooms, ..Caps::default() },
    }
}

impl TestRelay {
    pub fn sign(&self, claims: &Claims) -> String {
        self.relay.dev_signer().expect("dev keys on").sign(claims).unwrap()
    }

    /// A token for `sub` in `tenant` that may join and publish to `rooms` (patterns).
    pub fn token(&self, sub: &str, tenant: &str, rooms: &[&str]) -> String {
        self.sign(&claims(sub, tenant, rooms))
    }

    /// A token like [`TestRelay::token`] that may also place 1:1 calls to anyone of its tenant.
    pub fn call_token(&self, sub: &str, tenant: &str, rooms: &[&str]) -> String {
        let mut claims = claims(sub, tenant, rooms);
        claims.caps.call = vec!["*".into()];
        self.sign(&claims)
    }

    /// A token for `sub` in `tenant` that may create, join and edit the sessions `edit` and join
    /// the sessions `read` as a viewer (patterns), and nothing else.
    pub fn session_token(&self, sub: &str, tenant: &str, edit: &[&str], read: &[&str]) -> String {
        let mut claims = claims(sub, tenant, &[]);
        claims.caps.session = edit.iter().map(|s| s.to_string()).collect();
        claims.caps.session_read = read.iter().map(|s| s.to_string()).collect();
        self.sign(&claims)
    }

    /// The listener `transport` connects to: UDP for QUIC and WebTransport, TCP for WebSocket.
    pub fn listen_addr(&self, transport: Transport) -> std::net::SocketAddr {
        match transport {
            Transport::Quic | Transport::WebTransport => self.relay.udp_addr(),
            Transport::WebSocket => self.relay.tcp_addr(),
        }
    }

    pub fn target(&self, transport: Transport) -> Target {
        self.target_at(transport, self.listen_addr(transport))
    }

    /// The relay's target for `transport` at `addr` instead of its own listener: a proxy or
    /// forwarder in front of it.
    pub fn target_at(&self, transport: Transport, addr: std::net::SocketAddr) -> Target {
        match transport {
            Transport::Quic => Target::Quic {
                addr,
                server_name: "localhost".into(),
                tls: ServerTrust::Pinned(vec![self.cert_sha256()]),
            },
            Transport::WebSocket => Target::WebSocket { url: format!("ws://{addr}/v1/ws") },
            Transport::WebTransport => Target::WebTransport {
                addr,
                server_name: "localhost".into(),
                tls: ServerTrust::Pinned(vec![self.cert_sha256()]),
                path: edgerelay::transport::webtransport::PATH.into(),
            },
        }
    }

    pub fn cert_sha256(&self) -> [u8; 32] {
        let hex = self.relay.cert().sha256_hex;
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    pub async fn try_connect(&self, transport: Transport, codec: Codec, token: &str) -> Result<Client, ClientError> {
        Client::connect(self.target(transport), ClientOptions::new(token).codec(codec)).await
    }

    /// A device of `sub` in tenant `acme` that may create and edit the sessions `doc:*`.
    pub async fn session_device(&self, (transport, codec): (Transport, Codec), sub: &str) -> Client {
        let token = self.session_token(sub, "acme", &["doc:*"], &[]);
        self.try_connect(transport, codec, &token).await.expect("client connects")
    }

    pub async fn connect(&self, transport: Transport, codec: Codec, sub: &str, tenant: &str, rooms: &[&str]) -> Client {
        self.try_connect(transport, codec, &self.token(sub, tenant, rooms)).await.expect("client connects")
    }

    /// The `hello` a hand-driven connection sends: user `raw` of `acme`, every room allowed.
    pub fn raw_hello(&self) -> ClientFrame {
        ClientFrame::Hello { version: PROTOCOL_VERSION, token: self.token("raw", "acme", &["*"]), client: "raw".into() }
    }

    /// GET a path on the TCP listener; returns status and body.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.relay.tcp_addr(), path).await
    }
}

/// A minimal HTTP/1.1 GET over a raw socket (no client library needed for a few endpoints).
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "").await
}

/// A minimal HTTP/1.1 request; returns status and body.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http_request_within(addr, method, path, headers, body, Duration::from_secs(5)).await
}

/// [`http_request`] with its own bound on the answer (for load figures).
pub async fn http_request_within(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
    limit: Duration,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut response)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Awaits a future with a generous bound, so a broken relay fails the test instead of hanging it.
pub async fn within<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// Waits for the relay to close `client`'s connection; returns the close code.
pub async fn closed_with(client: &mut Client) -> Option<ErrorCode> {
    within("closed by the relay", async {
        loop {
            match client.next_event().await {
                Some(edgerelay::client::Event::Closed { code, .. }) => return code,
                None => return None,
                Some(_) => {}
            }
        }
    })
    .await
}

/// A hand-driven QUIC connection: control stream open, nothing sent yet.
pub struct RawQuic {
    _endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

pub async fn raw_quic(relay: &TestRelay) -> RawQuic {
    let (endpoint, conn) = quic_connection(relay.relay.udp_addr(), relay.cert_sha256(), None).await;
    let (send, recv) = conn.open_bi().await.unwrap();
    RawQuic { _endpoint: endpoint, conn, send, recv }
}

/// A raw QUIC connection (ALPN `edgerelay/1`) to `udp`, trusting the certificate `pin`;
/// `stream_window` limits how much the relay may send on one stream before the client reads it.
pub async fn quic_connection(
    udp: std::net::SocketAddr,
    pin: [u8; 32],
    stream_window: Option<u32>,
) -> (quinn::Endpoint, quinn::Connection) {
    let crypto = edgerelay::tls::pinned_client_config(vec![pin], &[edgerelay::transport::ALPN_RAW]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(window) = stream_window {
        let mut transport = quinn::TransportConfig::default();
        transport.stream_receive_window(window.into());
        transport.receive_window(quinn::VarInt::from_u32(64 << 20));
        config.transport_config(Arc::new(transport));
    }
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let conn = endpoint.connect(udp, "localhost").unwrap().await.unwrap();
    (endpoint, conn)
}

impl RawQuic {
    pub async fn send_body(&mut self, body: &[u8]) {
        self.send.write_all(&length_prefix(body.len())).await.unwrap();
        self.send.write_all(body).await.unwrap();
    }

    pub async fn hello(&mut self, relay: &TestRelay) {
        self.send_body(&Codec::Json.encode(&relay.raw_hello())).await;
        let mut reader = edgerelay::proto::FrameReader::new(1 << 20);
        let body = edgerelay::transport::quic::read_frame(&mut self.recv, &mut reader).await.unwrap().unwrap();
        assert!(matches!(Codec::Json.decode::<ServerFrame>(&body).unwrap(), ServerFrame::Welcome { .. }));
    }

    /// The close code the relay closed the connection with, and the last error frame it sent.
    pub async fn closed_with(mut self) -> (Option<u64>, Option<ErrorCode>) {
        let mut reader = edgerelay::proto::FrameReader::new(1 << 20);
        let mut last_error = None;
        while let Ok(Some(body)) = edgerelay::transport::quic::read_frame(&mut self.recv, &mut reader).await {
            if let Ok(ServerFrame::Error { code, .. }) = Codec::detect(&body).decode::<ServerFrame>(&body) {
                last_error = Some(code);
            }
        }
        let close = match within("quic close", self.conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
            _ => None,
        };
        (close, last_error)
    }
}

/// A UDP forwarder between one QUIC client and the relay that can be cut: after [`CutLink::cut`]
/// nothing passes either way, as when a phone dies or loses its network without closing
/// anything. The relay only learns from its idle timeout.
pub struct CutLink {
    pub addr: std::net::SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

pub async fn cut_link(relay: std::net::SocketAddr) -> CutLink {
    use std::sync::atomic::{AtomicBool, Ordering};
    let front = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = front.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    let flag = cut.clone();
    let task = tokio::spawn(async move {
        let (mut up, mut down) = (vec![0u8; 65_536], vec![0u8; 65_536]);
        let mut client = None;
        loop {
            tokio::select! {
                Ok((n, from)) = front.recv_from(&mut up) => {
                    client = Some(from);
                    if !flag.load(Ordering::Relaxed) {
                        let _ = back.send_to(&up[..n], relay).await;
                    }
                }
                Ok(n) = back.recv(&mut down) => {
                    if let (Some(to), false) = (client, flag.load(Ordering::Relaxed)) {
                        let _ = front.send_to(&down[..n], to).await;
                    }
                }
            }
        }
    });
    CutLink { addr, cut, task }
}

impl CutLink {
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for CutLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Checks an `x-edgerelay-signature` value (`t=<s>,v1=<hex HMAC-SHA256 of "<t>.<body>">`, the
/// backend hooks' and the notification webhook's) as a receiver would.
pub fn signature_ok(header: Option<&str>, body: &[u8], secret: &str) -> bool {
    let Some(value) = header else { return false };
    let Some((t, v1)) = value.split_once(",v1=") else { return false };
    let Some(t) = t.strip_prefix("t=") else { return false };
    let Ok(tag) = (0..v1.len())
        .step_by(2)
        .map(|i| v1.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect::<Option<Vec<u8>>>()
        .ok_or(())
    else {
        return false;
    };
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    ring::hmac::verify(&key, &[format!("{t}.").as_bytes(), body].concat(), &tag).is_ok()
}

/// The next event of collaborative session `session` on `client` that `wanted` accepts; the
/// others (and other sessions' events) are skipped.
pub async fn next_session_event(
    client: &mut Client,
    session: &str,
    wanted: impl Fn(&edgerelay::proto::SessionEvent) -> bool,
) -> edgerelay::proto::SessionEvent {
    within("a session event", async {
        loop {
            let update = client.next_session_update().await.expect("connection open");
            if update.session == session && wanted(&update.event) {
                return update.event;
            }
        }
    })
    .await
}
