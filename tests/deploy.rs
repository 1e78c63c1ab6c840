//! The deployment files in docs/deploy/ as an operator uses them: the production config runs a
//! region of three relays on one real Redis with a certificate from a CA (certs/dev-ca.sh) and
//! ES256 tokens, clients that trust only that CA reach every node by the region's name, and a
//! node stopped as systemd stops it drains to the others without losing a message; the systemd
//! unit passes `systemd-analyze verify` and stops after the drain deadline; the container file
//! builds the binary as a release build does and exposes the config's ports.

mod common;
#[path = "common/process.rs"]
mod process;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::within;
use edgerelay::client::resilient::{Reconnect, Resilient, ResilientEvent};
use edgerelay::client::{Client, ClientOptions, ServerTrust, Target};
use edgerelay::config::Config;
use edgerelay::proto::{ErrorCode, Payload};
use edgerelay::testing::RedisServer;
use process::RelayProcess;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The production config example, as loaded by the relay.
fn production_config() -> Config {
    Config::load(Some(&root().join("docs/deploy/edgerelay.toml")), std::iter::empty()).expect("the example loads")
}

/// Runs a shell command, panicking with its stderr when it fails.
fn run(program: &str, args: &[&str]) {
    let out = std::process::Command::new(program).args(args).output().unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// `/etc/edgerelay` of one region as the walk-through in docs/operations.md lays it out, in a
/// temporary directory: `tls/` from certs/dev-ca.sh (for the region's name), `jwt/` with an
/// ES256 key pair made by openssl, and `edgerelay.toml`, the production example with its paths
/// moved there (plus the private key, so `edgerelay token --kid` can mint test tokens).
struct Etc {
    dir: tempfile::TempDir,
    ca: Vec<u8>,
}

const REGION_NAME: &str = "relay.test";

impl Etc {
    fn new() -> Etc {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().display().to_string();
        let tls = format!("{etc}/tls");
        run(root().join("certs/dev-ca.sh").to_str().unwrap(), &[&tls, REGION_NAME]);
        std::fs::create_dir(dir.path().join("jwt")).unwrap();
        let private = format!("{etc}/jwt/prod-2026.pem");
        run("openssl", &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", &private]);
        run("openssl", &["pkey", "-in", &private, "-pubout", "-out", &format!("{etc}/jwt/prod-2026.pub.pem")]);
        let config = read("docs/deploy/edgerelay.toml").replace("/etc/edgerelay", &etc);
        let public_line = format!("public_key_file = \"{etc}/jwt/prod-2026.pub.pem\"");
        assert!(config.contains(&public_line), "the example's key is at /etc/edgerelay/jwt/prod-2026.pub.pem");
        let config = config.replace(&public_line, &format!("{public_line}\nprivate_key_file = \"{private}\""));
        std::fs::write(dir.path().join("edgerelay.toml"), config).unwrap();
        let ca = std::fs::read(dir.path().join("tls/ca.pem")).unwrap();
        Etc { dir, ca }
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("edgerelay.toml")
    }
}

/// A node of the region: the example config, with what differs per node in the environment as
/// the walk-through sets it (and loopback ports in place of 443 and 9090).
async fn node(etc: &Etc, redis: &RedisServer, n: usize) -> (RelayProcess, std::net::SocketAddr) {
    let admin = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut node = RelayProcess::new(&etc.dir.path().join(format!("data-{n}")))
        .with_env("EDGERELAY_CONFIG", etc.config().display().to_string())
        .with_env("EDGERELAY_REDIS__URL", redis.url())
        .with_env("EDGERELAY_LISTEN__ADMIN", admin.to_string())
        .with_env("EDGERELAY_SHUTDOWN__DRAIN_TIMEOUT_MS", "3000");
    // The TCP port speaks TLS: readiness is probed on the admin listener.
    node.start_ready_at(admin).await;
    (node, admin)
}

/// A token signed with the region's ES256 key, minted as an operator would for a smoke test.
fn token(node: &RelayProcess, sub: &str) -> String {
    let out = node
        .command(&["token", "--kid", "prod-2026", "--sub", sub, "--tenant", "acme", "--room", "chat:*", "--ttl", "1h"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Raw QUIC to one node by the region's name, trusting only the CA: what a native client gets
/// when `relay.test` resolves to that node's address.
fn quic(etc: &Etc, node: &RelayProcess) -> Target {
    Target::Quic { addr: node.udp, server_name: REGION_NAME.into(), tls: ServerTrust::Roots(etc.ca.clone()) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_production_example_runs_a_region_of_three_relays_that_drain_into_each_other() {
    let redis = RedisServer::start().expect("start redis-server");
    let etc = Etc::new();
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(node(&etc, &redis, n).await);
    }
    let targets = |first: usize| (0..3).map(|i| quic(&etc, &nodes[(first + i) % 3].0)).collect::<Vec<_>>();

    // A WebTransport client on node 1 by the region's name, verified against the CA.
    let wt = Target::WebTransport {
        addr: nodes[1].0.udp,
        server_name: REGION_NAME.into(),
        tls: ServerTrust::Roots(etc.ca.clone()),
        path: "/v1/wt".into(),
    };
    let mut watcher = Client::connect(wt, ClientOptions::new(token(&nodes[1].0, "wendy"))).await.expect("WebTransport");
    watcher.join("chat:lobby").await.unwrap();
    // A subscriber that knows every address of the name and starts on node 0.
    let reconnect = Reconnect { base_delay: Duration::from_millis(50), ..Reconnect::default() };
    let mut ann = Resilient::start_any(targets(0), ClientOptions::new(token(&nodes[0].0, "ann")), reconnect);
    ann.join("chat:lobby");
    within("ann joined on node 0", async {
        while ann.positions().get("chat:lobby").is_none_or(Option::is_none) {
            let _ = tokio::time::timeout(Duration::from_millis(20), ann.next_event()).await;
        }
    })
    .await;
    let publisher = Client::connect(quic(&etc, &nodes[2].0), ClientOptions::new(token(&nodes[2].0, "pat")))
        .await
        .expect("QUIC to node 2");
    for i in 1..=20 {
        publisher.publish("chat:lobby", &format!("m{i}"), Payload::from("1")).await.unwrap();
    }

    // Node 0 is stopped as systemd stops it; ann moves to another node and resumes there.
    let status = nodes[0].0.terminate(Duration::from_secs(3 + 1 + 5)).await;
    assert!(status.success(), "a drained relay exits 0: {status:?}");
    for i in 21..=40 {
        publisher.publish("chat:lobby", &format!("m{i}"), Payload::from("1")).await.unwrap();
    }
    let (mut got, mut events) = (Vec::new(), Vec::new());
    within("ann has every message", async {
        while got.len() < 40 {
            match ann.next_event().await.expect("ann's client runs") {
                ResilientEvent::Message(m) => got.push(m.position.offset),
                other => events.push(other),
            }
        }
    })
    .await;
    assert_eq!(got, (1..=40).collect::<Vec<u64>>(), "in order, exactly once, across the drain");
    // Told to go (not cut off), then connected again: to another node, node 0 being gone.
    assert!(
        matches!(events.first(), Some(ResilientEvent::Disconnected { code, .. }) if *code == Some(ErrorCode::GOING_AWAY)),
        "{events:?}"
    );
    assert!(events.iter().any(|e| matches!(e, ResilientEvent::Connected { attempt } if *attempt > 0)), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, ResilientEvent::NotRecovered { .. })), "{events:?}");
    for i in 1..=40u64 {
        let m = within("the watcher's message", watcher.next_message()).await.unwrap();
        assert_eq!(m.position.offset, i);
    }

    // Metrics are served on the admin listener (listen.admin, set per node).
    let (_, admin) = nodes[1];
    assert_eq!(common::http_get(admin, "/metrics").await.0, 200);
    ann.close().await;
}

#[test]
fn the_systemd_unit_verifies_and_waits_for_the_drain() {
    let unit = read("docs/deploy/edgerelay.service");
    let value = |key: &str| {
        unit.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('=')).unwrap_or_else(|| panic!("no {key}="))
    };
    assert_eq!(value("ExecStart"), "/usr/local/bin/edgerelay --config /etc/edgerelay/edgerelay.toml serve");
    assert_eq!(value("KillSignal"), "SIGTERM");
    let stop: u64 = value("TimeoutStopSec").trim_end_matches('s').parse().unwrap();
    let drain_ms = production_config().shutdown.drain_timeout_ms;
    assert!(stop * 1000 > drain_ms + 1000, "TimeoutStopSec {stop}s must exceed the drain deadline {drain_ms} ms + 1 s");
    assert_eq!(value("StateDirectory"), "edgerelay", "data_dir /var/lib/edgerelay is the state directory");
    assert_eq!(production_config().data_dir, Path::new("/var/lib/edgerelay"));

    let Ok(analyze) = which("systemd-analyze") else {
        println!("systemd-analyze not installed: unit syntax not verified");
        return;
    };
    // Verified with ExecStart pointing at the binary just built (verify checks it exists).
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("edgerelay.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/edgerelay", process::BIN)).unwrap();
    let out = std::process::Command::new(analyze).arg("verify").arg(&copy).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Unknown or unparsable settings are only warnings: any output at all is a failure.
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
}

#[test]
fn the_container_file_builds_like_a_release_build_and_exposes_the_configs_ports() {
    let file = read("docs/deploy/Containerfile");
    assert!(file.contains("cargo build --release --locked --bin edgerelay"), "the build step");
    assert!(read("Cargo.toml").contains("name = \"edgerelay\"\npath = \"src/main.rs\""), "the binary it builds");
    let config = production_config();
    let exposed: Vec<&str> =
        file.lines().filter_map(|l| l.strip_prefix("EXPOSE ")).flat_map(|l| l.split_whitespace()).collect();
    let admin = config.listen.admin.expect("the example sets listen.admin");
    for port in [
        format!("{}/udp", config.listen.udp.port()),
        format!("{}/tcp", config.listen.tcp.port()),
        format!("{}/tcp", admin.port()),
    ] {
        assert!(exposed.contains(&port.as_str()), "EXPOSE {port} (exposed: {exposed:?})");
    }
    let volume = format!("VOLUME [\"{}\"]", config.data_dir.display());
    assert!(file.contains(&volume), "the data directory is a volume: {volume}");
    assert!(file.contains("\"--config\", \"/etc/edgerelay/edgerelay.toml\""), "the config's path as in the unit");
    // The build context leaves out what is not source.
    let ignore = read(".dockerignore");
    for path in ["target/", "**/node_modules/", ".venv/", "certs/dev/"] {
        assert!(ignore.lines().any(|l| l == path), ".dockerignore leaves out {path}");
    }
}

fn which(program: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file()).ok_or(())
}
