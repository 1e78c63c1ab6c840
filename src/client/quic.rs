//! The client's QUIC link, raw (ALPN `edgerelay/1`) or WebTransport (ALPN `h3`, a session at
//! `/v1/wt`): a control stream plus one bidirectional stream per joined room, and datagrams for
//! latest-wins frames (one frame body per datagram, no prefix). Both are a `web-transport-quinn`
//! [`Session`], so everything after the handshake is shared.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::Endpoint;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use web_transport_quinn::{RecvStream, SendStream, Session, SessionError, WebTransportError};

use super::{ClientError, ServerTrust, Shared};
use crate::proto::{Codec, ErrorCode, FrameReader, ServerFrame, WireFrame};
use crate::tls;
use crate::transport::answer::{AnsweringCubic, Window};
use crate::transport::{ALPN_RAW, quic::read_frame, webtransport};

/// Bytes the relay may send before the client reads them (connection flow control).
const RECEIVE_WINDOW: u32 = 8 << 20;

/// Largest frame the client accepts from the relay.
const MAX_INBOUND_FRAME: usize = 16 << 20;

/// The idle timeout the client offers by default: the relay's default `limits.idle_timeout_ms`,
/// so both sides agree (QUIC uses the smaller of the two) and a connection outlives outages of
/// tens of seconds (docs/decisions.md, "Mobile outages").
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(45);

/// Keep-alive interval by default: half the 30 s after which many middleboxes forget a UDP flow
/// (RFC 9000, section 10.1.2), and under a third of the idle timeout, so two keep-alives can be
/// lost in a row. A little under the relay's own keep-alive (`limits.ping_interval_ms`, 15 s):
/// any packet received restarts a side's keep-alive timer, so the client's fires first and the
/// relay's never does, one `PING` and one ACK per interval instead of two of each when both fire
/// together (docs/performance.md has the packets per minute).
pub(super) const KEEP_ALIVE: Duration = Duration::from_secs(14);

/// A client QUIC endpoint, one UDP socket and the task that drives it, that several clients
/// share ([`ClientOptions::quic_endpoint`](super::ClientOptions::quic_endpoint)). A client
/// without one binds its own. An application holding many connections (a bridge, a load
/// generator) saves a socket, a driver task and a wake-up per received packet for each: the
/// shared driver reads the packets of all its connections in batches.
#[derive(Debug, Clone)]
pub struct QuicEndpoint(Endpoint);

impl QuicEndpoint {
    /// Binds an endpoint on an ephemeral port of `ip` (`0.0.0.0` for IPv4 relays, `::` for
    /// IPv6 ones; an IPv4 socket cannot reach an IPv6 relay). Needs a tokio runtime.
    /// Its socket asks for the relay's UDP buffer sizes (the kernel caps them at
    /// `net.core.rmem_max` / `wmem_max`): with the default, about 200 KiB, the server flights
    /// of a few dozen handshakes at once overflowed a shared endpoint's socket on loopback, and
    /// each lost one waited a second for its retransmission.
    pub fn bind(ip: std::net::IpAddr) -> Result<QuicEndpoint, ClientError> {
        use socket2::{Domain, Protocol, Socket, Type};
        let connect_err = |e: std::io::Error| ClientError::Connect(e.to_string());
        let addr = SocketAddr::new(ip, 0);
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(connect_err)?;
        if addr.is_ipv6() {
            // As quinn's `Endpoint::client`: `::` reaches IPv4 relays too where the OS allows it.
            let _ = socket.set_only_v6(false);
        }
        socket.bind(&addr.into()).map_err(connect_err)?;
        let socket: std::net::UdpSocket = socket.into();
        match crate::transport::quic::try_enlarge_udp_buffers(&socket) {
            Ok((recv, send)) => tracing::debug!(recv, send, "client UDP socket buffers"),
            Err(err) => tracing::debug!(%err, "could not enlarge the client's UDP socket buffers"),
        }
        let runtime = quinn::default_runtime().ok_or_else(|| ClientError::Connect("no async runtime".into()))?;
        Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime).map(QuicEndpoint).map_err(connect_err)
    }

    /// The device's network changed: moves every connection of the endpoint to a new socket
    /// (see [`Client::network_changed`](super::Client::network_changed)). The socket is made in
    /// the calling thread's network namespace.
    pub fn network_changed(&self) -> Result<(), ClientError> {
        move_to_new_socket(&self.0)
    }
}

/// Where a client keeps the TLS session tickets relays send, to resume with 0-RTT: the next
/// connection to the same server name sends its `hello` in the first flight instead of after the
/// handshake, a round trip sooner. Clones share the store (a `Resilient` client's reconnects
/// resume from its earlier connections); each ticket is used once.
///
/// rustls resumes a session only with the very TLS config (the same certificate verifier) that
/// made it, so the store keeps the config of each trust and ALPN, with its tickets inside
/// (rustls's in-memory store, 256 server names).
#[derive(Clone, Default)]
pub struct QuicSessions(Arc<std::sync::Mutex<Vec<SessionConfig>>>);

/// The TLS config (and so the tickets) of one trust and ALPN.
struct SessionConfig {
    trust: ServerTrust,
    alpn: &'static [u8],
    config: Arc<quinn::crypto::rustls::QuicClientConfig>,
}

impl QuicSessions {
    pub fn new() -> QuicSessions {
        QuicSessions::default()
    }

