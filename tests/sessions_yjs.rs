//! `yjs` sessions against a real relay on loopback (docs/sessions.md "Yjs sessions", docs/protocol.md
//! "Yjs sessions"), with independent `yrs` documents as the clients speaking y-protocols sync and
//! awareness through `yjs` session frames: two editors type into one text at once and converge;
//! a late joiner (a viewer) gets the whole text from the relay and cannot change it; awareness
//! reaches the others and is removed when its device goes; after a restart (updates compacted
//! into snapshots in the embedded store) a new device gets the same text. The Node test with the
//! npm `yjs` package is clients/js/test/yjs.test.mjs.

mod common;

use std::time::Duration;

use common::{TestRelay, Transport, start_with, within};
use edgerelay::client::{Client, ClientError};
use edgerelay::proto::{Codec, ErrorCode, Payload, SessionAction, SessionEvent, SessionRole};
use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, GetString, ReadTxn, Text, Transact, Update};

const S: &str = "notes:1";
const EDITS: usize = 5;

/// A Yjs client: a relay connection and its own `yrs` document.
struct YClient {
    client: Client,
    doc: Doc,
}

fn message(m: Message) -> SessionAction {
    SessionAction::Yjs { message: Payload::from(m.encode_v1()) }
}

impl YClient {
    async fn connect(
        relay: &TestRelay,
        transport: Transport,
        codec: Codec,
        user: &str,
        id: u64,
        read: bool,
    ) -> YClient {
        let (edit, view): (&[&str], &[&str]) = if read { (&[], &["notes:*"]) } else { (&["notes:*"], &[]) };
        let token = relay.session_token(user, "acme", edit, view);
        let client = relay.try_connect(transport, codec, &token).await.expect("connects");
        YClient { client, doc: Doc::with_client_id(id) }
    }

    fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("t");
        text.get_string(&self.doc.transact())
    }

    fn apply(&self, update: &[u8]) {
        self.doc.transact_mut().apply_update(Update::decode_v1(update).unwrap()).unwrap();
    }

    async fn act(&self, action: SessionAction) -> Result<SessionEvent, ClientError> {
        self.client.session_action(S, action).await
    }

    /// Joins and syncs: step 1 out, step 2 back; the relay's step 1 is answered in `pump`.
    async fn join_and_sync(&mut self) {
        let joined = self.act(SessionAction::Join { version: None }).await.unwrap();
        assert!(matches!(joined, SessionEvent::Joined { snapshot: None, .. }), "{joined:?}");
        self.sync().await;
    }

    async fn sync(&mut self) {
        let sv = self.doc.transact().state_vector();
        let answer = self.act(message(Message::Sync(SyncMessage::SyncStep1(sv)))).await.unwrap();
        let SessionEvent::Yjs { message: m } = answer else { panic!("expected sync step 2, got {answer:?}") };
        match Message::decode_v1(&m.0).unwrap() {
            Message::Sync(SyncMessage::SyncStep2(update)) => self.apply(&update),
            other => panic!("expected sync step 2, got {other:?}"),
        }
    }

    /// Inserts `s` at `at` and sends the update; the version it got.
    async fn insert(&self, at: u32, s: &str) -> u64 {
        let update = {
            let text = self.doc.get_or_insert_text("t");
            let mut txn = self.doc.transact_mut();
            text.insert(&mut txn, at, s);
            txn.encode_update_v1()
        };
        match self.act(message(Message::Sync(SyncMessage::Update(update)))).await.unwrap() {
            SessionEvent::Applied { version, .. } => version,
            other => panic!("expected applied, got {other:?}"),
        }
    }

    /// The next awareness message, handling the other `yjs` events meanwhile.
    async fn next_awareness(&mut self) -> AwarenessUpdate {
        let mut seen = Vec::new();
        while seen.is_empty() {
            seen = self.pump_once().await;
        }
        seen.remove(0)
    }

    /// Handles the relay's `yjs` events (updates applied, its step 1 answered) until `done`.
    async fn pump(&mut self, done: impl Fn(&YClient) -> bool) {
        while !done(self) {
            self.pump_once().await;
        }
    }

    /// Handles one event; the awareness message it was, if any.
    async fn pump_once(&mut self) -> Vec<AwarenessUpdate> {
        let mut awareness = Vec::new();
        {
            let update = within("a yjs event", self.client.next_session_update()).await.expect("connection open");
            let SessionEvent::Yjs { message: m } = update.event else { return awareness };
            match Message::decode_v1(&m.0).unwrap() {
                Message::Sync(SyncMessage::Update(u) | SyncMessage::SyncStep2(u)) => self.apply(&u),
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let diff = self.doc.transact().encode_diff_v1(&sv);
                    let answer = self.act(message(Message::Sync(SyncMessage::SyncStep2(diff)))).await.unwrap();
                    assert!(matches!(answer, SessionEvent::Applied { .. }), "{answer:?}");
                }
                Message::Awareness(a) => awareness.push(a),
                other => panic!("unexpected {other:?}"),
            }
        }
        awareness
    }
}

