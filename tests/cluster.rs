//! Several relay processes on one real `redis-server` (`store.engine = "redis"`), as a region
//! runs them: rooms span nodes, clients of a killed node resume on another with every message
//! exactly once, and a Redis restart is survived (with persistence: nothing lost; without:
//! a new epoch, and clients are told).

mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/receipts.rs"]
mod receipts_help;
#[path = "common/region.rs"]
mod region;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use common::{closed_with, within};
use edgerelay::client::resilient::{Resilient, ResilientEvent};
use edgerelay::client::{Client, ClientError, ClientOptions, Target};
use edgerelay::proto::presence::Status;
use edgerelay::proto::{ErrorCode, Payload, Position};
use edgerelay::testing::RedisServer;
use process::RelayProcess;
use region::{Cluster, fast, joined, publish_steadily};

/// One cluster at a time: each test runs two or three relays and a Redis, and on a 2-core
/// machine several at once starve each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Reads a resilient subscriber's messages until it has `count`, or 30 s passed.
async fn receive(subscriber: &mut Resilient, count: usize) -> Vec<(Position, String)> {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while got.len() < count {
            match subscriber.next_event().await {
                Some(ResilientEvent::Message(m)) => got.push((m.position, m.id)),
                Some(_) => {}
                None => return,
            }
        }
    })
    .await;
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_spans_three_relays_in_order_over_quic_and_websocket() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().expect("start redis-server");
    let cluster = Cluster::start(&redis, 3).await;
    let connect = |target: Target, sub: &str| Client::connect(target, ClientOptions::new(cluster.token(sub)));
    let mut subscribers = vec![
        connect(cluster.quic(0), "s0").await.unwrap(),
        connect(cluster.ws(1), "s1").await.unwrap(),
        connect(cluster.quic(2), "s2").await.unwrap(),
    ];
    for s in &subscribers {
        s.join("chat").await.unwrap();
    }
    let publishers = [connect(cluster.ws(0), "p0").await.unwrap(), connect(cluster.quic(2), "p2").await.unwrap()];
    const TOTAL: u64 = 300;
    let mut epoch = None;
    for i in 1..=TOTAL {
        let position =
            publishers[(i % 2) as usize].publish("chat", &format!("m{i}"), Payload::from("1")).await.unwrap();
        assert_eq!(position.offset, i, "offsets are contiguous across nodes");
        assert_eq!(*epoch.get_or_insert(position.epoch), position.epoch);
    }
    for (n, s) in subscribers.iter_mut().enumerate() {
        for i in 1..=TOTAL {
            let m = within("cross-node message", s.next_message()).await.unwrap();
            assert_eq!((m.position.offset, m.id.as_str()), (i, format!("m{i}").as_str()), "subscriber {n}");
        }
    }
    // The same user retrying an id on another node gets the original position.
    let p2_elsewhere = connect(cluster.ws(1), "p2").await.unwrap();
    let retried = p2_elsewhere.publish("chat", "m1", Payload::from("1")).await.unwrap();
    assert_eq!(retried, Position { epoch: epoch.unwrap(), offset: 1 });
    // ... and it is not delivered again: the next message anyone sees is the next publish.
    publishers[0].publish("chat", "last", Payload::from("1")).await.unwrap();
    for s in &mut subscribers {
        let m = within("the next message", s.next_message()).await.unwrap();
        assert_eq!((m.position.offset, m.id.as_str()), (TOTAL + 1, "last"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_relay_resume_on_another_with_every_message_once() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().expect("start redis-server");
    let mut cluster = Cluster::start(&redis, 2).await;
    let both =
        |quic: bool| if quic { vec![cluster.quic(0), cluster.quic(1)] } else { vec![cluster.ws(0), cluster.ws(1)] };
    // Every client starts on node 0, the one that dies. A killed node answers nothing, so an
    // idle QUIC subscriber notices within its idle timeout: 45 s by default (sized to outlive a
    // phone's outages, docs/decisions.md); this test is about the resume, so 8 s.
    let mut subscribers = Vec::new();
    for (i, quic) in [true, false, true].into_iter().enumerate() {
        let options = ClientOptions {
            quic_idle_timeout: Duration::from_secs(8),
            ..ClientOptions::new(cluster.token(&format!("s{i}")))
        };
        let mut s = Resilient::start_any(both(quic), options, fast());
        s.join("ledger");
        joined(&mut s, "ledger").await;
        subscribers.push(s);
    }
    let publisher = Arc::new(Resilient::start_any(both(false), ClientOptions::new(cluster.token("pub")), fast()));
    const TOTAL: usize = 500;
    let ids: Vec<String> = (1..=TOTAL).map(|i| format!("m{i}")).collect();
    let publishing = publish_steadily(publisher.clone(), "ledger", ids, Duration::from_millis(3));
    tokio::time::sleep(Duration::from_millis(600)).await;
    cluster.nodes[0].kill();

    let positions = region::positions(within("every publish acked", publishing).await.unwrap());
    let epochs: BTreeSet<u64> = positions.values().map(|p| p.epoch).collect();
    assert_eq!(epochs.len(), 1, "one epoch: {epochs:?}");
    let offsets: BTreeSet<u64> = positions.values().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=TOTAL as u64).collect(), "each publish stored once, offsets contiguous");
    let history = cluster.nodes[1].history_ids("ledger").await;
    assert_eq!(history.iter().map(|h| h.0).collect::<Vec<_>>(), (1..=TOTAL as u64).collect::<Vec<_>>());
    assert_eq!(history.iter().map(|h| h.1.as_str()).collect::<BTreeSet<_>>().len(), TOTAL, "no id twice");

    for (n, s) in subscribers.iter_mut().enumerate() {
        let got = receive(s, TOTAL).await;
        let offsets: Vec<u64> = got.iter().map(|(p, _)| p.offset).collect();
        assert_eq!(offsets, (1..=TOTAL as u64).collect::<Vec<_>>(), "subscriber {n}: in order, no gap, no duplicate");
    }
    for s in subscribers {
        s.close().await;
    }
}