    /// The config for `trust` and `alpn`, made by `build` the first time, with 0-RTT on.
    fn config(
        &self,
        trust: &ServerTrust,
        alpn: &'static [u8],
        build: impl FnOnce() -> Result<rustls::ClientConfig, ClientError>,
    ) -> Result<Arc<quinn::crypto::rustls::QuicClientConfig>, ClientError> {
        let mut configs = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = configs.iter().find(|c| c.alpn == alpn && &c.trust == trust) {
            return Ok(known.config.clone());
        }
        let mut crypto = build()?;
        crypto.enable_early_data = true;
        let config = Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                .map_err(|e| ClientError::Connect(e.to_string()))?,
        );
        configs.push(SessionConfig { trust: trust.clone(), alpn, config: config.clone() });
        Ok(config)
    }
}

impl std::fmt::Debug for QuicSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuicSessions")
    }
}

/// Rebinds `endpoint` to a new UDP socket on an ephemeral port of the same kind of address:
/// quinn then pings on every connection at once, from the new address, which the relay
/// validates and migrates to (RFC 9000, section 9).
fn move_to_new_socket(endpoint: &Endpoint) -> Result<(), ClientError> {
    let rebind = || {
        let ip: std::net::IpAddr =
            if endpoint.local_addr()?.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
        endpoint.rebind(std::net::UdpSocket::bind(SocketAddr::new(ip, 0))?)
    };
    rebind().map_err(|e: std::io::Error| ClientError::Connect(format!("cannot move to a new socket: {e}")))
}

pub(super) struct QuicLink {
    endpoint: Endpoint,
    /// Whether this link bound the endpoint for itself, and closes it with the connection.
    owns_endpoint: bool,
    conn: Session,
    codec: Codec,
    shared: Arc<Shared>,
    control: Mutex<SendStream>,
    /// Each room's stream has its own lock, so a room waiting on flow control never holds up
    /// another room's publishes.
    /// Each joined room's stream; `None` while its join is opening one.
    rooms: std::sync::Mutex<HashMap<String, Option<Arc<Mutex<SendStream>>>>>,
    /// Whether `hello` went in 0-RTT and the relay took it.
    early: bool,
    /// Told of every frame sent, for [`probe_stalls`].
    sent: Arc<tokio::sync::Notify>,
    /// Told of every frame received on a stream, for [`watch_receiving`].
    received: Arc<tokio::sync::Notify>,
    /// The path probe under way, shared with [`probe_stalls`].
    probes: Arc<Probes>,
}

