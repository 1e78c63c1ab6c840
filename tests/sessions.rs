//! Collaborative sessions against a real relay on loopback (docs/sessions.md, docs/protocol.md
//! "Sessions"): lifecycle events, roles and the viewer's refusal, the conflict rule, compare-and-
//! set, catch-up from the document and from a version, persistence across a restart, bad input,
//! live cursors, and a seeded property test with concurrent clients, reconnects and a restart.
//! Independent clients over raw QUIC, WebTransport and the WebSocket fallback, in both codecs.

#[path = "common/calls.rs"]
mod calls;
mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use calls::refused;
use common::{TestRelay, Transport, start_with, within};
use edgerelay::client::collab::{PatchResult, SessionDoc};
use edgerelay::client::{Client, ClientError, ClientOptions};
use edgerelay::proto::{
    Codec, ErrorCode, Payload, SessionEnd, SessionEvent, SessionMember, SessionRole, SessionStatus,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

const S: &str = "doc:board";

async fn device(relay: &TestRelay, variant: (Transport, Codec), sub: &str) -> Client {
    relay.session_device(variant, sub).await
}

async fn connect(relay: &TestRelay, (transport, codec): (Transport, Codec), token: &str) -> Client {
    relay.try_connect(transport, codec, token).await.expect("client connects")
}

fn j(v: Value) -> Payload {
    Payload::json(&v)
}

/// The next event of session `S` on `client`.
async fn next(client: &mut Client) -> SessionEvent {
    common::next_session_event(client, S, |_| true).await
}

/// The next event that is not a cursor.
async fn next_reliable(client: &mut Client) -> SessionEvent {
    loop {
        match next(client).await {
            SessionEvent::Cursor { .. } => {}
            event => return event,
        }
    }
}

fn member(user: &str, role: SessionRole, present: bool) -> SessionEvent {
    SessionEvent::Member { member: SessionMember { user: user.into(), role, present } }
}

/// The version and document of a `patched` event.
async fn patched(client: &mut Client) -> (u64, String, Value) {
    let mut event = next_reliable(client).await;
    while let SessionEvent::Member { .. } = event {
        event = next_reliable(client).await;
    }
    match event {
        SessionEvent::Patched { patch } => {
            (patch.version, patch.user, serde_json::from_slice(&patch.patch.0).expect("patch is JSON"))
        }
        other => panic!("expected patched, got {other:?}"),
    }
}

/// What a fresh device sees of the session: its document and version.
async fn fresh_view(relay: &TestRelay) -> SessionDoc {
    let reader =
        connect(relay, (Transport::Quic, Codec::Json), &relay.session_token("auditor", "acme", &[], &["doc:*"])).await;
    let joined = reader.session_join(S, None).await.expect("joined");
    reader.close().await;
    joined.doc
}

#[tokio::test]
async fn lifecycle_roles_and_their_events_across_transports_and_devices() {
    let relay = start_with(|_| {}).await;
    let mut alice = device(&relay, (Transport::Quic, Codec::Postcard), "alice").await;
    let mut bob = device(&relay, (Transport::WebSocket, Codec::Json), "bob").await;
    let mut bob_phone = device(&relay, (Transport::WebTransport, Codec::Postcard), "bob").await;
    let mut carol = device(&relay, (Transport::WebSocket, Codec::Postcard), "carol").await;

    let created = alice.session_create(S, j(json!({"cards": {}})), None, SessionRole::Editor).await.unwrap();
    assert_eq!((created.role, created.status, created.doc.version), (SessionRole::Owner, SessionStatus::Open, 0));
    refused(bob.session_create(S, j(json!({})), None, SessionRole::Editor).await, ErrorCode::SESSION_EXISTS);
    alice.session_role(S, "carol", SessionRole::Viewer).await.unwrap();
    assert_eq!(next(&mut alice).await, member("carol", SessionRole::Viewer, false));

    // Joins: every member hears of a new user once, not of a second device.
    let joined = bob.session_join(S, None).await.unwrap();
    assert_eq!((joined.role, joined.doc.doc.clone()), (SessionRole::Editor, json!({"cards": {}})));
    assert_eq!(next(&mut alice).await, member("bob", SessionRole::Editor, true));
    bob_phone.session_join(S, None).await.unwrap();
    let joined = carol.session_join(S, None).await.unwrap();
    assert_eq!(joined.role, SessionRole::Viewer);
    assert!(joined.members.contains(&SessionMember { user: "bob".into(), role: SessionRole::Editor, present: true }));
    for c in [&mut alice, &mut bob, &mut bob_phone] {
        assert_eq!(next(c).await, member("carol", SessionRole::Viewer, true));
    }

    // An editor's patch reaches every device, both of bob's included; a viewer's is refused.
    let add = j(json!([{"op": "add", "path": "/cards/c1", "value": {"text": "hello"}}]));
    assert_eq!(bob.session_patch(S, "b1", 0, add).await.unwrap(), PatchResult::Applied { version: 1, rebased: false });
    for c in [&mut alice, &mut bob, &mut bob_phone, &mut carol] {
        assert_eq!(patched(c).await.0, 1);
    }
    let edit = j(json!([{"op": "replace", "path": "/cards/c1/text", "value": "mine"}]));
    refused(carol.session_patch(S, "c1", 1, edit.clone()).await, ErrorCode::READ_ONLY);
    refused(bob.session_role(S, "carol", SessionRole::Editor).await, ErrorCode::NOT_OWNER);
    alice.session_role(S, "carol", SessionRole::Editor).await.unwrap();
    assert_eq!(next(&mut carol).await, member("carol", SessionRole::Editor, true));
    assert!(matches!(carol.session_patch(S, "c1", 1, edit).await.unwrap(), PatchResult::Applied { version: 2, .. }));

    // Hand over, then the new owner closes: still readable, patches refused.
    alice.session_role(S, "bob", SessionRole::Owner).await.unwrap();
    refused(alice.session_close(S).await, ErrorCode::NOT_OWNER);
    bob_phone.session_close(S).await.unwrap();
    let mut saw_closed = false;
    while !saw_closed {
        saw_closed = matches!(next_reliable(&mut carol).await, SessionEvent::Closed { ref by } if by == "bob");
    }
    refused(carol.session_patch(S, "c2", 2, j(json!([]))).await, ErrorCode::SESSION_CLOSED);
    let late = device(&relay, (Transport::Quic, Codec::Json), "dave").await;
    let joined = late.session_join(S, None).await.unwrap();
    assert_eq!((joined.status, joined.doc.version), (SessionStatus::Closed, 2));
    assert_eq!(joined.doc.doc, json!({"cards": {"c1": {"text": "mine"}}}));

    // Leaving: the user's last device takes them out.
    carol.session_leave(S).await.unwrap();
    refused(carol.session_leave(S).await, ErrorCode::NOT_IN_SESSION);

    // Destroy: every joined device is told and the session is gone.
    bob.session_destroy(S).await.unwrap();
    for c in [&mut alice, &mut bob_phone] {
        loop {
            if let SessionEvent::Ended { reason, by } = next_reliable(c).await {
                assert_eq!((reason, by.as_deref()), (SessionEnd::Destroyed, Some("bob")));
                break;
            }
        }
    }
    refused(late.session_join(S, None).await, ErrorCode::UNKNOWN_SESSION);
    refused(alice.session_patch(S, "a9", 2, j(json!([]))).await, ErrorCode::UNKNOWN_SESSION);
    // The id is free again.
    alice.session_create(S, j(json!({"new": true})), None, SessionRole::Viewer).await.unwrap();
}

#[tokio::test]
async fn the_conflict_rule_rebases_or_refuses_with_the_missed_versions_and_test_is_compare_and_set() {
    let relay = start_with(|_| {}).await;
    for (transport, codec) in common::VARIANTS {
        let alice = device(&relay, (transport, codec), "alice").await;
        let bob = device(&relay, (transport, codec), "bob").await;
        alice.session_destroy(S).await.ok();
        alice.session_create(S, j(json!({"a": 0, "b": 0, "list": []})), None, SessionRole::Editor).await.unwrap();
        bob.session_join(S, None).await.unwrap();

        let set = |path: &str, value: i64| j(json!([{"op": "replace", "path": path, "value": value}]));
        assert!(matches!(
            alice.session_patch(S, "a1", 0, set("/a", 1)).await.unwrap(),
            PatchResult::Applied { version: 1, .. }
        ));
        // bob has not seen version 1: a change elsewhere is rebased, the same path conflicts.
        assert_eq!(
            bob.session_patch(S, "b1", 0, set("/b", 2)).await.unwrap(),
            PatchResult::Applied { version: 2, rebased: true }
        );
        assert_eq!(
            bob.session_patch(S, "b2", 0, set("/a", 3)).await.unwrap(),
            PatchResult::Conflict { base: 0, version: 2, conflicting: vec![1] }
        );
        // Compare-and-set: both read "a" = 1 at version 2; the first wins, the second's test fails.
        let cas = |value: i64| {
            j(json!([{"op": "test", "path": "/a", "value": 1}, {"op": "replace", "path": "/a", "value": value}]))
        };
        assert!(matches!(
            alice.session_patch(S, "a2", 2, cas(10)).await.unwrap(),
            PatchResult::Applied { version: 3, .. }
        ));
        refused(bob.session_patch(S, "b3", 3, cas(20)).await, ErrorCode::PATCH_FAILED);
        let view = fresh_view(&relay).await;
        assert_eq!((view.version, view.doc), (3, json!({"a": 10, "b": 2, "list": []})), "{transport:?} {codec:?}");
        alice.session_destroy(S).await.unwrap();
    }
}

#[tokio::test]
async fn bad_input_gets_its_documented_error_and_changes_nothing_for_anyone() {
    let relay = start_with(|c| c.sessions.max_patch_bytes = 2048).await;
    let alice = device(&relay, (Transport::Quic, Codec::Json), "alice").await;
    let mut bob = device(&relay, (Transport::WebSocket, Codec::Postcard), "bob").await;
    alice.session_create(S, j(json!({"items": ["x"], "n": 1})), Some(300), SessionRole::Editor).await.unwrap();
    bob.session_join(S, None).await.unwrap();

    let cases: Vec<(&str, Payload, u64, ErrorCode)> = vec![
        ("not json", Payload::from("{oops"), 0, ErrorCode::BAD_PATCH),
        ("not a patch", j(json!({"op": "add"})), 0, ErrorCode::BAD_PATCH),
        ("unknown op", j(json!([{"op": "merge", "path": "/n"}])), 0, ErrorCode::BAD_PATCH),
        ("missing path", j(json!([{"op": "remove", "path": "/nothing"}])), 0, ErrorCode::PATCH_FAILED),
        (
            "index out of range",
            j(json!([{"op": "replace", "path": "/items/5", "value": 1}])),
            0,
            ErrorCode::PATCH_FAILED,
        ),
        (
            "half applies",
            j(json!([{"op": "replace", "path": "/n", "value": 2}, {"op": "remove", "path": "/no"}])),
            0,
            ErrorCode::PATCH_FAILED,
        ),
        (
            "over the size limit",
            j(json!([{"op": "add", "path": "/big", "value": "x".repeat(400)}])),
            0,
            ErrorCode::DOCUMENT_TOO_LARGE,
        ),
        (
            "over the patch limit",
            j(json!([{"op": "add", "path": "/big", "value": "x".repeat(3000)}])),
            0,
            ErrorCode::BAD_REQUEST,
        ),
        ("base ahead", j(json!([])), 9, ErrorCode::BAD_VERSION),
    ];
    for (what, patch, base, code) in cases {
        match alice.session_patch(S, what, base, patch).await {
            Err(ClientError::Rejected { code: got, .. }) => assert_eq!(got, code, "{what}"),
            other => panic!("{what}: expected {code}, got {other:?}"),
        }
    }
    refused(alice.session_patch(S, "", 0, j(json!([]))).await, ErrorCode::BAD_REQUEST);
    refused(alice.session_join("doc:nobody", None).await, ErrorCode::UNKNOWN_SESSION);
    refused(alice.session_join("bad id!", None).await, ErrorCode::BAD_REQUEST);
    refused(alice.session_join("other:x", None).await, ErrorCode::PERMISSION_DENIED);
    let outsider =
        connect(&relay, (Transport::Quic, Codec::Postcard), &relay.session_token("eve", "globex", &["doc:*"], &[]))
            .await;
    refused(outsider.session_join(S, None).await, ErrorCode::UNKNOWN_SESSION);
    let reader =
        connect(&relay, (Transport::Quic, Codec::Postcard), &relay.session_token("rita", "acme", &[], &["doc:*"]))
            .await;
    refused(
        reader.session_create("doc:mine", j(json!({})), None, SessionRole::Editor).await,
        ErrorCode::PERMISSION_DENIED,
    );
    refused(alice.session_patch("doc:nobody", "x", 0, j(json!([]))).await, ErrorCode::UNKNOWN_SESSION);
    let stranger = device(&relay, (Transport::Quic, Codec::Json), "sam").await;
    refused(stranger.session_patch(S, "x", 0, j(json!([]))).await, ErrorCode::NOT_IN_SESSION);

    // A session with a JSON Schema: the initial document and every patch's result must validate.
    let schema =
        j(json!({"type": "object", "properties": {"votes": {"type": "integer", "minimum": 0}}, "required": ["votes"]}));
    let form = "doc:form";
    refused(
        alice
            .session_create_with_schema(form, j(json!({"votes": -1})), None, SessionRole::Editor, schema.clone())
            .await,
        ErrorCode::SCHEMA_VIOLATION,
    );
    let outside = j(json!({"$ref": "file:///etc/passwd"}));
    refused(
        alice.session_create_with_schema(form, j(json!({})), None, SessionRole::Editor, outside).await,
        ErrorCode::BAD_REQUEST,
    );
    alice.session_create_with_schema(form, j(json!({"votes": 0})), None, SessionRole::Editor, schema).await.unwrap();
    let vote = |n: i64| j(json!([{"op": "replace", "path": "/votes", "value": n}]));
    refused(alice.session_patch(form, "minus", 0, vote(-5)).await, ErrorCode::SCHEMA_VIOLATION);
    refused(
        alice.session_patch(form, "drop", 0, j(json!([{"op": "remove", "path": "/votes"}]))).await,
        ErrorCode::SCHEMA_VIOLATION,
    );
    assert!(matches!(
        alice.session_patch(form, "plus", 0, vote(1)).await.unwrap(),
        PatchResult::Applied { version: 1, .. }
    ));

    // Nothing changed, and the first thing bob hears is the next good patch.
    let view = fresh_view(&relay).await;
    assert_eq!((view.version, view.doc), (0, json!({"items": ["x"], "n": 1})));
    let good = j(json!([{"op": "add", "path": "/items/-", "value": "y"}]));
    alice.session_patch(S, "good", 0, good).await.unwrap();
    assert_eq!(patched(&mut bob).await.0, 1, "bob was not disturbed");
}

#[tokio::test]
async fn catch_up_from_the_document_or_only_the_missed_patches_and_all_of_it_after_a_restart() {
    let relay = start_with(|c| {
        c.sessions.snapshot_every_patches = 4;
        c.sessions.keep_patches = 5;
    })
    .await;
    let alice = device(&relay, (Transport::Quic, Codec::Postcard), "alice").await;
    // Padding: the missed patches weigh less than the document, so they are what comes.
    let pad = "p".repeat(2000);
    alice.session_create(S, j(json!({"log": [], "pad": pad})), None, SessionRole::Editor).await.unwrap();
    let phone = device(&relay, (Transport::WebSocket, Codec::Json), "alice").await;
    let copy = phone.session_join(S, None).await.unwrap().doc;
    phone.close().await;
    for i in 1..=10u64 {
        let add = j(json!([{"op": "add", "path": "/log/-", "value": i}]));
        assert!(matches!(
            alice.session_patch(S, &format!("p{i}"), i - 1, add).await.unwrap(),
            PatchResult::Applied { .. }
        ));
    }
    let expected = json!({"log": (1..=10).collect::<Vec<u64>>(), "pad": pad});

    // The phone comes back at version 7 (it applied up to 7): only 8-10 are sent.
    let mut at7 = copy.clone();
    at7.doc = json!({"log": (1..=7).collect::<Vec<u64>>(), "pad": pad});
    at7.version = 7;
    let phone = device(&relay, (Transport::WebSocket, Codec::Json), "alice").await;
    let event = raw_join(&phone, Some(7)).await;
    match &event {
        SessionEvent::Joined { snapshot: None, patches, version: 10, .. } => {
            assert_eq!(patches.iter().map(|p| p.version).collect::<Vec<_>>(), vec![8, 9, 10]);
        }
        other => panic!("expected only the missed patches, got {other:?}"),
    }
    assert_eq!(SessionDoc::joined(&event, Some(&at7)).unwrap().doc, expected);
    // From version 0 (older than the patches kept) the document comes whole.
    let event = raw_join(&phone, Some(0)).await;
    assert!(matches!(event, SessionEvent::Joined { snapshot: Some(ref s), .. } if s.version == 10), "{event:?}");
    phone.close().await;
    alice.close().await;

    // After a restart the session is rebuilt from its latest snapshot and the patches after it;
    // a retried patch id is still recognised.
    let relay = relay.restart(Duration::from_millis(50)).await;
    let alice = device(&relay, (Transport::Quic, Codec::Json), "alice").await;
    refused(alice.session_create(S, j(json!({})), None, SessionRole::Editor).await, ErrorCode::SESSION_EXISTS);
    let view = fresh_view(&relay).await;
    assert_eq!((view.version, &view.doc), (10, &expected));
    let event = raw_join(&alice, Some(8)).await;
    assert!(
        matches!(event, SessionEvent::Joined { snapshot: None, ref patches, .. } if patches.len() == 2),
        "{event:?}"
    );
    let retry = j(json!([{"op": "add", "path": "/log/-", "value": 10}]));
    assert_eq!(
        alice.session_patch(S, "p10", 9, retry).await.unwrap(),
        PatchResult::Applied { version: 10, rebased: false }
    );
    assert_eq!(fresh_view(&relay).await.doc, expected, "applied once");
}

/// A `join` with a version, answered as the relay sent it.
async fn raw_join(client: &Client, version: Option<u64>) -> SessionEvent {
    client.session_action(S, edgerelay::proto::SessionAction::Join { version }).await.expect("joined")
}

#[tokio::test]
async fn sessions_expire_when_nobody_joined_for_the_configured_time() {
    let relay = start_with(|c| c.sessions.expire_after_secs = 1).await;
    let alice = device(&relay, (Transport::Quic, Codec::Json), "alice").await;
    alice.session_create(S, j(json!({})), None, SessionRole::Editor).await.unwrap();
    alice.session_create("doc:kept", j(json!({})), None, SessionRole::Editor).await.unwrap();
    alice.session_leave(S).await.unwrap();
    // doc:kept has a member the whole time; doc:board has none and goes.
    within("the session expires", async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            match alice.session_join(S, None).await {
                Err(ClientError::Rejected { code, .. }) if code == ErrorCode::UNKNOWN_SESSION => break,
                Ok(_) => {
                    alice.session_leave(S).await.unwrap();
                    // Joining counts as activity: wait for expiry without touching it.
                    tokio::time::sleep(Duration::from_millis(1600)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    })
    .await;
    let other = device(&relay, (Transport::Quic, Codec::Json), "bob").await;
    other.session_join("doc:kept", None).await.expect("a session with a member stays");
}

#[tokio::test]
async fn cursors_reach_the_others_throttled_latest_last_and_go_when_the_user_leaves() {
    let relay = start_with(|c| c.sessions.cursor_rate = 5).await;
    for (transport, codec) in [
        (Transport::Quic, Codec::Postcard),
        (Transport::WebSocket, Codec::Json),
        (Transport::WebTransport, Codec::Json),
    ] {
        let mut alice = device(&relay, (transport, codec), "alice").await;
        let mut bob = device(&relay, (transport, codec), "bob").await;
        alice.session_destroy(S).await.ok();
        alice.session_create(S, j(json!({})), None, SessionRole::Editor).await.unwrap();
        bob.session_join(S, None).await.unwrap();
        assert_eq!(next(&mut alice).await, member("bob", SessionRole::Editor, true));

        let started = Instant::now();
        const SENT: u64 = 40;
        for i in 1..=SENT {
            alice.session_cursor(S, j(json!({"x": i}))).await.unwrap();
        }
        let mut seen = Vec::new();
        loop {
            match next(&mut bob).await {
                SessionEvent::Cursor { user, data: Some(data) } => {
                    assert_eq!(user, "alice");
                    let x = serde_json::from_slice::<Value>(&data.0).unwrap()["x"].as_u64().unwrap();
                    seen.push(x);
                    if x == SENT {
                        break;
                    }
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        // At most one per 200 ms (plus the first), however fast alice sent; newer ones win.
        assert!(
            (seen.len() as f64) <= elapsed * 5.0 + 2.0,
            "{transport:?}: {} cursors in {elapsed:.2}s: {seen:?}",
            seen.len()
        );
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
        assert!(alice.try_next_event().is_none_or(|e| !matches!(e, edgerelay::client::Event::Session(ref u) if matches!(u.event, SessionEvent::Cursor { .. }))), "no echo to the sender");

        alice.session_leave(S).await.unwrap();
        assert_eq!(next(&mut bob).await, member("alice", SessionRole::Owner, false));
        assert_eq!(next(&mut bob).await, SessionEvent::Cursor { user: "alice".into(), data: None });
        // As a reliable frame a refused cursor is answered with its error.
        let cursor = edgerelay::proto::SessionAction::Cursor { data: j(json!({})) };
        refused(alice.session_action(S, cursor).await, ErrorCode::NOT_IN_SESSION);
        alice.session_join(S, None).await.unwrap();
        alice.session_destroy(S).await.unwrap();
    }
}

/// One simulated client of the property test: a device, its copy of the document, its dice.
struct Sim {
    k: usize,
    client: Client,
    doc: SessionDoc,
    rng: StdRng,
    target: edgerelay::client::Target,
    token: String,
    codec: Codec,
}

/// What became of a patch, by its id.
#[derive(Debug, Clone, PartialEq)]
enum Fate {
    /// Applied as this version; `key` is the array or shared key it changed.
    Acked {
        version: u64,
        key: String,
        append: bool,
    },
    Refused,
}

impl Sim {
    async fn connect(target: &edgerelay::client::Target, token: &str, codec: Codec) -> Client {
        within("reconnect", async {
            loop {
                match Client::connect(target.clone(), ClientOptions::new(token).codec(codec)).await {
                    Ok(client) => return client,
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
        .await
    }

    /// Reconnects and catches up from this device's version.
    async fn reconnect(&mut self) {
        self.client.abort();
        self.client = Sim::connect(&self.target, &self.token, self.codec).await;
        loop {
            match self.client.session_join(S, Some(&self.doc)).await {
                Ok(joined) => {
                    self.doc = joined.doc;
                    return;
                }
                Err(ClientError::Closed { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.client = Sim::connect(&self.target, &self.token, self.codec).await;
                }
                Err(e) => panic!("client {}: rejoin: {e}", self.k),
            }
        }
    }

    /// Applies what arrived; with `until`, waits for that version.
    async fn catch_up(&mut self, until: Option<u64>) -> Result<(), ClientError> {
        loop {
            let event = match until {
                Some(v) if self.doc.version < v => {
                    let next = tokio::time::timeout(Duration::from_secs(20), self.client.next_event()).await;
                    next.unwrap_or_else(|_| panic!("client {}: version {v} never arrived", self.k))
                }
                _ => self.client.try_next_event(),
            };
            match event {
                None if until.is_none_or(|v| self.doc.version >= v) => return Ok(()),
                None | Some(edgerelay::client::Event::Closed { .. }) => {
                    return Err(ClientError::Closed { code: None, reason: "closed".into() });
                }
                Some(edgerelay::client::Event::Session(u)) => {
                    if let SessionEvent::Patched { patch } = u.event {
                        self.doc.apply(&patch).unwrap_or_else(|e| panic!("client {}: {e}", self.k));
                    }
                }
                Some(_) => {}
            }
        }
    }

    /// Runs `ops` random patches; every one ends acked or refused (a patch cut off by a lost
    /// connection is retried with its id after reconnecting).
    async fn run(
        mut self,
        ops: usize,
        done: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    ) -> (Sim, HashMap<String, Fate>) {
        let mut fates = HashMap::new();
        for n in 0..ops {
            let id = format!("k{}-op{n}", self.k);
            let roll = self.rng.random_range(0..100);
            let (patch, key, append) = match roll {
                0..50 => (
                    json!([{"op": "add", "path": format!("/c{}/-", self.k), "value": id}]),
                    format!("c{}", self.k),
                    true,
                ),
                50..75 => {
                    let r = self.rng.random_range(0..3);
                    (json!([{"op": "add", "path": format!("/shared/k{r}"), "value": id}]), format!("k{r}"), false)
                }
                75..90 => (json!([{"op": "add", "path": "/log/-", "value": id}]), "log".to_string(), true),
                _ => (json!([{"op": "remove", "path": format!("/shared/missing-{id}")}]), String::new(), false),
            };
            let _ = self.catch_up(None).await;
            let base = self.doc.version;
            let fate = loop {
                match self.client.session_patch(S, &id, base, j(patch.clone())).await {
                    Ok(PatchResult::Applied { version, .. }) => {
                        break Fate::Acked { version, key: key.clone(), append };
                    }
                    Ok(PatchResult::Conflict { .. }) => {
                        eprintln!("client {}: {id} conflict at base {base}", self.k);
                        break Fate::Refused;
                    }
                    Err(ClientError::Rejected { code, .. }) => {
                        assert_eq!(code, ErrorCode::PATCH_FAILED, "client {}: {id}", self.k);
                        break Fate::Refused;
                    }
                    // Cut off (the relay restarts): reconnect and retry with the same id and base.
                    Err(e) => {
                        eprintln!("client {}: {id} cut off: {e}", self.k);
                        self.reconnect().await
                    }
                }
            };
            if let Fate::Acked { version, .. } = fate {
                // Its own `patched` follows; wait for it so the next base includes it.
                if self.catch_up(Some(version)).await.is_err() {
                    self.reconnect().await;
                }
            }
            fates.insert(id, fate);
            done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if self.rng.random_range(0..100) < 8 {
                self.reconnect().await;
            }
        }
        (self, fates)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn property_concurrent_patches_with_reconnects_and_a_restart_converge_with_every_acked_patch_once() {
    const K: usize = 4;
    const OPS: usize = 30;
    let seed: u64 = std::env::var("SESSIONS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(18);
    let relay = start_with(|c| {
        c.sessions.snapshot_every_patches = 7;
        c.sessions.keep_patches = 20;
    })
    .await;
    let owner = device(&relay, (Transport::Quic, Codec::Json), "owner").await;
    let doc = json!({"c0": [], "c1": [], "c2": [], "c3": [], "log": [], "shared": {}});
    owner.session_create(S, j(doc), None, SessionRole::Editor).await.unwrap();
    owner.close().await;

    let mixes = [
        (Transport::Quic, Codec::Postcard),
        (Transport::Quic, Codec::Json),
        (Transport::WebSocket, Codec::Json),
        (Transport::WebTransport, Codec::Postcard),
    ];
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (k, (transport, codec)) in mixes.into_iter().enumerate() {
        let token = relay.session_token(&format!("user{k}"), "acme", &["doc:*"], &[]);
        let target = relay.target(transport);
        let client = Sim::connect(&target, &token, codec).await;
        let doc = client.session_join(S, None).await.unwrap().doc;
        let rng = StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(k as u64));
        let sim = Sim { k, client, doc, rng, target, token, codec };
        tasks.push(tokio::spawn(sim.run(OPS, done.clone())));
    }
    // A restart while they are at it.
    within("a third of the patches", async {
        while done.load(std::sync::atomic::Ordering::Relaxed) < K * OPS / 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let relay = relay.restart(Duration::from_millis(100)).await;
    let mut sims = Vec::new();
    let mut fates = HashMap::new();
    for task in tasks {
        let (sim, f) = within("the clients finish", task).await.expect("client task");
        sims.push(sim);
        fates.extend(f);
    }

    let end = fresh_view(&relay).await;
    // Every client converges to the relay's document.
    for sim in &mut sims {
        if sim.catch_up(Some(end.version)).await.is_err() {
            sim.reconnect().await;
        }
        assert_eq!(sim.doc, end, "client {} converged", sim.k);
    }
    // Every acked append is in the document exactly once, every refused patch nowhere, and the
    // shared keys hold the last acked value written to them.
    let text = serde_json::to_string(&end.doc).unwrap();
    let mut versions = HashSet::new();
    let mut last_shared: HashMap<String, (u64, String)> = HashMap::new();
    let (mut acked, mut refused_count) = (0, 0);
    for (id, fate) in &fates {
        let quoted = format!("\"{id}\"");
        match fate {
            Fate::Acked { version, key, append } => {
                acked += 1;
                assert!(versions.insert(*version), "version {version} acked twice");
                if *append {
                    let list = end.doc[key].as_array().unwrap();
                    assert_eq!(list.iter().filter(|v| v.as_str() == Some(id)).count(), 1, "{id} in {key} once");
                } else if !key.is_empty() {
                    let e = last_shared.entry(key.clone()).or_insert((0, String::new()));
                    if *version > e.0 {
                        *e = (*version, id.clone());
                    }
                }
            }
            Fate::Refused => {
                refused_count += 1;
                assert!(!text.contains(&quoted), "refused {id} changed the document: {text}");
            }
        }
    }
    for (key, (_, id)) in &last_shared {
        assert_eq!(end.doc["shared"][key].as_str(), Some(id.as_str()), "shared {key}");
    }
    assert_eq!(fates.len(), K * OPS);
    assert_eq!(end.version as usize, versions.len(), "every version is an acked patch");
    assert!(acked > K * OPS / 2, "most patches applied: {acked} acked, {refused_count} refused");
}