/// What a subscriber saw through a Redis restart.
struct Seen {
    messages: Vec<(Position, String)>,
    /// It was told (`NotRecovered`) that history was lost.
    told: bool,
}

/// Publishes through a Redis kill and restart; returns the acked positions by id and what each
/// subscriber saw by the time it had every message acked in the last epoch (or 30 s passed).
async fn through_a_redis_restart(redis: &RedisServer) -> (BTreeMap<String, Position>, Vec<Seen>) {
    let cluster = Cluster::start(redis, 2).await;
    let mut subscribers = Vec::new();
    for (i, target) in [cluster.quic(0), cluster.ws(1)].into_iter().enumerate() {
        let mut s = Resilient::start(target, ClientOptions::new(cluster.token(&format!("s{i}"))), fast());
        s.join("feed");
        joined(&mut s, "feed").await;
        subscribers.push(s);
    }
    let publisher = Arc::new(Resilient::start(cluster.ws(0), ClientOptions::new(cluster.token("pub")), fast()));
    let ids: Vec<String> = (1..=300).map(|i| format!("m{i}")).collect();
    let publishing = publish_steadily(publisher, "feed", ids, Duration::from_millis(5));
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().expect("restart redis-server");
    let acks = tokio::time::timeout(Duration::from_secs(60), publishing).await.expect("every publish acked").unwrap();
    let positions = region::positions(acks);
    // Wait for every message acked in the last epoch (with persistence: every message).
    let last_epoch = positions["m300"].epoch;
    let acked: BTreeSet<Position> = positions.values().copied().filter(|p| p.epoch == last_epoch).collect();
    let mut seen = Vec::new();
    for s in &mut subscribers {
        let mut got = Seen { messages: Vec::new(), told: false };
        let mut missing = acked.clone();
        let _ = tokio::time::timeout(Duration::from_secs(30), async {
            while !missing.is_empty() {
                match s.next_event().await {
                    Some(ResilientEvent::Message(m)) => {
                        missing.remove(&m.position);
                        got.messages.push((m.position, m.id));
                    }
                    Some(ResilientEvent::NotRecovered { .. }) => got.told = true,
                    Some(_) => {}
                    None => return,
                }
            }
        })
        .await;
        seen.push(got);
    }
    (positions, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_redis_restarted_mid_stream_loses_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let data = tempfile::tempdir().unwrap();
    let redis = RedisServer::start_persistent(data.path()).expect("start redis-server");
    let (positions, seen) = through_a_redis_restart(&redis).await;
    let epochs: BTreeSet<u64> = positions.values().map(|p| p.epoch).collect();
    assert_eq!(epochs.len(), 1, "Redis kept the room: {epochs:?}");
    let offsets: BTreeSet<u64> = positions.values().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=300).collect(), "each publish stored once");
    for (n, got) in seen.iter().enumerate() {
        let offsets: Vec<u64> = got.messages.iter().map(|(p, _)| p.offset).collect();
        assert_eq!(offsets, (1..=300).collect::<Vec<_>>(), "subscriber {n}: every message once, in order");
        assert!(!got.told, "subscriber {n}: nothing was lost, nothing to tell");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_starts_a_new_epoch_and_clients_are_told() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().expect("start redis-server");
    let (positions, seen) = through_a_redis_restart(&redis).await;
    let before = positions["m1"];
    let after = positions["m300"];
    assert_ne!(before.epoch, after.epoch, "the restarted Redis had nothing: a new epoch");
    for (n, got) in seen.iter().enumerate() {
        assert!(got.told, "subscriber {n} was told the room's history was lost");
        let got = &got.messages;
        // Each epoch's messages arrive in order without a gap.
        let mut by_epoch: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for (p, _) in got {
            by_epoch.entry(p.epoch).or_default().push(p.offset);
        }
        for (epoch, offsets) in &by_epoch {
            let first = offsets[0];
            let expected: Vec<u64> = (first..first + offsets.len() as u64).collect();
            assert_eq!(offsets, &expected, "subscriber {n}, epoch {epoch}: in order, no gap, no duplicate");
        }
        // Every message acked in the new epoch arrived. Of the lost epoch, the last few may
        // not have reached this node before Redis died: that is the loss it was told about.
        let seen: BTreeSet<Position> = got.iter().map(|(p, _)| *p).collect();
        for (id, p) in positions.iter().filter(|(_, p)| p.epoch == after.epoch) {
            assert!(seen.contains(p), "subscriber {n} never got {id} at {p:?}");
        }
        if let Some(first) = by_epoch.get(&before.epoch) {
            assert_eq!(first[0], 1, "subscriber {n}: the lost epoch from its start");
        }
    }
    // A client coming back with a position of the lost epoch is told it was not recovered.
    let cluster = Cluster::start(&redis, 1).await;
    let mut late = Resilient::start(cluster.ws(0), ClientOptions::new(cluster.token("late")), fast());
    late.join_since("feed", Some(before));
    let told = within("not recovered", async {
        loop {
            if let Some(ResilientEvent::NotRecovered { position, .. }) = late.next_event().await {
                return position;
            }
        }
    })
    .await;
    assert_eq!(told.epoch, after.epoch);
}

