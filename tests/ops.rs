//! Operations: TLS on the TCP port (`wss://`) and certificate reload, metrics (help texts,
//! histograms, counters at 0, build and process info, the admin listener), the server API's
//! duplicate count, the drain on SIGTERM, the Grafana dashboard and Prometheus alert rules in
//! docs/ (every metric they read is served), and the region's nodes in the admin view.

mod common;
#[path = "common/process.rs"]
mod process;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{http_get, http_request, start_with, within};
use edgerelay::client::{Client, ClientOptions, ServerTrust, Target};
use edgerelay::proto::{ClientFrame, Codec, PROTOCOL_VERSION, Payload, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use process::{API_KEY, RelayProcess};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// A self-signed certificate for `localhost` written to `cert.pem` / `key.pem` in `dir`
/// (replacing what is there); returns its SHA-256.
fn write_cert(dir: &std::path::Path) -> [u8; 32] {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    // Written aside and renamed, as a certificate manager replaces files.
    std::fs::write(dir.join("cert.pem.new"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem.new"), certified.signing_key.serialize_pem()).unwrap();
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).unwrap();
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).unwrap();
    edgerelay::tls::sha256(certified.cert.der())
}

type Wss = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A `wss://` connection that accepts only the certificate `pin`; its `welcome` read.
async fn wss_connect(addr: SocketAddr, pin: [u8; 32], token: &str) -> Result<Wss, String> {
    let config = edgerelay::tls::pinned_client_config(vec![pin], &[edgerelay::tls::ALPN_HTTP1]);
    let ws = wss_connect_with(addr, config, "localhost", token).await?;
    let served =
        ws.get_ref().get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| edgerelay::tls::sha256(c));
    assert_eq!(served, Some(pin), "the pin verifier accepted another certificate");
    Ok(ws)
}

/// A `wss://` connection to `addr` as `server_name`, verified by `config`; its `welcome` read.
async fn wss_connect_with(
    addr: SocketAddr,
    config: rustls::ClientConfig,
    server_name: &str,
    token: &str,
) -> Result<Wss, String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.map_err(|e| e.to_string())?;
    let url = format!("wss://{server_name}:{}/v1/ws", addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls).await.map_err(|e| e.to_string())?;
    let hello = ClientFrame::Hello { version: PROTOCOL_VERSION, token: token.to_owned(), client: "wss-test".into() };
    ws.send(WsMessage::text(String::from_utf8(Codec::Json.encode(&hello).to_vec()).unwrap())).await.unwrap();
    match wss_next(&mut ws).await {
        ServerFrame::Welcome { .. } => Ok(ws),
        other => Err(format!("expected welcome, got {other:?}")),
    }
}

async fn wss_send(ws: &mut Wss, frame: &ClientFrame) {
    ws.send(WsMessage::text(String::from_utf8(Codec::Json.encode(frame).to_vec()).unwrap())).await.unwrap();
}

async fn wss_next(ws: &mut Wss) -> ServerFrame {
    within("a frame over wss", async {
        loop {
            match ws.next().await.expect("wss open").expect("wss frame") {
                WsMessage::Text(text) => return Codec::Json.decode::<ServerFrame>(text.as_bytes()).unwrap(),
                WsMessage::Binary(bytes) => return Codec::Json.decode::<ServerFrame>(&bytes).unwrap(),
                _ => {}
            }
        }
    })
    .await
}

/// Publishes `id` to `room` over `ws` and waits for its ack (and the delivery, as a member).
async fn wss_chat(ws: &mut Wss, room: &str, id: &str, req: u64) {
    let publish =
        ClientFrame::Publish { req, room: room.into(), id: id.into(), data: Payload::json(&serde_json::json!(id)) };
    wss_send(ws, &publish).await;
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        match wss_next(ws).await {
            ServerFrame::Ack { id: acked_id, .. } if acked_id == id => acked = true,
            ServerFrame::Message { id: message_id, .. } if message_id == id => delivered = true,
            ServerFrame::Error { code, message, .. } => panic!("error {code:?}: {message}"),
            _ => {}
        }
    }
}

