//! What the call history costs per call, per backend: recording a call (two writes, as a call
//! is recorded when it starts and when it ends) into two users' lists, and reading a page of
//! 50 from a list at its cap (1,000 calls, so every new call also trims). Memory, the embedded
//! redb store (a temporary directory: a real fsync per write) and a `redis-server` this bench
//! starts on loopback. Also the pure quality logic: reports per second.
//!
//! Run: `cargo bench --bench call_history` (under a minute). Results: `docs/performance.md`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use edgerelay::call::history::{
    CallHistory, CallRecord, EmbeddedCallHistory, HistoryRetention, MemoryCallHistory, RedisCallHistory,
};
use edgerelay::call::quality::{CallQuality, QualityConfig, Report};
use edgerelay::call::{CallId, CallSummary, EndReason, Media, Side};
use edgerelay::hub::presence::UserKey;
use edgerelay::store::EmbeddedHistory;
use edgerelay::testing::RedisServer;
use fred::prelude::{Builder, ClientLike, Config};
use support::quantile;

/// Calls recorded per backend (each: two writes); the first `CAP` fill alice's list.
const CALLS: u64 = 2000;
const CAP: u64 = 1000;
/// Page reads per backend.
const READS: usize = 500;
/// Each backend's run stops after this, whatever it reached.
const RUN_LIMIT: Duration = Duration::from_secs(20);
const REPORTS: u64 = 1_000_000;

fn call(id: u64, started_ms: u64, ended: bool) -> CallRecord {
    CallRecord::one_to_one(&CallSummary {
        id: CallId(id),
        caller: UserKey::new("bench", "alice"),
        callee: UserKey::new("bench", &format!("peer{}", id % 97)),
        media: Media::Video,
        caller_device: 1,
        callee_device: Some(2),
        started_ms,
        answered_ms: Some(started_ms + 1000),
        ended_ms: ended.then_some(started_ms + 60_000),
        reason: ended.then_some(EndReason::Hangup { by: Side::Caller }),
        duration_ms: ended.then_some(59_000),
    })
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

async fn run(name: &str, history: &dyn CallHistory) {
    let start = Instant::now();
    let t0 = edgerelay::connection::unix_ms() - CALLS * 1000;
    let mut writes = Vec::new();
    let mut recorded = 0;
    for i in 0..CALLS {
        if start.elapsed() > RUN_LIMIT {
            break;
        }
        for ended in [false, true] {
            let began = Instant::now();
            history.record(call(i + 1, t0 + i * 1000, ended), t0 + i * 1000).await.expect("record");
            writes.push(began.elapsed());
        }
        recorded += 1;
    }
    let alice = UserKey::new("bench", "alice");
    let now = t0 + CALLS * 1000;
    let mut reads = Vec::new();
    let mut listed = 0;
    for i in 0..READS {
        if start.elapsed() > RUN_LIMIT * 2 {
            break;
        }
        // Pages from the newest and from deeper in the list.
        let before = (i % 10 > 0).then(|| format!("{}", now - (i as u64 % 10) * 90_000).parse().expect("cursor"));
        let began = Instant::now();
        let page = history.list(&alice, before, 50, now).await.expect("list");
        reads.push(began.elapsed());
        listed += page.calls.len();
    }
    let kept = history.list(&alice, None, 200, now).await.expect("list").calls.len();
    println!(
        "{name:>9}: {recorded} calls, {} writes: p50 {} p99 {} | {} pages of 50 ({} calls): p50 {} p99 {} | alice's first page {kept}",
        writes.len(),
        us(quantile(&mut writes, 0.5)),
        us(quantile(&mut writes, 0.99)),
        reads.len(),
        listed,
        us(quantile(&mut reads, 0.5)),
        us(quantile(&mut reads, 0.99)),
    );
}

fn quality() {
    let mut q = CallQuality::new(QualityConfig::default(), Media::Video);
    let started = Instant::now();
    let mut flags = 0;
    for i in 0..REPORTS {
        let bad = (i / 10) % 2 == 0;
        let report = Report {
            rtt_ms: 80.0,
            loss: if bad { 0.2 } else { 0.0 },
            jitter_ms: 5.0,
            send_kbps: 900.0,
            recv_kbps: 800.0,
        };
        flags += q.report(&format!("u{}", i % 8), &report, i * 1000).map(|c| c.len()).unwrap_or(0);
    }
    let elapsed = started.elapsed();
    println!(
        "  quality: {REPORTS} reports from 8 participants in {:.0} ms: {:.1} M reports/s, {flags} flag changes",
        elapsed.as_secs_f64() * 1000.0,
        REPORTS as f64 / elapsed.as_secs_f64() / 1e6,
    );
}

fn main() {
    let retention = HistoryRetention { max_calls_per_user: CAP, max_age_ms: 90 * 86_400_000 };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(async {
        println!("== call history: {CALLS} calls, alice's list capped at {CAP}");
        run("memory", &MemoryCallHistory::new(retention)).await;
        let dir = tempfile::tempdir().expect("temporary directory");
        let (store, _) = EmbeddedHistory::open(&dir.path().join("h.redb")).expect("open redb");
        run("embedded", &EmbeddedCallHistory::new(Arc::new(store), retention).expect("call tables")).await;
        let server = RedisServer::start().expect("start redis-server");
        let client = Builder::from_config(Config::from_url(&server.url()).expect("url")).build().expect("client");
        client.init().await.expect("connect to redis");
        run("redis", &RedisCallHistory::new(client, "bench", retention)).await;
    });
    quality();
}