/// `POST` to a node's server API; returns the status.
async fn api(node: &RelayProcess, path: &str, body: serde_json::Value) -> u16 {
    let auth = format!("Bearer {}", process::API_KEY);
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let (status, answer) = common::http_request(node.tcp, "POST", path, &headers, &body.to_string()).await;
    assert_eq!(status, 200, "{path}: {answer}");
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_and_revocations_issued_on_one_relay_apply_on_all() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().expect("start redis-server");
    let mut cluster = Cluster::start(&redis, 2).await;
    let connect = |target: Target, token: String| Client::connect(target, ClientOptions::new(token));
    let mut alice_0 = connect(cluster.ws(0), cluster.token("alice")).await.unwrap();
    let mut alice_1 = connect(cluster.quic(1), cluster.token("alice")).await.unwrap();
    let bob_1 = connect(cluster.quic(1), cluster.token("bob")).await.unwrap();

    // Disconnect, asked of node 0: alice's connections on both nodes close; bob stays.
    api(&cluster.nodes[0], "/v1/api/disconnect", serde_json::json!({"tenant": "acme", "user": "alice"})).await;
    assert_eq!(closed_with(&mut alice_0).await, Some(ErrorCode::DISCONNECTED));
    assert_eq!(closed_with(&mut alice_1).await, Some(ErrorCode::DISCONNECTED));
    bob_1.ping().await.expect("bob is still connected");
    // A disconnect is not a ban.
    connect(cluster.ws(1), cluster.token("alice")).await.expect("alice may come back");

    // Revoke carol's tokens, asked of node 1: her connection on node 0 closes, her token is
    // refused on every node, also one that starts later (the revocation is kept in Redis).
    let carol_token = cluster.token("carol");
    let mut carol_0 = connect(cluster.ws(0), carol_token.clone()).await.unwrap();
    api(&cluster.nodes[1], "/v1/api/revoke", serde_json::json!({"tenant": "acme", "user": "carol"})).await;
    assert_eq!(closed_with(&mut carol_0).await, Some(ErrorCode::TOKEN_REVOKED));
    cluster.add_node(&redis).await;
    for node in 0..3 {
        let refused = match connect(cluster.quic(node), carol_token.clone()).await {
            Err(ClientError::Rejected { code, .. } | ClientError::Closed { code: Some(code), .. }) => Some(code),
            _ => None,
        };
        assert_eq!(refused, Some(ErrorCode::TOKEN_REVOKED), "node {node}");
    }
    // Revoking one token by its id leaves the user's others alone.
    let dave_1 = cluster.nodes[0].token_with_jti("dave", "d-1");
    let dave_2 = cluster.nodes[0].token_with_jti("dave", "d-2");
    let mut first = connect(cluster.quic(2), dave_1.clone()).await.unwrap();
    let second = connect(cluster.ws(1), dave_2).await.unwrap();
    api(&cluster.nodes[0], "/v1/api/revoke", serde_json::json!({"tenant": "acme", "jti": "d-1"})).await;
    assert_eq!(closed_with(&mut first).await, Some(ErrorCode::TOKEN_REVOKED));
    second.ping().await.expect("the other token still works");
    // After the revocation, a token issued later works again.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    connect(cluster.quic(0), cluster.token("carol")).await.expect("a new token");
}

