//! The floor under the relay's WebSocket fanout cost on loopback: what the kernel alone charges
//! the sending thread for one `send` of a small frame to a TCP socket, with nothing of the relay
//! around it.
//!
//! The shape is the load generator's CPU run (`edgerelay-load fanout --subscribers 1000 --rooms
//! 10`): 1,000 loopback TCP connections in 10 rooms of 100, a writer thread that "publishes" to
//! the rooms in turn and writes one 130-byte frame (a 100-byte payload's message frame) to each
//! of the room's 100 sockets, paced at the offered rate; a reader (one tokio thread, like a
//! client) drains them. On loopback the receiver's TCP processing (the softirq) and its wake-up
//! run inside the sender's `send`, so they are charged to the writer, as to the relay. The
//! writer thread's CPU (`utime + stime` of `/proc/thread-self/stat`) per million frames is the
//! floor for one frame per system call; `batch` > 1 writes that many frames per `send` (what a
//! relay can do when several messages for a subscriber are waiting) at the same frame rate.
//!
//! The same for QUIC's floor, with UDP: one server socket (as quinn's endpoint has) sends one
//! 160-byte datagram per delivery (a 100-byte payload's message in a short-header packet) to
//! each of 1,000 client sockets, and every client answers each datagram with a 40-byte one (the
//! ACK a QUIC receiver sends for a lone packet after its ACK delay), which the writer receives.
//! One `sendto` and one `recvfrom` per delivery, no crypto and no QUIC state: what the kernel
//! charges for the packets alone.
//!
//! The last table asks whether batching the sends could lower the floor: each room's 100 frames
//! go out in one `io_uring_enter` (100 queued sends) instead of 100 `send` calls, interleaved
//! with the plain sends at the same rates. Besides the writer thread it gives the whole
//! process's CPU (writer and reader): on loopback the receiving side's TCP work runs in whichever
//! context delivers the packet, so a change can move CPU from the writer's account to the
//! reader's without saving any. The process column is the one that shows a real saving.
//!
//! Run: `cargo bench --bench send_floor` (about 90 s). Results: `docs/performance.md`.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

const CONNECTIONS: usize = 1_000;
const ROOMS: usize = 10;
const FRAME: usize = 130;
const DATAGRAM: usize = 160;
const ACK: usize = 40;
const SECONDS: u64 = 5;

/// (frames per second over all connections, frames per `send`)
const SHAPES: &[(u64, usize)] = &[(20_000, 1), (100_000, 1), (100_000, 4), (500_000, 1), (500_000, 16)];
/// Datagrams per second over all connections.
const UDP_RATES: &[u64] = &[20_000, 100_000];
/// Frames per second for the `send` against `io_uring` comparison, each run twice.
const URING_RATES: &[u64] = &[20_000, 100_000];

/// How the writer hands a room's frames to the kernel.
#[derive(Clone, Copy, PartialEq)]
enum Submit {
    /// One `send` system call per frame.
    Send,
    /// The room's sends queued in an io_uring and submitted with one `io_uring_enter`.
    Uring,
}

fn main() {
    tcp();
    udp();
}

fn tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    let mut writers = Vec::with_capacity(CONNECTIONS);
    let mut readers = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let client = TcpStream::connect(addr).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        server.set_nodelay(true).expect("nodelay");
        writers.push(server);
        readers.push(client);
    }
    let received = Arc::new(AtomicU64::new(0));
    let reader = spawn_reader(readers, received.clone());

    println!(
        "{:>12} {:>6} {:>12} {:>10} {:>14} {:>10}",
        "frames/s", "batch", "frames", "cpu s", "cpu-s/million", "µs/send"
    );
    for &(rate, batch) in SHAPES {
        let before = received.load(Ordering::Relaxed);
        let (frames, sends, cpu) = write_for(&mut writers, rate, batch, Submit::Send, Duration::from_secs(SECONDS));
        wait_until_read(&received, before + frames * FRAME as u64);
        let per_million = cpu / frames as f64 * 1e6;
        let per_send = cpu / sends as f64 * 1e6;
        println!("{rate:>12} {batch:>6} {frames:>12} {cpu:>10.2} {per_million:>14.2} {per_send:>10.2}");
    }

    println!(
        "\n{:>12} {:>8} {:>12} {:>22} {:>22}",
        "frames/s", "submit", "frames", "writer cpu-s/million", "process cpu-s/million"
    );
    for &rate in URING_RATES {
        for submit in [Submit::Send, Submit::Uring, Submit::Send, Submit::Uring] {
            let before = received.load(Ordering::Relaxed);
            let process_before = process_cpu_seconds();
            let (frames, _, cpu) = write_for(&mut writers, rate, 1, submit, Duration::from_secs(SECONDS));
            wait_until_read(&received, before + frames * FRAME as u64);
            let process = process_cpu_seconds() - process_before;
            let name = if submit == Submit::Send { "send" } else { "io_uring" };
            let (writer, process) = (cpu / frames as f64 * 1e6, process / frames as f64 * 1e6);
            println!("{rate:>12} {name:>8} {frames:>12} {writer:>22.2} {process:>22.2}");
        }
    }
    drop(writers);
    let _ = reader.join();
}

