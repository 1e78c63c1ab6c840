//! Fanout: S subscribers across R rooms (subscriber `i` joins room `i % R`), P publishers that
//! publish at an offered rate, open loop (they do not wait for one ack before the next
//! publish), to the rooms in turn. Every payload carries the step, the publisher, a sequence
//! number and the send time, so each subscriber times every delivery and counts it against what
//! the publishers had acknowledged in its room: loss, duplicates and extras are exact per
//! subscriber, not estimated.
//!
//! Step mode runs the same setup at rising offered rates until p99 passes a bound or a delivery
//! is missing, and reports the highest rate that held.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgerelay::client::Client;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::relay::{RelayUnderTest, TransportChoice};
use crate::stats::{self, Errors, Latency, now_ns};

/// Bytes of the header every payload starts with: step (u32), publisher (u32), sequence (u64),
/// send time in ns (u64), little-endian.
pub const HEADER: usize = 24;

/// Hard caps, whatever the arguments say.
pub const MAX_SUBSCRIBERS: usize = 20_000;
pub const MAX_PUBLISHERS: usize = 1_000;
pub const MAX_STEPS: usize = 30;

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct FanoutArgs {
    /// Subscriber connections in all; subscriber i joins room i % rooms.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Publisher connections (they join nothing; they publish to the rooms in turn).
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,
    /// Offered publishes per second over all publishers (deliveries per second = this times
    /// the subscribers per room). In step mode, the first step's rate.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Payload bytes per message (at least 24 with postcard, 50 with JSON: the header).
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    /// Codec of every connection. With JSON the payload is a JSON string.
    #[arg(long, value_enum, default_value = "postcard")]
    pub codec: CodecArg,
    /// Seconds to wait after the last publish for deliveries still on their way.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    /// Publishes sent but not yet acked, per publisher; at this many the publisher cannot keep
    /// up the offered rate and counts the shortfall as `behind` instead of sending.
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    /// Connections opened at once during setup.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Publishers send at the same instants (bursts of one publish each, the generator's
    /// behaviour before 2026-12-06) instead of staggered evenly over each one's period.
    #[arg(long)]
    pub lockstep: bool,
    /// Every subscriber asks for its unread counts (`receipts {sync}`) after joining, so the
    /// relay keeps them live: the cost of unread counting (docs/performance.md).
    #[arg(long)]
    pub sync_unread: bool,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct StepArgs {
    #[command(flatten)]
    pub fanout: FanoutArgs,
    /// Each step offers this many times the previous step's rate.
    #[arg(long, default_value_t = 1.5)]
    pub factor: f64,
    /// Stop before offering more than this many publishes per second.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub max_rate: f64,
    /// Most steps (at most 30).
    #[arg(long, default_value_t = 12)]
    pub steps: usize,
    /// A step holds when its p99 is at most this and every delivery arrived exactly once.
    #[arg(long, default_value_t = 50.0)]
    pub p99_bound_ms: f64,
    /// After the search, run one more step at half the highest sustainable rate.
    #[arg(long)]
    pub half: bool,
    /// Write the PNG chart of latency against offered load here.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<std::path::PathBuf>,
}

/// `bigroom`: fanout with every subscriber in one room. Fanout with `--rooms 1` already does
/// everything this workload asks (mixed transports, exact per-subscriber accounting, latency
/// histogram, relay CPU per million deliveries, RSS), so this is only a preset with the
/// defaults of a big room: the same code, the same report.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BigroomArgs {
    /// Subscriber connections, all in the one room.
    #[arg(long, default_value_t = 5000)]
    pub subscribers: usize,
    /// Publisher connections (they join nothing).
    #[arg(long, default_value_t = 2)]
    pub publishers: usize,
    /// Offered publishes per second over all publishers; deliveries per second = this times
    /// the subscribers.
    #[arg(long, default_value_t = 5.0)]
    pub rate: f64,
    #[arg(long, default_value_t = 100)]
    pub payload: usize,
    #[arg(long, value_enum, default_value = "postcard")]
    pub codec: CodecArg,
    /// Seconds to wait after the last publish for deliveries still on their way.
    #[arg(long, default_value_t = 10.0)]
    pub drain: f64,
    #[arg(long, default_value_t = 4096)]
    pub max_in_flight: usize,
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
    /// Every subscriber asks for its unread counts after joining (see fanout's flag).
    #[arg(long)]
    pub sync_unread: bool,
}

