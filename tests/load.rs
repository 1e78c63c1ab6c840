//! The load generator's accounting: run `edgerelay-load` against a real relay and check that it
//! reports every delivery (fanout, one big room, after reconnect storms, presence changes), and
//! against a relay behind a proxy that really drops messages and check that the loss it reports
//! is exactly what the proxy dropped. No timing assertions.

mod common;
#[path = "common/load.rs"]
mod load_runner;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use edgerelay::proto::{Codec, ServerFrame};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Runs the generator with `args` (bounded by a timeout) and returns its JSON summary.
async fn run_load(args: &[&str]) -> Value {
    let run = load_runner::run_load_within(args, Duration::from_secs(120)).await;
    assert!(run.success, "edgerelay-load failed: {}", run.output);
    run.summary
}

fn u(v: &Value, key: &str) -> u64 {
    v[key].as_u64().unwrap_or_else(|| panic!("{key} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_against_a_real_relay_accounts_for_every_delivery() {
    // A relay process the generator starts, every transport in the mix, JSON codec (the other
    // tests use postcard).
    let report = run_load(&[
        "--transport",
        "mix",
        "--duration",
        "2",
        "fanout",
        "--subscribers",
        "30",
        "--rooms",
        "3",
        "--publishers",
        "3",
        "--rate",
        "150",
        "--drain",
        "10",
        "--codec",
        "json",
    ])
    .await;
    assert_eq!(report["subscribers_joined"], 30, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let step = &report["steps"][0];
    let acked = u(step, "acked");
    assert!(acked > 0, "{step}");
    assert_eq!(u(step, "published"), 300, "150 publishes/s for 2 s: {step}");
    assert_eq!(u(step, "published"), acked, "every publish acked: {step}");
    // 10 subscribers per room: each acked publish is owed to 10 of them.
    assert_eq!(u(step, "expected"), acked * 10, "{step}");
    assert_eq!(u(step, "delivered"), u(step, "expected"), "{step}");
    assert_eq!(u(step, "lost"), 0, "{step}");
    assert_eq!(u(step, "duplicates"), 0, "{step}");
    assert_eq!(u(step, "extra"), 0, "{step}");
    assert_eq!(step["completeness"].as_f64(), Some(1.0), "{step}");
    assert_eq!(u(&step["latency"], "count"), u(step, "delivered"), "one latency sample per delivery: {step}");
    assert!(step["relay_cpu_seconds"].is_number(), "the relay's CPU is read from /proc: {step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_mode_raises_the_rate_and_reports_the_highest_that_held() {
    let dir = tempfile::tempdir().unwrap();
    let chart = dir.path().join("step.png");
    let report = run_load(&[
        "--transport",
        "ws",
        "--duration",
        "1",
        "step",
        "--subscribers",
        "10",
        "--rooms",
        "2",
        "--publishers",
        "2",
        "--rate",
        "20",
        "--factor",
        "2",
        "--steps",
        "2",
        // A bound no loopback run misses: this checks the accounting and the search, not speed.
        "--p99-bound-ms",
        "60000",
        "--drain",
        "10",
        "--half",
        "--chart",
        chart.to_str().unwrap(),
    ])
    .await;
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{report}");
    for step in steps {
        assert_eq!(step["held"], true, "{step}");
        assert_eq!(u(step, "lost"), 0, "{step}");
    }
    assert_eq!(steps[1]["offered_rate"].as_f64(), Some(40.0));
    assert_eq!(report["sustainable_rate"].as_f64(), Some(40.0), "{report}");
    assert_eq!(report["half_rate_step"]["offered_rate"].as_f64(), Some(20.0), "{report}");
    // The chart needs a TrueType font; where there is one, it is a PNG.
    if std::path::Path::new("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf").exists() {
        let png = std::fs::read(&chart).expect("chart written");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bigroom_is_fanout_in_one_room_and_accounts_for_every_delivery() {
    let report = run_load(&[
        "--transport",
        "mix",
        "--duration",
        "2",
        "bigroom",
        "--subscribers",
        "30",
        "--publishers",
        "2",
        "--rate",
        "50",
        "--drain",
        "10",
    ])
    .await;
    assert_eq!(report["workload"], "bigroom", "{report}");
    assert_eq!(report["args"]["rooms"], 1, "{report}");
    assert_eq!(report["subscribers_joined"], 30, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let step = &report["steps"][0];
    let acked = u(step, "acked");
    assert_eq!(u(step, "published"), 100, "50 publishes/s for 2 s: {step}");
    assert_eq!(acked, 100, "every publish acked: {step}");
    // One room: every acked publish is owed to all 30 subscribers.
    assert_eq!(u(step, "expected"), acked * 30, "{step}");
    assert_eq!(u(step, "delivered"), u(step, "expected"), "{step}");
    assert_eq!(u(step, "lost") + u(step, "duplicates") + u(step, "extra"), 0, "{step}");
    assert_eq!(u(&step["latency"], "count"), u(step, "delivered"), "{step}");
    assert!(step["relay_cpu_s_per_million"].is_number(), "{step}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_storm_each_connection_holds_every_message_exactly_once() {
    // 50 connections over the three transports, each in 2 of 5 rooms, dropped at once twice
    // while a publisher keeps publishing; each resumes its rooms from the last position it saw.
    let report = run_load(&[
        "--transport",
        "mix",
        "--duration",
        "1",
        "storm",
        "--connections",
        "50",
        "--rooms",
        "5",
        "--rooms-per-connection",
        "2",
        "--rounds",
        "2",
        "--rate",
        "50",
        "--drain",
        "10",
    ])
    .await;
    assert_eq!(u(&report, "connected"), 50, "{report}");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 3, "the first connect and two storms: {report}");
    for round in &rounds[1..] {
        assert_eq!(u(round, "reconnected"), 50, "{round}");
        assert_eq!(u(round, "caught_up"), 50, "{round}");
        assert_eq!(u(round, "not_recovered"), 0, "every rejoin recovered: {round}");
        assert_eq!(round["timed_out"], false, "{round}");
        assert!(round["all_caught_up_s"].is_number(), "{round}");
        assert!(u(round, "connect_attempts") >= 50, "{round}");
    }
    let acked = u(&report, "acked");
    assert!(acked > 0, "{report}");
    assert_eq!(u(&report, "published"), acked, "{report}");
    // Each room has 20 of the 50 connections (2 rooms each), so each acked publish is owed 20
    // times, whichever room it went to.
    assert_eq!(u(&report, "expected"), acked * 20, "{report}");
    assert_eq!(u(&report, "delivered"), u(&report, "expected"), "{report}");
    for key in ["lost", "duplicates", "gaps", "extra", "not_recovered", "incomplete_connections"] {
        assert_eq!(u(&report, key), 0, "{key}: {report}");
    }
    assert_eq!(report["exact"], true, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_changes_are_observed_and_every_view_converges_over_websocket() {
    // 20 users in 4 rooms of 5, 4 updates/s each for 2 s: 2 cycles of typing start, typing stop
    // and two status changes. Nothing is lossy on WebSocket: intermediate changes may be
    // superseded in the outbox, but every view ends with every other member's last state.
    let report = run_load(&[
        "--transport",
        "ws",
        "--duration",
        "2",
        "presence",
        "--users",
        "20",
        "--rooms",
        "4",
        "--rate",
        "4",
        "--drain",
        "10",
    ])
    .await;
    assert_eq!(u(&report, "connected"), 20, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["send_errors"], serde_json::json!({}), "{report}");
    assert_eq!(u(&report, "updates"), 160, "{report}");
    let status = &report["status"];
    assert_eq!(u(status, "sent"), 80, "{status}");
    // Each change is owed to the 4 other members of the room.
    assert_eq!(u(status, "expected"), 320, "{status}");
    assert!(u(status, "observed") > 0, "{status}");
    // Every observer reached every peer's last counter: each change was seen or skipped over.
    assert_eq!(u(status, "observed") + u(status, "superseded"), 320, "{status}");
    assert_eq!(u(&status["latency"], "count"), u(status, "observed"), "{status}");
    for kind in ["typing_start", "typing_stop"] {
        let k = &report[kind];
        assert_eq!(u(k, "sent"), 40, "{kind}: {k}");
        assert_eq!(u(k, "expected"), 160, "{kind}: {k}");
        assert!(u(k, "observed") > 0, "{kind}: {k}");
        assert!(u(k, "observed") + u(k, "superseded") <= 160, "{kind}: {k}");
    }
    assert_eq!(u(&report, "pairs"), 80, "{report}");
    assert_eq!(u(&report, "final_status_observed"), 80, "{report}");
    assert_eq!(u(&report, "final_typing_clear"), 20, "{report}");
    assert!(report["relay_cpu_s_per_1000"].is_number(), "{report}");
}

/// A TCP proxy in front of the relay's WebSocket listener that drops every `every`-th `message`
/// frame the relay sends (counted over all connections), and forwards everything else as it is.
struct LossyProxy {
    addr: SocketAddr,
    dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn lossy_proxy(upstream: SocketAddr, every: u64) -> LossyProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropped = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let counter = dropped.clone();
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((client, _)) = listener.accept().await {
            let Ok(relay) = TcpStream::connect(upstream).await else { continue };
            let (mut client_read, client_write) = client.into_split();
            let (relay_read, mut relay_write) = relay.into_split();
            connections.spawn(async move {
                let _ = tokio::io::copy(&mut client_read, &mut relay_write).await;
            });
            connections.spawn(filter(relay_read, client_write, every, seen.clone(), counter.clone()));
        }
    });
    LossyProxy { addr, dropped, task }
}

/// Relay to client: the HTTP upgrade answer as it is, then WebSocket frames one by one (the
/// relay's frames are unmasked), leaving out every `every`-th binary frame that decodes as a
/// postcard `message`.
async fn filter(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    every: u64,
    seen: Arc<AtomicU64>,
    dropped: Arc<AtomicU64>,
) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    // Reads until `buf` holds at least `n` bytes; false at the end of the stream.
    async fn fill(from: &mut tokio::net::tcp::OwnedReadHalf, buf: &mut Vec<u8>, chunk: &mut [u8], n: usize) -> bool {
        while buf.len() < n {
            match from.read(chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(k) => buf.extend_from_slice(&chunk[..k]),
            }
        }
        true
    }
    let head_end = loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let want = buf.len() + 1;
        if !fill(&mut from, &mut buf, &mut chunk, want).await {
            return;
        }
    };
    if to.write_all(&buf[..head_end]).await.is_err() {
        return;
    }
    buf.drain(..head_end);
    loop {
        if !fill(&mut from, &mut buf, &mut chunk, 2).await {
            return;
        }
        let (fin_opcode, len7) = (buf[0], buf[1] & 0x7f);
        assert_eq!(buf[1] & 0x80, 0, "the relay's frames are not masked");
        let (header, len) = match len7 {
            126 => {
                if !fill(&mut from, &mut buf, &mut chunk, 4).await {
                    return;
                }
                (4, u16::from_be_bytes([buf[2], buf[3]]) as usize)
            }
            127 => {
                if !fill(&mut from, &mut buf, &mut chunk, 10).await {
                    return;
                }
                (10, u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize)
            }
            n => (2, n as usize),
        };
        if !fill(&mut from, &mut buf, &mut chunk, header + len).await {
            return;
        }
        let body = &buf[header..header + len];
        let binary_final = fin_opcode == 0x82;
        let is_message =
            binary_final && matches!(Codec::Postcard.decode::<ServerFrame>(body), Ok(ServerFrame::Message { .. }));
        let drop_it = is_message && (seen.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every);
        if drop_it {
            dropped.fetch_add(1, Ordering::Relaxed);
        } else if to.write_all(&buf[..header + len]).await.is_err() {
            return;
        }
        buf.drain(..header + len);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dropped_on_the_way_are_reported_as_lost_exactly() {
    let relay = common::start_with(|config| {
        config.limits.publish_rate = 100_000;
        config.limits.publish_burst = 100_000;
    })
    .await;
    let proxy = lossy_proxy(relay.relay.tcp_addr(), 10).await;
    let secret = relay.relay.config().dev_secret_path();
    let ws = format!("ws://{}/v1/ws", proxy.addr);
    let report = run_load(&[
        "--ws",
        &ws,
        "--dev-secret-file",
        secret.to_str().unwrap(),
        "--transport",
        "ws",
        "--duration",
        "2",
        "fanout",
        "--subscribers",
        "10",
        "--rooms",
        "2",
        "--publishers",
        "2",
        "--rate",
        "100",
        "--drain",
        "3",
    ])
    .await;
    let step = &report["steps"][0];
    let dropped = proxy.dropped.load(Ordering::Relaxed);
    assert!(dropped > 0, "the proxy dropped messages: {step}");
    assert_eq!(u(step, "expected"), u(step, "acked") * 5, "{step}");
    assert_eq!(u(step, "lost"), dropped, "reported loss is what the proxy dropped: {step}");
    assert_eq!(u(step, "delivered") + dropped, u(step, "expected"), "{step}");
    assert_eq!(u(step, "duplicates"), 0, "{step}");
    assert!(u(step, "incomplete_subscribers") > 0, "{step}");
    assert_eq!(step["held"], false, "{step}");
    relay.relay.shutdown().await;
}
