//! Small helpers the benches share (included with `#[path]`, as benches are separate crates).
#![allow(dead_code)]

use std::time::Duration;

/// The `q` quantile of `values` (sorted in place); the default when empty.
pub fn quantile<T: Copy + PartialOrd + Default>(values: &mut [T], q: f64) -> T {
    if values.is_empty() {
        return T::default();
    }
    values.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    values[((values.len() - 1) as f64 * q).round() as usize]
}

pub fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// A 100-byte message (a JSON string).
pub fn payload() -> edgerelay::proto::Payload {
    edgerelay::proto::Payload::from(format!("\"{}\"", "x".repeat(98)).as_str())
}

/// A JSON payload of exactly 100 bytes (the fanout benches' message).
pub fn payload_json_100() -> edgerelay::proto::Payload {
    const JSON: &str =
        r#"{"type":"chat","user":"alice","seq":42,"text":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    assert_eq!(JSON.len(), 100);
    edgerelay::proto::Payload(bytes::Bytes::from_static(JSON.as_bytes()))
}

/// Empties every outbox, as the connections' writers would; returns the number of frames taken.
pub fn drain(outboxes: &[std::sync::Arc<edgerelay::outbox::Outbox>]) -> usize {
    use edgerelay::outbox::Take;
    let mut taken = 0;
    for outbox in outboxes {
        loop {
            match outbox.take_all(usize::MAX) {
                Take::Frames(frames) => taken += frames.len(),
                Take::Empty => break,
                other => panic!("outbox of a bench subscriber ended: {other:?}"),
            }
        }
    }
    taken
}

/// Room `i` of tenant `bench`.
pub fn room(i: usize) -> edgerelay::hub::RoomKey {
    let name = edgerelay::proto::RoomName::parse(&format!("room-{i}")).expect("room name");
    edgerelay::hub::RoomKey { tenant: "bench".into(), room: name }
}

/// Publishes a 100-byte message as `bench` and waits for its ack.
pub async fn publish(
    engine: &dyn edgerelay::engine::Engine,
    key: &edgerelay::hub::RoomKey,
    id: String,
) -> edgerelay::proto::Position {
    publish_as(engine, key, "bench", id).await
}

/// Publishes a 100-byte message as user `from` and waits for its ack.
pub async fn publish_as(
    engine: &dyn edgerelay::engine::Engine,
    key: &edgerelay::hub::RoomKey,
    from: &str,
    id: String,
) -> edgerelay::proto::Position {
    let (done, rx) = edgerelay::engine::Done::channel();
    let now_ms = edgerelay::connection::unix_ms();
    let publish = edgerelay::engine::Publish { key: key.clone(), from: from.into(), id, data: payload(), now_ms };
    engine.publish(publish, done);
    match rx.await {
        Ok(Ok(accepted)) => accepted.position,
        other => panic!("publish failed: {other:?}"),
    }
}

/// `publishers` tasks, publisher `p` (user `bench-p`) publishing to `room(p % rooms)` and waiting for each ack,
/// until `limit` publishes in all or `run_limit` has passed. Returns every publish-to-ack
/// latency and the time the run took.
pub async fn publish_loop(
    engine: std::sync::Arc<dyn edgerelay::engine::Engine>,
    publishers: usize,
    rooms: usize,
    limit: u64,
    run_limit: Duration,
) -> (Vec<Duration>, Duration) {
    use std::sync::atomic::{AtomicU64, Ordering};
    let issued = std::sync::Arc::new(AtomicU64::new(0));
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for p in 0..publishers {
        let (engine, issued) = (engine.clone(), issued.clone());
        tasks.spawn(async move {
            let key = room(p % rooms);
            let mut latencies = Vec::new();
            while issued.fetch_add(1, Ordering::Relaxed) < limit && started.elapsed() < run_limit {
                let sent = std::time::Instant::now();
                publish_as(&*engine, &key, &format!("bench-{p}"), format!("{p}-{}", latencies.len())).await;
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let latencies = tasks.join_all().await.into_iter().flatten().collect();
    (latencies, started.elapsed())
}
