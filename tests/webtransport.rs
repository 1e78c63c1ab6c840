//! WebTransport on the QUIC port: sessions at `/v1/wt` speak protocol v1 exactly like raw QUIC,
//! share rooms with raw QUIC and WebSocket clients, and are refused elsewhere. (Every protocol
//! test in `tests/relay.rs` and `tests/abuse.rs` also runs over WebTransport through
//! `common::VARIANTS`; the browser and aioquic proofs are `tests/browser.rs` and `tests/python`.)

mod common;

use common::{Transport, start, within};
use edgerelay::client::{Client, ClientOptions, ServerTrust, Target};
use edgerelay::proto::{Codec, Payload};

#[tokio::test]
async fn raw_quic_webtransport_and_websocket_clients_share_a_room_in_order() {
    let relay = start().await;
    let mut clients = vec![
        relay.connect(Transport::Quic, Codec::Postcard, "quic", "acme", &["*"]).await,
        relay.connect(Transport::WebTransport, Codec::Json, "wt", "acme", &["*"]).await,
        relay.connect(Transport::WebSocket, Codec::Json, "ws", "acme", &["*"]).await,
    ];
    for client in &clients {
        client.join("chat:mixed").await.unwrap();
    }
    let mut sent = Vec::new();
    for round in 0..10 {
        for (i, client) in clients.iter().enumerate() {
            let id = format!("c{i}-r{round}");
            let position = client.publish("chat:mixed", &id, Payload::from(r#"{"text":"hi"}"#)).await.unwrap();
            sent.push((position.offset, id));
        }
    }
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), (1..=30).collect::<Vec<_>>(), "acks are contiguous");
    for client in &mut clients {
        let mut seen = Vec::new();
        for _ in 0..30 {
            let m = within("message", client.next_message()).await.unwrap();
            assert_eq!(m.data.as_json(), Some(r#"{"text":"hi"}"#));
            seen.push((m.position.offset, m.id));
        }
        assert_eq!(seen, sent, "every client sees every message in offset order");
    }
}

#[tokio::test]
async fn webtransport_elsewhere_than_v1_wt_is_refused() {
    let relay = start().await;
    let token = relay.token("lost", "acme", &["*"]);
    let target = Target::WebTransport {
        addr: relay.relay.udp_addr(),
        server_name: "localhost".into(),
        tls: ServerTrust::Pinned(vec![relay.cert_sha256()]),
        path: "/v1/elsewhere".into(),
    };
    let refused = Client::connect(target, ClientOptions::new(&token).codec(Codec::Json)).await;
    assert!(refused.is_err(), "a session outside /v1/wt is refused");
    // The endpoint still serves the right path afterwards.
    let ok = relay.try_connect(Transport::WebTransport, Codec::Json, &token).await.unwrap();
    ok.ping().await.unwrap();
}

#[tokio::test]
async fn webtransport_sessions_are_counted_as_their_own_transport() {
    let relay = start().await;
    let client = relay.connect(Transport::WebTransport, Codec::Postcard, "m", "acme", &["*"]).await;
    client.join("metrics").await.unwrap();
    client.publish("metrics", "1", Payload::from("1")).await.unwrap();
    let (_, text) = relay.http_get("/metrics").await;
    for name in [
        "edgerelay_connections_total{transport=\"webtransport\"}",
        "edgerelay_frames_in_total{transport=\"webtransport\"}",
        "edgerelay_bytes_out_total{transport=\"webtransport\"}",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
}

#[tokio::test]
async fn the_relay_tells_a_page_where_and_how_to_connect() {
    let relay = start().await;
    let (status, cert) = relay.http_get("/v1/cert").await;
    assert_eq!(status, 200);
    let cert: serde_json::Value = serde_json::from_str(&cert).unwrap();
    assert_eq!(cert["dev"], true);
    assert_eq!(cert["hashes"], serde_json::json!([cert["sha256_base64"]]), "the dev hash for serverCertificateHashes");
    let (status, endpoints) = relay.http_get("/v1/endpoints").await;
    assert_eq!(status, 200);
    let endpoints: serde_json::Value = serde_json::from_str(&endpoints).unwrap();
    assert_eq!(endpoints["webtransport_port"], relay.relay.udp_addr().port());
    assert_eq!(
        (endpoints["webtransport_path"].as_str(), endpoints["websocket_path"].as_str()),
        (Some("/v1/wt"), Some("/v1/ws"))
    );
    // The demo page and the modules it imports, served from the binary.
    let (status, page) = relay.http_get("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("<script type=\"module\" src=\"demo.js\">"), "{page}");
    // Every module of the SDK package (clients/js/src) is served under /sdk/, as it is on disk.
    let sdk = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("clients/js/src");
    let mut modules = vec![("/demo.js".to_owned(), None)];
    for entry in std::fs::read_dir(&sdk).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "js") {
            let name = path.file_name().unwrap().to_str().unwrap().to_owned();
            modules.push((format!("/sdk/{name}"), Some(std::fs::read_to_string(&path).unwrap())));
        }
    }
    assert!(modules.len() >= 10, "{modules:?}");
    for (module, on_disk) in &modules {
        let (status, body) = relay.http_get(module).await;
        assert_eq!(status, 200, "{module}");
        assert!(body.contains("import") || body.contains("export"), "{module} is an ES module");
        if let Some(on_disk) = on_disk {
            assert_eq!(&body, on_disk, "{module} is served as it is in clients/js/src");
        }
    }
    assert_eq!(relay.http_get("/sdk/nope.js").await.0, 404);
}

