//! QUIC against WebSocket under every netsim profile, through the packet-level emulator (so TCP
//! and UDP lose the same packets): message delivery latency p50/p95/p99 with several rooms
//! active on one connection, which is where TCP's head-of-line blocking shows. A relay in the
//! emulator's server namespace; a publisher and a subscriber (joined to every room) in the
//! client namespace, so each message crosses the emulated link twice. The publisher sends one
//! message every `PACE`, round robin over the rooms, without waiting for acks; latency is from
//! the publish call to the subscriber holding the message (one process, one clock).
//!
//! Prints a table and draws `netsim-profiles.png` (or `$NETSIM_CHART`): p50 and p99 per
//! profile and transport, log scale. Needs root and /dev/net/tun; prints SKIPPED otherwise.
//!
//! On a profile with blackouts (`train`) QUIC also runs a second time with the clients told when
//! the network is back (`Client::network_changed()`, called as soon as the emulator's blackout
//! ends, as a phone's path monitor would): "QUIC+hook".
//!
//! Run: `cargo bench -p netsim --bench profiles` (about 3 minutes); `NETSIM_PROFILES=train,4g`
//! runs only those profiles. Results: `docs/performance.md`.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Transport;
use edgerelay::client::{ClientOptions, QuicEndpoint};
use edgerelay::proto::Payload;
use netsim::Profile;
use netsim::ns::{Emulator, Side, can_emulate};
use plotters::prelude::*;
use plotters::style::FontStyle;

const ROOMS: usize = 4;
const MESSAGES: usize = 200;
const PACE: Duration = Duration::from_millis(20);
const FONTS: [&str; 2] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
];

struct Run {
    profile: String,
    transport: Transport,
    /// Whether the clients were told when the network came back.
    hook: bool,
    /// Sorted latencies of the messages received.
    latencies: Vec<Duration>,
    /// Sorted latencies of the typing changes seen, and how many were never seen.
    typing: Vec<Duration>,
    typing_lost: usize,
}

