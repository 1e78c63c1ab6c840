//! Backend hooks end to end (docs/events.md, "Backend hooks"): a real relay on loopback asks a
//! real HTTP backend started by the test (axum on 127.0.0.1) on connect, join, subscribe and
//! publish; the backend allows, denies, rewrites, fails or hangs.

mod common;

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{Transport, http_request, start_with, within};
use edgerelay::client::{Client, ClientError, TopicEvent};
use edgerelay::config::{Config, HookConfig, HookFallback};
use edgerelay::proto::{Codec, ErrorCode};
use serde_json::{Value, json};

const SECRET: &str = "hooks-test-secret-0123456789";
const API_KEY: &str = "hooks-test-api-key-0123456789";

/// How the backend behaves.
const NORMAL: u8 = 0;
/// Every call waits until the mode changes (then answers allow).
const HANG: u8 = 1;
/// Every call gets HTTP 500.
const FAIL: u8 = 2;

/// The test backend: answers by the call's content, records what it got.
#[derive(Default)]
struct Backend {
    mode: AtomicU8,
    /// Calls received (including hanging and failing ones).
    calls: AtomicUsize,
    /// Bodies of the calls, and whether their signature verified.
    seen: Mutex<Vec<(Value, bool)>>,
    released: tokio::sync::Notify,
}