impl BigroomArgs {
    pub fn fanout(&self) -> FanoutArgs {
        FanoutArgs {
            subscribers: self.subscribers,
            rooms: 1,
            publishers: self.publishers,
            rate: self.rate,
            payload: self.payload,
            codec: self.codec,
            drain: self.drain,
            max_in_flight: self.max_in_flight,
            connect_concurrency: self.connect_concurrency,
            lockstep: false,
            sync_unread: self.sync_unread,
        }
    }
}

/// Live counters for the progress line.
#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub delivered: AtomicU64,
}

/// One subscriber's tallies, per step.
struct Subscriber {
    room: usize,
    received: Vec<AtomicU64>,
    duplicates: Vec<AtomicU64>,
    closed: AtomicBool,
}

/// Latency histograms per step (or any small index: the media workload keeps one per frame
/// class), in a few shards so subscribers on different threads rarely wait for each other.
pub struct Shards(Vec<std::sync::Mutex<Vec<Histogram<u64>>>>);

const SHARDS: usize = 16;

impl Shards {
    pub fn new(steps: usize) -> Shards {
        Shards((0..SHARDS).map(|_| std::sync::Mutex::new((0..steps).map(|_| stats::histogram()).collect())).collect())
    }

    pub fn record(&self, who: usize, step: usize, latency_ns: u64) {
        let mut shard = self.0[who % SHARDS].lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hist) = shard.get_mut(step) {
            hist.saturating_record((latency_ns / 1000).max(1));
        }
    }

    pub fn merged(&self, step: usize) -> Histogram<u64> {
        let mut out = stats::histogram();
        for shard in &self.0 {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(hist) = shard.get(step) {
                let _ = out.add(hist);
            }
        }
        out
    }
}

pub struct Header {
    pub step: usize,
    pub sent_ns: u64,
}

/// The codec every connection of a run speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CodecArg {
    Postcard,
    Json,
}

impl CodecArg {
    fn codec(self) -> edgerelay::proto::Codec {
        match self {
            CodecArg::Postcard => edgerelay::proto::Codec::Postcard,
            CodecArg::Json => edgerelay::proto::Codec::Json,
        }
    }

    /// The smallest payload that holds the header.
    fn min_payload(self) -> usize {
        match self {
            CodecArg::Postcard => HEADER,
            // A JSON string: quotes around the header in hex.
            CodecArg::Json => 2 * HEADER + 2,
        }
    }
}

/// A payload of `size` bytes that starts with the header: raw bytes for postcard, a JSON
/// string (header in hex, then padding) for JSON, so JSON clients get plain JSON text as a
/// browser application would publish it, not `$binary`.
fn payload(size: usize, codec: CodecArg, step: usize, publisher: usize, seq: u64) -> Vec<u8> {
    let mut head = [0u8; HEADER];
    head[0..4].copy_from_slice(&(step as u32).to_le_bytes());
    head[4..8].copy_from_slice(&(publisher as u32).to_le_bytes());
    head[8..16].copy_from_slice(&seq.to_le_bytes());
    head[16..24].copy_from_slice(&now_ns().to_le_bytes());
    let size = size.max(codec.min_payload());
    match codec {
        CodecArg::Postcard => {
            let mut data = vec![0u8; size];
            data[..HEADER].copy_from_slice(&head);
            data
        }
        CodecArg::Json => {
            let mut data = Vec::with_capacity(size);
            data.push(b'"');
            for byte in head {
                data.extend_from_slice(format!("{byte:02x}").as_bytes());
            }
            data.resize(size - 1, b'.');
            data.push(b'"');
            data
        }
    }
}