impl Run {
    fn quantile(&self, q: f64) -> Duration {
        quantile(&self.latencies, q)
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Typing changes per run: start and stop in turn, each sent once (as a QUIC datagram, or
/// coalesced on the WebSocket) and waited for at the watcher.
const TOGGLES: usize = 20;
/// A change not shown by then counts as lost (the next change supersedes it anyway).
const TYPING_WAIT: Duration = Duration::from_secs(3);

fn main() {
    if let Err(why) = can_emulate() {
        println!("SKIPPED: the namespace emulator {why}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    println!("{ROOMS} rooms on one connection, {MESSAGES} messages of ~100 B, one every {PACE:?}");
    println!(
        "{:>14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>11} {:>11} {:>11}",
        "profile", "transport", "received", "p50", "p95", "p99", "max", "typing p50", "typing p95", "typing lost"
    );
    let only: Option<Vec<String>> =
        std::env::var("NETSIM_PROFILES").ok().map(|names| names.split(',').map(str::to_owned).collect());
    let mut runs = Vec::new();
    for (i, profile) in Profile::all().into_iter().enumerate() {
        if only.as_ref().is_some_and(|names| !names.contains(&profile.name)) {
            continue;
        }
        let with_hook = profile.blackouts != netsim::Blackouts::none();
        let variants = [(Transport::Quic, false), (Transport::WebSocket, false)]
            .into_iter()
            .chain(with_hook.then_some((Transport::Quic, true)));
        for (transport, hook) in variants {
            let run = runtime.block_on(run(profile.clone(), transport, hook, 500 + i as u64));
            println!(
                "{:>14} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} | {:>11} {:>11} {:>8}/{TOGGLES}",
                run.profile,
                format!("{transport:?}{}", if hook { "+hook" } else { "" }),
                run.latencies.len(),
                ms(run.quantile(0.50)),
                ms(run.quantile(0.95)),
                ms(run.quantile(0.99)),
                ms(run.quantile(1.0)),
                ms(quantile(&run.typing, 0.50)),
                ms(quantile(&run.typing, 0.95)),
                run.typing_lost,
            );
            runs.push(run);
        }
    }
    let path = std::env::var("NETSIM_CHART").unwrap_or_else(|_| "netsim-profiles.png".into());
    match chart(&runs, std::path::Path::new(&path)) {
        Ok(()) => println!("chart: {path}"),
        Err(err) => println!("no chart: {err}"),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

async fn run(profile: Profile, transport: Transport, hook: bool, seed: u64) -> Run {
    let name = profile.name.clone();
    let blackouts = profile.blackouts.clone();
    let emulator = Emulator::start(profile, seed).expect("emulator");
    // This thread in the client namespace throughout: sockets the clients make later (a stall
    // probe's, the hook's) are made there.
    let _client_side = emulator.enter(Side::Client).expect("client side");
    let started = Instant::now();
    let server = emulator.addr(Side::Server);
    let relay = {
        let _inside = emulator.enter(Side::Server).expect("server side");
        common::start_with(|config| {
            config.listen.udp = SocketAddr::from((server, 0));
            config.listen.tcp = SocketAddr::from((server, 0));
            config.limits.publish_rate = 100_000;
            config.limits.publish_burst = 100_000;
            config.presence.rate = 1_000;
            config.presence.burst = 1_000;
        })
        .await
    };
    let rooms: Vec<String> = (0..ROOMS).map(|r| format!("room-{r}")).collect();
    let (mut subscriber, publisher, endpoint) = {
        let _inside = emulator.enter(Side::Client).expect("client side");
        let target = relay.target(transport);
        // With the hook both clients share one endpoint, which the hook moves.
        let endpoint = hook.then(|| QuicEndpoint::bind([0, 0, 0, 0].into()).expect("endpoint"));
        let shared = |options: ClientOptions| match &endpoint {
            Some(endpoint) => options.quic_endpoint(endpoint.clone()),
            None => options,
        };
        let subscriber =
            support::connect_with(&relay, transport, target.clone(), "sub", "room-*", shared).await.expect("sub");
        let publisher = support::connect_with(&relay, transport, target, "pub", "room-*", shared).await.expect("pub");
        (subscriber, publisher, endpoint)
    };
    for room in &rooms {
        subscriber.join(room).await.expect("join");
    }
    let base = Instant::now();
    let publisher = std::sync::Arc::new(publisher);
    // The phone's path monitor: when a blackout ends, the clients' endpoint moves to a new
    // socket (made in the client namespace, where this thread goes for the call).
    let mut monitor = Box::pin(async {
        let Some(endpoint) = &endpoint else { return std::future::pending().await };
        let mut dark = false;
        loop {
            let now = blackouts.active(started.elapsed()).is_some();
            if dark && !now {
                let _inside = emulator.enter(Side::Client).expect("client side");
                endpoint.network_changed().expect("new socket");
            }
            dark = now;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let mut acks = tokio::task::JoinSet::new();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(MESSAGES);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while latencies.len() < MESSAGES {
            let Ok(Ok(message)) = tokio::time::timeout_at(deadline, subscriber.next_message()).await else { break };
            let sent = serde_json::from_slice::<serde_json::Value>(&message.data.0)
                .ok()
                .and_then(|v| v["sent"].as_u64())
                .unwrap_or(0);
            latencies.push(base.elapsed().saturating_sub(Duration::from_nanos(sent)));
        }
        (subscriber, latencies)
    });
    let work = async {
        let mut tick = tokio::time::interval(PACE);
        for i in 0..MESSAGES {
            tick.tick().await;
            let room = rooms[i % ROOMS].clone();
            let publisher = publisher.clone();
            let sent = base.elapsed().as_nanos() as u64;
            let data = Payload::json(&serde_json::json!({ "sent": sent, "pad": "x".repeat(64) }));
            acks.spawn(async move { publisher.publish(&room, &format!("m{i}"), data).await.is_ok() });
        }
        acks.join_all().await;
        reader.await.expect("reader")
    };
    let (subscriber, mut latencies) = tokio::select! {
        done = work => done,
        () = &mut monitor => unreachable!("the monitor runs until the work is done"),
    };
    drop(monitor);
    latencies.sort();
    let (typing, typing_lost) = typing_changes(&publisher, &subscriber, &rooms[0]).await;
    subscriber.close().await;
    relay.relay.shutdown().await;
    emulator.shutdown().await;
    Run { profile: name, transport, hook, latencies, typing, typing_lost }
}

/// The publisher types and stops in turn in `room`; how long until the subscriber shows each
/// change, and how many it never showed within `TYPING_WAIT`.
async fn typing_changes(
    typist: &edgerelay::client::Client,
    watcher: &edgerelay::client::Client,
    room: &str,
) -> (Vec<Duration>, usize) {
    let me = watcher.welcome().user.clone();
    // Typing counts only in a joined room.
    if typist.join(room).await.is_err() {
        return (Vec::new(), TOGGLES);
    }
    let (mut seen, mut lost) = (Vec::new(), 0);
    for k in 0..TOGGLES {
        let typing = k % 2 == 0;
        let sent = Instant::now();
        if typist.typing(room, typing).await.is_err() {
            lost += 1;
            continue;
        }
        let shown =
            watcher.wait_presence(room, TYPING_WAIT, |v, now| v.typing_text(&me, now).is_empty() != typing).await;
        if shown {
            seen.push(sent.elapsed());
        } else {
            lost += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen.sort();
    (seen, lost)
}

fn chart(runs: &[Run], path: &std::path::Path) -> Result<(), String> {
    let font = FONTS.iter().map(std::path::Path::new).find(|p| p.exists()).ok_or("no TrueType font found")?;
    let bytes: &'static [u8] = Box::leak(std::fs::read(font).map_err(|e| e.to_string())?.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| "unusable font")?;
    let profiles: Vec<&str> = runs.iter().map(|r| r.profile.as_str()).fold(Vec::new(), |mut names, name| {
        if !names.contains(&name) {
            names.push(name);
        }
        names
    });
    let to_ms = |d: Duration| (d.as_secs_f64() * 1000.0).max(0.1);
    let y_max = runs.iter().map(|r| to_ms(r.quantile(0.99))).fold(1.0, f64::max) * 2.0;
    let root = BitMapBackend::new(path, (1100, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "edgerelay delivery latency by netsim profile ({ROOMS} rooms per connection, packet-level emulator)"
            ),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(-0.5..profiles.len() as f64 - 0.5, (0.1..y_max).log_scale())
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .x_labels(profiles.len())
        .x_label_formatter(&|x| profiles.get(x.round() as usize).map(|p| p.to_string()).unwrap_or_default())
        .y_desc("publish to delivery (ms, log)")
        .draw()
        .map_err(|e| e.to_string())?;
    let series = [
        (Transport::Quic, 0.50, "QUIC p50", BLUE, -0.12),
        (Transport::Quic, 0.99, "QUIC p99", BLUE, -0.12),
        (Transport::WebSocket, 0.50, "WebSocket p50", RED, 0.12),
        (Transport::WebSocket, 0.99, "WebSocket p99", RED, 0.12),
    ];
    for (transport, q, label, color, shift) in series {
        let points: Vec<(f64, f64)> = runs
            .iter()
            .filter(|r| r.transport == transport && !r.hook)
            .filter_map(|r| {
                profiles.iter().position(|p| *p == r.profile).map(|x| (x as f64 + shift, to_ms(r.quantile(q))))
            })
            .collect();
        let style = if q > 0.5 { color.filled() } else { color.stroke_width(2) };
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 6, style)))
            .map_err(|e| e.to_string())?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 6, style));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