async fn wss_join(ws: &mut Wss, room: &str) {
    wss_send(ws, &ClientFrame::Join { req: 1, room: room.into(), since: None }).await;
    loop {
        if let ServerFrame::Joined { .. } = wss_next(ws).await {
            return;
        }
    }
}

async fn quic_connect(addr: SocketAddr, pin: [u8; 32], token: &str) -> Result<Client, edgerelay::client::ClientError> {
    let target = Target::Quic { addr, server_name: "localhost".into(), tls: ServerTrust::Pinned(vec![pin]) };
    Client::connect(target, ClientOptions::new(token).codec(Codec::Json)).await
}

/// A relay with the certificate files in `dir` (see `write_cert`), checking them for changes
/// every `reload_interval_ms` (0: only on SIGHUP).
async fn with_cert_files(dir: &std::path::Path, reload_interval_ms: u64) -> common::TestRelay {
    let dir = dir.to_path_buf();
    start_with(|config| {
        config.tls.cert_file = Some(dir.join("cert.pem"));
        config.tls.key_file = Some(dir.join("key.pem"));
        config.tls.reload_interval_ms = reload_interval_ms;
    })
    .await
}

#[tokio::test]
async fn tcp_port_serves_wss_with_the_configured_certificate_and_reloads_it_on_sighup() {
    let certs = tempfile::tempdir().unwrap();
    let first = write_cert(certs.path());
    // Only SIGHUP reloads here: the test decides when.
    let relay = with_cert_files(certs.path(), 0).await;
    assert!(relay.relay.tcp_tls());
    assert_eq!(relay.relay.websocket_scheme(), "wss");
    let tcp = relay.relay.tcp_addr();
    let udp = relay.relay.udp_addr();
    let token = relay.token("ann", "acme", &["*"]);

    // Plain HTTP on the TLS port is not served.
    let mut plain = tokio::net::TcpStream::connect(tcp).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    plain.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let _ = within("plain HTTP refused", plain.read_to_end(&mut answer)).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "plain HTTP answered on the TLS port");

    let mut old_wss = wss_connect(tcp, first, &token).await.expect("wss with the first certificate");
    wss_join(&mut old_wss, "lobby").await;
    wss_chat(&mut old_wss, "lobby", "w1", 2).await;
    let old_quic = quic_connect(udp, first, &token).await.expect("QUIC with the first certificate");
    old_quic.join("lobby").await.unwrap();
    old_quic.publish("lobby", "q1", Payload::json(&serde_json::json!(1))).await.unwrap();

    let second = write_cert(certs.path());
    assert_ne!(first, second);
    let status = std::process::Command::new("kill").args(["-HUP", &std::process::id().to_string()]).status().unwrap();
    assert!(status.success());
    let expected = second.iter().map(|b| format!("{b:02x}")).collect::<String>();
    within("certificate reloaded", async {
        while relay.relay.cert().sha256_hex != expected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // New connections get the new certificate, on both listeners.
    let Err(err) = wss_connect(tcp, first, &token).await else { panic!("the old certificate is still served on TCP") };
    println!("wss pinned to the old certificate: {err}");
    let mut new_wss = wss_connect(tcp, second, &token).await.expect("wss with the new certificate");
    assert!(quic_connect(udp, first, &token).await.is_err(), "the old certificate is no longer served on QUIC");
    let new_quic = quic_connect(udp, second, &token).await.expect("QUIC with the new certificate");
    wss_join(&mut new_wss, "lobby").await;
    wss_chat(&mut new_wss, "lobby", "w2", 2).await;
    new_quic.join("lobby").await.unwrap();
    new_quic.publish("lobby", "q2", Payload::json(&serde_json::json!(2))).await.unwrap();

    // The connections made before the reload go on.
    wss_chat(&mut old_wss, "lobby", "w3", 3).await;
    old_quic.publish("lobby", "q3", Payload::json(&serde_json::json!(3))).await.unwrap();
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn changed_certificate_files_are_picked_up_by_polling_and_a_bad_pair_keeps_the_current_one() {
    let certs = tempfile::tempdir().unwrap();
    let first = write_cert(certs.path());
    let relay = with_cert_files(certs.path(), 50).await;
    let token = relay.token("ann", "acme", &["*"]);
    let hex = |hash: [u8; 32]| hash.iter().map(|b| format!("{b:02x}")).collect::<String>();

    // A key that does not parse: refused, the current certificate stays.
    std::fs::write(certs.path().join("key.pem"), "not a key").unwrap();
    let err = relay.relay.reload_tls().expect_err("a broken key file is not loaded");
    println!("broken key: {err}");
    assert_eq!(relay.relay.cert().sha256_hex, hex(first));
    wss_connect(relay.relay.tcp_addr(), first, &token).await.expect("still served on TCP");
    quic_connect(relay.relay.udp_addr(), first, &token).await.expect("still served on QUIC");

    // A good pair is found by the next check, without a signal.
    let second = write_cert(certs.path());
    within("the poll loads the new certificate", async {
        while relay.relay.cert().sha256_hex != hex(second) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    wss_connect(relay.relay.tcp_addr(), second, &token).await.expect("new certificate on TCP");
    quic_connect(relay.relay.udp_addr(), second, &token).await.expect("new certificate on QUIC");
    relay.relay.shutdown().await;
}

/// Runs `certs/dev-ca.sh DIR`: a CA in `DIR/ca.pem` (kept across runs) and a new relay
/// certificate signed by it in `DIR/cert.pem` / `DIR/key.pem`. Returns the CA's PEM.
fn dev_ca(dir: &std::path::Path) -> Vec<u8> {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs/dev-ca.sh");
    let out = std::process::Command::new(script).arg(dir).output().expect("run certs/dev-ca.sh (needs openssl)");
    assert!(out.status.success(), "certs/dev-ca.sh failed:\n{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(dir.join("ca.pem")).unwrap()
}

#[tokio::test]
async fn a_certificate_from_the_dev_ca_is_verified_by_clients_that_trust_only_that_ca() {
    let certs = tempfile::tempdir().unwrap();
    let ca = dev_ca(certs.path());
    let other = tempfile::tempdir().unwrap();
    let other_ca = dev_ca(other.path());
    let relay = with_cert_files(certs.path(), 0).await;
    let (udp, tcp) = (relay.relay.udp_addr(), relay.relay.tcp_addr());
    let token = relay.token("ann", "acme", &["*"]);
    let quic = |name: &str, roots: &[u8]| Target::Quic {
        addr: udp,
        server_name: name.into(),
        tls: ServerTrust::Roots(roots.to_vec()),
    };
    let wt = |roots: &[u8]| Target::WebTransport {
        addr: udp,
        server_name: "localhost".into(),
        tls: ServerTrust::Roots(roots.to_vec()),
        path: "/v1/wt".into(),
    };
    let roots = |pem: &[u8]| edgerelay::tls::roots_client_config(pem, &[edgerelay::tls::ALPN_HTTP1]).unwrap();
    let options = || ClientOptions::new(&token).codec(Codec::Json);

    // Verified against the CA, by name and by address: raw QUIC, WebTransport and wss.
    for name in ["localhost", "127.0.0.1"] {
        let client =
            Client::connect(quic(name, &ca), options()).await.unwrap_or_else(|e| panic!("QUIC as {name}: {e}"));
        client.join("lobby").await.unwrap();
        client.publish("lobby", &format!("q-{name}"), Payload::json(&serde_json::json!(name))).await.unwrap();
    }
    let webtransport = Client::connect(wt(&ca), options()).await.expect("WebTransport trusting the dev CA");
    webtransport.join("lobby").await.unwrap();
    let mut ws = wss_connect_with(tcp, roots(&ca), "localhost", &token).await.expect("wss trusting the dev CA");
    wss_join(&mut ws, "lobby").await;
    wss_chat(&mut ws, "lobby", "w1", 2).await;
    wss_connect_with(tcp, roots(&ca), "127.0.0.1", &token).await.expect("wss to the address");

    // Another CA, or a name the certificate does not carry, is refused.
    assert!(Client::connect(quic("localhost", &other_ca), options()).await.is_err(), "QUIC trusting another CA");
    assert!(Client::connect(wt(&other_ca), options()).await.is_err(), "WebTransport trusting another CA");
    assert!(
        Client::connect(quic("relay.example.com", &ca), options()).await.is_err(),
        "QUIC with a name not in the certificate"
    );
    let Err(refused) = wss_connect_with(tcp, roots(&other_ca), "localhost", &token).await else {
        panic!("wss trusting another CA connected")
    };
    println!("wss trusting another CA: {refused}");
    assert!(
        wss_connect_with(tcp, roots(&ca), "relay.example.com", &token).await.is_err(),
        "wss with a name not in the certificate"
    );

    // A second run keeps the CA and issues a new certificate: after the reload, clients that
    // trust the CA connect without being told anything new (no pin to update).
    let before = relay.relay.cert().sha256_hex;
    assert_eq!(dev_ca(certs.path()), ca, "the CA is kept");
    relay.relay.reload_tls().expect("the new certificate loads");
    assert_ne!(relay.relay.cert().sha256_hex, before, "a new certificate is served");
    Client::connect(quic("localhost", &ca), options()).await.expect("QUIC after rotation").join("lobby").await.unwrap();
    wss_connect_with(tcp, roots(&ca), "localhost", &token).await.expect("wss after rotation");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn tcp_port_stays_plain_with_the_dev_certificate_unless_tls_tcp_is_set() {
    let plain = start_with(|_| {}).await;
    assert!(!plain.relay.tcp_tls());
    assert_eq!(plain.relay.websocket_scheme(), "ws");
    assert_eq!(plain.http_get("/healthz").await.0, 200);
    plain.relay.shutdown().await;

    let tls = start_with(|config| config.tls.tcp = Some(true)).await;
    assert!(tls.relay.tcp_tls());
    let pin = tls.cert_sha256();
    let mut ws = wss_connect(tls.relay.tcp_addr(), pin, &tls.token("ann", "acme", &["*"])).await.unwrap();
    wss_join(&mut ws, "lobby").await;
    wss_chat(&mut ws, "lobby", "d1", 2).await;
    tls.relay.shutdown().await;
}

#[tokio::test]
async fn wss_delivers_a_burst_larger_than_the_socket_buffers_in_order() {
    let relay = start_with(|config| {
        config.tls.tcp = Some(true);
        config.limits.publish_rate = 100_000;
        config.limits.publish_burst = 100_000;
    })
    .await;
    let pin = relay.cert_sha256();
    let token = relay.token("ann", "acme", &["*"]);
    let mut ws = wss_connect(relay.relay.tcp_addr(), pin, &token).await.unwrap();
    wss_join(&mut ws, "bulk").await;
    let publisher = quic_connect(relay.relay.udp_addr(), pin, &token).await.unwrap();
    // 6 MB while the wss client reads nothing: the relay's writes meet a full socket, and TLS
    // records wait in rustls' buffer for it (or the member is sent to catch up from history).
    const COUNT: usize = 600;
    let filler = "x".repeat(10_000);
    for batch in (0..COUNT).collect::<Vec<_>>().chunks(50) {
        let publishes = batch.iter().map(|i| {
            let data = Payload::json(&serde_json::json!({"i": i, "filler": filler}));
            let publisher = &publisher;
            async move { publisher.publish("bulk", &format!("m{i}"), data).await.unwrap() }
        });
        futures_util::future::join_all(publishes).await;
    }
    let mut offsets = Vec::new();
    while offsets.len() < COUNT {
        match wss_next(&mut ws).await {
            ServerFrame::Message { position, .. } => offsets.push(position.offset),
            ServerFrame::Error { code, message, .. } => panic!("error {code:?}: {message}"),
            _ => {}
        }
    }
    assert_eq!(offsets, (1..=COUNT as u64).collect::<Vec<_>>());
    relay.relay.shutdown().await;
}

/// A sample's value in a Prometheus text page (the first line starting with `series `).
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn server_api_duplicate_publishes_are_counted() {
    let relay = start_with(|config| config.api.key = Some(API_KEY.into())).await;
    let tcp = relay.relay.tcp_addr();
    let duplicates = || async {
        let (_, page) = http_get(tcp, "/metrics").await;
        sample(&page, "edgerelay_duplicate_publishes_total").unwrap_or(0.0)
    };
    let before = duplicates().await;
    let auth = format!("Bearer {API_KEY}");
    let body = r#"{"tenant": "acme", "room": "news", "id": "srv-dup", "data": 1}"#;
    let mut answers = Vec::new();
    for _ in 0..2 {
        let (status, answer) = http_request(
            tcp,
            "POST",
            "/v1/api/publish",
            &[("authorization", &auth), ("content-type", "application/json")],
            body,
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        answers.push(serde_json::from_str::<serde_json::Value>(&answer).unwrap());
    }
    assert_eq!(answers[0]["duplicate"], false);
    assert_eq!(answers[1]["duplicate"], true);
    assert_eq!(answers[0]["position"], answers[1]["position"]);
    assert_eq!(duplicates().await - before, 1.0);
    relay.relay.shutdown().await;
}

/// A free loopback TCP address.
fn free_tcp() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn metrics_are_described_initialised_and_served_on_the_admin_listener() {
    let dir = tempfile::tempdir().unwrap();
    let admin = free_tcp();
    let mut relay = RelayProcess::new(dir.path()).with_env("EDGERELAY_LISTEN__ADMIN", admin.to_string());
    relay.start().await;

    // Before any event: every documented metric is there, at 0, with its help text.
    let (status, page) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for series in [
        "edgerelay_duplicate_publishes_total",
        "edgerelay_publishes_total",
        "edgerelay_deliveries_total",
        "edgerelay_store_failures_total",
        "edgerelay_catch_ups_total",
        "edgerelay_replayed_total",
        "edgerelay_redis_resyncs_total",
        "edgerelay_rooms",
        "edgerelay_presence_users",
        "edgerelay_errors_total{code=\"bad_frame\"}",
        "edgerelay_disconnects_total{code=\"normal\"}",
        "edgerelay_disconnects_total{code=\"going_away\"}",
        "edgerelay_datagram_drops_total{reason=\"superseded\"}",
        "edgerelay_presence_updates_total{kind=\"typing\"}",
        "edgerelay_presence_ignored_total{reason=\"rate_limited\"}",
        "edgerelay_connections_total{transport=\"websocket\"}",
        "edgerelay_connections{transport=\"quic\"}",
        "edgerelay_publish_ack_seconds_count",
        "edgerelay_delivery_seconds_count",
        "edgerelay_handshake_seconds_count{transport=\"webtransport\"}",
    ] {
        assert_eq!(sample(&page, series), Some(0.0), "{series} is not at 0 in\n{page}");
    }
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(sample(&page, &format!("edgerelay_build_info{{version=\"{version}\"}}")), Some(1.0));
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
        "edgerelay_tasks",
    ] {
        assert!(sample(&page, name).is_some(), "{name} missing");
    }
    let now = common::now_secs() as f64;
    let started = sample(&page, "process_start_time_seconds").unwrap();
    assert!((now - 120.0..=now + 5.0).contains(&started), "start time {started}, now {now}");
    assert!(sample(&page, "process_resident_memory_bytes").unwrap() > 1e6);
    // Every metric has its help text, and docs/operations.md lists it.
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).unwrap();
    for line in page.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        let name = line.split_whitespace().next().unwrap();
        assert!(page.contains(&format!("# HELP {name} ")), "no HELP for {name}");
        assert!(docs.contains(&format!("`{name}`")), "{name} is not in docs/operations.md");
    }
    assert!(page.contains("edgerelay_publish_ack_seconds_bucket{le=\"0.001\"} 0"), "{page}");

    // A chat: the histograms get their samples.
    let pin = relay.cert_pin().await;
    let client = Client::connect(relay.quic_target(vec![pin]), ClientOptions::new(relay.token("ann"))).await.unwrap();
    client.join("lobby").await.unwrap();
    client.publish("lobby", "m1", Payload::json(&serde_json::json!(1))).await.unwrap();
    let (_, page) = http_get(admin, "/metrics").await;
    assert_eq!(sample(&page, "edgerelay_publish_ack_seconds_count"), Some(1.0));
    assert_eq!(sample(&page, "edgerelay_handshake_seconds_count{transport=\"quic\"}"), Some(1.0));
    within("the delivery is recorded", async {
        loop {
            let (_, page) = http_get(admin, "/metrics").await;
            if sample(&page, "edgerelay_delivery_seconds_count") == Some(1.0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    // Metrics and the server API are served on the admin listener only; health on both.
    let auth = format!("Bearer {API_KEY}");
    let history = "/v1/api/history?tenant=acme&room=lobby";
    assert_eq!(http_request(admin, "GET", history, &[("authorization", &auth)], "").await.0, 200);
    assert_eq!(http_request(relay.tcp, "GET", history, &[("authorization", &auth)], "").await.0, 404);
    assert_eq!(http_get(relay.tcp, "/metrics").await.0, 404);
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http_get(relay.tcp, path).await.0, 200, "{path} on the public listener");
        assert_eq!(http_get(admin, path).await.0, 200, "{path} on the admin listener");
    }
    assert_eq!(http_get(relay.tcp, "/v1/cert").await.0, 200);
    assert_eq!(http_get(admin, "/v1/cert").await.0, 404);
    // The admin UI goes with the server API.
    assert_eq!(http_get(admin, "/admin/").await.0, 200);
    assert_eq!(http_get(relay.tcp, "/admin/").await.0, 404);
    drop(client);
}

#[tokio::test]
async fn sigterm_answers_503_refuses_new_connections_with_going_away_and_exits_by_the_deadline() {
    const DRAIN_MS: u64 = 2000;
    let dir = tempfile::tempdir().unwrap();
    let mut relay =
        RelayProcess::new(dir.path()).with_env("EDGERELAY_SHUTDOWN__DRAIN_TIMEOUT_MS", DRAIN_MS.to_string());
    relay.start().await;
    let pin = relay.cert_pin().await;

    // Connections that do not go away by themselves: a WebSocket client that neither reads
    // nor closes, and an HTTP client that never finishes its request headers.
    use tokio::io::AsyncWriteExt;
    let mut ws = tokio::net::TcpStream::connect(relay.tcp).await.unwrap();
    let upgrade = "GET /v1/ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    ws.write_all(upgrade.as_bytes()).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(relay.tcp).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let quic = Client::connect(relay.quic_target(vec![pin]), ClientOptions::new(relay.token("ann"))).await.unwrap();
    quic.join("lobby").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let signalled = Instant::now();
    let pid = relay.child.as_ref().unwrap().id();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());

    // During the drain: /readyz answers 503, a WebSocket upgrade 503 with Retry-After, and a new
    // QUIC connection is closed with going_away.
    within("readyz 503", async {
        while http_get(relay.tcp, "/readyz").await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut raw = tokio::net::TcpStream::connect(relay.tcp).await.unwrap();
    raw.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 512];
    let n = within("503 head", tokio::io::AsyncReadExt::read(&mut raw, &mut head)).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 503") && head.contains("retry-after: "), "{head}");

    let refused = quic_close_during_drain(relay.udp, pin).await;
    assert_eq!(refused, (131, b"relay is draining".to_vec()), "QUIC connect during drain");
    assert_eq!(http_get(relay.tcp, "/readyz").await.0, 503, "still draining");

    let child = relay.child.as_mut().unwrap();
    let status = within("relay exits", async {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let took = signalled.elapsed();
    println!("drain_timeout_ms {DRAIN_MS}: exited {} ms after SIGTERM", took.as_millis());
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_millis(DRAIN_MS + 1500), "exited {} ms after SIGTERM", took.as_millis());
    drop((ws, slow, quic));
}

/// Connects raw QUIC to a draining relay: the application close code and reason it gets.
async fn quic_close_during_drain(addr: SocketAddr, pin: [u8; 32]) -> (u64, Vec<u8>) {
    let crypto = edgerelay::tls::pinned_client_config(vec![pin], &[edgerelay::transport::ALPN_RAW]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let error = within("QUIC refused", async {
        match endpoint.connect(addr, "localhost").unwrap().await {
            Ok(conn) => conn.closed().await,
            Err(err) => err,
        }
    })
    .await;
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => (close.error_code.into_inner(), close.reason.to_vec()),
        other => panic!("expected an application close, got {other:?}"),
    }
}

// ---- dashboards and alerts (docs/grafana, docs/prometheus) ----

const DASHBOARD: &str = include_str!("../docs/grafana/edgerelay.json");
const ALERTS: &str = include_str!("../docs/prometheus/alerts.yml");

/// Series Prometheus makes itself, not the relay.
const PROMETHEUS_SERIES: [&str; 1] = ["up"];

/// The metric names a PromQL expression reads: its identifiers that are not functions,
/// aggregations, keywords, grouping labels, label matchers, ranges or strings.
fn promql_metrics(expr: &str) -> std::collections::BTreeSet<String> {
    const KEYWORDS: [&str; 10] = ["and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf"];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = std::collections::BTreeSet::new();
    // The index after the `close` that ends what starts at `i`; strings inside (label values)
    // are skipped whole, except when skipping a string itself.
    fn skip_to(chars: &[char], i: usize, close: char) -> usize {
        let mut j = i + 1;
        while j < chars.len() && chars[j] != close {
            j = match chars[j] {
                '\\' => j + 2,
                q @ ('"' | '\'' | '`') if !matches!(close, '"' | '\'' | '`') => skip_to(chars, j, q),
                _ => j + 1,
            };
        }
        j + 1
    }
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '"' | '\'' | '`' => i = skip_to(&chars, i, c),
            '{' => i = skip_to(&chars, i, '}'),
            '[' => i = skip_to(&chars, i, ']'),
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut next = i;
                while next < chars.len() && chars[next] == ' ' {
                    next += 1;
                }
                // A function or aggregation: `f(`, or `sum by (...)` / `sum without (...)`.
                let rest: String = chars[next..].iter().collect();
                let call = rest.starts_with('(') || rest.starts_with("by") || rest.starts_with("without");
                let grouping =
                    ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.as_str());
                if grouping && call {
                    i = skip_to(&chars, next, ')');
                } else if !call && !KEYWORDS.contains(&word.as_str()) && !grouping {
                    names.insert(word);
                }
            }
            c if c.is_ascii_digit() || c == '.' => {
                // A number or a duration (`5m`): not a name.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    names
}

#[test]
fn promql_metric_names_are_found_and_nothing_else() {
    let names = promql_metrics(
        r#"histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{job=~"$job", x="y}"}[$__rate_interval]))) > 0.1 and on (instance) b_total offset 5m / process_max_fds"#,
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["a_bucket", "b_total", "process_max_fds"]);
}

/// Every PromQL expression of the dashboard (panels' targets) and the metric of each template
/// query (`label_values(<metric>, <label>)`).
fn dashboard_exprs() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map {
                    match (key.as_str(), value) {
                        ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                        ("definition", serde_json::Value::String(query)) => {
                            let inner = query.strip_prefix("label_values(").expect("a label_values query");
                            out.push(inner.rsplit_once(',').expect("label_values(metric, label)").0.to_owned());
                        }
                        _ => walk(value, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(DASHBOARD).expect("the dashboard is JSON");
    assert_eq!(dashboard["uid"], "edgerelay");
    let mut out = Vec::new();
    walk(&dashboard, &mut out);
    out
}

/// The alert rules' expressions, checked by `promtool check rules` when it is installed
/// (Debian's `prometheus` package; scripts/test installs it); each rule has one `expr:` line.
fn alert_exprs() -> Vec<String> {
    match std::process::Command::new("promtool").args(["check", "rules", "docs/prometheus/alerts.yml"]).output() {
        Ok(out) => assert!(
            out.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(err) => println!("promtool not found ({err}): only the expressions' metric names are checked"),
    }
    let rules = ALERTS.lines().filter(|l| l.trim_start().starts_with("- alert:")).count();
    let exprs: Vec<String> =
        ALERTS.lines().filter_map(|l| l.trim_start().strip_prefix("expr:")).map(|e| e.trim().to_owned()).collect();
    assert!(rules > 0 && exprs.len() == rules, "{rules} alerts, {} one-line exprs", exprs.len());
    exprs
}

#[tokio::test]
async fn dashboard_and_alerts_read_only_served_metrics_and_the_region_lists_its_nodes() {
    let redis = edgerelay::testing::RedisServer::start().expect("start redis-server");
    let dir = tempfile::tempdir().unwrap();
    let redis_node = |name: &str| {
        RelayProcess::new(&dir.path().join(name))
            .with_env("EDGERELAY_STORE__ENGINE", "redis")
            .with_env("EDGERELAY_REDIS__URL", redis.url())
    };
    let mut a = redis_node("a");
    a.start().await;

    // Every metric the dashboard and the alerts read is on a Redis node's /metrics.
    let (status, page) = http_get(a.tcp, "/metrics").await;
    assert_eq!(status, 200);
    let served = |name: &str| page.lines().any(|l| l.strip_prefix(name).is_some_and(|r| r.starts_with([' ', '{'])));
    let exprs: Vec<String> = dashboard_exprs().into_iter().chain(alert_exprs()).collect();
    let mut read = std::collections::BTreeSet::new();
    for expr in &exprs {
        let names = promql_metrics(expr);
        assert!(!names.is_empty(), "no metric in {expr}");
        read.extend(names);
    }
    let missing: Vec<&String> =
        read.iter().filter(|name| !PROMETHEUS_SERIES.contains(&name.as_str()) && !served(name)).collect();
    assert!(missing.is_empty(), "read by docs/grafana or docs/prometheus but not served: {missing:?}");
    for topic in [
        "edgerelay_connections",
        "edgerelay_deliveries_total",
        "edgerelay_publish_ack_seconds_bucket",
        "edgerelay_catch_ups_total",
        "edgerelay_store_commit_seconds_bucket",
        "edgerelay_redis_up",
        "edgerelay_errors_total",
    ] {
        assert!(read.contains(topic), "nothing reads {topic}");
    }
    assert_eq!(sample(&page, "edgerelay_redis_up"), Some(1.0));

    // The admin view of the region: both nodes, with what each holds.
    let mut b = redis_node("b");
    b.start().await;
    let auth = format!("Bearer {API_KEY}");
    let nodes = async |relay: &RelayProcess| {
        let (status, body) =
            http_request(relay.tcp, "GET", "/v1/api/admin/nodes", &[("authorization", &auth)], "").await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()
    };
    let client = Client::connect(b.ws_target(), ClientOptions::new(b.token("ann"))).await.unwrap();
    client.join("lobby").await.unwrap();
    let seen_from_a = within("node b's report shows its connection", async {
        loop {
            let answer = nodes(&a).await;
            let listed = answer["nodes"].as_array().unwrap().clone();
            if listed.len() == 2 && listed[1]["connections"]["websocket"] == 1 {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let b_name = nodes(&b).await["node"].clone();
    assert_eq!(seen_from_a["nodes"][0]["node"], seen_from_a["node"], "this node first");
    assert_eq!(seen_from_a["nodes"][1]["node"], b_name);
    assert_eq!(seen_from_a["nodes"][1]["rooms"], 1);
    // A node that stops leaves the list at once.
    drop(client);
    let pid = b.child.as_ref().unwrap().id();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap().success());
    within("node b exits", async {
        while b.child.as_mut().unwrap().try_wait().unwrap().is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(nodes(&a).await["nodes"].as_array().unwrap().len(), 1);
}
