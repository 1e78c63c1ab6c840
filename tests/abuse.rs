//! Bad input: bad tokens, malformed, oversized and premature frames, silent clients, stalled
//! readers. Each gets its documented error and close code; the relay keeps serving everyone else.

mod common;

use common::{TestRelay, Transport, VARIANTS, claims, now_secs, raw_quic, start, start_with, within};
use edgerelay::auth::Signer;
use edgerelay::client::{Client, ClientError, ClientOptions, Event};
use edgerelay::proto::{ClientFrame, Codec, ErrorCode, Payload, ServerFrame, codec::length_prefix};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// A client in a room that must keep working while others misbehave.
struct Bystander {
    client: Client,
    sent: u32,
}

impl Bystander {
    async fn new(relay: &TestRelay) -> Bystander {
        let client = relay.connect(Transport::Quic, Codec::Postcard, "bystander", "acme", &["*"]).await;
        client.join("calm").await.unwrap();
        Bystander { client, sent: 0 }
    }

    async fn still_served(&mut self) {
        self.sent += 1;
        let id = format!("b{}", self.sent);
        self.client.publish("calm", &id, Payload::from("1")).await.expect("bystander can publish");
        let m = within("bystander message", self.client.next_message()).await.unwrap();
        assert_eq!(m.id, id);
    }
}

fn rejected<T>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Rejected { code, .. }) => code,
        Err(ClientError::Closed { code: Some(code), .. }) => code,
        Err(other) => panic!("expected a refusal with a code, got {other}"),
        Ok(_) => panic!("expected a refusal, got a connection"),
    }
}

#[tokio::test]
async fn bad_tokens_are_refused_with_documented_codes() {
    let relay = start().await;
    let mut bystander = Bystander::new(&relay).await;
    let mut expired = claims("eve", "acme", &["*"]);
    expired.exp = now_secs() - 3600;
    let mut future = claims("eve", "acme", &["*"]);
    future.nbf = Some(now_secs() + 3600);
    let no_tenant = claims("eve", "", &["*"]);
    let cases = [
        ("garbage", "not.a.jwt".to_owned(), ErrorCode::TOKEN_INVALID),
        ("expired", relay.sign(&expired), ErrorCode::TOKEN_EXPIRED),
        ("not yet valid", relay.sign(&future), ErrorCode::TOKEN_NOT_YET_VALID),
        (
            "foreign key",
            Signer::dev(b"some other secret").sign(&claims("eve", "acme", &["*"])).unwrap(),
            ErrorCode::TOKEN_INVALID,
        ),
        ("no tenant", relay.sign(&no_tenant), ErrorCode::TOKEN_INVALID),
    ];
    for (transport, codec) in VARIANTS {
        for (what, token, code) in &cases {
            let got = rejected(relay.try_connect(transport, codec, token).await);
            assert_eq!(got, *code, "{what} over {transport:?}/{codec:?}");
        }
        bystander.still_served().await;
    }
}

#[tokio::test]
async fn live_connection_closes_at_token_expiry_unless_refreshed() {
    let relay = start_with(|c| c.auth.leeway_secs = 0).await;
    for (transport, codec) in [(Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json)] {
        let mut short = claims("tim", "acme", &["*"]);
        short.exp = now_secs() + 2;
        let mut expiring = relay.try_connect(transport, codec, &relay.sign(&short)).await.unwrap();
        let refreshed = relay.try_connect(transport, codec, &relay.sign(&short)).await.unwrap();
        let new_exp = refreshed.refresh(&relay.token("tim", "acme", &["*"])).await.unwrap();
        assert!(new_exp > now_secs() + 60);
        let mut other_user = claims("mallory", "acme", &["*"]);
        other_user.exp = now_secs() + 3600;
        let closed = within("expiry close", async {
            loop {
                if let Some(Event::Closed { code, .. }) = expiring.next_event().await {
                    break code;
                }
            }
        })
        .await;
        assert_eq!(closed, Some(ErrorCode::TOKEN_EXPIRED), "{transport:?}");
        assert!(refreshed.ping().await.is_ok(), "{transport:?}: the refreshed connection outlives the first token");
        // A refresh must be for the same user.
        assert_eq!(rejected(refreshed.refresh(&relay.sign(&other_user)).await), ErrorCode::TOKEN_INVALID);
    }
}

