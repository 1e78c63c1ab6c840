//! Reconnect storm: N connections join rooms while a publisher (its own connection, never
//! dropped) keeps publishing; then all N are dropped at once (aborted, no leave and no goodbye,
//! as a network loss would end them) and reconnect all together, each rejoining its rooms from
//! the last position it saw (`join_since`). This is what a relay sees after a network blip or a
//! load balancer restart, and it is where resume must stay exact under pressure.
//!
//! Per storm: the time from the drop until every connection is back (connected and rejoined)
//! and until every one has caught up, i.e. holds each message of its rooms up to the room's top
//! at its rejoin; the connect latency distribution during the storm; refusals and errors by
//! code; whether the relay said `recovered` for every rejoin; relay CPU and peak RSS. At the
//! end, every connection must hold every message acked in its rooms exactly once: offsets tell
//! gaps and duplicates, counts against the publisher's acks tell loss.
//!
//! Bounded: at most 20 storms, each cut short after `--storm-timeout`; a connection tries at
//! most `--attempts` connects per storm (refusals wait a jittered backoff, as the resilient
//! client does), and the final drain waits at most `--drain`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use edgerelay::client::resilient::Reconnect;
use edgerelay::client::{Client, ClientError, ClientOptions, Event, Joined, Message, Target};
use edgerelay::proto::{ErrorCode, Position};
use serde::Serialize;
use tokio::sync::watch;

use crate::conns::{MAX_CONNECTIONS, RelayView};
use crate::fanout::{self, CodecArg, Counters};
use crate::relay::{RelayUnderTest, TransportChoice};
use crate::stats::{self, Errors, Latency, SharedLatency, now_ns};

pub const MAX_ROUNDS: usize = 20;
/// Most rooms one connection joins.
pub const MAX_ROOMS_PER_CONNECTION: usize = 32;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct StormArgs {
    /// Connections that are dropped and reconnect together.
    #[arg(long, default_value_t = 2000)]
    pub connections: usize,
    /// Rooms in all; connection i joins rooms i, i+1, ... (mod --rooms).
    #[arg(long, default_value_t = 20)]
    pub rooms: usize,
    /// Rooms each connection joins (and resumes after every drop).
    #[arg(long, default_value_t = 2)]
    pub rooms_per_connection: usize,
    /// Publishes per second of the one publisher, to the rooms in turn, the whole run.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Payload bytes per message (at least 24).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Storms; each comes after --duration seconds of steady publishing (at most 20).
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds a storm may take until all are back and caught up; then the next begins anyway.
    #[arg(long, default_value_t = 60.0)]
    pub storm_timeout: f64,
    /// Connect attempts per connection and storm; a refused attempt waits a jittered backoff.
    #[arg(long, default_value_t = 20)]
    pub attempts: u32,
    /// Connections opened at once for the first connect (a storm reconnects all at once).
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Seconds to wait after the last publish for deliveries still on their way.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
}

/// What the coordinator and progress line see of one connection, live.
struct Shared {
    /// Distinct messages received, per joined room (in the order of `rooms`).
    received: Vec<AtomicU64>,
    duplicates: AtomicU64,
    /// Offsets skipped over (a message after a hole, counted per missing offset).
    gaps: AtomicU64,
    /// Rejoins the relay answered with `recovered: false`.
    not_recovered: AtomicU64,
    /// Joined in the first connect: only then is it owed every acked message.
    joined_first: AtomicBool,
}

/// One round's tallies; round 0 is the first connect, rounds 1.. the storms.
struct Round {
    /// now_ns() at the drop (0 for round 0: times count from the start of the setup).
    drop_ns: AtomicU64,
    back: AtomicUsize,
    caught_up: AtomicUsize,
    /// Connections that gave up for this round (every attempt failed).
    failed: AtomicUsize,
    attempts: AtomicU64,
    not_recovered: AtomicU64,
    back_hist: SharedLatency,
    caught_hist: SharedLatency,
    connect_hist: SharedLatency,
    errors: Errors,
}

