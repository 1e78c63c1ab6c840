//! Media: the SFU-lite plane under a call load (docs/media.md). C calls (rooms `load:call:N`),
//! each with P publishers and S subscribers. Every publisher publishes an audio track (50 frames
//! a second, 5 frames per group, 80-byte frames with an RFC 6464 level byte; one publisher of
//! the call speaks at a time) and a video track with up to three simulcast layers at realistic
//! bitrates (150 kbit/s, 500 kbit/s, 1.5 Mbit/s at 30 fps by default; a group is a 2 s GOP
//! whose keyframe is 8 times an average frame, the delta frames share the rest of the layer's
//! bitrate). Publishers act on the relay's `keyframe_request` (at most one forced keyframe per
//! layer a second) and `layers_wanted` (a layer nobody receives is not encoded), as a real
//! sender does. Subscribers receive every track of their call; publishers receive each other's
//! (a meeting). Late joiners connect during the measured window, join, subscribe and time
//! subscribe → first video frame (the cached keyframe group).
//!
//! Every payload starts with its send time (the generator's clock, [`now_ns`], stamped just
//! before the frame is written to its stream), so every subscriber times every frame it receives:
//! publisher's stack, relay, subscriber's stack, all on loopback. Frames the relay hands a late
//! joiner from its cache were sent before the subscription; they are counted as forwarded but
//! not timed.
//!
//! The measured window starts after `--warmup` seconds of publishing (layers climbed to the
//! target, unwatched layers paused) and lasts `--duration`; frames are counted by their arrival
//! in the window, the relay's CPU (from /proc) over the same window.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgerelay::client::media::{GroupWriter, MediaEvent};
use edgerelay::client::{Client, ClientError, Event};
use edgerelay::media::TrackId;
use edgerelay::proto::ServerFrame;
use edgerelay::proto::media::{FLAG_KEYFRAME, GroupHeader, LayerInfo, TrackKind};
use futures_util::stream::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::fanout::{CodecArg, Shards, connect_one};
use crate::relay::{RelayUnderTest, TransportChoice};
use crate::stats::{self, Errors, Latency, SharedLatency, now_ns};

/// Hard caps, whatever the arguments say.
pub const MAX_CONNECTIONS: usize = 20_000;
pub const MAX_PUBLISHERS_PER_CALL: usize = 16;
pub const MAX_LATE_JOINERS: usize = 5_000;

/// Frame classes: audio, the video layers, and keyframes (of any layer) timed apart: a keyframe
/// is 8 times a frame and its latency is its own story.
const AUDIO: usize = 0;
const KEYFRAMES: usize = 4;
const CLASSES: usize = 5;
const CLASS_NAMES: [&str; CLASSES] = ["audio", "video L0", "video L1", "video L2", "keyframes"];

/// Audio: 20 ms frames, 5 to a group, 80 bytes each.
const AUDIO_FRAME_MS: u64 = 20;
const AUDIO_GROUP_FRAMES: u32 = 5;
const AUDIO_FRAME_BYTES: usize = 80;
/// Stream bytes one QUIC packet carries at the 1,452-byte datagrams quinn's MTU discovery
/// reaches on loopback (less the short header, the AEAD tag and the STREAM frame's header).
/// Frames come 20-33 ms apart per track, so a packet rarely carries two; packets forwarded are
/// estimated as every received frame's bytes in packets of this, rounded up per frame.
const PACKET_STREAM_BYTES: usize = 1_400;
/// Least time between two keyframes a publisher forces for `keyframe_request`s, per layer.
const FORCED_KEYFRAME_EVERY: Duration = Duration::from_secs(1);

const LAYER_SIZES: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct MediaArgs {
    /// Calls (rooms `load:call:0` ...).
    #[arg(long, default_value_t = 1)]
    pub calls: usize,
    /// Publishers per call: each publishes audio and video and receives the call's other
    /// publishers (a meeting).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscribers per call: they receive every track of the call and publish nothing.
    #[arg(long, default_value_t = 200)]
    pub subscribers: usize,
    /// Simulcast layers of every video track (1-3): the first N of --bitrates.
    #[arg(long, default_value_t = 3)]
    pub layers: usize,
    /// Video layer bitrates, kbit/s, base layer first.
    #[arg(long, value_delimiter = ',', default_value = "150,500,1500")]
    pub bitrates: Vec<u32>,
    /// Video frames per second.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Seconds per video group (GOP): each starts with a keyframe.
    #[arg(long, default_value_t = 2.0)]
    pub gop: f64,
    /// A keyframe's size in average frames of its layer.
    #[arg(long, default_value_t = 8.0)]
    pub keyframe_ratio: f64,
    /// The highest video layer subscribers ask for: 0-2, or `mix` (subscriber i asks for
    /// i % 3).
    #[arg(long, default_value = "2")]
    pub max_layer: String,
    /// Subscribers that join during the measured window (spread evenly over it, calls in turn)
    /// and time subscribe → first video frame.
    #[arg(long, default_value_t = 0)]
    pub late_joiners: usize,
    /// Seconds of publishing before the measured window (layers settle, dynacast pauses).
    #[arg(long, default_value_t = 3.0)]
    pub warmup: f64,
    /// Seconds to keep receiving after the publishers stop (nothing is counted then).
    #[arg(long, default_value_t = 1.0)]
    pub drain: f64,
    /// Connections opened at once during setup.
    #[arg(long, default_value_t = 64)]
    pub connect_concurrency: usize,
}

impl MediaArgs {
    fn max_layer_for(&self, i: usize) -> anyhow::Result<u8> {
        let top = self.layers.saturating_sub(1) as u8;
        if self.max_layer == "mix" {
            return Ok((i % 3) as u8).map(|l| l.min(top));
        }
        let layer: u8 = self.max_layer.parse().map_err(|_| anyhow::anyhow!("--max-layer is 0, 1, 2 or mix"))?;
        anyhow::ensure!(layer <= 2, "--max-layer is 0, 1, 2 or mix");
        Ok(layer.min(top))
    }

