//! What docs/protocol.md promises about order, checked with hand-driven connections that see
//! every frame as it arrives: answers come in the order their requests did (even when one needs
//! IO, like a publish's ack or a join), a client that joins and then publishes receives its own
//! message, the presence snapshot comes right after `joined`, and on QUIC a room stream the
//! client stops reading never holds back another room. The order checks run on both engines:
//! the embedded one (an in-process relay) and Redis (the relay binary on a `redis-server` this
//! test starts).

mod common;
#[path = "common/process.rs"]
mod process;

use common::{quic_connection, start_with, within};
use edgerelay::proto::codec::length_prefix;
use edgerelay::proto::{ClientFrame, Codec, FrameReader, PROTOCOL_VERSION, Payload, Position, ServerFrame};
use edgerelay::testing::RedisServer;
use edgerelay::transport::quic::read_frame;
use futures_util::{SinkExt, StreamExt};
use process::RelayProcess;
use tokio_tungstenite::tungstenite::Message;

fn hello(token: String) -> ClientFrame {
    ClientFrame::Hello { version: PROTOCOL_VERSION, token, client: "ordering-test".into() }
}

/// A connection driven frame by frame: WebSocket, or raw QUIC with everything on the control
/// stream.
enum Raw {
    Ws(tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>),
    Quic { _endpoint: quinn::Endpoint, send: quinn::SendStream, recv: quinn::RecvStream, reader: FrameReader },
}

impl Raw {
    async fn ws(tcp: std::net::SocketAddr, token: String) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{tcp}/v1/ws")).await.unwrap();
        let mut raw = Raw::Ws(ws);
        raw.hello(token).await;
        raw
    }

    async fn quic(udp: std::net::SocketAddr, pin: [u8; 32], token: String) -> Raw {
        let (endpoint, conn) = quic_connection(udp, pin, None).await;
        let (send, recv) = conn.open_bi().await.unwrap();
        let mut raw = Raw::Quic { _endpoint: endpoint, send, recv, reader: FrameReader::new(1 << 20) };
        raw.hello(token).await;
        raw
    }

    async fn hello(&mut self, token: String) {
        self.send(&hello(token)).await;
        assert!(matches!(self.next().await, ServerFrame::Welcome { .. }));
    }

    async fn send(&mut self, frame: &ClientFrame) {
        let body = Codec::Json.encode(frame);
        match self {
            Raw::Ws(ws) => ws.send(Message::text(String::from_utf8(body.to_vec()).unwrap())).await.unwrap(),
            Raw::Quic { send, .. } => {
                send.write_all(&length_prefix(body.len())).await.unwrap();
                send.write_all(&body).await.unwrap();
            }
        }
    }

    async fn next(&mut self) -> ServerFrame {
        within("a frame from the relay", async {
            match self {
                Raw::Ws(ws) => loop {
                    match ws.next().await.expect("connection open").unwrap() {
                        Message::Text(text) => return Codec::Json.decode(text.as_bytes()).unwrap(),
                        Message::Close(close) => panic!("closed by the relay: {close:?}"),
                        _ => {}
                    }
                },
                Raw::Quic { recv, reader, .. } => {
                    let body = read_frame(recv, reader).await.unwrap().expect("stream open");
                    Codec::Json.decode(&body).unwrap()
                }
            }
        })
        .await
    }
}

