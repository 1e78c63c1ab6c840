//! `edgerelay-load`: drives a relay on loopback over raw QUIC, WebTransport, WebSocket or a mix,
//! with the project's Rust client, and reports what it measured: deliveries per second,
//! completeness (every published message accounted for at every subscriber), publish-to-
//! delivery latency from an HDR histogram, connect time, the relay process's CPU per million
//! deliveries and RSS per connection (from /proc), errors by code.
//!
//! By default it starts the `edgerelay` binary beside it in its own process with a temporary
//! data directory, so the relay's CPU and memory are its own; `--quic`/`--ws` point it at a
//! relay already running instead.
//!
//! ```text
//! edgerelay-load --transport ws --duration 10 fanout --subscribers 1000 --rooms 10 --rate 1000
//! edgerelay-load --transport quic step --rate 500 --factor 1.5 --half --chart step.png
//! edgerelay-load --transport ws idle --connections 2000
//! edgerelay-load --transport mix churn --rate 200 --hold-ms 500
//! edgerelay-load --transport mix --duration 10 bigroom --subscribers 5000 --rate 5
//! edgerelay-load --transport ws --duration 5 storm --connections 2000 --rounds 3
//! edgerelay-load --transport quic --duration 10 presence --users 1000 --rooms 100 --rate 1
//! edgerelay-load --transport quic --duration 10 media --calls 1 --publishers 1 --subscribers 200 --layers 3
//! edgerelay-load --transport mix calls --calls 500 --rounds 3
//! edgerelay-load --transport quic --duration 10 sessions --users 100 --rate 5
//! edgerelay-load --transport ws --duration 10 events --subscribers 100 --rate 500 [--sse]
//! edgerelay-load --transport mix soak --seconds 3600 --rate 20 --churn-rate 5
//! ```
//!
//! `bigroom` is fanout with one room (a preset, the same code); `storm` drops N connections at
//! once, --rounds times, and checks that each resumes its rooms exactly; `presence` is a
//! typing and status storm timed at the other members' views; `media` is calls of the SFU-lite
//! media plane (publishers of audio and simulcast video, subscribers, late joiners); `calls` is a
//! call storm of 1:1 calls (N set up and torn down at once), timing ring and connect.
//!
//! Every loop is bounded in count and time: --duration is capped at 600 s, connections at
//! 20,000, steps at 30, storms at 20 (each cut short after --storm-timeout); the drain after
//! publishing waits at most --drain seconds.

mod calls;
mod chart;
mod conns;
mod events;
mod fanout;
mod media;
mod presence;
mod relay;
mod sessions;
mod soak;
mod stats;
mod storm;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

use relay::{RelayArgs, RelayUnderTest, TransportChoice};

/// Load generator for edgerelay: fanout, one big room, step (highest sustainable rate), idle
/// connections, connection churn, reconnect storms, presence/typing storms and media calls,
/// against a relay on loopback.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(flatten)]
    relay: RelayArgs,
    /// Transport of every connection; `mix` rotates QUIC, WebSocket and WebTransport.
    #[arg(long, value_enum, default_value = "quic")]
    transport: TransportChoice,
    /// Seconds of load: the publishing window (per step in step mode), the idle hold, the churn
    /// window, the steady publishing before each storm, the presence updates. At most 600.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Write the JSON summary here (`-` for stdout, after the table).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    quiet: bool,
    /// TrueType font for the chart's text (default: DejaVu Sans from the usual places).
    #[arg(long, value_name = "FILE")]
    font: Option<PathBuf>,
    /// Tokio worker threads of the generator (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand)]
