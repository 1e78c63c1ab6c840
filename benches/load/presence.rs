//! Presence and typing storm: U users across R rooms (user `i` in room `i % R`, one connection
//! each), every user sending typing start, typing stop and two status changes in turn at
//! `--rate` updates per second, as latest-wins frames (QUIC datagrams on raw QUIC and
//! WebTransport, the socket on WebSocket). Every other member of the room observes them.
//!
//! Nothing is added to the protocol to measure this. A status change carries the user and a
//! per-user counter in its custom status text (`p12#57`), and the generator remembers when it
//! sent each counter; an observer times the change when its client's view of the room first
//! shows that counter. Typing has no text: an observer times a start when the user appears in
//! the room's typing names and a stop when they leave them, against the user's latest start or
//! stop sent. The relay names the first three typists only (the rest are a count), so each
//! room's members start their cycles evenly spread over the cycle: with typing a quarter of
//! each cycle, at most three of ten members type at once and every typist is named.
//!
//! A change can be lost (a datagram) or superseded (a newer one reached the view first: the
//! WebSocket outbox keeps only the newest per key); both are reported as the share observed,
//! not as failures. What must hold everywhere is convergence: after the load and the drain,
//! every member's view shows every other member's last status text and nobody typing.
//!
//! The relay's default presence limit is 20 updates per second per device; --rate is capped
//! there.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgerelay::client::presence::RoomPresence;
use edgerelay::client::{Client, Event};
use edgerelay::proto::{ClientFrame, Status};
use futures_util::stream::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::conns::MAX_CONNECTIONS;
use crate::fanout::{self, CodecArg};
use crate::relay::{RelayUnderTest, TransportChoice};
use crate::stats::{self, Errors, Latency, SharedLatency, now_ns};

