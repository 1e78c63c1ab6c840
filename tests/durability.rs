//! Zero loss, end to end: acked means durable across SIGKILL, resume replays exactly what was
//! missed under a reconnect storm, and retried publishes are stored and delivered once.

mod common;
#[path = "common/process.rs"]
mod process;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::{Transport, start, within};
use edgerelay::client::resilient::{Reconnect, Resilient, ResilientEvent};
use edgerelay::client::{Client, ClientOptions};
use edgerelay::proto::{Codec, Payload, Position};

use process::RelayProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_repeated_sigkill_exactly_once_and_live_clients_resume() {
    let dir = tempfile::tempdir().unwrap();
    // Delivery after the commit: no crash can lose what a subscriber saw, so the room keeps
    // its epoch (with the default early delivery a crash starts a new one, tested below).
    let mut relay = RelayProcess::new(dir.path()).with_env("EDGERELAY_STORE__DELIVER_BEFORE_COMMIT", "false");
    relay.start().await;
    let pin = relay.cert_pin().await;
    let (quic, ws) = (relay.quic_target(vec![pin]), relay.ws_target());
    let fast = Reconnect {
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(500),
        ..Reconnect::default()
    };

    let mut subscriber = Resilient::start(quic, ClientOptions::new(relay.token("sub")), fast.clone());
    subscriber.join("ledger");
    // The join must be done before the first publish, or the subscriber rightly starts after it.
    within("subscriber joined", async {
        while subscriber.positions().get("ledger").is_none_or(Option::is_none) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let publisher = Arc::new(Resilient::start(ws, ClientOptions::new(relay.token("pub")), fast));

    // A steady publisher: one message every 4 ms, each awaited in its own task until acked.
    const TOTAL: usize = 600;
    let publishing = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            let mut acks = tokio::task::JoinSet::new();
            for i in 1..=TOTAL {
                let publisher = publisher.clone();
                acks.spawn(async move { publisher.publish("ledger", &format!("m{i}"), Payload::from("1")).await });
                tokio::time::sleep(Duration::from_millis(4)).await;
            }
            let mut positions = Vec::new();
            while let Some(ack) = acks.join_next().await {
                positions.push(ack.unwrap().expect("acked eventually"));
            }
            positions
        })
    };
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        relay.kill();
        tokio::time::sleep(Duration::from_millis(200)).await;
        relay.start().await;
    }
    let positions: Vec<Position> = within("every publish acked", publishing).await.unwrap();
    let epochs: BTreeSet<u64> = positions.iter().map(|p| p.epoch).collect();
    assert_eq!(epochs.len(), 1, "the room kept its epoch across kills: {epochs:?}");
    let offsets: BTreeSet<u64> = positions.iter().map(|p| p.offset).collect();
    assert_eq!(offsets, (1..=TOTAL as u64).collect(), "each publish got its own offset, contiguous");

    let history = relay.history_ids("ledger").await;
    let stored: Vec<u64> = history.iter().map(|h| h.0).collect();
    assert_eq!(stored, (1..=TOTAL as u64).collect::<Vec<_>>(), "history is contiguous");
    let ids: BTreeSet<&str> = history.iter().map(|h| h.1.as_str()).collect();
    assert_eq!(ids.len(), TOTAL, "every acked id stored exactly once");

    let mut expected = 1;
    let received = tokio::time::timeout(Duration::from_secs(30), async {
        while expected <= TOTAL as u64 {
            match subscriber.next_event().await.expect("subscriber running") {
                ResilientEvent::Message(m) => {
                    assert_eq!(m.position.offset, expected, "in order, no gap, no duplicate");
                    expected += 1;
                }
                other => eprintln!("subscriber: {other:?}"),
            }
        }
    })
    .await;
    assert!(received.is_ok(), "subscriber stopped at offset {expected}: {:?}", subscriber.positions());
    subscriber.close().await;
}

