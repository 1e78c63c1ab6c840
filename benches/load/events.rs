//! `events`: the seeds' event broadcasting case end to end. A backend publishes events through
//! the server API (`POST /v1/api/events`, one event per call, keep-alive HTTP/1.1) at an offered
//! rate to `load:ev.t<0-9>`; S subscribers of `load:ev.>` (optionally with a filter every event
//! passes) read them over the chosen transport, or over SSE (`--sse`). Reported: completeness,
//! publish-to-delivery latency (the publisher's send time travels in the event's data), the
//! relay's CPU per delivery and its write-family syscalls per delivery (`/proc/<pid>/io`
//! `syscw`: WebSocket and SSE writes; QUIC's `sendmsg` is not counted there).
//!
//! The relay needs the server API: the started relay gets `EDGERELAY_API__KEY` = [`API_KEY`]
//! (pass the same with `--relay-env` to compare `EDGERELAY_EVENTS__BATCH_DELAY_MS`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::relay::{RelayUnderTest, TransportChoice};
use crate::stats::{Latency, SharedLatency, fmt_opt, now_ns, table as two_columns};

/// The server API key the generator gives the relay it starts.
pub const API_KEY: &str = "load-generator-api-key-0123456789";
/// Longest wait for the last events after publishing stopped.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, clap::Args)]
pub struct EventsArgs {
    /// Subscribers (connections, or SSE streams with --sse). At most 5000.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Events per second offered (one API call each). At most 5000.
    #[arg(long, default_value_t = 500.0)]
    pub rate: f64,
    /// Subscribers read SSE streams instead of --transport connections.
    #[arg(long)]
    pub sse: bool,
    /// Every subscription carries this filter (each event has tags region=eu, qty=12).
    #[arg(long)]
    pub filter: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct EventsReport {
    pub transport: String,
    pub subscribers: usize,
    pub offered_rate: f64,
    pub filter: Option<String>,
    pub published: u64,
    pub publish_errors: u64,
    pub deliveries: u64,
    pub missing: u64,
    pub latency: Latency,
    pub relay_cpu_s: Option<f64>,
    pub cpu_us_per_delivery: Option<f64>,
    pub write_syscalls_per_delivery: Option<f64>,
}

/// `syscw` of `/proc/<pid>/io`: write-family system calls so far.
fn write_syscalls(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    io.lines().find_map(|l| l.strip_prefix("syscw:")).and_then(|v| v.trim().parse().ok())
}

/// Reads one subscriber's events until `stop`, recording each one's latency.
async fn read_client(
    mut client: edgerelay::client::Client,
    latency: Arc<SharedLatency>,
    got: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => break,
            event = client.next_topic_event() => event,
        };
        let Ok(event) = event else { break };
        record(&event.data.0, &latency, &got);
    }
    client.close().await;
}

fn record(data: &[u8], latency: &SharedLatency, got: &AtomicU64) {
    let sent = serde_json::from_slice::<serde_json::Value>(data).ok().and_then(|v| v["t"].as_u64());
    if let Some(sent) = sent {
        latency.record(Duration::from_nanos(now_ns().saturating_sub(sent)));
        got.fetch_add(1, Ordering::Relaxed);
    }
}

/// One SSE stream: `GET /v1/events` on the relay's TCP port, events parsed from `data:` lines.
async fn read_sse(
    addr: String,
    token: String,
    filter: Option<String>,
    latency: Arc<SharedLatency>,
    got: Arc<AtomicU64>,
    ready: tokio::sync::mpsc::Sender<()>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut stream = tokio::net::TcpStream::connect(&addr).await?;
    let filter =
        filter.map(|f| format!("&filter={}", url::form_urlencoded::byte_serialize(f.as_bytes()).collect::<String>()));
    let request = format!(
        "GET /v1/events?token={token}&topic=load:ev.%3E{} HTTP/1.1\r\nHost: {addr}\r\n\r\n",
        filter.unwrap_or_default()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    let mut named = false;
    loop {
        let line = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            line = lines.next_line() => line?,
        };
        let Some(line) = line else { return Ok(()) };
        if line == "event: subscribed" {
            let _ = ready.send(()).await;
        }
        if line.starts_with("event: ") {
            named = true;
        } else if let Some(data) = line.strip_prefix("data: ") {
            if !named {
                let event: serde_json::Value = serde_json::from_str(data)?;
                record(event["data"].to_string().as_bytes(), &latency, &got);
            }
            named = false;
        }
    }
}

/// A keep-alive HTTP/1.1 connection to the server API.
async fn api_sender(addr: &str) -> anyhow::Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

