//! Encode and decode cost of protocol v1 frames in both codecs.
//!
//! Encode goes through `Codec::frame` (what the relay does: one allocation holding the stream
//! length prefix and the body); decode goes through `Codec::decode` on the frame body, as a
//! session does after `FrameReader` or a WebSocket message. Throughput is the encoded body size
//! (without the 4-byte stream prefix) in the codec being measured.
//!
//! Run: `cargo bench --bench codec`. Results and the machine they came from: `docs/performance.md`.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use edgerelay::proto::codec::LENGTH_PREFIX;
use edgerelay::proto::{ClientFrame, Codec, ErrorCode, Payload, Position, ServerFrame};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A JSON payload of exactly 100 bytes, the kind of chat/state message apps publish.
fn payload_100() -> Payload {
    let head = r#"{"type":"chat","user":"alice","seq":42,"text":""#;
    let tail = r#""}"#;
    let text = "x".repeat(100 - head.len() - tail.len());
    let json = format!("{head}{text}{tail}");
    assert_eq!(json.len(), 100);
    Payload(Bytes::from(json))
}

/// A JWT-shaped token of realistic length (header.claims.signature, base64url).
fn token() -> String {
    format!("eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCJ9.{}.{}", "e".repeat(160), "s".repeat(86))
}

const POSITION: Position = Position { epoch: 4_503_599_627_370_495, offset: 123_456 };

fn bench_frame<T>(c: &mut Criterion, name: &str, frame: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let mut group = c.benchmark_group(format!("codec/{name}"));
    for codec in Codec::ALL {
        let wire = codec.frame(frame);
        let body = wire.body();
        // The benchmark is only meaningful if the frame survives the round trip.
        assert_eq!(&codec.decode::<T>(&body).expect("round trip"), frame);
        assert_eq!(wire.len(), body.len() + LENGTH_PREFIX);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", codec.name()), frame, |b, frame| {
            b.iter(|| black_box(codec).frame(black_box(frame)))
        });
        group.bench_with_input(BenchmarkId::new("decode", codec.name()), &body, |b, body| {
            b.iter(|| black_box(codec).decode::<T>(black_box(body)).expect("decodes"))
        });
    }
    group.finish();
}

fn codec_benches(c: &mut Criterion) {
    let room = "chat:lobby".to_owned();
    bench_frame(
        c,
        "hello",
        &ClientFrame::Hello { version: 1, token: token(), client: "edgerelay-js/0.1.0".to_owned() },
    );
    bench_frame(c, "join", &ClientFrame::Join { req: 7, room: room.clone(), since: Some(POSITION) });
    bench_frame(
        c,
        "publish",
        &ClientFrame::Publish { req: 8, room: room.clone(), id: "msg-0001".to_owned(), data: payload_100() },
    );
    bench_frame(
        c,
        "message",
        &ServerFrame::Message {
            room: room.clone(),
            position: POSITION,
            from: "alice".to_owned(),
            time: 1_760_000_000_000,
            id: "msg-0001".to_owned(),
            data: payload_100(),
        },
    );
    bench_frame(c, "ack", &ServerFrame::Ack { req: 8, room, id: "msg-0001".to_owned(), position: POSITION });
    bench_frame(
        c,
        "error",
        &ServerFrame::error(9, ErrorCode::PERMISSION_DENIED, "publish is not allowed in this room"),
    );
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = codec_benches
}
criterion_main!(benches);