    /// Each video layer's frame sizes: (keyframe, delta frame) bytes, so that a GOP carries
    /// the layer's bitrate.
    fn frame_sizes(&self) -> Vec<(usize, usize)> {
        let gop_frames = self.gop_frames() as f64;
        self.bitrates[..self.layers]
            .iter()
            .map(|&kbps| {
                let average = f64::from(kbps) * 1000.0 / 8.0 / f64::from(self.fps);
                let key = average * self.keyframe_ratio;
                let delta = ((average * gop_frames - key) / (gop_frames - 1.0).max(1.0)).max(16.0);
                (key.round() as usize, delta.round() as usize)
            })
            .collect()
    }

    fn gop_frames(&self) -> u32 {
        ((self.gop * f64::from(self.fps)).round() as u32).max(1)
    }
}

/// Run-wide state: phase, counters, histograms, errors.
struct Ctx {
    /// Frames are counted while this is set (the measured window).
    measuring: AtomicBool,
    /// Frames, bytes and estimated packets received in the window, per class (keyframes are
    /// also counted in their layer's frames; the keyframe class counts them apart).
    frames: [AtomicU64; CLASSES],
    bytes: [AtomicU64; CLASSES],
    packets: AtomicU64,
    /// Frames publishers sent in the window, per class.
    sent: [AtomicU64; CLASSES],
    /// Frames a late joiner got from the relay's cache (sent before it subscribed): forwarded,
    /// not timed.
    cached_frames: AtomicU64,
    /// Groups the relay reset on subscribers (stale or queue full), seen in the window.
    groups_reset: AtomicU64,
    groups_received: AtomicU64,
    /// Frames of groups a participant received that never arrived (a group reset before its
    /// end, or a gap inside it).
    frames_missing: AtomicU64,
    keyframe_requests: AtomicU64,
    keyframes_forced: AtomicU64,
    layers_wanted: AtomicU64,
    layer_switches: AtomicU64,
    /// Live frames received per second (whole run), for the progress line.
    live: AtomicU64,
    subscribed_tracks: AtomicU64,
    late_joined: AtomicU64,
    first_not_keyframe: AtomicU64,
    latency: Shards,
    join_first_frame: SharedLatency,
    connect_first_frame: SharedLatency,
    errors: Errors,
}

impl Ctx {
    fn new() -> Ctx {
        Ctx {
            measuring: AtomicBool::new(false),
            frames: Default::default(),
            bytes: Default::default(),
            packets: AtomicU64::new(0),
            sent: Default::default(),
            cached_frames: AtomicU64::new(0),
            groups_reset: AtomicU64::new(0),
            groups_received: AtomicU64::new(0),
            frames_missing: AtomicU64::new(0),
            keyframe_requests: AtomicU64::new(0),
            keyframes_forced: AtomicU64::new(0),
            layers_wanted: AtomicU64::new(0),
            layer_switches: AtomicU64::new(0),
            live: AtomicU64::new(0),
            subscribed_tracks: AtomicU64::new(0),
            late_joined: AtomicU64::new(0),
            first_not_keyframe: AtomicU64::new(0),
            latency: Shards::new(CLASSES),
            join_first_frame: SharedLatency::default(),
            connect_first_frame: SharedLatency::default(),
            errors: Errors::default(),
        }
    }

    fn measuring(&self) -> bool {
        self.measuring.load(Ordering::Relaxed)
    }

    fn error(&self, err: &ClientError) {
        self.errors.client(err);
    }
}

/// A group stream a publisher's sender wants opened: the participant's task owns the client
/// (it reads media with `&mut`), so senders ask it.
struct OpenRequest {
    header: GroupHeader,
    kind: TrackKind,
    reply: oneshot::Sender<Result<GroupWriter, ClientError>>,
}

/// What the relay tells a publisher about its video track, for its senders.
struct PublisherCtl {
    video: TrackId,
    /// Bit n: somebody receives layer n (`layers_wanted`); all at first.
    wanted: AtomicU8,
    /// A `keyframe_request` for the layer is pending.
    keyframe: [AtomicBool; 3],
}

/// One publisher's tracks.
#[derive(Debug, Clone, Copy)]
struct Tracks {
    audio: TrackId,
    video: TrackId,
}

/// A participant's view of one forwarded group.
struct GroupSeen {
    class: usize,
    keyframe: bool,
    frames: u32,
}

/// Subscribe → first frame timing of a late joiner: per video track, when it subscribed.
struct FirstFrames {
    connect_ns: u64,
    pending: HashMap<TrackId, u64>,
}

/// Per-call video track ids, to class what arrives.
type Kinds = Arc<HashMap<TrackId, TrackKind>>;

#[derive(Debug, Clone, Default, Serialize)]
pub struct ClassFigures {
    pub class: &'static str,
    pub frames_sent: u64,
    pub frames_received: u64,
    pub bytes_received: u64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct MediaReport {
    pub workload: &'static str,
    pub transport: TransportChoice,
    pub args: MediaArgs,
    pub participants: usize,
    pub late_joiners_joined: u64,
    pub subscribed_tracks: u64,
    pub connect_latency: Latency,
    pub seconds: f64,
    pub frames_per_s: f64,
    pub megabits_per_s: f64,
    pub packets_per_s_estimated: f64,
    /// Relay-added latency (send → receive on loopback, both clients' stacks included), every
    /// live frame.
    pub latency: Latency,
    /// The same without keyframes.
    pub latency_without_keyframes: Latency,
    pub classes: Vec<ClassFigures>,
    pub cached_frames: u64,
    /// Late joiners: subscribe → first video frame, and connect started → first video frame.
    pub join_first_frame: Latency,
    pub connect_first_frame: Latency,
    pub first_group_not_keyframe: u64,
    pub groups_received: u64,
    pub groups_reset_seen: u64,
    /// Frames of groups a participant received that never reached it.
    pub frames_missing: u64,
    /// `edgerelay_media_groups_cancelled_total` over the window, by reason.
    pub relay_groups_cancelled: BTreeMap<String, f64>,
    /// `edgerelay_media_frames_in_total` over the window.
    pub relay_frames_in: Option<f64>,
    pub keyframe_requests: u64,
    pub keyframes_forced: u64,
    pub layers_wanted_changes: u64,
    pub layer_switches: u64,
    pub relay_cpu_seconds: Option<f64>,
    pub relay_cpu_s_per_million_frames: Option<f64>,
    pub relay_cpu_s_per_gbit: Option<f64>,
    /// CPU-s per million estimated QUIC packets = µs per packet.
    pub relay_cpu_us_per_packet_estimated: Option<f64>,
    pub generator_cpu_seconds: Option<f64>,
    pub relay_rss_kib_before: Option<u64>,
    /// Connected and joined, tracks published, nothing subscribed: the idle baseline.
    pub relay_rss_kib_idle: Option<u64>,
    pub relay_rss_kib_subscribed: Option<u64>,
    /// At the end of the window, media flowing.
    pub relay_rss_kib_media: Option<u64>,
    /// (media − idle) / subscribed tracks.
    pub relay_kib_per_subscribed_track: Option<f64>,
    pub errors: BTreeMap<String, u64>,
}

/// The counters of the relay's /metrics this report uses.
async fn relay_metrics(relay: &RelayUnderTest) -> Option<BTreeMap<String, f64>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url::Url::parse(relay.ws_url.as_deref()?).ok()?;
    let addr = format!("{}:{}", url.host_str()?, url.port()?);
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.ok()?;
        let request = "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(String::from_utf8_lossy(&response).into_owned())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), fetch).await.ok()??;
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if !line.starts_with("edgerelay_media_") {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else { continue };
        if let Ok(value) = value.parse::<f64>() {
            out.insert(name.to_owned(), value);
        }
    }
    Some(out)
}