/// Like `common::within`, with the storm's wider bound.
async fn within_storm<T>(what: &str, fut: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(90), fut).await.unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_storm_every_subscriber_ends_with_each_offset_exactly_once() {
    let relay = common::start_with(|c| {
        c.limits.publish_rate = 10_000;
        c.limits.publish_burst = 10_000;
    })
    .await;
    let publisher = relay.connect(Transport::Quic, Codec::Postcard, "pub", "acme", &["*"]).await;
    const TOTAL: u64 = 1500;
    let publishing = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(1));
        for i in 1..=TOTAL {
            interval.tick().await;
            publisher.publish("storm", &format!("m{i}"), Payload::from("1")).await.unwrap();
        }
        publisher.close().await;
    });
    let mut subscribers = tokio::task::JoinSet::new();
    for n in 0..10u64 {
        let transport = if n % 2 == 0 { Transport::Quic } else { Transport::WebSocket };
        let target = relay.target(transport);
        let token = relay.token(&format!("sub{n}"), "acme", &["*"]);
        subscribers.spawn(async move {
            let mut seen: Vec<u64> = Vec::new();
            let mut last: Option<Position> = None;
            let mut reconnects = 0;
            while seen.last() != Some(&TOTAL) {
                let mut client = Client::connect(target.clone(), ClientOptions::new(token.clone())).await.unwrap();
                // The first join asks for everything from the start (offset 0, any epoch), so the
                // whole range is checked; every later one resumes from the last offset seen.
                let since = last.or(Some(Position { epoch: 0, offset: 0 }));
                let joined = client.join_since("storm", since).await.unwrap();
                assert!(joined.recovered, "history covers every gap here");
                // Read a few messages, then drop the connection without leaving.
                let take = 20 + (n * 7 + reconnects * 13) % 80;
                for _ in 0..take {
                    let Ok(m) = tokio::time::timeout(Duration::from_secs(5), client.next_message()).await else {
                        break;
                    };
                    let m = m.unwrap();
                    seen.push(m.position.offset);
                    last = Some(m.position);
                    if m.position.offset == TOTAL {
                        break;
                    }
                }
                client.abort();
                reconnects += 1;
            }
            (seen, reconnects, transport)
        });
    }
    // Each of the 1,500 publishes waits for its durable ack: on a loaded 2-core machine that can
    // take longer than `within`'s 20 s, so the storm gets a wider (still finite) bound.
    within_storm("publisher done", publishing).await.unwrap();
    while let Some(result) = within_storm("subscriber done", subscribers.join_next()).await {
        let (seen, reconnects, transport) = result.unwrap();
        assert!(reconnects >= 10, "the storm reconnected often: {reconnects}");
        assert!(
            seen == (1..=TOTAL).collect::<Vec<_>>(),
            "{transport:?}: offsets 1..N exactly once, in order: {:?}",
            &seen[..seen.len().min(30)]
        );
    }
}

#[tokio::test]
async fn a_retried_publish_is_stored_and_delivered_once_even_across_a_reconnect() {
    let relay = start().await;
    for (transport, codec) in common::VARIANTS {
        let room = format!("retry-{transport:?}-{codec:?}");
        let mut watcher = relay.connect(transport, codec, "watcher", "acme", &["*"]).await;
        watcher.join(&room).await.unwrap();
        let token = relay.token("alice", "acme", &["*"]);
        let first_conn = relay.try_connect(transport, codec, &token).await.unwrap();
        let original = first_conn.publish(&room, "order-42", Payload::from("\"pay\"")).await.unwrap();
        // The ack was "lost": the client retries the same id many times, then again on a new
        // connection (as after a reconnect).
        for _ in 0..20 {
            assert_eq!(first_conn.publish(&room, "order-42", Payload::from("\"pay\"")).await.unwrap(), original);
        }
        first_conn.close().await;
        let second_conn = relay.try_connect(transport, codec, &token).await.unwrap();
        for _ in 0..5 {
            assert_eq!(second_conn.publish(&room, "order-42", Payload::from("\"pay\"")).await.unwrap(), original);
        }
        let next = second_conn.publish(&room, "order-43", Payload::from("\"next\"")).await.unwrap();
        assert_eq!(next.offset, original.offset + 1, "retries took no offsets");
        let got: Vec<String> = within("watcher", async {
            let mut ids = Vec::new();
            while ids.len() < 2 {
                ids.push(watcher.next_message().await.unwrap().id);
            }
            ids
        })
        .await;
        assert_eq!(got, vec!["order-42", "order-43"], "delivered once");
        let page = second_conn.history(&room, None, 100).await.unwrap();
        let ids: Vec<&str> = page.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, vec!["order-42", "order-43"], "stored once");
        second_conn.close().await;
        watcher.close().await;
    }
}