#[tokio::test]
async fn disconnect_and_revoke_reach_a_connection_after_its_token_refresh() {
    const API_KEY: &str = "abuse-test-api-key-0123456789";
    let relay = start_with(|c| c.api.key = Some(API_KEY.into())).await;
    let auth = format!("Bearer {API_KEY}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let api = |path: &'static str, user: String| {
        let body = serde_json::json!({ "tenant": "acme", "user": user }).to_string();
        let addr = relay.relay.tcp_addr();
        async move {
            let (status, answer) = common::http_request(addr, "POST", path, &headers, &body).await;
            assert_eq!(status, 200, "{path}: {answer}");
        }
    };
    for (transport, codec) in [(Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json)] {
        let (kim, rex) = (format!("kim-{transport:?}"), format!("rex-{transport:?}"));
        let mut kicked = relay.try_connect(transport, codec, &relay.token(&kim, "acme", &["*"])).await.unwrap();
        kicked.refresh(&relay.token(&kim, "acme", &["*"])).await.unwrap();
        api("/v1/api/disconnect", kim).await;
        assert_eq!(common::closed_with(&mut kicked).await, Some(ErrorCode::DISCONNECTED), "{transport:?}");

        let mut revoked = relay.try_connect(transport, codec, &relay.token(&rex, "acme", &["*"])).await.unwrap();
        revoked.refresh(&relay.token(&rex, "acme", &["*"])).await.unwrap();
        api("/v1/api/revoke", rex).await;
        assert_eq!(common::closed_with(&mut revoked).await, Some(ErrorCode::TOKEN_REVOKED), "{transport:?}");
    }
}

// ---- raw WebSocket ----

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw_ws(relay: &TestRelay) -> Ws {
    tokio_tungstenite::connect_async(format!("ws://{}/v1/ws", relay.relay.tcp_addr())).await.unwrap().0
}

/// The WebSocket close code, and the last error frame before it.
async fn ws_closed_with(ws: &mut Ws) -> (Option<u16>, Option<ErrorCode>) {
    let mut last_error = None;
    within("websocket close", async {
        while let Some(msg) = ws.next().await {
            match msg {
                Ok(Message::Text(text)) => {
                    if let Ok(ServerFrame::Error { code, .. }) = Codec::Json.decode(text.as_bytes()) {
                        last_error = Some(code);
                    }
                }
                Ok(Message::Binary(bytes)) => {
                    if let Ok(ServerFrame::Error { code, .. }) = Codec::Postcard.decode(&bytes) {
                        last_error = Some(code);
                    }
                }
                Ok(Message::Close(frame)) => return (frame.map(|f| u16::from(f.code)), last_error),
                Ok(_) => {}
                Err(_) => return (None, last_error),
            }
        }
        (None, last_error)
    })
    .await
}

fn frame_cases(relay: &TestRelay) -> Vec<(&'static str, Vec<u8>, ErrorCode)> {
    let join = ClientFrame::Join { req: 1, room: "x".into(), since: None };
    let wrong_version = ClientFrame::Hello { version: 9, token: relay.token("v", "acme", &["*"]), client: "x".into() };
    vec![
        ("garbage first frame", vec![0xff, 0xfe, 0x00, 0x13], ErrorCode::BAD_FRAME),
        ("truncated json", b"{\"hello\":{\"version\":1".to_vec(), ErrorCode::BAD_FRAME),
        ("join before hello (json)", Codec::Json.encode(&join).to_vec(), ErrorCode::HELLO_REQUIRED),
        ("join before hello (postcard)", Codec::Postcard.encode(&join).to_vec(), ErrorCode::HELLO_REQUIRED),
        ("unknown version", Codec::Json.encode(&wrong_version).to_vec(), ErrorCode::UNSUPPORTED_VERSION),
    ]
}

#[tokio::test]
async fn malformed_and_premature_frames_close_only_the_offender() {
    let relay = start().await;
    let mut bystander = Bystander::new(&relay).await;
    for (what, body, code) in frame_cases(&relay) {
        let mut quic = raw_quic(&relay).await;
        quic.send_body(&body).await;
        let (close, error) = quic.closed_with().await;
        assert_eq!(close, Some(u64::from(code.0)), "QUIC close code for {what}");
        assert_eq!(error, Some(code), "QUIC error frame for {what}");

        let mut ws = raw_ws(&relay).await;
        let msg = if body.first() == Some(&b'{') {
            Message::text(String::from_utf8(body.clone()).unwrap())
        } else {
            Message::binary(body.clone())
        };
        ws.send(msg).await.unwrap();
        let (close, error) = ws_closed_with(&mut ws).await;
        assert_eq!(close, Some(code.ws_close_code()), "WebSocket close code for {what}");
        assert_eq!(error, Some(code), "WebSocket error frame for {what}");
        bystander.still_served().await;
    }
}

