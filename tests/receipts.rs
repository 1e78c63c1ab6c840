//! Read marks, unread counts and receipts against a real relay on loopback (docs/receipts.md):
//! two devices of one user (raw QUIC with postcard, WebSocket with JSON) and three other
//! members. Counts stay consistent through publishes, reads on either device, marks that would
//! move back, reconnects and a relay restart; the sender learns delivery and reads; a member who
//! stops sharing reads is seen delivered, never read; bad marks and mentions get their codes.

#[path = "common/calls.rs"]
mod calls;
mod common;
#[path = "common/receipts.rs"]
mod receipts_help;

use calls::refused;
use common::{TestRelay, Transport, start_with, within};
use edgerelay::client::Client;
use edgerelay::proto::{Codec, ErrorCode, Position, ReceiptEvent};
use receipts_help::{counts, status, unread_until};

const CHAT: &str = "chat:team";
const SIDE: &str = "chat:side";

async fn start() -> TestRelay {
    start_with(|c| c.receipts.interval_ms = 50).await
}

async fn device(relay: &TestRelay, transport: Transport, codec: Codec, sub: &str) -> Client {
    relay.connect(transport, codec, sub, "acme", &["chat:*"]).await
}

async fn joined(relay: &TestRelay, sub: &str, rooms: &[&str]) -> Client {
    let client = device(relay, Transport::Quic, Codec::Postcard, sub).await;
    for room in rooms {
        client.join(room).await.expect("joins");
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_follow_publishes_and_reads_on_either_device_and_survive_a_restart() {
    let relay = start().await;
    // alice follows both rooms from her phone; her laptop joins nothing and only syncs.
    let phone = joined(&relay, "alice", &[CHAT, SIDE]).await;
    let mut laptop = device(&relay, Transport::WebSocket, Codec::Json, "alice").await;
    let bob = joined(&relay, "bob", &[CHAT]).await;
    let carol = joined(&relay, "carol", &[CHAT, SIDE]).await;
    let _dave = joined(&relay, "dave", &[CHAT]).await;

    let first = laptop.sync_unread().await.unwrap();
    assert!(first.full);
    assert_eq!((first.total, first.mentions), (0, 0));
    assert_eq!(counts(&first, CHAT), Some((0, 0)));
    assert_eq!(counts(&first, SIDE), Some((0, 0)));

    let mut positions = Vec::new();
    for i in 0..3 {
        positions.push(bob.publish(CHAT, &format!("b{i}"), "hi").await.unwrap());
    }
    carol.publish_mentions(SIDE, "c0", "@alice look", &["alice", "nobody"]).await.unwrap();
    let live = unread_until(&mut laptop, "counts of both rooms", |u| u.total == 4 && u.mentions == 1).await;
    assert_eq!(counts(&live, CHAT), Some((3, 0)));
    assert_eq!(counts(&live, SIDE), Some((1, 1)));

    // Read on the phone: the laptop's badge follows at once.
    phone.mark_read(&[(CHAT, positions[1])]).await.unwrap();
    let after = unread_until(&mut laptop, "the phone's read", |u| counts(u, CHAT) == Some((1, 0))).await;
    assert_eq!(after.total, 2);
    assert_eq!(after.room(CHAT).unwrap().read, positions[1]);

    // A mark below the current one is ignored: marks never move back.
    laptop.mark_read(&[(CHAT, positions[0])]).await.unwrap();
    let again = phone.sync_unread().await.unwrap();
    assert_eq!(counts(&again, CHAT), Some((1, 0)));

    // Bad marks are refused as a whole, nothing moves.
    let top = positions[2];
    let ahead = Position { epoch: top.epoch, offset: top.offset + 5 };
    refused(laptop.mark_read(&[(SIDE, Position { epoch: top.epoch ^ 1, offset: 1 })]).await, ErrorCode::BAD_MARK);
    refused(laptop.mark_read(&[(CHAT, top), (CHAT, ahead)]).await, ErrorCode::TOO_MANY_MARKS);
    refused(laptop.mark_read(&[(CHAT, ahead)]).await, ErrorCode::BAD_MARK);
    refused(laptop.mark_read(&[(CHAT, top), ("chat:elsewhere", top)]).await, ErrorCode::NOT_FOLLOWING);
    refused(laptop.mark_read(&[]).await, ErrorCode::TOO_MANY_MARKS);
    let many: Vec<String> = (0..51).map(|i| format!("u{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    refused(bob.publish_mentions(CHAT, "b9", "x", &many).await, ErrorCode::BAD_MENTIONS);
    refused(bob.publish_mentions(CHAT, "b9", "x", &[""]).await, ErrorCode::BAD_MENTIONS);
    assert_eq!(counts(&laptop.sync_unread().await.unwrap(), CHAT), Some((1, 0)));

    // Reading the mention clears it.
    let side_top = laptop.sync_unread().await.unwrap().room(SIDE).unwrap().top;
    laptop.mark_read(&[(SIDE, side_top)]).await.unwrap();
    let cleared = phone.sync_unread().await.unwrap();
    assert_eq!((cleared.total, cleared.mentions), (1, 0));
    drop((phone, laptop, bob, carol));

    // Everything is durable: after a restart the counts are the same, and more messages add up.
    let relay = relay.restart(std::time::Duration::from_millis(50)).await;
    let mut laptop = device(&relay, Transport::WebSocket, Codec::Json, "alice").await;
    let synced = laptop.sync_unread().await.unwrap();
    assert_eq!(counts(&synced, CHAT), Some((1, 0)));
    assert_eq!(counts(&synced, SIDE), Some((0, 0)));
    let bob = joined(&relay, "bob", &[CHAT]).await;
    bob.publish_mentions(CHAT, "b3", "@alice", &["alice"]).await.unwrap();
    let live = unread_until(&mut laptop, "a mention after the restart", |u| u.total == 2 && u.mentions == 1).await;
    assert_eq!(counts(&live, CHAT), Some((2, 1)));

    // Sending marks the room read up to one's own message.
    let phone = joined(&relay, "alice", &[CHAT]).await;
    phone.publish(CHAT, "a0", "on it").await.unwrap();
    let done = unread_until(&mut laptop, "own message reads the room", |u| u.total == 0).await;
    assert_eq!(counts(&done, CHAT), Some((0, 0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_learns_delivery_and_reads_and_hidden_reads_stay_hidden() {
    let relay = start().await;
    let mut bob = joined(&relay, "bob", &[CHAT]).await;
    let phone = joined(&relay, "alice", &[CHAT]).await;
    let laptop = device(&relay, Transport::WebSocket, Codec::Json, "alice").await;
    let carol = joined(&relay, "carol", &[CHAT]).await;
    let dave = joined(&relay, "dave", &[CHAT]).await;
    dave.share_reads(false).await.unwrap();
    // Updates are opt-in: the sender syncs.
    bob.sync_unread().await.unwrap();

    let p = bob.publish(CHAT, "m1", "lunch?").await.unwrap();
    let (delivered_all, read_all, members) = status(&bob, CHAT).await;
    assert_eq!((delivered_all, read_all), (0, 0), "nobody else has it yet: {members:?}");
    assert_eq!(members.iter().find(|m| m.user == "bob").unwrap().read, Some(p.offset));

    // Every other member's device confirms having it: the sender sees it delivered.
    for client in [&phone, &carol, &dave] {
        client.cursor(CHAT, p).await.unwrap();
    }
    within("delivered to everyone", async {
        loop {
            if let ReceiptEvent::Receipts { delivered_all, .. } = bob.next_receipts_event().await.unwrap()
                && delivered_all >= p.offset
            {
                return;
            }
        }
    })
    .await;

    // Reads: alice on her laptop (which never joined), carol, and dave who hides them.
    laptop.mark_read(&[(CHAT, p)]).await.unwrap();
    carol.mark_read(&[(CHAT, p)]).await.unwrap();
    dave.mark_read(&[(CHAT, p)]).await.unwrap();
    within("read by everyone who shares reads", async {
        loop {
            if let ReceiptEvent::Receipts { read_all, members, .. } = bob.next_receipts_event().await.unwrap() {
                assert!(
                    members.iter().all(|m| m.user != "dave" || m.read.is_none()),
                    "dave's read leaked: {members:?}"
                );
                if read_all >= p.offset {
                    return;
                }
            }
        }
    })
    .await;
    let (delivered_all, read_all, members) = status(&bob, CHAT).await;
    assert_eq!((delivered_all, read_all), (p.offset, p.offset));
    let dave_seen = members.iter().find(|m| m.user == "dave").unwrap();
    assert_eq!((dave_seen.delivered, dave_seen.read), (p.offset, None));
    assert_eq!(members.iter().find(|m| m.user == "alice").unwrap().read, Some(p.offset));
    assert_eq!(members.len(), 4);

    // A second message: carol reads it, nobody else; the watermarks stay at the first.
    let q = bob.publish(CHAT, "m2", "12:30").await.unwrap();
    carol.mark_read(&[(CHAT, q)]).await.unwrap();
    let (_, read_all, members) = status(&bob, CHAT).await;
    assert_eq!(read_all, p.offset);
    assert_eq!(members.iter().find(|m| m.user == "carol").unwrap().read, Some(q.offset));

    // Nothing is sent unasked: carol never synced, so no update reached her connection.
    let mut carol = carol;
    while let Some(event) = carol.try_next_event() {
        assert!(!matches!(event, edgerelay::client::Event::Receipts(_)), "unasked update: {event:?}");
    }

    // Status needs the room followed.
    let stranger = device(&relay, Transport::Quic, Codec::Json, "erin").await;
    refused(stranger.receipt_status(CHAT).await, ErrorCode::NOT_FOLLOWING);
    drop((bob, phone, laptop, carol, dave, stranger));

    // After a restart the receipts and the privacy setting are what they were.
    let relay = relay.restart(std::time::Duration::from_millis(50)).await;
    let bob = joined(&relay, "bob", &[CHAT]).await;
    let (delivered_all, read_all, members) = status(&bob, CHAT).await;
    assert_eq!((delivered_all, read_all), (p.offset, p.offset));
    assert_eq!(members.iter().find(|m| m.user == "dave").unwrap().read, None);
    assert_eq!(members.iter().find(|m| m.user == "carol").unwrap().read, Some(q.offset));
}

/// The receipt storm: `members` members of one room mark it read at once; every connection
/// counts the `receipts` frames (and their encoded bytes) it gets until the sender has seen
/// everyone's read. Returns (frames, postcard bytes, JSON bytes, most frames on one connection,
/// seconds from the first read to the sender seeing all).
async fn receipt_storm(relay: &TestRelay, members: usize) -> (u64, u64, u64, u64, f64) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const ROOM: &str = "chat:storm";
    let mut bob = device(relay, Transport::WebSocket, Codec::Postcard, "bob").await;
    bob.join(ROOM).await.unwrap();
    let mut clients = Vec::with_capacity(members);
    for i in 0..members {
        let client = device(relay, Transport::WebSocket, Codec::Postcard, &format!("m{i}")).await;
        client.join(ROOM).await.unwrap();
        clients.push(client);
    }
    // Updates are opt-in: every connection syncs.
    for client in clients.iter().chain(std::iter::once(&bob)) {
        client.sync_unread().await.unwrap();
    }
    let p = bob.publish(ROOM, "storm", "everyone read this").await.unwrap();
    // Let the joins' own receipts go out before counting.
    tokio::time::sleep(std::time::Duration::from_millis(3 * relay.relay.config().receipts.interval_ms)).await;
    let (frames, postcard, json, most) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for client in clients.iter_mut().chain(std::iter::once(&mut bob)) {
        let mut events = client.take_events();
        let (frames, postcard, json, most, stop) =
            (frames.clone(), postcard.clone(), json.clone(), most.clone(), stop.clone());
        // Drain what arrived before counting starts.
        while events.try_recv().is_ok() {}
        readers.push(tokio::spawn(async move {
            let mut mine = 0;
            while !stop.load(Ordering::SeqCst) {
                let Ok(Some(event)) = tokio::time::timeout(std::time::Duration::from_millis(50), events.recv()).await
                else {
                    continue;
                };
                if let edgerelay::client::Event::Receipts(event @ ReceiptEvent::Receipts { .. }) = event {
                    let frame = edgerelay::proto::ServerFrame::Receipts { req: 0, event };
                    frames.fetch_add(1, Ordering::SeqCst);
                    postcard.fetch_add(Codec::Postcard.encode(&frame).len() as u64, Ordering::SeqCst);
                    json.fetch_add(Codec::Json.encode(&frame).len() as u64, Ordering::SeqCst);
                    mine += 1;
                    most.fetch_max(mine, Ordering::SeqCst);
                }
            }
        }));
    }
    let started = std::time::Instant::now();
    let marks = [(ROOM, p)];
    let reads = clients.iter().map(|c| c.mark_read(&marks));
    for result in futures_util::future::join_all(reads).await {
        result.expect("read");
    }
    within("the sender sees every read", async {
        loop {
            if let ReceiptEvent::Receipts { read_all, .. } = bob.receipt_status(ROOM).await.unwrap()
                && read_all >= p.offset
            {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    let seconds = started.elapsed().as_secs_f64();
    // The updates released after the last read, then stop counting.
    tokio::time::sleep(std::time::Duration::from_millis(3 * relay.relay.config().receipts.interval_ms)).await;
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }
    let load = |a: &AtomicU64| a.load(Ordering::SeqCst);
    (load(&frames), load(&postcard), load(&json), load(&most), seconds)
}

/// A storm in a small room stays within one update per connection per interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_storm_sends_at_most_one_update_per_connection_per_interval() {
    let relay = start_with(|c| c.receipts.interval_ms = 200).await;
    let members = 40;
    let started = std::time::Instant::now();
    let (frames, _, _, most, _) = receipt_storm(&relay, members).await;
    // Counting spans at most the whole run; one release per interval, plus the first.
    let intervals = (started.elapsed().as_millis() / 200) as u64 + 1;
    assert!(most <= intervals, "{most} updates on one connection in {intervals} intervals");
    assert!(frames >= members as u64, "every connection heard of the reads ({frames} frames)");
    assert!(frames < (members * members) as u64, "{frames} frames: not aggregated");
}

/// The figure in docs/performance.md: `RECEIPT_STORM_MEMBERS` (1000) members read at once.
/// Run: `cargo test --release --test receipts -- --ignored --nocapture receipt_storm_figure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load figure; run by hand (docs/performance.md)"]
async fn receipt_storm_figure() {
    let members: usize = std::env::var("RECEIPT_STORM_MEMBERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let relay = start_with(|_| {}).await;
    let (frames, postcard, json, most, seconds) = receipt_storm(&relay, members).await;
    let naive = (members * (members + 1)) as u64;
    println!(
        "receipt storm: {members} members read at once; all reads seen by the sender after {seconds:.2} s; \
         receipts frames {frames} (most on one connection {most}), {postcard} bytes postcard / {json} bytes JSON; \
         one frame per read per connection would be {naive}"
    );
}

/// The figure in docs/performance.md: `sync` for a user following 500 rooms, each with one
/// unread message. Run: `cargo test --test receipts -- --ignored --nocapture sync_500_rooms_figure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load figure; run by hand (docs/performance.md)"]
async fn sync_500_rooms_figure() {
    let rooms: Vec<String> = (0..500).map(|i| format!("chat:r{i}")).collect();
    let relay = start_with(|c| c.limits.max_rooms_per_connection = 500).await;
    let alice = device(&relay, Transport::Quic, Codec::Postcard, "alice").await;
    let bob = device(&relay, Transport::Quic, Codec::Postcard, "bob").await;
    for room in &rooms {
        alice.join(room).await.unwrap();
        bob.join(room).await.unwrap();
        bob.publish(room, "m", "hi").await.unwrap();
    }
    for codec in [Codec::Postcard, Codec::Json] {
        let mut laptop = device(&relay, Transport::WebSocket, codec, "alice").await;
        for _ in 0..3 {
            let (ms, frames, bytes) = receipts_help::timed_sync(&mut laptop, codec, 500).await;
            println!("sync of 500 rooms ({codec:?}): {ms:.1} ms, {frames} frames, {bytes} bytes");
        }
    }
}