/// Connects over raw QUIC, or over WebTransport when `wt_path` names the session's URL path.
#[allow(clippy::too_many_arguments)]
pub(super) async fn connect(
    addr: SocketAddr,
    server_name: &str,
    trust: &ServerTrust,
    wt_path: Option<&str>,
    options: &super::ClientOptions,
    hello: WireFrame,
    shared: Arc<Shared>,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> Result<(QuicLink, ServerFrame), ClientError> {
    let codec = options.codec;
    let alpn = if wt_path.is_some() { webtransport::ALPN } else { ALPN_RAW };
    let build = || -> Result<rustls::ClientConfig, ClientError> {
        match trust {
            ServerTrust::Pinned(pins) => Ok(tls::pinned_client_config(pins.clone(), &[alpn])),
            ServerTrust::Roots(pem) => {
                tls::roots_client_config(pem, &[alpn]).map_err(|e| ClientError::Connect(e.to_string()))
            }
        }
    };
    // 0-RTT: with a session ticket from an earlier connection to this relay, `hello` goes in
    // the first flight. The tickets live in the TLS config, which the options' clones share.
    let crypto = match &options.quic_sessions {
        Some(sessions) => sessions.config(trust, alpn, build)?,
        None => {
            let mut crypto = build()?;
            crypto.resumption = rustls::client::Resumption::disabled();
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto)
                .map_err(|e| ClientError::Connect(e.to_string()))?;
            Arc::new(crypto)
        }
    };
    let mut config = quinn::ClientConfig::new(crypto);
    let mut transport = quinn::TransportConfig::default();
    // At most a third of the idle timeout, so two lost keep-alives do not end the connection.
    transport.keep_alive_interval(Some(options.quic_keep_alive.min(options.quic_idle_timeout / 3)));
    // Outlives an outage (a tunnel, a lift) so the connection resumes where it was; a relay that
    // vanished is noticed within it (a restarted one at once, by its stateless reset).
    let idle = quinn::IdleTimeout::try_from(options.quic_idle_timeout)
        .map_err(|_| ClientError::Connect("quic_idle_timeout out of range".into()))?;
    transport.max_idle_timeout(Some(idle));
    // What the relay may send ahead of the application's reading, over all streams: a media
    // subscriber that stops reading stalls the relay's sends within this, and the relay then
    // drops stale groups instead of queueing them (quinn's default has no connection limit).
    transport.receive_window(quinn::VarInt::from_u32(RECEIVE_WINDOW));
    // quinn's Cubic, whose window a move to a new socket opens (see `Probes::move_now`).
    transport.congestion_controller_factory(Arc::new(AnsweringCubic::default()));
    transport.mtu_discovery_config(Some(crate::transport::quic::mtu_discovery()));
    config.transport_config(Arc::new(transport));

    let (endpoint, owns_endpoint) = match &options.quic_endpoint {
        Some(shared) => (shared.0.clone(), false),
        None => {
            let ip = if addr.is_ipv6() { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() };
            (QuicEndpoint::bind(ip)?.0, true)
        }
    };
    let url = match wt_path {
        None => None,
        Some(path) => Some(
            format!("https://{server_name}:{port}{path}", port = addr.port())
                .parse::<url::Url>()
                .map_err(|e| ClientError::Connect(e.to_string()))?,
        ),
    };
    let connecting =
        endpoint.connect_with(config, addr, server_name).map_err(|e| ClientError::Connect(e.to_string()))?;
    // WebTransport does not try 0-RTT: web-transport-quinn 0.13 panics on the error a refused
    // early stream reports (docs/decisions.md, "0-RTT resumption").
    let connecting = if url.is_none() { connecting.into_0rtt() } else { Err(connecting) };
    let (started, early) = match connecting {
        Ok((conn, accepted)) => {
            // Sent before the handshake completes. The relay may refuse the early data (it
            // restarted, or no longer has the ticket): then none of it reached the relay, and
            // `hello` goes again on the connection, now established. Nothing is read from an
            // early stream before that is known (web-transport-quinn panics on the error a
            // refused stream reports); the answer cannot come sooner anyway.
            let sent = send_hello(conn.clone(), None, &hello).await;
            if accepted.await {
                (read_first(sent?, codec).await?, true)
            } else {
                drop(sent);
                (read_first(send_hello(conn, None, &hello).await?, codec).await?, false)
            }
        }
        Err(connecting) => {
            let conn = connecting.await.map_err(|e| ClientError::Connect(e.to_string()))?;
            (read_first(send_hello(conn, url.as_ref(), &hello).await?, codec).await?, false)
        }
    };
    let Started { session: conn, send, recv, reader, first } = started;
    let first = match first {
        Some(first) => first,
        // The relay closed before welcome: report its close code.
        None => return Err(closed(&conn.closed().await)),
    };
    if let ServerFrame::Error { code, message, .. } = first {
        return Err(ClientError::Rejected { code, message });
    }

    // A heartbeat tells the relay this client takes heartbeats: it then probes the client's
    // fades with its own (docs/protocol.md, "QUIC datagrams").
    heartbeat(&conn);
    let received = Arc::new(tokio::sync::Notify::new());
    let relay_heartbeats = Arc::new(AtomicU64::new(0));
    tasks.spawn(read_stream(recv, reader, codec, shared.clone(), received.clone(), cancel.clone()));
    tasks.spawn(watch(conn.clone(), shared.clone(), cancel.clone()));
    tasks.spawn(read_datagrams(conn.clone(), codec, shared.clone(), relay_heartbeats.clone(), cancel.clone()));
    tasks.spawn(super::media::accept_groups(conn.clone(), shared.media.clone(), tasks.clone(), cancel.clone()));
    let sent = Arc::new(tokio::sync::Notify::new());
    let probes = Arc::new(Probes { window: Window::of(&conn), ..Probes::default() });
    if options.quic_probe_stalls {
        tasks.spawn(probe_stalls(conn.clone(), endpoint.clone(), sent.clone(), probes.clone(), cancel.clone()));
        if options.quic_watch_receiving {
            let watch = watch_receiving(
                conn.clone(),
                endpoint.clone(),
                shared.clone(),
                Heard { received: received.clone(), relay_heartbeats },
                probes.clone(),
                cancel.clone(),
            );
            tasks.spawn(watch);
        }
    }
    let link = QuicLink {
        endpoint,
        owns_endpoint,
        conn,
        codec,
        shared,
        control: Mutex::new(send),
        rooms: Default::default(),
        early,
        sent,
        received,
        probes,
    };
    Ok((link, first))
}

/// A session set up on a connection: WebTransport's `CONNECT` when there is a `url`, then the
/// control stream with `hello` sent, and the relay's first frame (`None`: the stream ended
/// first).
struct Started {
    session: Session,
    send: SendStream,
    recv: RecvStream,
    reader: FrameReader,
    first: Option<ServerFrame>,
}

/// Sets up the session on `conn` and sends `hello` on a new control stream.
async fn send_hello(
    conn: quinn::Connection,
    url: Option<&url::Url>,
    hello: &WireFrame,
) -> Result<(Session, SendStream, RecvStream), ClientError> {
    let session = match url {
        None => Session::raw(conn),
        Some(url) => Session::connect(conn, url.clone()).await.map_err(|e| ClientError::Connect(e.to_string()))?,
    };
    let (mut send, recv) = session.open_bi().await.map_err(|e| closed(&e))?;
    send.write_all(hello.prefixed()).await.map_err(|e| ClientError::Connect(e.to_string()))?;
    Ok((session, send, recv))
}

/// Reads the relay's answer to `hello`.
async fn read_first(
    (session, send, mut recv): (Session, SendStream, RecvStream),
    codec: Codec,
) -> Result<Started, ClientError> {
    let mut reader = FrameReader::new(MAX_INBOUND_FRAME);
    let first = match read_frame(&mut recv, &mut reader).await {
        Ok(Some(body)) => Some(codec.decode::<ServerFrame>(&body).map_err(|e| ClientError::Protocol(e.to_string()))?),
        Ok(None) | Err(_) => None,
    };
    Ok(Started { session, send, recv, reader, first })
}

