//! What durability costs and how fast a client that was away gets back: the figures issue 4
//! asks for, in one run.
//!
//! 1. **Group commit**: `LocalEngine` on the embedded redb store (a temporary directory, so a
//!    real `fsync` per commit), `P` concurrent publishers over 100 rooms, each publishing and
//!    waiting for its ack in a loop. Durable publishes per second, publish-to-ack latency, and
//!    from the engine's own metrics the store's commit latency and batch size. The same load
//!    with `commit_max_batch = 1` shows what grouping buys.
//! 2. **Replay read**: `Engine::read_after` paging (in the relay's replay chunk) through a room
//!    of 100,000 committed messages: messages read per second from the store.
//! 3. **Resume**: a relay on loopback (in this process), a client joins a room, goes away,
//!    10,000 messages are published, the client connects again and joins from its last
//!    position. Time from starting the connect to holding all 10,000 (in order, checked), per
//!    transport; replay throughput end to end follows from it.
//!
//! Run: `cargo bench --bench durability` (about a minute). Results: `docs/performance.md`.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Transport;
use edgerelay::engine::{Engine, LocalEngine, LocalEngineConfig};
use edgerelay::hub::{Hub, replay::REPLAY_CHUNK};
use edgerelay::proto::Codec;
use edgerelay::store::{EmbeddedHistory, History, Retention};
use metrics::{Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use support::{ms, payload, publish, publish_loop, quantile, room};

const ROOMS: usize = 100;
/// Publishes per group-commit run, at most; each run also stops after `RUN_LIMIT`.
const PUBLISHES: u64 = 40_000;
const RUN_LIMIT: Duration = Duration::from_secs(15);
const REPLAY_ROOM_SIZE: u64 = 100_000;
const MISSED: u64 = 10_000;
const RESUME_RUNS: usize = 3;

fn main() {
    let samples = Samples::install();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        println!("== group commit (embedded redb, {ROOMS} rooms, 100-byte messages)");
        println!(
            "{:>10} {:>10} {:>8} {:>9} {:>10} | {:>9} {:>9} {:>9} | {:>8} {:>7} | {:>10} {:>10} {:>10}",
            "publishers",
            "max_batch",
            "interval",
            "acked",
            "per s",
            "ack p50",
            "ack p99",
            "ack max",
            "commits",
            "batch",
            "commit p50",
            "commit p99",
            "commit max"
        );
        // Each publisher awaits its ack: `store.commit_interval_us` (the last rows) must not
        // hold them back (docs/decisions.md, "Pacing commits").
        let paced = Duration::from_millis(10);
        for (publishers, max_batch, interval) in [
            (1, 256, Duration::ZERO),
            (16, 256, Duration::ZERO),
            (256, 256, Duration::ZERO),
            (1024, 256, Duration::ZERO),
            (256, 1, Duration::ZERO),
            (1, 256, paced),
            (16, 256, paced),
            (256, 256, paced),
        ] {
            group_commit(&samples, publishers, max_batch, interval).await;
        }
        println!("\n== replay read (Engine::read_after, chunks of {REPLAY_CHUNK})");
        replay_read().await;
        println!("\n== resume after missing {MISSED} messages (relay on loopback, postcard)");
        for transport in [Transport::Quic, Transport::WebSocket, Transport::WebTransport] {
            resume(transport).await;
        }
    });
}

fn engine(
    dir: &std::path::Path,
    max_batch: usize,
    max_messages: u64,
    min_commit_interval: Duration,
) -> (Arc<LocalEngine>, Arc<Hub>) {
    let (history, _) = EmbeddedHistory::open(&dir.join("history.redb")).expect("open redb");
    let history: Arc<dyn History> = Arc::new(history);
    let hub = Arc::new(Hub::new(16, 600_000));
    let config = LocalEngineConfig {
        max_batch,
        min_commit_interval,
        retention: Retention { max_messages, max_age_ms: 24 * 3600 * 1000 },
        ..LocalEngineConfig::default()
    };
    (Arc::new(LocalEngine::start(config, history, hub.clone()).expect("engine starts")), hub)
}

async fn group_commit(samples: &Samples, publishers: usize, max_batch: usize, interval: Duration) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _hub) = engine(dir.path(), max_batch, 10_000, interval);
    samples.clear();
    let (mut latencies, elapsed) = publish_loop(engine.clone(), publishers, ROOMS, PUBLISHES, RUN_LIMIT).await;
    engine.shutdown(Duration::from_secs(5)).await;
    let (mut commits, batches) = (samples.take(COMMIT_SECONDS), samples.take(BATCH_SIZE));
    let mean_batch = batches.iter().sum::<f64>() / batches.len().max(1) as f64;
    println!(
        "{publishers:>10} {max_batch:>10} {:>8} {:>9} {:>10.0} | {:>9} {:>9} {:>9} | {:>8} {:>7.1} | {:>10} {:>10} {:>10}",
        format!("{} ms", interval.as_millis()),
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(quantile(&mut latencies, 0.50)),
        ms(quantile(&mut latencies, 0.99)),
        ms(quantile(&mut latencies, 1.0)),
        commits.len(),
        mean_batch,
        secs(quantile(&mut commits, 0.50)),
        secs(quantile(&mut commits, 0.99)),
        secs(quantile(&mut commits, 1.0)),
    );
}

