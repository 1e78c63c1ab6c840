//! Connection workloads: idle connections (the relay's memory per connection) and churn
//! (connects and disconnects per second).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgerelay::client::{Client, ClientOptions, Event};
use futures_util::FutureExt;
use futures_util::stream::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::{RelayUnderTest, TransportChoice};
use crate::stats::{self, Errors, Latency, SharedLatency};

pub const MAX_CONNECTIONS: usize = 20_000;
pub const MAX_CHURN_RATE: f64 = 5_000.0;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct IdleArgs {
    /// Idle connections to open and hold.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections opened before the baseline RSS is read (so one-time allocations of the first
    /// connections do not count per connection); default: a tenth, at most 100.
    #[arg(long)]
    pub warmup: Option<usize>,
    /// Each connection also joins one room (of --rooms), as an idle chat member would.
    #[arg(long)]
    pub join: bool,
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Connections opened at once.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds to let the relay settle after the last connect before reading its RSS.
    #[arg(long, default_value_t = 2.0)]
    pub settle: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    pub workload: &'static str,
    pub transport: TransportChoice,
    pub args: IdleArgs,
    pub connected: usize,
    pub connect_latency: Latency,
    pub relay_rss_kib_baseline: Option<u64>,
    pub relay_rss_kib_loaded: Option<u64>,
    pub relay_rss_kib_end: Option<u64>,
    /// (loaded - baseline) / connections opened after the baseline.
    pub relay_bytes_per_connection: Option<f64>,
    /// Relay CPU over the hold, per second and per 1,000 connections (heartbeats, timers).
    pub relay_cpu_s_per_s_per_1000: Option<f64>,
    /// Relay CPU from the first connect after the warm-up to the end of the settle that follows
    /// the last, per connection opened: connect + hello (+ join, with its presence traffic).
    pub relay_cpu_ms_per_connect: Option<f64>,
    /// Connections opened per second after the warm-up (connect + hello + join each).
    pub connects_per_second: f64,
    /// Presence frames the relay queued over the same span (`edgerelay_presence_updates_total`).
    pub presence_frames: Option<f64>,
    pub hold_seconds: f64,
    /// Connections closed during the hold (should be none).
    pub closed_during_hold: u64,
    pub errors: BTreeMap<String, u64>,
}

async fn open(
    relay: &RelayUnderTest,
    transport: TransportChoice,
    index: usize,
    join: Option<String>,
) -> anyhow::Result<(Client, Duration)> {
    let target = relay.target(transport.for_index(index))?;
    let options = relay.options(&format!("idle-{index}"), transport.for_index(index), index)?;
    let started = Instant::now();
    let client = Client::connect(target, options).await?;
    let took = started.elapsed();
    if let Some(room) = join {
        // Counted apart from the connect's errors: which step a storm's stragglers wait on.
        if let Err(err) = client.join(&room).await {
            anyhow::bail!("join: {}", stats::error_key(&err));
        }
    }
    Ok((client, took))
}

pub fn count_error(errors: &Errors, err: &anyhow::Error) {
    match err.downcast_ref::<edgerelay::client::ClientError>() {
        Some(err) => errors.client(err),
        None => errors.add(format!("setup: {err}")),
    }
}