fn refused(result: Result<SessionEvent, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Rejected { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Alice and Bob type at once, Alice at the front and Bob at the end of what each has: every
/// update gets one version (after the one at version 1), and both converge.
async fn type_at_once(alice: &mut YClient, bob: &mut YClient) {
    let (a, b) = tokio::join!(
        async {
            let mut versions = Vec::new();
            for i in 0..EDITS {
                versions.push(alice.insert(0, &format!("[a{i}]")).await);
            }
            versions
        },
        async {
            let mut versions = Vec::new();
            for i in 0..EDITS {
                let end = bob.text().len() as u32;
                versions.push(bob.insert(end, &format!("[b{i}]")).await);
            }
            versions
        }
    );
    let mut versions: Vec<u64> = a.into_iter().chain(b).collect();
    versions.sort();
    assert_eq!(versions, (2..=1 + 2 * EDITS as u64).collect::<Vec<_>>(), "every update one version");
    let complete = |c: &YClient| {
        let t = c.text();
        (0..EDITS).all(|i| t.contains(&format!("[a{i}]")) && t.contains(&format!("[b{i}]")))
    };
    alice.pump(complete).await;
    bob.pump(complete).await;
    assert_eq!(alice.text(), bob.text(), "both converge");
}

#[tokio::test]
async fn two_yjs_editors_converge_a_late_viewer_gets_it_all_and_it_survives_a_restart() {
    let relay = start_with(|c| c.sessions.snapshot_every_patches = 3).await;
    let mut alice = YClient::connect(&relay, Transport::Quic, Codec::Postcard, "alice", 1, false).await;
    let create = SessionAction::CreateYjs { max_bytes: None, default_role: SessionRole::Editor };
    assert!(matches!(alice.act(create).await.unwrap(), SessionEvent::Joined { version: 0, .. }));
    alice.sync().await;
    alice.insert(0, "start.").await;
    let mut bob = YClient::connect(&relay, Transport::WebSocket, Codec::Json, "bob", 2, false).await;
    bob.join_and_sync().await;
    assert_eq!(bob.text(), "start.", "the joiner got the document from sync step 2");

    type_at_once(&mut alice, &mut bob).await;
    let text = alice.text();

    // Carol, a viewer, joins late: the whole text; her updates are refused, her step 2 ignored.
    let mut carol = YClient::connect(&relay, Transport::WebTransport, Codec::Json, "carol", 3, true).await;
    carol.join_and_sync().await;
    assert_eq!(carol.text(), text, "the late joiner gets the full state");
    let sneaky = {
        let t = carol.doc.get_or_insert_text("t");
        let mut txn = carol.doc.transact_mut();
        t.insert(&mut txn, 0, "x");
        txn.encode_update_v1()
    };
    let step2 = carol.act(message(Message::Sync(SyncMessage::SyncStep2(sneaky.clone())))).await;
    assert!(matches!(step2, Ok(SessionEvent::Applied { .. })), "{step2:?}");
    assert_eq!(refused(carol.act(message(Message::Sync(SyncMessage::Update(sneaky)))).await), ErrorCode::READ_ONLY);

    // Bad input: a JSON patch, a broken message, a broken update.
    let patch = SessionAction::Patch { id: "p".into(), base: 0, patch: Payload::from("[]") };
    assert_eq!(refused(alice.act(patch).await), ErrorCode::WRONG_SESSION_KIND);
    let junk = SessionAction::Yjs { message: Payload::from(vec![7u8, 1, 2]) };
    assert_eq!(refused(alice.act(junk).await), ErrorCode::BAD_YJS_MESSAGE);
    let broken = message(Message::Sync(SyncMessage::Update(vec![0xff, 0xff, 0xff, 0x01])));
    assert_eq!(refused(alice.act(broken).await), ErrorCode::BAD_YJS_MESSAGE);

    // Awareness: Alice's reaches Bob, and goes (null) when her connection does.
    let entry = AwarenessUpdateEntry { clock: 1, json: r#"{"user":{"name":"alice"},"cursor":3}"#.into() };
    let aw = AwarenessUpdate { clients: [(ClientID::new(1), entry)].into() };
    assert_eq!(alice.act(message(Message::Awareness(aw))).await.unwrap(), SessionEvent::Ok {});
    let got = bob.next_awareness().await;
    assert!(got.clients[&ClientID::new(1)].json.contains("alice"));
    alice.client.close().await;
    let gone = bob.next_awareness().await;
    assert_eq!(&*gone.clients[&ClientID::new(1)].json, "null", "her state is removed");
    bob.client.close().await;
    carol.client.close().await;

    // After a restart the relay has the same text (snapshot plus the updates after it).
    let relay = relay.restart(Duration::from_millis(50)).await;
    let mut dave = YClient::connect(&relay, Transport::Quic, Codec::Json, "dave", 4, false).await;
    dave.join_and_sync().await;
    assert_eq!(dave.text(), text, "the whole text after a restart");
    let v = dave.insert(0, "after.").await;
    assert_eq!(v, 2 + 2 * EDITS as u64, "versions go on from where they were");
}

/// A `yjs` session in a Redis region (docs/sessions.md, "Sessions in a Redis region"): editors on
/// two relays converge, awareness crosses nodes, and when the node holding the session goes the
/// other node takes it from Redis (binary snapshots included) with the whole text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_yjs_session_spans_two_relays_of_a_redis_region_and_outlives_its_node() {
    use edgerelay::config::StoreEngine;
    let redis = edgerelay::testing::RedisServer::start().expect("start redis-server");
    let url = redis.url();
    let shared = |c: &mut edgerelay::config::Config| {
        c.store.engine = StoreEngine::Redis;
        c.redis.url = url.clone();
        c.sessions.snapshot_every_patches = 3;
    };
    let (a, b) = (start_with(shared).await, start_with(shared).await);
    let mut alice = YClient::connect(&a, Transport::Quic, Codec::Postcard, "alice", 1, false).await;
    let create = SessionAction::CreateYjs { max_bytes: None, default_role: SessionRole::Editor };
    assert!(matches!(alice.act(create).await.unwrap(), SessionEvent::Joined { version: 0, .. }));
    alice.sync().await;
    alice.insert(0, "start.").await;
    let mut bob = YClient::connect(&b, Transport::WebSocket, Codec::Json, "bob", 2, false).await;
    bob.join_and_sync().await;
    assert_eq!(bob.text(), "start.");

    type_at_once(&mut alice, &mut bob).await;
    let text = alice.text();

    // Awareness crosses nodes.
    let entry = AwarenessUpdateEntry { clock: 1, json: r#"{"user":{"name":"alice"}}"#.into() };
    let aw = AwarenessUpdate { clients: [(ClientID::new(1), entry)].into() };
    assert_eq!(alice.act(message(Message::Awareness(aw))).await.unwrap(), SessionEvent::Ok {});
    assert!(bob.next_awareness().await.clients[&ClientID::new(1)].json.contains("alice"));

    // The node holding the session goes: bob is told, and a device on the other node gets the
    // whole text from Redis.
    alice.client.close().await;
    a.relay.shutdown().await;
    let moved = within("bob told the session moved", async {
        loop {
            match bob.client.next_event().await {
                Some(edgerelay::client::Event::Closed { code, .. }) => return code,
                None => return None,
                Some(_) => {}
            }
        }
    })
    .await;
    assert_eq!(moved, Some(ErrorCode::SESSION_MOVED));
    let mut dave = YClient::connect(&b, Transport::Quic, Codec::Json, "dave", 4, false).await;
    dave.join_and_sync().await;
    assert_eq!(dave.text(), text, "the whole text from the region's store");
    assert_eq!(dave.insert(0, "after.").await, 2 + 2 * EDITS as u64);
}

/// The Rust client's Yjs handle (`edgerelay::client::yjs`): two programs edit one text through
/// it and converge, and a late joiner gets the whole text.
#[tokio::test]
async fn the_rust_clients_yjs_handle_edits_syncs_and_converges() {
    use edgerelay::client::yjs::YjsSession;
    let relay = start_with(|_| {}).await;
    let token = |user: &str| relay.session_token(user, "acme", &["notes:*"], &[]);
    let mut a = relay.try_connect(Transport::Quic, Codec::Postcard, &token("alice")).await.unwrap();
    let mut b = relay.try_connect(Transport::WebSocket, Codec::Json, &token("bob")).await.unwrap();
    let alice = a.yjs_create(S, SessionRole::Editor, Doc::with_client_id(1)).await.unwrap();
    let bob = b.yjs_join(S, Doc::with_client_id(2)).await.unwrap();
    let insert = |s: &YjsSession, at_end: bool, what: &str| {
        let text = s.doc.get_or_insert_text("t");
        let mut txn = s.doc.transact_mut();
        let at = if at_end { text.len(&txn) } else { 0 };
        text.insert(&mut txn, at, what);
        txn.encode_update_v1()
    };
    for i in 0..EDITS {
        alice.send_update(&a, insert(&alice, false, &format!("[a{i}]"))).await.unwrap();
        bob.send_update(&b, insert(&bob, true, &format!("[b{i}]"))).await.unwrap();
    }
    let text = |s: &YjsSession| s.doc.get_or_insert_text("t").get_string(&s.doc.transact());
    let complete = |s: &YjsSession| {
        (0..EDITS).all(|i| text(s).contains(&format!("[a{i}]")) && text(s).contains(&format!("[b{i}]")))
    };
    for (client, session) in [(&mut a, &alice), (&mut b, &bob)] {
        while !complete(session) {
            let update = within("a yjs event", client.next_session_update()).await.unwrap();
            session.handle(client, &update.event).await.unwrap();
        }
    }
    assert_eq!(text(&alice), text(&bob), "both converge");
    let c = relay.try_connect(Transport::Quic, Codec::Json, &token("carol")).await.unwrap();
    let carol = c.yjs_join(S, Doc::with_client_id(3)).await.unwrap();
    assert_eq!(text(&carol), text(&alice), "the late joiner has it all after the sync");
}