pub fn header(data: &[u8]) -> Option<Header> {
    let mut head = [0u8; HEADER];
    // A JSON payload is a string: quoted at both ends. A postcard one starts with the step's
    // low byte, which is a quote for step 34, and ends with padding or the time's high byte.
    if data.len() >= 2 && data.first() == Some(&b'"') && data.last() == Some(&b'"') {
        let hex = std::str::from_utf8(data.get(1..1 + 2 * HEADER)?).ok()?;
        for (i, byte) in head.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
    } else {
        head.copy_from_slice(data.get(..HEADER)?);
    }
    let step = u32::from_le_bytes(head[0..4].try_into().ok()?) as usize;
    let sent_ns = u64::from_le_bytes(head[16..24].try_into().ok()?);
    Some(Header { step, sent_ns })
}

/// One step's figures.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    /// Offered publishes per second.
    pub offered_rate: f64,
    /// Offered deliveries per second (offered rate times subscribers per room).
    pub offered_deliveries_per_s: f64,
    /// Length of the publishing window.
    pub seconds: f64,
    pub published: u64,
    pub acked: u64,
    /// Publishes the generator could not send in time (too many in flight).
    pub behind: u64,
    pub publish_errors: BTreeMap<String, u64>,
    /// Deliveries owed: for every subscriber, the acked publishes in its room.
    pub expected: u64,
    /// Distinct deliveries received (each message once per subscriber).
    pub delivered: u64,
    /// Owed deliveries that never arrived (summed over subscribers).
    pub lost: u64,
    /// Deliveries received again (an offset a subscriber already had).
    pub duplicates: u64,
    /// Deliveries beyond what was owed (publishes whose ack was lost, e.g. timed out).
    pub extra: u64,
    /// Subscribers missing at least one owed delivery.
    pub incomplete_subscribers: u64,
    pub completeness: f64,
    /// Distinct deliveries per second of the publishing window.
    pub delivered_per_s: f64,
    /// Publish to delivery, at the subscribers.
    pub latency: Latency,
    /// Publish to ack, at the publishers.
    pub ack_latency: Latency,
    /// How long the drain waited for the last deliveries.
    pub drain_seconds: f64,
    pub relay_cpu_seconds: Option<f64>,
    /// Relay CPU seconds (user + system) per million distinct deliveries.
    pub relay_cpu_s_per_million: Option<f64>,
    pub relay_rss_kib: Option<u64>,
    /// The generator's own CPU seconds over the step (it shares the machine with the relay).
    pub generator_cpu_seconds: Option<f64>,
    /// Whether p99 was within the bound and every owed delivery arrived exactly once.
    pub held: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    pub workload: &'static str,
    pub transport: TransportChoice,
    pub args: FanoutArgs,
    pub subscribers_joined: usize,
    pub publishers_connected: usize,
    pub connect_latency: Latency,
    pub relay_rss_kib_before: Option<u64>,
    pub relay_rss_kib_connected: Option<u64>,
    pub steps: Vec<StepReport>,
    pub errors: BTreeMap<String, u64>,
    /// Step mode: the highest offered rate that held, and its deliveries per second.
    pub sustainable_rate: Option<f64>,
    pub sustainable_deliveries_per_s: Option<f64>,
    /// Step mode with --half: the step run at half the sustainable rate.
    pub half_rate_step: Option<StepReport>,
    pub p99_bound_ms: Option<f64>,
}

struct Setup {
    subscribers: Vec<Arc<Subscriber>>,
    publishers: Vec<Arc<Client>>,
    members: Vec<u64>,
    shards: Arc<Shards>,
    counters: Arc<Counters>,
    errors: Arc<Errors>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    connect: Histogram<u64>,
    rss_before: Option<u64>,
    rss_connected: Option<u64>,
}

pub async fn connect_one(
    relay: &RelayUnderTest,
    transport: TransportChoice,
    index: usize,
    user: String,
    codec: CodecArg,
) -> anyhow::Result<(Client, Duration)> {
    let target = relay.target(transport.for_index(index))?;
    let options = relay.options(&user, transport.for_index(index), index)?.codec(codec.codec());
    let started = Instant::now();
    let client = Client::connect(target, options).await?;
    Ok((client, started.elapsed()))
}