enum Workload {
    /// Open and hold idle connections; report the relay's memory per connection.
    Idle(conns::IdleArgs),
    /// S subscribers across R rooms, P publishers at an offered rate.
    Fanout(fanout::FanoutArgs),
    /// Fanout at rising rates until p99 passes a bound or a delivery is missing.
    Step(fanout::StepArgs),
    /// Connects and disconnects per second.
    Churn(conns::ChurnArgs),
    /// One big room (fanout with --rooms 1 and big-room defaults).
    Bigroom(fanout::BigroomArgs),
    /// Reconnect storm: N connections dropped at once, reconnecting and resuming together.
    Storm(storm::StormArgs),
    /// Presence and typing storm: status and typing changes timed at the other members' views.
    Presence(presence::PresenceArgs),
    /// Calls: publishers of audio and simulcast video, subscribers and late joiners over the
    /// SFU-lite media plane (QUIC or WebTransport).
    Media(media::MediaArgs),
    /// Call storm: N 1:1 calls set up (initiate, ring, answer, connected) and torn down at once.
    Calls(calls::CallsArgs),
    /// Collaborative session: N users patching one document (and moving cursors), timed at
    /// every member; optionally the join of a big document.
    Sessions(sessions::SessionsArgs),
    /// Soak: churn, resumes, acked publishes, presence and typing for --seconds (up to 4 h),
    /// sampling the relay's RSS, descriptors and tasks; fails when an acked message is lost,
    /// RSS grows after the warm-up or descriptors and tasks do not come back.
    Soak(soak::SoakArgs),
    /// Event broadcasting: events published through the server API at a rate to subscribers of
    /// a wildcard pattern (connections or SSE), timed end to end.
    Events(events::EventsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The generator's own logs (its client and quinn), off unless EDGERELAY_LOAD_LOG names a
    // filter, e.g. `quinn_proto=debug`: for tracing a run's stragglers.
    if let Ok(filter) = std::env::var("EDGERELAY_LOAD_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .init();
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.clamp(1, 64));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    anyhow::ensure!(cli.duration > 0.0 && cli.duration <= 600.0, "--duration from 0 to 600 seconds");
    let window = Duration::from_secs_f64(cli.duration);
    let progress = !cli.quiet;
    let mut relay = RelayUnderTest::new(&cli.relay)?;
    if progress {
        eprintln!(
            "relay: pid {}, QUIC {}, WebSocket {}",
            relay.pid.map_or("-".into(), |p| p.to_string()),
            relay.udp.map_or("-".into(), |a| a.to_string()),
            relay.ws_url.as_deref().unwrap_or("-"),
        );
    }
    let mut soak_failures = Vec::new();
    let (table, json) = match &cli.workload {
        Workload::Idle(args) => {
            let report = conns::idle(&relay, args, cli.transport, window, progress).await?;
            (conns::idle_table(&report), serde_json::to_value(&report)?)
        }
        Workload::Churn(args) => {
            let report = conns::churn(&relay, args, cli.transport, window, progress).await?;
            (conns::churn_table(&report), serde_json::to_value(&report)?)
        }
        Workload::Bigroom(args) => {
            let report = fanout::bigroom(&relay, args, cli.transport, window, progress).await?;
            (fanout::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Storm(args) => {
            let report = storm::storm(&relay, args, cli.transport, window, progress).await?;
            (storm::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Presence(args) => {
            let report = presence::presence(&relay, args, cli.transport, window, progress).await?;
            (presence::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Media(args) => {
            let report = media::media(&relay, args, cli.transport, window, progress).await?;
            (media::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Calls(args) => {
            let report = calls::calls(&relay, args, cli.transport, progress).await?;
            (calls::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Sessions(args) => {
            // A second node of the same region (same --store redis and --relay-env) for --nodes 2.
            let second = if args.nodes > 1 { Some(RelayUnderTest::new(&cli.relay)?) } else { None };
            let report = sessions::sessions(&relay, second.as_ref(), args, cli.transport, window, progress).await?;
            (sessions::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Events(args) => {
            let report = events::events(&relay, args, cli.transport, window, progress).await?;
            (events::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Soak(args) => {
            let report = soak::soak(&relay, args, cli.transport, progress).await?;
            soak_failures = report.failures.clone();
            (soak::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Fanout(args) => {
            let report = fanout::fanout(&relay, args, cli.transport, window, progress).await?;
            (fanout::table(&report), serde_json::to_value(&report)?)
        }
        Workload::Step(args) => {
            let report = fanout::step(&relay, args, cli.transport, window, progress).await?;
            if let Some(path) = &args.chart {
                match chart::draw(&report, path, cli.font.as_deref()) {
                    Ok(()) => eprintln!("chart: {}", path.display()),
                    Err(err) => eprintln!("warning: no chart: {err:#}"),
                }
            }
            (fanout::table(&report), serde_json::to_value(&report)?)
        }
    };
    if !relay.alive() {
        eprintln!("warning: the relay process exited during the run");
    }
    println!("{table}");
    match cli.json.as_deref() {
        Some(path) if path.as_os_str() == "-" => println!("{}", serde_json::to_string_pretty(&json)?),
        Some(path) => std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?,
        None => {}
    }
    anyhow::ensure!(soak_failures.is_empty(), "the soak failed: {}", soak_failures.join("; "));
    Ok(())
}
