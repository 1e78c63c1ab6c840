//! The `edgerelay` binary as a user runs it: `serve` (banner, data directory, health, SIGTERM,
//! restart), `token`, configuration errors and precedence, and `--help`. Loopback only; every
//! spawned process is killed when its guard drops and every wait has a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use edgerelay::auth::Verifier;
use edgerelay::client::{Client, ClientOptions, ServerTrust, Target};
use edgerelay::config::Config;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

const BIN: &str = env!("CARGO_BIN_EXE_edgerelay");
/// How long `serve` gets to print its banner.
const BANNER_DEADLINE: Duration = Duration::from_secs(20);
/// How long `serve` gets to exit after SIGTERM, and a one-shot command to finish.
const EXIT_DEADLINE: Duration = Duration::from_secs(15);
const TOKEN_COMMAND: &str = "token --sub alice --tenant acme --room 'chat:*' --ttl 1h";

/// `program` run in `dir`, with no `EDGERELAY_*` variable inherited from the test's own
/// environment.
fn clean_command(program: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().to_ascii_uppercase().starts_with("EDGERELAY_") {
            cmd.env_remove(name);
        }
    }
    cmd.current_dir(dir);
    cmd
}

/// The binary in `dir`, with its data directory at `<dir>/data`.
fn edgerelay(dir: &Path) -> Command {
    let mut cmd = clean_command(BIN, dir);
    cmd.env("EDGERELAY_DATA_DIR", dir.join("data"));
    cmd
}

/// `edgerelay` with loopback listeners on ephemeral ports, so nothing binds 4433/8080.
fn edgerelay_loopback(dir: &Path) -> Command {
    let mut cmd = edgerelay(dir);
    cmd.env("EDGERELAY_LISTEN__UDP", "127.0.0.1:0").env("EDGERELAY_LISTEN__TCP", "127.0.0.1:0");
    cmd
}

/// A spawned process, killed (and reaped) on drop. Its stdout arrives line by line; its
/// stderr is collected for assertions and failure messages.
struct Proc {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: JoinHandle<()>,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {BIN}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let (tx, stdout) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut text = sink.lock().unwrap_or_else(|e| e.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
        Proc { child, stdout, stderr, stderr_reader }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stderr so far; once the process has exited, waits (bounded) for the rest of it.
    fn stderr(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stderr_reader.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Stdout lines until the banner's end (an empty line), or panics at the deadline.
    fn read_banner(&mut self) -> Banner {
        let deadline = Instant::now() + BANNER_DEADLINE;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.is_empty() => return Banner::parse(lines.join("\n")),
                Ok(line) => lines.push(line),
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.wait_for_exit(Duration::from_secs(5));
                    panic!(
                        "no complete banner within {BANNER_DEADLINE:?} ({e:?})\nstdout:\n{}\nstderr:\n{}",
                        lines.join("\n"),
                        self.stderr()
                    );
                }
            }
        }
    }

    fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(None) => return None,
                Err(e) => panic!("wait for {BIN}: {e}"),
            }
        }
    }

    /// The exit status, or panics (and the guard kills) if it takes longer than `timeout`.
    fn exit_status(&mut self, timeout: Duration) -> ExitStatus {
        match self.wait_for_exit(timeout) {
            Some(status) => status,
            None => panic!("{BIN} did not exit within {timeout:?}; stderr:\n{}", self.stderr()),
        }
    }

    /// Sends SIGTERM at once and returns the exit status.
    fn terminate(&mut self) -> ExitStatus {
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap_or_else(|e| panic!("run kill: {e}"));
        assert!(sent.success(), "kill -TERM {} failed", self.pid());
        self.exit_status(EXIT_DEADLINE)
    }

    /// All of stdout after the process has exited (bounded).
    fn rest_of_stdout(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut text = String::new();
        loop {
            match self.stdout.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    text.push_str(&line);
                    text.push('\n');
                }
                Err(RecvTimeoutError::Disconnected) => return text,
                Err(RecvTimeoutError::Timeout) => panic!("stdout still open 5 s after exit: {text}"),
            }
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a one-shot command did.
struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a one-shot command to completion, within [`EXIT_DEADLINE`].
fn run(cmd: Command) -> Outcome {
    let mut proc = Proc::spawn(cmd);
    let status = proc.exit_status(EXIT_DEADLINE);
    Outcome { status, stdout: proc.rest_of_stdout(), stderr: proc.stderr() }
}