#[tokio::test]
async fn with_real_certificate_files_no_hash_is_offered() {
    let certs = tempfile::tempdir().unwrap();
    edgerelay::tls::load_or_create_dev_cert(certs.path(), std::time::SystemTime::now()).unwrap();
    let relay = common::start_with(|config| {
        config.tls.cert_file = Some(certs.path().join(edgerelay::tls::DEV_CERT_FILE));
        config.tls.key_file = Some(certs.path().join(edgerelay::tls::DEV_KEY_FILE));
        // Plain HTTP on the TCP port, for the raw `http_get` below (TLS is on by default with
        // certificate files).
        config.tls.tcp = Some(false);
    })
    .await;
    let (_, cert) = relay.http_get("/v1/cert").await;
    let cert: serde_json::Value = serde_json::from_str(&cert).unwrap();
    assert_eq!((cert["dev"].clone(), cert["hashes"].clone()), (serde_json::json!(false), serde_json::json!([])));
    // Dev keys are still on here (the test config keeps them), yet with a real certificate the
    // relay mints no dev tokens over HTTP.
    assert!(relay.relay.dev_signer().is_some());
    let (status, body) = dev_token(&relay, r#"{"user": "mallory"}"#).await;
    assert_eq!(status, 404, "{body}");
}

async fn dev_token(relay: &common::TestRelay, body: &str) -> (u16, String) {
    let headers = [("Content-Type", "application/json")];
    common::http_request(relay.relay.tcp_addr(), "POST", "/v1/dev/token", &headers, body).await
}

/// The demo page's way to a token: `POST /v1/dev/token` on a dev relay answers one that the
/// relay accepts, for the user asked, in the rooms the demo uses; bad requests are 400.
#[tokio::test]
async fn a_dev_relay_mints_demo_tokens_over_http() {
    let relay = common::start().await;
    let (status, body) = dev_token(&relay, r#"{"user": "alice", "ttl_secs": 600}"#).await;
    assert_eq!(status, 200, "{body}");
    let minted: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((minted["user"].as_str(), minted["tenant"].as_str()), (Some("alice"), Some("demo")));
    let expires_at = minted["expires_at"].as_u64().unwrap();
    assert!(expires_at.abs_diff(common::now_secs() + 600) <= 5, "{minted}");
    let client = relay
        .try_connect(Transport::WebSocket, Codec::Json, minted["token"].as_str().unwrap())
        .await
        .expect("the minted token is accepted");
    assert_eq!(client.welcome().user, "alice");
    client.join("chat:lobby").await.unwrap();
    assert!(client.join("secret:room").await.is_err(), "only the demo's rooms");
    client.close().await;

    for bad in [r#"{"user": ""}"#, r#"{"user": "a", "ttl_secs": 0}"#, r#"{"user": "a", "role": "admin"}"#, "nope"] {
        let (status, body) = dev_token(&relay, bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body.contains("\"bad_request\""), "{bad}: {body}");
    }
}
