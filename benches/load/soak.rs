//! Soak: a long, moderate, mixed load against one relay process, watching for what only time
//! shows: memory that creeps, file descriptors or tasks that are never given back, and acked
//! messages that go missing across thousands of connects, drops and resumes.
//!
//! For `--seconds`, all at once:
//! - **stayers** keep one connection each, joined to every room, for the whole run;
//! - **resumers** are joined to every room too, but drop their connection every
//!   `--resume-every` seconds and connect again, rejoining each room from the last position
//!   they saw (`join_since`);
//! - **publishers** publish at `--rate` in all, to the rooms in turn, each waiting for the ack,
//!   and reconnect after `--per-connection` publishes;
//! - **churners** come at `--churn-rate` per second: connect, join a room, set a status, type,
//!   publish one acked message, stop typing after `--hold-ms`, and close (odd ones abort
//!   instead: no `leave`, no waiting for the goodbye).
//!
//! Every `--sample-every` seconds the relay's RSS (`/proc/<pid>/status`), open file
//! descriptors (`/proc/<pid>/fd`), tasks (`edgerelay_tasks`) and connections are sampled. At
//! the end every client leaves and the run waits (at most `--settle` seconds) for descriptors
//! and tasks to come back to their baseline, taken before the first client connected.
//!
//! The checks (the run fails when one does not hold):
//! - every acked message is received exactly once, in offset order, by every stayer and
//!   resumer (each is owed the messages acked after its first join);
//! - every resume was `recovered` (the relay had everything since the position);
//! - the RSS slope of a least-squares line over the samples after the warm-up (`--warmup`, a
//!   share of the run) is below `--max-rss-slope` KiB per minute;
//! - after everyone left, descriptors and tasks are within `--fd-slack` / `--task-slack` of the
//!   baseline.
//!
//! Bounded: at most 4 hours, at most `--max-open` churners open at once (a churner due beyond it
//! is counted as behind), the drain and the settle wait a bounded time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgerelay::client::{Client, Event};
use edgerelay::proto::{Position, Status};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conns::{RelayView, count_error};
use crate::relay::{RelayUnderTest, TransportChoice, fds_of, metric_sum_in};
use crate::stats::{self, Errors};

pub const MAX_SECONDS: f64 = 4.0 * 3600.0;
/// Connect attempts of a stayer, resumer or publisher before it gives up.
const ATTEMPTS: u32 = 20;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct SoakArgs {
    /// Seconds of load (at most 4 hours; the global --duration does not apply).
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Rooms; stayers and resumers join all of them.
    #[arg(long, default_value_t = 4)]
    pub rooms: usize,
    /// Subscribers that keep their connection the whole run.
    #[arg(long, default_value_t = 3)]
    pub stayers: usize,
    /// Subscribers that drop their connection every --resume-every seconds and resume.
    #[arg(long, default_value_t = 3)]
    pub resumers: usize,
    #[arg(long, default_value_t = 10.0)]
    pub resume_every: f64,
    /// Publishers (each waits for every ack).
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Publishes per second, all publishers together.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Publishes per publisher connection; then it closes and connects again.
    #[arg(long, default_value_t = 100)]
    pub per_connection: u64,
    /// Short-lived connections per second.
    #[arg(long, default_value_t = 5.0)]
    pub churn_rate: f64,
    /// How long a churner stays.
    #[arg(long, default_value_t = 1000)]
    pub hold_ms: u64,
    /// Most churners open at once (at most 1,000); one due beyond it is counted as behind and
    /// skipped. Keeps the number of connections steady when the machine is too busy for the
    /// churn rate, so that the RSS reflects what the relay keeps, not a growing backlog.
    #[arg(long, default_value_t = 10)]
    pub max_open: u64,
    /// Seconds between samples of the relay's RSS, descriptors and tasks.
    #[arg(long, default_value_t = 5.0)]
    pub sample_every: f64,
    /// Share of the run that is warm-up: the RSS slope is fitted over the rest.
    #[arg(long, default_value_t = 0.5)]
    pub warmup: f64,
    /// Largest RSS slope after the warm-up that passes, KiB per minute.
    #[arg(long, default_value_t = 256.0)]
    pub max_rss_slope: f64,
    /// Descriptors above the baseline still allowed after everyone left.
    #[arg(long, default_value_t = 2)]
    pub fd_slack: u64,
    /// Tasks above the baseline still allowed after everyone left.
    #[arg(long, default_value_t = 4)]
    pub task_slack: u64,
    /// Most seconds to wait after the last publish for deliveries on their way.
    #[arg(long, default_value_t = 20.0)]
    pub drain: f64,
    /// Most seconds to wait after everyone left for descriptors and tasks to come back.
    #[arg(long, default_value_t = 60.0)]
    pub settle: f64,
}