/// Runs a command that must fail; returns its stderr.
fn run_failing(cmd: Command) -> String {
    let out = run(cmd);
    assert!(
        !out.status.success(),
        "expected failure, got {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        out.stdout,
        out.stderr
    );
    out.stderr
}

/// Runs a command that must succeed; returns its stdout.
fn run_ok(cmd: Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "exit {}\nstdout:\n{}\nstderr:\n{}", out.status, out.stdout, out.stderr);
    out.stdout
}

/// The parts of the `serve` banner a user copies.
struct Banner {
    text: String,
    /// `host:port` of the `udp://` and `ws://` links.
    udp_link: String,
    ws_link: String,
    udp: SocketAddr,
    ws: SocketAddr,
    hex: String,
    base64: String,
    /// The token command, when dev keys are on.
    mint: Option<String>,
}

impl Banner {
    fn parse(text: String) -> Banner {
        let word_after = |prefix: &str| -> String {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no `{prefix}` in banner:\n{text}"))
                .to_string()
        };
        let value_of = |label: &str| -> String {
            let line = text
                .lines()
                .find(|l| l.trim_start().starts_with(label))
                .unwrap_or_else(|| panic!("no `{label}` line in banner:\n{text}"));
            line.trim_start()[label.len()..].trim().to_string()
        };
        // A link's first address (for `localhost`, whichever the resolver lists first).
        let resolve = |link: &str| -> SocketAddr {
            use std::net::ToSocketAddrs as _;
            link.to_socket_addrs()
                .unwrap_or_else(|e| panic!("link address {link:?}: {e}"))
                .next()
                .unwrap_or_else(|| panic!("{link:?} resolves to nothing"))
        };
        let udp_link = word_after("udp://");
        // `wss://` when the TCP port speaks TLS (a configured certificate).
        let ws_link = value_of("WebSocket");
        let ws_link = ws_link
            .split_once("://")
            .map(|(_, rest)| rest.to_string())
            .unwrap_or_else(|| panic!("no WebSocket URL in banner:\n{text}"));
        let ws_link = ws_link
            .strip_suffix("/v1/ws")
            .unwrap_or_else(|| panic!("WebSocket URL ws://{ws_link} is not /v1/ws"))
            .to_string();
        let mint = text
            .lines()
            .any(|l| l.trim_start().starts_with("mint a dev token:"))
            .then(|| value_of("mint a dev token:"));
        Banner {
            udp: resolve(&udp_link),
            ws: resolve(&ws_link),
            udp_link,
            ws_link,
            hex: value_of("certificate sha256 (hex)"),
            base64: value_of("certificate sha256 (base64)"),
            mint,
            text,
        }
    }
}

fn is_loopback_ephemeral(addr: SocketAddr) -> bool {
    addr.ip() == std::net::Ipv4Addr::LOCALHOST && addr.port() != 0
}

/// `GET path` over a raw HTTP/1.1 connection; returns the status line and body.
fn http_get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap_or_else(|e| panic!("read GET {path}: {e}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

/// SHA-256 (lower-case hex) of the first certificate's DER in a PEM file.
fn pem_cert_sha256_hex(path: &Path) -> String {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let der = CertificateDer::pem_slice_iter(&pem)
        .next()
        .unwrap_or_else(|| panic!("no certificate in {}", path.display()))
        .unwrap_or_else(|e| panic!("bad PEM in {}: {e}", path.display()));
    edgerelay::tls::sha256(&der).iter().map(|b| format!("{b:02x}")).collect()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display())).permissions().mode() & 0o777
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn mint_token(dir: &Path) -> String {
    let mut cmd = edgerelay(dir);
    cmd.args(["token", "--sub", "alice", "--tenant", "acme", "--room", "chat:*", "--ttl", "1h"]);
    let stdout = run_ok(cmd);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "token prints exactly one line:\n{stdout}");
    lines[0].trim().to_string()
}

