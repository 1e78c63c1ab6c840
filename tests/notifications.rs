//! In-app notifications against a real relay on loopback (docs/notifications.md): a user's feed
//! on two devices (raw QUIC with postcard, WebSocket with JSON) stays consistent through new
//! notifications, reads on either device, preference changes, reconnects and a relay restart;
//! and the offline webhook against a real HTTP receiver started by the test (axum on
//! 127.0.0.1): called once per notification with a valid signature, only when no device is in
//! the foreground, retried after HTTP 500 and timeouts, dead-lettered after the limit (and
//! replayed), holding back what mutes and quiet hours silence, and resumed after a restart.

#[path = "common/calls.rs"]
mod calls;
mod common;
#[path = "common/webhook.rs"]
mod webhook;

use std::sync::atomic::Ordering;
use std::time::Duration;

use calls::refused;
use common::{TestRelay, Transport, http_request, start_with, within};
use edgerelay::client::Client;
use edgerelay::config::Config;
use edgerelay::proto::{Codec, ErrorCode, Mute, NotifyEvent, NotifyPrefs, Priority, PushPlatform, QuietHours};
use serde_json::{Value, json};
use webhook::{FAIL, HANG, OK};

const API_KEY: &str = "notify-test-api-key-0123456789";
const SECRET: &str = "notify-test-webhook-secret-0123";

async fn device(relay: &TestRelay, transport: Transport, codec: Codec, sub: &str) -> Client {
    relay.connect(transport, codec, sub, "acme", &["chat:*"]).await
}

/// `POST /v1/api/notifications`; the answer's results.
async fn notify(relay: &TestRelay, body: Value) -> Vec<Value> {
    let (status, answer) = api(relay, "POST", "/v1/api/notifications", body).await;
    assert_eq!(status, 200, "{answer}");
    answer["results"].as_array().unwrap().clone()
}

async fn api(relay: &TestRelay, method: &str, path: &str, body: Value) -> (u16, Value) {
    webhook::api(relay.relay.tcp_addr(), API_KEY, method, path, body).await
}

/// The next `new` notification's (id, title, unread).
async fn next_new(client: &mut Client) -> (u64, String, u64) {
    within("a new notification", async {
        loop {
            if let NotifyEvent::New { notification, unread } = client.next_notification_event().await.unwrap() {
                return (notification.id, notification.title, unread);
            }
        }
    })
    .await
}