/// Nothing heard this long after sending (and at least 4 round trips) means the path is down.
const STALL_AFTER: Duration = Duration::from_millis(400);
/// How often a stalled connection moves to a new socket (or every three round trips, if
/// longer), for the first [`PROBE_FAST_FOR`]; then every [`PROBE_SLOW`] (still far under
/// quinn's doubling probe timeout).
const PROBE_EVERY: Duration = Duration::from_millis(500);
const PROBE_FAST_FOR: Duration = Duration::from_secs(10);
const PROBE_SLOW: Duration = Duration::from_secs(2);

/// An outage the OS does not report (a fade, a tunnel without a path change): after the
/// client sent something, the relay acknowledges within a round trip and its ACK delay. If
/// nothing at all arrives within [`STALL_AFTER`] (or four round trips), the connection probes
/// as after [`QuicEndpoint::network_changed`]: it moves to a new socket, which makes quinn send
/// a `PING` at once and the relay validate the new path and resend what it holds, again every
/// [`PROBE_EVERY`] (at least three round trips) until a packet arrives. Without this, the first packet after the outage waits
/// for quinn's probe timeout, which doubles while nothing is acknowledged (and has no cap).
/// Woken only by sends: an idle client sends nothing more (docs/decisions.md, "Unreported
/// fades").
async fn probe_stalls(
    session: Session,
    endpoint: Endpoint,
    sent: Arc<tokio::sync::Notify>,
    probes: Arc<Probes>,
    cancel: CancellationToken,
) {
    let conn: &quinn::Connection = &session;
    cancel
        .run_until_cancelled(async {
            loop {
                sent.notified().await;
                let before = heard(conn);
                tokio::time::sleep((conn.rtt() * 4).max(STALL_AFTER)).await;
                if heard(conn) != before {
                    continue;
                }
                tracing::debug!("nothing heard from the relay since sending: probing the path");
                // Until a packet arrives, or the connection ends (its idle timeout).
                probe_until_heard(&session, &endpoint, None, &probes, false).await;
            }
        })
        .await;
}

/// When a receiving client sends a heartbeat, counted from the relay's last stream data and
/// then from the previous heartbeat: 0.5, 1.5, 3.5 and 7.5 s after the data. The first is
/// soon, for an outage that cuts a conversation; the doubling bounds the cost to four
/// heartbeats (and their four acknowledgements) per burst of received data, all within the
/// 10 s or so a cellular radio stays connected after traffic anyway (its "tail").
const HEARTBEATS: [Duration; 4] =
    [Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)];

/// A fade that cuts a client that only receives: it sends nothing, so [`probe_stalls`] is never
/// woken, and the relay's retransmissions wait for quinn's doubling probe timeout after the
/// network is back. After stream data from the relay, the client sends a heartbeat on the
/// schedule of [`HEARTBEATS`] unless more data came first (which starts the schedule again): an
/// empty QUIC datagram, which the relay acknowledges and otherwise ignores. One left unanswered
/// for four round trips (at least [`STALL_AFTER`]) means a fade: see [`ride_out_fade`]. When
/// the relay is heard again with no stream data (it is not resending: its probe timer backed
/// off), the client moves and reports `Event::PathBack`, as after `network_changed()`.
/// Datagrams do not arm it (the relay's presence refresh is one every few seconds), so an idle
/// client in a room sends nothing more once the heartbeats after its last stream data (the
/// join's answer, for one that never receives a message) are done (docs/decisions.md,
/// "Receive-only clients" and "Fades end in a catch-up").
async fn watch_receiving(
    conn: Session,
    endpoint: Endpoint,
    shared: Arc<Shared>,
    Heard { received, relay_heartbeats }: Heard,
    probes: Arc<Probes>,
    cancel: CancellationToken,
) {
    let quic: quinn::Connection = (*conn).clone();
    cancel
        .run_until_cancelled(async {
            received.notified().await;
            'data: loop {
                for wait in HEARTBEATS {
                    tokio::select! {
                        _ = received.notified() => continue 'data,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    let before = heard(&quic);
                    if !heartbeat(&conn) {
                        return;
                    }
                    tokio::time::sleep((quic.rtt() * 4).max(STALL_AFTER)).await;
                    if heard(&quic) == before {
                        let streams = stream_frames(&quic);
                        let probed = relay_heartbeats.load(Ordering::Relaxed);
                        match ride_out_fade(&conn, &quic, &probes).await {
                            FadeEnd::Heard => {}
                            // `network_changed()` (or the stall probe) took care of the path.
                            FadeEnd::Handled => continue 'data,
                            FadeEnd::Closed => return,
                        }
                        // Heard again: the path is back. Stream data in what came means the
                        // relay is resending already (its probe timer had not backed off); a
                        // heartbeat from the relay means it probes the path and resends once
                        // this client's ACK of it arrives.
                        if stream_frames(&quic) != streams || relay_heartbeats.load(Ordering::Relaxed) != probed {
                            continue 'data;
                        }
                        // Only its acknowledgement: the relay waits for its backed-off probe
                        // timer. As after `network_changed()`: a move and padded heartbeats make
                        // it validate a new path at once, and `Event::PathBack` lets
                        // `Resilient` ask for what the fade held.
                        if let Err(err) = move_and_pad(&conn, &endpoint, &probes) {
                            tracing::debug!(%err, "after a fade");
                        }
                        shared.path_back();
                        let until = tokio::time::Instant::now() + Duration::from_secs(3);
                        probe_until_heard(&conn, &endpoint, Some(until), &probes, true).await;
                    }
                }
                received.notified().await;
            }
        })
        .await;
}