async fn open_many(
    relay: &RelayUnderTest,
    args: &IdleArgs,
    transport: TransportChoice,
    range: std::ops::Range<usize>,
    clients: &mut Vec<Client>,
    hist: &mut hdrhistogram::Histogram<u64>,
    errors: &Errors,
) {
    let opens = futures_util::stream::iter(range)
        .map(|i| {
            let join = args.join.then(|| format!("load:r{}", i % args.rooms.max(1)));
            open(relay, transport, i, join)
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    tokio::pin!(opens);
    while let Some(opened) = opens.next().await {
        match opened {
            Ok((client, took)) => {
                stats::record(hist, took);
                clients.push(client);
            }
            Err(err) => count_error(errors, &err),
        }
    }
}

/// The relay's counter of presence frames queued (every kind).
const PRESENCE_FRAMES: &str = "edgerelay_presence_updates_total";

pub async fn idle(
    relay: &RelayUnderTest,
    args: &IdleArgs,
    transport: TransportChoice,
    hold: Duration,
    show_progress: bool,
) -> anyhow::Result<IdleReport> {
    anyhow::ensure!(args.connections <= MAX_CONNECTIONS, "at most {MAX_CONNECTIONS} connections");
    let warmup = args.warmup.unwrap_or((args.connections / 10).min(100)).min(args.connections);
    let errors = Errors::default();
    let mut hist = stats::histogram();
    let mut clients = Vec::with_capacity(args.connections);
    open_many(relay, args, transport, 0..warmup, &mut clients, &mut hist, &errors).await;
    tokio::time::sleep(Duration::from_secs_f64(args.settle.clamp(0.0, 60.0))).await;
    let baseline = relay.rss_kib();
    let before = clients.len();
    if show_progress {
        eprintln!("{before} warm-up connections; relay RSS {baseline:?} KiB; opening {}", args.connections - warmup);
    }
    let (opening_cpu, presence_before) = (relay.cpu(), relay.metric_sum(PRESENCE_FRAMES));
    let opening = Instant::now();
    open_many(relay, args, transport, warmup..args.connections, &mut clients, &mut hist, &errors).await;
    let added = clients.len() - before;
    let connects_per_second = added as f64 / opening.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs_f64(args.settle.clamp(0.0, 60.0))).await;
    let opened_cpu = opening_cpu.zip(relay.cpu()).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    let presence_frames = presence_before.zip(relay.metric_sum(PRESENCE_FRAMES)).map(|(a, b)| b - a);
    let loaded = relay.rss_kib();
    if show_progress {
        eprintln!("{} connections; relay RSS {loaded:?} KiB; holding {:.0} s", clients.len(), hold.as_secs_f64());
    }
    let cpu_before = relay.cpu();
    let held_from = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while held_from.elapsed() < hold {
        tick.tick().await;
        if show_progress {
            eprintln!(
                "[{:>4}s] {} connections, relay RSS {} KiB",
                held_from.elapsed().as_secs(),
                clients.len(),
                relay.rss_kib().map_or("-".into(), |v| v.to_string())
            );
        }
    }
    let hold_seconds = held_from.elapsed().as_secs_f64();
    let cpu_after = relay.cpu();
    let end = relay.rss_kib();
    let mut closed = 0;
    for client in &mut clients {
        while let Some(event) = client.next_event().now_or_never() {
            match event {
                Some(Event::Closed { code, .. }) => {
                    closed += 1;
                    errors.add(code.map_or("closed".to_string(), |c| format!("closed:{}", c.slug())));
                    break;
                }
                Some(Event::GoAway { code, .. }) => errors.add(format!("going_away:{}", code.slug())),
                Some(Event::Error { code, .. }) => errors.add(code.slug()),
                Some(
                    Event::Message(_)
                    | Event::Call(_)
                    | Event::CallUpdate(_)
                    | Event::Left { .. }
                    | Event::Topic(_)
                    | Event::Session(_)
                    | Event::Receipts(_)
                    | Event::Notifications(_)
                    | Event::PathBack,
                ) => {}
                None => break,
            }
        }
    }
    let connected = clients.len();
    let close_all = futures_util::stream::iter(clients).for_each_concurrent(256, |c| async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), c.close()).await;
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), close_all).await;
    let per_conn =
        baseline.zip(loaded).filter(|_| added > 0).map(|(b, l)| (l as f64 - b as f64) * 1024.0 / added as f64);
    let cpu = cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    Ok(IdleReport {
        workload: "idle",
        transport,
        args: args.clone(),
        connected,
        connect_latency: Latency::of(&hist),
        relay_rss_kib_baseline: baseline,
        relay_rss_kib_loaded: loaded,
        relay_rss_kib_end: end,
        relay_bytes_per_connection: per_conn,
        relay_cpu_s_per_s_per_1000: cpu.filter(|_| connected > 0).map(|c| c / hold_seconds * 1000.0 / connected as f64),
        relay_cpu_ms_per_connect: opened_cpu.filter(|_| added > 0).map(|c| c * 1000.0 / added as f64),
        connects_per_second,
        presence_frames,
        hold_seconds,
        closed_during_hold: closed,
        errors: errors.snapshot(),
    })
}