pub const MAX_RATE: f64 = 20.0;
/// Send times kept per user and kind; an observation older than this many changes is counted
/// but not timed.
const RING: usize = 64;
/// Actions of a user's cycle: typing start, typing stop, status, status.
const CYCLE: u64 = 4;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct PresenceArgs {
    /// Users, one connection each.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Rooms; user i is a member of room i % rooms.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Updates per second per user (typing start, typing stop, status, status in turn); at
    /// most 20, the relay's default presence limit per device.
    #[arg(long, default_value_t = 1.0)]
    pub rate: f64,
    /// Seconds to wait after the last update for every view to converge.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Connections opened at once during setup.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

/// What one user sent: counters, and the send times of the latest changes by counter.
struct Sent {
    status: AtomicU64,
    status_ns: [AtomicU64; RING],
    starts: AtomicU64,
    start_ns: [AtomicU64; RING],
    stops: AtomicU64,
    stop_ns: [AtomicU64; RING],
}

impl Sent {
    fn new() -> Sent {
        Sent {
            status: AtomicU64::new(0),
            status_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            starts: AtomicU64::new(0),
            start_ns: std::array::from_fn(|_| AtomicU64::new(0)),
            stops: AtomicU64::new(0),
            stop_ns: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    /// Records the send time of change `n` (from 1), then publishes the counter.
    fn mark(counter: &AtomicU64, times: &[AtomicU64; RING], n: u64) {
        times[n as usize % RING].store(now_ns(), Ordering::Relaxed);
        counter.store(n, Ordering::Release);
    }

    /// When change `n` was sent, if it is still in the ring.
    fn time(counter: &AtomicU64, times: &[AtomicU64; RING], n: u64) -> Option<u64> {
        let latest = counter.load(Ordering::Acquire);
        (n >= 1 && n <= latest && latest - n < RING as u64).then(|| times[n as usize % RING].load(Ordering::Relaxed))
    }
}

/// One kind of change's tallies, shared by the observers.
#[derive(Default)]
struct Kind {
    observed: AtomicU64,
    /// Changes an observer never saw because a newer one of the same user reached its view first.
    superseded: AtomicU64,
    hist: SharedLatency,
}

impl Kind {
    fn observe(&self, latency_ns: Option<u64>, skipped: u64) {
        self.observed.fetch_add(1, Ordering::Relaxed);
        self.superseded.fetch_add(skipped, Ordering::Relaxed);
        if let Some(ns) = latency_ns {
            self.hist.record(Duration::from_nanos(ns));
        }
    }

    fn latency(&self) -> Latency {
        self.hist.latency()
    }
}

struct Ctx {
    sent: Vec<Sent>,
    /// User id (as the relay names them) to index.
    index: HashMap<String, usize>,
    status: Kind,
    start: Kind,
    stop: Kind,
    updates: AtomicU64,
    send_errors: Errors,
    errors: Errors,
}

/// What one observer has seen of each peer: the last status counter, typing start and stop.
#[derive(Default)]
struct Seen {
    status: HashMap<usize, u64>,
    start: HashMap<usize, u64>,
    stop: HashMap<usize, u64>,
    typing: Vec<usize>,
}

/// `p12#57` → (12, 57).
fn parse_custom(custom: &str) -> Option<(usize, u64)> {
    let (user, n) = custom.strip_prefix('p')?.split_once('#')?;
    Some((user.parse().ok()?, n.parse().ok()?))
}

/// Compares a view with what the observer saw before and records what changed.
fn scan(ctx: &Ctx, me: usize, seen: &mut Seen, view: &RoomPresence, now_ms: u64) {
    let now = now_ns();
    let since = |sent: Option<u64>| sent.map(|t| now.saturating_sub(t));
    for entry in view.entries() {
        let Some((peer, n)) = entry.custom.as_deref().and_then(parse_custom) else { continue };
        let Some(sent) = ctx.sent.get(peer).filter(|_| peer != me) else { continue };
        let held = seen.status.entry(peer).or_insert(0);
        if n > *held {
            ctx.status.observe(since(Sent::time(&sent.status, &sent.status_ns, n)), n - *held - 1);
            *held = n;
        }
    }
    let typing: Vec<usize> =
        view.typing(now_ms).0.iter().filter_map(|u| ctx.index.get(u).copied()).filter(|u| *u != me).collect();
    for &peer in typing.iter().filter(|p| !seen.typing.contains(p)) {
        let sent = &ctx.sent[peer];
        let k = sent.starts.load(Ordering::Acquire);
        let held = seen.start.entry(peer).or_insert(0);
        if k > *held {
            ctx.start.observe(since(Sent::time(&sent.starts, &sent.start_ns, k)), k - *held - 1);
            *held = k;
        }
    }
    for &peer in seen.typing.iter().filter(|p| !typing.contains(p)) {
        let sent = &ctx.sent[peer];
        let k = sent.stops.load(Ordering::Acquire);
        let held = seen.stop.entry(peer).or_insert(0);
        // Leaving the names without a stop sent is the view's TTL, not a stop.
        if k > *held && k >= seen.start.get(&peer).copied().unwrap_or(0) {
            ctx.stop.observe(since(Sent::time(&sent.stops, &sent.stop_ns, k)), k - *held - 1);
            *held = k;
        }
    }
    seen.typing = typing;
}

/// Watches the room's view until cancelled, and drains the client's events (counting errors).
async fn observe(
    ctx: Arc<Ctx>,
    me: usize,
    room: String,
    client: Arc<Client>,
    mut events: tokio::sync::mpsc::Receiver<Event>,
    cancel: CancellationToken,
) {
    let seen = std::sync::Mutex::new(Seen::default());
    loop {
        let watch = client.wait_presence(&room, Duration::from_millis(250), |view, now_ms| {
            scan(&ctx, me, &mut seen.lock().unwrap_or_else(|e| e.into_inner()), view, now_ms);
            false
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = watch => {}
            event = events.recv() => match event {
                Some(Event::Error { code, .. }) => ctx.errors.add(code.slug()),
                Some(Event::GoAway { code, .. }) => ctx.errors.add(format!("going_away:{}", code.slug())),
                Some(Event::Closed { code, .. }) => {
                    ctx.errors.add(code.map_or("closed".to_string(), |c| format!("closed:{}", c.slug())));
                    return;
                }
                Some(Event::Message(_) | Event::Call(_) | Event::CallUpdate(_) | Event::Left { .. } | Event::Topic(_) | Event::Session(_) | Event::Receipts(_) | Event::Notifications(_) | Event::PathBack) => {}
                None => return,
            },
        }
    }
}

/// One user's updates: `cycles` cycles at `rate`, starting `offset` into the first.
async fn act(ctx: Arc<Ctx>, me: usize, room: String, client: Arc<Client>, cycles: u64, rate: f64, offset: Duration) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sent = &ctx.sent[me];
    for step in 0..cycles * CYCLE {
        tick.tick().await;
        let result = match step % CYCLE {
            0 => {
                Sent::mark(&sent.starts, &sent.start_ns, step / CYCLE + 1);
                client.typing(&room, true).await
            }
            1 => {
                Sent::mark(&sent.stops, &sent.stop_ns, step / CYCLE + 1);
                client.typing(&room, false).await
            }
            _ => {
                let n = sent.status.load(Ordering::Relaxed) + 1;
                Sent::mark(&sent.status, &sent.status_ns, n);
                let status = if n.is_multiple_of(2) { Status::Online } else { Status::Busy };
                let frame = ClientFrame::SetStatus { status, custom: Some(format!("p{me}#{n}")) };
                client.send_datagram(&frame).await
            }
        };
        match result {
            Ok(()) => {
                ctx.updates.fetch_add(1, Ordering::Relaxed);
            }
            Err(err) => ctx.send_errors.client(&err),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct KindReport {
    /// Changes sent (each owed to every other member of the room).
    pub sent: u64,
    /// Observations owed: sent × (members - 1).
    pub expected: u64,
    pub observed: u64,
    pub superseded: u64,
    /// observed / expected.
    pub share: f64,
    /// Send to the observer's view showing it.
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct PresenceReport {
    pub workload: &'static str,
    pub transport: TransportChoice,
    pub args: PresenceArgs,
    pub connected: usize,
    pub connect_latency: Latency,
    pub seconds: f64,
    /// Updates sent (typing starts and stops, status changes).
    pub updates: u64,
    pub updates_per_s: f64,
    pub status: KindReport,
    pub typing_start: KindReport,
    pub typing_stop: KindReport,
    /// Ordered pairs (observer, other member) of a room.
    pub pairs: u64,
    /// Pairs whose view, after the drain, shows the other member's last status text.
    pub final_status_observed: u64,
    /// Observers whose view, after the drain, shows nobody typing.
    pub final_typing_clear: u64,
    pub drain_seconds: f64,
    pub relay_cpu_seconds: Option<f64>,
    /// The generator's own CPU over the same time (it shares the machine with the relay).
    pub generator_cpu_seconds: Option<f64>,
    /// Relay CPU seconds per 1,000 updates received (each fanned out to the room).
    pub relay_cpu_s_per_1000: Option<f64>,
    pub relay_rss_kib_before: Option<u64>,
    pub relay_rss_kib_connected: Option<u64>,
    pub relay_rss_kib_end: Option<u64>,
    pub send_errors: BTreeMap<String, u64>,
    pub errors: BTreeMap<String, u64>,
}

fn kind_report(kind: &Kind, sent: u64, expected: u64) -> KindReport {
    let observed = kind.observed.load(Ordering::Relaxed);
    KindReport {
        sent,
        expected,
        observed,
        superseded: kind.superseded.load(Ordering::Relaxed),
        share: if expected == 0 { 0.0 } else { observed as f64 / expected as f64 },
        latency: kind.latency(),
    }
}

pub async fn presence(
    relay: &RelayUnderTest,
    args: &PresenceArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
) -> anyhow::Result<PresenceReport> {
    anyhow::ensure!((2..=MAX_CONNECTIONS).contains(&args.users), "2 to {MAX_CONNECTIONS} users");
    anyhow::ensure!(args.rooms >= 1 && args.users / args.rooms >= 2, "at least two users per room");
    anyhow::ensure!(args.rate > 0.0 && args.rate <= MAX_RATE, "--rate from 0 to {MAX_RATE} per user");
    let errors = Errors::default();
    let mut connect = stats::histogram();
    let rss_before = relay.rss_kib();
    let opens = futures_util::stream::iter(0..args.users)
        .map(|i| async move {
            let (client, took) = fanout::connect_one(relay, transport, i, format!("p{i}"), CodecArg::Postcard).await?;
            client.join(&format!("load:p{}", i % args.rooms)).await?;
            anyhow::Ok((i, client, took))
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    tokio::pin!(opens);
    let mut clients: Vec<Option<Client>> = (0..args.users).map(|_| None).collect();
    while let Some(opened) = opens.next().await {
        match opened {
            Ok((i, client, took)) => {
                stats::record(&mut connect, took);
                clients[i] = Some(client);
            }
            Err(err) => crate::conns::count_error(&errors, &err),
        }
    }
    let connected = clients.iter().flatten().count();
    anyhow::ensure!(
        connected == args.users,
        "{} of {} users failed to connect: {:?}",
        args.users - connected,
        args.users,
        errors.snapshot()
    );
    let rss_connected = relay.rss_kib();
    let members = |room: usize| (args.users - room).div_ceil(args.rooms) as u64;
    let ctx = Arc::new(Ctx {
        sent: (0..args.users).map(|_| Sent::new()).collect(),
        index: clients.iter().enumerate().filter_map(|(i, c)| Some((c.as_ref()?.welcome().user.clone(), i))).collect(),
        status: Kind::default(),
        start: Kind::default(),
        stop: Kind::default(),
        updates: AtomicU64::new(0),
        send_errors: Errors::default(),
        errors,
    });
    if show_progress {
        eprintln!("{connected} users in {} rooms joined; {} updates/s each", args.rooms, args.rate);
    }

    let cancel = CancellationToken::new();
    let observers = TaskTracker::new();
    let mut actors = tokio::task::JoinSet::new();
    let cycles = ((window.as_secs_f64() * args.rate) / CYCLE as f64).ceil().max(1.0) as u64;
    let cycle = Duration::from_secs_f64(CYCLE as f64 / args.rate);
    let mut held = Vec::with_capacity(args.users);
    for (i, client) in clients.into_iter().enumerate() {
        let Some(mut client) = client else { continue };
        let events = client.take_events();
        let client = Arc::new(client);
        let (room_no, rank) = (i % args.rooms, i / args.rooms);
        let room = format!("load:p{room_no}");
        observers.spawn(observe(ctx.clone(), i, room.clone(), client.clone(), events, cancel.clone()));
        // Evenly spread over the cycle within the room, so few members type at once.
        let offset = cycle.mul_f64(rank as f64 / members(room_no) as f64);
        actors.spawn(act(ctx.clone(), i, room.clone(), client.clone(), cycles, args.rate, offset));
        held.push((i, room, client));
    }
    let cpu_before = relay.cpu();
    let own_before = crate::relay::cpu_of(std::process::id());
    let started = Instant::now();
    let progress = show_progress.then(|| {
        let (ctx, cancel, pid) = (ctx.clone(), cancel.clone(), relay.pid);
        tokio::spawn(async move {
            let cpu = |pid: Option<u32>| crate::relay::cpu_of(pid?).map(|d| d.as_millis() as u64 / 10);
            let counts = |ctx: &Ctx| {
                let seen = |k: &Kind| k.observed.load(Ordering::Relaxed);
                (ctx.updates.load(Ordering::Relaxed), seen(&ctx.status), seen(&ctx.start) + seen(&ctx.stop))
            };
            let mut last = (counts(&ctx), cpu(pid));
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let now = (counts(&ctx), cpu(pid));
                let relay_cpu = match (last.1, now.1) {
                    (Some(a), Some(b)) => format!("{}%", b.saturating_sub(a)),
                    _ => "-".into(),
                };
                eprintln!(
                    "[{:>4}s] updates {:>6}/s  status seen {:>7}/s  typing seen {:>7}/s  errors {}  relay cpu {relay_cpu}",
                    started.elapsed().as_secs(),
                    now.0.0 - last.0.0,
                    now.0.1 - last.0.1,
                    now.0.2 - last.0.2,
                    ctx.errors.total() + ctx.send_errors.total(),
                );
                last = now;
            }
        })
    });
    // Bounded: the cycles end by themselves; this only guards a stuck send.
    let limit = window + cycle * 2 + Duration::from_secs(30);
    let _ = tokio::time::timeout(limit, async { while actors.join_next().await.is_some() {} }).await;
    actors.abort_all();
    let seconds = started.elapsed().as_secs_f64();

    // Drain: until every member's view shows every other member's last status and nobody typing.
    let last_status: Vec<u64> = ctx.sent.iter().map(|s| s.status.load(Ordering::Relaxed)).collect();
    let converged = |(me, room, client): &(usize, String, Arc<Client>)| {
        let view = client.presence(room);
        let status = (0..args.users)
            .filter(|p| p % args.rooms == me % args.rooms && p != me)
            .filter(|p| view.iter().any(|e| e.custom.as_deref().and_then(parse_custom) == Some((*p, last_status[*p]))))
            .count() as u64;
        (status, client.typing_text(room).is_empty())
    };
    let pairs: u64 = (0..args.rooms).map(|r| members(r) * (members(r) - 1)).sum();
    let drain = Duration::from_secs_f64(args.drain.clamp(0.0, 120.0));
    let drain_started = Instant::now();
    let (final_status, final_typing) = loop {
        let (mut status, mut typing) = (0u64, 0u64);
        for h in &held {
            let (s, t) = converged(h);
            status += s;
            typing += u64::from(t);
        }
        if (status == pairs && typing == held.len() as u64) || drain_started.elapsed() >= drain {
            break (status, typing);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    // The observers take their last look before they stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cpu = relay.cpu().zip(cpu_before).map(|(b, a)| b.saturating_sub(a).as_secs_f64());
    let own = crate::relay::cpu_of(std::process::id()).zip(own_before).map(|(b, a)| b.saturating_sub(a).as_secs_f64());
    cancel.cancel();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    observers.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), observers.wait()).await;
    let close = futures_util::stream::iter(held).for_each_concurrent(256, |(_, _, client)| async move {
        match Arc::try_unwrap(client) {
            Ok(client) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
            }
            Err(client) => client.abort(),
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(30), close).await;

    // Each change is owed to the other members of its room.
    let kind = |k: &Kind, f: fn(&Sent) -> &AtomicU64| {
        let count = |i: usize| f(&ctx.sent[i]).load(Ordering::Relaxed);
        let sent = (0..args.users).map(count).sum();
        let owed = (0..args.users).map(|i| count(i) * (members(i % args.rooms) - 1)).sum();
        kind_report(k, sent, owed)
    };
    let updates = ctx.updates.load(Ordering::Relaxed);
    Ok(PresenceReport {
        workload: "presence",
        transport,
        args: args.clone(),
        connected,
        connect_latency: Latency::of(&connect),
        seconds,
        updates,
        updates_per_s: updates as f64 / seconds,
        status: kind(&ctx.status, |s| &s.status),
        typing_start: kind(&ctx.start, |s| &s.starts),
        typing_stop: kind(&ctx.stop, |s| &s.stops),
        pairs,
        final_status_observed: final_status,
        final_typing_clear: final_typing,
        drain_seconds,
        relay_cpu_seconds: cpu,
        generator_cpu_seconds: own,
        relay_cpu_s_per_1000: cpu.filter(|_| updates > 0).map(|c| c * 1000.0 / updates as f64),
        relay_rss_kib_before: rss_before,
        relay_rss_kib_connected: rss_connected,
        relay_rss_kib_end: relay.rss_kib(),
        send_errors: ctx.send_errors.snapshot(),
        errors: ctx.errors.snapshot(),
    })
}

pub fn table(r: &PresenceReport) -> String {
    let a = &r.args;
    let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let mut out = stats::table(
        &format!("presence over {:?}", r.transport),
        &[
            (
                "shape".into(),
                format!("{} users in {} rooms, {} updates/s each for {:.1} s", a.users, a.rooms, a.rate, r.seconds),
            ),
            ("connected".into(), r.connected.to_string()),
            ("connect".into(), r.connect_latency.line()),
            ("updates sent".into(), format!("{} ({:.0}/s)", r.updates, r.updates_per_s)),
            (
                "converged after the drain".into(),
                format!(
                    "last status seen by {} of {} pairs, typing clear for {} of {} users ({:.2} s)",
                    r.final_status_observed, r.pairs, r.final_typing_clear, r.connected, r.drain_seconds
                ),
            ),
            (
                "relay CPU".into(),
                format!(
                    "{} s, {} CPU-s per 1,000 updates (generator: {} s)",
                    stats::fmt_opt(r.relay_cpu_seconds, 2),
                    stats::fmt_opt(r.relay_cpu_s_per_1000, 4),
                    stats::fmt_opt(r.generator_cpu_seconds, 2)
                ),
            ),
            (
                "relay RSS".into(),
                format!(
                    "{} KiB before, {} KiB connected, {} KiB at the end",
                    kib(r.relay_rss_kib_before),
                    kib(r.relay_rss_kib_connected),
                    kib(r.relay_rss_kib_end)
                ),
            ),
            ("send errors".into(), format!("{:?}", r.send_errors)),
            ("errors".into(), format!("{:?}", r.errors)),
        ],
    );
    out.push_str(&format!(
        "\n{:<13} {:>8} {:>9} {:>9} {:>10} {:>7} {:>8} {:>8} {:>8} {:>8}\n",
        "change", "sent", "owed", "observed", "superseded", "share", "p50 ms", "p95 ms", "p99 ms", "max ms"
    ));
    for (name, k) in [("status", &r.status), ("typing start", &r.typing_start), ("typing stop", &r.typing_stop)] {
        out.push_str(&format!(
            "{:<13} {:>8} {:>9} {:>9} {:>10} {:>7.4} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
            name,
            k.sent,
            k.expected,
            k.observed,
            k.superseded,
            k.share,
            k.latency.p50_ms,
            k.latency.p95_ms,
            k.latency.p99_ms,
            k.latency.max_ms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_names_the_user_and_counter() {
        assert_eq!(parse_custom("p12#57"), Some((12, 57)));
        assert_eq!(parse_custom("p12"), None);
        assert_eq!(parse_custom("lunch"), None);
        assert_eq!(parse_custom("px#1"), None);
    }

    #[test]
    fn send_times_are_kept_for_the_latest_changes_only() {
        let sent = Sent::new();
        for n in 1..=(RING as u64 + 10) {
            Sent::mark(&sent.status, &sent.status_ns, n);
        }
        let latest = RING as u64 + 10;
        assert!(Sent::time(&sent.status, &sent.status_ns, latest).is_some());
        assert!(Sent::time(&sent.status, &sent.status_ns, latest - RING as u64 + 1).is_some());
        assert!(Sent::time(&sent.status, &sent.status_ns, latest - RING as u64).is_none(), "overwritten");
        assert!(Sent::time(&sent.status, &sent.status_ns, latest + 1).is_none(), "not sent yet");
        assert!(Sent::time(&sent.status, &sent.status_ns, 0).is_none());
    }
}