fn jwt_json(part: &str) -> serde_json::Value {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .unwrap_or_else(|e| panic!("JWT part {part:?} is not base64url: {e}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("JWT part is not JSON: {e}"))
}

#[test]
fn serve_prints_banner_creates_dev_files_serves_health_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut serve = edgerelay_loopback(dir.path());
    serve.arg("serve");
    let mut relay = Proc::spawn(serve);
    let banner = relay.read_banner();

    assert!(is_loopback_ephemeral(banner.udp), "udp:// line names the bound port:\n{}", banner.text);
    assert!(is_loopback_ephemeral(banner.ws), "ws:// line names the bound port:\n{}", banner.text);
    assert!(banner.text.contains(&format!("ws://{}/v1/ws", banner.ws)));
    assert_eq!(banner.hex.len(), 64, "hex hash: {:?}", banner.hex);
    assert!(banner.hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{:?}", banner.hex);
    let hash_bytes =
        banner.hex.as_bytes().chunks(2).map(|h| u8::from_str_radix(std::str::from_utf8(h).unwrap(), 16).unwrap());
    let expected_b64 = base64::engine::general_purpose::STANDARD.encode(hash_bytes.collect::<Vec<u8>>());
    assert_eq!(banner.base64, expected_b64, "the base64 hash is the same digest as the hex one");
    let mint = banner.mint.as_deref().unwrap_or_else(|| panic!("no token command:\n{}", banner.text));
    assert_eq!(
        mint,
        format!("{BIN} --data-dir {} {TOKEN_COMMAND}", data.display()),
        "the token command names this executable (not on PATH) and the relay's data directory"
    );

    for file in ["dev-cert.pem", "dev-key.pem", "dev-token-secret"] {
        assert!(data.join(file).is_file(), "{file} created in the data dir");
    }
    assert_eq!(mode(&data.join("dev-key.pem")), 0o600, "the private key is owner-only");
    assert_eq!(mode(&data.join("dev-token-secret")), 0o600, "the token secret is owner-only");
    assert_eq!(pem_cert_sha256_hex(&data.join("dev-cert.pem")), banner.hex, "the banner pins the certificate on disk");

    let (status, _) = http_get(banner.ws, "/healthz");
    assert!(status.starts_with("HTTP/1.1 200"), "GET /healthz: {status}");

    let status = relay.terminate();
    assert_eq!(status.code(), Some(0), "SIGTERM is a clean exit; stderr:\n{}", relay.stderr());
}

#[test]
fn restart_on_the_same_data_dir_keeps_the_certificate_and_the_token_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut serve = edgerelay_loopback(dir.path());
    serve.arg("serve");
    let mut first = Proc::spawn(serve);
    let first_banner = first.read_banner();
    let token = mint_token(dir.path());
    let secret_before = std::fs::read(data.join("dev-token-secret")).unwrap();
    assert_eq!(first.terminate().code(), Some(0), "stderr:\n{}", first.stderr());
    drop(first);

    let mut serve = edgerelay_loopback(dir.path());
    serve.arg("serve");
    let mut second = Proc::spawn(serve);
    let second_banner = second.read_banner();
    assert_eq!(second_banner.hex, first_banner.hex, "the dev certificate is reused, so pinned clients keep working");
    let secret = std::fs::read(data.join("dev-token-secret")).unwrap();
    assert_eq!(secret, secret_before, "the dev token secret is reused");

    let verifier = Verifier::new(&Config::default().auth, Some(&secret)).unwrap();
    let identity = verifier.verify(&token, now()).expect("a token minted before the restart still verifies");
    assert_eq!((identity.user.as_str(), identity.tenant.as_str()), ("alice", "acme"));
    assert_eq!(second.terminate().code(), Some(0), "stderr:\n{}", second.stderr());
}

/// A data directory at `<dir>/data` holding a dev token secret, as a relay leaves it.
fn relay_data_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(dir.join("data/dev-token-secret"), [7u8; 32]).unwrap();
}

