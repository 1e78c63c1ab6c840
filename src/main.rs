//! The `edgerelay` binary: load the configuration, run the relay until a signal, or mint tokens.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};
use edgerelay::auth::{Caps, Claims, DEV_KID, Signer, parse_ttl};
use edgerelay::config::Config;
use edgerelay::relay::Relay;

/// edgerelay: a real-time relay for chat, presence, collaboration and calls, over QUIC,
/// WebTransport and WebSocket, in one binary.
///
/// Start it with `edgerelay serve`: with no configuration it creates ./edgerelay-data (a
/// self-signed dev certificate, a dev token secret), listens on UDP [::]:4433 (QUIC and
/// WebTransport) and TCP [::]:8080 (WebSocket, demo page, /healthz, /readyz, /metrics), on IPv6
/// and IPv4, and prints how to connect and how to mint a token.
///
/// Settings: defaults, then the --config file, then environment variables, then command-line
/// flags. Every config key can be set as EDGERELAY_<SECTION>__<KEY>: upper case, the section and
/// the key joined by a double underscore, e.g. listen.udp is EDGERELAY_LISTEN__UDP,
/// limits.max_frame_bytes is EDGERELAY_LIMITS__MAX_FRAME_BYTES, and the top-level data_dir is
/// EDGERELAY_DATA_DIR. `edgerelay config` prints the effective configuration.
#[derive(Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// TOML configuration file; every key can also be set as EDGERELAY_<SECTION>__<KEY>.
    #[arg(long, global = true, env = "EDGERELAY_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (config `data_dir`): the dev certificate, the dev token secret, the QUIC
    /// keys and the embedded history store. Default: ./edgerelay-data. `token` reads the dev
    /// secret from here, so give it the same directory as the relay.
    #[arg(long, global = true, env = "EDGERELAY_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `edgerelay=debug`.
    #[arg(long, global = true, env = "EDGERELAY_LOG", default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start; the size of the token command's patterns does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the relay until SIGTERM or Ctrl-C, then drain connections gracefully.
    ///
    /// Settings: defaults, then the --config file, then environment variables, then these
    /// flags. Every config key can be set as EDGERELAY_<SECTION>__<KEY> (upper case, section
    /// and key joined by a double underscore): listen.udp is EDGERELAY_LISTEN__UDP,
    /// limits.max_frame_bytes is EDGERELAY_LIMITS__MAX_FRAME_BYTES, the top-level data_dir is
    /// EDGERELAY_DATA_DIR. `edgerelay config` prints the effective configuration.
    Serve {
        /// UDP address for QUIC and WebTransport (config `listen.udp`). Default: [::]:4433,
        /// every address on IPv6 and IPv4.
        #[arg(long, env = "EDGERELAY_LISTEN__UDP", value_name = "ADDR")]
        udp: Option<String>,
        /// TCP address for WebSocket, the demo page, the HTTP API, /healthz, /readyz and
        /// /metrics (config `listen.tcp`). Default: [::]:8080, every address on IPv6 and IPv4.
        #[arg(long, env = "EDGERELAY_LISTEN__TCP", value_name = "ADDR")]
        tcp: Option<String>,
    },
    /// Mint a token signed with the dev secret (or a configured key with --kid).
    ///
    /// The token alone goes to stdout (for `TOKEN=$(edgerelay token ...)`); what it grants goes
    /// to stderr. The dev secret is read from the data directory (or auth.dev_secret_file) of
    /// the relay the token is for, never created: run `token` with the same --data-dir or
    /// --config as that relay (its banner prints the exact command).
    ///
    /// Example: edgerelay token --sub alice --tenant acme --room 'chat:*' --ttl 1h
    Token {
        /// User id (the `sub` claim).
        #[arg(long)]
        sub: String,
        /// Tenant the user belongs to; rooms are isolated per tenant.
        #[arg(long)]
        tenant: String,
        /// Room pattern the user may join, publish to and publish media tracks in (`*` wildcard,
        /// `{sub}` = user id). Repeatable.
        #[arg(long = "room", value_name = "PATTERN")]
        rooms: Vec<String>,
        /// Room pattern the user may only join. Repeatable.
        #[arg(long = "join", value_name = "PATTERN")]
        join: Vec<String>,
        /// Room pattern the user may only publish to. Repeatable.
        #[arg(long = "publish", value_name = "PATTERN")]
        publish: Vec<String>,
        /// Room pattern the user may publish media tracks in (calls; receiving needs only join).
        /// Repeatable.
        #[arg(long = "media", value_name = "PATTERN")]
        media: Vec<String>,
        /// User id pattern the user may place 1:1 calls to (`*`: anyone in the tenant).
        /// Repeatable.
        #[arg(long = "call", value_name = "PATTERN")]
        call: Vec<String>,
        /// Collaborative session id pattern the user may create, join and edit (docs/sessions.md).
        /// Repeatable.
        #[arg(long = "session", value_name = "PATTERN")]
        session: Vec<String>,
        /// Session id pattern the user may join as a viewer only. Repeatable.
        #[arg(long = "session-read", value_name = "PATTERN")]
        session_read: Vec<String>,
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
    /// Print the effective configuration (defaults, file, environment and flags merged) as TOML.
    Config,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(err) => err.exit(),
    };
    logging::init(&cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, &matches)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// The settings given as flags on the command line, as config overrides `(flag, key, value)`.
