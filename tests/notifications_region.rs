//! Notifications across the nodes of a Redis region (docs/notifications.md, "Across a Redis
//! region"): two relays on one test-started `redis-server`, a user with a device on each.
//! A backend adds through node A and the device on node B gets it live; a read on B reaches A;
//! preferences and push devices set on one node hold on the other; a relay restart keeps the
//! feed; the webhook (a real HTTP receiver started by the test) is called once per notification
//! with a valid signature when the user is offline everywhere, never while a device is in the
//! foreground on the *other* node; dead letters are read and replayed through either node; and a
//! node killed with SIGKILL while a call was pending has it made by the other node, with the
//! same `delivery` id.

mod common;
#[path = "common/process.rs"]
mod process;
#[path = "common/webhook.rs"]
mod webhook;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestRelay, Transport, start_with, within};
use edgerelay::client::Client;
use edgerelay::config::{Config, StoreEngine};
use edgerelay::proto::{Codec, NotifyEvent, NotifyPrefs, Priority, PushPlatform};
use edgerelay::testing::RedisServer;
use process::RelayProcess;
use serde_json::{Value, json};
use webhook::{FAIL, HANG, OK, Receiver, api};

const API_KEY: &str = "notify-region-api-key-0123456789";
const SECRET: &str = "notify-region-webhook-secret-012";

fn region_config(c: &mut Config, redis: &RedisServer, url: &str) {
    c.store.engine = StoreEngine::Redis;
    c.redis.url = redis.url();
    webhook::webhook_config(c, url, SECRET, API_KEY, 1000);
}

