//! The load generator's accounting: run `edgerelay-load` against a real relay and check that it
//! reports every delivery, and against a relay behind a proxy that really drops messages and
//! check that the loss it reports is exactly what the proxy dropped. No timing assertions.

mod common;

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
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgerelay-load"));
    command
        .args(["--relay-bin", env!("CARGO_BIN_EXE_edgerelay"), "--quiet", "--json"])
        .arg(&json)
        .args(args)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the load generator finishes within its bounds")
        .unwrap();
    assert!(
        output.status.success(),
        "edgerelay-load failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
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
