//! The relay core over every transport and codec: ordered acked messaging, rooms and tenants,
//! permissions, limits, health, metrics and drain. Real relay on loopback, real clients.

mod common;

use common::{Transport, VARIANTS, start, start_with, within};
use edgerelay::client::{Client, ClientError, ClientOptions, Event, QuicEndpoint};
use edgerelay::proto::{Codec, ErrorCode, Payload};

#[tokio::test]
async fn two_clients_exchange_messages_in_order_with_contiguous_acks() {
    let relay = start().await;
    for (transport, codec) in VARIANTS {
        let room = format!("chat:{transport:?}-{codec:?}");
        let alice = relay.connect(transport, codec, "alice", "acme", &["chat:*"]).await;
        let mut bob = relay.connect(transport, codec, "bob", "acme", &["chat:*"]).await;
        let joined_a = alice.join(&room).await.unwrap();
        let joined_b = bob.join(&room).await.unwrap();
        assert_eq!(joined_a.position.offset, 0, "a new room starts empty");
        assert_eq!(joined_b.position, joined_a.position);
        let mut acks = Vec::new();
        for i in 0..50 {
            let position =
                alice.publish(&room, &format!("m{i}"), Payload::json(&serde_json::json!({"n": i}))).await.unwrap();
            assert_eq!(position.epoch, joined_a.position.epoch);
            acks.push(position.offset);
        }
        assert_eq!(acks, (1..=50).collect::<Vec<_>>(), "{transport:?}/{codec:?}: acks are contiguous from 1");
        for i in 0..50u64 {
            let m = within("message", bob.next_message()).await.unwrap();
            assert_eq!((m.room.as_str(), m.position.offset, m.from.as_str()), (room.as_str(), i + 1, "alice"));
            assert_eq!(m.id, format!("m{i}"));
            assert_eq!(m.data.as_json().unwrap(), format!("{{\"n\":{i}}}"));
        }
        alice.close().await;
        bob.close().await;
    }
}

/// On QUIC a room's requests ride the room's stream, which the relay closes when the room is
/// left; requests that cross that `leave` are still answered (on the control stream), and the
/// connection stays up: a publish just before the leave gets its ack once committed, a presence
/// sync just after it gets its refusal.
#[tokio::test]
async fn requests_that_cross_a_leave_on_the_room_stream_are_answered() {
    let relay = start().await;
    let client = relay.connect(Transport::Quic, Codec::Postcard, "lea", "acme", &["*"]).await;
    let room = "crossing";
    client.join(room).await.unwrap();
    let (acked, left) =
        tokio::join!(client.publish(room, "m1", Payload::json(&serde_json::json!(1))), client.leave(room));
    left.unwrap();
    assert_eq!(acked.expect("the ack of a publish sent before the leave").offset, 1);

    client.join(room).await.unwrap();
    let (left, synced) = tokio::join!(client.leave(room), client.presence_sync(room));
    left.unwrap();
    match synced {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::NOT_JOINED),
        other => panic!("a presence sync after the leave: {other:?}"),
    }
    client.ping().await.expect("the connection stays up");
}

