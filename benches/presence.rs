//! Presence and typing load: 1,000 connected users (one raw-QUIC connection each, 10 per room,
//! 100 rooms) against the relay binary running as its own process, so its CPU time can be read
//! from `/proc` apart from the clients'.
//!
//! 1. Latency: in every room, one member changes its status, starts typing and stops typing,
//!    `SAMPLES` times; another member of the room measures the time from the send to the moment
//!    its view shows the change (presence datagram or typing datagram applied). Twice: once in
//!    lock-step bursts (all 100 rooms act at the same instant, the worst case), once spread
//!    (each action after a random pause of up to `SPREAD`, so changes arrive as users make
//!    them: independently, about 250 per second over the 1,000 users).
//! 2. Throughput: every user sends `RATE` presence/typing updates per second (typing start,
//!    typing stop, activity, status in turn) for `LOAD_SECS`; the relay's CPU time (user +
//!    system) over that phase divided by the updates it received gives CPU per 1,000 updates
//!    (each update fans out to the 10 members of the room).
//!
//! Run: `cargo bench --bench presence`. Bounded: about a minute. Results: `docs/performance.md`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgerelay::auth::Signer;
use edgerelay::client::{Client, ClientOptions, ServerTrust, Target};
use edgerelay::proto::Status;

#[path = "../tests/common/mod.rs"]
mod common;

const USERS: usize = 1_000;
const ROOM_SIZE: usize = 10;
const SAMPLES: usize = 20;
const RATE: u64 = 2;
const LOAD_SECS: u64 = 10;
const WAIT: Duration = Duration::from_secs(5);
const SPREAD: Duration = Duration::from_millis(800);

struct Relay {
    child: std::process::Child,
    udp: SocketAddr,
    sha256: [u8; 32],
    _dir: tempfile::TempDir,
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the relay binary on loopback and reads its banner.
fn start_relay(secret: &[u8]) -> Relay {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("dev-token-secret"), secret).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgerelay"))
        .arg("serve")
        .env("EDGERELAY_DATA_DIR", dir.path())
        .env("EDGERELAY_LISTEN__UDP", "127.0.0.1:0")
        .env("EDGERELAY_LISTEN__TCP", "127.0.0.1:0")
        .env("EDGERELAY_LOG", "warn")
        // The lock-step samplers change state faster than a person can (about 100 updates a
        // second per device); the default per-device limit (20/s, burst 40) would drop some.
        .env("EDGERELAY_PRESENCE__RATE", "200")
        .env("EDGERELAY_PRESENCE__BURST", "400")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (mut udp, mut sha) = (None, None);
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("udp://").nth(1) {
            udp = rest.trim().parse::<SocketAddr>().ok();
        }
        if line.contains("certificate sha256 (hex)") {
            sha = line.split_whitespace().last().map(str::to_owned);
        }
        if udp.is_some() && sha.is_some() {
            break;
        }
    }
    let hex = sha.unwrap();
    let mut sha256 = [0u8; 32];
    for (i, b) in sha256.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    Relay { child, udp: udp.unwrap(), sha256, _dir: dir }
}

/// The relay process's CPU time so far (user + system).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which ends with ')'): utime and stime are 14 and 15.
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10) // USER_HZ is 100 on Linux
}

/// The machine's count of UDP datagrams dropped because a socket's receive buffer was full
/// (`RcvbufErrors` in `/proc/net/snmp`; every process on the machine counts).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    let column = names.split_whitespace().position(|n| n == "RcvbufErrors");
    column.and_then(|c| values.split_whitespace().nth(c)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{name:<16} n={:<5} p50={:.2} ms  p95={:.2} ms  p99={:.2} ms  max={:.2} ms",
        samples.len(),
        ms(percentile(&samples, 0.50)),
        ms(percentile(&samples, 0.95)),
        ms(percentile(&samples, 0.99)),
        ms(*samples.last().unwrap()),
    );
}

