//! The `edgerelay` binary: load the configuration, run the relay until a signal, or mint tokens.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use edgerelay::auth::{Caps, Claims, Signer, parse_ttl};
use edgerelay::config::Config;
use edgerelay::relay::{Relay, load_or_create_dev_secret};

/// edgerelay: a real-time relay for chat, presence, collaboration and calls, over QUIC,
/// WebTransport and WebSocket, in one binary.
///
/// Start it with `edgerelay serve`: with no configuration it creates ./edgerelay-data (a
/// self-signed dev certificate, a dev token secret), listens on UDP 4433 (QUIC) and TCP 8080
/// (WebSocket, /healthz, /readyz, /metrics), and prints how to connect and how to mint a token.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// TOML configuration file; every key can also be set as EDGERELAY_<SECTION>__<KEY>.
    #[arg(long, global = true, env = "EDGERELAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `edgerelay=debug`.
    #[arg(long, global = true, env = "EDGERELAY_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay until SIGTERM or Ctrl-C, then drain connections gracefully.
    Serve,
    /// Mint a token signed with the dev secret (or a configured key with --kid).
    ///
    /// Example: edgerelay token --sub alice --tenant acme --room 'chat:*' --ttl 1h
    Token {
        /// User id (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// Tenant the user belongs to; rooms are isolated per tenant.
        #[arg(long)]
        tenant: String,
        /// Room pattern the user may join and publish to (`*` wildcard, `{sub}` = user id). Repeatable.
        #[arg(long = "room", value_name = "PATTERN")]
        rooms: Vec<String>,
        /// Room pattern the user may only join. Repeatable.
        #[arg(long = "join", value_name = "PATTERN")]
        join: Vec<String>,
        /// Room pattern the user may only publish to. Repeatable.
        #[arg(long = "publish", value_name = "PATTERN")]
        publish: Vec<String>,
        /// Lifetime: 30s, 15m, 1h, 7d or plain seconds.
        #[arg(long, default_value = "1h")]
        ttl: String,
        /// Sign with this configured key (`[[auth.keys]]` kid) instead of the dev secret.
        #[arg(long)]
        kid: Option<String>,
        /// Token id (`jti`), for revocation.
        #[arg(long)]
        jti: Option<String>,
    },
    /// Print the effective configuration (defaults, file and environment merged) as TOML.
    Config,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
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
    let config = Config::load(cli.config.as_deref(), std::env::vars())?;
    match cli.command {
        Command::Serve => serve(config, cli.config.as_deref()).await,
        Command::Token { sub, tenant, rooms, join, publish, ttl, kid, jti } => {
            let ttl = parse_ttl(&ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            let signer = match kid {
                Some(kid) => {
                    let key = config
                        .auth
                        .keys
                        .iter()
                        .find(|k| k.kid == kid)
                        .with_context(|| format!("no [[auth.keys]] with kid {kid:?}"))?;
                    Signer::from_key_config(key)?
                }
                None => {
                    if !config.auth.dev_keys {
                        bail!("auth.dev_keys is off: pass --kid to sign with a configured key");
                    }
                    Signer::dev(&load_or_create_dev_secret(&config)?)
                }
            };
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let caps = Caps {
                join: rooms.iter().chain(&join).cloned().collect(),
                publish: rooms.iter().chain(&publish).cloned().collect(),
            };
            let claims = Claims {
                sub,
                tenant,
                exp: now + ttl.as_secs(),
                nbf: None,
                iat: Some(now),
                jti,
                iss: config.auth.issuer.clone(),
                aud: config.auth.audience.clone().map(Into::into),
                caps,
            };
            println!("{}", signer.sign(&claims)?);
            Ok(())
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
    }
}

async fn serve(config: Config, config_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    // Listen for signals before the relay reports ready, so an early SIGTERM still drains.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let relay = Relay::start(config).await?;
    print!("{}", relay.banner(config_file));
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tokio::select! {
        _ = term.recv() => {}
        _ = interrupt.recv() => {}
    }
    tracing::info!("draining");
    relay.shutdown().await;
    tracing::info!("stopped");
    Ok(())
}