async fn setup(
    relay: &RelayUnderTest,
    args: &FanoutArgs,
    transport: TransportChoice,
    steps: usize,
    counters: Arc<Counters>,
) -> anyhow::Result<Setup> {
    anyhow::ensure!(args.subscribers <= MAX_SUBSCRIBERS, "at most {MAX_SUBSCRIBERS} subscribers");
    anyhow::ensure!((1..=MAX_PUBLISHERS).contains(&args.publishers), "1 to {MAX_PUBLISHERS} publishers");
    anyhow::ensure!(args.rooms >= 1, "at least one room");
    let min = args.codec.min_payload();
    anyhow::ensure!(args.payload >= min, "payload of at least {min} bytes with {:?}", args.codec);
    let errors = Arc::new(Errors::default());
    let shards = Arc::new(Shards::new(steps));
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let mut connect = stats::histogram();
    let rss_before = relay.rss_kib();
    let mut members = vec![0u64; args.rooms];

    let joins = futures_util::stream::iter(0..args.subscribers)
        .map(|i| async move {
            let room = i % args.rooms;
            let (client, took) = connect_one(relay, transport, i, format!("sub-{i}"), args.codec).await?;
            client.join(&format!("load:r{room}")).await?;
            if args.sync_unread {
                client.sync_unread().await?;
            }
            anyhow::Ok((i, room, client, took))
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    tokio::pin!(joins);
    let mut subscribers = Vec::with_capacity(args.subscribers);
    while let Some(joined) = joins.next().await {
        let (i, room, client, took) = match joined {
            Ok(joined) => joined,
            Err(err) => {
                match err.downcast_ref::<edgerelay::client::ClientError>() {
                    Some(err) => errors.client(err),
                    None => errors.add(format!("setup: {err}")),
                }
                continue;
            }
        };
        stats::record(&mut connect, took);
        members[room] += 1;
        let sub = Arc::new(Subscriber {
            room,
            received: (0..steps).map(|_| AtomicU64::new(0)).collect(),
            duplicates: (0..steps).map(|_| AtomicU64::new(0)).collect(),
            closed: AtomicBool::new(false),
        });
        subscribers.push(sub.clone());
        tasks.spawn(subscribe(client, i, sub, shards.clone(), counters.clone(), errors.clone(), cancel.clone()));
    }
    let mut publishers = Vec::with_capacity(args.publishers);
    for j in 0..args.publishers {
        // Publishers take the transports after the subscribers', so a mix mixes both.
        let (client, took) =
            connect_one(relay, transport, args.subscribers + j, format!("pub-{j}"), args.codec).await?;
        stats::record(&mut connect, took);
        publishers.push(Arc::new(client));
    }
    let rss_connected = relay.rss_kib();
    Ok(Setup {
        subscribers,
        publishers,
        members,
        shards,
        counters,
        errors,
        tasks,
        cancel,
        connect,
        rss_before,
        rss_connected,
    })
}

async fn subscribe(
    mut client: Client,
    index: usize,
    sub: Arc<Subscriber>,
    shards: Arc<Shards>,
    counters: Arc<Counters>,
    errors: Arc<Errors>,
    cancel: CancellationToken,
) {
    let mut last_offset = 0u64;
    // One cancellation future for the subscriber's life, not one per message.
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        let message = tokio::select! {
            _ = &mut cancelled => break,
            message = client.next_message() => message,
        };
        match message {
            Ok(message) => {
                let now = now_ns();
                let Some(header) = header(&message.data.0) else {
                    errors.add("foreign_payload");
                    continue;
                };
                let step = header.step.min(sub.received.len() - 1);
                // A room's offsets rise by one per message: one at or below the last is a
                // message this subscriber already had.
                if message.position.offset <= last_offset {
                    sub.duplicates[step].fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                last_offset = message.position.offset;
                sub.received[step].fetch_add(1, Ordering::Relaxed);
                counters.delivered.fetch_add(1, Ordering::Relaxed);
                shards.record(index, step, now.saturating_sub(header.sent_ns));
            }
            Err(err) => {
                errors.client(&err);
                sub.closed.store(true, Ordering::Relaxed);
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
}

/// What one publisher did in one step.
pub struct Published {
    pub sent: u64,
    pub acked_per_room: Vec<u64>,
    pub behind: u64,
    pub ack: Histogram<u64>,
    pub errors: BTreeMap<String, u64>,
}

/// Publishes `quota` messages over `window` to rooms `load:r{k}` in turn, open loop, and waits
/// for their acks. `phase` (0 up to 1) shifts the publishes by that share of one period, so
/// that publishers with phases spread over [0, 1) take turns instead of sending together. The message ids are `{step}-{seq}`: a caller that publishes in several
/// windows gives each its own step, or the relay's dedupe would take them for retries.
#[allow(clippy::too_many_arguments)]
pub async fn publish(
    client: Arc<Client>,
    index: usize,
    rooms: usize,
    step: usize,
    quota: u64,
    window: Duration,
    size: usize,
    codec: CodecArg,
    max_in_flight: usize,
    counters: Arc<Counters>,
    phase: f64,
) -> Published {
    // This publisher's share of the step: `quota` publishes spread evenly over the window.
    let rate = quota as f64 / window.as_secs_f64();
    let mut out = Published {
        sent: 0,
        acked_per_room: vec![0; rooms],
        behind: 0,
        ack: stats::histogram(),
        errors: BTreeMap::new(),
    };
    let started = tokio::time::Instant::now();
    let end = started + window;
    let mut in_flight = FuturesUnordered::new();
    let mut due_total = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        // Until the window's whole quota is due and sent: the last tick may come a little
        // before the end of the window, the next one tops it up.
        let publishing = tokio::time::Instant::now() < end || due_total < quota;
        tokio::select! {
            _ = tick.tick(), if publishing => {
                let elapsed = started.elapsed().min(window).as_secs_f64();
                let due = ((elapsed * rate + phase) as u64).min(quota);
                while due_total < due {
                    due_total += 1;
                    if in_flight.len() >= max_in_flight {
                        out.behind += 1;
                        continue;
                    }
                    let seq = out.sent;
                    let room = (index + seq as usize) % rooms;
                    let data = payload(size, codec, step, index, seq);
                    let client = client.clone();
                    out.sent += 1;
                    counters.published.fetch_add(1, Ordering::Relaxed);
                    in_flight.push(async move {
                        let started = Instant::now();
                        let id = format!("{step}-{seq}");
                        let result = client.publish(&format!("load:r{room}"), &id, data).await;
                        (room, result, started.elapsed())
                    });
                }
            }
            Some((room, result, took)) = in_flight.next(), if !in_flight.is_empty() => match result {
                Ok(_) => {
                    out.acked_per_room[room] += 1;
                    counters.acked.fetch_add(1, Ordering::Relaxed);
                    stats::record(&mut out.ack, took);
                }
                Err(err) => *out.errors.entry(stats::error_key(&err)).or_default() += 1,
            },
            else => break,
        }
    }
    out
}

async fn run_step(
    relay: &RelayUnderTest,
    setup: &Setup,
    args: &FanoutArgs,
    step: usize,
    rate: f64,
    window: Duration,
    bound_ms: f64,
) -> StepReport {
    let cpu_before = relay.cpu();
    let own_before = crate::relay::cpu_of(std::process::id());
    let mut publishing = tokio::task::JoinSet::new();
    // The step's publishes, shared out so that they add up to exactly rate × window.
    let total = (rate * window.as_secs_f64()).round() as u64;
    let count = setup.publishers.len() as u64;
    for (j, client) in setup.publishers.iter().enumerate() {
        let j64 = j as u64;
        let quota = total * (j64 + 1) / count - total * j64 / count;
        publishing.spawn(publish(
            client.clone(),
            j,
            args.rooms,
            step,
            quota,
            window,
            args.payload,
            args.codec,
            args.max_in_flight,
            setup.counters.clone(),
            if args.lockstep { 0.0 } else { j as f64 / count as f64 },
        ));
    }
    let mut acked_per_room = vec![0u64; args.rooms];
    let (mut published, mut behind) = (0u64, 0u64);
    let mut ack = stats::histogram();
    let mut publish_errors = BTreeMap::new();
    while let Some(done) = publishing.join_next().await {
        let Ok(done) = done else { continue };
        published += done.sent;
        behind += done.behind;
        for (total, n) in acked_per_room.iter_mut().zip(&done.acked_per_room) {
            *total += n;
        }
        let _ = ack.add(&done.ack);
        stats::merge_errors(&mut publish_errors, &done.errors);
    }
    let acked: u64 = acked_per_room.iter().sum();
    let expected: u64 = acked_per_room.iter().zip(&setup.members).map(|(a, m)| a * m).sum();

    // Drain: wait until every subscriber has what it is owed, or the drain time has passed.
    let drain_started = Instant::now();
    let drain = Duration::from_secs_f64(args.drain.clamp(0.0, 120.0));
    let received = |s: &Subscriber| s.received[step].load(Ordering::Relaxed);
    loop {
        let complete = setup.subscribers.iter().all(|s| received(s) >= acked_per_room[s.room]);
        if complete || drain_started.elapsed() >= drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let cpu_after = relay.cpu();
    let own_after = crate::relay::cpu_of(std::process::id());

    let (mut delivered, mut lost, mut duplicates, mut extra, mut incomplete) = (0u64, 0u64, 0u64, 0u64, 0u64);
    for s in &setup.subscribers {
        let owed = acked_per_room[s.room];
        let got = received(s);
        delivered += got;
        duplicates += s.duplicates[step].load(Ordering::Relaxed);
        if got < owed {
            lost += owed - got;
            incomplete += 1;
        } else {
            extra += got - owed;
        }
    }
    let latency = Latency::of(&setup.shards.merged(step));
    let cpu = cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    let seconds = window.as_secs_f64();
    let completeness = if expected == 0 { 1.0 } else { delivered.min(expected) as f64 / expected as f64 };
    let per_room = setup.subscribers.len() as f64 / args.rooms as f64;
    let held = latency.p99_ms <= bound_ms
        && lost == 0
        && duplicates == 0
        && behind == 0
        && publish_errors.is_empty()
        && expected > 0;
    StepReport {
        step,
        offered_rate: rate,
        offered_deliveries_per_s: rate * per_room,
        seconds,
        published,
        acked,
        behind,
        publish_errors,
        expected,
        delivered,
        lost,
        duplicates,
        extra,
        incomplete_subscribers: incomplete,
        completeness,
        delivered_per_s: delivered as f64 / seconds,
        latency,
        ack_latency: Latency::of(&ack),
        drain_seconds,
        relay_cpu_seconds: cpu,
        relay_cpu_s_per_million: cpu.filter(|_| delivered > 0).map(|c| c * 1e6 / delivered as f64),
        relay_rss_kib: relay.rss_kib(),
        generator_cpu_seconds: own_before.zip(own_after).map(|(a, b)| b.saturating_sub(a).as_secs_f64()),
        held,
    }
}

fn progress(counters: Arc<Counters>, relay_pid: Option<u32>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let cpu = |pid: Option<u32>| crate::relay::cpu_of(pid?).map(|d| d.as_millis() as u64 / 10);
        let mut last = (0u64, 0u64, 0u64, cpu(relay_pid));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = (
                counters.published.load(Ordering::Relaxed),
                counters.acked.load(Ordering::Relaxed),
                counters.delivered.load(Ordering::Relaxed),
                cpu(relay_pid),
            );
            let relay_cpu = match (last.3, now.3) {
                (Some(a), Some(b)) => format!("{}%", b.saturating_sub(a)),
                _ => "-".into(),
            };
            eprintln!(
                "[{:>4}s] published {:>7}/s  acked {:>7}/s  delivered {:>8}/s  in flight {:>6}  relay cpu {relay_cpu}",
                started.elapsed().as_secs(),
                now.0 - last.0,
                now.1 - last.1,
                now.2 - last.2,
                now.0.saturating_sub(now.1),
            );
            last = now;
        }
    })
}

async fn teardown(setup: Setup) {
    setup.cancel.cancel();
    setup.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), setup.tasks.wait()).await;
    for publisher in setup.publishers {
        if let Ok(client) = Arc::try_unwrap(publisher) {
            let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
        }
    }
}

