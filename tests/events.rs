//! Event broadcasting end to end (docs/events.md): a real relay on loopback, events published
//! through the server API, subscribers over QUIC, WebSocket, WebTransport and SSE (curl).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Transport, closed_with, http_request, start_with, within};
use edgerelay::client::{Client, ClientError, ClientOptions, TopicEvent};
use edgerelay::config::Config;
use edgerelay::proto::{Codec, ErrorCode, Position};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

const API_KEY: &str = "events-test-api-key-0123456789";

fn events_config(config: &mut Config) {
    config.api.key = Some(API_KEY.into());
    config.events.persistent = vec!["orders.>".into()];
    config.events.latest = vec!["scores.>".into()];
}

/// `POST /v1/api/events` on `tcp`; status and parsed answer.
async fn api_events(tcp: std::net::SocketAddr, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {API_KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let (status, answer) = http_request(tcp, "POST", "/v1/api/events", &headers, &body.to_string()).await;
    (status, serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}")))
}

fn event(topic: &str, id: &str, tags: &[(&str, &str)]) -> Value {
    let tags: BTreeMap<&str, &str> = tags.iter().copied().collect();
    json!({"topic": topic, "id": id, "tags": tags, "data": {"id": id}})
}

/// Publishes a batch and checks every event was accepted.
async fn publish(tcp: std::net::SocketAddr, events: Vec<Value>) -> Vec<Value> {
    let (status, answer) = api_events(tcp, json!({"tenant": "acme", "events": events})).await;
    assert_eq!(status, 200, "{answer}");
    let results = answer["results"].as_array().unwrap().clone();
    assert!(results.iter().all(|r| r.get("error").is_none()), "{answer}");
    results
}

/// Reads topic events until one with id `last` arrived; returns the ids, in order.
async fn ids_until(client: &mut Client, last: &str) -> Vec<String> {
    within(&format!("events up to {last}"), async {
        let mut ids = Vec::new();
        loop {
            let e = client.next_topic_event().await.expect("connection open");
            ids.push(e.id.clone());
            if e.id == last {
                return ids;
            }
        }
    })
    .await
}

#[tokio::test]
async fn wildcard_and_filtered_subscribers_get_exactly_their_events_in_order() {
    let relay = start_with(events_config).await;
    let tcp = relay.relay.tcp_addr();
    let variants = [
        (Transport::Quic, Codec::Postcard),
        (Transport::WebSocket, Codec::Json),
        (Transport::WebTransport, Codec::Json),
    ];
    for (round, (transport, codec)) in variants.into_iter().enumerate() {
        let tag = format!("{transport:?}-{codec:?}");
        let mut star = relay.connect(transport, codec, "alice", "acme", &["orders.*"]).await;
        let mut tree = relay.connect(transport, codec, "bob", "acme", &["*"]).await;
        let mut exact = relay.connect(transport, codec, "carol", "acme", &["orders.eu.created"]).await;
        let mut eph = relay.connect(transport, codec, "dave", "acme", &["news.*"]).await;
        star.subscribe("orders.*.created", None).await.unwrap();
        tree.subscribe("orders.>", Some("qty >= 10 and region in (eu, us)")).await.unwrap();
        // Overlapping subscriptions: still one copy per event.
        tree.subscribe("orders.eu.>", Some("qty >= 10")).await.unwrap();
        let sub = exact.subscribe("orders.eu.created", None).await.unwrap();
        let top = 3 * round as u64;
        assert_eq!(sub.position.map(|p| p.offset), Some(top), "{tag}: a persistent topic says its top");
        eph.subscribe("news.*", Some("not lang = fr")).await.unwrap();
        let e = |topic: &str, n: u32, tags: &[(&str, &str)]| event(topic, &format!("{tag}-{n}"), tags);
        publish(
            tcp,
            vec![
                e("orders.eu.created", 1, &[("qty", "5"), ("region", "eu")]),
                e("orders.eu.created", 2, &[("qty", "12"), ("region", "eu")]),
                e("orders.us.created", 3, &[("qty", "20"), ("region", "us")]),
                e("orders.eu.cancelled", 4, &[("qty", "50"), ("region", "eu")]),
                e("orders.eu.x.created", 5, &[("qty", "50"), ("region", "asia")]),
                e("other.eu.created", 6, &[("qty", "50"), ("region", "eu")]),
                e("news.sport", 7, &[("lang", "fr")]),
                e("news.sport", 8, &[("lang", "en")]),
                e("news.sport.extra", 9, &[]),
                e("orders.eu.created", 10, &[("qty", "99"), ("region", "eu")]),
                e("news.sport", 11, &[]),
            ],
        )
        .await;
        let ids = |ns: &[u32]| ns.iter().map(|n| format!("{tag}-{n}")).collect::<Vec<_>>();
        let last = format!("{tag}-10");
        assert_eq!(ids_until(&mut star, &last).await, ids(&[1, 2, 3, 10]), "orders.*.created");
        assert_eq!(ids_until(&mut tree, &last).await, ids(&[2, 3, 4, 5, 10]), "orders.> or orders.eu.>, filtered");
        assert_eq!(ids_until(&mut exact, &last).await, ids(&[1, 2, 10]), "the exact topic");
        assert_eq!(ids_until(&mut eph, &format!("{tag}-11")).await, ids(&[8, 11]), "ephemeral, filtered");
        exact.unsubscribe("orders.eu.created").await.unwrap();
        for c in [star, tree, exact, eph] {
            c.close().await;
        }
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_persistent_topic_resumes_after_a_position_without_loss_or_duplicates() {
    let relay = start_with(events_config).await;
    let tcp = relay.relay.tcp_addr();
    let topic = "orders.eu.paid";
    let ev = |n: u32| event(topic, &format!("p{n}"), &[("n", &n.to_string())]);
    publish(tcp, (1..=5).map(ev).collect()).await;
    let mut first = relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &["*"]).await;
    let sub = first.subscribe_since(topic, None, Some(Position { epoch: 0, offset: 0 })).await.unwrap();
    assert!(sub.recovered, "offset 0 means from the start");
    let got: Vec<TopicEvent> = within("first five", async {
        let mut got = Vec::new();
        while got.len() < 5 {
            got.push(first.next_topic_event().await.unwrap());
        }
        got
    })
    .await;
    let offsets: Vec<u64> = got.iter().map(|e| e.position.unwrap().offset).collect();
    assert_eq!(offsets, [1, 2, 3, 4, 5]);
    let seen = got[4].position.unwrap();
    first.close().await;

    // Away: more events; then publishing goes on while the subscriber comes back.
    publish(tcp, (6..=10).map(ev).collect()).await;
    let publisher = tokio::spawn(async move {
        for batch in 0..10u32 {
            publish(tcp, (11 + batch * 3..14 + batch * 3).map(ev).collect()).await;
        }
    });
    for (transport, codec) in [(Transport::Quic, Codec::Json), (Transport::WebSocket, Codec::Postcard)] {
        let mut back = relay.connect(transport, codec, "alice", "acme", &["*"]).await;
        let sub = back.subscribe_since(topic, Some("n != 7"), Some(seen)).await.unwrap();
        assert!(sub.recovered);
        let got = within("resumed events", async {
            let mut got = Vec::new();
            while got.last().is_none_or(|e: &TopicEvent| e.id != "p40") {
                got.push(back.next_topic_event().await.unwrap());
            }
            got
        })
        .await;
        let offsets: Vec<u64> = got.iter().map(|e| e.position.unwrap().offset).collect();
        let want: Vec<u64> = (6..=40).filter(|n| *n != 7).collect();
        assert_eq!(offsets, want, "{transport:?}: every event after the position, once, in order");
        assert!(got.iter().all(|e| e.position.unwrap().epoch == seen.epoch));
        back.close().await;
    }
    publisher.await.unwrap();
    // A position from another epoch cannot be recovered, and says so.
    let c = relay.connect(Transport::WebSocket, Codec::Json, "alice", "acme", &["*"]).await;
    let stale = Position { epoch: seen.epoch + 1, offset: 3 };
    let sub = c.subscribe_since(topic, None, Some(stale)).await.unwrap();
    assert!(!sub.recovered);
    assert_eq!(sub.position.map(|p| p.offset), Some(40));
    // `since` on a wildcard or an ephemeral topic: live only, not recovered.
    assert!(!c.subscribe_since("orders.>", None, Some(seen)).await.unwrap().recovered);
    c.close().await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn a_latest_value_topic_conflates_for_a_stalled_subscriber() {
    let relay = start_with(|config| {
        events_config(config);
        common::small_outbox(config, 256 * 1024);
        config.limits.max_frame_bytes = 65_536;
        config.limits.max_payload_bytes = 64_000;
    })
    .await;
    let tcp = relay.relay.tcp_addr();
    let token = relay.token("alice", "acme", &["*"]);
    let options = ClientOptions::new(&token).codec(Codec::Json);
    // The client hands over a few events, then stops reading its socket until the test reads.
    let options = ClientOptions { event_buffer: 2, ..options };
    let mut stalled = Client::connect(relay.target(Transport::WebSocket), options).await.unwrap();
    stalled.subscribe("scores.>", None).await.unwrap();
    let filler = "x".repeat(16_000);
    // 64 MB for a 256 KB outbox: far beyond what socket buffers and the outbox could hold.
    for batch in 0..40 {
        let events = (0..100)
            .map(|i| {
                let n = batch * 100 + i;
                let topic = if n % 2 == 0 { "scores.match1" } else { "scores.match2" };
                json!({"topic": topic, "id": format!("s{n}"), "data": {"n": n, "filler": filler}})
            })
            .collect();
        publish(tcp, events).await;
    }
    let (mut got, mut last) = (0, BTreeMap::new());
    within("the newest values", async {
        while last.get("scores.match1") != Some(&3998) || last.get("scores.match2") != Some(&3999) {
            let e = stalled.next_topic_event().await.expect("not closed: a latest topic never overflows");
            let n = serde_json::from_slice::<Value>(&e.data.0).unwrap()["n"].as_u64().unwrap();
            let previous = last.insert(e.topic.clone(), n);
            assert!(previous.is_none_or(|p| p < n), "newer values only");
            got += 1;
        }
    })
    .await;
    assert!(got < 4000, "a backlog was conflated, not queued: {got} of 4000 arrived");
    stalled.ping().await.expect("still connected");
    // A normal (reliable) topic under the same stall closes the subscriber as a slow consumer.
    let options = ClientOptions { event_buffer: 2, ..ClientOptions::new(&token).codec(Codec::Json) };
    let mut slow = Client::connect(relay.target(Transport::WebSocket), options).await.unwrap();
    slow.subscribe("feed.>", None).await.unwrap();
    for batch in 0..40 {
        let events = (0..100)
            .map(|i| json!({"topic": "feed.all", "id": format!("f{batch}-{i}"), "data": {"filler": filler}}))
            .collect();
        publish(tcp, events).await;
    }
    // The close frame may not get through a socket the client stopped reading; the relay
    // counts why it closed.
    within("slow consumer", closed_with(&mut slow)).await;
    let (_, metrics) = relay.http_get("/metrics").await;
    assert!(metrics.contains("edgerelay_disconnects_total{code=\"slow_consumer\"}"), "{metrics}");
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn the_server_api_publishes_batches_to_users_and_deduplicates() {
    let relay = start_with(events_config).await;
    let tcp = relay.relay.tcp_addr();
    let mut phone = relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &[]).await;
    let mut laptop = relay.connect(Transport::WebSocket, Codec::Json, "alice", "acme", &[]).await;
    let mut other = relay.connect(Transport::WebSocket, Codec::Json, "bob", "acme", &["*"]).await;
    other.subscribe(">", None).await.unwrap();
    // One call: two topics, one user, and a retry of the first event.
    let results = publish(
        tcp,
        vec![
            event("orders.eu.created", "b1", &[]),
            event("alerts.fire", "b2", &[]),
            json!({"topic": "inbox.note", "user": "alice", "id": "u1", "data": "hi", "priority": "critical"}),
            event("orders.eu.created", "b1", &[]),
            event("alerts.fire", "b3", &[]),
        ],
    )
    .await;
    assert_eq!(results[0]["position"]["offset"], 1, "{results:?}");
    assert_eq!(results[0]["duplicate"], false);
    assert!(results[1].get("position").is_none(), "ephemeral: no position");
    assert_eq!(results[2]["delivered_here"], 2, "both of alice's connections");
    assert_eq!(results[3]["duplicate"], true);
    assert_eq!(results[3]["position"], results[0]["position"]);
    // Order holds per topic: the ephemeral b2 and b3 need not wait for b1's commit.
    publish(tcp, vec![event("orders.eu.created", "b4", &[])]).await;
    let mut got = ids_until(&mut other, "b4").await;
    got.sort();
    assert_eq!(got, ["b1", "b2", "b3", "b4"], "the retry is not delivered again");
    for device in [&mut phone, &mut laptop] {
        let e = within("user event", device.next_topic_event()).await.unwrap();
        assert_eq!((e.topic.as_str(), e.id.as_str()), ("inbox.note", "u1"));
    }
    // A retried user event is not sent again; an ephemeral retry neither.
    let results = publish(
        tcp,
        vec![
            json!({"topic": "inbox.note", "user": "alice", "id": "u1", "data": "hi"}),
            event("alerts.fire", "b2", &[]),
        ],
    )
    .await;
    assert_eq!((results[0]["duplicate"].clone(), results[1]["duplicate"].clone()), (json!(true), json!(true)));
    // Bad input: the whole call is refused, with the event's index and a documented code.
    let cases = [
        (json!([event("a..b", "x", &[])]), 400, 185),
        (json!([event("a.*", "x", &[])]), 400, 185),
        (json!([event("a.b", "x", &[("bad key", "v")])]), 400, 190),
        (json!([event("a.b", "", &[])]), 400, 127),
        (json!([]), 400, 127),
    ];
    for (events, status, code) in cases {
        let (got, answer) = api_events(tcp, json!({"tenant": "acme", "events": events})).await;
        assert_eq!((got, answer["code"].as_u64()), (status, Some(code)), "{answer}");
    }
    let (status, answer) =
        api_events(tcp, json!({"tenant": "acme", "events": [event("ok.b", "z", &[])], "x": 1})).await;
    assert_eq!(status, 400, "unknown fields are refused: {answer}");
    ensure_quiet(&mut phone).await;
    for c in [phone, laptop, other] {
        c.close().await;
    }
    relay.relay.shutdown().await;
}

/// Nothing more arrives (the retries were not delivered).
async fn ensure_quiet(client: &mut Client) {
    client.ping().await.unwrap();
    assert!(client.try_next_event().is_none());
}

#[tokio::test]
async fn subscriptions_are_checked_against_the_token_and_bad_ones_get_documented_codes() {
    let relay = start_with(|config| {
        events_config(config);
        config.events.max_subscriptions = 3;
    })
    .await;
    let client = relay.connect(Transport::WebSocket, Codec::Json, "alice", "acme", &["orders.eu.*", "{sub}.*"]).await;
    fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (ErrorCode, String) {
        match r {
            Err(ClientError::Rejected { code, message }) => (code, message),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(code(client.subscribe("orders.>", None).await).0, ErrorCode::PERMISSION_DENIED, "wider than the token");
    assert_eq!(code(client.subscribe("orders.*.created", None).await).0, ErrorCode::PERMISSION_DENIED);
    assert_eq!(code(client.subscribe("bob.>", None).await).0, ErrorCode::PERMISSION_DENIED);
    client.subscribe("orders.eu.*", None).await.unwrap();
    client.subscribe("alice.>", None).await.unwrap();
    assert_eq!(code(client.subscribe("orders.eu.*", None).await).0, ErrorCode::ALREADY_SUBSCRIBED);
    for bad in ["", "a..b", "orders.>.x", "orders.eu.c d"] {
        assert_eq!(code(client.subscribe(bad, None).await).0, ErrorCode::BAD_TOPIC, "{bad:?}");
    }
    let (c, message) = code(client.subscribe("orders.eu.x", Some("qty >")).await);
    assert_eq!(c, ErrorCode::BAD_FILTER);
    assert!(message.contains("byte 5") && message.contains("expected a value"), "{message}");
    assert_eq!(code(client.subscribe("orders.eu.x", Some("qty < abc")).await).0, ErrorCode::BAD_FILTER);
    client.subscribe("alice.x", None).await.unwrap();
    assert_eq!(code(client.subscribe("alice.y", None).await).0, ErrorCode::TOO_MANY_SUBSCRIPTIONS);
    assert_eq!(code(client.unsubscribe("nope").await).0, ErrorCode::NOT_SUBSCRIBED);
    client.unsubscribe("alice.x").await.unwrap();
    client.subscribe("alice.y", None).await.unwrap();
    client.ping().await.expect("refusals never close the connection");
    client.close().await;
    relay.relay.shutdown().await;
}

/// `curl -sN -D - <url>` with extra headers: its output lines, as they come.
fn curl(
    url: &str,
    headers: &[&str],
) -> (tokio::process::Child, tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) {
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-sN", "-D", "-", "--max-time", "60", url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let mut child = cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().expect("curl runs");
    let stdout = child.stdout.take().unwrap();
    (child, BufReader::new(stdout).lines())
}

/// Reads SSE lines until `n` events (`data:` lines of default events) arrived; returns their
/// `(id, data)` and every line seen.
async fn sse_events(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    n: usize,
) -> (Vec<(Option<String>, Value)>, Vec<String>) {
    within("SSE events", async {
        let (mut events, mut seen, mut id, mut named) = (Vec::new(), Vec::new(), None, false);
        while events.len() < n {
            let line = lines.next_line().await.unwrap().expect("stream open");
            seen.push(line.clone());
            if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            } else if line.starts_with("event: ") {
                named = true;
            } else if let Some(data) = line.strip_prefix("data: ") {
                if !named {
                    events.push((id.take(), serde_json::from_str(data).unwrap()));
                }
                named = false;
            }
        }
        (events, seen)
    })
    .await
}

#[tokio::test]
async fn sse_streams_to_curl_with_cors_heartbeats_and_last_event_id_resume() {
    let relay = start_with(|config| {
        events_config(config);
        config.events.sse_heartbeat_ms = 200;
    })
    .await;
    let tcp = relay.relay.tcp_addr();
    let token = relay.token("alice", "acme", &["orders.*", "news.*"]);
    let url = |q: &str| format!("http://{tcp}/v1/events?token={token}&{q}");
    let topic = "orders.eu.shipped";
    let ev = |n: u32| event(topic, &format!("e{n}"), &[("n", &n.to_string())]);

    // A resumable stream: one exact persistent topic.
    let (mut first, mut lines) = curl(&url(&format!("topic={topic}")), &["Origin: https://app.example"]);
    let head = within("headers", async {
        let mut head = Vec::new();
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.trim().is_empty() {
                return head;
            }
            head.push(line.to_ascii_lowercase());
        }
    })
    .await;
    assert!(head[0].contains(" 200"), "{head:?}");
    assert!(head.iter().any(|h| h.starts_with("content-type: text/event-stream")), "{head:?}");
    assert!(head.iter().any(|h| h.starts_with("access-control-allow-origin: *")), "{head:?}");
    publish(tcp, (1..=3).map(ev).collect()).await;
    let (got, seen) = sse_events(&mut lines, 3).await;
    assert!(seen.iter().any(|l| l == "event: subscribed"), "{seen:?}");
    assert!(seen.iter().any(|l| l.starts_with("retry: ")), "{seen:?}");
    let ids: Vec<String> = got.iter().map(|(id, _)| id.clone().unwrap()).collect();
    let epoch = ids[0].split('-').next().unwrap().to_owned();
    assert_eq!(ids, [1, 2, 3].map(|n| format!("{epoch}-{n}")));
    assert_eq!(got[2].1["id"], "e3");
    assert_eq!(got[2].1["tags"]["n"], "3");
    assert_eq!(got[2].1["data"]["id"], "e3");
    // Idle: heartbeats keep the stream alive.
    within("a heartbeat", async { while lines.next_line().await.unwrap().unwrap() != ": heartbeat" {} }).await;
    first.kill().await.unwrap();

    // While away, more events; the reconnect with Last-Event-ID gets exactly the rest.
    publish(tcp, (4..=6).map(ev).collect()).await;
    let last = format!("Last-Event-ID: {}", ids[2]);
    let (_second, mut lines) = curl(&url(&format!("topic={topic}&filter=n%20!%3D%205")), &[&last]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(tcp, (7..=8).map(ev).collect()).await;
    let (got, _) = sse_events(&mut lines, 4).await;
    let got: Vec<&str> = got.iter().map(|(_, e)| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, ["e4", "e6", "e7", "e8"], "resumed after e3, filtered, then live");

    // A wildcard stream of ephemeral topics: events without ids.
    let (_third, mut lines) = curl(&url("topic=news.*&topic=orders.*.shipped"), &[]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(tcp, vec![event("news.tech", "n1", &[]), ev(9)]).await;
    let (got, _) = sse_events(&mut lines, 2).await;
    assert_eq!(
        got.iter().map(|(id, e)| (id.is_some(), e["id"].as_str().unwrap())).collect::<Vec<_>>(),
        [(false, "n1"), (false, "e9")]
    );

    // Refusals are plain HTTP errors with the protocol's codes, CORS included.
    for (q, status, code) in [
        (format!("topic={topic}&token=bad"), 401, 110),
        (String::from("token=x"), 401, 110),
        (String::from("topic=secret.x"), 403, 120),
        (String::from("topic=orders..x"), 400, 185),
        (String::from("topic=orders.x&filter=n%20%3C"), 400, 186),
    ] {
        let path = if q.starts_with("topic=orders.eu.shipped&token") || q.starts_with("token=") {
            format!("/v1/events?{q}")
        } else {
            format!("/v1/events?token={token}&{q}")
        };
        let (got, body) = common::http_get(tcp, &path).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!((got, body["code"].as_u64()), (status, Some(code)), "{q}: {body}");
    }
    let (status, _) = http_request(tcp, "OPTIONS", "/v1/events", &[("origin", "https://app.example")], "").await;
    assert_eq!(status, 204);
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn batched_events_arrive_complete_and_in_order_with_critical_ones_among_them() {
    let relay = start_with(|config| {
        events_config(config);
        config.events.batch_delay_ms = 20;
        config.events.batch_bytes = 4_096;
    })
    .await;
    let tcp = relay.relay.tcp_addr();
    let mut clients = Vec::new();
    for (transport, codec) in [(Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json)] {
        let client = relay.connect(transport, codec, "alice", "acme", &["orders.*", "news.*"]).await;
        client.subscribe("orders.>", None).await.unwrap();
        client.subscribe("news.*", None).await.unwrap();
        clients.push(client);
    }
    // Persistent and ephemeral topics, normal and critical, big enough to pass batch_bytes.
    let events: Vec<Value> = (0..60)
        .map(|i| {
            let topic = if i % 2 == 0 { "orders.eu.created" } else { "news.tech" };
            let mut e = event(topic, &format!("b{i}"), &[]);
            e["data"] = json!({"pad": "x".repeat(if i % 7 == 0 { 900 } else { 20 })});
            if i % 5 == 0 {
                e["priority"] = json!("critical");
            }
            e
        })
        .collect();
    publish(tcp, events).await;
    for client in &mut clients {
        // Persistent events follow their commit, so the two topics interleave freely.
        let got = within("60 events", async {
            let mut ids = Vec::new();
            while ids.len() < 60 {
                ids.push(client.next_topic_event().await.unwrap().id);
            }
            ids
        })
        .await;
        let (orders, news): (Vec<_>, Vec<_>) =
            got.iter().map(|id| id[1..].parse::<u32>().unwrap()).partition(|n| n % 2 == 0);
        assert_eq!(orders, (0..60).step_by(2).collect::<Vec<_>>(), "one topic's events in order");
        assert_eq!(news, (1..60).step_by(2).collect::<Vec<_>>());
    }
    for client in clients {
        client.close().await;
    }
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn sse_streams_count_in_the_users_connection_limit() {
    let relay = start_with(|config| {
        events_config(config);
        config.limits.max_connections_per_user = 2;
    })
    .await;
    let tcp = relay.relay.tcp_addr();
    let token = relay.token("alice", "acme", &["news.*"]);
    let url = format!("http://{tcp}/v1/events?token={token}&topic=news.a");
    // One stream and one connection fill alice's two slots.
    let (mut stream, mut lines) = curl(&url, &[]);
    within("the stream's subscribed event", async {
        while lines.next_line().await.unwrap().unwrap() != "event: subscribed" {}
    })
    .await;
    let ws = relay.connect(Transport::WebSocket, Codec::Json, "alice", "acme", &["news.*"]).await;
    // A third, over any transport, is refused with too_many_connections.
    let (status, body) = common::http_get(tcp, &format!("/v1/events?token={token}&topic=news.b")).await;
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!((status, body["code"].as_u64()), (429, Some(113)), "{body}");
    let third = relay.token("alice", "acme", &["news.*"]);
    match relay.try_connect(Transport::Quic, Codec::Postcard, &third).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS),
        other => panic!("a third connection got {:?}", other.map(|_| ())),
    }
    // The stream's end gives its slot back.
    stream.kill().await.unwrap();
    drop(lines);
    within("a slot after the stream ended", async {
        loop {
            if let Ok(c) = relay.try_connect(Transport::Quic, Codec::Postcard, &third).await {
                c.close().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    ws.close().await;
    relay.relay.shutdown().await;
}

#[tokio::test]
async fn events_cross_the_nodes_of_a_redis_region() {
    let redis = edgerelay::testing::RedisServer::start().expect("redis-server runs");
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let node = |name: &'static str| {
        let (url, secret) = (redis.url(), secret.clone());
        move |config: &mut Config| {
            events_config(config);
            config.store.engine = edgerelay::config::StoreEngine::Redis;
            config.redis.url = url;
            config.redis.prefix = "events-test".into();
            config.auth.dev_secret_file = Some(secret);
            let _ = name;
        }
    };
    let a = start_with(node("a")).await;
    let b = start_with(node("b")).await;
    let mut far = b.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &["*"]).await;
    let mut user = b.connect(Transport::WebSocket, Codec::Json, "bob", "acme", &[]).await;
    far.subscribe("orders.>", None).await.unwrap();
    far.subscribe("alerts.*", Some("level > 2")).await.unwrap();
    let mut events = Vec::new();
    for n in 0..30 {
        let level = (n % 5).to_string();
        events.push(if n % 2 == 0 {
            event("orders.eu.created", &format!("o{n}"), &[])
        } else {
            event("alerts.fire", &format!("a{n}"), &[("level", &level)])
        });
    }
    events.push(json!({"topic": "inbox.x", "user": "bob", "id": "u1", "data": 1}));
    publish(a.relay.tcp_addr(), events).await;
    let want: Vec<String> = (0..30)
        .filter(|n| n % 2 == 0 || n % 5 > 2)
        .map(|n| if n % 2 == 0 { format!("o{n}") } else { format!("a{n}") })
        .collect();
    let got = within("every event from the other node", async {
        let mut got = Vec::new();
        while got.len() < want.len() {
            got.push(far.next_topic_event().await.unwrap().id);
        }
        got
    })
    .await;
    // In order per topic (ephemeral alerts need not wait for the orders' commits).
    for prefix in ["o", "a"] {
        let of = |ids: &[String]| ids.iter().filter(|id| id.starts_with(prefix)).cloned().collect::<Vec<_>>();
        assert_eq!(of(&got), of(&want), "in order, filtered, across nodes");
    }
    let e = within("the user's event from the other node", user.next_topic_event()).await.unwrap();
    assert_eq!(e.id, "u1");
    far.close().await;
    user.close().await;
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}