#[test]
fn token_prints_a_jwt_with_the_requested_claims_and_rejects_a_bad_ttl() {
    let dir = tempfile::tempdir().unwrap();
    relay_data_dir(dir.path());
    let token = mint_token(dir.path());
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a compact JWT: {token}");
    let header = jwt_json(parts[0]);
    assert_eq!(header["alg"], "HS256", "header: {header}");
    assert_eq!(header["kid"], "dev", "header: {header}");
    let claims = jwt_json(parts[1]);
    assert_eq!(claims["sub"], "alice", "claims: {claims}");
    assert_eq!(claims["tenant"], "acme", "claims: {claims}");
    assert_eq!(claims["caps"]["join"], serde_json::json!(["chat:*"]), "claims: {claims}");
    assert_eq!(claims["caps"]["publish"], serde_json::json!(["chat:*"]), "claims: {claims}");
    let exp = claims["exp"].as_u64().unwrap_or_else(|| panic!("exp is a number: {claims}"));
    let expected = now() + 3600;
    assert!(exp.abs_diff(expected) <= 60, "exp {exp} is about now + 1h ({expected})");
    let secret = std::fs::read(dir.path().join("data/dev-token-secret")).unwrap();
    let verifier = Verifier::new(&Config::default().auth, Some(&secret)).unwrap();
    verifier.verify(&token, now()).expect("signed with the data directory's dev secret");

    let mut bad = edgerelay(dir.path());
    bad.args(["token", "--sub", "alice", "--tenant", "acme", "--ttl", "bogus"]);
    let out = run(bad);
    assert!(!out.status.success(), "--ttl bogus must fail; stdout:\n{}", out.stdout);
    assert!(out.stdout.trim().is_empty(), "no token printed on error: {}", out.stdout);
    assert!(out.stderr.contains("--ttl"), "the error names --ttl:\n{}", out.stderr);
}

#[test]
fn bad_configuration_is_an_error_naming_the_key_and_file_and_env_override_defaults() {
    let dir = tempfile::tempdir().unwrap();

    let mut cmd = edgerelay_loopback(dir.path());
    cmd.env("EDGERELAY_LIMITS__MAX_FRAME_BYTES", "abc").arg("serve");
    let stderr = run_failing(cmd);
    assert!(stderr.contains("limits.max_frame_bytes"), "the error names the key:\n{stderr}");
    assert!(stderr.contains("EDGERELAY_LIMITS__MAX_FRAME_BYTES"), "the error names the variable:\n{stderr}");

    // `serve --config <file holding text>`, which must fail; its stderr.
    let serve_with_file = |name: &str, text: &str| {
        let file = dir.path().join(name);
        std::fs::write(&file, text).unwrap();
        let mut cmd = edgerelay_loopback(dir.path());
        cmd.arg("--config").arg(&file).arg("serve");
        run_failing(cmd)
    };
    let stderr = serve_with_file("bad-type.toml", "[limits]\nmax_rooms_per_connection = \"x\"\n");
    assert!(stderr.contains("limits.max_rooms_per_connection"), "the error names the key:\n{stderr}");
    assert!(stderr.contains("bad-type.toml"), "the error names the file:\n{stderr}");

    let stderr = serve_with_file("unknown.toml", "[listen]\nudpp = \"1\"\n");
    assert!(stderr.contains("listen.udpp"), "the error names the unknown key:\n{stderr}");

    let file = dir.path().join("f.toml");
    std::fs::write(&file, "[limits]\nmax_rooms_per_connection = 7\n").unwrap();
    let effective = |env: Option<&str>| -> toml::Table {
        let mut cmd = edgerelay(dir.path());
        cmd.arg("--config").arg(&file).arg("config");
        if let Some(value) = env {
            cmd.env("EDGERELAY_LIMITS__MAX_ROOMS_PER_CONNECTION", value);
        }
        let stdout = run_ok(cmd);
        stdout.parse().unwrap_or_else(|e| panic!("`config` prints TOML: {e}\n{stdout}"))
    };
    let merged = effective(None);
    assert_eq!(merged["limits"]["max_rooms_per_connection"].as_integer(), Some(7), "the file overrides the default");
    assert_eq!(merged["limits"]["max_frame_bytes"].as_integer(), Some(65_536), "other defaults stay");
    let merged = effective(Some("9"));
    assert_eq!(
        merged["limits"]["max_rooms_per_connection"].as_integer(),
        Some(9),
        "the environment overrides the file"
    );
}