#[tokio::test]
async fn malformed_frame_after_hello_closes_with_bad_frame() {
    let relay = start().await;
    let mut bystander = Bystander::new(&relay).await;
    let mut quic = raw_quic(&relay).await;
    quic.hello(&relay).await;
    quic.send_body(b"{\"publish\":{\"req\":1}}").await;
    assert_eq!(quic.closed_with().await, (Some(101), Some(ErrorCode::BAD_FRAME)));

    let mut ws = raw_ws(&relay).await;
    ws.send(Message::text(String::from_utf8(Codec::Json.encode(&relay.raw_hello()).to_vec()).unwrap())).await.unwrap();
    ws.send(Message::text("[1,2,3]")).await.unwrap();
    let (close, error) = ws_closed_with(&mut ws).await;
    assert_eq!((close, error), (Some(4101), Some(ErrorCode::BAD_FRAME)));
    bystander.still_served().await;
}

/// `JSON.stringify` writes a broken string's lone surrogate as `\udc00`, which is JSON syntax
/// but not Unicode text. Whether it sits in a string field or in `data`, that request alone is
/// refused with `bad_request`; the connection lives on.
#[tokio::test]
async fn a_lone_surrogate_escape_refuses_the_request_alone() {
    let relay = start().await;
    let mut ws = raw_ws(&relay).await;
    ws.send(Message::text(String::from_utf8(Codec::Json.encode(&relay.raw_hello()).to_vec()).unwrap())).await.unwrap();
    let mut next = async || loop {
        match within("a frame", ws.next()).await.expect("open").unwrap() {
            Message::Text(text) => return Codec::Json.decode::<ServerFrame>(text.as_bytes()).unwrap(),
            Message::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    };
    assert!(matches!(next().await, ServerFrame::Welcome { .. }));
    let requests = [
        r#"{"publish":{"req":5,"room":"r","id":"\udc00","data":1}}"#,
        r#"{"publish":{"req":6,"room":"r","id":"ok","data":{"text":"a\ud800b"}}}"#,
        r#"{"join":{"req":7,"room":"r\udfff","since":null}}"#,
        r#"{"ping":{"req":8}}"#,
    ];
    for request in requests {
        ws.send(Message::text(request)).await.unwrap();
    }
    let mut answers = Vec::new();
    while answers.len() < requests.len() {
        let Message::Text(text) = within("an answer", ws.next()).await.expect("open").unwrap() else { continue };
        match Codec::Json.decode::<ServerFrame>(text.as_bytes()).unwrap() {
            ServerFrame::Error { req, code, .. } => answers.push((req, Some(code))),
            ServerFrame::Pong { req, .. } => answers.push((req, None)),
            other => panic!("unexpected {other:?}"),
        }
    }
    let bad = Some(ErrorCode::BAD_REQUEST);
    assert_eq!(answers, [(5, bad), (6, bad), (7, bad), (8, None)]);
}

#[tokio::test]
async fn oversized_frames_are_refused_before_they_are_buffered() {
    let relay = start_with(|c| {
        c.limits.max_frame_bytes = 8192;
        c.limits.max_payload_bytes = 4096;
    })
    .await;
    let mut bystander = Bystander::new(&relay).await;
    // QUIC: the length prefix alone announces 10 MB; the relay refuses without reading the body.
    let mut quic = raw_quic(&relay).await;
    // Before the first frame is read the codec is unknown: the close code alone reports it.
    quic.send.write_all(&length_prefix(10 << 20)).await.unwrap();
    assert_eq!(quic.closed_with().await.0, Some(102));
    // After hello too.
    let mut quic = raw_quic(&relay).await;
    quic.hello(&relay).await;
    quic.send_body(&vec![b' '; 9000]).await;
    assert_eq!(quic.closed_with().await, (Some(102), Some(ErrorCode::FRAME_TOO_LARGE)));
    // WebSocket: a message over the limit.
    let mut ws = raw_ws(&relay).await;
    ws.send(Message::binary(vec![0u8; 9000])).await.unwrap();
    assert_eq!(ws_closed_with(&mut ws).await.0, Some(4102));
    // Beyond the socket library's own cap (twice the frame limit, at least 64 KiB) too.
    let mut ws = raw_ws(&relay).await;
    ws.send(Message::binary(vec![0u8; 100 * 1024])).await.unwrap();
    assert_eq!(ws_closed_with(&mut ws).await.0, Some(4102));
    bystander.still_served().await;
}

#[tokio::test]
async fn silent_connections_are_closed_at_the_auth_deadline() {
    let relay = start_with(|c| c.limits.auth_timeout_ms = 300).await;
    let mut bystander = Bystander::new(&relay).await;
    // QUIC only announces a stream with data, so the silent client sends a prefix without a body.
    let mut quic = raw_quic(&relay).await;
    quic.send.write_all(&[0, 0, 0, 9]).await.unwrap();
    let (close, _) = quic.closed_with().await;
    assert_eq!(close, Some(105));
    let mut ws = raw_ws(&relay).await;
    assert_eq!(ws_closed_with(&mut ws).await.0, Some(4105));
    bystander.still_served().await;
}

/// A member of `room` that buffers one event and reads only when the test does, so the relay
/// sees it fall behind.
async fn stalled_member(relay: &TestRelay, transport: Transport, room: &str) -> Client {
    let mut options = ClientOptions::new(relay.token("slow", "acme", &["*"])).codec(Codec::Postcard);
    options.event_buffer = 1;
    let stalled = Client::connect(relay.target(transport), options).await.unwrap();
    stalled.join(room).await.unwrap();
    stalled
}

#[tokio::test]
async fn stalled_reader_does_not_slow_others_and_catches_up_from_history() {
    let relay = start_with(|c| {
        common::small_outbox(c, 256 * 1024);
        c.limits.publish_rate = 100_000;
        c.limits.publish_burst = 100_000;
    })
    .await;
    for transport in [Transport::Quic, Transport::WebSocket] {
        let room = format!("flood-{transport:?}");
        let mut stalled = stalled_member(&relay, transport, &room).await;
        let mut fast = relay.connect(transport, Codec::Postcard, "fast", "acme", &["*"]).await;
        fast.join(&room).await.unwrap();
        let publisher = relay.connect(Transport::Quic, Codec::Postcard, "pub", "acme", &["*"]).await;

        // 2,000 messages of 16 KiB: 32 MiB, far beyond the socket buffers and the 256 KiB outbox.
        let payload = Payload::from(vec![7u8; 16 * 1024]);
        let total = 2000u64;
        let reader = tokio::spawn(async move {
            for expected in 1..=total {
                let m = fast.next_message().await.expect("fast subscriber keeps receiving");
                assert_eq!(m.position.offset, expected);
            }
            fast
        });
        for i in 0..total {
            let position = publisher.publish(&room, &format!("{i}"), payload.clone()).await.unwrap();
            assert_eq!(position.offset, i + 1);
        }
        let fast = within("fast subscriber gets everything", reader).await.unwrap();
        // The stalled client was switched to replay from history, not dropped: once it reads,
        // it gets every message, in order, exactly once.
        within("stalled reader catches up", async {
            for expected in 1..=total {
                let m = stalled.next_message().await.expect("stalled subscriber is still connected");
                assert_eq!(m.position.offset, expected, "{transport:?}");
            }
        })
        .await;
        fast.close().await;
        publisher.close().await;
        stalled.close().await;
    }
}

#[tokio::test]
async fn stalled_reader_beyond_retention_is_closed_as_slow_consumer() {
    let relay = start_with(|c| {
        common::small_outbox(c, 128 * 1024);
        c.limits.publish_rate = 100_000;
        c.limits.publish_burst = 100_000;
        c.store.max_messages = 50;
    })
    .await;
    for transport in [Transport::Quic, Transport::WebSocket] {
        let room = format!("trimmed-{transport:?}");
        let mut stalled = stalled_member(&relay, transport, &room).await;
        let publisher = relay.connect(Transport::Quic, Codec::Postcard, "pub", "acme", &["*"]).await;
        let payload = Payload::from(vec![7u8; 16 * 1024]);
        for i in 0..1000u64 {
            publisher.publish(&room, &format!("{i}"), payload.clone()).await.unwrap();
        }
        // What was queued before it fell behind arrives in order; then the relay finds that
        // history (50 messages) no longer reaches back to it and closes with a resumable code.
        let (received, closed) = within("stalled reader closed", async {
            let mut received = 0u64;
            loop {
                match stalled.next_event().await {
                    Some(Event::Message(m)) => {
                        received += 1;
                        assert_eq!(m.position.offset, received, "no gap before the close");
                    }
                    Some(Event::Closed { code, .. }) => break (received, code),
                    Some(_) => {}
                    None => break (received, None),
                }
            }
        })
        .await;
        assert_eq!(closed, Some(ErrorCode::SLOW_CONSUMER), "{transport:?}");
        assert!(received < 1000, "{transport:?}: {received}");
        publisher.close().await;
    }
}

#[tokio::test]
async fn a_websocket_peer_that_stops_answering_pings_is_closed_as_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = start_with(|c| {
        c.limits.idle_timeout_ms = 1_000;
        c.limits.ping_interval_ms = 200;
    })
    .await;
    // By hand, so nothing answers the relay's pings: upgrade, one masked text frame (hello),
    // then silence.
    let mut tcp = hand_ws(&relay).await;
    tcp.write_all(&masked(0x81, &Codec::Json.encode(&relay.raw_hello()))).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(2_500)).await;
    let mut received = Vec::new();
    within("the relay closes", tcp.read_to_end(&mut received)).await.unwrap();
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains("welcome"), "{text}");
    // Pings (unmasked, empty: 0x89 0x00) every 200 ms while it went quiet, then the close.
    let pings = received.windows(2).filter(|w| *w == [0x89, 0x00]).count();
    assert!(pings >= 2, "{pings} pings before the idle timeout: {text}");
    // The close frame: opcode 8, then the close code 4000 + idle_timeout.
    let code = (4000 + ErrorCode::IDLE_TIMEOUT.0).to_be_bytes();
    let closed = received.windows(4).any(|w| w[0] == 0x88 && w[2..4] == code);
    assert!(closed, "no close with code {}: {text}", 4000 + ErrorCode::IDLE_TIMEOUT.0);
}

