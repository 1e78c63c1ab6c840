//! `netsim`: network impairment for edgerelay (see `docs/netsim.md`).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use netsim::{Blackouts, Profile, Protocol, Proxy, ProxyConfig, Rebinds};

#[derive(Parser)]
#[command(name = "netsim", version, about = "Lossy mobile network simulation for edgerelay")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List the named profiles and their parameters.
    Profiles,
    /// Run a user-space proxy that applies a profile between clients and a relay.
    ///
    /// Example: netsim proxy --listen 127.0.0.1:5433 --upstream 127.0.0.1:4433 --profile 4g
    Proxy(ProxyArgs),
    /// Packet-level emulator (Linux, root): run --server in one network namespace and --client in
    /// another, every IP packet between them through the profile; clean up when the client exits.
    ///
    /// The server side is 10.77.0.2, the client side 10.77.0.1 (also in $NETSIM_SERVER and
    /// $NETSIM_CLIENT). Exits with the client's status. Example:
    /// netsim ns --profile 3g --server 'edgerelay serve --udp 10.77.0.2:4433 --tcp 10.77.0.2:8080'
    ///     --client 'my-client --relay $NETSIM_SERVER:4433'
    Ns(NsArgs),
}

#[derive(clap::Args)]
struct NsArgs {
    /// One of the profiles `netsim profiles` lists.
    #[arg(long, default_value = "4g")]
    profile: String,
    /// Seed for every random decision (random if unset; the seed used is printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Shell command run in the server namespace; stopped (SIGTERM, then SIGKILL after 5 s)
    /// once the client has exited.
    #[arg(long)]
    server: String,
    /// Shell command run in the client namespace.
    #[arg(long)]
    client: String,
    /// Seconds to give the server before starting the client.
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    server_wait: f64,
}

#[derive(clap::Args)]
struct ProxyArgs {
    /// Where clients connect.
    #[arg(long)]
    listen: SocketAddr,
    /// The relay (its UDP port, or its TCP port with --tcp).
    #[arg(long)]
    upstream: SocketAddr,
    /// One of the profiles `netsim profiles` lists.
    #[arg(long, default_value = "4g")]
    profile: String,
    /// Seed for every random decision; the same seed and traffic replay a run. Random if unset
    /// (the seed used is printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Proxy TCP (WebSocket) instead of UDP (QUIC).
    #[arg(long)]
    tcp: bool,
    /// Move every UDP flow to a new source port this often (NAT rebinding), in seconds.
    #[arg(long, value_name = "SECS")]
    rebind_every: Option<f64>,
    /// Add a blackout of --blackout-for seconds this often, in seconds (replaces the profile's).
    #[arg(long, value_name = "SECS", requires = "blackout_for")]
    blackout_every: Option<f64>,
    /// Length of each blackout, in seconds.
    #[arg(long, value_name = "SECS")]
    blackout_for: Option<f64>,
    /// Print the counters this often, in seconds (0: only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    stats_every: f64,
}

fn secs(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value).with_context(|| format!("{what} must be a non-negative number of seconds"))
}

fn named_profile(name: &str) -> Result<Profile> {
    let Some(profile) = Profile::named(name) else {
        bail!("unknown profile {name:?}; one of: {}", netsim::profile::NAMES.join(", "));
    };
    Ok(profile)
}

async fn proxy(args: ProxyArgs) -> Result<()> {
    let mut profile = named_profile(&args.profile)?;
    if let Some(every) = args.rebind_every {
        profile.rebinds = Rebinds::every(secs(every, "--rebind-every")?);
    }
    if let (Some(every), Some(length)) = (args.blackout_every, args.blackout_for) {
        let every = secs(every, "--blackout-every")?;
        profile.blackouts = Blackouts::periodic(every, every, secs(length, "--blackout-for")?);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let config = ProxyConfig {
        listen: args.listen,
        upstream: args.upstream,
        protocol: if args.tcp { Protocol::Tcp } else { Protocol::Udp },
        profile,
        seed,
    };
    let proxy = Proxy::start(config).await?;
    eprintln!(
        "netsim: {} proxy {} -> {}, profile {}, seed {seed}",
        if args.tcp { "TCP" } else { "UDP" },
        proxy.local_addr(),
        args.upstream,
        args.profile
    );
    let stats_every = secs(args.stats_every, "--stats-every")?;
    let mut tick = tokio::time::interval(if stats_every.is_zero() { Duration::MAX / 2 } else { stats_every });
    tick.tick().await;
    loop {
        tokio::select! {
            signal = tokio::signal::ctrl_c() => {
                signal.context("waiting for Ctrl-C")?;
                break;
            }
            _ = tick.tick() => eprintln!("netsim: {:?}", proxy.stats()),
        }
    }
    eprintln!("netsim: {:?}", proxy.stats());
    proxy.shutdown().await;
    Ok(())
}

async fn ns(args: NsArgs) -> Result<()> {
    use netsim::ns::{Emulator, Side};
    let profile = named_profile(&args.profile)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let emulator = Emulator::start(profile, seed)?;
    eprintln!("netsim: namespaces up, profile {}, seed {seed}", args.profile);
    let shell = |side: Side, script: &str| {
        let mut command = emulator.command(side, "sh");
        command
            .arg("-c")
            .arg(script)
            .env("NETSIM_SERVER", emulator.addr(Side::Server).to_string())
            .env("NETSIM_CLIENT", emulator.addr(Side::Client).to_string());
        tokio::process::Command::from(command)
    };
    // Its own process group, so stopping it reaches whatever the shell started.
    let mut server =
        shell(Side::Server, &args.server).process_group(0).kill_on_drop(true).spawn().context("starting --server")?;
    tokio::time::sleep(secs(args.server_wait, "--server-wait")?).await;
    let status = shell(Side::Client, &args.client).kill_on_drop(true).status().await.context("running --client")?;
    signal_group(&server, libc::SIGTERM);
    if tokio::time::timeout(Duration::from_secs(5), server.wait()).await.is_err() {
        signal_group(&server, libc::SIGKILL);
        let _ = server.wait().await;
    }
    eprintln!("netsim: {:?}", emulator.stats());
    emulator.shutdown().await;
    std::process::exit(status.code().unwrap_or(1));
}

/// Sends `signal` to the process group `child` leads (spawned with `process_group(0)`).
fn signal_group(child: &tokio::process::Child, signal: libc::c_int) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        // SAFETY: kill(2) on our own child's process group; the child is not reaped yet (it has
        // an id).
        unsafe { libc::kill(-pid, signal) };
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Profiles => {
            for profile in Profile::all() {
                print!("{}", profile.describe());
            }
            Ok(())
        }
        Command::Proxy(args) => tokio::runtime::Runtime::new()?.block_on(proxy(args)),
        Command::Ns(args) => tokio::runtime::Runtime::new()?.block_on(ns(args)),
    }
}
