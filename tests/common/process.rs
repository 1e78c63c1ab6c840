//! The relay binary as its own process, for tests that kill it (SIGKILL) or run several.
//! Included by those tests with `#[path = "common/process.rs"] mod process;` beside
//! `mod common;` (netsim's tests share `common` and have no relay binary).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use edgerelay::client::{ServerTrust, Target};

use crate::common::{http_get, http_request, within};

pub const BIN: &str = env!("CARGO_BIN_EXE_edgerelay");
pub const API_KEY: &str = "process-test-api-key";

/// A free loopback port for UDP and one for TCP (bound, then released for the relay).
pub fn free_ports() -> (SocketAddr, SocketAddr) {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    (udp, tcp)
}

/// The relay binary on fixed loopback ports and a data directory that outlives it.
pub struct RelayProcess {
    pub dir: std::path::PathBuf,
    pub udp: SocketAddr,
    pub tcp: SocketAddr,
    /// More `EDGERELAY_*` settings, on top of the ones every test relay gets.
    pub env: Vec<(String, String)>,
    pub child: Option<Child>,
}

impl RelayProcess {
    /// A relay on free ports with its data in `dir`.
    pub fn new(dir: &std::path::Path) -> RelayProcess {
        let (udp, tcp) = free_ports();
        RelayProcess { dir: dir.to_path_buf(), udp, tcp, env: Vec::new(), child: None }
    }

    pub fn with_env(mut self, key: &str, value: impl Into<String>) -> RelayProcess {
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("EDGERELAY_DATA_DIR", &self.dir)
            .env("EDGERELAY_LISTEN__UDP", self.udp.to_string())
            .env("EDGERELAY_LISTEN__TCP", self.tcp.to_string())
            .env("EDGERELAY_API__KEY", API_KEY)
            .env("EDGERELAY_LIMITS__PUBLISH_RATE", "10000")
            .env("EDGERELAY_LIMITS__PUBLISH_BURST", "10000");
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }

    pub async fn start(&mut self) {
        let tcp = self.tcp;
        self.start_ready_at(tcp).await;
    }

    /// Starts the relay and waits until plain HTTP `/readyz` at `probe` answers 200: the TCP
    /// port, or `listen.admin` when the TCP port speaks TLS.
    pub async fn start_ready_at(&mut self, probe: SocketAddr) {
        let mut cmd = self.command(&["serve"]);
        // The relay's log, when a failing test needs it: TEST_RELAY_LOGS=1.
        let logs = if std::env::var_os("TEST_RELAY_LOGS").is_some() { Stdio::inherit() } else { Stdio::null() };
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(logs);
        self.child = Some(cmd.spawn().expect("spawn relay"));
        within("relay ready", async {
            loop {
                if tokio::net::TcpStream::connect(probe).await.is_ok() && http_get(probe, "/readyz").await.0 == 200 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
    }

    /// Raw QUIC to this relay, trusting the given certificate hashes.
    pub fn quic_target(&self, pins: Vec<[u8; 32]>) -> Target {
        Target::Quic { addr: self.udp, server_name: "localhost".into(), tls: ServerTrust::Pinned(pins) }
    }

    pub fn ws_target(&self) -> Target {
        Target::WebSocket { url: format!("ws://{}/v1/ws", self.tcp) }
    }

    /// SIGTERM (the drain `systemctl stop` and `docker stop` start); the exit status, or a
    /// panic if the process is still running after `limit`.
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("relay running");
        let sent = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        let waited = tokio::time::timeout(limit, async {
            loop {
                if let Some(status) = child.try_wait().expect("wait for the relay") {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let status = waited.unwrap_or_else(|_| panic!("the relay did not exit within {limit:?} of SIGTERM"));
        self.child = None;
        status
    }

    /// SIGKILL: nothing is flushed, nothing is closed.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn token(&self, sub: &str) -> String {
        self.mint(&["--sub", sub])
    }

    /// A token with an id (`jti`), which the server API can revoke alone.
    pub fn token_with_jti(&self, sub: &str, jti: &str) -> String {
        self.mint(&["--sub", sub, "--jti", jti])
    }

    fn mint(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "--tenant", "acme", "--room", "*", "--ttl", "1h"];
        all.extend_from_slice(args);
        let out = self.command(&all).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    pub async fn cert_pin(&self) -> [u8; 32] {
        let (_, body) = http_get(self.tcp, "/v1/cert").await;
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        let pin = base64::engine::general_purpose::STANDARD.decode(info["sha256_base64"].as_str().unwrap()).unwrap();
        pin.try_into().expect("a SHA-256 is 32 bytes")
    }

    /// Every message of `room` in the history API: (offset, id), oldest first.
    pub async fn history_ids(&self, room: &str) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        let mut before: Option<u64> = None;
        loop {
            let path = match before {
                Some(b) => format!("/v1/api/history?tenant=acme&room={room}&limit=1000&before={b}"),
                None => format!("/v1/api/history?tenant=acme&room={room}&limit=1000"),
            };
            let auth = format!("Bearer {API_KEY}");
            let (status, body) = http_request(self.tcp, "GET", &path, &[("authorization", auth.as_str())], "").await;
            assert_eq!(status, 200, "{body}");
            let page: serde_json::Value = serde_json::from_str(&body).unwrap();
            let messages = page["messages"].as_array().unwrap();
            if messages.is_empty() {
                break;
            }
            let mut batch: Vec<(u64, String)> = messages
                .iter()
                .map(|m| (m["offset"].as_u64().unwrap(), m["id"].as_str().unwrap().to_owned()))
                .collect();
            before = batch.first().map(|m| m.0);
            batch.append(&mut out);
            out = batch;
        }
        out
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