fn report(
    setup: &Setup,
    args: &FanoutArgs,
    transport: TransportChoice,
    workload: &'static str,
    steps: Vec<StepReport>,
) -> FanoutReport {
    FanoutReport {
        workload,
        transport,
        args: args.clone(),
        subscribers_joined: setup.subscribers.len(),
        publishers_connected: setup.publishers.len(),
        connect_latency: Latency::of(&setup.connect),
        relay_rss_kib_before: setup.rss_before,
        relay_rss_kib_connected: setup.rss_connected,
        steps,
        errors: setup.errors.snapshot(),
        sustainable_rate: None,
        sustainable_deliveries_per_s: None,
        half_rate_step: None,
        p99_bound_ms: None,
    }
}

pub async fn fanout(
    relay: &RelayUnderTest,
    args: &FanoutArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
) -> anyhow::Result<FanoutReport> {
    fanout_named(relay, args, transport, window, show_progress, "fanout").await
}

/// One room of `args.subscribers`: [`fanout`] with `--rooms 1`, reported as `bigroom`.
pub async fn bigroom(
    relay: &RelayUnderTest,
    args: &BigroomArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
) -> anyhow::Result<FanoutReport> {
    fanout_named(relay, &args.fanout(), transport, window, show_progress, "bigroom").await
}