#[test]
fn help_documents_the_commands_and_options() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (&["--help"][..], &["serve", "token", "config"][..]),
        (
            &["serve", "--help"][..],
            &[
                "--config",
                "--data-dir",
                "--udp",
                "--tcp",
                "EDGERELAY_DATA_DIR",
                "EDGERELAY_LISTEN__UDP",
                "EDGERELAY_LISTEN__TCP",
                "EDGERELAY_<SECTION>__<KEY>",
            ][..],
        ),
        (&["token", "--help"][..], &["--ttl", "--sub", "--tenant", "--room"][..]),
    ] {
        let mut cmd = edgerelay(dir.path());
        cmd.args(args);
        let stdout = run_ok(cmd);
        for word in expected {
            assert!(stdout.contains(word), "`edgerelay {}` mentions {word}:\n{stdout}", args.join(" "));
        }
    }
}

/// Serves with `config_args` pointing at a file that moves the data directory, runs the token
/// command exactly as the banner prints it (through a shell, in the same directory), and checks
/// the token verifies with that data directory's secret.
fn banner_token_command_mints_a_token_the_relay_accepts(config_args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("c.toml"),
        "data_dir = \"cfgdata\"\n[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\n",
    )
    .unwrap();
    let mut serve = clean_command(BIN, dir.path());
    serve.args(config_args).arg("serve");
    let mut relay = Proc::spawn(serve);
    let banner = relay.read_banner();
    let mint = banner.mint.clone().unwrap_or_else(|| panic!("no token command:\n{}", banner.text));
    // As printed, from another directory and a shell without EDGERELAY_* variables.
    let elsewhere = tempfile::tempdir().unwrap();
    let mut sh = clean_command("sh", elsewhere.path());
    sh.arg("-c").arg(&mint);
    let stdout = run_ok(sh);
    let secret = std::fs::read(dir.path().join("cfgdata/dev-token-secret")).unwrap();
    let verifier = Verifier::new(&Config::default().auth, Some(&secret)).unwrap();
    if let Err(e) = verifier.verify(stdout.trim(), now()) {
        panic!("`{}` (printed by `serve {}`) mints a token this relay rejects: {e}", mint, config_args.join(" "));
    }
    assert_eq!(relay.terminate().code(), Some(0), "stderr:\n{}", relay.stderr());
}

#[test]
fn banner_token_command_carries_the_config_file() {
    banner_token_command_mints_a_token_the_relay_accepts(&["--config", "c.toml"]);
}

#[test]
fn banner_token_command_carries_the_config_file_given_with_equals() {
    banner_token_command_mints_a_token_the_relay_accepts(&["--config=c.toml"]);
}

/// Probabilistic: the window is between the banner's flush and the handler's installation, so
/// four relays at a time compete for the CPU to widen it.
#[test]
fn sigterm_right_after_the_banner_still_drains_and_exits_0() {
    for round in 0..25 {
        let attempts: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(move || {
                    let dir = tempfile::tempdir().unwrap();
                    let mut serve = edgerelay_loopback(dir.path());
                    serve.arg("serve");
                    let mut relay = Proc::spawn(serve);
                    relay.read_banner();
                    let status = relay.terminate();
                    (status, relay.stderr())
                })
            })
            .collect();
        for attempt in attempts {
            let (status, stderr) = attempt.join().expect("attempt thread");
            assert_eq!(status.code(), Some(0), "round {round}: {status}; stderr:\n{stderr}");
        }
    }
}

/// The 32 bytes of a lower-case hex SHA-256.
fn hex32(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or_else(|e| panic!("hex {hex:?}: {e}"));
    }
    out
}