/// One look at the relay.
#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    pub rss_kib: Option<u64>,
    pub fds: Option<u64>,
    pub tasks: Option<u64>,
    pub connections: Option<u64>,
    pub rooms: Option<u64>,
    pub presence_users: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    pub workload: &'static str,
    pub transport: TransportChoice,
    pub args: SoakArgs,
    pub seconds: f64,
    /// Before the first client connected.
    pub baseline: Sample,
    /// The first sample after the warm-up.
    pub after_warmup: Option<Sample>,
    /// The last sample under load.
    pub loaded: Option<Sample>,
    /// After everyone left and the settle wait.
    pub end: Sample,
    /// Least-squares slope of RSS over the samples after the warm-up, KiB per minute.
    pub rss_slope_kib_per_min: Option<f64>,
    pub rss_peak_kib: Option<u64>,
    pub published: u64,
    pub acked: u64,
    /// Acked messages owed to stayers and resumers, and what they received of them.
    pub owed: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub epochs_changed: u64,
    pub resumes: u64,
    pub resumes_not_recovered: u64,
    pub churn_attempted: u64,
    pub churn_completed: u64,
    pub churn_behind: u64,
    pub typing_sent: u64,
    pub relay_cpu_seconds: Option<f64>,
    pub errors: BTreeMap<String, u64>,
    pub samples: Vec<Sample>,
    /// The checks that failed (empty: the soak passed).
    pub failures: Vec<String>,
}

/// Every acked message, per room: offset → id, and the room's epoch.
#[derive(Default)]
struct Ledger {
    acked: Mutex<Vec<BTreeMap<u64, String>>>,
    epochs: Mutex<Vec<Option<u64>>>,
    epochs_changed: AtomicU64,
}

impl Ledger {
    fn record(&self, room: usize, position: Position, id: String) {
        self.acked.lock().unwrap_or_else(|e| e.into_inner())[room].insert(position.offset, id);
        self.epoch(room, position.epoch);
    }

    /// Notes a room's epoch; a change means the relay announced a loss.
    fn epoch(&self, room: usize, epoch: u64) {
        let mut epochs = self.epochs.lock().unwrap_or_else(|e| e.into_inner());
        match epochs[room] {
            Some(known) if known != epoch => {
                self.epochs_changed.fetch_add(1, Ordering::Relaxed);
                epochs[room] = Some(epoch);
            }
            Some(_) => {}
            None => epochs[room] = Some(epoch),
        }
    }

    fn top(&self, room: usize) -> u64 {
        self.acked.lock().unwrap_or_else(|e| e.into_inner())[room].keys().next_back().copied().unwrap_or(0)
    }
}

/// What every task shares.
struct Ctx {
    relay: RelayView,
    transport: TransportChoice,
    rooms: Vec<String>,
    ledger: Ledger,
    errors: Errors,
    published: AtomicU64,
    resumes: AtomicU64,
    not_recovered: AtomicU64,
    typing: AtomicU64,
    /// Last offset seen per subscriber and room (for the drain).
    progress: Vec<Vec<AtomicU64>>,
}

/// What one stayer or resumer received, per room.
struct Received {
    /// The room's top at the first join: owed everything acked after it.
    start: Vec<Option<u64>>,
    offsets: Vec<Vec<(u64, String)>>,
    duplicates: u64,
}

