//! Scale-out on Redis: the figures issue 7 asks for, with a real `redis-server` started here
//! (no persistence; a free loopback port).
//!
//! 1. **Publishes per second through one Redis**: node A's `RedisEngine` publishes (`P`
//!    concurrent publishers over 100 rooms, each waiting for its ack in a loop) while node B's
//!    engine holds every room, so each publish also fans out to a subscribed node. Acks per
//!    second and publish-to-ack latency.
//! 2. **Cross-node delivery latency**: two relays (in this process, `store.engine = "redis"`)
//!    on the same Redis; a publisher on relay A sends 100-byte messages at a steady 500 per
//!    second; subscribers on relay B (raw QUIC, WebSocket) and, for comparison, on relay A get
//!    them. Latency from the publish call to the subscriber holding the message (one process,
//!    one clock).
//!
//! Run: `cargo bench --bench cluster` (about 40 s; needs `redis-server`). Results:
//! `docs/performance.md`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Transport;
use edgerelay::client::Client;
use edgerelay::config::StoreEngine;
use edgerelay::engine::{Engine, RedisEngine, RedisEngineConfig};
use edgerelay::hub::Hub;
use edgerelay::proto::{Codec, Payload};
use edgerelay::store::Retention;
use edgerelay::testing::RedisServer;
use support::{ms, publish_loop, quantile, room};

const ROOMS: usize = 100;
/// Publishes per throughput run, at most; each run also stops after `RUN_LIMIT`.
const PUBLISHES: u64 = 100_000;
const RUN_LIMIT: Duration = Duration::from_secs(5);
/// Cross-node latency: messages per run and their pace.
const MESSAGES: u64 = 2_000;
const PACE: Duration = Duration::from_millis(2);

fn main() {
    let redis = RedisServer::start().expect("start redis-server (apt-get install redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        println!("== publishes through one Redis ({ROOMS} rooms, 100-byte messages, a second node subscribed)");
        println!(
            "{:>10} {:>9} {:>10} | {:>9} {:>9} {:>9}",
            "publishers", "acked", "per s", "ack p50", "ack p99", "ack max"
        );
        for publishers in [1, 16, 256] {
            throughput(&redis, publishers).await;
        }
        println!("\n== delivery latency, publisher on relay A, {MESSAGES} messages at one per {PACE:?}");
        println!("{:>24} {:>9} {:>9} {:>9} {:>9}", "subscriber", "received", "p50", "p99", "max");
        latency(&redis).await;
    });
}

fn config(url: String) -> RedisEngineConfig {
    RedisEngineConfig {
        url,
        prefix: format!("bench-{}", rand::random::<u32>()),
        retention: Retention { max_messages: 10_000, max_age_ms: 3_600_000 },
        dedupe_window_ms: 300_000,
        max_batch: 256,
        command_timeout: Duration::from_secs(2),
        resync_every: Duration::from_secs(1),
        probe_every: Duration::from_secs(1),
        probe_timeout: Duration::from_secs(3),
        presence_ttl: Duration::from_secs(15),
    }
}

async fn throughput(redis: &RedisServer, publishers: usize) {
    let config = config(redis.url());
    let a = Arc::new(RedisEngine::connect(config.clone(), Arc::new(Hub::new(16, 600_000))).await.expect("node a"));
    let hub_b = Arc::new(Hub::new(16, 600_000));
    let b = RedisEngine::connect(config, hub_b.clone()).await.expect("node b");
    for i in 0..ROOMS {
        // Node B holds every room, as when it has members there: it subscribes to each.
        let meta = b.meta(&room(i)).await.expect("meta");
        hub_b.ensure_room(&room(i), meta, edgerelay::connection::unix_ms());
    }
    let (mut latencies, elapsed) = publish_loop(a.clone(), publishers, ROOMS, PUBLISHES, RUN_LIMIT).await;
    println!(
        "{publishers:>10} {:>9} {:>10.0} | {:>9} {:>9} {:>9}",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(quantile(&mut latencies, 0.50)),
        ms(quantile(&mut latencies, 0.99)),
        ms(quantile(&mut latencies, 1.0)),
    );
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}

async fn latency(redis: &RedisServer) {
    let relay = |url: String| {
        common::start_with(move |c| {
            c.store.engine = StoreEngine::Redis;
            c.redis.url = url;
            c.limits.publish_rate = 1_000_000;
            c.limits.publish_burst = 1_000_000;
        })
    };
    let (a, b) = (relay(redis.url()).await, relay(redis.url()).await);
    let room = "latency";
    let mut subscribers: Vec<(&str, Client)> = Vec::new();
    for (name, relay, transport) in [
        ("relay B, raw QUIC", &b, Transport::Quic),
        ("relay B, WebSocket", &b, Transport::WebSocket),
        ("relay A (same node), QUIC", &a, Transport::Quic),
    ] {
        let client = relay.connect(transport, Codec::Postcard, name, "acme", &["*"]).await;
        client.join(room).await.expect("join");
        subscribers.push((name, client));
    }
    let publisher = a.connect(Transport::Quic, Codec::Postcard, "publisher", "acme", &["*"]).await;
    let base = Instant::now();
    let readers: Vec<_> = subscribers
        .into_iter()
        .map(|(name, mut client)| {
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                while (latencies.len() as u64) < MESSAGES {
                    let next = tokio::time::timeout_at(deadline, client.next_message()).await;
                    let Ok(Ok(message)) = next else { break };
                    let sent: u64 = std::str::from_utf8(&message.data.0).ok().and_then(|s| s.parse().ok()).unwrap_or(0);
                    latencies.push(base.elapsed().saturating_sub(Duration::from_nanos(sent)));
                }
                (name, latencies)
            })
        })
        .collect();
    let mut tick = tokio::time::interval(PACE);
    for i in 0..MESSAGES {
        tick.tick().await;
        let sent = base.elapsed().as_nanos() as u64;
        publisher.publish(room, &format!("m{i}"), Payload::from(sent.to_string().as_str())).await.expect("publish");
    }
    for reader in readers {
        let (name, mut latencies) = reader.await.expect("reader");
        println!(
            "{name:>24} {:>9} {:>9} {:>9} {:>9}",
            latencies.len(),
            ms(quantile(&mut latencies, 0.50)),
            ms(quantile(&mut latencies, 0.99)),
            ms(quantile(&mut latencies, 1.0)),
        );
    }
}