/// Runs the banner's token command through a shell, in a fresh directory with no `EDGERELAY_*`
/// variable; returns the token.
fn mint_as_printed(banner: &Banner) -> String {
    let mint = banner.mint.clone().unwrap_or_else(|| panic!("no token command:\n{}", banner.text));
    let elsewhere = tempfile::tempdir().unwrap();
    let mut sh = clean_command("sh", elsewhere.path());
    sh.arg("-c").arg(&mint);
    run_ok(sh).trim().to_string()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// Waits (bounded) until the process's stderr contains `needle`.
fn wait_for_stderr(proc: &Proc, needle: &str) {
    let deadline = Instant::now() + BANNER_DEADLINE;
    while !proc.stderr.lock().unwrap_or_else(|e| e.into_inner()).contains(needle) {
        assert!(Instant::now() < deadline, "no {needle:?} in stderr:\n{}", proc.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn default_listeners_take_ipv6_and_ipv4_clients_and_the_banner_links_localhost() {
    let dir = tempfile::tempdir().unwrap();
    let defaults = Config::default().listen;
    let mut serve = edgerelay(dir.path());
    // The default addresses, on ephemeral ports.
    serve
        .arg("serve")
        .arg("--udp")
        .arg(SocketAddr::new(defaults.udp.ip(), 0).to_string())
        .arg("--tcp")
        .arg(SocketAddr::new(defaults.tcp.ip(), 0).to_string());
    let mut relay = Proc::spawn(serve);
    let banner = relay.read_banner();

    assert!(banner.udp_link.starts_with("localhost:"), "QUIC link names localhost:\n{}", banner.text);
    assert!(banner.ws_link.starts_with("localhost:"), "WebSocket link names localhost:\n{}", banner.text);
    for url in [
        format!("https://{}/v1/wt", banner.udp_link),
        format!("http://{}/", banner.ws_link),
        format!("http://{}/healthz", banner.ws_link),
    ] {
        assert!(banner.text.contains(&url), "banner links {url}:\n{}", banner.text);
    }
    for line in banner.text.lines().filter(|l| l.contains("://")) {
        assert!(!line.contains("0.0.0.0") && !line.contains("[::]"), "a link a browser cannot use: {line}");
    }
    assert!(banner.text.contains("IPv6 and IPv4"), "the banner says both stacks are served:\n{}", banner.text);
    assert!(
        banner.text.contains("not a secure context") && banner.text.contains("WebSocket fallback"),
        "the banner says when browsers fall back to WebSocket:\n{}",
        banner.text
    );
    let until = banner
        .text
        .split("valid until ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no expiry:\n{}", banner.text));
    let b = until.as_bytes();
    assert!(
        b.len() == 20 && b[4] == b'-' && b[10] == b'T' && b[19] == b'Z' && until[..4].parse::<u32>().is_ok(),
        "expiry as an RFC 3339 UTC date, not {until:?}"
    );

    let token = mint_as_printed(&banner);
    let pin = hex32(&banner.hex);
    let (udp_port, tcp_port) = (banner.udp.port(), banner.ws.port());
    runtime().block_on(async {
        for ip in ["::1", "127.0.0.1"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let quic = Target::Quic {
                addr: SocketAddr::new(ip, udp_port),
                server_name: "localhost".into(),
                tls: ServerTrust::Pinned(vec![pin]),
            };
            let ws = Target::WebSocket { url: format!("ws://{}/v1/ws", SocketAddr::new(ip, tcp_port)) };
            for target in [quic, ws] {
                let what = format!("{target:?}");
                let client = tokio::time::timeout(EXIT_DEADLINE, Client::connect(target, ClientOptions::new(&token)))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: no connection"))
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                client.ping().await.unwrap_or_else(|e| panic!("{what}: ping: {e}"));
            }
        }
    });
    assert_eq!(relay.terminate().code(), Some(0), "stderr:\n{}", relay.stderr());
}

#[test]
fn token_never_creates_a_secret_refuses_without_rooms_and_says_what_it_minted() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = |extra: &[&str]| {
        let mut cmd = edgerelay(dir.path());
        cmd.args(["token", "--sub", "alice", "--tenant", "acme", "--ttl", "1h"]).args(extra);
        run(cmd)
    };

    // No relay ever used this data directory.
    let out = token(&["--room", "chat:*"]);
    assert!(!out.status.success(), "minting without the relay's secret must fail; stdout:\n{}", out.stdout);
    assert!(out.stdout.trim().is_empty(), "no token printed: {}", out.stdout);
    assert!(!data.exists(), "token creates nothing: {}", data.display());
    for hint in
        [data.join("dev-token-secret").display().to_string().as_str(), "--data-dir", "--config", "EDGERELAY_DATA_DIR"]
    {
        assert!(out.stderr.contains(hint), "the refusal mentions {hint}:\n{}", out.stderr);
    }

    relay_data_dir(dir.path());
    let out = token(&[]);
    assert!(!out.status.success(), "a token granting no room must be refused; stdout:\n{}", out.stdout);
    assert!(out.stdout.trim().is_empty(), "no token printed: {}", out.stdout);
    for flag in ["--room", "--join", "--publish"] {
        assert!(out.stderr.contains(flag), "the refusal names {flag}:\n{}", out.stderr);
    }

    let out = token(&["--join", "news:*", "--publish", "chat:alice", "--jti", "t-1"]);
    assert!(out.status.success(), "stderr:\n{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout holds the token only:\n{}", out.stdout);
    let claims = jwt_json(lines[0].split('.').nth(1).unwrap());
    let exp = claims["exp"].as_u64().unwrap();
    let expiry = edgerelay::tls::rfc3339_utc(UNIX_EPOCH + Duration::from_secs(exp));
    for fact in ["alice", "acme", "news:*", "chat:alice", "t-1", &expiry, "dev-token-secret", "kid dev"] {
        assert!(out.stderr.contains(fact), "stderr says what was minted ({fact}):\n{}", out.stderr);
    }

    // Collaborative sessions alone are rights too (docs/sessions.md, "Tokens").
    let out = token(&["--session", "doc:*", "--session-read", "board:*"]);
    assert!(out.status.success(), "stderr:\n{}", out.stderr);
    let claims = jwt_json(out.stdout.trim().split('.').nth(1).unwrap());
    assert_eq!(claims["caps"]["session"], serde_json::json!(["doc:*"]));
    assert_eq!(claims["caps"]["session_read"], serde_json::json!(["board:*"]));
    assert!(out.stderr.contains("session doc:*") && out.stderr.contains("session_read board:*"), "{}", out.stderr);
}

#[test]
fn a_token_from_another_dev_secret_is_refused_with_a_hint_and_the_refusal_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = edgerelay_loopback(dir.path());
    serve.arg("serve");
    let mut relay = Proc::spawn(serve);
    let banner = relay.read_banner();

    // Minted against another data directory: its own dev secret.
    let other = tempfile::tempdir().unwrap();
    relay_data_dir(other.path());
    let foreign = mint_token(other.path());
    let refused = runtime().block_on(async {
        let target = Target::WebSocket { url: format!("ws://{}/v1/ws", banner.ws) };
        tokio::time::timeout(EXIT_DEADLINE, Client::connect(target, ClientOptions::new(&foreign))).await
    });
    match refused {
        Ok(Err(err)) => {
            assert!(err.to_string().contains("another dev secret"), "the client is told why: {err}")
        }
        Ok(Ok(_)) => panic!("a token from another dev secret was accepted"),
        Err(_) => panic!("no answer to hello"),
    }
    // The relay's own log says so at the default level.
    wait_for_stderr(&relay, "token refused");
    let stderr = relay.stderr();
    let line = stderr.lines().find(|l| l.contains("token refused")).unwrap();
    assert!(line.contains("WARN") && line.contains("another dev secret"), "{line}");
    assert_eq!(relay.terminate().code(), Some(0), "stderr:\n{}", relay.stderr());
}

#[test]
fn dev_keys_are_off_with_a_real_certificate_unless_set_and_then_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    // Any certificate and key files will do as "a real certificate".
    let certs = dir.path().join("certs");
    edgerelay::tls::load_or_create_dev_certs(&certs, SystemTime::now()).unwrap();
    let base = format!(
        "[listen]\nudp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\n[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        certs.join("dev-cert.pem").display(),
        certs.join("dev-key.pem").display()
    );
    let serve_with = |text: &str| {
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, text).unwrap();
        let mut cmd = edgerelay(dir.path());
        cmd.arg("--config").arg(&file).arg("serve");
        cmd
    };

    let stderr = run_failing(serve_with(&base));
    assert!(
        stderr.contains("auth.keys") && stderr.contains("tls.cert_file"),
        "no token keys with a real certificate and dev keys left at their default:\n{stderr}"
    );

    let mut relay = Proc::spawn(serve_with(&format!("{base}[auth]\ndev_keys = true\n")));
    let banner = relay.read_banner();
    assert!(banner.mint.is_some(), "explicit dev keys: the banner offers a dev token:\n{}", banner.text);
    assert!(
        banner.text.contains(&format!("wss://{}/v1/ws", banner.ws)) && banner.text.contains("https://"),
        "with a certificate file the TCP port speaks TLS, and the banner says so:\n{}",
        banner.text
    );
    let stderr = relay.stderr();
    assert!(
        stderr.lines().any(|l| l.contains("WARN") && l.contains("auth.dev_keys = true with a real certificate")),
        "dev keys with a real certificate are warned about:\n{stderr}"
    );
    assert_eq!(relay.terminate().code(), Some(0), "stderr:\n{}", relay.stderr());
}