/// Sends join, then a burst of requests without waiting, and checks that the eight answers
/// come in request order and that the client receives its own message, after `joined`.
async fn answers_follow_requests(raw: &mut Raw, room: &str, what: &str) {
    let requests = [
        ClientFrame::Join { req: 1, room: room.into(), since: None },
        ClientFrame::Ping { req: 2 },
        ClientFrame::Publish {
            req: 3,
            room: room.into(),
            id: "own".into(),
            data: Payload::json(&serde_json::json!({"n": 1})),
        },
        ClientFrame::Ping { req: 4 },
        ClientFrame::History { req: 5, room: room.into(), before: None, limit: 10 },
        ClientFrame::Rooms { req: 6 },
        ClientFrame::Leave { req: 7, room: "never-joined".into() },
        ClientFrame::Ping { req: 8 },
    ];
    for request in &requests {
        raw.send(request).await;
    }
    let mut answers = Vec::new();
    let mut joined_at = None;
    let mut own = None;
    while answers.len() < requests.len() || own.is_none() {
        let frame = raw.next().await;
        if let ServerFrame::Joined { position, .. } = &frame {
            joined_at = Some(*position);
        }
        if let ServerFrame::Message { id, position, .. } = &frame
            && id == "own"
        {
            assert!(joined_at.is_some(), "{what}: the message came before joined");
            own = Some(*position);
        }
        // A presence snapshot after `joined` carries req 0: it answers nothing here.
        if let Some(req) = frame.req().filter(|req| *req != 0) {
            answers.push(req);
        }
    }
    assert_eq!(answers, (1..=8).collect::<Vec<u64>>(), "{what}: answers in request order");
    let (joined_at, own) = (joined_at.unwrap(), own.unwrap());
    assert_eq!(own, Position { epoch: joined_at.epoch, offset: joined_at.offset + 1 }, "{what}: joined before own");
}

const TRIES: usize = 10;

#[tokio::test]
async fn answers_come_in_request_order_on_the_embedded_engine() {
    let relay = start_with(|_| {}).await;
    let token = || relay.token("raw", "acme", &["*"]);
    for i in 0..TRIES {
        let mut ws = Raw::ws(relay.relay.tcp_addr(), token()).await;
        answers_follow_requests(&mut ws, &format!("ws:{i}"), "WebSocket").await;
        let mut quic = Raw::quic(relay.relay.udp_addr(), relay.cert_sha256(), token()).await;
        answers_follow_requests(&mut quic, &format!("quic:{i}"), "QUIC").await;
    }
}

#[tokio::test]
async fn answers_come_in_request_order_on_the_redis_engine() {
    let redis = RedisServer::start().expect("start redis-server");
    let dir = tempfile::tempdir().unwrap();
    let mut node = RelayProcess::new(dir.path())
        .with_env("EDGERELAY_STORE__ENGINE", "redis")
        .with_env("EDGERELAY_REDIS__URL", redis.url());
    node.start().await;
    let pin = node.cert_pin().await;
    for i in 0..TRIES {
        let mut ws = Raw::ws(node.tcp, node.token("raw")).await;
        answers_follow_requests(&mut ws, &format!("ws:{i}"), "WebSocket, Redis").await;
        let mut quic = Raw::quic(node.udp, pin, node.token("raw")).await;
        answers_follow_requests(&mut quic, &format!("quic:{i}"), "QUIC, Redis").await;
    }
    node.kill();
}

#[tokio::test]
async fn the_presence_snapshot_comes_right_after_joined() {
    let relay = start_with(|_| {}).await;
    // Someone is already there, so the snapshot is not empty.
    let other = relay.connect(common::Transport::WebSocket, Codec::Json, "other", "acme", &["*"]).await;
    other.join("lobby").await.unwrap();
    for i in 0..TRIES {
        let mut raw = Raw::ws(relay.relay.tcp_addr(), relay.token(&format!("user{i}"), "acme", &["*"])).await;
        raw.send(&ClientFrame::Join { req: 1, room: "lobby".into(), since: None }).await;
        assert!(matches!(raw.next().await, ServerFrame::Joined { .. }));
        match raw.next().await {
            ServerFrame::PresenceSnapshot { users, .. } => {
                let names: Vec<&str> = users.iter().map(|u| u.user.as_str()).collect();
                assert!(names.contains(&"other") && names.contains(&format!("user{i}").as_str()), "{names:?}");
            }
            frame => panic!("expected the presence snapshot right after joined, got {frame:?}"),
        }
    }
}

