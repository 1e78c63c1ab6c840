//! The relay under test: the `edgerelay` binary started here in its own process on loopback
//! (`--spawn`, the default), or one already running that the generator is pointed at. Its CPU
//! time and RSS come from `/proc/<pid>`, so they are the relay's alone, not the generator's.

use std::collections::HashMap;
use std::io::BufRead;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use edgerelay::auth::{Caps, Claims, Signer};
use edgerelay::client::{ClientOptions, QuicEndpoint, ServerTrust, Target};

/// Which transport one connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Quic,
    Ws,
    Wt,
}

/// The `--transport` choice: one transport for every connection, or a mix (connection `i`
/// uses QUIC, WebSocket, WebTransport for `i % 3` = 0, 1, 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportChoice {
    Quic,
    Ws,
    Wt,
    Mix,
}

impl TransportChoice {
    pub fn for_index(self, i: usize) -> Transport {
        match self {
            TransportChoice::Quic => Transport::Quic,
            TransportChoice::Ws => Transport::Ws,
            TransportChoice::Wt => Transport::Wt,
            TransportChoice::Mix => [Transport::Quic, Transport::Ws, Transport::Wt][i % 3],
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// The relay binary to start (default: `edgerelay` beside this binary). Ignored when
    /// --quic or --ws point at a running relay.
    #[arg(long, value_name = "PATH")]
    pub relay_bin: Option<PathBuf>,
    /// Extra environment for the started relay, e.g. `EDGERELAY_LIMITS__OUTBOX_BYTES=4194304`.
    /// Repeatable.
    #[arg(long = "relay-env", value_name = "KEY=VALUE")]
    pub relay_env: Vec<String>,
    /// Store engine of the started relay: embedded (redb, fsync per group commit: the default
    /// relay) or memory.
    #[arg(long, default_value = "embedded")]
    pub store: String,
    /// A running relay's QUIC address (raw QUIC and WebTransport), e.g. 127.0.0.1:4433.
    #[arg(long, value_name = "ADDR")]
    pub quic: Option<SocketAddr>,
    /// A running relay's WebSocket URL, e.g. ws://127.0.0.1:8080/v1/ws.
    #[arg(long, value_name = "URL")]
    pub ws: Option<String>,
    /// The running relay's certificate SHA-256 (hex, from its banner or /v1/cert), for QUIC.
    #[arg(long, value_name = "HEX")]
    pub cert_sha256: Option<String>,
    /// The running relay's dev token secret (`<data_dir>/dev-token-secret`), to mint tokens.
    #[arg(long, value_name = "FILE")]
    pub dev_secret_file: Option<PathBuf>,
    /// The running relay's process id, for CPU and RSS from /proc (none: not reported).
    #[arg(long)]
    pub pid: Option<u32>,
    /// QUIC and WebTransport connections per client UDP socket (and its driver task). 1 gives
    /// every connection a socket of its own, as separate devices have; sharing spends less of
    /// the machine on the generator, which the relay shares it with.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub connections_per_endpoint: u32,
}

/// The generator's client QUIC endpoints: connection `i` uses endpoint `i / per`, bound on
/// loopback when first needed.
#[derive(Clone)]
pub struct Endpoints {
    per: usize,
    ip: IpAddr,
    pool: Arc<Mutex<HashMap<usize, QuicEndpoint>>>,
}

impl Endpoints {
    fn new(per: u32, relay: Option<SocketAddr>) -> Endpoints {
        let ip = match relay {
            Some(addr) if addr.is_ipv6() => Ipv6Addr::LOCALHOST.into(),
            _ => Ipv4Addr::LOCALHOST.into(),
        };
        Endpoints { per: per.max(1) as usize, ip, pool: Default::default() }
    }

    /// Client options for connection `index` with `token`: with its group's shared endpoint
    /// over QUIC and WebTransport, unless every connection has its own.
    pub fn options(&self, token: String, transport: Transport, index: usize) -> anyhow::Result<ClientOptions> {
        let options = ClientOptions::new(token);
        if transport == Transport::Ws || self.per == 1 {
            return Ok(options);
        }
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let endpoint = match pool.entry(index / self.per) {
            std::collections::hash_map::Entry::Occupied(e) => e.get().clone(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(QuicEndpoint::bind(self.ip)?).clone(),
        };
        Ok(options.quic_endpoint(endpoint))
    }
}

pub struct RelayUnderTest {
    child: Option<Child>,
    dir: Option<PathBuf>,
    pub pid: Option<u32>,
    pub udp: Option<SocketAddr>,
    pub ws_url: Option<String>,
    sha256: Option<[u8; 32]>,
    signer: TokenMinter,
    pub endpoints: Endpoints,
}

impl Drop for RelayUnderTest {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn hex32(hex: &str) -> anyhow::Result<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        bail!("a SHA-256 is 64 hex digits, got {}", hex.len());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).context("SHA-256 hex")?;
    }
    Ok(out)
}

impl RelayUnderTest {
    pub fn new(args: &RelayArgs) -> anyhow::Result<RelayUnderTest> {
        if args.quic.is_some() || args.ws.is_some() { Self::attach(args) } else { Self::spawn(args) }
    }