#[test]
fn a_port_in_use_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut cmd = edgerelay(dir.path());
    cmd.args(["serve", "--udp", "127.0.0.1:0", "--tcp"]).arg(taken.local_addr().unwrap().to_string());
    let stderr = run_failing(cmd);
    assert!(stderr.contains("cannot bind TCP"), "{stderr}");
    assert_eq!(stderr.matches("(os error").count(), 1, "the OS error is printed once:\n{stderr}");
}

#[test]
fn a_browser_closing_its_webtransport_session_logs_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = edgerelay_loopback(dir.path());
    // The relay's own line for every closed connection is debug: wait for it.
    serve.args(["--log", "info,edgerelay::transport::quic=debug", "serve"]);
    let mut relay = Proc::spawn(serve);
    let banner = relay.read_banner();
    runtime().block_on(async {
        let client = web_transport_quinn::ClientBuilder::new()
            .with_server_certificate_hashes(vec![hex32(&banner.hex).to_vec()])
            .unwrap();
        let url: url::Url = format!("https://{}/v1/wt", banner.udp).parse().unwrap();
        let session = tokio::time::timeout(EXIT_DEADLINE, client.connect(url)).await.unwrap().unwrap();
        // What a browser does when its tab closes: the QUIC connection closes with H3_NO_ERROR.
        let conn: &quinn::Connection = &session;
        conn.close(quinn::VarInt::from_u32(0x100), b"");
        tokio::time::timeout(EXIT_DEADLINE, conn.closed()).await.unwrap();
    });
    wait_for_stderr(&relay, "quic connection closed");
    assert_eq!(relay.terminate().code(), Some(0));
    let stderr = relay.stderr();
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert!(warnings.is_empty(), "a normal close is no warning:\n{}", warnings.join("\n"));
}

