//! Presence and typing end to end: a real relay on loopback and real clients over QUIC
//! (datagrams) and WebSocket (coalesced frames). Two users with two devices each; a device that
//! dies without closing; heavy datagram loss; last seen and privacy across a restart.

mod common;

use std::time::Duration;

use common::{TestRelay, Transport, VARIANTS, start_with, within};
use edgerelay::client::{Client, ClientOptions};
use edgerelay::config::Config;
use edgerelay::proto::{Codec, PresenceEntry, Status};

const API_KEY: &str = "presence-test-api-key-0123";
/// Generous upper bound for anything that should happen "soon" on loopback.
const SOON: Duration = Duration::from_secs(10);

fn summary(entries: &[PresenceEntry]) -> Vec<(String, Status, Option<String>)> {
    entries.iter().map(|e| (e.user.clone(), e.status, e.custom.clone())).collect()
}

/// Waits until the client sees exactly these members, with these statuses.
async fn expect_members(client: &Client, room: &str, want: &[(&str, Status)]) {
    let want: Vec<(String, Status)> = want.iter().map(|(u, s)| (u.to_string(), *s)).collect();
    let matches = |entries: Vec<PresenceEntry>| entries.into_iter().map(|e| (e.user, e.status)).collect::<Vec<_>>();
    let ok = client.wait_presence(room, SOON, |v, _| matches(v.entries()) == want).await;
    assert!(ok, "{} sees {:?}, expected {want:?}", client.welcome().user, summary(&client.presence(room)));
}

/// Repeats `typing start` (as the debounce does while keys are pressed) until `watcher` shows `text`.
async fn type_until(typist: &Client, room: &str, watcher: &Client, text: &str) {
    for _ in 0..20 {
        typist.typing(room, true).await.unwrap();
        if watcher
            .wait_presence(room, Duration::from_millis(500), |v, now| {
                v.typing_text(&watcher.welcome().user, now) == text
            })
            .await
        {
            return;
        }
    }
    panic!("{} never showed {text:?}: {:?}", watcher.welcome().user, watcher.typing_text(room));
}

async fn expect_typing(client: &Client, room: &str, text: &str) {
    let me = client.welcome().user.clone();
    let ok = client.wait_presence(room, SOON, |v, now| v.typing_text(&me, now) == text).await;
    assert!(ok, "{me} shows {:?}, expected {text:?}", client.typing_text(room));
}