pub async fn soak(
    relay: &RelayUnderTest,
    args: &SoakArgs,
    transport: TransportChoice,
    show_progress: bool,
) -> anyhow::Result<SoakReport> {
    anyhow::ensure!(args.seconds > 0.0 && args.seconds <= MAX_SECONDS, "--seconds from 0 to {MAX_SECONDS}");
    anyhow::ensure!((1..=64).contains(&args.rooms), "--rooms from 1 to 64");
    anyhow::ensure!(args.stayers + args.resumers <= 100, "at most 100 stayers and resumers");
    anyhow::ensure!(args.publishers <= 100 && args.rate >= 0.0 && args.rate <= 1000.0, "--rate up to 1000");
    anyhow::ensure!(args.churn_rate >= 0.0 && args.churn_rate <= 500.0, "--churn-rate up to 500");
    anyhow::ensure!(args.sample_every >= 0.5 && (0.0..1.0).contains(&args.warmup), "--sample-every, --warmup");
    let window = Duration::from_secs_f64(args.seconds);
    let subscribers = args.stayers + args.resumers;
    let ctx = Arc::new(Ctx {
        relay: RelayView::of(relay)?,
        transport,
        rooms: (0..args.rooms).map(|r| format!("load:soak{r}")).collect(),
        ledger: Ledger {
            acked: Mutex::new(vec![BTreeMap::new(); args.rooms]),
            epochs: Mutex::new(vec![None; args.rooms]),
            epochs_changed: AtomicU64::new(0),
        },
        errors: Errors::default(),
        published: AtomicU64::new(0),
        resumes: AtomicU64::new(0),
        not_recovered: AtomicU64::new(0),
        typing: AtomicU64::new(0),
        progress: (0..subscribers).map(|_| (0..args.rooms).map(|_| AtomicU64::new(0)).collect()).collect(),
    });
    let started = Instant::now();
    let baseline = sample(relay, started);
    if show_progress {
        eprintln!("baseline: {baseline:?}");
    }
    let cpu_before = relay.cpu();
    let mut samples = vec![baseline.clone()];

    // Subscribers first, so they are owed every publish.
    let stop_subscribers = CancellationToken::new();
    let subscriber_tasks = TaskTracker::new();
    let mut handles = Vec::new();
    for slot in 0..subscribers {
        let resume = (slot >= args.stayers).then(|| Duration::from_secs_f64(args.resume_every.max(1.0)));
        // Resumers drop at different times.
        let phase = resume.map(|every| every.mul_f64((slot - args.stayers) as f64 / args.resumers.max(1) as f64));
        handles.push(subscriber_tasks.spawn(subscriber(ctx.clone(), slot, resume, phase, stop_subscribers.clone())));
    }
    // Wait (bounded) until every subscriber has joined every room.
    let joined_by = Instant::now() + Duration::from_secs(30);
    while Instant::now() < joined_by
        && ctx.progress.iter().any(|rooms| rooms.iter().any(|p| p.load(Ordering::Relaxed) == 0))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let stop = CancellationToken::new();
    let load_tasks = TaskTracker::new();
    for p in 0..args.publishers {
        let rate = args.rate / args.publishers as f64;
        load_tasks.spawn(publisher(ctx.clone(), p, args.publishers, rate, args.per_connection, stop.clone()));
    }
    let max_open = args.max_open.clamp(1, 1000);
    let churners = TaskTracker::new();
    let open = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let (mut attempted, mut behind) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let load_started = Instant::now();
    let sample_every = Duration::from_secs_f64(args.sample_every);
    let mut next_sample = load_started + sample_every;
    while load_started.elapsed() < window {
        tick.tick().await;
        let due = (load_started.elapsed().min(window).as_secs_f64() * args.churn_rate) as u64;
        while attempted + behind < due {
            if open.load(Ordering::Relaxed) >= max_open {
                behind += 1;
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let (ctx, open, completed, stop) = (ctx.clone(), open.clone(), completed.clone(), stop.clone());
            let hold = Duration::from_millis(args.hold_ms);
            let index = attempted as usize;
            attempted += 1;
            churners.spawn(async move {
                if let Err(err) = churner(&ctx, index, hold, &stop).await {
                    count_error(&ctx.errors, &err);
                } else {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        if Instant::now() >= next_sample {
            next_sample += sample_every;
            let s = sample(relay, started);
            if show_progress {
                eprintln!(
                    "[{:>5.0}s] rss {} KiB, fds {}, tasks {}, connections {}, acked {}, churned {attempted}, resumes {}, errors {}",
                    s.t_s,
                    opt(s.rss_kib),
                    opt(s.fds),
                    opt(s.tasks),
                    opt(s.connections),
                    ctx.ledger.acked.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|m| m.len()).sum::<usize>(),
                    ctx.resumes.load(Ordering::Relaxed),
                    ctx.errors.total(),
                );
            }
            samples.push(s);
        }
    }
    let seconds = load_started.elapsed().as_secs_f64();
    let loaded = samples.last().cloned();

    // Stop the load: churners finish their hold (bounded), publishers their last publish.
    stop.cancel();
    churners.close();
    load_tasks.close();
    let wait = Duration::from_millis(args.hold_ms) + Duration::from_secs(20);
    let _ = tokio::time::timeout(wait, async { tokio::join!(churners.wait(), load_tasks.wait()) }).await;

    // Drain: every subscriber reaches the top of every room (bounded).
    let tops: Vec<u64> = (0..args.rooms).map(|r| ctx.ledger.top(r)).collect();
    let drain_by = Instant::now() + Duration::from_secs_f64(args.drain.clamp(0.0, 120.0));
    while Instant::now() < drain_by
        && ctx.progress.iter().any(|rooms| rooms.iter().zip(&tops).any(|(p, top)| p.load(Ordering::Relaxed) < *top))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_subscribers.cancel();
    subscriber_tasks.close();
    let mut received = Vec::new();
    for handle in handles {
        if let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(10), handle).await {
            received.push(r);
        }
    }

    // Settle: descriptors and tasks back to the baseline (bounded).
    let settle_by = Instant::now() + Duration::from_secs_f64(args.settle.clamp(0.0, 600.0));
    let back =
        |s: &Sample| within(s.fds, baseline.fds, args.fd_slack) && within(s.tasks, baseline.tasks, args.task_slack);
    let mut end = sample(relay, started);
    while !back(&end) && Instant::now() < settle_by {
        tokio::time::sleep(Duration::from_millis(500)).await;
        end = sample(relay, started);
    }
    samples.push(end.clone());
    if show_progress {
        eprintln!("end: {end:?}");
    }

    // Accounting.
    let acked_map = ctx.ledger.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let acked: u64 = acked_map.iter().map(|m| m.len() as u64).sum();
    let (mut owed, mut delivered, mut lost, mut duplicates) = (0u64, 0u64, 0u64, 0u64);
    let mut errors = ctx.errors.snapshot();
    if received.len() < subscribers {
        errors.insert("subscriber_task_lost".into(), (subscribers - received.len()) as u64);
    }
    for r in &received {
        duplicates += r.duplicates;
        for (room, acked_room) in acked_map.iter().enumerate() {
            let Some(start) = r.start[room] else {
                owed += acked_room.len() as u64;
                lost += acked_room.len() as u64;
                continue;
            };
            let got: BTreeMap<u64, &str> = r.offsets[room].iter().map(|(o, id)| (*o, id.as_str())).collect();
            for (offset, id) in acked_room.range(start + 1..) {
                owed += 1;
                if got.get(offset) == Some(&id.as_str()) {
                    delivered += 1;
                } else {
                    lost += 1;
                }
            }
        }
    }

    // The checks.
    let warm_until = args.seconds * args.warmup;
    let after: Vec<&Sample> = samples[..samples.len() - 1].iter().filter(|s| s.t_s >= warm_until).collect();
    let points: Vec<(f64, f64)> = after.iter().filter_map(|s| Some((s.t_s, s.rss_kib? as f64))).collect();
    let rss_slope_kib_per_min = slope(&points).map(|per_s| per_s * 60.0);
    let mut failures = Vec::new();
    if acked == 0 {
        failures.push("no publish was acked".into());
    }
    if lost > 0 || duplicates > 0 {
        failures.push(format!("{lost} acked messages lost, {duplicates} duplicates or out of order"));
    }
    let not_recovered = ctx.not_recovered.load(Ordering::Relaxed);
    if not_recovered > 0 {
        failures.push(format!("{not_recovered} resumes not recovered"));
    }
    let epochs_changed = ctx.ledger.epochs_changed.load(Ordering::Relaxed);
    if epochs_changed > 0 {
        failures.push(format!("{epochs_changed} epoch changes"));
    }
    match rss_slope_kib_per_min {
        Some(s) if s <= args.max_rss_slope => {}
        Some(s) => {
            failures.push(format!("RSS grows {s:.0} KiB/min after the warm-up (at most {})", args.max_rss_slope))
        }
        None => failures.push("too few RSS samples after the warm-up for a slope".into()),
    }
    if !within(end.fds, baseline.fds, args.fd_slack) {
        failures.push(format!("descriptors {} after everyone left, baseline {}", opt(end.fds), opt(baseline.fds)));
    }
    if !within(end.tasks, baseline.tasks, args.task_slack) {
        failures.push(format!("tasks {} after everyone left, baseline {}", opt(end.tasks), opt(baseline.tasks)));
    }
    Ok(SoakReport {
        workload: "soak",
        transport,
        args: args.clone(),
        seconds,
        after_warmup: after.first().map(|s| (*s).clone()),
        rss_peak_kib: samples.iter().filter_map(|s| s.rss_kib).max(),
        baseline,
        loaded,
        end,
        rss_slope_kib_per_min,
        published: ctx.published.load(Ordering::Relaxed),
        acked,
        owed,
        delivered,
        lost,
        duplicates,
        epochs_changed,
        resumes: ctx.resumes.load(Ordering::Relaxed),
        resumes_not_recovered: not_recovered,
        churn_attempted: attempted,
        churn_completed: completed.load(Ordering::Relaxed),
        churn_behind: behind,
        typing_sent: ctx.typing.load(Ordering::Relaxed),
        relay_cpu_seconds: relay.cpu().zip(cpu_before).map(|(b, a)| b.saturating_sub(a).as_secs_f64()),
        errors,
        samples,
        failures,
    })
}

fn within(value: Option<u64>, baseline: Option<u64>, slack: u64) -> bool {
    match (value, baseline) {
        (Some(v), Some(b)) => v <= b + slack,
        _ => false,
    }
}

fn opt(v: Option<u64>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

/// The relay's RSS, descriptors, tasks and connections now.
fn sample(relay: &RelayUnderTest, started: Instant) -> Sample {
    let page = relay.metrics_page();
    let metric = |name: &str| page.as_deref().map(|p| metric_sum_in(p, name) as u64);
    Sample {
        t_s: started.elapsed().as_secs_f64(),
        rss_kib: relay.rss_kib(),
        fds: relay.pid.and_then(fds_of),
        tasks: metric("edgerelay_tasks"),
        connections: metric("edgerelay_connections"),
        rooms: metric("edgerelay_rooms"),
        presence_users: metric("edgerelay_presence_users"),
    }
}

/// Least-squares slope of y over x (per unit of x); `None` under 3 points.
pub fn slope(points: &[(f64, f64)]) -> Option<f64> {
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + x / n, b + y / n));
    let (sxy, sxx) =
        points.iter().fold((0.0, 0.0), |(a, b), (x, y)| (a + (x - mx) * (y - my), b + (x - mx) * (x - mx)));
    (sxx > 0.0).then(|| sxy / sxx)
}

/// Connects, retrying a failed attempt after a short pause; `None` when stopped or every
/// attempt failed.
async fn connect(ctx: &Ctx, user: &str, index: usize, stop: &CancellationToken) -> Option<Client> {
    for attempt in 0..ATTEMPTS {
        let result = async {
            let target = ctx.relay.relay_target(ctx.transport, index)?;
            let options = ctx.relay.options(user, ctx.transport, index)?;
            anyhow::Ok(Client::connect(target, options).await?)
        }
        .await;
        match result {
            Ok(client) => return Some(client),
            Err(err) => count_error(&ctx.errors, &err),
        }
        let pause = Duration::from_millis(100 << attempt.min(5));
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.cancelled() => return None,
        }
    }
    None
}

/// A stayer (`resume` None) or resumer: joined to every room until `stop`, recording every
/// message it receives.
async fn subscriber(
    ctx: Arc<Ctx>,
    slot: usize,
    resume: Option<Duration>,
    phase: Option<Duration>,
    stop: CancellationToken,
) -> Received {
    let rooms = ctx.rooms.len();
    let mut got = Received { start: vec![None; rooms], offsets: vec![Vec::new(); rooms], duplicates: 0 };
    let mut last: Vec<Option<Position>> = vec![None; rooms];
    let mut first: Vec<Option<Position>> = vec![None; rooms];
    let mut next_drop = resume.map(|every| tokio::time::Instant::now() + every + phase.unwrap_or_default());
    let user = format!("soak-sub-{slot}");
    'connections: while !stop.is_cancelled() {
        let Some(mut client) = connect(&ctx, &user, slot, &stop).await else { break };
        for (r, room) in ctx.rooms.iter().enumerate() {
            // A rejoin resumes from the last message seen, or from the first join's position
            // when none came yet (so what was published meanwhile is still owed).
            let since = last[r].or(first[r].filter(|p| p.offset > 0));
            match client.join_since(room, since).await {
                Ok(joined) => {
                    if since.is_some() {
                        if !joined.recovered {
                            ctx.not_recovered.fetch_add(1, Ordering::Relaxed);
                        }
                    } else if first[r].is_none() {
                        first[r] = Some(joined.position);
                        got.start[r] = Some(joined.position.offset);
                        ctx.ledger.epoch(r, joined.position.epoch);
                        // Nothing received yet: the drain counts from the join.
                        ctx.progress[slot][r].store(joined.position.offset.max(1), Ordering::Relaxed);
                    }
                }
                Err(err) => {
                    ctx.errors.client(&err);
                    client.abort();
                    continue 'connections;
                }
            }
        }
        let _ = client.set_status(Status::Online, Some("soak")).await;
        loop {
            let drop_at = next_drop.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                event = client.next_event() => match event {
                    Some(Event::Message(m)) => {
                        let Some(r) = ctx.rooms.iter().position(|room| *room == m.room) else { continue };
                        if last[r].is_some_and(|l| l.epoch == m.position.epoch && m.position.offset <= l.offset) {
                            got.duplicates += 1;
                            continue;
                        }
                        ctx.ledger.epoch(r, m.position.epoch);
                        last[r] = Some(m.position);
                        ctx.progress[slot][r].store(m.position.offset, Ordering::Relaxed);
                        got.offsets[r].push((m.position.offset, m.id));
                    }
                    Some(Event::Closed { code, .. }) => {
                        ctx.errors.add(code.map_or("closed".to_string(), |c| format!("closed:{}", c.slug())));
                        continue 'connections;
                    }
                    Some(Event::GoAway { code, .. }) => {
                        ctx.errors.add(format!("going_away:{}", code.slug()));
                        client.abort();
                        continue 'connections;
                    }
                    Some(Event::Error { code, .. }) => ctx.errors.add(code.slug()),
                    Some(_) => {}
                    None => {
                        ctx.errors.add("closed");
                        continue 'connections;
                    }
                },
                _ = tokio::time::sleep_until(drop_at), if next_drop.is_some() => {
                    // Dropped as a network loss ends a connection: no leave, no waiting.
                    client.abort();
                    ctx.resumes.fetch_add(1, Ordering::Relaxed);
                    next_drop = resume.map(|every| tokio::time::Instant::now() + every);
                    continue 'connections;
                }
                _ = stop.cancelled() => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
                    break 'connections;
                }
            }
        }
    }
    got
}

