//! Helpers for edgerelay's own tests and benchmarks: a throwaway `redis-server` on a free
//! loopback port, and a throwaway coturn `turnserver` (TURN REST credentials, `use-auth-secret`)
//! with a way to try an allocation against it. In the library (not a test module) because unit
//! tests, integration tests and benches all start one. Not for production use.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a starting `redis-server` may take to answer.
const START_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum TestServerError {
    #[error("redis-server not found ({0}); `scripts/test` installs it (apt-get install redis-server)")]
    Missing(std::io::Error),
    #[error("redis-server on {addr} did not answer within {START_TIMEOUT:?}")]
    NoAnswer { addr: SocketAddr },
    #[error("{program} not found ({error}); `scripts/test` installs it (apt-get install coturn)")]
    MissingCoturn { program: &'static str, error: std::io::Error },
    #[error("turnserver on {addr} did not listen within {START_TIMEOUT:?}; its log:\n{log}")]
    TurnNoAnswer { addr: SocketAddr, log: String },
    #[error("turnutils_uclient {outcome}; its output:\n{output}")]
    Uclient { outcome: String, output: String },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A `redis-server` child process, killed on drop. Without persistence unless started with
/// [`RedisServer::start_persistent`].
pub struct RedisServer {
    addr: SocketAddr,
    dir: Option<PathBuf>,
    child: Mutex<Option<Child>>,
}

impl RedisServer {
    /// Starts one on a free port, keeping nothing on disk.
    pub fn start() -> Result<RedisServer, TestServerError> {
        Self::start_at(free_port()?, None)
    }

    /// Starts one that keeps its data in an append-only file under `dir` (`appendfsync always`),
    /// so a restart keeps everything.
    pub fn start_persistent(dir: &Path) -> Result<RedisServer, TestServerError> {
        Self::start_at(free_port()?, Some(dir.to_path_buf()))
    }

    fn start_at(addr: SocketAddr, dir: Option<PathBuf>) -> Result<RedisServer, TestServerError> {
        let child = Self::spawn(addr, dir.as_deref())?;
        let server = RedisServer { addr, dir, child: Mutex::new(Some(child)) };
        server.wait_ready()?;
        Ok(server)
    }

    fn spawn(addr: SocketAddr, dir: Option<&Path>) -> Result<Child, TestServerError> {
        let mut command = Command::new("redis-server");
        command.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1", "--save", ""]);
        command.args(["--protected-mode", "no", "--loglevel", "warning"]);
        match dir {
            Some(dir) => {
                command.arg("--dir").arg(dir);
                command.args(["--appendonly", "yes", "--appendfsync", "always"]);
            }
            None => {
                command.args(["--appendonly", "no"]);
            }
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(TestServerError::Missing)
    }

    fn wait_ready(&self) -> Result<(), TestServerError> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if ping(self.addr) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TestServerError::NoAnswer { addr: self.addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Kills it (SIGKILL): whatever was not persisted is lost.
    pub fn kill(&self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port (and directory, if persistent). After
    /// [`RedisServer::kill`] it only starts it again.
    pub fn restart(&self) -> Result<(), TestServerError> {
        self.kill();
        self.start_again()
    }

    /// Kills it, deletes what it persisted, and starts it again on the same port, empty: a Redis
    /// that lost its data (a new machine, a wiped volume).
    pub fn restart_empty(&self) -> Result<(), TestServerError> {
        self.kill();
        if let Some(dir) = &self.dir {
            for entry in std::fs::read_dir(dir)? {
                let path = entry?.path();
                if path.is_dir() { std::fs::remove_dir_all(&path)? } else { std::fs::remove_file(&path)? }
            }
        }
        self.start_again()
    }

    fn start_again(&self) -> Result<(), TestServerError> {
        let child = Self::spawn(self.addr, self.dir.as_deref())?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_ready()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> std::io::Result<SocketAddr> {
    TcpListener::bind("127.0.0.1:0")?.local_addr()
}

/// Whether a Redis answers `PING` at `addr`.
fn ping(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

/// The realm a [`TurnServer`] runs with.
pub const TURN_REALM: &str = "edgerelay";

/// How long one [`TurnServer::allocate`] may take.
const ALLOCATE_TIMEOUT: Duration = Duration::from_secs(15);

/// A coturn `turnserver` child process on a free loopback port (UDP and TCP), in TURN REST
/// mode (`--use-auth-secret --static-auth-secret=<secret>`), plain (no TLS, no DTLS), relaying
/// on loopback and allowing loopback peers (so browsers on this machine can call through it).
/// Killed on drop; its state (user database, pid file, log) lives in a temporary directory.
pub struct TurnServer {
    addr: SocketAddr,
    /// Removed on drop.
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

/// What coturn answered to an allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allocation {
    /// The allocation succeeded and data went through the relay.
    Allocated,
    /// coturn refused it (wrong or expired credentials): `turnutils_uclient` could not complete
    /// the allocation.
    Refused,
}

impl TurnServer {
    /// Starts one on a free port with `secret` as its `static-auth-secret`.
    pub fn start(secret: &str) -> Result<TurnServer, TestServerError> {
        let dir = std::env::temp_dir().join(format!("edgerelay-turnserver-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir)?;
        let addr = free_udp_and_tcp_port()?;
        let log = std::fs::File::create(dir.join("turnserver.log"))?;
        let mut command = Command::new("turnserver");
        command.args([
            "--use-auth-secret",
            &format!("--static-auth-secret={secret}"),
            &format!("--realm={TURN_REALM}"),
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            &format!("--listening-port={}", addr.port()),
            "--no-tls",
            "--no-dtls",
            "--no-cli",
            "--allow-loopback-peers",
            "--log-file=stdout",
            "--simple-log",
        ]);
        command.arg(format!("--userdb={}", dir.join("turndb").display()));
        command.arg(format!("--pidfile={}", dir.join("turnserver.pid").display()));
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|error| TestServerError::MissingCoturn { program: "turnserver", error })?;
        let server = TurnServer { addr, dir, child: Mutex::new(Some(child)) };
        let deadline = Instant::now() + START_TIMEOUT;
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(TestServerError::TurnNoAnswer { addr, log: server.log() });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }

    /// Its listening address (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `turn:127.0.0.1:<port>?transport=udp`.
    pub fn turn_url(&self) -> String {
        format!("turn:{}?transport=udp", self.addr)
    }

    /// `stun:127.0.0.1:<port>` (coturn answers STUN binding requests on the same port).
    pub fn stun_url(&self) -> String {
        format!("stun:{}", self.addr)
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("turnserver.log")).unwrap_or_default()
    }

    /// Tries a TURN allocation over UDP with these long-term credentials, using coturn's own
    /// `turnutils_uclient` (two clients allocate relays and send each other one message
    /// through them): [`Allocation::Allocated`] when it exits 0, [`Allocation::Refused`] when it
    /// reports that the allocation could not be completed. Anything else is an error.
    pub fn allocate(&self, username: &str, password: &str) -> Result<Allocation, TestServerError> {
        let output = self.dir.join(format!("uclient-{:016x}.out", rand::random::<u64>()));
        let file = std::fs::File::create(&output)?;
        let mut child = Command::new("turnutils_uclient")
            .args(["-u", username, "-w", password, "-p", &self.addr.port().to_string()])
            // -y: client to client through the relay; -c: no RTCP pair; -n 1: one message.
            .args(["-y", "-c", "-n", "1", "-l", "64", "127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .map_err(|error| TestServerError::MissingCoturn { program: "turnutils_uclient", error })?;
        let deadline = Instant::now() + ALLOCATE_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        match status {
            Some(status) if status.success() => Ok(Allocation::Allocated),
            Some(_) if text.contains("Cannot complete Allocation") => Ok(Allocation::Refused),
            Some(status) => Err(TestServerError::Uclient { outcome: format!("failed ({status})"), output: text }),
            None => {
                Err(TestServerError::Uclient { outcome: format!("timed out after {ALLOCATE_TIMEOUT:?}"), output: text })
            }
        }
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A loopback port free for both TCP and UDP (coturn listens on both).
fn free_udp_and_tcp_port() -> std::io::Result<SocketAddr> {
    for _ in 0..50 {
        let tcp = TcpListener::bind("127.0.0.1:0")?;
        let addr = tcp.local_addr()?;
        if std::net::UdpSocket::bind(addr).is_ok() {
            return Ok(addr);
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no loopback port free for both TCP and UDP"))
}