/// Waits until `client` shows this typing text for the lobby.
async fn typing(client: &Client, text: &str) {
    let me = client.welcome().user.clone();
    let shown = client.wait_presence("lobby", Duration::from_secs(10), |v, now| v.typing_text(&me, now) == text).await;
    assert!(shown, "{me} shows {:?}, expected {text:?}", client.typing_text("lobby"));
}

/// Waits until `client` sees exactly these members of `room` with these statuses.
async fn sees(client: &Client, room: &str, want: &[(&str, Status)]) {
    let want: Vec<(String, Status)> = want.iter().map(|(u, s)| (u.to_string(), *s)).collect();
    let view = |entries: Vec<edgerelay::proto::presence::PresenceEntry>| {
        let mut members: Vec<(String, Status)> = entries.into_iter().map(|e| (e.user, e.status)).collect();
        members.sort_by(|a, b| a.0.cmp(&b.0));
        members
    };
    let ok = client.wait_presence(room, Duration::from_secs(10), |v, _| view(v.entries()) == want).await;
    assert!(ok, "{} sees {:?}, expected {want:?}", client.welcome().user, view(client.presence(room)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_presence_is_the_union_of_every_node_and_a_dead_nodes_users_disappear() {
    let redis = RedisServer::start().expect("start redis-server");
    let mut cluster = Cluster::empty();
    for _ in 0..2 {
        // Refreshes every 300 ms: a node's entries lapse 900 ms after it stops renewing them.
        cluster.add_node_with(&redis, &[("EDGERELAY_PRESENCE__REFRESH_MS", "300")]).await;
    }
    let connect = |target: Target, sub: &str| Client::connect(target, ClientOptions::new(cluster.token(sub)));
    let alice = connect(cluster.quic(0), "alice").await.unwrap();
    let bob = connect(cluster.ws(1), "bob").await.unwrap();
    let carol_0 = connect(cluster.quic(0), "carol").await.unwrap();
    let carol_1 = connect(cluster.quic(1), "carol").await.unwrap();
    for client in [&alice, &bob, &carol_0, &carol_1] {
        client.join("lobby").await.unwrap();
    }
    let everyone = [("alice", Status::Online), ("bob", Status::Online), ("carol", Status::Online)];
    sees(&alice, "lobby", &everyone).await;
    sees(&bob, "lobby", &everyone).await;

    // A status chosen on one node shows on the other.
    alice.set_status(Status::Busy, Some("in a call")).await.unwrap();
    sees(&bob, "lobby", &[("alice", Status::Busy), ("bob", Status::Online), ("carol", Status::Online)]).await;
    // A user with devices on both nodes stays present while either device is in the room.
    carol_1.leave("lobby").await.unwrap();
    sees(&bob, "lobby", &[("alice", Status::Busy), ("bob", Status::Online), ("carol", Status::Online)]).await;
    // The server API of either node answers for the whole room.
    let auth = format!("Bearer {}", process::API_KEY);
    let (status, body) = common::http_request(
        cluster.nodes[1].tcp,
        "GET",
        "/v1/api/presence/acme/rooms/lobby",
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    let listed: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut users: Vec<&str> =
        listed["users"].as_array().unwrap().iter().map(|u| u["user"].as_str().unwrap()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob", "carol"]);

    // Typing on one node shows on the other, aggregated with the local typists, and stops.
    alice.typing("lobby", true).await.unwrap();
    typing(&bob, "alice is typing…").await;
    carol_1.join("lobby").await.unwrap();
    carol_1.typing("lobby", true).await.unwrap();
    typing(&bob, "alice and carol are typing…").await;
    typing(&carol_0, "alice is typing…").await;
    alice.typing("lobby", false).await.unwrap();
    typing(&bob, "carol is typing…").await;
    carol_1.typing("lobby", false).await.unwrap();
    typing(&bob, "").await;
    carol_1.leave("lobby").await.unwrap();

    // Node 0 dies: its users (alice, and carol, whose node-1 device left) disappear for bob
    // once their entries lapse, without anyone saying goodbye.
    cluster.nodes[0].kill();
    sees(&bob, "lobby", &[("bob", Status::Online)]).await;
    drop((alice, carol_0, carol_1));
}

/// Receipts across a region (docs/receipts.md): alice's phone is on node 0, her laptop on node
/// 1; bob writes on node 0 in a room nobody on node 1 joined, carol writes on node 1. Counts,
/// mentions, marks (never backwards), ticks and privacy agree on both nodes, reads on either
/// node reach the other's devices, and all of it survives a restart of node 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_span_a_region_and_survive_a_node_restart() {
    use receipts_help::{counts, receipts_until, status, unread_until};
    const CHAT: &str = "chat:team";
    const SIDE: &str = "chat:side";
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().expect("start redis-server");
    let mut cluster = Cluster::empty();
    for _ in 0..2 {
        cluster.add_node_with(&redis, &[("EDGERELAY_RECEIPTS__INTERVAL_MS", "100")]).await;
    }
    let tokens: BTreeMap<&str, String> =
        ["alice", "bob", "carol", "dave"].into_iter().map(|sub| (sub, cluster.token(sub))).collect();
    let connect = |target: Target, sub: &str| Client::connect(target, ClientOptions::new(tokens[sub].clone()));
    // CHAT lives on node 0 only; SIDE spans both nodes.
    let mut phone = connect(cluster.quic(0), "alice").await.unwrap();
    phone.join(CHAT).await.unwrap();
    phone.join(SIDE).await.unwrap();
    let mut bob = connect(cluster.ws(0), "bob").await.unwrap();
    bob.join(CHAT).await.unwrap();
    let dave = connect(cluster.ws(0), "dave").await.unwrap();
    dave.join(SIDE).await.unwrap();
    let mut carol = connect(cluster.quic(1), "carol").await.unwrap();
    carol.join(SIDE).await.unwrap();
    dave.share_reads(false).await.unwrap();
    let mut laptop = connect(cluster.ws(1), "alice").await.unwrap();
    // The follows made on node 0 are in Redis once the joins' writes land.
    within("alice's follows on the other node", async {
        while laptop.sync_unread().await.unwrap().rooms.len() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    phone.sync_unread().await.unwrap();
    bob.sync_unread().await.unwrap();
    carol.sync_unread().await.unwrap();

    // Writers on both nodes; the laptop on node 1 counts both rooms and the mention.
    let mut chat = Vec::new();
    for i in 0..3 {
        chat.push(bob.publish(CHAT, &format!("b{i}"), Payload::from("\"hi\"")).await.unwrap());
    }
    let side = carol.publish_mentions(SIDE, "c0", "\"@alice look\"", &["alice"]).await.unwrap();
    let live = unread_until(&mut laptop, "node 1 counts both rooms", |u| u.total == 4 && u.mentions == 1).await;
    assert_eq!((counts(&live, CHAT), counts(&live, SIDE)), (Some((3, 0)), Some((1, 1))));
    let same = unread_until(&mut phone, "node 0 counts the same", |u| u.total == 4 && u.mentions == 1).await;
    assert_eq!((counts(&same, CHAT), counts(&same, SIDE)), (Some((3, 0)), Some((1, 1))));

    // A read on node 0 clears the badge on node 1 at once, and the writer's ticks follow.
    phone.mark_read(&[(CHAT, chat[1])]).await.unwrap();
    let after =
        unread_until(&mut laptop, "the phone's read on the other node", |u| counts(u, CHAT) == Some((1, 0))).await;
    assert_eq!(after.room(CHAT).unwrap().read, chat[1]);
    // A mark below is ignored on the other node too: marks never move back.
    laptop.mark_read(&[(CHAT, chat[0])]).await.unwrap();
    assert_eq!(counts(&phone.sync_unread().await.unwrap(), CHAT), Some((1, 0)));
    // A read on node 1 of bob's last message: bob (node 0) sees alice's read.
    laptop.mark_read(&[(CHAT, chat[2])]).await.unwrap();
    let ticks =
        receipts_until(&mut bob, "alice's read from the other node", |_, read_all, _| read_all >= chat[2].offset).await;
    assert_eq!(ticks.1, chat[2].offset);
    let (_, read_all, members) = status(&bob, CHAT).await;
    assert_eq!(read_all, chat[2].offset);
    assert_eq!(members.iter().find(|m| m.user == "alice").unwrap().read, Some(chat[2].offset));

    // SIDE: carol wrote on node 1; alice's phone and dave (who hides reads) confirm and read on
    // node 0. Carol sees everyone delivered, alice read, dave never read.
    phone.cursor(SIDE, side).await.unwrap();
    dave.cursor(SIDE, side).await.unwrap();
    dave.mark_read(&[(SIDE, side)]).await.unwrap();
    phone.mark_read(&[(SIDE, side)]).await.unwrap();
    let seen = receipts_until(&mut carol, "reads from the other node", |delivered_all, read_all, _| {
        delivered_all >= side.offset && read_all >= side.offset
    })
    .await;
    assert!(seen.2.iter().all(|m| m.user != "dave" || m.read.is_none()), "dave's read leaked: {:?}", seen.2);
    let (delivered_all, read_all, members) = status(&carol, SIDE).await;
    assert_eq!((delivered_all, read_all), (side.offset, side.offset));
    let dave_seen = members.iter().find(|m| m.user == "dave").unwrap();
    assert_eq!((dave_seen.delivered, dave_seen.read), (side.offset, None));
    let cleared =
        unread_until(&mut laptop, "the mention read on the other node", |u| u.mentions == 0 && u.total == 0).await;
    assert_eq!(counts(&cleared, SIDE), Some((0, 0)));
    drop((laptop, carol));

    // Node 1 restarts: what it serves comes from Redis, and it keeps following node 0.
    cluster.nodes[1].kill();
    cluster.nodes[1].start().await;
    let mut laptop = connect(cluster.ws(1), "alice").await.unwrap();
    let synced = laptop.sync_unread().await.unwrap();
    assert_eq!((synced.total, counts(&synced, CHAT), counts(&synced, SIDE)), (0, Some((0, 0)), Some((0, 0))));
    let more = bob.publish_mentions(CHAT, "b3", "\"@alice\"", &["alice"]).await.unwrap();
    let live =
        unread_until(&mut laptop, "node 0's message after node 1's restart", |u| u.total == 1 && u.mentions == 1).await;
    assert_eq!(live.room(CHAT).unwrap().top, more);
    let carol = connect(cluster.ws(1), "carol").await.unwrap();
    let (delivered_all, read_all, members) = status(&carol, SIDE).await;
    assert_eq!((delivered_all, read_all), (side.offset, side.offset));
    assert_eq!(members.iter().find(|m| m.user == "dave").unwrap().read, None, "privacy survives too");
    laptop.mark_read(&[(CHAT, more)]).await.unwrap();
    unread_until(&mut phone, "the restarted node's read on node 0", |u| u.total == 0 && u.mentions == 0).await;

    // Leaving on node 0 takes the room out of the laptop's totals on node 1.
    carol.publish(SIDE, "c1", Payload::from("\"more\"")).await.unwrap();
    unread_until(&mut laptop, "carol's message", |u| u.total == 1).await;
    phone.leave(SIDE).await.unwrap();
    unread_until(&mut laptop, "the leave on the other node", |u| u.total == 0).await;
    let synced = laptop.sync_unread().await.unwrap();
    assert_eq!((synced.total, synced.room(SIDE).is_none()), (0, true), "no longer followed");
}

/// The figure in docs/performance.md: `sync` on node 1 for a user following 500 rooms, each with
/// one unread message, that only node 0 holds (marks, mentions and tops all come from Redis).
/// Run: `cargo test --test cluster -- --ignored --nocapture region_sync_500_rooms_figure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load figure; run by hand (docs/performance.md)"]
async fn region_sync_500_rooms_figure() {
    use edgerelay::proto::Codec;
    let _turn = ONE_AT_A_TIME.lock().await;
    let redis = RedisServer::start().expect("start redis-server");
    let mut cluster = Cluster::empty();
    for _ in 0..2 {
        cluster.add_node_with(&redis, &[("EDGERELAY_LIMITS__MAX_ROOMS_PER_CONNECTION", "500")]).await;
    }
    let connect = |target: Target, sub: &str| Client::connect(target, ClientOptions::new(cluster.token(sub)));
    let alice = connect(cluster.quic(0), "alice").await.unwrap();
    let bob = connect(cluster.quic(0), "bob").await.unwrap();
    for i in 0..500 {
        let room = format!("chat:r{i}");
        alice.join(&room).await.unwrap();
        bob.join(&room).await.unwrap();
        bob.publish(&room, "m", Payload::from("\"hi\"")).await.unwrap();
    }
    for codec in [Codec::Postcard, Codec::Json] {
        let mut laptop =
            Client::connect(cluster.ws(1), ClientOptions::new(cluster.token("alice")).codec(codec)).await.unwrap();
        for _ in 0..3 {
            let (ms, frames, bytes) = receipts_help::timed_sync(&mut laptop, codec, 500).await;
            println!(
                "region sync of 500 rooms on the other node ({codec:?}): {ms:.1} ms, {frames} frames, {bytes} bytes"
            );
        }
    }
}