/// Measures one room: member 0 acts, member 1 watches. `spread`: a random pause before each
/// action; otherwise the next action follows the last observation at once.
async fn sample_room(room: String, actor: Arc<Client>, watcher: Arc<Client>, spread: bool) -> [Vec<Duration>; 3] {
    let (mut presence, mut start, mut stop) = (Vec::new(), Vec::new(), Vec::new());
    let me = actor.welcome().user.clone();
    let pause = || async move {
        if spread {
            tokio::time::sleep(SPREAD.mul_f64(rand::random::<f64>())).await;
        }
    };
    for i in 0..SAMPLES {
        let status = if i % 2 == 0 { Status::Busy } else { Status::Online };
        pause().await;
        let t = Instant::now();
        actor.set_status(status, None).await.unwrap();
        if watcher.wait_presence(&room, WAIT, |v, _| v.status(&me) == status).await {
            presence.push(t.elapsed());
        }
        pause().await;
        let t = Instant::now();
        actor.typing(&room, true).await.unwrap();
        if watcher.wait_presence(&room, WAIT, |v, now| v.typing(now).0.contains(&me)).await {
            start.push(t.elapsed());
        }
        pause().await;
        let t = Instant::now();
        actor.typing(&room, false).await.unwrap();
        if watcher.wait_presence(&room, WAIT, |v, now| v.typing(now).1 == 0).await {
            stop.push(t.elapsed());
        }
    }
    [presence, start, stop]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let secret: [u8; 32] = rand::random();
    let relay = start_relay(&secret);
    let signer = Signer::dev(&secret);
    let target =
        Target::Quic { addr: relay.udp, server_name: "localhost".into(), tls: ServerTrust::Pinned(vec![relay.sha256]) };

    let started = Instant::now();
    let mut clients = Vec::with_capacity(USERS);
    for i in 0..USERS {
        let claims = common::claims(&format!("u{i}"), "bench", &["*"]);
        let client = Client::connect(target.clone(), ClientOptions::new(signer.sign(&claims).unwrap())).await.unwrap();
        client.join(&format!("r{}", i / ROOM_SIZE)).await.unwrap();
        clients.push(Arc::new(client));
    }
    println!("{USERS} users in {} rooms connected and joined in {:?}", USERS / ROOM_SIZE, started.elapsed());

    // 1. Latency, in lock-step bursts and spread out.
    for spread in [false, true] {
        let rcvbuf_before = udp_rcvbuf_errors();
        let mut tasks = Vec::new();
        for room in 0..USERS / ROOM_SIZE {
            let (actor, watcher) = (clients[room * ROOM_SIZE].clone(), clients[room * ROOM_SIZE + 1].clone());
            tasks.push(tokio::spawn(sample_room(format!("r{room}"), actor, watcher, spread)));
        }
        let (mut presence, mut start, mut stop) = (Vec::new(), Vec::new(), Vec::new());
        for task in tasks {
            let [p, s, t] = task.await.unwrap();
            presence.extend(p);
            start.extend(s);
            stop.extend(t);
        }
        let expected = USERS / ROOM_SIZE * SAMPLES;
        let mode = if spread { "spread" } else { "lock-step bursts" };
        println!("latency, {mode} (send -> another member's view shows it), {expected} attempts per kind:");
        report("presence", presence);
        report("typing start", start);
        report("typing stop", stop);
        println!(
            "UDP datagrams dropped by full socket receive buffers meanwhile: {}",
            udp_rcvbuf_errors() - rcvbuf_before
        );
    }

    // 2. Throughput and relay CPU.
    let cpu_before = cpu_time(relay.child.id());
    let rcvbuf_before = udp_rcvbuf_errors();
    let load_started = Instant::now();
    let mut tasks = Vec::new();
    for (i, client) in clients.iter().enumerate() {
        let client = client.clone();
        let room = format!("r{}", i / ROOM_SIZE);
        tasks.push(tokio::spawn(async move {
            // Spread the users over the period so the load is even.
            tokio::time::sleep(Duration::from_millis((i as u64 * 1000 / RATE) / USERS as u64)).await;
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / RATE));
            let mut sent = 0u64;
            for n in 0..LOAD_SECS * RATE {
                tick.tick().await;
                let result = match n % 4 {
                    0 => client.typing(&room, true).await,
                    1 => client.typing(&room, false).await,
                    2 => client.activity().await,
                    _ => client.set_status(if n % 8 == 3 { Status::Busy } else { Status::Online }, None).await,
                };
                sent += u64::from(result.is_ok());
            }
            sent
        }));
    }
    let mut updates = 0;
    for task in tasks {
        updates += task.await.unwrap();
    }
    let elapsed = load_started.elapsed();
    let cpu = cpu_time(relay.child.id()) - cpu_before;
    println!(
        "load: {updates} updates in {elapsed:.2?} ({:.0}/s, each fanned out to {ROOM_SIZE} members); relay CPU {cpu:?} \
         = {:.1} ms per 1,000 updates ({:.0} % of one core)",
        updates as f64 / elapsed.as_secs_f64(),
        cpu.as_secs_f64() * 1000.0 / (updates as f64 / 1000.0),
        cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0,
    );
    println!("UDP datagrams dropped by full socket receive buffers meanwhile: {}", udp_rcvbuf_errors() - rcvbuf_before);
    for client in clients {
        if let Ok(client) = Arc::try_unwrap(client) {
            client.close().await;
        }
    }
}
