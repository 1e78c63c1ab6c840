//! The server API's call history (`GET /v1/api/calls/{tenant}/users/{user}`) against a real
//! relay on loopback: the embedded store (surviving a restart) and two relays sharing one real
//! `redis-server`. Calls are recorded through the relay's library seam
//! ([`Relay::call_history`](edgerelay::relay::Relay::call_history)), as the call service does.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{TestRelay, http_request, start_with};
use edgerelay::call::history::CallRecord;
use edgerelay::call::{CallId, CallSummary, EndReason, Media, Side};
use edgerelay::config::StoreEngine;
use edgerelay::hub::presence::UserKey;
use edgerelay::testing::RedisServer;
use serde_json::Value;

const API_KEY: &str = "call-history-test-api-key";

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

/// A 1:1 video call the caller hung up, answered two seconds in, recorded as the call service
/// records it: from the state machine's summary.
fn call(id: u64, started_ms: u64, caller: &str, callee: &str) -> CallRecord {
    CallRecord::one_to_one(&CallSummary {
        id: CallId(id),
        caller: UserKey::new("acme", caller),
        callee: UserKey::new("acme", callee),
        media: Media::Video,
        caller_device: 1,
        callee_device: Some(2),
        started_ms,
        answered_ms: Some(started_ms + 2000),
        ended_ms: Some(started_ms + 30_000),
        reason: Some(EndReason::Hangup { by: Side::Caller }),
        duration_ms: Some(28_000),
    })
}

async fn get(relay: &TestRelay, path: &str, key: &str) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let (status, body) = http_request(relay.relay.tcp_addr(), "GET", path, &[("authorization", &auth)], "").await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn ids(page: &Value) -> Vec<String> {
    page["calls"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect()
}

/// Follows `next` from the first page of `limit`; returns every id seen.
async fn all_pages(relay: &TestRelay, user: &str, limit: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut path = format!("/v1/api/calls/acme/users/{user}?limit={limit}");
    for _ in 0..50 {
        let (status, page) = get(relay, &path, API_KEY).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/api/calls/acme/users/{user}?limit={limit}&before={next}"),
            None => return seen,
        }
    }
    panic!("paging never ended");
}