/// `GET` on the server API with the test key; asserts 200 and parses the JSON body.
async fn api<T: serde::de::DeserializeOwned>(relay: &edgerelay::relay::Relay, path: &str) -> T {
    let auth = format!("Bearer {API_KEY}");
    let (status, body) = common::http_request(relay.tcp_addr(), "GET", path, &[("Authorization", &auth)], "").await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

/// A user's status from the server API.
async fn api_user(relay: &edgerelay::relay::Relay, tenant: &str, user: &str) -> PresenceEntry {
    api(relay, &format!("/v1/api/presence/{tenant}/users/{user}")).await
}

/// A room's present members from the server API.
async fn api_room(relay: &edgerelay::relay::Relay, tenant: &str, room: &str) -> Vec<PresenceEntry> {
    let body: serde_json::Value = api(relay, &format!("/v1/api/presence/{tenant}/rooms/{room}")).await;
    serde_json::from_value(body["users"].clone()).unwrap()
}

/// Polls the API until the user's status is `status`; returns that entry.
async fn api_user_until(relay: &edgerelay::relay::Relay, user: &str, status: Status) -> PresenceEntry {
    within("user status", async {
        loop {
            let entry = api_user(relay, "acme", user).await;
            if entry.status == status {
                return entry;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

/// Fast refreshes, a short typing TTL and the server API on.
fn presence_config(c: &mut Config) {
    c.presence.refresh_ms = 250;
    c.presence.typing_ttl_ms = 1_500;
    c.api.key = Some(API_KEY.into());
}

async fn presence_relay() -> TestRelay {
    start_with(presence_config).await
}

#[tokio::test]
async fn two_users_with_two_devices_each_see_status_typing_and_leave() {
    let relay = presence_relay().await;
    for (i, (transport, codec)) in VARIANTS.iter().copied().enumerate() {
        let room = format!("team-{i}");
        let connect = |user: &'static str| relay.connect(transport, codec, user, "acme", &["*"]);
        let (a1, a2, b1, b2) =
            (connect("alice").await, connect("alice").await, connect("bob").await, connect("bob").await);
        for c in [&a1, &a2, &b1, &b2] {
            c.join(&room).await.unwrap();
        }
        let all = [&a1, &a2, &b1, &b2];
        for c in all {
            expect_members(c, &room, &[("alice", Status::Online), ("bob", Status::Online)]).await;
        }

        // A status set on one device is the user's, seen by everyone (custom text included).
        a2.set_status(Status::Busy, Some("in a call")).await.unwrap();
        for c in all {
            expect_members(c, &room, &[("alice", Status::Busy), ("bob", Status::Online)]).await;
        }
        assert_eq!(b1.presence(&room)[0].custom.as_deref(), Some("in a call"));

        // Typing on one device reaches everyone but its own user; then both of alice's devices.
        type_until(&b1, &room, &a1, "bob is typing…").await;
        expect_typing(&a2, &room, "bob is typing…").await;
        expect_typing(&b2, &room, "").await;
        type_until(&a1, &room, &b2, "alice is typing…").await;
        type_until(&a2, &room, &b2, "alice is typing…").await;
        expect_typing(&a1, &room, "bob is typing…").await;
        let watcher = Client::connect(
            relay.target(transport),
            ClientOptions::new(relay.token("carol", "acme", &["*"])).codec(codec),
        )
        .await
        .unwrap();
        watcher.join(&room).await.unwrap();
        expect_typing(&watcher, &room, "bob and alice are typing…").await;
        // Alice stops on one device: she still types on the other.
        a1.typing(&room, false).await.unwrap();
        b1.typing(&room, false).await.unwrap();
        expect_typing(&watcher, &room, "alice is typing…").await;
        a2.typing(&room, false).await.unwrap();
        expect_typing(&watcher, &room, "").await;

        // Leaving on one device keeps the user present; leaving on both removes them.
        a1.leave(&room).await.unwrap();
        expect_members(&b1, &room, &[("alice", Status::Busy), ("bob", Status::Online), ("carol", Status::Online)])
            .await;
        a2.leave(&room).await.unwrap();
        for c in [&b1, &b2, &watcher] {
            expect_members(c, &room, &[("bob", Status::Online), ("carol", Status::Online)]).await;
        }
        // Closing a connection is leaving too.
        b2.close().await;
        expect_members(&watcher, &room, &[("bob", Status::Online), ("carol", Status::Online)]).await;
        b1.close().await;
        expect_members(&watcher, &room, &[("carol", Status::Online)]).await;
        for c in [a1, a2, watcher] {
            c.close().await;
        }
    }
}

#[tokio::test]
async fn with_a_leave_grace_a_reconnect_is_invisible_and_a_departure_shows_after_it() {
    let relay = start_with(|c| {
        presence_config(c);
        c.presence.leave_grace_ms = 2_000;
    })
    .await;
    let watcher = relay.connect(Transport::WebSocket, Codec::Json, "alice", "acme", &["*"]).await;
    watcher.join("blip").await.unwrap();
    let bob = relay.connect(Transport::Quic, Codec::Postcard, "bob", "acme", &["*"]).await;
    bob.join("blip").await.unwrap();
    expect_members(&watcher, "blip", &[("alice", Status::Online), ("bob", Status::Online)]).await;

    // Bob's connection goes and a new one rejoins at once, as after a network blip, while the
    // watcher looks out for bob going offline.
    let watch = watcher.wait_presence("blip", Duration::from_millis(3_000), |v, _| v.status("bob") == Status::Offline);
    let reconnect = async {
        bob.close().await;
        let bob = relay.connect(Transport::Quic, Codec::Postcard, "bob", "acme", &["*"]).await;
        bob.join("blip").await.unwrap();
        bob
    };
    let (offline_seen, bob) = tokio::join!(watch, reconnect);
    assert!(!offline_seen, "the reconnect showed bob leaving: {:?}", summary(&watcher.presence("blip")));
    assert!(watcher.presence_sync("blip").await.unwrap().iter().any(|e| e.user == "bob" && e.status == Status::Online));

    // Bob goes for good: the room sees him leave once the grace has passed.
    bob.close().await;
    expect_members(&watcher, "blip", &[("alice", Status::Online)]).await;
}

#[tokio::test]
async fn a_killed_clients_typing_and_presence_clear_by_themselves() {
    let relay = start_with(|c| {
        presence_config(c);
        c.limits.idle_timeout_ms = 4_000;
        c.limits.ping_interval_ms = 1_000;
    })
    .await;
    let watcher = relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &["*"]).await;
    watcher.join("ward").await.unwrap();
    let link = common::cut_link(relay.relay.udp_addr()).await;
    let target = relay.target_at(Transport::Quic, link.addr);
    let doomed = Client::connect(target, ClientOptions::new(relay.token("bob", "acme", &["*"]))).await.unwrap();
    doomed.join("ward").await.unwrap();
    expect_members(&watcher, "ward", &[("alice", Status::Online), ("bob", Status::Online)]).await;
    type_until(&doomed, "ward", &watcher, "bob is typing…").await;

    // The device dies: not a packet more, no close.
    link.cut();
    // Typing ends at the typing TTL (1.5 s), well before the idle timeout (4 s) ends the
    // connection, and presence at the idle timeout. The bounds leave room for a slow machine;
    // they are not performance claims.
    let me = watcher.welcome().user.clone();
    let typing_gone =
        watcher.wait_presence("ward", Duration::from_millis(2_500), |v, now| v.typing_text(&me, now).is_empty()).await;
    assert!(typing_gone, "typing still shown: {:?}", watcher.typing_text("ward"));
    let gone = watcher
        .wait_presence("ward", Duration::from_millis(4_000 + 3_000), |v, _| v.status("bob") == Status::Offline)
        .await;
    assert!(gone, "bob still present: {:?}", summary(&watcher.presence("ward")));
    drop(doomed);
}

#[tokio::test]
async fn every_view_converges_to_the_truth_despite_heavy_datagram_loss() {
    const LOSS: f64 = 0.5;
    const REFRESH_MS: u64 = 200;
    // Each refresh reaches a client with probability 1 - LOSS; a client that missed something
    // asks a snapshot on the stream (reliable). 25 refresh periods miss every refresh with
    // probability 0.5^25 (about 3e-8) per client.
    const BOUND: Duration = Duration::from_millis(25 * REFRESH_MS);
    let relay = start_with(|c| {
        c.presence.refresh_ms = REFRESH_MS;
        c.presence.test_datagram_loss = LOSS;
        c.api.key = Some(API_KEY.into());
    })
    .await;
    let users = ["u0", "u1", "u2", "u3", "u4", "u5"];
    let mut clients = Vec::new();
    for (i, user) in users.iter().enumerate() {
        let transport = if i < 4 { Transport::Quic } else { Transport::WebSocket };
        let c = relay.connect(transport, Codec::Postcard, user, "acme", &["*"]).await;
        c.join("lossy").await.unwrap();
        clients.push(c);
    }
    // Many changes while datagrams are lost both ways: statuses, custom texts, a leave.
    let statuses = [Status::Away, Status::Busy, Status::Online, Status::Busy];
    for round in 0..4 {
        for (i, c) in clients.iter().enumerate() {
            let status = statuses[(i + round) % statuses.len()];
            c.set_status(status, Some(&format!("r{round}"))).await.unwrap();
            c.activity().await.unwrap();
        }
    }
    clients[5].leave("lossy").await.unwrap();
    clients[0].set_status(Status::Offline, None).await.unwrap();
    // A pong on the control stream means every earlier control frame was handled.
    for c in &clients {
        c.ping().await.unwrap();
    }

    let truth = summary(&api_room(&relay.relay, "acme", "lossy").await);
    assert_eq!(truth.len(), 4, "u0 appears offline and u5 left: {truth:?}");
    assert!(truth.iter().all(|(_, _, custom)| custom.as_deref() == Some("r3")));
    let started = std::time::Instant::now();
    for c in &clients[..5] {
        let converged = c.wait_presence("lossy", BOUND, |v, _| summary(&v.entries()) == truth).await;
        assert!(converged, "{}: {:?} != {truth:?} after {BOUND:?}", c.welcome().user, summary(&c.presence("lossy")));
    }
    eprintln!("all views converged {:?} after the last change (bound {BOUND:?})", started.elapsed());
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metrics.contains("edgerelay_datagram_drops_total{reason=\"test_loss\"}"), "the test lost no datagram");
}

#[tokio::test]
async fn last_seen_and_privacy_survive_a_restart_and_show_in_the_api() {
    let first = presence_relay().await;
    let never = api_user(&first.relay, "acme", "dora").await;
    assert_eq!((never.status, never.last_seen), (Status::Offline, 0));
    let dora = first.connect(Transport::Quic, Codec::Json, "dora", "acme", &["*"]).await;
    dora.set_status(Status::Busy, Some("focus")).await.unwrap();
    let live = api_user_until(&first.relay, "dora", Status::Busy).await;
    assert_eq!(live.custom.as_deref(), Some("focus"));
    dora.privacy(false, true).await.unwrap();
    dora.ping().await.unwrap();
    dora.close().await;
    let seen = api_user_until(&first.relay, "dora", Status::Offline).await;
    assert!(seen.last_seen > 0);
    // Another tenant's dora was never seen.
    assert_eq!(api_user(&first.relay, "globex", "dora").await.last_seen, 0);

    let TestRelay { relay, dir } = first;
    relay.shutdown().await;
    let mut config = common::test_config(dir.path());
    presence_config(&mut config);
    let second = TestRelay { relay: edgerelay::relay::Relay::start(config).await.unwrap(), dir };
    let after = api_user(&second.relay, "acme", "dora").await;
    assert_eq!((after.status, after.last_seen), (Status::Offline, seen.last_seen), "last seen kept across the restart");

    // The privacy setting came back too: dora's typing is not shown.
    let dora = second.connect(Transport::Quic, Codec::Json, "dora", "acme", &["*"]).await;
    let eve = second.connect(Transport::WebSocket, Codec::Json, "eve", "acme", &["*"]).await;
    dora.join("desk").await.unwrap();
    eve.join("desk").await.unwrap();
    expect_members(&eve, "desk", &[("dora", Status::Online), ("eve", Status::Online)]).await;
    eve.typing("desk", true).await.unwrap();
    expect_typing(&dora, "desk", "eve is typing…").await;
    for _ in 0..5 {
        dora.typing("desk", true).await.unwrap();
    }
    dora.ping().await.unwrap();
    eve.ping().await.unwrap();
    assert!(
        !eve.wait_presence("desk", Duration::from_millis(500), |v, now| !v.typing_text("eve", now).is_empty()).await,
        "hidden typing was shown"
    );
    // Hiding presence shows dora offline to others, and in the API.
    dora.privacy(true, true).await.unwrap();
    expect_members(&eve, "desk", &[("eve", Status::Online)]).await;
    let room = summary(&api_room(&second.relay, "acme", "desk").await);
    assert_eq!(room, vec![("eve".to_owned(), Status::Online, None)], "hidden users are not listed");
    assert_eq!(
        common::http_request(second.relay.tcp_addr(), "GET", "/v1/api/presence/acme/rooms/desk", &[], "").await.0,
        401
    );
}

#[tokio::test]
async fn updates_are_rate_limited_per_device_and_scoped_by_tenant() {
    let relay = start_with(|c| {
        presence_config(c);
        c.presence.rate = 1;
        c.presence.burst = 2;
    })
    .await;
    let fast = relay.connect(Transport::WebSocket, Codec::Json, "fast", "acme", &["*"]).await;
    let other = relay.connect(Transport::Quic, Codec::Postcard, "fast", "globex", &["*"]).await;
    fast.join("hall").await.unwrap();
    other.join("hall").await.unwrap();
    // Ten changes in a burst: the bucket (2, then 1 per second) takes the first ones only.
    for i in 0..10 {
        fast.set_status(Status::Busy, Some(&format!("r{i}"))).await.unwrap();
    }
    fast.ping().await.unwrap();
    let entry = api_user(&relay.relay, "acme", "fast").await;
    assert_eq!(entry.status, Status::Busy);
    assert_ne!(entry.custom.as_deref(), Some("r9"), "the end of the burst was dropped");
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metrics.contains("edgerelay_presence_ignored_total{reason=\"rate_limited\"}"));
    // The same user id and room name in another tenant is someone else, somewhere else.
    expect_members(&other, "hall", &[("fast", Status::Online)]).await;
    assert_eq!(api_user(&relay.relay, "globex", "fast").await.custom, None);
}

// ---- batched presence deltas and quiet rooms ----

/// A hand-driven watcher (JSON codec, user `raw`) that joined `room` and hands over every
/// frame the relay sends it: QUIC control stream and datagrams, or WebSocket messages.
async fn raw_watcher(
    relay: &TestRelay,
    transport: Transport,
    room: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<edgerelay::proto::ServerFrame> {
    use edgerelay::proto::{ClientFrame, ServerFrame};
    use futures_util::{SinkExt, StreamExt};
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let join = ClientFrame::Join { req: 1, room: room.into(), since: None };
    let decode = |body: &[u8]| Codec::Json.decode::<ServerFrame>(body).unwrap();
    match transport {
        Transport::WebSocket => {
            let url = format!("ws://{}/v1/ws", relay.relay.tcp_addr());
            let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            for frame in [relay.raw_hello(), join] {
                let text = String::from_utf8(Codec::Json.encode(&frame).to_vec()).unwrap();
                ws.send(tokio_tungstenite::tungstenite::Message::text(text)).await.unwrap();
            }
            tokio::spawn(async move {
                while let Some(Ok(message)) = ws.next().await {
                    if let tokio_tungstenite::tungstenite::Message::Text(text) = message
                        && tx.send(decode(text.as_bytes())).is_err()
                    {
                        return;
                    }
                }
            });
        }
        _ => {
            let mut quic = common::raw_quic(relay).await;
            quic.hello(relay).await;
            quic.send_body(&Codec::Json.encode(&join)).await;
            let conn = quic.conn.clone();
            let datagrams = tx.clone();
            tokio::spawn(async move {
                while let Ok(body) = conn.read_datagram().await {
                    if datagrams.send(decode(&body)).is_err() {
                        return;
                    }
                }
            });
            tokio::spawn(async move {
                let mut reader = edgerelay::proto::FrameReader::new(1 << 20);
                // The whole connection lives here: dropping its send side would end it.
                let mut quic = quic;
                while let Ok(Some(body)) = edgerelay::transport::quic::read_frame(&mut quic.recv, &mut reader).await {
                    if tx.send(decode(&body)).is_err() {
                        return;
                    }
                }
            });
        }
    }
    rx
}

#[tokio::test]
async fn joins_within_one_interval_reach_a_member_as_one_batch_and_its_view_converges() {
    use edgerelay::proto::ServerFrame;
    // A long interval, so that joins made together fall into one batch on a busy machine too.
    let relay = start_with(|c| {
        presence_config(c);
        c.presence.refresh_ms = 60_000;
        c.presence.batch_ms = 1_500;
    })
    .await;
    for (i, transport) in [Transport::Quic, Transport::WebSocket].into_iter().enumerate() {
        let room = format!("batch-{i}");
        let mut watcher = raw_watcher(&relay, transport, &room).await;
        let mut view: std::collections::BTreeMap<String, PresenceEntry> = Default::default();
        fn apply(view: &mut std::collections::BTreeMap<String, PresenceEntry>, entry: PresenceEntry) {
            if view.get(&entry.user).is_none_or(|held| held.version < entry.version) {
                view.insert(entry.user.clone(), entry);
            }
        }
        // The watcher's own snapshot first: it is in the room.
        within("snapshot", async {
            loop {
                if let Some(ServerFrame::PresenceSnapshot { users, .. }) = watcher.recv().await {
                    users.into_iter().for_each(|e| apply(&mut view, e));
                    return;
                }
            }
        })
        .await;
        let names: Vec<String> = (0..5).map(|n| format!("joiner{n}")).collect();
        let mut joiners = Vec::new();
        for name in &names {
            joiners.push(relay.connect(transport, Codec::Postcard, name, "acme", &["*"]).await);
        }
        futures_util::future::join_all(joiners.iter().map(|c| c.join(&room))).await;
        // Every joiner shows online; count the frames that told the watcher so.
        let (mut frames, mut batches) = (0, 0);
        let online = |view: &std::collections::BTreeMap<String, PresenceEntry>| {
            names.iter().all(|n| view.get(n).is_some_and(|e| e.status == Status::Online))
        };
        within("every joiner online", async {
            while !online(&view) {
                match watcher.recv().await.expect("watcher open") {
                    ServerFrame::Presence { entry, .. } => {
                        frames += 1;
                        apply(&mut view, entry);
                    }
                    ServerFrame::PresenceBatch { room: r, entries } => {
                        assert_eq!(r, room);
                        frames += 1;
                        batches += 1;
                        entries.into_iter().for_each(|e| apply(&mut view, e));
                    }
                    _ => {}
                }
            }
        })
        .await;
        assert!(batches >= 1 && frames < names.len(), "{transport:?}: {frames} frames ({batches} batches) for 5 joins");
        // Leaving is batched too, and nothing is lost: the view comes back to the watcher alone.
        for joiner in joiners {
            joiner.close().await;
        }
        within("every joiner offline", async {
            while view.values().filter(|e| e.status != Status::Offline).count() > 1 {
                match watcher.recv().await.expect("watcher open") {
                    ServerFrame::Presence { entry, .. } => apply(&mut view, entry),
                    ServerFrame::PresenceBatch { entries, .. } => entries.into_iter().for_each(|e| apply(&mut view, e)),
                    _ => {}
                }
            }
        })
        .await;
        let present: Vec<&str> =
            view.values().filter(|e| e.status != Status::Offline).map(|e| e.user.as_str()).collect();
        assert_eq!(present, vec!["raw"], "{transport:?}");
    }
}

#[tokio::test]
async fn a_quiet_room_counts_its_members_without_announcing_them() {
    let relay = start_with(|c| {
        presence_config(c);
        c.presence.quiet_rooms = vec!["live:*".into()];
    })
    .await;
    for (i, (transport, codec)) in VARIANTS.iter().copied().enumerate() {
        let (quiet, loud) = (format!("live:show-{i}"), format!("chat-{i}"));
        let viewer = relay.connect(transport, codec, "viewer", "acme", &["*"]).await;
        viewer.join(&quiet).await.unwrap();
        viewer.join(&loud).await.unwrap();
        let mut others = Vec::new();
        for n in 0..3 {
            let other = relay.connect(transport, codec, &format!("fan{n}"), "acme", &["*"]).await;
            other.join(&quiet).await.unwrap();
            other.join(&loud).await.unwrap();
            others.push(other);
        }
        // The ordinary room lists everyone; the quiet one lists nobody but counts all four.
        let everyone = [("fan0", Status::Online), ("fan1", Status::Online), ("fan2", Status::Online)];
        expect_members(&viewer, &loud, &[everyone.as_slice(), &[("viewer", Status::Online)]].concat()).await;
        let counted = viewer.wait_presence(&quiet, SOON, |v, _| v.count() == 4).await;
        assert!(counted, "{transport:?}: the quiet room's count is {}", viewer.presence_count(&quiet));
        assert!(viewer.presence(&quiet).is_empty(), "{transport:?}: {:?}", summary(&viewer.presence(&quiet)));
        // A leave is counted too, and still not announced.
        others.pop().unwrap().close().await;
        let counted = viewer.wait_presence(&quiet, SOON, |v, _| v.count() == 3).await;
        assert!(counted, "{transport:?}: the quiet room's count is {}", viewer.presence_count(&quiet));
        assert!(viewer.presence(&quiet).is_empty());
        // The server API still lists the members.
        assert_eq!(api_room(&relay.relay, "acme", &quiet).await.len(), 3);
    }
}

#[tokio::test]
async fn a_room_above_the_list_limit_is_counted_and_listed_again_once_it_shrinks() {
    let relay = start_with(|c| {
        presence_config(c);
        c.presence.list_max_members = 4;
    })
    .await;
    for (i, (transport, codec)) in VARIANTS.iter().copied().enumerate() {
        let room = format!("crowd-{i}");
        let viewer = relay.connect(transport, codec, "viewer", "acme", &["*"]).await;
        viewer.join(&room).await.unwrap();
        let mut others = Vec::new();
        for n in 0..3 {
            let other = relay.connect(transport, codec, &format!("fan{n}"), "acme", &["*"]).await;
            other.join(&room).await.unwrap();
            others.push(other);
        }
        // Four users: at the limit, listed.
        let four = [("fan0", Status::Online), ("fan1", Status::Online), ("fan2", Status::Online)];
        expect_members(&viewer, &room, &[four.as_slice(), &[("viewer", Status::Online)]].concat()).await;
        // Six: counted, and nobody listed any more, for members and joiners alike.
        for n in 3..5 {
            let other = relay.connect(transport, codec, &format!("fan{n}"), "acme", &["*"]).await;
            other.join(&room).await.unwrap();
            others.push(other);
        }
        for client in [&viewer, &others[4]] {
            let counted = client.wait_presence(&room, SOON, |v, _| v.count() == 6 && v.entries().is_empty()).await;
            assert!(
                counted,
                "{transport:?}: count {}, listed {:?}",
                client.presence_count(&room),
                client.presence(&room)
            );
        }
        // Back to three (three quarters of the limit): listed again.
        for _ in 0..3 {
            others.pop().unwrap().close().await;
        }
        let three = [("fan0", Status::Online), ("fan1", Status::Online), ("viewer", Status::Online)];
        expect_members(&viewer, &room, &three).await;
    }
}