impl Round {
    fn new() -> Round {
        Round {
            drop_ns: AtomicU64::new(0),
            back: AtomicUsize::new(0),
            caught_up: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            attempts: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            back_hist: SharedLatency::default(),
            caught_hist: SharedLatency::default(),
            connect_hist: SharedLatency::default(),
            errors: Errors::default(),
        }
    }

    fn since_drop(&self) -> Duration {
        Duration::from_nanos(now_ns().saturating_sub(self.drop_ns.load(Ordering::Relaxed)))
    }
}

/// What every connection task shares.
struct Ctx {
    relay: RelayView,
    transport: TransportChoice,
    rooms: usize,
    rooms_per_connection: usize,
    attempts: u32,
    rounds: Vec<Round>,
    /// Delivery latency (send to receipt, replays included), in shards.
    latency: Vec<SharedLatency>,
    counters: Counters,
    /// Limits the first connect to --connect-concurrency at once.
    setup: tokio::sync::Semaphore,
    backoff: Reconnect,
}

/// The signal every connection task watches: the round to be in, or `STOP`.
const STOP: usize = usize::MAX;

/// One connection's state across rounds, kept by its task.
struct Resume {
    rooms: Vec<String>,
    /// Last position received per room (what a rejoin resumes from).
    last: Vec<Option<Position>>,
    /// The room's top at the current connection's join, once answered: caught up when `last`
    /// reaches it.
    target: Vec<Option<u64>>,
}

impl Resume {
    fn caught_up(&self) -> bool {
        self.target.iter().zip(&self.last).all(|(t, l)| match t {
            Some(t) => l.map_or(0, |l| l.offset) >= *t,
            None => false,
        })
    }
}

/// A message: counted once, checked against the last offset of its room.
fn account(ctx: &Ctx, index: usize, shared: &Shared, resume: &mut Resume, message: &Message) {
    let Some(slot) = resume.rooms.iter().position(|r| *r == message.room) else { return };
    let position = message.position;
    match resume.last[slot] {
        Some(last) if last.epoch == position.epoch && position.offset <= last.offset => {
            shared.duplicates.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Some(last) if last.epoch == position.epoch && position.offset > last.offset + 1 => {
            shared.gaps.fetch_add(position.offset - last.offset - 1, Ordering::Relaxed);
        }
        _ => {}
    }
    resume.last[slot] = Some(position);
    shared.received[slot].fetch_add(1, Ordering::Relaxed);
    ctx.counters.delivered.fetch_add(1, Ordering::Relaxed);
    if let Some(header) = fanout::header(&message.data.0) {
        ctx.latency[index % ctx.latency.len()].record(Duration::from_nanos(now_ns().saturating_sub(header.sent_ns)));
    }
}

/// Connects, retrying refusals with the resilient client's jittered backoff; `None` when every
/// attempt failed or the round moved on meanwhile.
async fn connect(
    ctx: &Ctx,
    round: &Round,
    target: &Target,
    options: &ClientOptions,
    signal: &mut watch::Receiver<usize>,
) -> Option<Client> {
    for attempt in 0..ctx.attempts {
        round.attempts.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match Client::connect(target.clone(), options.clone()).await {
            Ok(client) => {
                round.connect_hist.record(started.elapsed());
                return Some(client);
            }
            Err(err) => round.errors.client(&err),
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.backoff.delay(attempt).max(Duration::from_millis(10))) => {}
            _ = signal.changed() => return None,
        }
    }
    None
}