/// An empty datagram; false when the connection takes none (no datagrams, or closing).
fn heartbeat(conn: &Session) -> bool {
    conn.send_datagram(bytes::Bytes::new()).is_ok()
}

/// How long a request sent alone waits for the relay's stream credit before it goes on the
/// control stream instead.
const OPEN_ALONE_WITHIN: Duration = Duration::from_millis(200);
/// Padded heartbeats after `network_changed()`, and their size (so a packet stays within the
/// 1,200 bytes every QUIC path carries).
const PADDED_HEARTBEATS: usize = 2;
const PADDED_HEARTBEAT_BYTES: usize = 1_100;
static ZEROS: [u8; PADDED_HEARTBEAT_BYTES] = [0; PADDED_HEARTBEAT_BYTES];

/// Heartbeats of zero bytes, padded to [`PADDED_HEARTBEAT_BYTES`], from a new socket: until the
/// relay has validated a new address it sends it at most three times what it received from it
/// (QUIC's anti-amplification limit, RFC 9000 section 8). quinn's `PING` after a move is 41
/// bytes, so the relay's `PATH_CHALLENGE` (padded to 1,200 bytes) used that up and anything else
/// it had for the client, the answers to a catch-up included, waited a round trip for the
/// client's `PATH_RESPONSE`. Two of these (2.3 KB per network change) let the relay send about
/// 6.7 KB more at once. The relay takes a datagram of zero bytes as a heartbeat.
fn padded_heartbeats(conn: &Session) {
    let size = conn.max_datagram_size().min(PADDED_HEARTBEAT_BYTES);
    if size == 0 {
        return;
    }
    for _ in 0..PADDED_HEARTBEATS {
        if conn.send_datagram(bytes::Bytes::from_static(&ZEROS[..size])).is_err() {
            return;
        }
    }
}

/// Moves to a new socket and sends [`padded_heartbeats`] from it: what `network_changed()`
/// does, and what a receiving client does when the relay is heard again after a fade.
fn move_and_pad(conn: &Session, endpoint: &Endpoint, probes: &Probes) -> Result<(), ClientError> {
    probes.move_now(endpoint)?;
    padded_heartbeats(conn);
    Ok(())
}

/// How often a receiving client in a fade sends a heartbeat on its socket (or once a round
/// trip, if longer): every [`FADE_FIRST`] for [`FADE_FIRST_FOR`], so a short fade ends soon after
/// the network returns; then every [`FADE_EVERY`] until [`PROBE_FAST_FOR`], then every
/// [`PROBE_SLOW`]. Each heartbeat stays in the congestion window until the fade ends, so the
/// schedule also bounds what a long fade leaves there (about 60 small packets after 30 s):
/// a window full of them would hold back the move and catch-up that follow.
const FADE_FIRST: Duration = Duration::from_millis(100);
const FADE_FIRST_FOR: Duration = Duration::from_secs(2);
const FADE_EVERY: Duration = Duration::from_millis(250);

/// Why [`ride_out_fade`] ended.
enum FadeEnd {
    /// The relay was heard.
    Heard,
    /// The connection moved (`network_changed()`) or a probe runs: the path is in its hands.
    Handled,
    /// The connection ended or takes no heartbeat.
    Closed,
}

/// The receiving client's path is down. It stays on its socket until the relay is heard: the
/// relay's own retransmissions go to the address it knows, and on a fast path its probe timeout
/// is the quickest way back; moving to new sockets during the fade would strand them. Meanwhile
/// it sends heartbeats (see [`FADE_FIRST`]), one small packet each, so the first after the
/// network's return reaches the relay, whose acknowledgement is heard. It stops, without
/// heartbeats of its own, when `network_changed()` or a probe takes over the path.
async fn ride_out_fade(conn: &Session, quic: &quinn::Connection, probes: &Probes) -> FadeEnd {
    tracing::debug!("no answer to a heartbeat: riding out a fade");
    let started = tokio::time::Instant::now();
    while quic.close_reason().is_none() {
        let before = heard(quic);
        if !heartbeat(conn) {
            return FadeEnd::Closed;
        }
        let elapsed = started.elapsed();
        let every = if elapsed < FADE_FIRST_FOR {
            FADE_FIRST
        } else if elapsed < PROBE_FAST_FOR {
            FADE_EVERY
        } else {
            PROBE_SLOW
        };
        let next = tokio::time::Instant::now() + every.max(quic.rtt());
        while tokio::time::Instant::now() < next {
            tokio::time::sleep_until(next.min(tokio::time::Instant::now() + PROBE_TICK)).await;
            if probes.busy_since(started) {
                return FadeEnd::Handled;
            }
            if heard(quic) != before {
                return FadeEnd::Heard;
            }
        }
    }
    FadeEnd::Closed
}

/// Datagrams received on the connection so far: anything at all from the relay.
fn heard(conn: &quinn::Connection) -> u64 {
    conn.stats().udp_rx.datagrams
}

/// `STREAM` frames received so far.
fn stream_frames(conn: &quinn::Connection) -> u64 {
    conn.stats().frame_rx.stream
}