async fn fanout_named(
    relay: &RelayUnderTest,
    args: &FanoutArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
    workload: &'static str,
) -> anyhow::Result<FanoutReport> {
    let counters = Arc::new(Counters::default());
    let setup = setup(relay, args, transport, 1, counters.clone()).await?;
    let cancel = CancellationToken::new();
    let progress = show_progress.then(|| progress(counters, relay.pid, cancel.clone()));
    let step = run_step(relay, &setup, args, 0, args.rate, window, f64::INFINITY).await;
    cancel.cancel();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    let out = report(&setup, args, transport, workload, vec![step]);
    teardown(setup).await;
    Ok(out)
}

pub async fn step(
    relay: &RelayUnderTest,
    args: &StepArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
) -> anyhow::Result<FanoutReport> {
    anyhow::ensure!(args.factor > 1.0, "--factor must be above 1");
    let max_steps = args.steps.clamp(1, MAX_STEPS);
    let counters = Arc::new(Counters::default());
    let setup = setup(relay, &args.fanout, transport, max_steps + 1, counters.clone()).await?;
    let cancel = CancellationToken::new();
    let progress = show_progress.then(|| progress(counters, relay.pid, cancel.clone()));
    let mut steps = Vec::new();
    let mut rate = args.fanout.rate;
    let mut best: Option<StepReport> = None;
    for i in 0..max_steps {
        if show_progress {
            eprintln!("step {i}: offering {rate:.0} publishes/s");
        }
        let report = run_step(relay, &setup, &args.fanout, i, rate, window, args.p99_bound_ms).await;
        if show_progress {
            eprintln!(
                "step {i}: {:.0} deliveries/s, completeness {:.6}, {}",
                report.delivered_per_s,
                report.completeness,
                report.latency.line()
            );
        }
        let held = report.held;
        if held {
            best = Some(report.clone());
        }
        steps.push(report);
        if !held || rate * args.factor > args.max_rate {
            break;
        }
        rate *= args.factor;
        // Let queues settle before the next step.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let half = match (&best, args.half) {
        (Some(best), true) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let rate = best.offered_rate / 2.0;
            if show_progress {
                eprintln!("half-rate step: offering {rate:.0} publishes/s");
            }
            Some(run_step(relay, &setup, &args.fanout, max_steps, rate, window, args.p99_bound_ms).await)
        }
        _ => None,
    };
    cancel.cancel();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    let mut out = report(&setup, &args.fanout, transport, "step", steps);
    out.sustainable_rate = best.as_ref().map(|b| b.offered_rate);
    out.sustainable_deliveries_per_s = best.as_ref().map(|b| b.delivered_per_s);
    out.half_rate_step = half;
    out.p99_bound_ms = Some(args.p99_bound_ms);
    teardown(setup).await;
    Ok(out)
}