/// Publishes at `rate`, to the rooms in turn, each awaiting its ack; a new connection every
/// `per_connection` publishes (the next transport of the mix).
async fn publisher(
    ctx: Arc<Ctx>,
    index: usize,
    publishers: usize,
    rate: f64,
    per_connection: u64,
    stop: CancellationToken,
) {
    if rate <= 0.0 {
        return;
    }
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seq, mut generation) = (0u64, 0usize);
    let user = format!("soak-pub-{index}");
    while !stop.is_cancelled() {
        let Some(client) = connect(&ctx, &user, index + generation * publishers, &stop).await else { break };
        generation += 1;
        for _ in 0..per_connection.max(1) {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => break,
            }
            let room = (index + seq as usize) % ctx.rooms.len();
            let id = format!("p{index}-{seq}");
            seq += 1;
            ctx.published.fetch_add(1, Ordering::Relaxed);
            match client.publish(&ctx.rooms[room], &id, id.as_str()).await {
                Ok(position) => ctx.ledger.record(room, position, id),
                Err(err) => {
                    ctx.errors.client(&err);
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
    }
}

/// One short-lived connection: join, status, typing, one acked publish, hold, then close
/// (even `index`) or abort (odd).
async fn churner(ctx: &Ctx, index: usize, hold: Duration, stop: &CancellationToken) -> anyhow::Result<()> {
    let target = ctx.relay.relay_target(ctx.transport, index)?;
    let options = ctx.relay.options(&format!("soak-churn-{}", index % 100), ctx.transport, index)?;
    let mut client = Client::connect(target, options).await?;
    let r = index % ctx.rooms.len();
    let room = &ctx.rooms[r];
    let result = async {
        client.join(room).await?;
        client.set_status([Status::Online, Status::Away, Status::Busy][index % 3], None).await?;
        client.typing(room, true).await?;
        ctx.typing.fetch_add(1, Ordering::Relaxed);
        let id = format!("c{index}");
        ctx.published.fetch_add(1, Ordering::Relaxed);
        let position = client.publish(room, &id, id.as_str()).await?;
        ctx.ledger.record(r, position, id);
        let until = tokio::time::Instant::now() + hold;
        // Read what the room sends meanwhile, as a client does.
        loop {
            tokio::select! {
                event = client.next_event() => if event.is_none() { break },
                _ = tokio::time::sleep_until(until) => break,
                _ = stop.cancelled() => break,
            }
        }
        client.typing(room, false).await?;
        anyhow::Ok(())
    }
    .await;
    if index.is_multiple_of(2) {
        let _ = tokio::time::timeout(Duration::from_secs(5), client.close()).await;
    } else {
        client.abort();
    }
    result
}

pub fn table(r: &SoakReport) -> String {
    let s = |s: &Option<Sample>| {
        s.as_ref().map_or("-".into(), |s| {
            format!("RSS {} KiB, {} fds, {} tasks at {:.0} s", opt(s.rss_kib), opt(s.fds), opt(s.tasks), s.t_s)
        })
    };
    stats::table(
        &format!("soak over {:?}", r.transport),
        &[
            ("load".into(), format!("{:.0} s", r.seconds)),
            ("baseline".into(), s(&Some(r.baseline.clone()))),
            ("after warm-up".into(), s(&r.after_warmup)),
            ("loaded (last)".into(), s(&r.loaded)),
            ("everyone left".into(), s(&Some(r.end.clone()))),
            (
                "RSS slope after warm-up".into(),
                format!("{} KiB/min (peak {} KiB)", stats::fmt_opt(r.rss_slope_kib_per_min, 1), opt(r.rss_peak_kib)),
            ),
            ("published / acked".into(), format!("{} / {}", r.published, r.acked)),
            (
                "owed / delivered / lost / duplicates".into(),
                format!("{} / {} / {} / {}", r.owed, r.delivered, r.lost, r.duplicates),
            ),
            ("resumes (not recovered)".into(), format!("{} ({})", r.resumes, r.resumes_not_recovered)),
            (
                "churn attempted / completed / behind".into(),
                format!("{} / {} / {}", r.churn_attempted, r.churn_completed, r.churn_behind),
            ),
            ("typing sent".into(), r.typing_sent.to_string()),
            ("relay CPU".into(), format!("{} s", stats::fmt_opt(r.relay_cpu_seconds, 1))),
            ("errors".into(), format!("{:?}", r.errors)),
            (
                "verdict".into(),
                if r.failures.is_empty() { "passed".into() } else { format!("FAILED: {}", r.failures.join("; ")) },
            ),
        ],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn slope_of_a_line() {
        let points: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, 3.0 * i as f64 + 7.0)).collect();
        assert!((super::slope(&points).unwrap() - 3.0).abs() < 1e-9);
        assert_eq!(super::slope(&points[..2]), None);
    }
}