    fn attach(args: &RelayArgs) -> anyhow::Result<RelayUnderTest> {
        let secret_file = args.dev_secret_file.as_ref().context("--dev-secret-file is needed with --quic/--ws")?;
        let secret = std::fs::read(secret_file).with_context(|| format!("reading {}", secret_file.display()))?;
        let sha256 = args.cert_sha256.as_deref().map(hex32).transpose()?;
        if args.quic.is_some() && sha256.is_none() {
            bail!("--cert-sha256 is needed with --quic");
        }
        for addr in args.quic.iter().map(|a| a.ip()).chain(args.ws.iter().filter_map(|u| ws_ip(u))) {
            if !addr.is_loopback() {
                bail!("the load generator drives loopback relays only ({addr} is not loopback)");
            }
        }
        Ok(RelayUnderTest {
            child: None,
            dir: None,
            pid: args.pid,
            udp: args.quic,
            ws_url: args.ws.clone(),
            sha256,
            signer: TokenMinter(std::sync::Arc::new(Signer::dev(&secret))),
            endpoints: Endpoints::new(args.connections_per_endpoint, args.quic),
        })
    }

    fn spawn(args: &RelayArgs) -> anyhow::Result<RelayUnderTest> {
        let bin = match &args.relay_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?.with_file_name("edgerelay"),
        };
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos();
        let dir = std::env::temp_dir().join(format!("edgerelay-load-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let secret: [u8; 32] = rand::random();
        std::fs::write(dir.join("dev-token-secret"), secret)?;
        let log = std::fs::File::create(dir.join("relay.log"))?;
        let mut command = Command::new(&bin);
        command
            .arg("serve")
            .env("EDGERELAY_DATA_DIR", &dir)
            .env("EDGERELAY_LISTEN__UDP", "127.0.0.1:0")
            .env("EDGERELAY_LISTEN__TCP", "127.0.0.1:0")
            .env("EDGERELAY_LOG", "warn")
            .env("EDGERELAY_STORE__ENGINE", &args.store)
            // The generator offers thousands of publishes per second on a few connections and
            // opens thousands of connections: lift the per-connection publish rate and the
            // connection caps, nothing else.
            .env("EDGERELAY_LIMITS__PUBLISH_RATE", "1000000")
            .env("EDGERELAY_LIMITS__PUBLISH_BURST", "1000000")
            .env("EDGERELAY_LIMITS__MAX_CONNECTIONS", "1000000")
            // The server API, for the events workload's publisher.
            .env("EDGERELAY_API__KEY", crate::events::API_KEY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        for pair in &args.relay_env {
            let (key, value) = pair.split_once('=').context("--relay-env wants KEY=VALUE")?;
            command.env(key, value);
        }
        let mut child = command.spawn().with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("relay stdout")?;
        // Read the banner on a thread, so a relay that never prints it cannot hang us.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut udp, mut ws, mut sha) = (None, None, None);
            let mut lines = std::io::BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("udp://").nth(1) {
                    udp = rest.trim().parse::<SocketAddr>().ok();
                }
                if let Some(rest) = line.split("ws://").nth(1) {
                    ws = Some(format!("ws://{}", rest.trim()));
                }
                if line.contains("certificate sha256 (hex)") {
                    sha = line.split_whitespace().last().map(str::to_owned);
                }
                if udp.is_some() && ws.is_some() && sha.is_some() {
                    break;
                }
            }
            let _ = tx.send((udp, ws, sha));
            // Keep reading so the relay never blocks on a full pipe.
            for _ in lines {}
        });
        let banner = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok((Some(udp), Some(ws), Some(sha))) => hex32(&sha).map(|sha| (udp, ws, sha)),
            _ => Err(anyhow::anyhow!("the relay did not print its addresses; see {}", dir.join("relay.log").display())),
        };
        let (udp, ws, sha256) = match banner {
            Ok(banner) => banner,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err);
            }
        };
        Ok(RelayUnderTest {
            child: Some(child),
            dir: Some(dir),
            pid: Some(pid),
            udp: Some(udp),
            ws_url: Some(ws),
            sha256: Some(sha256),
            signer: TokenMinter(std::sync::Arc::new(Signer::dev(&secret))),
            endpoints: Endpoints::new(args.connections_per_endpoint, Some(udp)),
        })
    }

    pub fn target(&self, transport: Transport) -> anyhow::Result<Target> {
        let quic = || -> anyhow::Result<(SocketAddr, ServerTrust)> {
            let addr = self.udp.context("no QUIC address (--quic)")?;
            let sha = self.sha256.context("no certificate hash (--cert-sha256)")?;
            Ok((addr, ServerTrust::Pinned(vec![sha])))
        };
        Ok(match transport {
            Transport::Quic => {
                let (addr, tls) = quic()?;
                Target::Quic { addr, server_name: "localhost".into(), tls }
            }
            Transport::Wt => {
                let (addr, tls) = quic()?;
                Target::WebTransport {
                    addr,
                    server_name: "localhost".into(),
                    tls,
                    path: edgerelay::transport::webtransport::PATH.into(),
                }
            }
            Transport::Ws => Target::WebSocket { url: self.ws_url.clone().context("no WebSocket URL (--ws)")? },
        })
    }

    /// A token for user `sub` of tenant `load` that may join and publish to every `load:` room.
    pub fn token(&self, sub: &str) -> anyhow::Result<String> {
        self.signer.token(sub)
    }

    /// Options for connection `index` as `user` over `transport` (see [`Endpoints`]).
    pub fn options(&self, user: &str, transport: Transport, index: usize) -> anyhow::Result<ClientOptions> {
        self.endpoints.options(self.token(user)?, transport, index)
    }

    pub fn minter(&self) -> TokenMinter {
        self.signer.clone()
    }

    /// The relay's CPU time so far (user + system), from `/proc/<pid>/stat`.
    pub fn cpu(&self) -> Option<Duration> {
        cpu_of(self.pid?)
    }

    /// The relay's resident set (`VmRSS` in `/proc/<pid>/status`), KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_of(self.pid?)
    }

    /// The sum of every series of a counter or gauge on the relay's `/metrics` page (on the
    /// WebSocket listener), e.g. `edgerelay_presence_updates_total` over its kinds.
    pub fn metric_sum(&self, name: &str) -> Option<f64> {
        Some(metric_sum_in(&self.metrics_page()?, name))
    }

    /// The relay's `/metrics` page (on the WebSocket listener), read once.
    pub fn metrics_page(&self) -> Option<String> {
        use std::io::{Read, Write};
        let url = url::Url::parse(self.ws_url.as_deref()?).ok()?;
        let addr = format!("{}:{}", url.host_str()?, url.port()?);
        let mut stream = std::net::TcpStream::connect(addr).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n").ok()?;
        let mut page = String::new();
        stream.read_to_string(&mut page).ok()?;
        Some(page)
    }

    /// Whether the started relay is still running.
    pub fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }
}