fn delta(before: &Option<BTreeMap<String, f64>>, after: &Option<BTreeMap<String, f64>>, name: &str) -> Option<f64> {
    let after = after.as_ref()?.get(name).copied()?;
    Some(after - before.as_ref().and_then(|b| b.get(name).copied()).unwrap_or(0.0))
}

/// Sleeps for `d`; false when the run was cancelled first.
async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

fn room(call: usize) -> String {
    format!("load:call:{call}")
}

pub async fn media(
    relay: &RelayUnderTest,
    args: &MediaArgs,
    transport: TransportChoice,
    window: Duration,
    show_progress: bool,
) -> anyhow::Result<MediaReport> {
    anyhow::ensure!(
        matches!(transport, TransportChoice::Quic | TransportChoice::Wt),
        "media needs --transport quic or wt (WebSocket has no media)"
    );
    anyhow::ensure!(args.calls >= 1, "at least one call");
    anyhow::ensure!(
        (1..=MAX_PUBLISHERS_PER_CALL).contains(&args.publishers),
        "1 to {MAX_PUBLISHERS_PER_CALL} publishers per call"
    );
    anyhow::ensure!((1..=3).contains(&args.layers), "--layers 1 to 3");
    anyhow::ensure!(args.bitrates.len() >= args.layers, "--bitrates needs one per layer");
    anyhow::ensure!((1..=120).contains(&args.fps), "--fps 1 to 120");
    anyhow::ensure!(args.gop > 0.0 && args.gop <= 30.0, "--gop from 0 to 30 s");
    anyhow::ensure!(args.keyframe_ratio >= 1.0 && args.keyframe_ratio <= 100.0, "--keyframe-ratio 1 to 100");
    anyhow::ensure!(args.late_joiners <= MAX_LATE_JOINERS, "at most {MAX_LATE_JOINERS} late joiners");
    anyhow::ensure!(args.warmup >= 0.0 && args.warmup <= 60.0, "--warmup 0 to 60 s");
    let participants = args.calls * (args.publishers + args.subscribers);
    anyhow::ensure!(
        participants + args.late_joiners <= MAX_CONNECTIONS,
        "at most {MAX_CONNECTIONS} connections in all"
    );
    for i in 0..3 {
        args.max_layer_for(i)?;
    }

    let ctx = Arc::new(Ctx::new());
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    let stop_publishing = CancellationToken::new();
    let rss_before = relay.rss_kib();
    let mut connect = stats::histogram();

    // Connect and join everyone: call c's publishers are participants c*(P+S) .. +P.
    let per_call = args.publishers + args.subscribers;
    let joins = futures_util::stream::iter(0..participants)
        .map(|i| async move {
            let call = i / per_call;
            let (client, took) = connect_one(relay, transport, i, format!("m-{i}"), CodecArg::Postcard).await?;
            client.join(&room(call)).await?;
            anyhow::Ok((i, client, took))
        })
        .buffer_unordered(args.connect_concurrency.max(1));
    tokio::pin!(joins);
    let mut clients: Vec<Option<Client>> = (0..participants).map(|_| None).collect();
    while let Some(joined) = joins.next().await {
        match joined {
            Ok((i, client, took)) => {
                stats::record(&mut connect, took);
                clients[i] = Some(client);
            }
            Err(err) => match err.downcast_ref::<ClientError>() {
                Some(err) => ctx.error(err),
                None => ctx.errors.add(format!("setup: {err}")),
            },
        }
    }
    let is_publisher = |i: usize| i % per_call < args.publishers;

    // Publish: an audio and a video track per publisher.
    let video_layers: Vec<LayerInfo> = (0..args.layers)
        .map(|l| LayerInfo {
            width: LAYER_SIZES[l].0,
            height: LAYER_SIZES[l].1,
            bitrate: args.bitrates[l].saturating_mul(1000),
        })
        .collect();
    let audio_layer = vec![LayerInfo { width: 0, height: 0, bitrate: 32_000 }];
    let mut published: HashMap<usize, Tracks> = HashMap::new();
    let mut kinds = HashMap::new();
    for (i, client) in clients.iter().enumerate() {
        let Some(client) = client.as_ref().filter(|_| is_publisher(i)) else { continue };
        let call = room(i / per_call);
        let audio = client.publish_track(&call, "mic", TrackKind::Audio, "opus", audio_layer.clone()).await;
        let video = client.publish_track(&call, "cam", TrackKind::Video, "vp8", video_layers.clone()).await;
        match (audio, video) {
            (Ok(audio), Ok(video)) => {
                kinds.insert(audio, TrackKind::Audio);
                kinds.insert(video, TrackKind::Video);
                published.insert(i, Tracks { audio, video });
            }
            (Err(err), _) | (_, Err(err)) => ctx.error(&err),
        }
    }
    let kinds: Kinds = Arc::new(kinds);
    let call_tracks = |call: usize| -> Vec<(usize, Tracks)> {
        let mut tracks: Vec<_> =
            published.iter().filter(|(i, _)| **i / per_call == call).map(|(i, t)| (*i, *t)).collect();
        tracks.sort_by_key(|(i, _)| *i);
        tracks
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_idle = relay.rss_kib();

    // Subscribe: everyone to every other participant's tracks in its call, video first.
    for (i, client) in clients.iter().enumerate() {
        let Some(client) = client else { continue };
        let max_layer = args.max_layer_for(i)?;
        for (j, tracks) in call_tracks(i / per_call) {
            if j == i {
                continue;
            }
            for (track, layer) in [(tracks.video, max_layer), (tracks.audio, 0)] {
                match client.subscribe_track(track, layer, false).await {
                    Ok(()) => {
                        ctx.subscribed_tracks.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(err) => ctx.error(&err),
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_subscribed = relay.rss_kib();

    // Start everyone: receivers, and each publisher's senders.
    let sizes = args.frame_sizes();
    for (i, client) in clients.into_iter().enumerate() {
        let Some(mut client) = client else { continue };
        let events = client.take_events();
        let (open_tx, open_rx) = mpsc::channel(16);
        let ctl = published.get(&i).map(|tracks| {
            let ctl = Arc::new(PublisherCtl {
                video: tracks.video,
                wanted: AtomicU8::new(0b111),
                keyframe: Default::default(),
            });
            let call_index = i % per_call;
            tasks.spawn(send_audio(
                call_index,
                args.publishers,
                tracks.audio,
                open_tx.clone(),
                ctx.clone(),
                stop_publishing.clone(),
            ));
            for (layer, &(key, delta)) in sizes.iter().enumerate() {
                let sender = VideoSender {
                    video: tracks.video,
                    layer: layer as u8,
                    fps: args.fps,
                    gop_frames: args.gop_frames(),
                    key_bytes: key,
                    delta_bytes: delta,
                };
                tasks.spawn(sender.run(ctl.clone(), open_tx.clone(), ctx.clone(), stop_publishing.clone()));
            }
            ctl
        });
        drop(open_tx);
        tasks.spawn(participant(client, events, open_rx, i, ctl, kinds.clone(), None, 0, ctx.clone(), cancel.clone()));
    }

    let progress_cancel = CancellationToken::new();
    let progress = show_progress.then(|| progress(ctx.clone(), relay.pid, progress_cancel.clone()));

    // Warm up, then the measured window.
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    let metrics_before = relay_metrics(relay).await;
    let cpu_before = relay.cpu();
    let own_before = crate::relay::cpu_of(std::process::id());
    let started = Instant::now();
    ctx.measuring.store(true, Ordering::Relaxed);

    // Late joiners, spread evenly over the window, calls in turn.
    let mut late = tokio::task::JoinSet::new();
    for k in 0..args.late_joiners {
        let at = started + window.mul_f64((k as f64 + 0.5) / args.late_joiners as f64);
        let call = k % args.calls;
        let tracks = call_tracks(call);
        let joiner = LateJoiner { index: participants + k, call, at, max_layer: args.max_layer_for(k)?, tracks };
        let relay_target = relay.target(transport.for_index(joiner.index))?;
        let options = relay.options(&format!("m-{}", joiner.index), transport.for_index(joiner.index), joiner.index)?;
        late.spawn(joiner.run(relay_target, options, kinds.clone(), ctx.clone(), cancel.clone(), tasks.clone()));
    }

    tokio::time::sleep(window).await;
    ctx.measuring.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = relay.cpu();
    let own_after = crate::relay::cpu_of(std::process::id());
    let rss_media = relay.rss_kib();
    let metrics_after = relay_metrics(relay).await;

    stop_publishing.cancel();
    tokio::time::sleep(Duration::from_secs_f64(args.drain.clamp(0.0, 30.0))).await;
    progress_cancel.cancel();
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    late.abort_all();
    while late.join_next().await.is_some() {}
    cancel.cancel();
    tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await;

    // Figures.
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut all = stats::histogram();
    let mut no_key = stats::histogram();
    let mut classes = Vec::new();
    for (class, name) in CLASS_NAMES.iter().enumerate() {
        let hist = ctx.latency.merged(class);
        let _ = all.add(&hist);
        if class != KEYFRAMES {
            let _ = no_key.add(&hist);
        }
        classes.push(ClassFigures {
            class: name,
            frames_sent: load(&ctx.sent[class]),
            frames_received: load(&ctx.frames[class]),
            bytes_received: load(&ctx.bytes[class]),
            latency: Latency::of(&hist),
        });
    }
    // Keyframes are counted in their layer too: totals from the other classes.
    let frames: u64 = (0..KEYFRAMES).map(|c| load(&ctx.frames[c])).sum();
    let bytes: u64 = (0..KEYFRAMES).map(|c| load(&ctx.bytes[c])).sum();
    let packets = load(&ctx.packets);
    let cpu = cpu_before.zip(cpu_after).map(|(a, b)| b.saturating_sub(a).as_secs_f64());
    let mut cancelled = BTreeMap::new();
    for reason in ["stale", "full"] {
        let name = format!("edgerelay_media_groups_cancelled_total{{reason=\"{reason}\"}}");
        if let Some(d) = delta(&metrics_before, &metrics_after, &name) {
            cancelled.insert(reason.to_owned(), d);
        }
    }
    let subscribed = load(&ctx.subscribed_tracks);
    Ok(MediaReport {
        workload: "media",
        transport,
        args: args.clone(),
        participants,
        late_joiners_joined: load(&ctx.late_joined),
        subscribed_tracks: subscribed,
        connect_latency: Latency::of(&connect),
        seconds,
        frames_per_s: frames as f64 / seconds,
        megabits_per_s: bytes as f64 * 8.0 / 1e6 / seconds,
        packets_per_s_estimated: packets as f64 / seconds,
        latency: Latency::of(&all),
        latency_without_keyframes: Latency::of(&no_key),
        classes,
        cached_frames: load(&ctx.cached_frames),
        join_first_frame: ctx.join_first_frame.latency(),
        connect_first_frame: ctx.connect_first_frame.latency(),
        first_group_not_keyframe: load(&ctx.first_not_keyframe),
        groups_received: load(&ctx.groups_received),
        groups_reset_seen: load(&ctx.groups_reset),
        frames_missing: load(&ctx.frames_missing),
        relay_groups_cancelled: cancelled,
        relay_frames_in: delta(&metrics_before, &metrics_after, "edgerelay_media_frames_in_total"),
        keyframe_requests: load(&ctx.keyframe_requests),
        keyframes_forced: load(&ctx.keyframes_forced),
        layers_wanted_changes: load(&ctx.layers_wanted),
        layer_switches: load(&ctx.layer_switches),
        relay_cpu_seconds: cpu,
        relay_cpu_s_per_million_frames: cpu.filter(|_| frames > 0).map(|c| c * 1e6 / frames as f64),
        relay_cpu_s_per_gbit: cpu.filter(|_| bytes > 0).map(|c| c / (bytes as f64 * 8.0 / 1e9)),
        relay_cpu_us_per_packet_estimated: cpu.filter(|_| packets > 0).map(|c| c * 1e6 / packets as f64),
        generator_cpu_seconds: own_before.zip(own_after).map(|(a, b)| b.saturating_sub(a).as_secs_f64()),
        relay_rss_kib_before: rss_before,
        relay_rss_kib_idle: rss_idle,
        relay_rss_kib_subscribed: rss_subscribed,
        relay_rss_kib_media: rss_media,
        relay_kib_per_subscribed_track: rss_idle
            .zip(rss_media)
            .filter(|_| subscribed > 0)
            .map(|(idle, media)| (media as f64 - idle as f64) / subscribed as f64),
        errors: ctx.errors.snapshot(),
    })
}

/// One connection's life after setup: reads forwarded media (timing and counting every
/// frame), reads call events (a publisher's `keyframe_request` and `layers_wanted` go to its
/// senders), and opens group streams for its senders.
#[allow(clippy::too_many_arguments)]
async fn participant(
    mut client: Client,
    mut events: mpsc::Receiver<Event>,
    mut opens: mpsc::Receiver<OpenRequest>,
    who: usize,
    ctl: Option<Arc<PublisherCtl>>,
    kinds: Kinds,
    mut first: Option<FirstFrames>,
    joined_ns: u64,
    ctx: Arc<Ctx>,
    cancel: CancellationToken,
) {
    let mut groups: HashMap<(TrackId, u64), GroupSeen> = HashMap::new();
    let mut layers: HashMap<(TrackId, usize), LayerSeen> = HashMap::new();
    let mut events_open = true;
    let cancelled = cancel.cancelled();
    tokio::pin!(cancelled);
    loop {
        tokio::select! {
            _ = &mut cancelled => break,
            Some(request) = opens.recv() => {
                let opened = client.open_group(request.header, request.kind).await;
                let _ = request.reply.send(opened);
            }
            media = client.next_media() => match media {
                Some(MediaEvent::Group(h)) => {
                    let class = match kinds.get(&h.track) {
                        Some(TrackKind::Audio) => AUDIO,
                        _ => 1 + usize::from(h.layer.min(2)),
                    };
                    if let Some(first) = &first
                        && first.pending.contains_key(&h.track)
                        && !h.keyframe()
                    {
                        ctx.first_not_keyframe.fetch_add(1, Ordering::Relaxed);
                    }
                    if ctx.measuring() {
                        ctx.groups_received.fetch_add(1, Ordering::Relaxed);
                    }
                    groups.insert((h.track, h.group), GroupSeen { class, keyframe: h.keyframe(), frames: 0 });
                }
                Some(MediaEvent::Frame { track, group, frame }) => {
                    let now = now_ns();
                    let Some(seen) = groups.get_mut(&(track, group)) else {
                        ctx.errors.add("frame_without_group");
                        continue;
                    };
                    let keyframe = seen.keyframe && seen.frames == 0;
                    seen.frames += 1;
                    let class = seen.class;
                    if let Some(first) = &mut first
                        && let Some(at) = first.pending.remove(&track)
                    {
                        ctx.join_first_frame.record(Duration::from_nanos(now.saturating_sub(at)));
                        ctx.connect_first_frame.record(Duration::from_nanos(now.saturating_sub(first.connect_ns)));
                    }
                    let Some(stamp) = read_stamp(&frame.payload) else {
                        ctx.errors.add("short_frame");
                        continue;
                    };
                    let sent = stamp.sent_ns;
                    let missing = layers.entry((track, class)).or_default().frame(&stamp);
                    ctx.live.fetch_add(1, Ordering::Relaxed);
                    if !ctx.measuring() {
                        continue;
                    }
                    ctx.frames_missing.fetch_add(missing, Ordering::Relaxed);
                    let len = frame.wire.len();
                    ctx.frames[class].fetch_add(1, Ordering::Relaxed);
                    ctx.bytes[class].fetch_add(len as u64, Ordering::Relaxed);
                    ctx.packets.fetch_add(len.div_ceil(PACKET_STREAM_BYTES) as u64, Ordering::Relaxed);
                    if keyframe {
                        ctx.frames[KEYFRAMES].fetch_add(1, Ordering::Relaxed);
                        ctx.bytes[KEYFRAMES].fetch_add(len as u64, Ordering::Relaxed);
                    }
                    if sent < joined_ns {
                        ctx.cached_frames.fetch_add(1, Ordering::Relaxed);
                    } else {
                        ctx.latency.record(who, if keyframe { KEYFRAMES } else { class }, now.saturating_sub(sent));
                    }
                }
                Some(MediaEvent::End { track, group, reset }) => {
                    groups.remove(&(track, group));
                    if reset.is_some() && ctx.measuring() {
                        ctx.groups_reset.fetch_add(1, Ordering::Relaxed);
                    }
                }
                None => break,
            },
            event = events.recv(), if events_open => match event {
                Some(Event::Call(ServerFrame::KeyframeRequest { track, layer })) => {
                    ctx.keyframe_requests.fetch_add(1, Ordering::Relaxed);
                    if let Some(ctl) = ctl.as_ref().filter(|c| c.video == track)
                        && let Some(flag) = ctl.keyframe.get(usize::from(layer))
                    {
                        flag.store(true, Ordering::Relaxed);
                    }
                }
                Some(Event::Call(ServerFrame::LayersWanted { track, layers })) => {
                    ctx.layers_wanted.fetch_add(1, Ordering::Relaxed);
                    if let Some(ctl) = ctl.as_ref().filter(|c| c.video == track) {
                        ctl.wanted.store(layers, Ordering::Relaxed);
                    }
                }
                Some(Event::Call(ServerFrame::Layer { .. })) => {
                    ctx.layer_switches.fetch_add(1, Ordering::Relaxed);
                }
                Some(Event::Closed { code, reason }) => {
                    ctx.error(&ClientError::Closed { code, reason });
                    break;
                }
                Some(Event::Error { code, .. }) => ctx.errors.add(code.slug()),
                Some(_) => {}
                None => events_open = false,
            },
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.close()).await;
}

/// Asks the participant's task for a group stream.
async fn open_group(
    opens: &mpsc::Sender<OpenRequest>,
    header: GroupHeader,
    kind: TrackKind,
) -> Result<GroupWriter, ClientError> {
    let (reply, answer) = oneshot::channel();
    let gone = || ClientError::Closed { code: None, reason: "participant gone".into() };
    opens.send(OpenRequest { header, kind, reply }).await.map_err(|_| gone())?;
    answer.await.map_err(|_| gone())?
}

/// Bytes of the header every frame's payload starts with: send time (ns, u64), the publisher's
/// group number (u64), the frame's index in its group (u32), and the number of frames the
/// publisher sent in its previous group of this layer (u32, `u32::MAX` for none), little-endian.
/// A subscriber that received the previous group counts what of it never arrived.
const PAYLOAD_HEADER: usize = 24;

/// Writes the header into a frame's payload (zeros after it), the send time last.
fn stamp(buf: &mut [u8], group: u64, index: u32, previous: Option<u32>) {
    buf[8..16].copy_from_slice(&group.to_le_bytes());
    buf[16..20].copy_from_slice(&index.to_le_bytes());
    buf[20..24].copy_from_slice(&previous.unwrap_or(u32::MAX).to_le_bytes());
    buf[..8].copy_from_slice(&now_ns().to_le_bytes());
}

/// A frame's header (see [`stamp`]).
struct Stamp {
    sent_ns: u64,
    group: u64,
    index: u32,
    previous: Option<u32>,
}

fn read_stamp(payload: &[u8]) -> Option<Stamp> {
    let head = payload.get(..PAYLOAD_HEADER)?;
    let previous = u32::from_le_bytes(head[20..24].try_into().ok()?);
    Some(Stamp {
        sent_ns: u64::from_le_bytes(head[..8].try_into().ok()?),
        group: u64::from_le_bytes(head[8..16].try_into().ok()?),
        index: u32::from_le_bytes(head[16..20].try_into().ok()?),
        previous: (previous != u32::MAX).then_some(previous),
    })
}

/// What a participant received of one publisher layer's latest group: the publisher's group
/// number and the frames of it that arrived.
#[derive(Default)]
struct LayerSeen {
    group: u64,
    frames: u32,
}

impl LayerSeen {
    /// A frame arrived; returns the frames that should have arrived before it and did not.
    fn frame(&mut self, stamp: &Stamp) -> u64 {
        if stamp.group == self.group && self.frames > 0 {
            let missing = stamp.index.saturating_sub(self.frames);
            self.frames = stamp.index + 1;
            return u64::from(missing);
        }
        // A new group: what the previous one lacked, when this participant received it.
        let mut missing = 0;
        if stamp.index == 0
            && self.frames > 0
            && stamp.group == self.group + 1
            && let Some(previous) = stamp.previous
        {
            missing = u64::from(previous.saturating_sub(self.frames));
        }
        self.group = stamp.group;
        self.frames = stamp.index + 1;
        missing
    }
}

/// The audio track: a frame every 20 ms, 5 to a group. The call's publishers take turns
/// speaking, 5 s each (RFC 6464: voice activity bit and a loud level); the others are quiet.
async fn send_audio(
    call_index: usize,
    publishers: usize,
    track: TrackId,
    opens: mpsc::Sender<OpenRequest>,
    ctx: Arc<Ctx>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(AUDIO_FRAME_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let started = Instant::now();
    let mut buf = [0u8; AUDIO_FRAME_BYTES];
    let mut group: Option<GroupWriter> = None;
    let (mut seq, mut in_group, mut frame_no) = (0u64, 0u32, 0u64);
    let mut previous: Option<u32> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if group.is_none() {
            seq += 1;
            match open_group(&opens, GroupHeader { track, layer: 0, group: seq, flags: 0 }, TrackKind::Audio).await {
                Ok(writer) => group = Some(writer),
                Err(err) => {
                    ctx.error(&err);
                    previous = None;
                    continue;
                }
            }
            in_group = 0;
        }
        let speaking = (started.elapsed().as_secs() / 5) as usize % publishers == call_index;
        let level = if speaking { 0x80 | 20 } else { 100 };
        frame_no += 1;
        stamp(&mut buf, seq, in_group, previous);
        let Some(writer) = group.as_mut() else { continue };
        if let Err(err) = writer.frame(frame_no * AUDIO_FRAME_MS * 1000, level, &buf).await {
            ctx.error(&err);
            group = None;
            previous = None;
            continue;
        }
        if ctx.measuring() {
            ctx.sent[AUDIO].fetch_add(1, Ordering::Relaxed);
        }
        in_group += 1;
        if in_group >= AUDIO_GROUP_FRAMES
            && let Some(writer) = group.take()
        {
            writer.finish();
            previous = Some(in_group);
        }
    }
    if let Some(writer) = group {
        writer.finish();
    }
}

/// One video layer of a publisher: a frame per 1/fps, a group per GOP starting with a
/// keyframe, a new group at once (at most once a second) for a `keyframe_request`, nothing
/// while nobody receives the layer.
struct VideoSender {
    video: TrackId,
    layer: u8,
    fps: u32,
    gop_frames: u32,
    key_bytes: usize,
    delta_bytes: usize,
}

impl VideoSender {
    async fn run(
        self,
        ctl: Arc<PublisherCtl>,
        opens: mpsc::Sender<OpenRequest>,
        ctx: Arc<Ctx>,
        stop: CancellationToken,
    ) {
        let layer = usize::from(self.layer);
        let period = Duration::from_secs_f64(1.0 / f64::from(self.fps));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = vec![0u8; self.key_bytes.max(self.delta_bytes).max(PAYLOAD_HEADER)];
        let mut group: Option<GroupWriter> = None;
        let (mut seq, mut in_group, mut frame_no) = (0u64, 0u32, 0u64);
        // Frames of the previous group, when it was sent whole and this group follows it.
        let mut previous: Option<u32> = None;
        let mut last_forced: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            frame_no += 1;
            if ctl.wanted.load(Ordering::Relaxed) & (1 << self.layer) == 0 {
                // Paused: the next frame sent starts a new group with a keyframe.
                if let Some(writer) = group.take() {
                    writer.finish();
                }
                previous = None;
                continue;
            }
            let requested = ctl.keyframe[layer].swap(false, Ordering::Relaxed);
            let forced = requested && last_forced.is_none_or(|at| at.elapsed() >= FORCED_KEYFRAME_EVERY);
            if forced {
                last_forced = Some(Instant::now());
                ctx.keyframes_forced.fetch_add(1, Ordering::Relaxed);
            }
            let key = group.is_none() || in_group >= self.gop_frames || forced;
            if key {
                if let Some(writer) = group.take() {
                    writer.finish();
                    previous = Some(in_group);
                }
                seq += 1;
                let header = GroupHeader { track: self.video, layer: self.layer, group: seq, flags: FLAG_KEYFRAME };
                match open_group(&opens, header, TrackKind::Video).await {
                    Ok(writer) => group = Some(writer),
                    Err(err) => {
                        ctx.error(&err);
                        previous = None;
                        continue;
                    }
                }
                in_group = 0;
            }
            let size = if key { self.key_bytes } else { self.delta_bytes }.max(PAYLOAD_HEADER);
            let payload = &mut buf[..size];
            stamp(payload, seq, in_group, previous.take().filter(|_| in_group == 0));
            let Some(writer) = group.as_mut() else { continue };
            let timestamp_us = frame_no * 1_000_000 / u64::from(self.fps);
            if let Err(err) = writer.frame(timestamp_us, 0, payload).await {
                ctx.error(&err);
                group = None;
                previous = None;
                continue;
            }
            in_group += 1;
            if ctx.measuring() {
                ctx.sent[1 + layer].fetch_add(1, Ordering::Relaxed);
                if key {
                    ctx.sent[KEYFRAMES].fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(writer) = group {
            writer.finish();
        }
    }
}

/// A subscriber that joins while the call is underway.
struct LateJoiner {
    index: usize,
    call: usize,
    at: Instant,
    max_layer: u8,
    tracks: Vec<(usize, Tracks)>,
}

impl LateJoiner {
    async fn run(
        self,
        target: edgerelay::client::Target,
        options: edgerelay::client::ClientOptions,
        kinds: Kinds,
        ctx: Arc<Ctx>,
        cancel: CancellationToken,
        tasks: TaskTracker,
    ) {
        let wait = self.at.saturating_duration_since(Instant::now());
        if !sleep_or_cancel(wait, &cancel).await {
            return;
        }
        let connect_ns = now_ns();
        let connected = tokio::time::timeout(Duration::from_secs(10), Client::connect(target, options)).await;
        let mut client = match connected {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => return ctx.error(&err),
            Err(_) => return ctx.errors.add("late_connect_timeout"),
        };
        if let Err(err) = client.join(&room(self.call)).await {
            return ctx.error(&err);
        }
        let events = client.take_events();
        let joined_ns = now_ns();
        let mut pending = HashMap::new();
        for (_, tracks) in &self.tracks {
            let at = now_ns();
            match client.subscribe_track(tracks.video, self.max_layer, false).await {
                Ok(()) => {
                    pending.insert(tracks.video, at);
                    ctx.subscribed_tracks.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => ctx.error(&err),
            }
        }
        for (_, tracks) in &self.tracks {
            match client.subscribe_track(tracks.audio, 0, false).await {
                Ok(()) => {
                    ctx.subscribed_tracks.fetch_add(1, Ordering::Relaxed);
                }
                Err(err) => ctx.error(&err),
            }
        }
        ctx.late_joined.fetch_add(1, Ordering::Relaxed);
        let (_open_tx, open_rx) = mpsc::channel(1);
        let first = FirstFrames { connect_ns, pending };
        // The rest of its life on the run's tracker, so teardown waits for it.
        tasks.spawn(participant(client, events, open_rx, self.index, None, kinds, Some(first), joined_ns, ctx, cancel));
    }
}

fn progress(ctx: Arc<Ctx>, relay_pid: Option<u32>, cancel: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let cpu = |pid: Option<u32>| crate::relay::cpu_of(pid?).map(|d| d.as_millis() as u64 / 10);
        let mut last = (0u64, cpu(relay_pid));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.tick().await;
        // Bounded by the run: cancelled after the drain.
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = (ctx.live.load(Ordering::Relaxed), cpu(relay_pid));
            let relay_cpu = match (last.1, now.1) {
                (Some(a), Some(b)) => format!("{}%", b.saturating_sub(a)),
                _ => "-".into(),
            };
            eprintln!(
                "[{:>4}s] frames received {:>7}/s  {}  late joined {:>4}  relay cpu {relay_cpu}",
                started.elapsed().as_secs(),
                now.0 - last.0,
                if ctx.measuring() { "measuring" } else { "         " },
                ctx.late_joined.load(Ordering::Relaxed),
            );
            last = now;
        }
    })
}

pub fn table(r: &MediaReport) -> String {
    let a = &r.args;
    let opt = |v: Option<f64>, d: usize| stats::fmt_opt(v, d);
    let kib = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
    let mut out = stats::table(
        &format!("media over {:?}", r.transport),
        &[
            (
                "shape".into(),
                format!(
                    "{} calls x ({} publishers + {} subscribers), {} layers at {:?} kbit/s, {} fps, {} s GOP, max layer {}, {} late joiners",
                    a.calls,
                    a.publishers,
                    a.subscribers,
                    a.layers,
                    &a.bitrates[..a.layers.min(a.bitrates.len())],
                    a.fps,
                    a.gop,
                    a.max_layer,
                    a.late_joiners
                ),
            ),
            ("participants".into(), format!("{} (+{} late joined)", r.participants, r.late_joiners_joined)),
            ("subscribed tracks".into(), r.subscribed_tracks.to_string()),
            ("connect".into(), r.connect_latency.line()),
            (
                "forwarded".into(),
                format!(
                    "{:.0} frames/s, {:.1} Mbit/s, ~{:.0} packets/s (estimated) over {:.1} s",
                    r.frames_per_s, r.megabits_per_s, r.packets_per_s_estimated, r.seconds
                ),
            ),
            ("latency, all frames".into(), r.latency.line()),
            ("latency, no keyframes".into(), r.latency_without_keyframes.line()),
            ("join → first frame".into(), r.join_first_frame.line()),
            ("connect → first frame".into(), r.connect_first_frame.line()),
            (
                "relay CPU".into(),
                format!(
                    "{} s: {} CPU-s per million frames, {} CPU-s per Gbit, {} µs per packet (estimated)",
                    opt(r.relay_cpu_seconds, 2),
                    opt(r.relay_cpu_s_per_million_frames, 2),
                    opt(r.relay_cpu_s_per_gbit, 3),
                    opt(r.relay_cpu_us_per_packet_estimated, 2)
                ),
            ),
            ("generator CPU".into(), format!("{} s", opt(r.generator_cpu_seconds, 2))),
            (
                "relay RSS".into(),
                format!(
                    "{} KiB before, {} idle, {} subscribed, {} with media: {} KiB per subscribed track",
                    kib(r.relay_rss_kib_before),
                    kib(r.relay_rss_kib_idle),
                    kib(r.relay_rss_kib_subscribed),
                    kib(r.relay_rss_kib_media),
                    opt(r.relay_kib_per_subscribed_track, 1)
                ),
            ),
            (
                "groups".into(),
                format!(
                    "{} received, {} reset seen, {} frames missing; relay cancelled {:?}; first group not a keyframe {}",
                    r.groups_received,
                    r.groups_reset_seen,
                    r.frames_missing,
                    r.relay_groups_cancelled,
                    r.first_group_not_keyframe
                ),
            ),
            (
                "publisher signals".into(),
                format!(
                    "{} keyframe requests, {} keyframes forced, {} layers_wanted, {} layer switches",
                    r.keyframe_requests, r.keyframes_forced, r.layers_wanted_changes, r.layer_switches
                ),
            ),
            ("cached frames (late joiners)".into(), r.cached_frames.to_string()),
            ("relay frames in".into(), opt(r.relay_frames_in, 0)),
            ("errors".into(), format!("{:?}", r.errors)),
        ],
    );
    out.push_str(&format!(
        "\n{:<10} {:>10} {:>10} {:>12} {:>8} {:>8} {:>8} {:>8}\n",
        "class", "sent", "received", "bytes", "p50 ms", "p99 ms", "p99.9", "max ms"
    ));
    for c in &r.classes {
        out.push_str(&format!(
            "{:<10} {:>10} {:>10} {:>12} {:>8.2} {:>8.2} {:>8.2} {:>8.2}\n",
            c.class,
            c.frames_sent,
            c.frames_received,
            c.bytes_received,
            c.latency.p50_ms,
            c.latency.p99_ms,
            c.latency.p999_ms,
            c.latency.max_ms
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> MediaArgs {
        MediaArgs {
            calls: 1,
            publishers: 1,
            subscribers: 1,
            layers: 3,
            bitrates: vec![150, 500, 1500],
            fps: 30,
            gop: 2.0,
            keyframe_ratio: 8.0,
            max_layer: "2".into(),
            late_joiners: 0,
            warmup: 0.0,
            drain: 0.0,
            connect_concurrency: 1,
        }
    }

    #[test]
    fn a_gop_carries_its_layers_bitrate_with_a_keyframe_eight_frames_big() {
        let a = args();
        for ((key, delta), kbps) in a.frame_sizes().into_iter().zip([150u32, 500, 1500]) {
            let gop_bytes = key + delta * (a.gop_frames() as usize - 1);
            let bitrate = gop_bytes as f64 * 8.0 / a.gop;
            assert!((bitrate / (f64::from(kbps) * 1000.0) - 1.0).abs() < 0.01, "{bitrate} for {kbps}");
            let average = gop_bytes as f64 / f64::from(a.gop_frames());
            assert!((key as f64 / average - 8.0).abs() < 0.1);
        }
    }

    #[test]
    fn missing_frames_are_counted_inside_a_group_and_at_its_end() {
        let at = |group, index, previous| Stamp { sent_ns: 0, group, index, previous };
        let mut seen = LayerSeen::default();
        assert_eq!(seen.frame(&at(4, 3, None)), 0, "joined mid-group: nothing owed before");
        assert_eq!(seen.frame(&at(4, 4, None)), 0);
        assert_eq!(seen.frame(&at(4, 7, None)), 2, "5 and 6 never came");
        assert_eq!(seen.frame(&at(5, 0, Some(10))), 2, "8 and 9 of group 4 never came");
        assert_eq!(seen.frame(&at(5, 1, None)), 0);
        assert_eq!(seen.frame(&at(9, 0, Some(3))), 0, "groups 6-8 not received: nothing owed");
        let mut buf = [0u8; PAYLOAD_HEADER];
        stamp(&mut buf, 7, 2, Some(60));
        let back = read_stamp(&buf).unwrap();
        assert_eq!((back.group, back.index, back.previous), (7, 2, Some(60)));
        stamp(&mut buf, 7, 0, None);
        assert_eq!(read_stamp(&buf).unwrap().previous, None);
    }

    #[test]
    fn max_layer_mix_rotates_within_the_layers() {
        let mut a = args();
        a.max_layer = "mix".into();
        assert_eq!((0..4).map(|i| a.max_layer_for(i).unwrap()).collect::<Vec<_>>(), [0, 1, 2, 0]);
        a.layers = 2;
        assert_eq!(a.max_layer_for(2).unwrap(), 1);
        a.max_layer = "3".into();
        assert!(a.max_layer_for(0).is_err());
    }
}