pub fn table(report: &FanoutReport) -> String {
    let mut out = String::new();
    let a = &report.args;
    out.push_str(&stats::table(
        &format!("{} over {:?}", report.workload, report.transport),
        &[
            (
                "shape".into(),
                format!(
                    "{} subscribers in {} rooms, {} publishers, {}-byte payloads, {:?}",
                    a.subscribers, a.rooms, a.publishers, a.payload, a.codec
                ),
            ),
            ("subscribers joined".into(), report.subscribers_joined.to_string()),
            ("connect".into(), report.connect_latency.line()),
            (
                "relay RSS".into(),
                format!(
                    "{} KiB before, {} KiB connected",
                    report.relay_rss_kib_before.map_or("-".into(), |v| v.to_string()),
                    report.relay_rss_kib_connected.map_or("-".into(), |v| v.to_string())
                ),
            ),
            ("errors".into(), format!("{:?}", report.errors)),
        ],
    ));
    out.push_str(&format!(
        "\n{:>4} {:>9} {:>11} {:>11} {:>9} {:>7} {:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>5}\n",
        "step",
        "offer/s",
        "offer del/s",
        "deliver/s",
        "lost",
        "dups",
        "behind",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "p99.9 ms",
        "max ms",
        "cpu s/M",
        "held"
    ));
    for s in report.steps.iter().chain(&report.half_rate_step) {
        out.push_str(&format!(
            "{:>4} {:>9.0} {:>11.0} {:>11.0} {:>9} {:>7} {:>5} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>9} {:>5}\n",
            s.step,
            s.offered_rate,
            s.offered_deliveries_per_s,
            s.delivered_per_s,
            s.lost,
            s.duplicates,
            s.behind,
            s.latency.p50_ms,
            s.latency.p95_ms,
            s.latency.p99_ms,
            s.latency.p999_ms,
            s.latency.max_ms,
            stats::fmt_opt(s.relay_cpu_s_per_million, 2),
            if s.held { "yes" } else { "no" },
        ));
    }
    if let Some(bound) = report.p99_bound_ms {
        out.push_str(&format!(
            "\nhighest sustainable (p99 <= {bound} ms, complete, no duplicates): {}\n",
            match (report.sustainable_rate, report.sustainable_deliveries_per_s) {
                (Some(r), Some(d)) => format!("{r:.0} publishes/s = {d:.0} deliveries/s"),
                _ => "none (the first step already failed)".into(),
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_reads_back_from_either_payload() {
        for codec in [CodecArg::Postcard, CodecArg::Json] {
            let data = payload(100, codec, 7, 3, 42);
            assert_eq!(data.len(), 100);
            let head = header(&data).expect("a header");
            assert_eq!(head.step, 7);
            assert!(head.sent_ns <= now_ns());
        }
        // Step 34 is a quote in its low byte: still a postcard header (storm's publisher
        // numbers its windows as steps).
        let head = header(&payload(100, CodecArg::Postcard, 34, 0, 1)).expect("a header");
        assert_eq!(head.step, 34);
        let head = header(&payload(HEADER, CodecArg::Postcard, 34 + 256, 0, 1)).expect("a header");
        assert_eq!(head.step, 34 + 256);
        let json = payload(100, CodecArg::Json, 1, 2, 3);
        assert!(serde_json::from_slice::<String>(&json).is_ok(), "a JSON string");
        assert!(header(b"{}").is_none());
    }
}
