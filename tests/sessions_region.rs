//! Collaborative sessions across the nodes of a Redis region (docs/sessions.md, "Sessions in a
//! Redis region"): two relays on one test-started `redis-server`. Members on different nodes
//! edit concurrently and converge, with the same versions, conflict rule and dedupe as on one
//! node; a joiner on the other node gets the document, or only the patches it missed; cursors
//! cross nodes; a `yjs` session is shared too; and acked patches survive killing the node that
//! held the session (a relay process killed with SIGKILL), its other-node members told
//! `session_moved` and catching up when they join again.

mod common;
#[path = "common/process.rs"]
mod process;

use std::collections::BTreeMap;

use common::{TestRelay, Transport, closed_with, start_with, within};
use edgerelay::client::collab::{PatchResult, SessionDoc};
use edgerelay::client::{Client, ClientError, ClientOptions};
use edgerelay::config::{Config, StoreEngine};
use edgerelay::proto::{Codec, ErrorCode, Payload, SessionEvent, SessionRole};
use edgerelay::testing::RedisServer;
use process::RelayProcess;
use serde_json::{Value, json};

const S: &str = "doc:region";

/// Two relays sharing one Redis.
async fn region(redis: &RedisServer, adjust: fn(&mut Config)) -> (TestRelay, TestRelay) {
    let url = redis.url();
    let shared = |c: &mut Config| {
        c.store.engine = StoreEngine::Redis;
        c.redis.url = url.clone();
        adjust(c);
    };
    (start_with(shared).await, start_with(shared).await)
}

async fn device(relay: &TestRelay, variant: (Transport, Codec), sub: &str) -> Client {
    relay.session_device(variant, sub).await
}

fn j(v: Value) -> Payload {
    Payload::json(&v)
}

/// The next event of session `S` that is not about members.
async fn next(client: &mut Client) -> SessionEvent {
    common::next_session_event(client, S, |event| !matches!(event, SessionEvent::Member { .. })).await
}

/// Applies `patched` events to `doc` until it reaches `version` (cursors skipped).
async fn follow(client: &mut Client, doc: &mut SessionDoc, version: u64) {
    while doc.version < version {
        match next(client).await {
            SessionEvent::Patched { patch } => {
                doc.apply(&patch).expect("a patch in order applies");
            }
            SessionEvent::Cursor { .. } => {}
            other => panic!("expected patched, got {other:?}"),
        }
    }
}

/// Sends `count` patches, each adding its own key, retrying a conflict against a newer base.
async fn edit(client: &Client, who: &str, count: usize) -> Vec<u64> {
    let mut versions = Vec::new();
    let mut base = 0;
    for i in 0..count {
        let patch = j(json!([{"op": "add", "path": format!("/cards/{who}-{i}"), "value": i}]));
        loop {
            match client.session_patch(S, &format!("{who}-{i}"), base, patch.clone()).await.expect("answered") {
                PatchResult::Applied { version, .. } => {
                    versions.push(version);
                    base = version;
                    break;
                }
                PatchResult::Conflict { version, .. } => base = version,
            }
        }
    }
    versions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_nodes_edit_concurrently_join_late_and_see_each_others_cursors() {
    let redis = RedisServer::start().expect("start redis-server");
    let (a, b) = region(&redis, |c| c.sessions.cursor_rate = 10).await;
    let mut alice = device(&a, (Transport::Quic, Codec::Postcard), "alice").await;
    let mut bob = device(&b, (Transport::WebSocket, Codec::Json), "bob").await;
    let mut carol = device(&b, (Transport::Quic, Codec::Json), "carol").await;

    let created = alice.session_create(S, j(json!({"cards": {}})), None, SessionRole::Editor).await.unwrap();
    // The other node knows the session: a second create there is refused, a join gets the document.
    let again = bob.session_create(S, j(json!({})), None, SessionRole::Editor).await;
    assert!(matches!(again, Err(ClientError::Rejected { code: ErrorCode::SESSION_EXISTS, .. })), "{again:?}");
    let mut bob_doc = bob.session_join(S, None).await.unwrap().doc;
    let mut carol_doc = carol.session_join(S, None).await.unwrap().doc;
    assert_eq!(bob_doc, created.doc);

    // Concurrent editors on both nodes: every patch applied once, versions 1..=60 with no gap.
    let (va, vb, vc) = tokio::join!(edit(&alice, "alice", 20), edit(&bob, "bob", 20), edit(&carol, "carol", 20));
    let mut all: Vec<u64> = va.into_iter().chain(vb).chain(vc).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=60).collect::<Vec<_>>());
    // A retried patch id is answered with its original version, on the other node too.
    let retry = j(json!([{"op": "add", "path": "/cards/alice-0", "value": 0}]));
    let first = alice.session_patch(S, "alice-0", 60, retry.clone()).await.unwrap();
    assert!(matches!(first, PatchResult::Applied { version, .. } if version <= 60), "{first:?}");

    // Everyone, on either node, converges on the same document.
    let mut alice_doc = created.doc;
    follow(&mut alice, &mut alice_doc, 60).await;
    follow(&mut bob, &mut bob_doc, 60).await;
    follow(&mut carol, &mut carol_doc, 60).await;
    assert_eq!(alice_doc, bob_doc);
    assert_eq!(bob_doc, carol_doc);
    assert_eq!(alice_doc.doc["cards"].as_object().unwrap().len(), 60);

    // A late joiner on the other node: the document, or only what it missed when it says.
    let dave = device(&b, (Transport::WebSocket, Codec::Postcard), "dave").await;
    assert_eq!(dave.session_join(S, None).await.unwrap().doc, alice_doc);
    let mut old = alice_doc.clone();
    bob.session_patch(S, "bob-late", 60, j(json!([{"op": "add", "path": "/late", "value": true}]))).await.unwrap();
    let erin = device(&a, (Transport::WebSocket, Codec::Json), "erin").await;
    let joined = erin.session_action(S, edgerelay::proto::SessionAction::Join { version: Some(60) }).await.unwrap();
    match joined {
        SessionEvent::Joined { snapshot: None, patches, version: 61, .. } => {
            assert_eq!(patches.len(), 1);
            old.apply(&patches[0]).unwrap();
            assert_eq!(old.doc["late"], json!(true));
        }
        other => panic!("expected only the missed patch, got {other:?}"),
    }

    // Cursors cross nodes both ways.
    alice.session_cursor(S, j(json!({"x": 1}))).await.unwrap();
    bob.session_cursor(S, j(json!({"x": 2}))).await.unwrap();
    cursor_from(&mut bob, "alice").await;
    cursor_from(&mut alice, "bob").await;

    for c in [alice, bob, carol, dave, erin] {
        c.close().await;
    }
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}