/// Adds one notification for `user` through `addr`'s server API; the user's result.
async fn add(addr: std::net::SocketAddr, key: &str, user: &str, title: &str) -> Value {
    let body = json!({"tenant": "acme", "user": user, "type": "mention", "title": title});
    let (status, answer) = api(addr, key, "POST", "/v1/api/notifications", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["results"][0].clone()
}

/// A Redis, a webhook receiver, and two relays on them.
async fn two_nodes() -> (RedisServer, Arc<Receiver>, TestRelay, TestRelay) {
    let redis = RedisServer::start().expect("start redis-server");
    let (url, receiver) = webhook::receiver(SECRET).await;
    let a = start_with(|c| region_config(c, &redis, &url)).await;
    let b = start_with(|c| region_config(c, &redis, &url)).await;
    (redis, receiver, a, b)
}

async fn device(relay: &TestRelay, transport: Transport, codec: Codec, sub: &str) -> Client {
    relay.connect(transport, codec, sub, "acme", &["chat:*"]).await
}

/// The next event of `client` that `pick` takes.
async fn next_event<T>(client: &mut Client, what: &str, pick: impl Fn(NotifyEvent) -> Option<T>) -> T {
    within(what, async {
        loop {
            if let Some(found) = pick(client.next_notification_event().await.unwrap()) {
                return found;
            }
        }
    })
    .await
}

async fn next_new(client: &mut Client) -> (u64, String, u64) {
    next_event(client, "a new notification", |event| match event {
        NotifyEvent::New { notification, unread } => Some((notification.id, notification.title, unread)),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_devices_on_two_nodes_share_one_feed_and_the_webhook_waits_for_both() {
    let (_redis, receiver, a, b) = two_nodes().await;
    let (a_api, b_api) = (a.relay.tcp_addr(), b.relay.tcp_addr());

    // Alice: a phone on A (QUIC, postcard), a laptop on B (WebSocket, JSON); both listen.
    let mut phone = device(&a, Transport::Quic, Codec::Postcard, "alice").await;
    let mut laptop = device(&b, Transport::WebSocket, Codec::Json, "alice").await;
    assert_eq!(phone.feed(None, 10).await.unwrap().unread, 0);
    assert_eq!(laptop.feed(None, 10).await.unwrap().unread, 0);
    laptop.register_device("laptop-1", PushPlatform::Fcm, "fcm-token-1").await.unwrap();

    // Added through A: both devices get it live; both are in the foreground, so no webhook.
    let first = add(a_api, API_KEY, "alice", "n1").await;
    assert_eq!((first["id"].as_u64(), first["webhook"].as_bool()), (Some(1), Some(false)));
    assert_eq!(next_new(&mut laptop).await, (1, "n1".into(), 1));
    assert_eq!(next_new(&mut phone).await, (1, "n1".into(), 1));
    // Ids keep growing per user whichever node adds.
    assert_eq!(add(b_api, API_KEY, "alice", "n2").await["id"], 2);
    assert_eq!(next_new(&mut phone).await, (2, "n2".into(), 2));
    assert_eq!(next_new(&mut laptop).await, (2, "n2".into(), 2));

    // Read on B: A's device sees unread 0 live, and in its next page.
    assert_eq!(laptop.mark_notifications_read(2, true).await.unwrap(), 0);
    let read = next_event(&mut phone, "the laptop's read", |event| match event {
        NotifyEvent::Read { id, up_to, unread } => Some((id, up_to, unread)),
        _ => None,
    })
    .await;
    assert_eq!(read, (2, true, 0));
    let page = phone.feed(None, 10).await.unwrap();
    assert_eq!((page.unread, page.notifications.iter().all(|n| n.read)), (0, true));

    // Preferences set on A hold on B.
    let prefs = NotifyPrefs { min_priority: Priority::High, ..NotifyPrefs::default() };
    phone.notify_prefs(Some(prefs.clone())).await.unwrap();
    let synced = next_event(&mut laptop, "the prefs change", |event| match event {
        NotifyEvent::Prefs { prefs } => Some(prefs),
        _ => None,
    })
    .await;
    assert_eq!(synced, prefs);
    assert_eq!(laptop.notify_prefs(None).await.unwrap(), prefs);
    phone.notify_prefs(Some(NotifyPrefs::default())).await.unwrap();

    // The phone goes to the background; the laptop on the other node is still in the
    // foreground: nothing for the webhook.
    phone.set_background(true).await.unwrap();
    assert_eq!(add(a_api, API_KEY, "alice", "held").await["webhook"], false);
    // The laptop too: both nodes' devices are in the background, so it goes out, once, signed,
    // with the device registered on B.
    laptop.set_background(true).await.unwrap();
    assert_eq!(add(a_api, API_KEY, "alice", "pushed").await["webhook"], true);
    receiver.until("the pushed call", |_| !receiver.delivered("pushed").is_empty()).await;
    let body = &receiver.delivered("pushed")[0];
    assert_eq!(body["devices"], json!([{"device": "laptop-1", "platform": "fcm", "token": "fcm-token-1"}]));

    // Offline everywhere: added through B, called once.
    drop((phone, laptop));
    let offline = within("alice offline on both nodes", async {
        loop {
            let result = add(b_api, API_KEY, "alice", "probe").await;
            if result["webhook"] == true {
                return result;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(offline["webhook"], true);
    add(b_api, API_KEY, "alice", "offline").await;
    receiver.until("the offline call", |_| !receiver.delivered("offline").is_empty()).await;

    // A restart of A keeps the feed and its read state.
    let a = a.restart(Duration::from_millis(50)).await;
    let mut tablet = device(&a, Transport::WebSocket, Codec::Json, "alice").await;
    let page = tablet.feed(None, 20).await.unwrap();
    let titles: Vec<&str> =
        page.notifications.iter().map(|n| n.title.as_str()).filter(|title| *title != "probe").collect();
    assert_eq!(titles, ["offline", "pushed", "held", "n2", "n1"]);
    assert!(page.notifications.iter().filter(|n| n.id <= 2).all(|n| n.read));
    assert_eq!(page.unread, page.notifications.iter().filter(|n| !n.read).count() as u64);
    // The tablet on the restarted A is in the foreground: added through B, live and no push.
    let after = add(b_api, API_KEY, "alice", "after restart").await;
    assert_eq!(after["webhook"], false);
    assert_eq!(next_new(&mut tablet).await.0, after["id"].as_u64().unwrap());

    // Exactly once each, every call signed: nothing for what a foreground device held back.
    add(a_api, API_KEY, "bob", "marker").await;
    receiver.until("the marker", |_| !receiver.delivered("marker").is_empty()).await;
    let calls = receiver.calls();
    assert!(calls.iter().all(|(_, signed, status)| *signed && *status == 200), "{calls:?}");
    for title in ["n1", "n2", "held", "after restart"] {
        assert!(receiver.delivered(title).is_empty(), "{title} was held back");
    }
    for title in ["pushed", "offline", "marker"] {
        assert_eq!(receiver.delivered(title).len(), 1, "{title} once");
    }
    let probes = receiver.delivered("probe");
    let ids: std::collections::BTreeSet<u64> = probes.iter().map(|b| b["delivery"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), probes.len(), "one call per probe");
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_shared_by_the_region() {
    let (_redis, receiver, a, b) = two_nodes().await;
    let (a_api, b_api) = (a.relay.tcp_addr(), b.relay.tcp_addr());

    // Failing every time: dead after three calls (whichever nodes made them), listed by B.
    receiver.mode.store(FAIL, Ordering::SeqCst);
    add(a_api, API_KEY, "bob", "doomed").await;
    let dead = webhook::first_dead_letter(b_api, API_KEY).await;
    assert_eq!(dead["notification"]["title"], "doomed");
    assert_eq!((dead["attempts"].as_u64(), dead["last_error"].as_str()), (Some(3), Some("HTTP 500")));
    let calls = receiver.calls();
    assert_eq!(calls.len(), 3);
    let attempts: Vec<u64> = calls.iter().map(|(body, _, _)| body["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3], "the attempts count across nodes");
    assert!(calls.iter().all(|(body, _, _)| body["delivery"] == dead["id"]));

    // Replayed through A once the receiver is fixed; gone from B's list.
    receiver.mode.store(OK, Ordering::SeqCst);
    let replay = format!("/v1/api/notifications/dead_letters/{}/replay", dead["id"]);
    assert_eq!(api(a_api, API_KEY, "POST", &replay, Value::Null).await.0, 200);
    receiver.until("the replay", |_| !receiver.delivered("doomed").is_empty()).await;
    let path = "/v1/api/notifications/dead_letters?tenant=acme";
    let (_, answer) = api(b_api, API_KEY, "GET", path, Value::Null).await;
    assert_eq!(answer["dead_letters"], json!([]));
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}

/// The figure in docs/performance.md: one server API call adding a notification for 1,000
/// offline users on a Redis region's node with a webhook set (so every one is also queued for
/// the webhook, whose receiver answers 200), three calls in a row.
/// Run: `cargo test --test notifications_region -- --ignored --nocapture notify_1000_users_region_figure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load figure; run by hand (docs/performance.md)"]
async fn notify_1000_users_region_figure() {
    let (_redis, _receiver, a, b) = two_nodes().await;
    webhook::notify_1000_users(a.relay.tcp_addr(), API_KEY).await;
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}

/// A relay process on the test's Redis with the webhook set.
fn node(redis: &RedisServer, dir: &std::path::Path, n: usize, url: &str) -> RelayProcess {
    RelayProcess::new(&dir.join(format!("node-{n}")))
        .with_env("EDGERELAY_STORE__ENGINE", "redis")
        .with_env("EDGERELAY_REDIS__URL", redis.url())
        .with_env("EDGERELAY_NOTIFICATIONS__WEBHOOK_URL", url)
        .with_env("EDGERELAY_NOTIFICATIONS__WEBHOOK_SECRET", SECRET)
        .with_env("EDGERELAY_NOTIFICATIONS__WEBHOOK_TIMEOUT_MS", "20000")
        .with_env("EDGERELAY_NOTIFICATIONS__WEBHOOK_CLAIM_AFTER_MS", "1000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_pending_on_a_killed_node_is_made_by_the_other_one() {
    let redis = RedisServer::start().expect("start redis-server");
    let dir = tempfile::tempdir().unwrap();
    let (url, receiver) = webhook::receiver(SECRET).await;
    // The first call gets no answer: node A holds the delivery when it dies.
    receiver.script.lock().unwrap().push_back(HANG);
    let mut a = node(&redis, dir.path(), 0, &url);
    a.start().await;
    assert_eq!(add(a.tcp, process::API_KEY, "bob", "orphan").await["webhook"], true);
    receiver.until("A's call", |calls| calls.len() == 1).await;
    a.kill();

    // Node B, started after: the delivery is not new to the group, only a stale one to take over.
    let mut b = node(&redis, dir.path(), 1, &url);
    b.start().await;
    receiver.until("B's call", |_| !receiver.delivered("orphan").is_empty()).await;
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0["delivery"], calls[1].0["delivery"], "the same delivery id");
    assert!(calls.iter().all(|(_, signed, _)| *signed));
    b.terminate(Duration::from_secs(10)).await;
}