#[tokio::test]
async fn the_server_api_lists_a_users_calls_in_pages_and_they_survive_a_restart() {
    let relay = start_with(|c| c.api.key = Some(API_KEY.into())).await;
    let t = now_ms() - 60_000;
    let history = relay.relay.call_history();
    for i in 0..5 {
        history.record(call(0x10 + i, t + i * 1000, "alice", &format!("peer{i}")), t).await.unwrap();
    }
    history.record(call(0x20, t + 500, "bob", "carol"), t).await.unwrap();

    let (status, page) = get(&relay, "/v1/api/calls/acme/users/alice", API_KEY).await;
    assert_eq!(status, 200, "{page}");
    let expected = ["0000000000000014", "0000000000000013", "0000000000000012", "0000000000000011", "0000000000000010"];
    assert_eq!(ids(&page), expected);
    assert_eq!(page["next"], Value::Null);
    let newest = &page["calls"][0];
    assert_eq!(newest["kind"], "one_to_one");
    assert_eq!(newest["media"], "video");
    assert_eq!(newest["participants"][1]["user"], "peer4");
    assert_eq!(newest["participants"][1]["role"], "callee");
    assert_eq!((newest["reason"].as_str(), newest["by"].as_str()), (Some("hangup"), Some("caller")));
    assert_eq!(newest["duration_ms"], 28_000);
    assert_eq!(all_pages(&relay, "alice", 2).await, expected, "pages of 2 cover the list once");

    // Another user's calls are not alice's; a stranger has none; a tenant is its own world.
    assert_eq!(ids(&get(&relay, "/v1/api/calls/acme/users/carol", API_KEY).await.1), ["0000000000000020"]);
    assert_eq!(ids(&get(&relay, "/v1/api/calls/acme/users/mallory", API_KEY).await.1), Vec::<String>::new());
    assert_eq!(ids(&get(&relay, "/v1/api/calls/globex/users/alice", API_KEY).await.1), Vec::<String>::new());

    drop(history); // it holds the redb file open
    let relay = relay.restart(std::time::Duration::ZERO).await;
    assert_eq!(all_pages(&relay, "alice", 3).await, expected, "kept in the redb file across a restart");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_documented_errors() {
    let relay = start_with(|c| c.api.key = Some(API_KEY.into())).await;
    let cases = [
        ("/v1/api/calls/acme/users/alice", "wrong-key-0123456789", 401, "permission_denied"),
        ("/v1/api/calls/no%20spaces/users/alice", API_KEY, 400, "bad_request"),
        ("/v1/api/calls/acme/users/alice?limit=0", API_KEY, 400, "bad_request"),
        ("/v1/api/calls/acme/users/alice?limit=201", API_KEY, 400, "bad_request"),
        ("/v1/api/calls/acme/users/alice?limit=-1", API_KEY, 400, "bad_request"),
        ("/v1/api/calls/acme/users/alice?before=yesterday", API_KEY, 400, "bad_request"),
        ("/v1/api/calls/acme/users/alice?before=1-00ff", API_KEY, 400, "bad_request"),
        ("/v1/api/calls/acme/users/alice?page=2", API_KEY, 400, "bad_request"),
    ];
    for (path, key, status, error) in cases {
        let (got, body) = get(&relay, path, key).await;
        assert_eq!((got, body["error"].as_str()), (status, Some(error)), "{path}: {body}");
    }
    relay.relay.shutdown().await;
    // API off (and the memory store, which holds calls too).
    let off = start_with(|c| c.store.engine = StoreEngine::Memory).await;
    let (status, body) = get(&off, "/v1/api/calls/acme/users/alice", API_KEY).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("permission_denied")), "{body}");
    let t = now_ms();
    off.relay.call_history().record(call(3, t, "alice", "bob"), t).await.unwrap();
    let page = off.relay.call_history().list(&UserKey::new("acme", "bob"), None, 10, t).await.unwrap();
    assert_eq!(page.calls, vec![call(3, t, "alice", "bob")]);
    off.relay.shutdown().await;
}

#[tokio::test]
async fn relays_sharing_redis_list_the_same_calls() {
    let redis = RedisServer::start().expect("start redis-server");
    let shared = |c: &mut edgerelay::config::Config| {
        c.api.key = Some(API_KEY.into());
        c.store.engine = StoreEngine::Redis;
        c.redis.url = redis.url();
    };
    let (a, b) = (start_with(shared).await, start_with(shared).await);
    let t = now_ms() - 10_000;
    a.relay.call_history().record(call(1, t, "alice", "bob"), t).await.unwrap();
    b.relay.call_history().record(call(2, t + 1000, "bob", "alice"), t + 1000).await.unwrap();
    for relay in [&a, &b] {
        let (status, page) = get(relay, "/v1/api/calls/acme/users/alice", API_KEY).await;
        assert_eq!(status, 200, "{page}");
        assert_eq!(ids(&page), ["0000000000000002", "0000000000000001"]);
    }
    // The record is one: an update on one relay is what the other lists.
    let mut missed = call(1, t, "alice", "bob");
    missed.reason = Some("missed".into());
    b.relay.call_history().record(missed, t + 2000).await.unwrap();
    let (_, page) = get(&a, "/v1/api/calls/acme/users/bob?limit=1&before=", API_KEY).await;
    assert_eq!(page["error"], "bad_request", "an empty cursor is refused: {page}");
    let (_, page) = get(&a, &format!("/v1/api/calls/acme/users/bob?before={}", t + 500), API_KEY).await;
    assert_eq!(ids(&page), ["0000000000000001"]);
    assert_eq!(page["calls"][0]["reason"], "missed");
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}
