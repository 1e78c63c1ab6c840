//! The datagram path over raw QUIC (and WebTransport, through `common::VARIANTS`): a `ping` datagram is answered by a `pong` datagram, and
//! bad datagrams are dropped and counted without disturbing the connection. Real relay on
//! loopback; a hand-driven quinn connection and the Rust client.

mod common;

use common::{RawQuic, Transport, raw_quic, start, start_with, within};
use edgerelay::proto::{ClientFrame, Codec, FrameReader, ServerFrame};
use edgerelay::transport::quic::read_frame;

/// The next datagram the relay sends, decoded as JSON.
async fn next_datagram(raw: &RawQuic) -> ServerFrame {
    let body = within("datagram", raw.conn.read_datagram()).await.unwrap();
    Codec::Json.decode(&body).unwrap()
}

/// Sends `ping {req}` as datagrams until a `pong` datagram for it arrives (loopback rarely loses
/// one, but a datagram may be lost by design, so the test retries a bounded number of times).
async fn datagram_round_trip(raw: &RawQuic, req: u64) -> ServerFrame {
    let ping = Codec::Json.encode(&ClientFrame::Ping { req });
    for _ in 0..10 {
        raw.conn.send_datagram(ping.clone()).unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(1), raw.conn.read_datagram()).await;
        if let Ok(Ok(body)) = answer {
            return Codec::Json.decode(&body).unwrap();
        }
    }
    panic!("no pong datagram for req {req} after 10 tries");
}

#[tokio::test]
async fn ping_datagram_is_answered_by_a_pong_datagram() {
    let relay = start().await;
    let mut raw = raw_quic(&relay).await;
    raw.hello(&relay).await;
    assert!(raw.conn.max_datagram_size().is_some(), "the relay accepts datagrams");
    match datagram_round_trip(&raw, 7).await {
        ServerFrame::Pong { req, server_time } => assert_eq!((req, server_time > 0), (7, true)),
        other => panic!("expected pong, got {other:?}"),
    }
    // The body is one bare frame: no length prefix in either direction.
    let ping = Codec::Json.encode(&ClientFrame::Ping { req: 8 });
    assert_eq!(ping.first(), Some(&b'{'));
    raw.conn.send_datagram(ping).unwrap();
    assert!(matches!(next_datagram(&raw).await, ServerFrame::Pong { req: 8, .. }));
}

#[tokio::test]
async fn bad_datagrams_are_dropped_and_counted_never_fatal() {
    let relay = start_with(|c| c.limits.max_datagram_bytes = 256).await;
    let mut raw = raw_quic(&relay).await;
    raw.hello(&relay).await;
    // Undecodable, oversized (over limits.max_datagram_bytes) and a frame type that is not
    // allowed as a datagram: a publish must never be performed from a datagram.
    raw.conn.send_datagram(bytes::Bytes::from_static(b"\xff\xfe not a frame")).unwrap();
    raw.conn.send_datagram(bytes::Bytes::from(vec![b' '; 400])).unwrap();
    let publish = ClientFrame::Publish { req: 3, room: "dg".into(), id: "x".into(), data: "1".into() };
    raw.conn.send_datagram(Codec::Json.encode(&publish)).unwrap();
    // The connection still works, on the stream and on the datagram path.
    let ping = Codec::Json.encode(&ClientFrame::Ping { req: 9 });
    raw.send_body(&ping).await;
    let mut reader = FrameReader::new(1 << 20);
    let body = within("pong", read_frame(&mut raw.recv, &mut reader)).await.unwrap().unwrap();
    assert!(matches!(Codec::Json.decode(&body).unwrap(), ServerFrame::Pong { req: 9, .. }));
    assert!(matches!(datagram_round_trip(&raw, 10).await, ServerFrame::Pong { req: 10, .. }));

    // Nothing was published by the datagram: a subscriber joining now sees an empty room.
    let watcher = relay.connect(Transport::Quic, Codec::Json, "w", "acme", &["*"]).await;
    assert_eq!(watcher.join("dg").await.unwrap().position.offset, 0);
    let (_, metrics) = relay.http_get("/metrics").await;
    for reason in ["undecodable", "too_large", "not_datagram"] {
        let line = format!("edgerelay_datagram_drops_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "/metrics lacks {line}:\n{metrics}");
    }
}

#[tokio::test]
async fn rust_client_pings_over_datagrams_on_quic_and_falls_back_on_websocket() {
    let relay = start().await;
    for (transport, codec) in common::VARIANTS {
        let client = relay.connect(transport, codec, "pinger", "acme", &["*"]).await;
        assert_eq!(client.max_datagram_size().is_some(), transport != Transport::WebSocket);
        // A datagram may be lost; on loopback a few tries are plenty.
        let mut answered = false;
        for _ in 0..5 {
            if within("datagram ping", client.ping_datagram()).await.is_ok() {
                answered = true;
                break;
            }
        }
        assert!(answered, "{transport:?}/{codec:?}: no pong");
        client.close().await;
    }
}