/// With rooms on their own QUIC streams, a client that stops reading one room's stream (flow
/// control: the relay cannot send more on it) keeps receiving the other room, and once it
/// reads again it gets every message of the stalled room, in order, from history.
#[tokio::test]
async fn a_stalled_room_stream_never_holds_back_another_room() {
    const OUTBOX: usize = 256 * 1024;
    const STALLED_MESSAGES: u64 = 400;
    const LIVE_MESSAGES: u64 = 50;
    let relay = start_with(|config| {
        common::small_outbox(config, OUTBOX);
        config.limits.publish_rate = 100_000;
        config.limits.publish_burst = 100_000;
    })
    .await;
    let (_endpoint, conn) = quic_connection(relay.relay.udp_addr(), relay.cert_sha256(), Some(16 * 1024)).await;
    let (mut control, mut control_recv) = conn.open_bi().await.unwrap();
    let mut frames = FrameReader::new(1 << 20);
    let send = async |stream: &mut quinn::SendStream, frame: &ClientFrame| {
        let body = Codec::Json.encode(frame);
        stream.write_all(&length_prefix(body.len())).await.unwrap();
        stream.write_all(&body).await.unwrap();
    };
    send(&mut control, &hello(relay.token("reader", "acme", &["*"]))).await;
    let welcome = read_frame(&mut control_recv, &mut frames).await.unwrap().unwrap();
    assert!(matches!(Codec::Json.decode(&welcome).unwrap(), ServerFrame::Welcome { .. }));
    let mut streams = Vec::new();
    for (req, room) in [(1, "stalled"), (2, "live")] {
        let (mut send_half, mut recv) = conn.open_bi().await.unwrap();
        send(&mut send_half, &ClientFrame::Join { req, room: room.into(), since: None }).await;
        let mut reader = FrameReader::new(1 << 20);
        let joined = read_frame(&mut recv, &mut reader).await.unwrap().unwrap();
        assert!(matches!(Codec::Json.decode(&joined).unwrap(), ServerFrame::Joined { .. }), "{room}");
        streams.push((send_half, recv, reader));
    }
    let (_live_send, mut live_recv, mut live_reader) = streams.pop().unwrap();
    let (_stalled_send, mut stalled_recv, mut stalled_reader) = streams.pop().unwrap();

    // Far more than the stream window and the whole outbox, to the room nobody reads.
    let publisher = relay.connect(common::Transport::WebSocket, Codec::Json, "pub", "acme", &["*"]).await;
    let text = "x".repeat(2000);
    for n in 1..=STALLED_MESSAGES {
        publisher.publish("stalled", &format!("s{n}"), Payload::json(&text)).await.unwrap();
    }
    // The other room keeps flowing while the first one stays stalled.
    let mut next_live = None;
    for n in 1..=LIVE_MESSAGES {
        publisher.publish("live", &format!("l{n}"), Payload::json(&text)).await.unwrap();
        let body = within("the live room's message while the other room is stalled", async {
            loop {
                let Some(body) = read_frame(&mut live_recv, &mut live_reader).await.unwrap() else {
                    panic!("the live room's stream ended: {:?}", conn.close_reason());
                };
                match Codec::Json.decode(&body).unwrap() {
                    ServerFrame::Message { position, id, .. } => return (position, id),
                    other => eprintln!("live room: {other:?}"),
                }
            }
        })
        .await;
        let (position, id) = body;
        assert_eq!(id, format!("l{n}"));
        assert!(next_live.is_none_or(|next| next == position.offset), "live room in order");
        next_live = Some(position.offset + 1);
    }
    // Reading again, the stalled room gets everything, in order, with no gap.
    let mut expected = 1;
    within("the stalled room catches up", async {
        while expected <= STALLED_MESSAGES {
            let body = read_frame(&mut stalled_recv, &mut stalled_reader).await.unwrap().unwrap();
            if let ServerFrame::Message { position, id, .. } = Codec::Json.decode(&body).unwrap() {
                assert_eq!((position.offset, id), (expected, format!("s{expected}")));
                expected += 1;
            }
        }
    })
    .await;
}