/// `PATH_CHALLENGE`s received so far: the relay puts one in every packet to an address it has
/// not validated yet.
fn challenged(conn: &quinn::Connection) -> u64 {
    conn.stats().frame_rx.path_challenge
}

/// One path probe at a time per connection: two would move the connection to new sockets in
/// turn, and the relay's answer to one socket would go to a socket already given up (a round
/// trip lost each time). A probe after `network_changed()` takes over from a stall probe under
/// way; a stall probe does not start while another probe runs.
#[derive(Default)]
struct Probes {
    /// Bumped by every probe that starts; a probe whose number is no longer current stops.
    generation: std::sync::atomic::AtomicU64,
    running: std::sync::atomic::AtomicUsize,
    /// When the connection last moved to a new socket (`network_changed()` or a probe).
    moved: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// The connection's window, opened for each move's `PING` and each heartbeat of a probe.
    window: Option<Window>,
}

impl Probes {
    /// Moves `endpoint` to a new socket, noting when (a failed attempt too: the next waits).
    /// The move's `PING` (and the next packet) go out even when the window is full of what
    /// the outage swallowed: otherwise the move would be silent until the probe timer fires.
    fn move_now(&self, endpoint: &Endpoint) -> Result<(), ClientError> {
        *self.moved.lock().unwrap_or_else(|e| e.into_inner()) = Some(tokio::time::Instant::now());
        self.open_window();
        move_to_new_socket(endpoint)
    }

    /// Opens the window for the next transmission.
    fn open_window(&self) {
        if let Some(window) = &self.window {
            window.open();
        }
    }

    /// Whether a probe is running or the connection moved at or after `at`.
    fn busy_since(&self, at: tokio::time::Instant) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst) > 0
            || self.moved.lock().unwrap_or_else(|e| e.into_inner()).is_some_and(|moved| moved >= at)
    }

    /// When the next move is due, `every` after the last one (`now` if there was none).
    fn next_move(&self, every: Duration, now: tokio::time::Instant) -> tokio::time::Instant {
        self.moved.lock().unwrap_or_else(|e| e.into_inner()).map_or(now, |at| (at + every).max(now))
    }
}

/// Counts a probe as running for its lifetime.
struct Running<'a>(&'a Probes);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// How often a probe looks at what arrived.
const PROBE_TICK: Duration = Duration::from_millis(20);
/// How soon, at the least, a probe sends a heartbeat from the new socket when the relay has
/// not answered it yet.
const PROBE_RESEND: Duration = Duration::from_millis(100);

/// Moves `conn` to a new socket (quinn sends a `PING` from it at once; the relay migrates,
/// validates the new address and resends what it holds) and again every [`PROBE_EVERY`] (at
/// least three round trips) for [`PROBE_FAST_FOR`], then every [`PROBE_SLOW`], until the relay
/// has validated the new path (true): it sent a `PATH_CHALLENGE`, then packets without one. The
/// first packet heard is not enough: if the client's answer to the challenge is lost, the relay
/// may send nothing more (anti-amplification) and then goes back to the old address, which the
/// client no longer listens on. False when the connection ends or `until` passes first, when
/// a newer probe took over, or (`network_back` false) when another probe was already running.
/// With `network_back` (after `network_changed()`: the network is there) it takes over from a
/// probe under way, and until the relay answers a new socket it also sends a heartbeat from
/// it every round trip (at least [`PROBE_RESEND`]): on a lossy path the move's `PING` is a
/// single packet, and a later move starts the validation over. A stall probe, which does not
/// know whether the network is there, sends only its moves' `PING`s.
/// Nothing is queued on the connection meanwhile: a connection whose congestion window the
/// outage shrank sends nothing, not even ACKs, while it holds data it may not send yet
/// (docs/decisions.md, "The network-change hook on a lossy path").
async fn probe_until_heard(
    session: &Session,
    endpoint: &Endpoint,
    until: Option<tokio::time::Instant>,
    probes: &Probes,
    network_back: bool,
) -> bool {
    use std::sync::atomic::Ordering::SeqCst;
    let conn: &quinn::Connection = session;
    if !network_back && probes.running.load(SeqCst) > 0 {
        return false;
    }
    probes.running.fetch_add(1, SeqCst);
    let _running = Running(probes);
    let mine = probes.generation.fetch_add(1, SeqCst) + 1;
    let started = tokio::time::Instant::now();
    let mut challenge_seen = false;
    while conn.close_reason().is_none() && probes.generation.load(SeqCst) == mine {
        // At least three round trips: the relay's answer to the new path must be able to
        // arrive before the socket it goes to is given up for the next.
        let fast = (conn.rtt() * 3).max(PROBE_EVERY);
        let every = if started.elapsed() < PROBE_FAST_FOR { fast } else { PROBE_SLOW.max(fast) };
        // Not again right after `network_changed()` moved: quinn keeps one previous socket,
        // and a second move would close the one the relay still sends its retransmissions to.
        let now = tokio::time::Instant::now();
        if probes.next_move(every, now) <= now {
            match probes.move_now(endpoint) {
                Ok(()) => tracing::debug!(rtt = ?conn.rtt(), "path probe: moved to a new socket"),
                Err(err) => tracing::debug!(%err, "path probe"),
            }
        }
        let next = probes.next_move(every, tokio::time::Instant::now());
        let resend = conn.rtt().max(PROBE_RESEND);
        let mut resend_at = tokio::time::Instant::now() + resend;
        while tokio::time::Instant::now() < until.map_or(next, |until| until.min(next)) {
            let (datagrams, challenges) = (heard(conn), challenged(conn));
            let wake = next.min(tokio::time::Instant::now() + PROBE_TICK);
            let wake = until.map_or(wake, |until| until.min(wake));
            tokio::time::sleep_until(if challenge_seen { wake } else { wake.min(resend_at) }).await;
            if challenged(conn) != challenges {
                challenge_seen = true;
            } else if challenge_seen && heard(conn) != datagrams {
                tracing::debug!("path probe: the relay validated the path");
                return true;
            }
            if network_back && !challenge_seen && tokio::time::Instant::now() >= resend_at {
                tracing::debug!("path probe: heartbeat");
                probes.open_window();
                heartbeat(session);
                resend_at += resend;
            }
        }
        if until.is_some_and(|until| tokio::time::Instant::now() >= until) {
            return false;
        }
    }
    false
}

