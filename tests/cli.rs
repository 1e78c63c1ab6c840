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

    /// Stdout lines until the banner's last line, or panics at the deadline.
    fn read_banner(&mut self) -> Banner {
        let deadline = Instant::now() + BANNER_DEADLINE;
        let mut lines = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let last = line.contains("mint a dev token");
                    lines.push(line);
                    if last {
                        return Banner::parse(lines.join("\n"));
                    }
                }
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
    udp: SocketAddr,
    ws: SocketAddr,
    hex: String,
    base64: String,
    mint: String,
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
        let udp = word_after("udp://");
        let udp = udp.parse().unwrap_or_else(|e| panic!("udp address {udp:?}: {e}"));
        let ws = word_after("ws://");
        let ws = ws.strip_suffix("/v1/ws").unwrap_or_else(|| panic!("WebSocket URL ws://{ws} is not /v1/ws"));
        let ws = ws.parse().unwrap_or_else(|e| panic!("ws address {ws:?}: {e}"));
        Banner {
            udp,
            ws,
            hex: value_of("certificate sha256 (hex)"),
            base64: value_of("certificate sha256 (base64)"),
            mint: value_of("mint a dev token:"),
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
    assert_eq!(banner.mint, format!("edgerelay {TOKEN_COMMAND}"), "the token command is copy-pasteable");

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

#[test]
fn token_prints_a_jwt_with_the_requested_claims_and_rejects_a_bad_ttl() {
    let dir = tempfile::tempdir().unwrap();
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
    assert!(dir.path().join("data/dev-token-secret").is_file(), "token creates the dev secret in the data dir");

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
        (&["serve", "--help"][..], &["--config"][..]),
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
    let rest = banner.mint.strip_prefix("edgerelay ").unwrap_or_else(|| panic!("mint line: {}", banner.mint));
    let mut sh = clean_command("sh", dir.path());
    sh.arg("-c").arg(format!("'{BIN}' {rest}"));
    let stdout = run_ok(sh);
    let secret = std::fs::read(dir.path().join("cfgdata/dev-token-secret")).unwrap();
    let verifier = Verifier::new(&Config::default().auth, Some(&secret)).unwrap();
    if let Err(e) = verifier.verify(stdout.trim(), now()) {
        panic!(
            "`{}` (printed by `serve {}`) mints a token this relay rejects: {e}",
            banner.mint,
            config_args.join(" ")
        );
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