impl Backend {
    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.released.notify_waiters();
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

fn signature_ok(headers: &HeaderMap, body: &[u8]) -> bool {
    let header = headers.get("x-edgerelay-signature").and_then(|v| v.to_str().ok());
    common::signature_ok(header, body, SECRET)
}

async fn hook(State(backend): State<Arc<Backend>>, headers: HeaderMap, body: Bytes) -> (StatusCode, String) {
    backend.calls.fetch_add(1, Ordering::SeqCst);
    let call: Value = serde_json::from_slice(&body).unwrap();
    let signed = signature_ok(&headers, &body);
    backend.seen.lock().unwrap().push((call.clone(), signed));
    loop {
        let released = backend.released.notified();
        match backend.mode.load(Ordering::SeqCst) {
            HANG => released.await,
            FAIL => return (StatusCode::INTERNAL_SERVER_ERROR, String::new()),
            _ => break,
        }
    }
    if !signed {
        return (StatusCode::UNAUTHORIZED, String::new());
    }
    let answer = match (call["hook"].as_str().unwrap(), call["user"].as_str().unwrap()) {
        ("connect", "mallory") => json!({"result": "deny", "reason": "mallory is banned"}),
        ("subscribe", _) if call["room"] == "vip" => json!({"result": "deny", "reason": "members only"}),
        ("subscribe", _) if call["topic"] == "orders.>" => json!({"result": "rewrite", "filter": "region = eu"}),
        ("publish", _) if call["room"] == "readonly" => json!({"result": "deny"}),
        ("publish", _) if call["data"]["text"].as_str().is_some_and(|t| t.contains("darn")) => {
            json!({"result": "rewrite", "data": {"text": "****"}})
        }
        // An empty 2xx answer allows.
        _ => return (StatusCode::NO_CONTENT, String::new()),
    };
    (StatusCode::OK, answer.to_string())
}

/// Starts the backend on loopback; its URL base and state. The server ends with the test's
/// runtime.
async fn backend() -> (String, Arc<Backend>) {
    let state = Arc::new(Backend::default());
    let app = axum::Router::new().route("/hook", axum::routing::post(hook)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}

fn hooks_config(config: &mut Config, url: &str, timeout_ms: u64, fallback: [HookFallback; 3]) {
    config.api.key = Some(API_KEY.into());
    config.hooks.secret = Some(SECRET.into());
    let hook = |fallback| Some(HookConfig { url: url.into(), timeout_ms, fallback });
    config.hooks.connect = hook(fallback[0]);
    config.hooks.subscribe = hook(fallback[1]);
    config.hooks.publish = hook(fallback[2]);
}

fn refused<T>(result: Result<T, ClientError>, code: ErrorCode) -> String {
    match result {
        Err(ClientError::Rejected { code: got, message }) if got == code => message,
        Err(other) => panic!("expected {code:?}, got {other}"),
        Ok(_) => panic!("expected {code:?}, got success"),
    }
}

async fn publish_events(tcp: std::net::SocketAddr, events: Value) {
    let auth = format!("Bearer {API_KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let body = json!({"tenant": "acme", "events": events}).to_string();
    let (status, answer) = http_request(tcp, "POST", "/v1/api/events", &headers, &body).await;
    assert_eq!(status, 200, "{answer}");
}

async fn next_event(client: &mut Client) -> TopicEvent {
    within("a topic event", client.next_topic_event()).await.unwrap()
}

#[tokio::test]
async fn the_backend_allows_denies_and_rewrites_connects_subscriptions_and_publishes() {
    let (url, backend) = backend().await;
    let deny = [HookFallback::Deny; 3];
    let relay = start_with(|config| hooks_config(config, &url, 5_000, deny)).await;
    let tcp = relay.relay.tcp_addr();
    for (round, (transport, codec)) in
        [(Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json)].into_iter().enumerate()
    {
        // Ids differ per round: a repeated id would be a duplicate (not delivered again).
        let id = |n: u32| format!("r{round}-{n}");
        // connect: denied with the backend's reason, and the connection is closed.
        let token = relay.token("mallory", "acme", &["*"]);
        let message = refused(relay.try_connect(transport, codec, &token).await, ErrorCode::CONNECT_DENIED);
        assert!(message.contains("mallory is banned"), "{message}");

        let alice = relay.connect(transport, codec, "alice", "acme", &["*"]).await;
        let mut bob = relay.connect(transport, codec, "bob", "acme", &["*"]).await;
        // join: the backend refuses a room; the connection stays.
        let message = refused(alice.join("vip").await, ErrorCode::HOOK_DENIED);
        assert_eq!(message, "members only");
        alice.join("lobby").await.unwrap();
        bob.join("lobby").await.unwrap();
        // publish: rewritten data is what members get; a denied publish is not stored or sent.
        alice.publish("lobby", &id(1), r#"{"text":"darn it"}"#).await.unwrap();
        alice.publish("lobby", &id(2), r#"{"text":"hello"}"#).await.unwrap();
        alice.join("readonly").await.unwrap();
        refused(alice.publish("readonly", &id(3), r#"{"text":"x"}"#).await, ErrorCode::HOOK_DENIED);
        for (n, text) in [(1, "****"), (2, "hello")] {
            let m = within("a message", bob.next_message()).await.unwrap();
            let data: Value = serde_json::from_slice(&m.data.0).unwrap();
            assert_eq!((m.id, data), (id(n), json!({"text": text})));
        }
        // subscribe: the backend narrows the subscription with its own filter.
        bob.subscribe("orders.>", None).await.unwrap();
        publish_events(
            tcp,
            json!([
                {"topic": "orders.us.created", "id": id(4), "tags": {"region": "us"}, "data": 1},
                {"topic": "orders.eu.created", "id": id(5), "tags": {"region": "eu"}, "data": 2},
            ]),
        )
        .await;
        assert_eq!(next_event(&mut bob).await.id, id(5));
        bob.unsubscribe("orders.>").await.unwrap();
        alice.close().await;
        bob.close().await;
    }
    // SSE: the same hooks; refusals are HTTP answers with the codes.
    let token = relay.token("mallory", "acme", &["*"]);
    let (status, body) = common::http_get(tcp, &format!("/v1/events?token={token}&topic=news.a")).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, body["code"].as_u64()), (403, Some(191)), "{body}");

    let seen = backend.seen.lock().unwrap().clone();
    assert!(seen.iter().all(|(_, signed)| *signed), "every call is signed");
    let publish = seen.iter().find(|(c, _)| c["hook"] == "publish" && c["id"] == "r0-2").unwrap();
    assert_eq!(publish.0["data"], json!({"text": "hello"}));
    assert_eq!(publish.0["tenant"], "acme");
    assert_eq!(publish.0["user"], "alice");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_failing_backend_gets_the_fallback_trips_the_breaker_and_never_stalls_other_users() {
    let (url, backend) = backend().await;
    // connect fails open, subscribe fails closed; no publish hook here (chat flows unasked).
    let relay = start_with(|config| {
        hooks_config(config, &url, 1_500, [HookFallback::Allow, HookFallback::Deny, HookFallback::Allow]);
        config.hooks.publish = None;
        config.hooks.breaker_failures = 2;
        config.hooks.breaker_open_ms = 1_000;
    })
    .await;
    let tcp = relay.relay.tcp_addr();
    let alice = relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &["*"]).await;
    let bob = relay.connect(Transport::WebSocket, Codec::Json, "bob", "acme", &["*"]).await;
    let mut carol = relay.connect(Transport::Quic, Codec::Json, "carol", "acme", &["*"]).await;
    let mut dave = relay.connect(Transport::WebSocket, Codec::Postcard, "dave", "acme", &["*"]).await;
    bob.join("chat").await.unwrap();
    carol.join("chat").await.unwrap();
    dave.subscribe("news.*", None).await.unwrap();

    // The backend hangs: alice's join waits for it while everyone else's chat and events flow.
    backend.set_mode(HANG);
    let before = backend.calls();
    let others = async {
        within("the hanging call reached the backend", async {
            while backend.calls() == before {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        bob.publish("chat", "c1", r#"{"text":"still here"}"#).await.unwrap();
        assert_eq!(within("chat", carol.next_message()).await.unwrap().id, "c1");
        publish_events(tcp, json!([{"topic": "news.a", "id": "n1", "data": 1}])).await;
        assert_eq!(next_event(&mut dave).await.id, "n1");
    };
    let (joined, ()) = tokio::join!(alice.join("x"), others);
    // ... and then gets the subscribe hook's fallback: deny, retryable.
    let message = refused(joined, ErrorCode::HOOK_UNAVAILABLE);
    assert!(message.contains("no answer"), "{message}");
    assert!(ErrorCode::HOOK_UNAVAILABLE.is_retryable());

    // A failing backend (HTTP 500): the connect hook fails open (a new connection gets in),
    // the subscribe hook's second failure in a row opens its breaker.
    backend.set_mode(FAIL);
    let erin = relay.connect(Transport::Quic, Codec::Postcard, "erin", "acme", &["*"]).await;
    refused(alice.join("y").await, ErrorCode::HOOK_UNAVAILABLE);
    // Open: refused without asking the backend.
    let calls = backend.calls();
    let message = refused(alice.join("z").await, ErrorCode::HOOK_UNAVAILABLE);
    assert!(message.contains("circuit breaker open"), "{message}");
    refused(erin.subscribe("news.*", None).await, ErrorCode::HOOK_UNAVAILABLE);
    assert_eq!(backend.calls(), calls, "an open breaker does not call the backend");

    // The backend recovers; after the open time one probe closes the breaker again.
    backend.set_mode(NORMAL);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    alice.join("z").await.unwrap();
    alice.join("w").await.unwrap();
    erin.subscribe("news.*", None).await.unwrap();
    assert_eq!(backend.calls(), calls + 3);
    for client in [alice, bob, carol, dave, erin] {
        client.close().await;
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn hooks_config_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::test_config(dir.path());
    config.hooks.connect =
        Some(HookConfig { url: "http://127.0.0.1:1/h".into(), timeout_ms: 100, fallback: HookFallback::Allow });
    let err = edgerelay::relay::Relay::start(config.clone()).await.err().unwrap().to_string();
    assert!(err.contains("hooks.secret"), "{err}");
    config.hooks.secret = Some(SECRET.into());
    config.hooks.connect.as_mut().unwrap().url = "https://backend/h".into();
    let err = edgerelay::relay::Relay::start(config).await.err().unwrap().to_string();
    assert!(err.contains("hooks.connect.url"), "{err}");
}