fn closed(err: &SessionError) -> ClientError {
    let (code, reason) = close_info(err);
    ClientError::Closed { code, reason }
}

/// The relay's close code and reason: the QUIC application close on raw QUIC, the
/// `CLOSE_WEBTRANSPORT_SESSION` capsule on WebTransport.
fn close_info(err: &SessionError) -> (Option<ErrorCode>, String) {
    let error_code = |code: u64| u16::try_from(code).ok().filter(|c| *c != 0).map(ErrorCode);
    match err {
        SessionError::ConnectionError(quinn::ConnectionError::ApplicationClosed(close)) => {
            (error_code(close.error_code.into_inner()), String::from_utf8_lossy(&close.reason).into_owned())
        }
        SessionError::WebTransportError(WebTransportError::Closed(code, reason)) => {
            (error_code(u64::from(*code)), reason.clone())
        }
        other => (None, other.to_string()),
    }
}

async fn watch(conn: Session, shared: Arc<Shared>, cancel: CancellationToken) {
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
    received: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    // One cancellation future for the stream's life, not one per frame.
    cancel
        .run_until_cancelled(async {
            loop {
                match read_frame(&mut recv, &mut reader).await {
                    Ok(Some(body)) => {
                        received.notify_one();
                        match codec.decode::<ServerFrame>(&body) {
                            Ok(frame) => shared.dispatch(frame).await,
                            Err(err) => tracing::warn!(%err, "undecodable frame from relay"),
                        }
                    }
                    Ok(None) | Err(_) => return,
                }
            }
        })
        .await;
}

/// What tells [`watch_receiving`] the relay was heard: stream data, and the relay's heartbeats
/// (counted by [`read_datagrams`]).
struct Heard {
    received: Arc<tokio::sync::Notify>,
    relay_heartbeats: Arc<AtomicU64>,
}