/// Waits (at most 10 s) until the reader has taken `total` bytes, so nothing is left in the
/// buffers for the next shape.
fn wait_until_read(received: &AtomicU64, total: u64) {
    let until = Instant::now() + Duration::from_secs(10);
    while received.load(Ordering::Relaxed) < total && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn udp() {
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
    let server_addr = server.local_addr().expect("local addr");
    server.set_nonblocking(true).expect("nonblocking");
    let mut clients = Vec::with_capacity(CONNECTIONS);
    let mut addrs = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind loopback");
        client.connect(server_addr).expect("connect");
        addrs.push(client.local_addr().expect("local addr"));
        clients.push(client);
    }
    let _acker = spawn_acker(clients);

    println!("\n{:>12} {:>12} {:>10} {:>10} {:>14}", "datagrams/s", "datagrams", "acks", "cpu s", "cpu-s/million");
    for &rate in UDP_RATES {
        let (sent, acks, cpu) = send_datagrams_for(&server, &addrs, rate, Duration::from_secs(SECONDS));
        let per_million = cpu / sent as f64 * 1e6;
        println!("{rate:>12} {sent:>12} {acks:>10} {cpu:>10.2} {per_million:>14.2}");
    }
    // The acker thread is left blocked on its sockets; the process exits.
}