pub async fn events(
    relay: &RelayUnderTest,
    args: &EventsArgs,
    transport: TransportChoice,
    window: Duration,
    progress: bool,
) -> anyhow::Result<EventsReport> {
    anyhow::ensure!((1..=5000).contains(&args.subscribers), "--subscribers from 1 to 5000");
    anyhow::ensure!(args.rate > 0.0 && args.rate <= 5000.0, "--rate from 0 to 5000");
    let ws = relay.ws_url.as_deref().context("the events workload needs the relay's TCP port")?;
    let addr = ws.trim_start_matches("ws://").split('/').next().unwrap_or_default().to_owned();
    let (latency, got, stop) =
        (Arc::new(SharedLatency::default()), Arc::new(AtomicU64::new(0)), CancellationToken::new());
    let mut readers = JoinSet::new();
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(args.subscribers);
    for i in 0..args.subscribers {
        let user = format!("sub{i}");
        if args.sse {
            let (token, filter) = (relay.token(&user)?, args.filter.clone());
            let task =
                read_sse(addr.clone(), token, filter, latency.clone(), got.clone(), ready_tx.clone(), stop.clone());
            readers.spawn(async move {
                if let Err(err) = task.await {
                    eprintln!("SSE stream: {err:#}");
                }
            });
        } else {
            let t = transport.for_index(i);
            let client = edgerelay::client::Client::connect(relay.target(t)?, relay.options(&user, t, i)?)
                .await
                .context("connect")?;
            client.subscribe("load:ev.>", args.filter.as_deref()).await.context("subscribe")?;
            let _ = ready_tx.send(()).await;
            readers.spawn(read_client(client, latency.clone(), got.clone(), stop.clone()));
        }
    }
    for _ in 0..args.subscribers {
        tokio::time::timeout(Duration::from_secs(30), ready.recv()).await.context("subscribers ready")?;
    }
    if progress {
        eprintln!("{} subscribers ready; publishing {} events/s for {window:?}", args.subscribers, args.rate);
    }
    let mut sender = api_sender(&addr).await?;
    let cpu_before = relay.pid.and_then(crate::relay::cpu_of);
    let sys_before = relay.pid.and_then(write_syscalls);
    let total = (args.rate * window.as_secs_f64()).ceil() as u64;
    let start = Instant::now();
    let (mut published, mut errors) = (0u64, 0u64);
    for n in 0..total {
        tokio::time::sleep_until((start + Duration::from_secs_f64(n as f64 / args.rate)).into()).await;
        let body = serde_json::json!({"tenant": "load", "events": [{
            "topic": format!("load:ev.t{}", n % 10), "id": format!("e{n}"),
            "tags": {"region": "eu", "qty": "12"}, "data": {"t": now_ns()},
        }]});
        let body = Bytes::from(body.to_string());
        let request = |body: Bytes| {
            hyper::Request::post("/v1/api/events")
                .header("host", &addr)
                .header("authorization", format!("Bearer {API_KEY}"))
                .header("content-type", "application/json")
                .body(Full::new(body))
        };
        // A connection the relay closed between two calls is replaced, and the call made again
        // (the event id makes a repeat harmless).
        let mut answer = sender.send_request(request(body.clone())?).await;
        if answer.is_err() {
            sender = api_sender(&addr).await?;
            answer = sender.send_request(request(body)?).await;
        }
        match answer {
            Ok(response) => {
                let status = response.status();
                let _ = response.into_body().collect().await;
                if status.is_success() {
                    published += 1;
                } else {
                    errors += 1;
                    if progress {
                        eprintln!("publish: HTTP {status}");
                    }
                }
            }
            Err(err) => {
                errors += 1;
                if progress {
                    eprintln!("publish: {err}");
                }
                sender = api_sender(&addr).await?;
            }
        }
    }
    let expected = published * args.subscribers as u64;
    let deadline = Instant::now() + DRAIN;
    while got.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu = relay.pid.and_then(crate::relay::cpu_of).zip(cpu_before).map(|(a, b)| (a - b).as_secs_f64());
    let sys = relay.pid.and_then(write_syscalls).zip(sys_before).map(|(a, b)| a - b);
    stop.cancel();
    while readers.join_next().await.is_some() {}
    let deliveries = got.load(Ordering::Relaxed);
    let per = |v: f64| (deliveries > 0).then(|| v / deliveries as f64);
    Ok(EventsReport {
        transport: if args.sse { "sse".into() } else { format!("{transport:?}").to_lowercase() },
        subscribers: args.subscribers,
        offered_rate: args.rate,
        filter: args.filter.clone(),
        published,
        publish_errors: errors,
        deliveries,
        missing: expected.saturating_sub(deliveries),
        latency: latency.latency(),
        relay_cpu_s: cpu,
        cpu_us_per_delivery: cpu.and_then(|c| per(c * 1e6)),
        write_syscalls_per_delivery: sys.and_then(|s| per(s as f64)),
    })
}

pub fn table(r: &EventsReport) -> String {
    let rows = vec![
        ("transport".into(), r.transport.clone()),
        ("subscribers".into(), r.subscribers.to_string()),
        ("offered events/s".into(), format!("{}", r.offered_rate)),
        ("filter".into(), r.filter.clone().unwrap_or_else(|| "-".into())),
        ("published".into(), format!("{} ({} errors)", r.published, r.publish_errors)),
        ("deliveries".into(), format!("{} ({} missing)", r.deliveries, r.missing)),
        ("latency".into(), r.latency.line()),
        ("relay CPU s".into(), fmt_opt(r.relay_cpu_s, 2)),
        ("relay CPU µs/delivery".into(), fmt_opt(r.cpu_us_per_delivery, 2)),
        ("write syscalls/delivery".into(), fmt_opt(r.write_syscalls_per_delivery, 3)),
    ];
    two_columns("events", &rows)
}
