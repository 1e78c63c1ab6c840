//! ICE servers and TURN credentials (issue 17, docs/protocol.md "ICE servers"): the
//! `ice_servers` frame over QUIC and WebSocket, `GET /v1/ice` with the user's token, and a real
//! coturn (`turnserver`, started on loopback with the same secret) that accepts an allocation
//! with the credentials the relay minted and refuses an expired or forged one.

mod common;

use common::{Transport, VARIANTS, claims, http_request, now_secs, start_with, within};
use edgerelay::config::Config;
use edgerelay::ice::{turn_credential, turn_password};
use edgerelay::proto::{Codec, IceServer};
use edgerelay::testing::{Allocation, TurnServer};

const SECRET: &str = "edgerelay-ice-test-secret";
const TURN_URLS: [&str; 2] =
    ["turn:turn1.example.com:3478?transport=udp", "turns:turn2.example.com:5349?transport=tcp"];
const STUN_URL: &str = "stun:stun.example.com:3478";
const API_KEY: &str = "ice-test-api-key-0123456789";

fn with_turn(config: &mut Config, urls: Vec<String>, stun_urls: Vec<String>) {
    config.turn.urls = urls;
    config.turn.stun_urls = stun_urls;
    config.turn.secret = Some(SECRET.into());
    config.api.key = Some(API_KEY.into());
}

fn example_turn(config: &mut Config) {
    with_turn(config, TURN_URLS.map(String::from).to_vec(), vec![STUN_URL.into()]);
}

/// Checks an answer's shape and that its TURN credential is `base64(HMAC-SHA1(secret, username))`
/// for `user` of `tenant`, expiring a day from now.
fn check_servers(servers: &[IceServer], expires_at: u64, tenant: &str, user: &str) {
    let now = now_secs();
    assert!(expires_at.abs_diff(now + 86_400) <= 5, "expires_at {expires_at} is a day from {now}");
    assert_eq!(servers.len(), 2, "{servers:?}");
    assert_eq!(servers[0], IceServer { urls: vec![STUN_URL.into()], username: None, credential: None });
    let turn = &servers[1];
    assert_eq!(turn.urls, TURN_URLS.map(String::from).to_vec());
    let username = turn.username.as_deref().expect("TURN entry has a username");
    assert_eq!(username, format!("{expires_at}:{tenant}/{user}"));
    assert_eq!(turn.credential.as_deref(), Some(turn_password(SECRET.as_bytes(), username).as_str()));
}

#[tokio::test]
async fn ice_servers_frame_is_answered_on_every_transport_and_codec() {
    let relay = start_with(example_turn).await;
    for (transport, codec) in VARIANTS {
        let client = relay.connect(transport, codec, "alice", "acme", &["chat:*"]).await;
        let (servers, expires_at) = within("ice_servers", client.ice_servers()).await.expect("answered");
        check_servers(&servers, expires_at, "acme", "alice");
        // Another tenant's user of the same name gets another credential.
        let other = relay.connect(transport, codec, "alice", "globex", &["chat:*"]).await;
        let (theirs, _) = within("ice_servers", other.ice_servers()).await.expect("answered");
        assert!(theirs[1].username.as_deref().unwrap().ends_with(":globex/alice"), "{transport:?} {codec:?}");
        assert_ne!(theirs[1].credential, servers[1].credential);
    }
}

#[tokio::test]
async fn without_a_turn_secret_only_stun_is_handed_out() {
    let relay = start_with(|c| c.turn.stun_urls = vec![STUN_URL.into()]).await;
    let client = relay.connect(Transport::WebSocket, Codec::Json, "alice", "acme", &[]).await;
    let (servers, expires_at) = client.ice_servers().await.unwrap();
    assert_eq!(servers, vec![IceServer { urls: vec![STUN_URL.into()], username: None, credential: None }]);
    assert!(expires_at > now_secs());
    // Nothing configured: an empty list.
    let relay = start_with(|_| {}).await;
    let client = relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &[]).await;
    assert!(client.ice_servers().await.unwrap().0.is_empty());
}