async fn replay_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (engine, _hub) = engine(dir.path(), 256, REPLAY_ROOM_SIZE, Duration::ZERO);
    let key = room(0);
    let next = Arc::new(AtomicU64::new(0));
    let mut fill = tokio::task::JoinSet::new();
    for _ in 0..256 {
        let (engine, next, key) = (engine.clone(), next.clone(), key.clone());
        fill.spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= REPLAY_ROOM_SIZE {
                    break;
                }
                publish(&*engine, &key, n.to_string()).await;
            }
        });
    }
    fill.join_all().await;
    for run in 1..=3 {
        let started = Instant::now();
        let (mut after, mut read) = (0, 0u64);
        loop {
            let page = engine.read_after(&key, after, REPLAY_CHUNK).await.expect("read_after");
            let Some(last) = page.last() else { break };
            assert_eq!(page[0].offset, after + 1, "replay read must be contiguous");
            after = last.offset;
            read += page.len() as u64;
        }
        assert_eq!(read, REPLAY_ROOM_SIZE);
        let elapsed = started.elapsed();
        println!(
            "run {run}: {read} messages in {} ms: {:.0} messages/s",
            elapsed.as_millis(),
            read as f64 / elapsed.as_secs_f64()
        );
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn resume(transport: Transport) {
    let relay = common::start_with(|c| {
        c.limits.publish_rate = 1_000_000;
        c.limits.publish_burst = 1_000_000;
    })
    .await;
    let publisher = Arc::new(relay.connect(Transport::Quic, Codec::Postcard, "pub", "acme", &["*"]).await);
    for run in 1..=RESUME_RUNS {
        let room = format!("resume-{transport:?}-{run}");
        let away = relay.connect(transport, Codec::Postcard, "sub", "acme", &["*"]).await;
        let left_at = away.join(&room).await.expect("join").position;
        away.close().await;

        let mut tasks = tokio::task::JoinSet::new();
        let next = Arc::new(AtomicU64::new(0));
        for _ in 0..64 {
            let (publisher, next, room) = (publisher.clone(), next.clone(), room.clone());
            tasks.spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= MISSED {
                        break;
                    }
                    publisher.publish(&room, &n.to_string(), payload()).await.expect("publish");
                }
            });
        }
        tasks.join_all().await;

        let started = Instant::now();
        let token = relay.token("sub", "acme", &["*"]);
        let mut back = relay.try_connect(transport, Codec::Postcard, &token).await.expect("reconnect");
        let connected = started.elapsed();
        let joined = back.join_since(&room, Some(left_at)).await.expect("resume");
        assert!(joined.recovered, "10,000 messages are within retention");
        let mut expected = left_at.offset + 1;
        while expected <= left_at.offset + MISSED {
            let message = common::within("replayed message", back.next_message()).await.expect("message");
            assert_eq!(message.position.offset, expected, "resume must be gapless and in order");
            expected += 1;
        }
        let elapsed = started.elapsed();
        println!(
            "{transport:?} run {run}: connected in {} ms, all {MISSED} missed messages in {} ms ({:.0} messages/s)",
            connected.as_millis(),
            elapsed.as_millis(),
            MISSED as f64 / (elapsed - connected).as_secs_f64()
        );
        back.close().await;
    }
}

fn secs(s: f64) -> String {
    format!("{:.2} ms", s * 1000.0)
}

const COMMIT_SECONDS: &str = edgerelay::metrics::STORE_COMMIT_SECONDS;
const BATCH_SIZE: &str = edgerelay::metrics::STORE_BATCH_SIZE;

/// A `metrics` recorder that keeps every sample of the store's commit latency and batch size
/// histograms, so the bench reports their exact distribution; everything else is a no-op.
#[derive(Clone, Default)]
struct Samples(Arc<Mutex<Vec<(&'static str, f64)>>>);

struct Series(&'static str, Samples);

impl HistogramFn for Series {
    fn record(&self, value: f64) {
        self.1.lock().push((self.0, value));
    }
}

impl Samples {
    fn install() -> Samples {
        let samples = Samples::default();
        metrics::set_global_recorder(samples.clone()).expect("the bench installs the first recorder");
        samples
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, f64)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn take(&self, name: &str) -> Vec<f64> {
        self.lock().iter().filter(|(n, _)| *n == name).map(|(_, v)| *v).collect()
    }
}

impl Recorder for Samples {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
        Counter::noop()
    }

    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        match key.name() {
            COMMIT_SECONDS => Histogram::from_arc(Arc::new(Series(COMMIT_SECONDS, self.clone()))),
            BATCH_SIZE => Histogram::from_arc(Arc::new(Series(BATCH_SIZE, self.clone()))),
            _ => Histogram::noop(),
        }
    }
}