// ---- WebSocket framing by hand: what no client library would send ----

/// Upgrades a raw socket by hand (the 101 response is read with the rest later).
async fn hand_ws(relay: &TestRelay) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut tcp = tokio::net::TcpStream::connect(relay.relay.tcp_addr()).await.unwrap();
    let upgrade = "GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    tcp.write_all(upgrade.as_bytes()).await.unwrap();
    tcp
}

/// A client frame with the given first byte (FIN, opcode), masked as clients must.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let mut frame = vec![first];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// Everything the relay sends until it closes the socket: the HTTP status and the WebSocket
/// frames after the 101 response, as (opcode, payload).
async fn relay_frames(mut tcp: tokio::net::TcpStream) -> (u16, Vec<(u8, Vec<u8>)>) {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    within("the relay closes", tcp.read_to_end(&mut received)).await.unwrap();
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").expect("HTTP response") + 4;
    let head = String::from_utf8_lossy(&received[..head_end]);
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut frames = Vec::new();
    let mut rest = &received[head_end..];
    while rest.len() >= 2 {
        let (len, at) = match rest[1] & 0x7F {
            126 => (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
            127 => (u64::from_be_bytes(rest[2..10].try_into().unwrap()) as usize, 10),
            n => (usize::from(n), 2),
        };
        assert_eq!(rest[1] & 0x80, 0, "server frames are never masked");
        frames.push((rest[0] & 0x0F, rest[at..at + len].to_vec()));
        rest = &rest[at + len..];
    }
    (status, frames)
}

/// The close code of the close frame among `frames`.
fn close_code(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    frames.iter().find(|(op, _)| *op == 0x8).map(|(_, p)| u16::from_be_bytes([p[0], p[1]]))
}

#[tokio::test]
async fn websocket_framing_violations_and_bad_handshakes_get_documented_answers() {
    use tokio::io::AsyncWriteExt;
    let relay = start_with(|c| {
        c.limits.max_frame_bytes = 8192;
        c.limits.max_payload_bytes = 4096;
    })
    .await;
    let mut bystander = Bystander::new(&relay).await;
    let addr = relay.relay.tcp_addr();
    assert_eq!(common::http_get(addr, "/v1/ws").await.0, 400, "a plain GET is not an upgrade");
    let old_version = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Version", "8"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    assert_eq!(common::http_request(addr, "GET", "/v1/ws", &old_version, "").await.0, 426);

    let hello = masked(0x81, &Codec::Json.encode(&relay.raw_hello()));
    let cases: [(&str, Vec<u8>, u16); 4] = [
        ("an unmasked frame", vec![0x82, 0x01, 0x00], 4101),
        ("text that is not UTF-8", masked(0x81, &[0xff, 0xfe, 0xfd]), 4101),
        ("an unknown opcode", masked(0x83, b"x"), 4101),
        // The header alone announces a gigabyte: refused without waiting for it.
        ("a message over the limit", vec![0x82, 0xFF, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4], 4102),
    ];
    for (what, bad, code) in cases {
        let mut tcp = hand_ws(&relay).await;
        tcp.write_all(&hello).await.unwrap();
        tcp.write_all(&bad).await.unwrap();
        let (status, frames) = relay_frames(tcp).await;
        assert_eq!(status, 101, "{what}");
        assert!(frames.iter().any(|(op, p)| *op == 0x1 && p.starts_with(b"{\"welcome\"")), "{what}: no welcome");
        assert_eq!(close_code(&frames), Some(code), "{what}");
        let error = frames.iter().rev().find(|(op, _)| *op == 0x1).map(|(_, p)| Codec::Json.decode::<ServerFrame>(p));
        assert!(matches!(error, Some(Ok(ServerFrame::Error { code: c, .. })) if c.ws_close_code() == code), "{what}");
        bystander.still_served().await;
    }
}

#[tokio::test]
async fn a_websocket_client_may_fragment_messages_and_ping_between_the_fragments() {
    use tokio::io::AsyncWriteExt;
    let relay = start().await;
    let hello = Codec::Json.encode(&relay.raw_hello());
    let (a, rest) = hello.split_at(5);
    let (b, c) = rest.split_at(rest.len() / 2);
    let mut tcp = hand_ws(&relay).await;
    // Text, not final; continuation; a ping between fragments; the final continuation; then a
    // normal close.
    for frame in [masked(0x01, a), masked(0x00, b), masked(0x89, b"are you there"), masked(0x80, c)] {
        tcp.write_all(&frame).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    tcp.write_all(&masked(0x88, &1000u16.to_be_bytes())).await.unwrap();
    let (status, frames) = relay_frames(tcp).await;
    assert_eq!(status, 101);
    assert!(frames.contains(&(0xA, b"are you there".to_vec())), "the ping is answered with its payload");
    assert!(
        frames.iter().any(|(op, p)| *op == 0x1 && p.starts_with(b"{\"welcome\"")),
        "the fragmented hello is served"
    );
    assert_eq!(close_code(&frames), Some(1000));
}

/// A frame for room A sent on room B's QUIC stream (`publish`, `leave` or `cursor`) closes the
/// connection with `wrong_stream`: each room's stream carries that room only.
#[tokio::test]
async fn a_room_frame_on_another_rooms_stream_is_wrong_stream() {
    let relay = start().await;
    let mut bystander = Bystander::new(&relay).await;
    let position = edgerelay::proto::Position { epoch: 1, offset: 1 };
    let frames = [
        ("publish", ClientFrame::Publish { req: 9, room: "a".into(), id: "m1".into(), data: Payload::from("1") }),
        ("leave", ClientFrame::Leave { req: 9, room: "a".into() }),
        ("cursor", ClientFrame::Cursor { room: "a".into(), position }),
    ];
    for (what, frame) in frames {
        let mut quic = raw_quic(&relay).await;
        quic.hello(&relay).await;
        let mut streams = Vec::new();
        for (req, room) in [(1, "a"), (2, "b")] {
            let (mut send, mut recv) = quic.conn.open_bi().await.unwrap();
            let join = Codec::Json.encode(&ClientFrame::Join { req, room: room.into(), since: None });
            send.write_all(&length_prefix(join.len())).await.unwrap();
            send.write_all(&join).await.unwrap();
            let mut reader = edgerelay::proto::FrameReader::new(1 << 20);
            let body = within("joined", edgerelay::transport::quic::read_frame(&mut recv, &mut reader)).await;
            let joined = Codec::Json.decode::<ServerFrame>(&body.unwrap().unwrap()).unwrap();
            assert!(matches!(joined, ServerFrame::Joined { .. }), "{room} joined: {joined:?}");
            streams.push((send, recv));
        }
        let body = Codec::Json.encode(&frame);
        let send = &mut streams[1].0;
        send.write_all(&length_prefix(body.len())).await.unwrap();
        send.write_all(&body).await.unwrap();
        let (close, error) = within("the relay closes the connection", quic.closed_with()).await;
        assert_eq!(close, Some(106), "close code for {what} on another room's stream");
        assert_eq!(error, Some(ErrorCode::WRONG_STREAM), "error frame for {what}");
        bystander.still_served().await;
    }
}