/// A flag's value that clap took from its environment variable is left to the config loader,
/// which reads the environment itself and names the variable in its errors.
fn flag_overrides(matches: &ArgMatches) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    let mut take = |m: &ArgMatches, id: &str, flag: &str, key: &str| {
        if m.value_source(id) == Some(ValueSource::CommandLine) {
            let value = match m.try_get_one::<PathBuf>(id) {
                Ok(path) => path.map(|p| p.display().to_string()),
                Err(_) => m.try_get_one::<String>(id).ok().flatten().cloned(),
            };
            if let Some(value) = value {
                out.push((flag.to_string(), key.to_string(), value));
            }
        }
    };
    take(matches, "data_dir", "--data-dir", "data_dir");
    if let Some(serve) = matches.subcommand_matches("serve") {
        take(serve, "udp", "--udp", "listen.udp");
        take(serve, "tcp", "--tcp", "listen.tcp");
    }
    out
}

async fn run(cli: Cli, matches: &ArgMatches) -> anyhow::Result<()> {
    let config = Config::load_with(cli.config.as_deref(), std::env::vars(), flag_overrides(matches))?;
    match cli.command {
        Command::Serve { .. } => serve(config, cli.config.as_deref()).await,
        Command::Token { sub, tenant, rooms, join, publish, media, call, session, session_read, ttl, kid, jti } => {
            let ttl = parse_ttl(&ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            if [&rooms, &join, &publish, &media, &call, &session, &session_read].iter().all(|l| l.is_empty()) {
                bail!(
                    "no rights granted: pass --room PATTERN (join, publish and media), --join PATTERN, --publish PATTERN, \
                     --media PATTERN, --call PATTERN, --session PATTERN or --session-read PATTERN (a token without \
                     them authenticates but may do nothing)"
                );
            }
            let (signer, key) = match kid {
                Some(kid) => {
                    let key = config
                        .auth
                        .keys
                        .iter()
                        .find(|k| k.kid == kid)
                        .with_context(|| format!("no [[auth.keys]] with kid {kid:?}"))?;
                    (Signer::from_key_config(key)?, format!("the key kid {kid:?} ({}) of [[auth.keys]]", key.alg))
                }
                None => {
                    if !config.auth.dev_keys {
                        bail!(
                            "auth.dev_keys is off (the default when tls.cert_file is set): pass --kid to sign with \
                             a configured key"
                        );
                    }
                    let (secret, path) = read_dev_secret(&config)?;
                    (Signer::dev(&secret), format!("the dev secret {} (kid {DEV_KID})", path.display()))
                }
            };
            let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
            let caps = Caps {
                join: rooms.iter().chain(&join).cloned().collect(),
                publish: rooms.iter().chain(&publish).cloned().collect(),
                media: rooms.iter().chain(&media).cloned().collect(),
                call,
                session,
                session_read,
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
            let token = signer.sign(&claims)?;
            eprintln!("{}", describe(&claims, ttl, &key));
            println!("{token}");
            Ok(())
        }
        Command::Config => {
            print!("{}", toml::to_string_pretty(&config)?);
            Ok(())
        }
    }
}

/// What a minted token grants, for stderr.
fn describe(claims: &Claims, ttl: Duration, key: &str) -> String {
    let list = |patterns: &[String]| if patterns.is_empty() { "nothing".to_string() } else { patterns.join(", ") };
    let mut text = format!(
        "minted a token for sub {:?}, tenant {:?}: join {}; publish {}; media {}; expires {} (in {}s)",
        claims.sub,
        claims.tenant,
        list(&claims.caps.join),
        list(&claims.caps.publish),
        list(&claims.caps.media),
        edgerelay::tls::rfc3339_utc(UNIX_EPOCH + Duration::from_secs(claims.exp)),
        ttl.as_secs(),
    );
    let aud = claims.aud.as_ref().map(|aud| match aud {
        edgerelay::auth::Audience::One(one) => one.clone(),
        edgerelay::auth::Audience::Many(many) => many.join(", "),
    });
    for (name, list) in
        [("call", &claims.caps.call), ("session", &claims.caps.session), ("session_read", &claims.caps.session_read)]
    {
        if !list.is_empty() {
            text.push_str(&format!("; {name} {}", list.join(", ")));
        }
    }
    for (name, value) in [("jti", &claims.jti), ("iss", &claims.iss), ("aud", &aud)] {
        if let Some(value) = value {
            text.push_str(&format!("; {name} {value:?}"));
        }
    }
    text.push_str(&format!("; signed with {key}"));
    text
}

/// The dev secret of the relay this configuration describes. Never creates one: a new secret
/// would mint tokens no running relay accepts.
fn read_dev_secret(config: &Config) -> anyhow::Result<(Vec<u8>, PathBuf)> {
    let path = absolute(&config.dev_secret_path());
    let missing = match std::fs::read(&path) {
        Ok(secret) if !secret.is_empty() => return Ok((secret, path)),
        Ok(_) => "is empty",
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => "does not exist",
        Err(err) => bail!("cannot read the dev token secret {}: {err}", path.display()),
    };
    let source = match &config.auth.dev_secret_file {
        Some(_) => "auth.dev_secret_file".to_string(),
        None => format!("dev-token-secret in the data directory {}", absolute(&config.data_dir).display()),
    };
    bail!(
        "the dev token secret {} ({source}) {missing}. `token` signs with the secret of the relay the token is \
         for and never creates one. Point it at that relay's data directory with --data-dir DIR (or \
         EDGERELAY_DATA_DIR), or at its configuration with --config FILE (data_dir, auth.dev_secret_file); the \
         relay's banner prints the exact command. A relay creates its secret when it first starts.",
        path.display()
    )
}

/// `path` made absolute against the current directory (not resolved).
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// How to run this binary against `config` from any directory, as the banner prints it: the
/// executable (its name when PATH finds this same file, else its absolute path), the config
/// file, and whatever else `token` needs to find the same dev secret and claims (given as
/// flags or environment variables when the file alone would not say it).
fn self_command(config: &Config, config_file: Option<&Path>) -> String {
    let exe = std::env::current_exe().ok();
    let on_path = exe.as_deref().and_then(|exe| {
        let name = exe.file_name()?;
        let found =
            std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|p| p.is_file())?;
        (std::fs::canonicalize(&found).ok()? == std::fs::canonicalize(exe).ok()?).then(|| name.to_owned())
    });
    let program = match (on_path, &exe) {
        (Some(name), _) => name.to_string_lossy().into_owned(),
        (None, Some(exe)) => exe.display().to_string(),
        (None, None) => "edgerelay".to_string(),
    };
    // What `token` would read from the config file alone, with no environment or flags.
    let plain = Config::load(config_file, std::iter::empty()).unwrap_or_default();
    let mut env = Vec::new();
    let mut words = vec![shell_quote(&program)];
    if let Some(file) = config_file {
        words.push("--config".into());
        words.push(shell_quote(&absolute(file).display().to_string()));
    }
    match &config.auth.dev_secret_file {
        None => {
            let dir = absolute(&config.data_dir);
            if !(plain.data_dir.is_absolute()
                && plain.data_dir == config.data_dir
                && plain.auth.dev_secret_file.is_none())
            {
                words.push("--data-dir".into());
                words.push(shell_quote(&dir.display().to_string()));
            }
        }
        Some(file) => {
            let file = absolute(file);
            if plain.auth.dev_secret_file.as_deref() != Some(file.as_path()) {
                env.push(format!("EDGERELAY_AUTH__DEV_SECRET_FILE={}", shell_quote(&file.display().to_string())));
            }
        }
    }
    for (var, relay, from_file) in [
        ("EDGERELAY_AUTH__ISSUER", &config.auth.issuer, &plain.auth.issuer),
        ("EDGERELAY_AUTH__AUDIENCE", &config.auth.audience, &plain.auth.audience),
    ] {
        if let Some(value) = relay.as_ref().filter(|v| Some(*v) != from_file.as_ref()) {
            env.push(format!("{var}={}", shell_quote(value)));
        }
    }
    env.into_iter().chain(words).collect::<Vec<_>>().join(" ")
}

async fn serve(config: Config, config_file: Option<&Path>) -> anyhow::Result<()> {
    // Listen for signals before the relay reports ready, so an early SIGTERM still drains.
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let command = self_command(&config, config_file);
    let relay = Relay::start(config).await?;
    print!("{}", relay.banner(&command));
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

/// Logs on stderr, with one correction to a dependency's levels.
mod logging {
    use tracing::{Event, Subscriber};
    use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
    use tracing_subscriber::util::SubscriberInitExt as _;

    pub fn init(filter: &str) {
        let filter = tracing_subscriber::EnvFilter::try_new(filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        use std::io::IsTerminal as _;
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .finish()
            .with(QuietPeerCloses)
            .init();
    }

    /// Drops the WARN web-transport-quinn 0.13 logs when a browser closes its WebTransport
    /// session by closing the connection (a tab closed: CONNECTION_CLOSE with H3_NO_ERROR, no
    /// close capsule first): its capsule reader reports any end of the CONNECT stream that is
    /// not a clean FIN as `failed to read capsule e=UnexpectedEnd`. That is a peer going away,
    /// not a fault; the relay logs every closed connection itself, at debug, with its reason.
    /// Other capsule errors (a malformed or oversized capsule) stay warnings.
    struct QuietPeerCloses;

    impl<S: Subscriber> Layer<S> for QuietPeerCloses {
        fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
            !is_peer_going_away(event)
        }
    }

    fn is_peer_going_away(event: &Event<'_>) -> bool {
        let meta = event.metadata();
        if *meta.level() != tracing::Level::WARN || !meta.target().starts_with("web_transport_quinn") {
            return false;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        fields.message == "failed to read capsule" && fields.rest.trim_end() == "e=UnexpectedEnd"
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        rest: String,
    }

    impl tracing::field::Visit for Fields {
        fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            } else {
                self.rest.push_str(&format!("{}={value:?} ", field.name()));
            }
        }
    }
}