#[tokio::test]
async fn history_pages_backwards_and_followed_rooms_list_what_a_user_missed() {
    let relay = start().await;
    let alice = relay.connect(Transport::Quic, Codec::Json, "alice", "acme", &["*"]).await;
    for room in ["a", "b"] {
        alice.join(room).await.unwrap();
    }
    alice.close().await;
    let bob = relay.connect(Transport::WebSocket, Codec::Postcard, "bob", "acme", &["*"]).await;
    for i in 1..=25 {
        bob.publish("a", &format!("a{i}"), Payload::from("1")).await.unwrap();
    }
    bob.publish("b", "b1", Payload::from("1")).await.unwrap();
    // "Load earlier messages": pages of 10 from the newest, backwards.
    let mut offsets = Vec::new();
    let mut before = None;
    loop {
        let page = bob.history("a", before, 10).await.unwrap();
        if page.messages.is_empty() {
            break;
        }
        before = page.messages.first().map(|m| m.offset);
        let mut chunk: Vec<u64> = page.messages.iter().map(|m| m.offset).collect();
        chunk.append(&mut offsets);
        offsets = chunk;
    }
    assert_eq!(offsets, (1..=25).collect::<Vec<_>>());
    // Alice was offline; on her next connection the resilient client asks which rooms she
    // follows and replays, in order, what she missed in each.
    let mut back = Resilient::start(
        relay.target(Transport::Quic),
        ClientOptions::new(relay.token("alice", "acme", &["*"])),
        Reconnect { follow_rooms: true, ..Reconnect::default() },
    );
    let mut missed: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
    within("offline replay", async {
        while missed.values().map(Vec::len).sum::<usize>() < 26 {
            let m = back.next_message().await.unwrap();
            missed.entry(m.room).or_default().push(m.position.offset);
        }
    })
    .await;
    assert_eq!(missed["a"], (1..=25).collect::<Vec<_>>());
    assert_eq!(missed["b"], vec![1]);
    back.close().await;
    bob.close().await;
}

/// `history_after` pages forwards (what a client missed after the last offset it holds), over
/// QUIC on a stream of its own and over WebSocket; a page cut to fit the frame keeps the oldest
/// messages, so it is an unbroken run after `after`.
#[tokio::test]
async fn history_after_pages_forwards_in_unbroken_runs() {
    let relay = common::start_with(|c| {
        c.limits.max_frame_bytes = 16_384;
        c.limits.max_payload_bytes = 8_192;
    })
    .await;
    let alice = relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &["*"]).await;
    let bob = relay.connect(Transport::WebSocket, Codec::Json, "bob", "acme", &["*"]).await;
    for i in 1..=25 {
        bob.publish("a", &format!("a{i}"), Payload::from(format!("{i}").as_str())).await.unwrap();
    }
    bob.publish("b", "b1", Payload::from("1")).await.unwrap();
    for client in [&alice, &bob] {
        let mut offsets = Vec::new();
        let mut after = 0;
        loop {
            let page = client.history_after("a", after, 10).await.unwrap();
            assert_eq!(page.position.offset, 25);
            let Some(last) = page.messages.last() else { break };
            after = last.offset;
            offsets.extend(page.messages.iter().map(|m| m.offset));
        }
        assert_eq!(offsets, (1..=25).collect::<Vec<_>>());
        let first = client.history_after("a", 3, 1).await.unwrap();
        assert_eq!((first.messages[0].offset, first.messages[0].id.as_str()), (4, "a4"));
    }
    // Several rooms on one stream, answered in the order asked.
    let pages = alice.histories_after(&[("b", 0), ("a", 23), ("nothing-here", 0)], 100).await;
    let offsets: Vec<Vec<u64>> =
        pages.into_iter().map(|p| p.unwrap().messages.iter().map(|m| m.offset).collect()).collect();
    assert_eq!(offsets, vec![vec![1], vec![24, 25], vec![]]);
    // Messages too large for one frame together: the page keeps the oldest after `after`.
    for i in 1..=4 {
        bob.publish("big", &format!("big{i}"), Payload::from(vec![i as u8; 6_000])).await.unwrap();
    }
    let page = alice.history_after("big", 1, 100).await.unwrap();
    let offsets: Vec<u64> = page.messages.iter().map(|m| m.offset).collect();
    assert!(!offsets.is_empty() && offsets.len() < 3, "cut to fit 16 KiB: {offsets:?}");
    assert_eq!(offsets, (2..2 + offsets.len() as u64).collect::<Vec<_>>());
    alice.close().await;
    bob.close().await;
}

/// The relay's stateless-reset key is persisted, so a relay restarted on the same port answers
/// a dead connection's next packet with a stateless reset its client accepts: the client learns
/// at its next keep-alive that the connection is gone instead of waiting out its idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_resets_the_quic_connections_of_its_previous_life() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = RelayProcess::new(dir.path());
    relay.start().await;
    let pin = relay.cert_pin().await;
    let quic = relay.quic_target(vec![pin]);
    let mut client = Client::connect(quic, ClientOptions::new(relay.token("old"))).await.unwrap();
    client.join("lobby").await.unwrap();
    relay.kill();
    relay.start().await;
    let reason = within("the old connection ends", async {
        loop {
            match client.next_event().await {
                Some(edgerelay::client::Event::Closed { reason, .. }) => return reason,
                Some(_) => continue,
                None => return "events ended without a close".to_owned(),
            }
        }
    })
    .await;
    assert!(reason.contains("reset"), "ended by a stateless reset, not an idle timeout: {reason}");
}