/// Clients sharing one QUIC endpoint (one UDP socket) are separate connections to the relay:
/// each gets its own deliveries, and one closing leaves the others and the endpoint working.
#[tokio::test]
async fn clients_sharing_a_quic_endpoint_stay_independent() {
    let relay = start().await;
    let endpoint = QuicEndpoint::bind(std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
    let room = "chat:shared-endpoint";
    let mut clients = Vec::new();
    for (i, transport) in [Transport::Quic, Transport::WebTransport, Transport::Quic].into_iter().enumerate() {
        let options =
            ClientOptions::new(relay.token(&format!("user{i}"), "acme", &["chat:*"])).quic_endpoint(endpoint.clone());
        let client = Client::connect(relay.target(transport), options).await.unwrap();
        client.join(room).await.unwrap();
        clients.push(client);
    }
    let mut remaining = clients.split_off(1);
    clients.pop().unwrap().close().await;
    remaining[0].publish(room, "after-close", Payload::json(&serde_json::json!({"n": 1}))).await.unwrap();
    for client in &mut remaining {
        let m = within("message after a sharer closed", client.next_message()).await.unwrap();
        assert_eq!((m.id.as_str(), m.from.as_str()), ("after-close", "user1"));
    }
    // A client connected after one closed still gets through the same endpoint.
    let options = ClientOptions::new(relay.token("late", "acme", &["chat:*"])).quic_endpoint(endpoint);
    let late = Client::connect(relay.target(Transport::Quic), options).await.unwrap();
    assert_eq!(late.join(room).await.unwrap().position.offset, 1);
    late.close().await;
    for client in remaining {
        client.close().await;
    }
}

#[tokio::test]
async fn quic_and_websocket_clients_share_rooms_across_codecs() {
    let relay = start().await;
    let mut quic = relay.connect(Transport::Quic, Codec::Postcard, "q", "acme", &["*"]).await;
    let mut ws = relay.connect(Transport::WebSocket, Codec::Json, "w", "acme", &["*"]).await;
    quic.join("mixed").await.unwrap();
    ws.join("mixed").await.unwrap();
    ws.publish("mixed", "1", Payload::from(r#"{"from":"ws"}"#)).await.unwrap();
    quic.publish("mixed", "2", Payload::from(vec![0u8, 1, 2, 255])).await.unwrap();
    for client in [&mut quic, &mut ws] {
        let first = within("first", client.next_message()).await.unwrap();
        let second = within("second", client.next_message()).await.unwrap();
        assert_eq!(first.data.as_json(), Some(r#"{"from":"ws"}"#));
        assert_eq!(second.data, Payload::from(vec![0u8, 1, 2, 255]), "binary survives the JSON codec");
        assert_eq!((first.position.offset, second.position.offset), (1, 2));
    }
}

#[tokio::test]
async fn concurrent_publishers_every_subscriber_sees_the_same_order() {
    let relay = start().await;
    let mut subscribers = Vec::new();
    for (i, (transport, codec)) in VARIANTS.iter().enumerate() {
        let c = relay.connect(*transport, *codec, &format!("sub{i}"), "acme", &["*"]).await;
        c.join("busy").await.unwrap();
        subscribers.push(c);
    }
    let mut publishers = Vec::new();
    for (i, (transport, codec)) in VARIANTS.iter().enumerate() {
        let c = relay.connect(*transport, *codec, &format!("pub{i}"), "acme", &["*"]).await;
        publishers.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for n in 0..40 {
                offsets.push(c.publish("busy", &format!("p{i}-{n}"), Payload::from("1")).await.unwrap().offset);
            }
            c.close().await;
            offsets
        }));
    }
    let mut all_acks = Vec::new();
    for p in publishers {
        let offsets = p.await.unwrap();
        assert!(offsets.windows(2).all(|w| w[0] < w[1]), "one publisher's acks increase");
        all_acks.extend(offsets);
    }
    all_acks.sort_unstable();
    let total = 40 * VARIANTS.len() as u64;
    assert_eq!(all_acks, (1..=total).collect::<Vec<_>>(), "every offset assigned exactly once");
    let mut views = Vec::new();
    for sub in &mut subscribers {
        let mut view = Vec::new();
        for _ in 0..total {
            let m = within("message", sub.next_message()).await.unwrap();
            view.push((m.position.offset, m.id));
        }
        assert_eq!(view.iter().map(|v| v.0).collect::<Vec<_>>(), (1..=total).collect::<Vec<_>>());
        views.push(view);
    }
    assert!(views.windows(2).all(|w| w[0] == w[1]), "all subscribers see the same sequence");
}

#[tokio::test]
async fn joining_while_messages_flow_gives_no_gap_and_no_duplicate() {
    let relay = start_with(|c| c.limits.publish_burst = 1000).await;
    for (transport, codec) in VARIANTS {
        let room = format!("race-{transport:?}-{codec:?}");
        let publisher = relay.connect(transport, codec, "p", "acme", &["*"]).await;
        // The join always lands mid-flow: it starts after 20 publishes, publishing goes on until
        // it is answered (at most 600 in all), and 100 more follow it.
        let (flowing_tx, flowing) = tokio::sync::oneshot::channel();
        let (joined_tx, mut joined_rx) = tokio::sync::oneshot::channel::<()>();
        let room2 = room.clone();
        let flow = tokio::spawn(async move {
            let mut flowing_tx = Some(flowing_tx);
            let mut sent = 0u64;
            while sent < 600 && joined_rx.try_recv().is_err() {
                publisher.publish(&room2, &format!("{sent}"), Payload::from("0")).await.unwrap();
                sent += 1;
                if sent == 20 {
                    let _ = flowing_tx.take().map(|tx| tx.send(()));
                }
            }
            for _ in 0..100 {
                publisher.publish(&room2, &format!("{sent}"), Payload::from("0")).await.unwrap();
                sent += 1;
            }
            publisher.close().await;
            sent
        });
        within("publishing under way", flowing).await.unwrap();
        let mut late = relay.connect(transport, codec, "late", "acme", &["*"]).await;
        let joined = late.join(&room).await.unwrap();
        let _ = joined_tx.send(());
        let total = within("publishing done", flow).await.unwrap();
        let mut expected = joined.position.offset + 1;
        while expected <= total {
            let m = within("message after join", late.next_message()).await.unwrap();
            assert_eq!(m.position.offset, expected, "{transport:?}/{codec:?}: contiguous after join");
            expected += 1;
        }
    }
}

#[tokio::test]
async fn rooms_and_tenants_are_isolated() {
    let relay = start().await;
    for (transport, codec) in VARIANTS {
        let acme = relay.connect(transport, codec, "alice", "acme", &["chat:*"]).await;
        let mut acme_other_room = relay.connect(transport, codec, "carol", "acme", &["chat:*"]).await;
        let mut globex = relay.connect(transport, codec, "alice", "globex", &["chat:*"]).await;
        acme.join("chat:lobby").await.unwrap();
        acme_other_room.join("chat:other").await.unwrap();
        let g = globex.join("chat:lobby").await.unwrap();
        // Ids are per variant: a repeated id within the dedupe window would be a retry.
        let id = |what: &str| format!("{what}-{transport:?}-{codec:?}");
        acme.publish("chat:lobby", &id("a"), Payload::from("\"acme\"")).await.unwrap();
        // globex's own message arrives; acme's never does.
        let pos = globex.publish("chat:lobby", &id("g"), Payload::from("\"globex\"")).await.unwrap();
        assert_eq!(pos.offset, g.position.offset + 1, "globex has its own offsets");
        let m = within("globex message", globex.next_message()).await.unwrap();
        assert_eq!(m.data.as_json(), Some("\"globex\""));
        acme_other_room.publish("chat:other", &id("o"), Payload::from("1")).await.unwrap();
        let m = within("other room", acme_other_room.next_message()).await.unwrap();
        assert_eq!(m.room, "chat:other", "no message from chat:lobby leaks into chat:other");
    }
}

#[tokio::test]
async fn permissions_and_request_errors_keep_the_connection_open() {
    let relay = start_with(|c| c.limits.max_rooms_per_connection = 2).await;
    for (transport, codec) in VARIANTS {
        let c = relay.connect(transport, codec, "alice", "acme", &["chat:*", "dm:{sub}:*"]).await;
        let rejected = |r: Result<_, ClientError>| match r {
            Err(ClientError::Rejected { code, .. }) => code,
            other => panic!("expected a rejection, got {other:?}"),
        };
        assert_eq!(rejected(c.join("admin:x").await.map(|_| ())), ErrorCode::PERMISSION_DENIED);
        assert_eq!(
            rejected(c.publish("admin:x", "1", Payload::from("1")).await.map(|_| ())),
            ErrorCode::PERMISSION_DENIED
        );
        assert_eq!(rejected(c.join("dm:bob:1").await.map(|_| ())), ErrorCode::PERMISSION_DENIED);
        c.join("dm:alice:1").await.unwrap();
        assert_eq!(rejected(c.join("bad room").await.map(|_| ())), ErrorCode::BAD_ROOM);
        assert_eq!(rejected(c.join("dm:alice:1").await.map(|_| ())), ErrorCode::ALREADY_JOINED);
        assert_eq!(rejected(c.leave("chat:never").await), ErrorCode::NOT_JOINED);
        c.join("chat:a").await.unwrap();
        assert_eq!(rejected(c.join("chat:b").await.map(|_| ())), ErrorCode::TOO_MANY_ROOMS);
        assert_eq!(rejected(c.publish("chat:a", "", Payload::from("1")).await.map(|_| ())), ErrorCode::BAD_REQUEST);
        let big = Payload::from(format!("\"{}\"", "x".repeat(40_000)).as_str());
        assert_eq!(rejected(c.publish("chat:a", "big", big).await.map(|_| ())), ErrorCode::PAYLOAD_TOO_LARGE);
        c.leave("chat:a").await.unwrap();
        c.join("chat:b").await.unwrap();
        assert!(c.ping().await.is_ok(), "{transport:?}/{codec:?}: connection still usable");
        c.close().await;
    }
}

#[tokio::test]
async fn one_connection_joins_many_more_rooms_than_its_first_stream_allowance() {
    // QUIC connections start with a few streams of credit, raised as rooms are joined.
    let relay = start().await;
    for transport in [Transport::Quic, Transport::WebTransport] {
        let mut c = relay.connect(transport, Codec::Postcard, "alice", "acme", &["*"]).await;
        let rooms: Vec<String> = (0..40).map(|i| format!("many:{transport:?}:{i}")).collect();
        for room in &rooms {
            within("join", c.join(room)).await.unwrap();
        }
        for room in &rooms {
            c.publish(room, "1", Payload::from("1")).await.unwrap();
        }
        for room in &rooms {
            let m = within("message", c.next_message()).await.unwrap();
            assert_eq!(&m.room, room, "{transport:?}: every room delivers, in publish order");
        }
        c.close().await;
    }
}

#[tokio::test]
async fn publish_rate_is_limited_per_connection() {
    let relay = start_with(|c| {
        c.limits.publish_rate = 1;
        c.limits.publish_burst = 5;
    })
    .await;
    for (transport, codec) in VARIANTS {
        let c = relay.connect(transport, codec, "spammer", "acme", &["*"]).await;
        let mut limited = 0;
        for i in 0..10 {
            match c.publish("r", &format!("{i}"), Payload::from("1")).await {
                Ok(_) => {}
                Err(ClientError::Rejected { code, .. }) if code == ErrorCode::RATE_LIMITED => limited += 1,
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        assert!(limited >= 4, "{transport:?}: burst of 5 then limited, got {limited} rejections");
        assert!(c.ping().await.is_ok());
    }
}

#[tokio::test]
async fn connections_per_user_are_capped() {
    let relay = start_with(|c| c.limits.max_connections_per_user = 2).await;
    let token = relay.token("alice", "acme", &["*"]);
    let a = relay.try_connect(Transport::Quic, Codec::Json, &token).await.unwrap();
    let _b = relay.try_connect(Transport::WebSocket, Codec::Json, &token).await.unwrap();
    match relay.try_connect(Transport::WebSocket, Codec::Postcard, &token).await {
        Err(ClientError::Rejected { code, .. }) => assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS),
        other => panic!("expected too_many_connections, got {:?}", other.map(|_| ())),
    }
    a.close().await;
    // The slot is given back when the connection ends.
    within("slot released", async {
        loop {
            if relay.try_connect(Transport::Quic, Codec::Json, &token).await.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let relay = start().await;
    let c = relay.connect(Transport::WebSocket, Codec::Json, "m", "acme", &["*"]).await;
    c.join("metrics").await.unwrap();
    c.publish("metrics", "1", Payload::from("1")).await.unwrap();
    assert_eq!(relay.http_get("/healthz").await.0, 200);
    assert_eq!(relay.http_get("/readyz").await.0, 200);
    let (status, cert) = relay.http_get("/v1/cert").await;
    assert_eq!(status, 200);
    let cert: serde_json::Value = serde_json::from_str(&cert).unwrap();
    assert_eq!(cert["sha256_hex"].as_str().unwrap().len(), 64);
    assert_eq!(cert["dev"], true);
    let (status, text) = relay.http_get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "edgerelay_connections{transport=\"websocket\"}",
        "edgerelay_frames_in_total{transport=\"websocket\"}",
        "edgerelay_bytes_out_total{transport=\"websocket\"}",
        "edgerelay_publishes_total",
        "edgerelay_deliveries_total",
        "edgerelay_fanout_seconds_bucket",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert_eq!(relay.http_get("/nope").await.0, 404);
}

#[tokio::test]
async fn drain_tells_clients_to_go_away_and_closes_them() {
    let relay = start().await;
    let mut clients = Vec::new();
    for (transport, codec) in VARIANTS {
        let c = relay.connect(transport, codec, "d", "acme", &["*"]).await;
        c.join("drain").await.unwrap();
        clients.push(c);
    }
    let addr = relay.relay.tcp_addr();
    let shutdown = tokio::spawn(relay.relay.shutdown());
    for mut c in clients {
        let mut saw_go_away = false;
        let closed = within("close after drain", async {
            loop {
                match c.next_event().await {
                    Some(Event::GoAway { code, reconnect_after, .. }) => {
                        assert_eq!(code, ErrorCode::GOING_AWAY);
                        assert!(reconnect_after.as_millis() > 0);
                        saw_go_away = true;
                    }
                    Some(Event::Closed { code, .. }) => break code,
                    Some(_) => {}
                    None => break None,
                }
            }
        })
        .await;
        assert!(saw_go_away, "go_away arrives before the close");
        assert_eq!(closed, Some(ErrorCode::GOING_AWAY));
    }
    within("shutdown completes", shutdown).await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "TCP listener is closed");
}

/// On QUIC every room has its own stream: a room whose stream the client does not read (so the
/// relay's writes to it are stuck on flow control) must not hold back another room.
#[tokio::test]
async fn a_stalled_room_stream_does_not_delay_another_room_on_quic() {
    use edgerelay::proto::{ClientFrame, FrameReader, ServerFrame};
    use edgerelay::transport::quic::read_frame;

    let relay = start_with(|c| {
        c.limits.outbox_bytes = 64 << 20;
        c.limits.publish_burst = 10_000;
    })
    .await;
    let mut raw = common::raw_quic(&relay).await;
    raw.hello(&relay).await;
    let mut rooms = Vec::new();
    for (req, room) in [(1, "busy"), (2, "quiet")] {
        let (mut send, mut recv) = raw.conn.open_bi().await.unwrap();
        let join = ClientFrame::Join { req, room: room.into(), since: None };
        send.write_all(Codec::Json.frame(&join).prefixed()).await.unwrap();
        let mut reader = FrameReader::new(1 << 20);
        let body = read_frame(&mut recv, &mut reader).await.unwrap().unwrap();
        assert!(matches!(Codec::Json.decode(&body).unwrap(), ServerFrame::Joined { .. }));
        let body = read_frame(&mut recv, &mut reader).await.unwrap().unwrap();
        assert!(matches!(Codec::Json.decode(&body).unwrap(), ServerFrame::PresenceSnapshot { .. }));
        rooms.push((send, recv, reader));
    }
    let publisher = relay.connect(Transport::Quic, Codec::Postcard, "pub", "acme", &["*"]).await;
    // 200 x 16 KiB = 3.2 MB into "busy", well past one stream's flow-control window: the relay's
    // writer for that stream stalls, because nobody reads it.
    let big = Payload::from(vec![1u8; 16 * 1024]);
    for i in 0..200 {
        publisher.publish("busy", &format!("b{i}"), big.clone()).await.unwrap();
    }
    publisher.publish("quiet", "q", Payload::from("\"still here\"")).await.unwrap();
    let (_, quiet_recv, quiet_reader) = &mut rooms[1];
    let body = within("quiet room delivery", read_frame(quiet_recv, quiet_reader)).await.unwrap().unwrap();
    match Codec::Json.decode::<ServerFrame>(&body).unwrap() {
        ServerFrame::Message { room, id, position, .. } => {
            assert_eq!((room.as_str(), id.as_str(), position.offset), ("quiet", "q", 1));
        }
        other => panic!("expected the quiet room's message, got {other:?}"),
    }
    // The busy room lost nothing meanwhile.
    let (_, busy_recv, busy_reader) = &mut rooms[0];
    for expected in 1..=200u64 {
        let body = within("busy room delivery", read_frame(busy_recv, busy_reader)).await.unwrap().unwrap();
        let ServerFrame::Message { position, .. } = Codec::Json.decode::<ServerFrame>(&body).unwrap() else {
            panic!("expected a message");
        };
        assert_eq!(position.offset, expected);
    }
}

#[tokio::test]
async fn backends_publish_through_the_server_api() {
    const KEY: &str = "test-api-key-0123456789";
    let relay = start_with(|c| c.api.key = Some(KEY.into())).await;
    let addr = relay.relay.tcp_addr();
    let mut quic = relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &["*"]).await;
    let mut ws = relay.connect(Transport::WebSocket, Codec::Json, "bob", "globex", &["*"]).await;
    quic.join("news").await.unwrap();
    ws.join("news").await.unwrap();
    quic.publish("news", "from-client", Payload::from("1")).await.unwrap();
    let auth = format!("Bearer {KEY}");
    let json = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let body = r#"{"tenant":"acme","room":"news","id":"srv-1","data":{"headline":"hi"}}"#;
    let (status, answer) = common::http_request(addr, "POST", "/v1/api/publish", &json, body).await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["position"]["offset"], 2, "the API takes the room's next offset");
    let first = within("client message", quic.next_message()).await.unwrap();
    let m = within("api message", quic.next_message()).await.unwrap();
    assert_eq!((first.position.offset, m.position.offset), (1, 2));
    assert_eq!((m.from.as_str(), m.id.as_str(), m.data.as_json()), ("server", "srv-1", Some(r#"{"headline":"hi"}"#)));
    // Tenant isolation holds for the API too: globex's room of the same name saw nothing.
    let (status, _) = common::http_request(
        addr,
        "POST",
        "/v1/api/publish",
        &json,
        r#"{"tenant":"globex","room":"news","id":"g","data":1,"from":"ops"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let g = within("globex message", ws.next_message()).await.unwrap();
    assert_eq!((g.position.offset, g.from.as_str()), (1, "ops"));

    let wrong = [("Authorization", "Bearer nope")];
    assert_eq!(common::http_request(addr, "POST", "/v1/api/publish", &wrong, body).await.0, 401);
    assert_eq!(common::http_request(addr, "POST", "/v1/api/publish", &[], body).await.0, 401);
    let bad_room = r#"{"tenant":"acme","room":"a b","id":"x","data":1}"#;
    let (status, error) = common::http_request(addr, "POST", "/v1/api/publish", &json, bad_room).await;
    assert_eq!(status, 400);
    assert!(error.contains("\"error\":\"bad_room\""), "{error}");
    assert_eq!(common::http_request(addr, "POST", "/v1/api/publish", &json, "{").await.0, 400);
    let big = format!(r#"{{"tenant":"acme","room":"news","id":"x","data":"{}"}}"#, "x".repeat(40_000));
    assert_eq!(common::http_request(addr, "POST", "/v1/api/publish", &json, &big).await.0, 413);
}

#[tokio::test]
async fn server_api_is_off_without_a_key() {
    let relay = start().await;
    let body = r#"{"tenant":"acme","room":"news","id":"1","data":1}"#;
    let (status, _) = common::http_request(relay.relay.tcp_addr(), "POST", "/v1/api/publish", &[], body).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_websocket_member_that_only_answers_pings_is_not_idle() {
    // Found by the load generator: subscribers that only receive were closed with
    // idle_timeout once the timeout passed after their last frame, although they answered
    // every ping.
    let relay = start_with(|c| {
        c.limits.idle_timeout_ms = 1_000;
        c.limits.ping_interval_ms = 200;
    })
    .await;
    let mut listener = relay.connect(Transport::WebSocket, Codec::Json, "bob", "acme", &["chat:*"]).await;
    listener.join("chat:quiet").await.unwrap();
    // Three idle timeouts with nothing sent but the socket library's answers to pings.
    tokio::time::sleep(std::time::Duration::from_millis(3_000)).await;
    let speaker = relay.connect(Transport::WebSocket, Codec::Json, "alice", "acme", &["chat:*"]).await;
    speaker.publish("chat:quiet", "m1", Payload::json(&serde_json::json!({"n": 1}))).await.unwrap();
    let message = within("message after the quiet time", listener.next_message()).await;
    assert_eq!(message.map(|m| m.id), Ok("m1".to_string()), "the quiet member is still connected");
}

#[tokio::test]
async fn joining_a_room_twice_at_once_joins_it_once_and_keeps_it() {
    let relay = start().await;
    for (transport, codec) in VARIANTS {
        let client = relay.connect(transport, codec, "twice", "acme", &["*"]).await;
        let room = format!("double-{transport:?}-{codec:?}");
        let (first, second) = tokio::join!(client.join(&room), client.join(&room));
        let refused = [&first, &second]
            .iter()
            .filter(|r| matches!(r, Err(ClientError::Rejected { code: ErrorCode::ALREADY_JOINED, .. })))
            .count();
        assert!(first.is_ok() != second.is_ok() && refused == 1, "{transport:?}: {first:?} {second:?}");
        // The room stays joined: a message published now arrives.
        let position = client.publish(&room, "after", Payload::from("1")).await.unwrap();
        let mut client = client;
        let m = within("the message", client.next_message()).await.unwrap();
        assert_eq!((m.position, m.id.as_str()), (position, "after"), "{transport:?}");
    }
}

/// With `quic.segmentation_offload` off every packet is its own datagram and quinn's transmit
/// buffer holds one. Many QUIC and WebTransport subscribers, messages from one to several
/// packets, published concurrently: every subscriber gets all of them, in the room's order,
/// intact.
#[tokio::test]
async fn quic_fanout_without_segmentation_offload_delivers_everything_in_order() {
    let relay = start_with(|c| c.quic.segmentation_offload = false).await;
    let mut subscribers = Vec::new();
    for i in 0..12 {
        let (transport, codec) = VARIANTS[[0, 1, 4, 5][i % 4]];
        let c = relay.connect(transport, codec, &format!("sub{i}"), "acme", &["*"]).await;
        c.join("wide").await.unwrap();
        subscribers.push(c);
    }
    let publisher = relay.connect(Transport::Quic, Codec::Postcard, "pub", "acme", &["*"]).await;
    let publisher = std::sync::Arc::new(publisher);
    let total = 120u64;
    // 100 bytes to about 7 KB: one packet to six.
    let body = |n: usize| Payload::json(&format!("{n}:{}", "x".repeat(100 + (n % 8) * 1000)));
    let mut sent = Vec::new();
    for n in 0..total {
        let p = publisher.clone();
        sent.push(tokio::spawn(async move { p.publish("wide", &format!("m{n}"), body(n as usize)).await }));
    }
    for s in sent {
        s.await.unwrap().unwrap();
    }
    for sub in &mut subscribers {
        let mut offsets = Vec::new();
        for _ in 0..total {
            let m = within("message", sub.next_message()).await.unwrap();
            let n: usize = m.id[1..].parse().unwrap();
            assert!(m.data == body(n), "message {n} intact");
            offsets.push(m.position.offset);
        }
        assert_eq!(offsets, (1..=total).collect::<Vec<_>>(), "every message once, in the room's order");
    }
}

/// The relay's path MTU search takes two probes on a path that carries 1,452-byte datagrams
/// (1,326, then 1,452), not quinn's four: each probe is a PING padded to the size tried, and
/// a lost one would be tried again, so exactly two PINGs also means both sizes got through.
#[tokio::test]
async fn the_relay_finds_a_full_size_path_with_two_mtu_probes() {
    let relay = start().await;
    let mut raw = common::raw_quic(&relay).await;
    raw.hello(&relay).await;
    within("the relay's probes", async {
        while raw.conn.stats().frame_rx.ping < 2 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(raw.conn.stats().frame_rx.ping, 2, "PINGs from the relay (its MTU probes)");
}

/// `quic.ack_eliciting_threshold` asks QUIC peers (here a plain quinn client) to acknowledge
/// less often with an ACK_FREQUENCY frame; unset, the relay sends none.
#[tokio::test]
async fn quic_peers_are_asked_for_fewer_acks_only_when_configured() {
    for threshold in [None, Some(9)] {
        let relay = start_with(|c| c.quic.ack_eliciting_threshold = threshold).await;
        let mut raw = common::raw_quic(&relay).await;
        raw.hello(&relay).await;
        // The frame rides with the relay's next ack-eliciting packet: a ping answered with a pong.
        let ping = edgerelay::proto::ClientFrame::Ping { req: 1 };
        raw.send_body(&Codec::Json.encode(&ping)).await;
        let mut reader = edgerelay::proto::FrameReader::new(1 << 20);
        within("pong", edgerelay::transport::quic::read_frame(&mut raw.recv, &mut reader)).await.unwrap().unwrap();
        let asked = raw.conn.stats().frame_rx.ack_frequency;
        assert_eq!(asked > 0, threshold.is_some(), "ACK_FREQUENCY frames received: {asked} with {threshold:?}");
    }
}