/// The fenced ```toml blocks of a Markdown file: (line of the opening fence, text).
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut open: Option<(usize, char, usize, String)> = None;
    for (i, line) in markdown.lines().enumerate() {
        let trimmed = line.trim_start();
        let fence = |c: char| trimmed.chars().take_while(|&x| x == c).count();
        match &mut open {
            None => {
                for c in ['`', '~'] {
                    let n = fence(c);
                    if n >= 3 && trimmed[n..].split_whitespace().next() == Some("toml") {
                        open = Some((i + 1, c, n, String::new()));
                    }
                }
            }
            Some((start, c, n, text)) => {
                if fence(*c) >= *n && trimmed.trim_end().chars().all(|x| x == *c) {
                    blocks.push((*start, std::mem::take(text)));
                    open = None;
                } else {
                    text.push_str(line);
                    text.push('\n');
                }
            }
        }
    }
    blocks
}

/// The files under `dir` (recursively) whose name ends in `.ext`, sorted.
fn files_under(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            found.push(path);
        }
    }
    found.sort();
    found
}

#[test]
fn every_toml_example_in_the_readme_and_docs_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md"), root.join("certs/README.md")];
    files.extend(files_under(&root.join("docs"), "md"));
    // Whole config files (docs/deploy/*.toml) load as they are.
    let config_files = files_under(&root.join("docs"), "toml");
    assert!(!config_files.is_empty(), "no config example under docs/");
    let scratch = tempfile::tempdir().unwrap();
    let (mut checked, mut failures) = (0, Vec::new());
    for file in files.iter().chain(&config_files) {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(root).unwrap().display().to_string();
        let blocks = if config_files.contains(file) { vec![(1, text)] } else { toml_blocks(&text) };
        for (line, text) in blocks {
            let path = scratch.path().join("example.toml");
            std::fs::write(&path, &text).unwrap();
            checked += 1;
            if let Err(err) = Config::load(Some(&path), std::iter::empty()) {
                failures.push(format!("{name}:{line}: {err}"));
            }
        }
    }
    assert!(checked > 0, "no ```toml block found in {files:?}");
    assert!(failures.is_empty(), "TOML examples that do not load:\n{}", failures.join("\n"));
}