/// Joins a room from `since`, retrying what the relay refuses for now (bounded).
async fn join(ctx: &Ctx, client: &Client, room: &str, since: Option<Position>) -> Result<Joined, ClientError> {
    let mut attempt = 0;
    loop {
        match client.join_since(room, since).await {
            Err(ClientError::Rejected { code, .. }) if code.is_retryable() && attempt + 1 < ctx.attempts => {
                tokio::time::sleep(ctx.backoff.delay(attempt).max(Duration::from_millis(10))).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// One connection through every round: connect, rejoin from the last positions, read until the
/// next drop; at `STOP`, end.
async fn connection(ctx: Arc<Ctx>, index: usize, shared: Arc<Shared>, mut signal: watch::Receiver<usize>) -> Resume {
    let rooms: Vec<String> =
        (0..ctx.rooms_per_connection).map(|k| format!("load:r{}", (index + k) % ctx.rooms)).collect();
    let n = rooms.len();
    let mut resume = Resume { rooms, last: vec![None; n], target: vec![None; n] };
    let setup = async {
        let target = ctx.relay.relay_target(ctx.transport, index)?;
        anyhow::Ok((target, ctx.relay.options(&format!("storm-{index}"), ctx.transport, index)?))
    };
    let (target, options) = match setup.await {
        Ok(setup) => setup,
        Err(err) => {
            crate::conns::count_error(&ctx.rounds[0].errors, &err);
            ctx.rounds[0].failed.fetch_add(1, Ordering::Relaxed);
            return resume;
        }
    };
    let mut round_no = *signal.borrow_and_update();
    // Per round, back and caught-up are told once, even if the connection is lost and made
    // again within the round: (round, back told, caught up told).
    let mut told = (usize::MAX, false, false);
    // Connections made in this round (a lost one is made again, at most --attempts times).
    let mut sessions = 0;
    'rounds: loop {
        if round_no == STOP {
            return resume;
        }
        let round = &ctx.rounds[round_no];
        if told.0 != round_no {
            told = (round_no, false, false);
            sessions = 0;
            resume.target = vec![None; n];
        }
        sessions += 1;
        let mut permit = if round_no == 0 { ctx.setup.acquire().await.ok() } else { None };
        let connected =
            if sessions <= ctx.attempts { connect(&ctx, round, &target, &options, &mut signal).await } else { None };
        let Some(mut client) = connected else {
            drop(permit);
            if !told.1 {
                round.failed.fetch_add(1, Ordering::Relaxed);
                told = (round_no, true, true);
            }
            // Wait for the next round (or stop), then try again.
            match signal.has_changed() {
                Ok(true) => {}
                Ok(false) if signal.changed().await.is_ok() => {}
                _ => return resume,
            }
            round_no = *signal.borrow_and_update();
            continue 'rounds;
        };
        let mut events = client.take_events();
        let client = Arc::new(client);
        // Each room from the last position received (none on the first join).
        let plan: Vec<(String, Option<Position>)> = resume.rooms.iter().cloned().zip(resume.last.clone()).collect();
        let joins = futures_util::future::join_all(plan.into_iter().map(|(room, since)| {
            let (client, ctx) = (client.clone(), ctx.clone());
            async move { (since, join(&ctx, &client, &room, since).await) }
        }));
        tokio::pin!(joins);
        let mut joining = true;
        loop {
            let mut lost = false;
            tokio::select! {
                changed = signal.changed() => {
                    round_no = if changed.is_ok() { *signal.borrow_and_update() } else { STOP };
                    // A storm (or the end of the run): gone at once, no leave, no goodbye.
                    client.abort();
                    continue 'rounds;
                }
                results = &mut joins, if joining => {
                    joining = false;
                    for (slot, (since, result)) in results.into_iter().enumerate() {
                        match result {
                            Ok(joined) => {
                                if since.is_some() && !joined.recovered {
                                    shared.not_recovered.fetch_add(1, Ordering::Relaxed);
                                    round.not_recovered.fetch_add(1, Ordering::Relaxed);
                                }
                                resume.target[slot] = Some(joined.position.offset);
                                if resume.last[slot].is_none() {
                                    // First join: the room's history before it is not owed.
                                    resume.last[slot] = Some(joined.position);
                                }
                            }
                            Err(err) => {
                                round.errors.client(&err);
                                lost = true;
                            }
                        }
                    }
                    if !lost {
                        drop(permit.take());
                        if !told.1 {
                            told.1 = true;
                            if round_no == 0 {
                                shared.joined_first.store(true, Ordering::Relaxed);
                            }
                            round.back.fetch_add(1, Ordering::Relaxed);
                            round.back_hist.record(round.since_drop());
                        }
                    }
                }
                event = events.recv() => match event {
                    Some(Event::Message(message)) => account(&ctx, index, &shared, &mut resume, &message),
                    Some(Event::Error { code, .. }) => round.errors.add(code.slug()),
                    Some(Event::GoAway { code, .. }) => round.errors.add(format!("going_away:{}", code.slug())),
                    Some(Event::Closed { code, .. }) => {
                        round.errors.add(code.map_or("closed".to_string(), |c: ErrorCode| format!("closed:{}", c.slug())));
                        lost = true;
                    }
                    Some(Event::Call(_) | Event::CallUpdate(_) | Event::Left { .. } | Event::Topic(_) | Event::Session(_) | Event::Receipts(_) | Event::Notifications(_) | Event::PathBack) => {}
                    None => lost = true,
                },
            }
            if told.1 && !told.2 && !joining && resume.caught_up() {
                told.2 = true;
                round.caught_up.fetch_add(1, Ordering::Relaxed);
                round.caught_hist.record(round.since_drop());
            }
            if lost {
                // The relay closed it or a join failed: connect again within this round, as a
                // resilient client would.
                client.abort();
                continue 'rounds;
            }
        }
    }
}

/// The publisher: fanout's open-loop publisher in one-second windows (each its own step, so
/// message ids stay unique) until told to stop; returns the acks per room and what it counted.
/// It is not part of the storm: if the relay or a starved machine closes its connection, it
/// connects again (at most `MAX_PUBLISHER_CONNECTS` times) and says so in the report.
async fn publisher(
    ctx: Arc<Ctx>,
    args: StormArgs,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) -> (fanout::Published, u64) {
    let mut total = fanout::Published {
        sent: 0,
        acked_per_room: vec![0; args.rooms],
        behind: 0,
        ack: stats::histogram(),
        errors: BTreeMap::new(),
    };
    let quota = args.rate.round().max(1.0) as u64;
    let index = args.connections;
    let connect = || async {
        let target = ctx.relay.relay_target(ctx.transport, index)?;
        let options = ctx.relay.options("storm-publisher", ctx.transport, index)?;
        anyhow::Ok(Arc::new(Client::connect(target, options).await?))
    };
    let mut client = None;
    let mut connects = 0u64;
    // Bounded: the run's own bounds end it long before this.
    for window in 0..100_000usize {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let current = match client.take() {
            Some(client) => client,
            None if connects < MAX_PUBLISHER_CONNECTS => {
                connects += 1;
                match connect().await {
                    Ok(client) => client,
                    Err(err) => {
                        crate::conns::count_error(&ctx.rounds[0].errors, &err);
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            None => break,
        };
        let done = fanout::publish(
            current.clone(),
            0,
            args.rooms,
            window,
            quota,
            Duration::from_secs(1),
            args.payload,
            CodecArg::Postcard,
            4096,
            counters.clone(),
            0.0,
        )
        .await;
        let lost = done.errors.keys().any(|k| k.starts_with("closed"));
        if lost {
            current.abort();
        } else {
            client = Some(current);
        }
        total.sent += done.sent;
        total.behind += done.behind;
        for (sum, n) in total.acked_per_room.iter_mut().zip(&done.acked_per_room) {
            *sum += n;
        }
        let _ = total.ack.add(&done.ack);
        stats::merge_errors(&mut total.errors, &done.errors);
    }
    (total, connects)
}

/// How often the publisher may connect in one run.
const MAX_PUBLISHER_CONNECTS: u64 = 20;

#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    /// 0: the first connect (times from the start of the setup); 1..: the storms.
    pub round: usize,
    pub connections: usize,
    pub reconnected: usize,
    pub caught_up: usize,
    /// Connections that gave up this round (every connect attempt failed).
    pub failed: usize,
    /// Whether the round ended by --storm-timeout rather than with everyone caught up.
    pub timed_out: bool,
    /// From the drop until the last connection was back (connected, every room rejoined).
    pub all_back_s: Option<f64>,
    /// From the drop until the last connection had every message up to its rejoin.
    pub all_caught_up_s: Option<f64>,
    /// Per connection: from the drop until it was back.
    pub back: Latency,
    /// Per connection: from the drop until it had caught up.
    pub caught: Latency,
    /// The successful connects' handshakes (connect to welcome) during the round.
    pub connect: Latency,
    pub connect_attempts: u64,
    /// Rejoins answered `recovered: false` (must be none: history covers a short storm).
    pub not_recovered: u64,
    /// Refusals and errors by code (a refused connect is retried).
    pub errors: BTreeMap<String, u64>,
    /// Relay CPU from the drop until the round ended.
    pub relay_cpu_seconds: Option<f64>,
    /// The generator's own CPU over the same time (it shares the machine with the relay).
    pub generator_cpu_seconds: Option<f64>,
    pub relay_rss_kib_peak: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StormReport {
    pub workload: &'static str,
    pub transport: TransportChoice,
    pub args: StormArgs,
    /// Connections that joined in the first connect.
    pub connected: usize,
    pub rounds: Vec<RoundReport>,
    pub published: u64,
    pub acked: u64,
    pub behind: u64,
    pub publish_errors: BTreeMap<String, u64>,
    /// Connections the publisher made (more than one: its connection was closed under it).
    pub publisher_connects: u64,
    pub ack_latency: Latency,
    /// Deliveries owed at the end: for every connection, the acked publishes of its rooms.
    pub expected: u64,
    /// Distinct deliveries held at the end.
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub gaps: u64,
    pub extra: u64,
    pub not_recovered: u64,
    /// Connections missing at least one owed message at the end.
    pub incomplete_connections: u64,
    /// Every connection holds every acked message of its rooms exactly once, no gap, every
    /// rejoin recovered.
    pub exact: bool,
    /// Send to receipt over the whole run, replays after the drops included.
    pub latency: Latency,
    pub drain_seconds: f64,
    pub relay_rss_kib_before: Option<u64>,
    pub relay_rss_kib_connected: Option<u64>,
    pub relay_rss_kib_end: Option<u64>,
}

fn round_report(round_no: usize, round: &Round, connections: usize) -> RoundReport {
    let back = round.back_hist.latency();
    let caught = round.caught_hist.latency();
    let reconnected = round.back.load(Ordering::Relaxed);
    let caught_up = round.caught_up.load(Ordering::Relaxed);
    RoundReport {
        round: round_no,
        connections,
        reconnected,
        caught_up,
        failed: round.failed.load(Ordering::Relaxed),
        timed_out: false,
        all_back_s: (reconnected == connections && connections > 0).then_some(back.max_ms / 1000.0),
        all_caught_up_s: (caught_up == connections && connections > 0).then_some(caught.max_ms / 1000.0),
        back,
        caught,
        connect: round.connect_hist.latency(),
        connect_attempts: round.attempts.load(Ordering::Relaxed),
        not_recovered: round.not_recovered.load(Ordering::Relaxed),
        errors: round.errors.snapshot(),
        relay_cpu_seconds: None,
        generator_cpu_seconds: None,
        relay_rss_kib_peak: None,
    }
}

/// Waits (bounded) until every live connection of the round is back and caught up or gave up;
/// prints a progress line a second; returns whether it timed out and the peak RSS seen.
async fn wait_round(
    ctx: &Ctx,
    round_no: usize,
    live: usize,
    limit: Duration,
    show_progress: bool,
    started: Instant,
) -> (bool, Option<u64>) {
    let round = &ctx.rounds[round_no];
    let from = Instant::now();
    let mut peak = ctx.relay.rss();
    let mut last_print = Instant::now();
    let mut polls = 0u64;
    loop {
        let failed = round.failed.load(Ordering::Relaxed);
        let (back, caught) = (round.back.load(Ordering::Relaxed), round.caught_up.load(Ordering::Relaxed));
        if caught + failed >= live {
            return (false, peak);
        }
        if from.elapsed() >= limit {
            return (true, peak);
        }
        polls += 1;
        if polls.is_multiple_of(5) {
            peak = peak.max(ctx.relay.rss());
        }
        if show_progress && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "[{:>4}s] round {round_no}: back {back}/{live}, caught up {caught}/{live}, gave up {failed}, errors {}",
                started.elapsed().as_secs(),
                round.errors.total()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn storm(
    relay: &RelayUnderTest,
    args: &StormArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
) -> anyhow::Result<StormReport> {
    anyhow::ensure!((1..=MAX_CONNECTIONS).contains(&args.connections), "1 to {MAX_CONNECTIONS} connections");
    anyhow::ensure!(args.rooms >= 1, "at least one room");
    anyhow::ensure!(
        (1..=MAX_ROOMS_PER_CONNECTION.min(args.rooms)).contains(&args.rooms_per_connection),
        "1 to min(--rooms, {MAX_ROOMS_PER_CONNECTION}) rooms per connection"
    );
    anyhow::ensure!((1..=MAX_ROUNDS).contains(&args.rounds), "1 to {MAX_ROUNDS} rounds");
    anyhow::ensure!(args.rate > 0.0 && args.rate <= 100_000.0, "--rate from 0 to 100,000");
    anyhow::ensure!(args.payload >= fanout::HEADER, "payload of at least {} bytes", fanout::HEADER);
    anyhow::ensure!(args.attempts >= 1, "at least one attempt");
    let storm_timeout = Duration::from_secs_f64(args.storm_timeout.clamp(1.0, 600.0));
    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        relay: RelayView::of(relay)?,
        transport,
        rooms: args.rooms,
        rooms_per_connection: args.rooms_per_connection,
        attempts: args.attempts,
        rounds: (0..=args.rounds).map(|_| Round::new()).collect(),
        latency: (0..16).map(|_| SharedLatency::default()).collect(),
        counters: Counters::default(),
        setup: tokio::sync::Semaphore::new(args.connect_concurrency.max(1)),
        backoff: Reconnect {
            base_delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(2),
            follow_rooms: false,
        },
    });
    let rss_before = relay.rss_kib();
    ctx.rounds[0].drop_ns.store(now_ns(), Ordering::Relaxed);
    let (signal, watch) = watch::channel(0usize);
    let mut tasks = tokio::task::JoinSet::new();
    let mut shared = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let conn = Arc::new(Shared {
            received: (0..args.rooms_per_connection).map(|_| AtomicU64::new(0)).collect(),
            duplicates: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            not_recovered: AtomicU64::new(0),
            joined_first: AtomicBool::new(false),
        });
        shared.push(conn.clone());
        let (ctx, watch) = (ctx.clone(), watch.clone());
        tasks.spawn(connection(ctx, index, conn, watch));
    }
    drop(watch);
    let setup_limit = Duration::from_secs(120 + args.connections as u64 / 20);
    wait_round(&ctx, 0, args.connections, setup_limit, show_progress, started).await;
    let connected = ctx.rounds[0].back.load(Ordering::Relaxed);
    let rss_connected = relay.rss_kib();
    if show_progress {
        eprintln!("{connected} of {} connections joined; publishing {} /s", args.connections, args.rate);
    }

    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let publishing = tokio::spawn(publisher(ctx.clone(), args.clone(), counters.clone(), stop.clone()));

    let mut rounds = vec![round_report(0, &ctx.rounds[0], args.connections)];
    for round_no in 1..=args.rounds {
        // Steady publishing, then the drop.
        let steady = Instant::now();
        let mut last = (counters.acked.load(Ordering::Relaxed), ctx.counters.delivered.load(Ordering::Relaxed));
        while steady.elapsed() < window {
            tokio::time::sleep(Duration::from_secs(1).min(window.saturating_sub(steady.elapsed()))).await;
            if show_progress {
                let now = (counters.acked.load(Ordering::Relaxed), ctx.counters.delivered.load(Ordering::Relaxed));
                eprintln!(
                    "[{:>4}s] steady before storm {round_no}: acked {}, delivered {}, relay RSS {} KiB",
                    started.elapsed().as_secs(),
                    now.0 - last.0,
                    now.1 - last.1,
                    ctx.relay.rss().map_or("-".into(), |v| v.to_string())
                );
                last = now;
            }
        }
        let round = &ctx.rounds[round_no];
        let live = connected;
        let cpu_before = ctx.relay.cpu();
        let own_before = crate::relay::cpu_of(std::process::id());
        round.drop_ns.store(now_ns(), Ordering::Relaxed);
        if show_progress {
            eprintln!("[{:>4}s] storm {round_no}: dropping {live} connections at once", started.elapsed().as_secs());
        }
        let _ = signal.send(round_no);
        let (timed_out, peak) = wait_round(&ctx, round_no, live, storm_timeout, show_progress, started).await;
        let cpu_after = ctx.relay.cpu();
        let own_after = crate::relay::cpu_of(std::process::id());
        let mut report = round_report(round_no, round, live);
        report.generator_cpu_seconds = own_before.zip(own_after).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
        report.timed_out = timed_out;
        report.relay_cpu_seconds = cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
        report.relay_rss_kib_peak = peak;
        if show_progress {
            eprintln!(
                "[{:>4}s] storm {round_no}: all back in {} s, all caught up in {} s",
                started.elapsed().as_secs(),
                stats::fmt_opt(report.all_back_s, 3),
                stats::fmt_opt(report.all_caught_up_s, 3)
            );
        }
        rounds.push(report);
    }

    // Stop publishing, wait for the last acks, then for every connection to hold them.
    stop.store(true, Ordering::Relaxed);
    let (published, publisher_connects) = publishing.await?;
    let drain_started = Instant::now();
    let drain = Duration::from_secs_f64(args.drain.clamp(0.0, 120.0));
    let owed = |index: usize, slot: usize| published.acked_per_room[(index + slot) % args.rooms];
    loop {
        let complete = shared.iter().enumerate().all(|(i, s)| {
            s.received.iter().enumerate().all(|(slot, got)| got.load(Ordering::Relaxed) >= owed(i, slot))
        });
        if complete || drain_started.elapsed() >= drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let _ = signal.send(STOP);
    let _ = tokio::time::timeout(Duration::from_secs(30), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();

    // Only connections that joined in the first connect owe anything.
    let (mut expected, mut delivered, mut lost, mut extra, mut incomplete) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut duplicates, mut gaps, mut not_recovered) = (0u64, 0u64, 0u64);
    for (i, s) in shared.iter().enumerate() {
        duplicates += s.duplicates.load(Ordering::Relaxed);
        gaps += s.gaps.load(Ordering::Relaxed);
        not_recovered += s.not_recovered.load(Ordering::Relaxed);
        if !s.joined_first.load(Ordering::Relaxed) {
            continue;
        }
        let mut short = false;
        for (slot, got) in s.received.iter().enumerate() {
            let (got, owe) = (got.load(Ordering::Relaxed), owed(i, slot));
            expected += owe;
            delivered += got;
            if got < owe {
                lost += owe - got;
                short = true;
            } else {
                extra += got - owe;
            }
        }
        incomplete += u64::from(short);
    }
    let mut latency = stats::histogram();
    for shard in &ctx.latency {
        shard.add_to(&mut latency);
    }
    let acked: u64 = published.acked_per_room.iter().sum();
    let exact = lost == 0
        && duplicates == 0
        && gaps == 0
        && extra == 0
        && not_recovered == 0
        && connected == args.connections
        && rounds.iter().all(|r| !r.timed_out && r.caught_up == r.connections);
    Ok(StormReport {
        workload: "storm",
        transport,
        args: args.clone(),
        connected,
        rounds,
        published: published.sent,
        acked,
        behind: published.behind,
        publish_errors: published.errors,
        publisher_connects,
        ack_latency: Latency::of(&published.ack),
        expected,
        delivered,
        lost,
        duplicates,
        gaps,
        extra,
        not_recovered,
        incomplete_connections: incomplete,
        exact,
        latency: Latency::of(&latency),
        drain_seconds,
        relay_rss_kib_before: rss_before,
        relay_rss_kib_connected: rss_connected,
        relay_rss_kib_end: relay.rss_kib(),
    })
}

pub fn table(r: &StormReport) -> String {
    let a = &r.args;
    let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let mut out = stats::table(
        &format!("storm over {:?}", r.transport),
        &[
            (
                "shape".into(),
                format!(
                    "{} connections, {} rooms each of {}, {} publishes/s, {} storms",
                    a.connections, a.rooms_per_connection, a.rooms, a.rate, a.rounds
                ),
            ),
            ("connected".into(), r.connected.to_string()),
            (
                "published / acked / behind".into(),
                format!(
                    "{} / {} / {}  errors {:?}, publisher connections {}",
                    r.published, r.acked, r.behind, r.publish_errors, r.publisher_connects
                ),
            ),
            (
                "owed / held / lost / extra".into(),
                format!("{} / {} / {} / {}", r.expected, r.delivered, r.lost, r.extra),
            ),
            (
                "duplicates / gaps / not recovered".into(),
                format!("{} / {} / {}", r.duplicates, r.gaps, r.not_recovered),
            ),
            ("incomplete connections".into(), r.incomplete_connections.to_string()),
            ("exactly once, no gap".into(), if r.exact { "yes" } else { "NO" }.into()),
            ("delivery (replays included)".into(), r.latency.line()),
            (
                "relay RSS".into(),
                format!(
                    "{} KiB before, {} KiB connected, {} KiB at the end",
                    kib(r.relay_rss_kib_before),
                    kib(r.relay_rss_kib_connected),
                    kib(r.relay_rss_kib_end)
                ),
            ),
        ],
    );
    out.push_str(&format!(
        "\n{:>5} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>9}  {}\n",
        "round",
        "back",
        "caught",
        "gave up",
        "all back",
        "caught s",
        "conn p50",
        "conn p99",
        "conn max",
        "attempts",
        "cpu s",
        "gen s",
        "peak MiB",
        "errors"
    ));
    for s in &r.rounds {
        out.push_str(&format!(
            "{:>5} {:>6} {:>6} {:>6} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>7} {:>7} {:>9}  {:?}{}\n",
            s.round,
            s.reconnected,
            s.caught_up,
            s.failed,
            stats::fmt_opt(s.all_back_s, 3),
            stats::fmt_opt(s.all_caught_up_s, 3),
            s.connect.p50_ms,
            s.connect.p99_ms,
            s.connect.max_ms,
            s.connect_attempts,
            stats::fmt_opt(s.relay_cpu_seconds, 2),
            stats::fmt_opt(s.generator_cpu_seconds, 2),
            stats::fmt_opt(s.relay_rss_kib_peak.map(|k| k as f64 / 1024.0), 1),
            s.errors,
            if s.timed_out { "  (timed out)" } else { "" },
        ));
    }
    out.push_str("(round 0 is the first connect, timed from its start; times in s, connect in ms; cpu s: relay,\n gen s: this generator, from the drop until all caught up)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_needs_every_room_at_its_target() {
        let p = |offset| Some(Position { epoch: 1, offset });
        let mut r = Resume { rooms: vec!["a".into(), "b".into()], last: vec![p(5), p(3)], target: vec![Some(5), None] };
        assert!(!r.caught_up(), "room b not joined yet");
        r.target[1] = Some(4);
        assert!(!r.caught_up(), "room b short of its target");
        r.last[1] = p(4);
        assert!(r.caught_up());
        r.target[0] = Some(0);
        r.last[0] = None;
        assert!(r.caught_up(), "an empty room at its join is caught up");
    }
}