pub fn idle_table(r: &IdleReport) -> String {
    stats::table(
        &format!("idle over {:?}", r.transport),
        &[
            ("connections held".into(), format!("{} of {}", r.connected, r.args.connections)),
            ("connect".into(), r.connect_latency.line()),
            (
                "relay RSS".into(),
                format!(
                    "baseline {} KiB, loaded {} KiB, after hold {} KiB",
                    r.relay_rss_kib_baseline.map_or("-".into(), |v| v.to_string()),
                    r.relay_rss_kib_loaded.map_or("-".into(), |v| v.to_string()),
                    r.relay_rss_kib_end.map_or("-".into(), |v| v.to_string())
                ),
            ),
            (
                "relay memory per connection".into(),
                r.relay_bytes_per_connection.map_or("-".into(), |b| format!("{:.0} bytes = {:.2} KiB", b, b / 1024.0)),
            ),
            (
                "relay CPU while idle".into(),
                format!("{} CPU-s per s per 1,000 connections", stats::fmt_opt(r.relay_cpu_s_per_s_per_1000, 4)),
            ),
            (
                "connect + hello + join".into(),
                format!(
                    "{} ms relay CPU each, {:.0} connections/s, {} presence frames queued",
                    stats::fmt_opt(r.relay_cpu_ms_per_connect, 3),
                    r.connects_per_second,
                    stats::fmt_opt(r.presence_frames, 0)
                ),
            ),
            ("closed during hold".into(), r.closed_during_hold.to_string()),
            ("errors".into(), format!("{:?}", r.errors)),
        ],
    )
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ChurnArgs {
    /// New connections per second (each connects, joins a room, stays --hold-ms, closes).
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// How long each connection stays open.
    #[arg(long, default_value_t = 1000)]
    pub hold_ms: u64,
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Most connections open at once; a connect due beyond it is counted as behind.
    #[arg(long, default_value_t = 5000)]
    pub max_open: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    pub workload: &'static str,
    pub transport: TransportChoice,
    pub args: ChurnArgs,
    pub seconds: f64,
    pub attempted: u64,
    pub connected: u64,
    pub joined: u64,
    pub closed: u64,
    pub behind: u64,
    pub connects_per_s: f64,
    pub connect_latency: Latency,
    pub join_latency: Latency,
    pub relay_cpu_seconds: Option<f64>,
    /// Relay CPU seconds per 1,000 connections (connect, join, close).
    pub relay_cpu_s_per_1000: Option<f64>,
    pub relay_rss_kib_before: Option<u64>,
    pub relay_rss_kib_after: Option<u64>,
    pub errors: BTreeMap<String, u64>,
}

pub async fn churn(
    relay: &RelayUnderTest,
    args: &ChurnArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
) -> anyhow::Result<ChurnReport> {
    anyhow::ensure!(args.rate > 0.0 && args.rate <= MAX_CHURN_RATE, "--rate from 0 to {MAX_CHURN_RATE}");
    let relay = Arc::new(RelayView::of(relay)?);
    let errors = Arc::new(Errors::default());
    let connect_hist = Arc::new(SharedLatency::default());
    let join_hist = Arc::new(SharedLatency::default());
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]); // connected, joined, closed
    let open = Arc::new(AtomicU64::new(0));
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let rss_before = relay.rss();
    let cpu_before = relay.cpu();
    let started = Instant::now();
    let (mut attempted, mut behind) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut last_print = Instant::now();
    while started.elapsed() < window {
        tick.tick().await;
        let due = (started.elapsed().min(window).as_secs_f64() * args.rate) as u64;
        while attempted + behind < due {
            if open.load(Ordering::Relaxed) as usize >= args.max_open {
                behind += 1;
                continue;
            }
            let index = attempted as usize;
            attempted += 1;
            open.fetch_add(1, Ordering::Relaxed);
            let (relay, errors, connect_hist, join_hist, counts, open, cancel) = (
                relay.clone(),
                errors.clone(),
                connect_hist.clone(),
                join_hist.clone(),
                counts.clone(),
                open.clone(),
                cancel.clone(),
            );
            let room = format!("load:r{}", index % args.rooms.max(1));
            let hold = Duration::from_millis(args.hold_ms);
            tasks.spawn(async move {
                let result = async {
                    let target = relay.relay_target(transport, index)?;
                    let options = relay.options(&format!("churn-{index}"), transport, index)?;
                    let t = Instant::now();
                    let client = Client::connect(target, options).await?;
                    connect_hist.record(t.elapsed());
                    counts[0].fetch_add(1, Ordering::Relaxed);
                    let t = Instant::now();
                    client.join(&room).await?;
                    join_hist.record(t.elapsed());
                    counts[1].fetch_add(1, Ordering::Relaxed);
                    tokio::select! {
                        _ = tokio::time::sleep(hold) => {}
                        _ = cancel.cancelled() => {}
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
                    counts[2].fetch_add(1, Ordering::Relaxed);
                    anyhow::Ok(())
                }
                .await;
                if let Err(err) = result {
                    count_error(&errors, &err);
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        if show_progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{:>4}s] attempted {attempted}, connected {}, closed {}, open {}, behind {behind}, errors {}",
                started.elapsed().as_secs(),
                counts[0].load(Ordering::Relaxed),
                counts[2].load(Ordering::Relaxed),
                open.load(Ordering::Relaxed),
                errors.total(),
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // The last connections finish their hold (bounded), then everything is cancelled.
    tasks.close();
    let wait = Duration::from_millis(args.hold_ms) + Duration::from_secs(15);
    if tokio::time::timeout(wait, tasks.wait()).await.is_err() {
        cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    }
    let cpu = relay.cpu().zip(cpu_before).map(|(b, a)| b.saturating_sub(a).as_secs_f64());
    let connected = counts[0].load(Ordering::Relaxed);
    let report = ChurnReport {
        workload: "churn",
        transport,
        args: args.clone(),
        seconds,
        attempted,
        connected,
        joined: counts[1].load(Ordering::Relaxed),
        closed: counts[2].load(Ordering::Relaxed),
        behind,
        connects_per_s: connected as f64 / seconds,
        connect_latency: connect_hist.latency(),
        join_latency: join_hist.latency(),
        relay_cpu_seconds: cpu,
        relay_cpu_s_per_1000: cpu.filter(|_| connected > 0).map(|c| c * 1000.0 / connected as f64),
        relay_rss_kib_before: rss_before,
        relay_rss_kib_after: relay.rss(),
        errors: errors.snapshot(),
    };
    Ok(report)
}

/// What the tasks of churn and storm need of the relay, owned (they outlive no borrow of it).
pub struct RelayView {
    targets: [Option<edgerelay::client::Target>; 3],
    tokens: crate::relay::TokenMinter,
    endpoints: crate::relay::Endpoints,
    pid: Option<u32>,
}

impl RelayView {
    pub fn of(relay: &RelayUnderTest) -> anyhow::Result<RelayView> {
        use crate::relay::Transport;
        Ok(RelayView {
            targets: [Transport::Quic, Transport::Ws, Transport::Wt].map(|t| relay.target(t).ok()),
            tokens: relay.minter(),
            endpoints: relay.endpoints.clone(),
            pid: relay.pid,
        })
    }

    pub fn relay_target(&self, choice: TransportChoice, index: usize) -> anyhow::Result<edgerelay::client::Target> {
        use crate::relay::Transport;
        let slot = match choice.for_index(index) {
            Transport::Quic => 0,
            Transport::Ws => 1,
            Transport::Wt => 2,
        };
        self.targets[slot].clone().ok_or_else(|| anyhow::anyhow!("no address for that transport"))
    }

    pub fn token(&self, sub: &str) -> anyhow::Result<String> {
        self.tokens.token(sub)
    }

    /// Options for connection `index` as `user` (see [`crate::relay::Endpoints`]).
    pub fn options(&self, user: &str, choice: TransportChoice, index: usize) -> anyhow::Result<ClientOptions> {
        self.endpoints.options(self.token(user)?, choice.for_index(index), index)
    }

    pub fn cpu(&self) -> Option<Duration> {
        crate::relay::cpu_of(self.pid?)
    }

    pub fn rss(&self) -> Option<u64> {
        crate::relay::rss_of(self.pid?)
    }
}

pub fn churn_table(r: &ChurnReport) -> String {
    stats::table(
        &format!("churn over {:?}", r.transport),
        &[
            (
                "offered".into(),
                format!("{:.0} connects/s for {:.1} s, each held {} ms", r.args.rate, r.seconds, r.args.hold_ms),
            ),
            (
                "attempted / connected / joined / closed".into(),
                format!("{} / {} / {} / {}", r.attempted, r.connected, r.joined, r.closed),
            ),
            ("behind (over --max-open)".into(), r.behind.to_string()),
            ("connects/s achieved".into(), format!("{:.1}", r.connects_per_s)),
            ("connect".into(), r.connect_latency.line()),
            ("join".into(), r.join_latency.line()),
            (
                "relay CPU".into(),
                format!(
                    "{} s, {} CPU-s per 1,000 connections",
                    stats::fmt_opt(r.relay_cpu_seconds, 2),
                    stats::fmt_opt(r.relay_cpu_s_per_1000, 3)
                ),
            ),
            (
                "relay RSS".into(),
                format!(
                    "{} KiB before, {} KiB after",
                    r.relay_rss_kib_before.map_or("-".into(), |v| v.to_string()),
                    r.relay_rss_kib_after.map_or("-".into(), |v| v.to_string())
                ),
            ),
            ("errors".into(), format!("{:?}", r.errors)),
        ],
    )
}