/// A raw HTTP/1.1 request; returns the status, the header block (lowercase names) and the body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    within("HTTP response", stream.read_to_end(&mut response)).await.unwrap();
    let text = String::from_utf8(response).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn error_of(body: &str) -> (u64, String) {
    let value: serde_json::Value = serde_json::from_str(body).unwrap();
    (value["code"].as_u64().unwrap(), value["error"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn http_ice_endpoint_takes_the_users_token() {
    let relay = start_with(example_turn).await;
    let addr = relay.relay.tcp_addr();
    let token = relay.token("bob", "acme", &["chat:*"]);
    let bearer = format!("Bearer {token}");

    let (status, head, body) = http(addr, "GET", "/v1/ice", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(head.contains("cache-control: no-store"), "{head}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["expires_at", "ice_servers"], "{body}");
    assert_eq!(value["ice_servers"][0], serde_json::json!({"urls": [STUN_URL]}), "STUN: no credential keys at all");
    let servers: Vec<IceServer> = value["ice_servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| IceServer {
            urls: serde_json::from_value(s["urls"].clone()).unwrap(),
            username: s.get("username").map(|u| u.as_str().unwrap().to_owned()),
            credential: s.get("credential").map(|c| c.as_str().unwrap().to_owned()),
        })
        .collect();
    check_servers(&servers, value["expires_at"].as_u64().unwrap(), "acme", "bob");

    // The CORS preflight a page on another origin sends first.
    let (status, head, _) = http(addr, "OPTIONS", "/v1/ice", &[("Origin", "https://app.example")]).await;
    assert_eq!(status, 204);
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert!(head.contains("access-control-allow-headers: authorization"), "{head}");
    assert!(head.contains("access-control-allow-methods: get"), "{head}");

    // No token, a forged one, an expired one: 401 with the protocol's error code.
    let (status, head, body) = http(addr, "GET", "/v1/ice", &[]).await;
    assert_eq!((status, error_of(&body)), (401, (110, "token_invalid".into())), "{body}");
    assert!(head.contains("www-authenticate: bearer"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "a page can read the refusal: {head}");
    let (status, _, body) = http(addr, "GET", "/v1/ice", &[("Authorization", "Bearer eyJ.forged.sig")]).await;
    assert_eq!((status, error_of(&body).1.as_str()), (401, "token_invalid"), "{body}");
    let mut expired = claims("bob", "acme", &["chat:*"]);
    expired.exp = now_secs() - 3600;
    let expired = format!("Bearer {}", relay.sign(&expired));
    let (status, _, body) = http(addr, "GET", "/v1/ice", &[("Authorization", &expired)]).await;
    assert_eq!((status, error_of(&body)), (401, (111, "token_expired".into())), "{body}");

    // A revoked token is refused as `hello` refuses it.
    let mut revocable = claims("carol", "acme", &["chat:*"]);
    revocable.jti = Some("ice-jti-1".into());
    let revocable = format!("Bearer {}", relay.sign(&revocable));
    assert_eq!(http(addr, "GET", "/v1/ice", &[("Authorization", &revocable)]).await.0, 200);
    let api = format!("Bearer {API_KEY}");
    let (status, body) = http_request(
        addr,
        "POST",
        "/v1/api/revoke",
        &[("Authorization", &api), ("Content-Type", "application/json")],
        r#"{"tenant":"acme","jti":"ice-jti-1"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http(addr, "GET", "/v1/ice", &[("Authorization", &revocable)]).await;
    assert_eq!((status, error_of(&body)), (401, (114, "token_revoked".into())), "{body}");
}

/// coturn for real: it accepts an allocation with the credentials the relay hands out (over
/// the protocol and over HTTP), and refuses an expired credential and a forged one.
#[tokio::test]
async fn coturn_accepts_the_relays_credentials_and_refuses_expired_ones() {
    let turn = TurnServer::start(SECRET).expect("turnserver starts (apt-get install coturn)");
    let relay = start_with(|c| with_turn(c, vec![turn.turn_url()], vec![turn.stun_url()])).await;
    let client = relay.connect(Transport::WebSocket, Codec::Json, "dave", "acme", &[]).await;
    let (servers, _) = client.ice_servers().await.unwrap();
    assert_eq!(servers[0].urls, vec![turn.stun_url()]);
    assert_eq!(servers[1].urls, vec![turn.turn_url()]);
    let username = servers[1].username.clone().unwrap();
    let password = servers[1].credential.clone().unwrap();

    // Blocks this test's runtime while uclient runs: only coturn and uclient are involved.
    let allocate = |username: String, password: String| {
        turn.allocate(&username, &password).unwrap_or_else(|err| panic!("{err}\nturnserver log:\n{}", turn.log()))
    };
    assert_eq!(allocate(username.clone(), password.clone()), Allocation::Allocated, "{}", turn.log());

    // From GET /v1/ice too.
    let bearer = format!("Bearer {}", relay.token("erin", "acme", &[]));
    let (status, _, body) = http(relay.relay.tcp_addr(), "GET", "/v1/ice", &[("Authorization", &bearer)]).await;
    assert_eq!(status, 200, "{body}");
    let value: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = &value["ice_servers"][1];
    let (u, p) = (entry["username"].as_str().unwrap().to_owned(), entry["credential"].as_str().unwrap().to_owned());
    assert!(u.ends_with(":acme/erin"), "{u}");
    assert_eq!(allocate(u, p), Allocation::Allocated);

    // Expired: the same mint an hour and a day ago, so its expiry passed an hour ago.
    let expired = turn_credential(SECRET.as_bytes(), "acme", "dave", now_secs() - 86_400 - 3600, 86_400);
    assert!(expired.expires_at < now_secs());
    assert_eq!(allocate(expired.username, expired.password), Allocation::Refused);
    // Forged: a later expiry with the old password, and a credential minted with another secret.
    let later = username.replacen(|c: char| c.is_ascii_digit(), "9", 1);
    assert_eq!(allocate(later, password), Allocation::Refused);
    let other = turn_credential(b"not-the-secret", "acme", "dave", now_secs(), 3600);
    assert_eq!(allocate(other.username, other.password), Allocation::Refused);
}