fn titles(page: &edgerelay::client::FeedPage) -> Vec<&str> {
    page.notifications.iter().map(|n| n.title.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_is_shared_by_devices_live_and_survives_reconnects_and_a_restart() {
    let relay = start_with(|c| {
        c.api.key = Some(API_KEY.into());
        c.notifications.max_feed = 5;
    })
    .await;
    let mut phone = device(&relay, Transport::Quic, Codec::Postcard, "alice").await;
    let mut laptop = device(&relay, Transport::WebSocket, Codec::Json, "alice").await;
    assert_eq!(phone.feed(None, 10).await.unwrap().notifications, vec![]);
    assert_eq!(laptop.feed(None, 10).await.unwrap().unread, 0);

    // One call for two users; both of alice's devices get it live.
    let results = notify(
        &relay,
        json!({"tenant": "acme", "users": ["alice", "bob"], "type": "invite", "title": "n1",
               "data": {"room": "chat:x"}, "id": "k1"}),
    )
    .await;
    assert_eq!(results.len(), 2);
    assert_eq!(results.iter().find(|r| r["user"] == "alice").unwrap()["delivered_here"], 2);
    assert_eq!(next_new(&mut phone).await, (1, "n1".into(), 1));
    assert_eq!(next_new(&mut laptop).await, (1, "n1".into(), 1));
    // The same key again adds nothing and sends nothing.
    let again =
        notify(&relay, json!({"tenant": "acme", "user": "alice", "type": "invite", "title": "n1", "id": "k1"})).await;
    assert_eq!((again[0]["duplicate"].as_bool(), again[0]["id"].as_u64()), (Some(true), Some(1)));
    for i in 2..=4 {
        notify(&relay, json!({"tenant": "acme", "user": "alice", "type": "mention", "title": format!("n{i}")})).await;
        assert_eq!(next_new(&mut laptop).await.0, i);
    }
    assert_eq!(next_new(&mut phone).await.0, 2, "the duplicate was not sent");

    // Reading on the phone reaches the laptop.
    assert_eq!(phone.mark_notifications_read(2, true).await.unwrap(), 2);
    let read = within("the phone's read", async {
        loop {
            if let NotifyEvent::Read { id, up_to, unread } = laptop.next_notification_event().await.unwrap() {
                return (id, up_to, unread);
            }
        }
    })
    .await;
    assert_eq!(read, (2, true, 2));
    assert_eq!(laptop.mark_notifications_read(4, false).await.unwrap(), 1);
    refused(laptop.mark_notifications_read(99, false).await, ErrorCode::UNKNOWN_NOTIFICATION);
    refused(laptop.feed(None, 0).await, ErrorCode::BAD_PAGE);

    // Preferences set on the laptop reach the phone.
    let prefs = NotifyPrefs {
        mutes: vec![Mute { room: "chat:noisy".into(), until: None }],
        quiet_hours: Some(QuietHours { start: "22:00".into(), end: "07:00".into(), tz: "Europe/Berlin".into() }),
        min_priority: Priority::High,
        skip_types: vec!["digest".into()],
    };
    assert_eq!(laptop.notify_prefs(Some(prefs.clone())).await.unwrap(), prefs);
    let synced = within("the prefs change", async {
        loop {
            if let NotifyEvent::Prefs { prefs } = phone.next_notification_event().await.unwrap() {
                return prefs;
            }
        }
    })
    .await;
    assert_eq!(synced, prefs);
    let bad = NotifyPrefs {
        quiet_hours: Some(QuietHours { tz: "Mars/Base".into(), ..prefs.quiet_hours.clone().unwrap() }),
        ..prefs.clone()
    };
    refused(laptop.notify_prefs(Some(bad)).await, ErrorCode::BAD_PREFS);

    // Paging, newest first; the feed keeps `max_feed` (5): n1 is dropped after two more.
    for i in 5..=6 {
        notify(&relay, json!({"tenant": "acme", "user": "alice", "type": "mention", "title": format!("n{i}")})).await;
    }
    let first = phone.feed(None, 3).await.unwrap();
    assert_eq!(titles(&first), ["n6", "n5", "n4"]);
    assert_eq!(first.unread, 3, "n3, n5 and n6");
    let rest = phone.feed(first.next, 3).await.unwrap();
    assert_eq!((titles(&rest), rest.next), (vec!["n3", "n2"], None));
    drop((phone, laptop));

    // A relay restart keeps the feed, the read state and the preferences.
    let relay = relay.restart(Duration::from_millis(50)).await;
    let mut laptop = device(&relay, Transport::WebSocket, Codec::Json, "alice").await;
    let page = laptop.feed(None, 10).await.unwrap();
    assert_eq!(titles(&page), ["n6", "n5", "n4", "n3", "n2"]);
    assert_eq!(page.notifications.iter().map(|n| n.read).collect::<Vec<_>>(), [false, false, true, false, true]);
    assert_eq!(laptop.notify_prefs(None).await.unwrap(), prefs);
    notify(&relay, json!({"tenant": "acme", "user": "alice", "type": "mention", "title": "n7"})).await;
    assert_eq!(next_new(&mut laptop).await, (7, "n7".into(), 4));
    let bob = device(&relay, Transport::Quic, Codec::Json, "bob").await;
    assert_eq!(titles(&bob.feed(None, 10).await.unwrap()), ["n1"]);
    relay.relay.shutdown().await;
}

fn webhook_config(config: &mut Config, url: &str) {
    webhook::webhook_config(config, url, SECRET, API_KEY, 300);
}

async fn add(relay: &TestRelay, user: &str, title: &str, extra: Value) -> Value {
    let mut body = json!({"tenant": "acme", "user": user, "type": "mention", "title": title});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    notify(relay, body).await.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_what_foreground_devices_and_preferences_do_not_hold_back_signed_and_once() {
    let (url, receiver) = webhook::receiver(SECRET).await;
    let relay = start_with(|c| webhook_config(c, &url)).await;
    let phone = device(&relay, Transport::Quic, Codec::Postcard, "alice").await;
    phone.register_device("phone-1", PushPlatform::Apns, "apns-token-1").await.unwrap();
    phone.register_device("tablet-1", PushPlatform::Fcm, "fcm-token-1").await.unwrap();
    phone.unregister_device("tablet-1").await.unwrap();
    refused(phone.unregister_device("tablet-1").await, ErrorCode::UNKNOWN_DEVICE);
    refused(phone.register_device("", PushPlatform::Fcm, "t").await, ErrorCode::BAD_DEVICE);

    // In the foreground: nothing for the webhook. Bob has no connection: his goes.
    assert_eq!(add(&relay, "alice", "fg", json!({})).await["webhook"], false);
    assert_eq!(add(&relay, "bob", "offline", json!({})).await["webhook"], true);
    receiver.until("bob's call", |calls| calls.iter().any(|(b, _, s)| *s == 200 && b["user"] == "bob")).await;

    // Backgrounded: alice's notifications go out, with her registered token.
    phone.set_background(true).await.unwrap();
    assert_eq!(add(&relay, "alice", "bg", json!({"priority": "high", "data": {"thread": 7}})).await["webhook"], true);
    receiver.until("alice's call", |_| !receiver.delivered("bg").is_empty()).await;
    let body = &receiver.delivered("bg")[0];
    assert_eq!(body["devices"], json!([{"device": "phone-1", "platform": "apns", "token": "apns-token-1"}]));
    assert_eq!((body["tenant"].as_str(), body["notification"]["data"]["thread"].as_u64()), (Some("acme"), Some(7)));
    assert_eq!(body["notification"]["priority"], "high");

    // Preferences: a muted room and quiet hours now (urgent breaks through) stay in the feed only.
    let now = jiff::Timestamp::now().to_zoned_datetime(jiff::tz::TimeZone::UTC);
    let hhmm = |h: i64| format!("{:02}:{:02}", (i64::from(now.hour()) + 24 + h) % 24, now.minute());
    let prefs = NotifyPrefs {
        mutes: vec![Mute { room: "chat:muted".into(), until: None }],
        quiet_hours: Some(QuietHours { start: hhmm(-1), end: hhmm(1), tz: "UTC".into() }),
        ..NotifyPrefs::default()
    };
    phone.notify_prefs(Some(prefs)).await.unwrap();
    let muted = add(&relay, "alice", "muted", json!({"room": "chat:muted", "priority": "urgent"})).await;
    let quiet = add(&relay, "alice", "quiet", json!({"priority": "high"})).await;
    assert_eq!((muted["silent"].as_bool(), muted["webhook"].as_bool()), (Some(true), Some(false)));
    assert_eq!((quiet["silent"].as_bool(), quiet["webhook"].as_bool()), (Some(true), Some(false)));
    assert_eq!(add(&relay, "alice", "urgent", json!({"priority": "urgent"})).await["webhook"], true);
    receiver.until("the urgent call", |_| !receiver.delivered("urgent").is_empty()).await;
    let feed = phone.feed(None, 10).await.unwrap();
    assert_eq!(titles(&feed), ["urgent", "quiet", "muted", "bg", "fg"]);
    assert!(feed.notifications[1].silent && feed.notifications[2].silent && !feed.notifications[0].silent);

    // Back in the foreground: nothing more goes out.
    phone.set_background(false).await.unwrap();
    assert_eq!(add(&relay, "alice", "back", json!({})).await["webhook"], false);
    add(&relay, "bob", "marker", json!({})).await;
    receiver.until("the marker", |_| !receiver.delivered("marker").is_empty()).await;
    let calls = receiver.calls();
    assert!(calls.iter().all(|(_, signed, _)| *signed), "every call is signed");
    for title in ["fg", "muted", "quiet", "back"] {
        assert!(receiver.delivered(title).is_empty(), "{title} was held back");
    }
    for title in ["offline", "bg", "urgent", "marker"] {
        assert_eq!(receiver.delivered(title).len(), 1, "{title} once");
    }
    assert_eq!(calls.len(), 4, "no retries when the first call succeeds");
    relay.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_is_retried_after_errors_and_timeouts_then_dead_lettered_and_replayed() {
    let (url, receiver) = webhook::receiver(SECRET).await;
    let relay = start_with(|c| webhook_config(c, &url)).await;

    // HTTP 500, then no answer within the timeout, then success: three calls, attempts 1-3,
    // delivered once.
    receiver.script.lock().unwrap().extend([FAIL, HANG]);
    add(&relay, "bob", "flaky", json!({})).await;
    receiver.until("the third call", |_| !receiver.delivered("flaky").is_empty()).await;
    let calls = receiver.calls();
    let attempts: Vec<u64> = calls.iter().map(|(b, _, _)| b["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 3]);
    assert_eq!(calls.iter().map(|(_, _, status)| *status).collect::<Vec<_>>(), [500, 0, 200]);
    assert!(calls.iter().all(|(b, _, _)| b["delivery"] == calls[0].0["delivery"]), "one delivery id");

    // Failing every time: dead after webhook_max_attempts (3), listed by the server API.
    receiver.mode.store(FAIL, Ordering::SeqCst);
    add(&relay, "bob", "doomed", json!({})).await;
    let dead = webhook::first_dead_letter(relay.relay.tcp_addr(), API_KEY).await;
    assert_eq!(dead["notification"]["title"], "doomed");
    assert_eq!((dead["attempts"].as_u64(), dead["last_error"].as_str()), (Some(3), Some("HTTP 500")));
    let calls = receiver.calls().iter().filter(|(b, _, _)| b["notification"]["title"] == "doomed").count();
    assert_eq!(calls, 3);

    // Replayed once the receiver is fixed: delivered, and gone from the list.
    receiver.mode.store(OK, Ordering::SeqCst);
    let id = dead["id"].as_u64().unwrap();
    let path = format!("/v1/api/notifications/dead_letters/{id}/replay");
    assert_eq!(api(&relay, "POST", &path, Value::Null).await.0, 200);
    receiver.until("the replay", |_| !receiver.delivered("doomed").is_empty()).await;
    let (_, answer) = api(&relay, "GET", "/v1/api/notifications/dead_letters", Value::Null).await;
    assert_eq!(answer["dead_letters"], json!([]));
    let path = format!("/v1/api/notifications/dead_letters/{id}");
    let (status, answer) = api(&relay, "DELETE", &path, Value::Null).await;
    assert_eq!((status, answer["code"].as_u64()), (404, Some(211)));
    relay.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_call_cut_by_a_restart_is_made_again_after_it() {
    let (url, receiver) = webhook::receiver(SECRET).await;
    let relay = start_with(|c| {
        webhook_config(c, &url);
        // The restart, not the timeout, ends the first call.
        c.notifications.webhook_timeout_ms = 20_000;
    })
    .await;
    receiver.script.lock().unwrap().push_back(HANG);
    add(&relay, "bob", "restart", json!({})).await;
    receiver.until("the call before the restart", |calls| calls.len() == 1).await;
    let relay = relay.restart(Duration::from_millis(50)).await;
    receiver.until("the call after the restart", |_| !receiver.delivered("restart").is_empty()).await;
    let calls = receiver.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].0["delivery"], calls[1].0["delivery"]);
    relay.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_refuses_bad_notifications_with_their_codes() {
    let relay = start_with(|c| c.api.key = Some(API_KEY.into())).await;
    for (body, code) in [
        (json!({"tenant": "acme", "type": "x", "title": "t"}), 209),
        (json!({"tenant": "acme", "user": "a", "type": "", "title": "t"}), 209),
        (json!({"tenant": "acme", "user": "a", "type": "x", "title": "t".repeat(300)}), 209),
        (json!({"tenant": "acme", "user": "a", "type": "x", "title": "t", "room": "bad room"}), 121),
        (json!({"tenant": "acme", "user": "a", "type": "x", "title": "t", "priority": "loud"}), 127),
    ] {
        let (status, answer) = api(&relay, "POST", "/v1/api/notifications", body).await;
        assert_eq!((status, answer["code"].as_u64()), (400, Some(code)), "{answer}");
    }
    let (status, _) = http_request(relay.relay.tcp_addr(), "POST", "/v1/api/notifications", &[], "{}").await;
    assert_eq!(status, 401);
    relay.relay.shutdown().await;
}

/// The figure in docs/performance.md: one server API call adding a notification for 1,000 users
/// (embedded store, no connections, no webhook), three calls in a row.
/// Run: `cargo test --test notifications -- --ignored --nocapture notify_1000_users_figure`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a load figure; run by hand (docs/performance.md)"]
async fn notify_1000_users_figure() {
    let relay = start_with(|c| c.api.key = Some(API_KEY.into())).await;
    webhook::notify_1000_users(relay.relay.tcp_addr(), API_KEY).await;
    relay.relay.shutdown().await;
}