/// Dispatches every datagram from the relay like a frame read from a stream; its heartbeats (it
/// probes a fade, see `transport::answer` on the relay's side) are only counted in
/// `relay_heartbeats`.
async fn read_datagrams(
    conn: Session,
    codec: Codec,
    shared: Arc<Shared>,
    relay_heartbeats: Arc<AtomicU64>,
    cancel: CancellationToken,
) {
    cancel
        .run_until_cancelled(async {
            while let Ok(body) = conn.read_datagram().await {
                if crate::proto::is_heartbeat(&body) {
                    relay_heartbeats.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                match codec.decode::<ServerFrame>(&body) {
                    Ok(frame) => shared.dispatch(frame).await,
                    Err(err) => tracing::warn!(%err, "undecodable datagram from relay"),
                }
            }
        })
        .await;
}

impl QuicLink {
    /// Sends a frame as one datagram when it fits the path; otherwise on the control stream.
    pub(super) async fn send_datagram(&self, frame: WireFrame) -> Result<(), ClientError> {
        self.sent.notify_one();
        let body = frame.body();
        if self.max_datagram_size().is_some_and(|max| body.len() <= max) {
            match self.conn.send_datagram(body) {
                Ok(()) => return Ok(()),
                Err(SessionError::SendDatagramError(err))
                    if !matches!(err, quinn::SendDatagramError::ConnectionLost(_)) => {}
                Err(e) => return Err(closed(&e)),
            }
        }
        self.send_control(frame).await
    }

    /// Largest datagram the path carries now, if the relay accepts datagrams.
    pub(super) fn max_datagram_size(&self) -> Option<usize> {
        Some(self.conn.max_datagram_size()).filter(|max| *max > 0)
    }

    /// Takes the room for a join: false when it is joined or being joined on this connection
    /// (a second stream would carry the room too, and finishing it would leave the room).
    pub(super) fn claim_room(&self, room: &str) -> bool {
        let mut rooms = self.rooms_lock();
        if rooms.contains_key(room) {
            return false;
        }
        rooms.insert(room.to_owned(), None);
        true
    }

    /// Opens the stream of a room taken with [`Self::claim_room`], with its `join` frame, and
    /// starts reading it.
    pub(super) async fn open_room(
        &self,
        room: &str,
        join: WireFrame,
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<(), ClientError> {
        let opened = async {
            let (mut send, recv) = self.conn.open_bi().await.map_err(|e| closed(&e))?;
            send.write_all(join.prefixed()).await.map_err(|e| self.write_error(e))?;
            Ok::<_, ClientError>((send, recv))
        };
        match opened.await {
            Ok((send, recv)) => {
                self.read(recv, tasks, cancel);
                self.rooms_lock().insert(room.to_owned(), Some(Arc::new(Mutex::new(send))));
                Ok(())
            }
            Err(err) => {
                self.rooms_lock().remove(room);
                Err(err)
            }
        }
    }

    /// Reads the relay's frames on `recv` (a stream this client opened) until it ends.
    fn read(&self, recv: RecvStream, tasks: &TaskTracker, cancel: &CancellationToken) {
        let reader = FrameReader::new(MAX_INBOUND_FRAME);
        let (shared, received) = (self.shared.clone(), self.received.clone());
        tasks.spawn(read_stream(recv, reader, self.codec, shared, received, cancel.clone()));
    }

    /// Forgets a room's stream after leave (or a failed join) and finishes it.
    pub(super) async fn forget_room(&self, room: &str) {
        let stream = self.rooms_lock().remove(room).flatten();
        if let Some(send) = stream {
            let _ = send.lock().await.finish();
        }
    }

    /// Sends on the room's stream, or on the control stream when the room is not joined.
    pub(super) async fn send_for_room(&self, room: &str, frame: WireFrame) -> Result<(), ClientError> {
        self.sent.notify_one();
        let stream = self.rooms_lock().get(room).cloned().flatten();
        match stream {
            Some(send) => send.lock().await.write_all(frame.prefixed()).await.map_err(|e| self.write_error(e)),
            None => self.send_control(frame).await,
        }
    }

    fn rooms_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Option<Arc<Mutex<SendStream>>>>> {
        self.rooms.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) async fn send_control(&self, frame: WireFrame) -> Result<(), ClientError> {
        self.sent.notify_one();
        self.control.lock().await.write_all(frame.prefixed()).await.map_err(|e| self.write_error(e))
    }

    fn write_error(&self, err: web_transport_quinn::WriteError) -> ClientError {
        self.shared.closed_error().unwrap_or(ClientError::Closed { code: None, reason: err.to_string() })
    }

    /// Moves the link's endpoint to a new socket ([`QuicEndpoint::network_changed`]); a shared
    /// endpoint moves with all its connections: the network changed for all of them. Then
    /// [`padded_heartbeats`] from the new socket.
    pub(super) fn network_changed(&self) -> Result<(), ClientError> {
        move_and_pad(&self.conn, &self.endpoint, &self.probes)
    }

    /// Opens a stream for `frames` alone (requests), sends them and starts reading it, so their
    /// answers do not queue behind what another stream is waiting for: after an outage a room's
    /// stream holds what QUIC still has to resend, which it learns only a round trip after the
    /// relay hears from the new path. The caller finishes the returned stream once the answers
    /// came. `None` when no stream opened within [`OPEN_ALONE_WITHIN`] (the relay's stream
    /// credit used up): the frames went on the control stream.
    pub(super) async fn send_alone(
        &self,
        frames: &[WireFrame],
        tasks: &TaskTracker,
        cancel: &CancellationToken,
    ) -> Result<Option<SendStream>, ClientError> {
        self.sent.notify_one();
        let (mut send, recv) = match tokio::time::timeout(OPEN_ALONE_WITHIN, self.conn.open_bi()).await {
            Ok(opened) => opened.map_err(|e| closed(&e))?,
            Err(_) => {
                for frame in frames {
                    self.send_control(frame.clone()).await?;
                }
                return Ok(None);
            }
        };
        self.read(recv, tasks, cancel);
        let mut bytes = bytes::BytesMut::new();
        for frame in frames {
            bytes.extend_from_slice(frame.prefixed());
        }
        send.write_all(&bytes).await.map_err(|e| self.write_error(e))?;
        Ok(Some(send))
    }

    /// After a network change: probes the path from new sockets until the relay has validated
    /// one ([`probe_until_heard`]); false when that did not happen within `within`.
    pub(super) async fn probe_path(&self, within: Duration) -> bool {
        let until = tokio::time::Instant::now() + within;
        probe_until_heard(&self.conn, &self.endpoint, Some(until), &self.probes, true).await
    }

    /// Whether the connection resumed a TLS session with 0-RTT and the relay accepted the early
    /// data (`hello` included).
    pub(super) fn early(&self) -> bool {
        self.early
    }

    /// The QUIC (or WebTransport) session, for media group streams.
    pub(super) fn session(&self) -> &Session {
        &self.conn
    }

    pub(super) fn close(&self) {
        self.conn.close(0, b"bye");
        if self.owns_endpoint {
            self.endpoint.close(0u32.into(), b"bye");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe after `network_changed()` does not move again at once: its first move is a
    /// period after the hook's (a second move would close the socket the relay still sends to).
    #[test]
    fn the_next_move_waits_a_period_after_the_last() {
        let probes = Probes::default();
        let t0 = tokio::time::Instant::now();
        let every = Duration::from_millis(500);
        assert_eq!(probes.next_move(every, t0), t0, "no move yet: one is due now");
        *probes.moved.lock().unwrap() = Some(t0);
        let soon = t0 + Duration::from_millis(1);
        assert_eq!(probes.next_move(every, soon), t0 + every);
        let later = t0 + Duration::from_millis(700);
        assert_eq!(probes.next_move(every, later), later, "overdue: now");
    }
}
