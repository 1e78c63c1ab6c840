//! The packet-level emulator: a relay in the server namespace, clients in the client namespace,
//! every IP packet between them through the profile's model. Skips (passing, with a message)
//! where it cannot run: not root, or no /dev/net/tun.
//!
//! Current-thread runtimes: entering a namespace is per thread, and sockets are created on the
//! thread that polls the code creating them.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use common::Transport;
use netsim::Profile;
use netsim::ns::{Emulator, Side, can_emulate};
use support::{connect, expect_delivered, publish_window};

fn skip() -> bool {
    match can_emulate() {
        Ok(()) => false,
        Err(why) => {
            eprintln!("SKIPPED: the namespace emulator {why}");
            true
        }
    }
}

/// Reliable delivery over `transport` with the relay and both clients on either side of the
/// emulator.
async fn reliable_through_emulator(profile: &str, transport: Transport, seed: u64) {
    let emulator = Emulator::start(Profile::named(profile).unwrap(), seed).unwrap();
    let server = emulator.addr(Side::Server);
    let relay = {
        let _inside = emulator.enter(Side::Server).unwrap();
        common::start_with(|config| {
            config.listen.udp = SocketAddr::from((server, 0));
            config.listen.tcp = SocketAddr::from((server, 0));
        })
        .await
    };
    let room = format!("ns-{profile}");
    let (mut subscriber, publisher) = {
        let _inside = emulator.enter(Side::Client).unwrap();
        let subscriber = connect(&relay, transport, relay.target(transport), "sub", &room).await.unwrap();
        (subscriber, connect(&relay, transport, relay.target(transport), "pub", &room).await.unwrap())
    };
    let joined = subscriber.join(&room).await.unwrap();
    let mut acked = Vec::new();
    for first in (0..60).step_by(20) {
        acked.extend(publish_window(&publisher, &room, first, 20).await.unwrap());
    }
    expect_delivered(&mut subscriber, joined.position, &acked).await.unwrap();
    let stats = emulator.stats();
    eprintln!("{profile} over {transport:?}: up {:?}\n  down {:?}", stats.up, stats.down);
    assert!(stats.up.delivered > 0 && stats.down.delivered > 0, "traffic went around the emulator: {stats:?}");
    publisher.close().await;
    subscriber.close().await;
    relay.relay.shutdown().await;
    emulator.shutdown().await;
}

#[tokio::test(flavor = "current_thread")]
async fn reliable_messages_through_the_emulator_over_quic() {
    if skip() {
        return;
    }
    reliable_through_emulator("edge-of-cell", Transport::Quic, 11).await;
}

#[tokio::test(flavor = "current_thread")]
async fn reliable_messages_through_the_emulator_over_websocket() {
    if skip() {
        return;
    }
    reliable_through_emulator("edge-of-cell", Transport::WebSocket, 12).await;
}

/// Processes in process group `pgid` that are still running (a zombie has already exited).
fn running_in_group(pgid: i32) -> Vec<i32> {
    let proc = std::fs::read_dir("/proc").unwrap();
    proc.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // After "pid (comm)": state, parent, process group.
        let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
        let (state, _parent, group) = (fields.next()?, fields.next()?, fields.next()?);
        (state != "Z" && group.parse() == Ok(pgid)).then_some(pid)
    })
    .collect()
}

/// `netsim ns`: the client runs in a namespace with the TUN device at the client address and
/// reaches the server across the emulator; netsim exits with the client's status and stops the
/// server (a shell that would otherwise run for a minute).
#[test]
fn cli_runs_each_command_in_its_namespace_and_cleans_up() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // netsim starts the server in a process group of its own, led by the shell.
    let group_file = dir.path().join("server-group");
    // A UDP echo in Python (the test command installs Python anyway).
    let echo = "import socket,os; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); \
        s.bind((os.environ['NETSIM_SERVER'],9000)); d,a=s.recvfrom(100); s.sendto(d,a)";
    let server = format!("echo $$ > {}; python3 -c \"{echo}\"; sleep 60", group_file.display());
    let ask = "import socket,os; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(0.5); \
        a=(os.environ['NETSIM_SERVER'],9000)
for _ in range(20):
    s.sendto(b'hi',a)
    try:
        assert s.recv(100)==b'hi'; raise SystemExit(7)
    except socket.timeout: pass";
    let client = format!("grep -q netsim0 /proc/net/dev && python3 -c \"{ask}\"");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_netsim"))
        .args([
            "ns",
            "--profile",
            "4g",
            "--seed",
            "1",
            "--server-wait",
            "0.5",
            "--server",
            &server,
            "--client",
            &client,
        ])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(7), "the client's exit status");
    let group: i32 = std::fs::read_to_string(&group_file).unwrap().trim().parse().unwrap();
    // The server's processes may take a moment to die after the signal; a live one would sleep on.
    for _ in 0..50 {
        if running_in_group(group).is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = running_in_group(group);
    assert!(left.is_empty(), "the server command outlived netsim: {left:?}");
}