fn ws_ip(url: &str) -> Option<std::net::IpAddr> {
    let url = url::Url::parse(url).ok()?;
    match url.host()? {
        url::Host::Ipv4(ip) => Some(ip.into()),
        url::Host::Ipv6(ip) => Some(ip.into()),
        url::Host::Domain("localhost") => Some(std::net::Ipv4Addr::LOCALHOST.into()),
        url::Host::Domain(_) => Some(std::net::Ipv4Addr::UNSPECIFIED.into()),
    }
}

/// Mints tokens with the relay's dev secret.
#[derive(Clone)]
pub struct TokenMinter(std::sync::Arc<Signer>);

impl TokenMinter {
    /// A token for user `sub` of tenant `load` that may join and publish to every `load:` room,
    /// edit every `load:` session and call anyone of the tenant.
    pub fn token(&self, sub: &str) -> anyhow::Result<String> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let rooms = vec!["load:*".to_string()];
        let claims = Claims {
            sub: sub.into(),
            tenant: "load".into(),
            exp: now + 6 * 3600,
            nbf: None,
            iat: Some(now),
            jti: None,
            iss: None,
            aud: None,
            caps: Caps {
                join: rooms.clone(),
                publish: rooms.clone(),
                media: rooms,
                call: vec!["*".into()],
                session: vec!["load:*".into()],
                ..Caps::default()
            },
        };
        Ok(self.0.sign(&claims)?)
    }
}

/// A process's CPU time so far (user + system), from `/proc/<pid>/stat`.
pub fn cpu_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which ends with ')'), utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(Duration::from_millis(ticks * 10))
}

/// The sum of every series of metric `name` on a `/metrics` page.
pub fn metric_sum_in(page: &str, name: &str) -> f64 {
    let values = page.lines().filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']));
    values.filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

/// A process's open file descriptors (the entries of `/proc/<pid>/fd`).
pub fn fds_of(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

/// A process's resident set (`VmRSS` in `/proc/<pid>/status`), KiB.
pub fn rss_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