/// Sends `rate` datagrams per second for `window` to the rooms in turn from one socket, taking
/// the acks in between; returns datagrams sent, acks taken and the thread's CPU seconds.
fn send_datagrams_for(server: &UdpSocket, addrs: &[SocketAddr], rate: u64, window: Duration) -> (u64, u64, f64) {
    let room_size = CONNECTIONS / ROOMS;
    let packet = [0x40u8; DATAGRAM];
    let mut ack = [0u8; 64];
    let interval = Duration::from_secs_f64(room_size as f64 / rate as f64);
    let cpu_before = thread_cpu_seconds();
    let started = Instant::now();
    let (mut sent, mut acks, mut publish) = (0u64, 0u64, 0usize);
    let mut take_acks = |acks: &mut u64| {
        while server.recv_from(&mut ack).is_ok() {
            *acks += 1;
        }
    };
    while started.elapsed() < window {
        let room = publish % ROOMS;
        for addr in &addrs[room * room_size..(room + 1) * room_size] {
            // A full socket buffer drops the datagram, as it would for quinn; count what left.
            if server.send_to(&packet, addr).is_ok() {
                sent += 1;
            }
        }
        publish += 1;
        take_acks(&mut acks);
        let next = started + interval * publish as u32;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let until = Instant::now() + Duration::from_secs(2);
    while acks < sent && Instant::now() < until {
        take_acks(&mut acks);
        std::thread::sleep(Duration::from_millis(1));
    }
    (sent, acks, thread_cpu_seconds() - cpu_before)
}

/// One tokio thread answering every datagram with a small one, as a QUIC client's ACK.
fn spawn_acker(clients: Vec<UdpSocket>) -> std::thread::JoinHandle<()> {
    on_client_thread(clients, |socket| async move {
        socket.set_nonblocking(true).expect("nonblocking");
        let socket = tokio::net::UdpSocket::from_std(socket).expect("register");
        let mut buf = [0u8; 2048];
        while socket.recv(&mut buf).await.is_ok() {
            let _ = socket.send(&[0x40u8; ACK]).await;
        }
    })
}

/// Writes at `rate` frames per second for `window`, `batch` frames per `send`, to the rooms in
/// turn; returns frames and sends made and the thread's CPU seconds.
fn write_for(writers: &mut [TcpStream], rate: u64, batch: usize, submit: Submit, window: Duration) -> (u64, u64, f64) {
    let room_size = CONNECTIONS / ROOMS;
    let buf = vec![0x82u8; FRAME * batch];
    let publishes_per_sec = rate as f64 / (room_size * batch) as f64;
    let interval = Duration::from_secs_f64(1.0 / publishes_per_sec);
    let mut ring = (submit == Submit::Uring).then(|| io_uring::IoUring::new(2 * room_size as u32).expect("io_uring"));
    let cpu_before = thread_cpu_seconds();
    let started = Instant::now();
    let (mut frames, mut sends, mut publish) = (0u64, 0u64, 0usize);
    while started.elapsed() < window {
        let room = publish % ROOMS;
        let sockets = &mut writers[room * room_size..(room + 1) * room_size];
        match ring.as_mut() {
            Some(ring) => send_all_in_one_submit(ring, sockets, &buf),
            None => {
                for socket in sockets.iter_mut() {
                    socket.write_all(&buf).expect("write to a loopback reader");
                }
            }
        }
        sends += room_size as u64;
        frames += (room_size * batch) as u64;
        publish += 1;
        let next = started + interval * publish as u32;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    (frames, sends, thread_cpu_seconds() - cpu_before)
}

/// Queues one send of `buf` per socket and submits them with one `io_uring_enter`, waiting for
/// every completion. The sockets' buffers have room (the reader keeps up), so each send is
/// done in full inline.
fn send_all_in_one_submit(ring: &mut io_uring::IoUring, sockets: &[TcpStream], buf: &[u8]) {
    use io_uring::{opcode, types};
    use std::os::fd::AsRawFd;
    let len = u32::try_from(buf.len()).expect("frame size");
    {
        let mut queue = ring.submission();
        for socket in sockets {
            let send = opcode::Send::new(types::Fd(socket.as_raw_fd()), buf.as_ptr(), len).build();
            // SAFETY: `buf` and the sockets outlive the submission: every completion is taken below.
            unsafe { queue.push(&send).expect("the ring has room for a room's sends") };
        }
    }
    ring.submit_and_wait(sockets.len()).expect("io_uring_enter");
    for done in ring.completion() {
        assert_eq!(done.result(), len as i32, "a send to a loopback reader with room in its buffer");
    }
}

/// One tokio thread reading every connection into an 8 KiB buffer, as a client does.
fn spawn_reader(readers: Vec<TcpStream>, received: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    on_client_thread(readers, move |stream| {
        let received = received.clone();
        async move {
            stream.set_nonblocking(true).expect("nonblocking");
            let mut stream = tokio::net::TcpStream::from_std(stream).expect("register");
            let mut buf = vec![0u8; 8 << 10];
            while let Ok(n @ 1..) = stream.read(&mut buf).await {
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    })
}

/// A thread with a single-threaded tokio runtime (a client's) serving each socket with a task
/// of its own until every one ends.
fn on_client_thread<S, F>(sockets: Vec<S>, serve: impl Fn(S) -> F + Send + 'static) -> std::thread::JoinHandle<()>
where
    S: Send + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().expect("runtime");
        runtime.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for socket in sockets {
                tasks.spawn(serve(socket));
            }
            while tasks.join_next().await.is_some() {}
        });
    })
}

/// This thread's user + system CPU seconds (clock ticks of 10 ms).
fn thread_cpu_seconds() -> f64 {
    cpu_seconds("/proc/thread-self/stat")
}

/// The whole process's (every thread's) user + system CPU seconds.
fn process_cpu_seconds() -> f64 {
    cpu_seconds("/proc/self/stat")
}

fn cpu_seconds(stat_path: &str) -> f64 {
    let stat = std::fs::read_to_string(stat_path).expect("/proc stat");
    // Fields after the command name (which ends with the last ')'): utime is the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}