/// `store.deliver_before_commit`: subscribers get a message before its commit, the publisher's
/// ack still waits for it. A SIGKILL in between may lose that unacked message, never an acked
/// one, and two subscribers never see different messages at one position: after the unclean
/// stop the room has a new epoch (history kept), after a clean stop it keeps its epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_before_commit_a_crash_never_reuses_a_position_and_keeps_acked_messages() {
    use std::collections::BTreeMap;

    let dir = tempfile::tempdir().unwrap();
    // Every commit waits 3 s: the relay is killed inside that window, after the delivery.
    let mut relay = RelayProcess::new(dir.path())
        .with_env("EDGERELAY_STORE__DELIVER_BEFORE_COMMIT", "true")
        .with_env("EDGERELAY_TEST_COMMIT_DELAY_MS", "3000");
    relay.start().await;
    // Tokens stay valid across restarts (the same data directory, the same dev secret).
    let ws = relay.ws_target();
    let tokens: std::collections::HashMap<&str, String> = ["a", "b", "pub"].map(|w| (w, relay.token(w))).into();
    let connect = |who: &str| Client::connect(ws.clone(), ClientOptions::new(tokens[who].clone()));
    let (mut a, mut b) = (connect("a").await.unwrap(), connect("b").await.unwrap());
    let first_epoch = a.join("ledger").await.unwrap().position.epoch;
    b.join("ledger").await.unwrap();
    // What each subscriber saw at each position; no position may ever hold two messages.
    let mut seen: BTreeMap<Position, String> = BTreeMap::new();
    let mut record = |m: edgerelay::client::Message| {
        let id = seen.entry(m.position).or_insert_with(|| m.id.clone());
        assert_eq!(*id, m.id, "two messages at {:?}", m.position);
        m.position
    };

    let publisher = Arc::new(connect("pub").await.unwrap());
    let acked = within("m1 acked", publisher.publish("ledger", "m1", Payload::from("1"))).await.unwrap();
    record(within("a gets m1", a.next_message()).await.unwrap());
    record(within("b gets m1", b.next_message()).await.unwrap());

    let unacked = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publisher.publish("ledger", "m2", Payload::from("2")).await })
    };
    let last_a = record(within("a gets m2 before its commit", a.next_message()).await.unwrap());
    let last_b = record(within("b gets m2 before its commit", b.next_message()).await.unwrap());
    assert_eq!((last_a, last_b), (Position { epoch: first_epoch, offset: 2 }, last_a));
    relay.kill();
    let m2_acked = within("publish ends with the relay", unacked).await.unwrap().is_ok();

    relay.start().await;
    let history = relay.history_ids("ledger").await;
    assert_eq!(history.first(), Some(&(acked.offset, "m1".to_owned())), "the acked message survived");
    assert!(!m2_acked || history.iter().any(|h| h.1 == "m2"), "m2 was acked, so it must be stored");
    let (mut a, mut b) = (connect("a").await.unwrap(), connect("b").await.unwrap());
    let rejoined = a.join_since("ledger", Some(last_a)).await.unwrap();
    assert!(!rejoined.recovered, "a position of the crashed run is not resumed");
    let second_epoch = rejoined.position.epoch;
    assert_ne!(second_epoch, first_epoch, "the unclean stop started a new epoch");
    assert_eq!(rejoined.position.offset, history.len() as u64, "offsets continue from what was stored");
    assert!(!b.join_since("ledger", Some(last_b)).await.unwrap().recovered);

    let publisher = connect("pub").await.unwrap();
    let m3 = within("m3 acked", publisher.publish("ledger", "m3", Payload::from("3"))).await.unwrap();
    assert_eq!(record(within("a gets m3", a.next_message()).await.unwrap()), m3);
    assert_eq!(record(within("b gets m3", b.next_message()).await.unwrap()), m3);

    // A clean stop: everything delivered was committed, so the epoch and positions stay.
    publisher.close().await;
    relay.terminate(Duration::from_secs(30)).await;
    relay.start().await;
    let a = connect("a").await.unwrap();
    let resumed = a.join_since("ledger", Some(m3)).await.unwrap();
    assert!(resumed.recovered, "after a clean stop the position resumes");
    assert_eq!(resumed.position, m3);
}