/// Waits for a cursor of `user`.
async fn cursor_from(client: &mut Client, user: &str) {
    loop {
        if let SessionEvent::Cursor { user: u, data: Some(_) } = next(client).await
            && u == user
        {
            return;
        }
    }
}

/// A relay process on the test's Redis, sharing the dev token secret in `dir`.
async fn node(redis: &RedisServer, dir: &std::path::Path, n: usize) -> RelayProcess {
    let mut node = RelayProcess::new(&dir.join(format!("node-{n}")))
        .with_env("EDGERELAY_STORE__ENGINE", "redis")
        .with_env("EDGERELAY_REDIS__URL", redis.url())
        .with_env("EDGERELAY_AUTH__DEV_SECRET_FILE", dir.join("dev-token-secret").display().to_string());
    node.start().await;
    node
}

fn session_token(node: &RelayProcess, sub: &str) -> String {
    let args = ["token", "--tenant", "acme", "--session", "doc:*", "--ttl", "1h", "--sub", sub];
    let out = node.command(&args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

async fn connect(node: &RelayProcess, sub: &str) -> Client {
    let options = ClientOptions::new(session_token(node, sub)).codec(Codec::Json);
    within("connect", Client::connect(node.ws_target(), options)).await.expect("connects")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_patches_survive_killing_the_node_that_held_the_session() {
    let redis = RedisServer::start().expect("start redis-server");
    let dir = tempfile::tempdir().unwrap();
    let mut n0 = node(&redis, dir.path(), 0).await;
    let n1 = node(&redis, dir.path(), 1).await;

    // The session is created, so held, on node 0; bob edits it from node 1.
    let alice = connect(&n0, "alice").await;
    let mut bob = connect(&n1, "bob").await;
    alice.session_create(S, j(json!({"n": {}})), None, SessionRole::Editor).await.unwrap();
    let mut bob_doc = bob.session_join(S, None).await.unwrap().doc;
    let mut acked = BTreeMap::new();
    for i in 0..15 {
        let (client, who) = if i % 3 == 0 { (&alice, "alice") } else { (&bob, "bob") };
        let patch = j(json!([{"op": "add", "path": format!("/n/{who}{i}"), "value": i}]));
        let PatchResult::Applied { version, .. } = client.session_patch(S, &format!("p{i}"), 0, patch).await.unwrap()
        else {
            panic!("distinct paths rebase")
        };
        acked.insert(format!("{who}{i}"), version);
    }
    follow(&mut bob, &mut bob_doc, 15).await;

    // Node 0 dies without a word: bob's node tells him the session moved.
    n0.kill();
    drop(alice);
    assert_eq!(closed_with(&mut bob).await, Some(ErrorCode::SESSION_MOVED));

    // Bob joins again on node 1 with his version: nothing missed, and node 1 holds it now.
    let bob = connect(&n1, "bob").await;
    let joined = bob.session_join(S, Some(&bob_doc)).await.unwrap();
    assert_eq!(joined.doc, bob_doc);
    assert_eq!(joined.doc.version, 15);
    for (key, version) in &acked {
        assert!(joined.doc.doc["n"].get(key).is_some(), "acked patch {key} (version {version}) lost");
    }
    let more = j(json!([{"op": "add", "path": "/after", "value": 1}]));
    assert_eq!(
        bob.session_patch(S, "after", 15, more).await.unwrap(),
        PatchResult::Applied { version: 16, rebased: false }
    );
    // A fresh node sees the same.
    let n2 = node(&redis, dir.path(), 2).await;
    let carol = connect(&n2, "carol").await;
    let seen = carol.session_join(S, None).await.unwrap().doc;
    assert_eq!((seen.version, seen.doc["after"].clone()), (16, json!(1)));
}
