//! Helpers for edgerelay's own tests and benchmarks: a throwaway `redis-server` on a free
//! loopback port. In the library (not a test module) because unit tests, integration tests and
//! benches all start one. Not for production use.

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

    /// Kills it and starts it again on the same port (and directory, if persistent).
    pub fn restart(&self) -> Result<(), TestServerError> {
        self.kill();
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
