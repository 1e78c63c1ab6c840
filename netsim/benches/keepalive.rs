//! What an idle mobile client costs its battery: the packets each way between an idle client and
//! the relay per minute, counted at a netsim proxy (`none` profile: nothing lost or delayed).
//! Each wake-up of the phone's radio to send or receive one is what drains the battery, so
//! packets (not bytes) are the measure. A relay with its default limits (idle timeout 45 s,
//! pings every 15 s); each client connected and then silent: once in no room (the keep-alives
//! alone), once joined to one room with nothing published (whose presence refresh, every
//! `presence.refresh_ms` = 5 s, reaches it too), and once joined to a room where another client
//! publishes a message every 10 s (a quiet conversation: the receive-side heartbeats of
//! `quic_watch_receiving`, on by default, follow each message).
//!
//! - QUIC, the client's defaults (idle timeout 45 s, keep-alive 14 s);
//! - QUIC with the client's former settings (idle timeout 8 s, keep-alive 2 s);
//! - WebSocket (the relay pings every 15 s; the proxy counts segments of the byte stream, so
//!   the kernel's bare TCP ACKs are not in the figure).
//!
//! Run: `cargo bench -p netsim --bench keepalive` (about 70 s; `KEEPALIVE_SECS` to change the
//! 60-second window). Results: docs/performance.md.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Duration;

use common::Transport;
use edgerelay::client::{Client, ClientOptions};
use edgerelay::proto::{Codec, Payload};
use netsim::{Profile, Proxy, Stats};
use support::proxy_config;

/// Before counting: the handshake and join are done, the first keep-alive timers armed.
const SETTLE: Duration = Duration::from_secs(3);
/// How often the room's other member publishes in the "receiving" rows.
const MESSAGE_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Room {
    /// In no room: the keep-alives alone.
    None,
    /// Joined to a room (whose presence refresh, every 5 s by default, also reaches it).
    Joined,
    /// Joined, and a message arrives every [`MESSAGE_EVERY`].
    Receiving,
}

struct Variant {
    name: &'static str,
    transport: Transport,
    options: fn(ClientOptions) -> ClientOptions,
    room: Room,
}

fn former(o: ClientOptions) -> ClientOptions {
    ClientOptions {
        quic_idle_timeout: Duration::from_secs(8),
        quic_keep_alive: Duration::from_secs(2),
        quic_probe_stalls: false,
        quic_watch_receiving: false,
        ..o
    }
}

fn main() {
    let window = std::env::var("KEEPALIVE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut variants = Vec::new();
    for room in [Room::None, Room::Joined, Room::Receiving] {
        variants.push(Variant {
            name: "QUIC, defaults (45 s / 14 s)",
            transport: Transport::Quic,
            options: |o| o,
            room,
        });
        variants.push(Variant {
            name: "QUIC, no receive watch",
            transport: Transport::Quic,
            options: |o| ClientOptions { quic_watch_receiving: false, ..o },
            room,
        });
        variants.push(Variant {
            name: "QUIC, defaults, no stall probe",
            transport: Transport::Quic,
            options: |o| ClientOptions { quic_probe_stalls: false, quic_watch_receiving: false, ..o },
            room,
        });
        variants.push(Variant {
            name: "QUIC, former client (8 s / 2 s)",
            transport: Transport::Quic,
            options: former,
            room,
        });
        variants.push(Variant {
            name: "WebSocket (pings every 15 s)",
            transport: Transport::WebSocket,
            options: |o| o,
            room,
        });
    }
    runtime.block_on(async {
        let relay = std::sync::Arc::new(common::start().await);
        println!("idle clients, packets counted at the proxy over {window:?}, per minute");
        println!(
            "{:>34} {:>8} {:>12} {:>12} {:>12} {:>10}",
            "client", "room", "up/min", "down/min", "total/min", "addresses"
        );
        let runs: Vec<_> = variants
            .into_iter()
            .enumerate()
            .map(|(i, variant)| {
                let relay = relay.clone();
                tokio::spawn(
                    async move { (variant.name, variant.room, idle(&relay, &variant, i as u64, window).await) },
                )
            })
            .collect();
        for run in runs {
            let (name, room, (up, down, addresses)) = run.await.expect("variant");
            let room = match room {
                Room::None => "none",
                Room::Joined => "joined",
                Room::Receiving => "receiving",
            };
            println!("{name:>34} {room:>8} {up:>12.1} {down:>12.1} {:>12.1} {addresses:>10}", up + down);
        }
    });
}

/// Packets per minute (up, down) of one idle client over `window`, and the addresses the proxy
/// saw it from (more than one: it moved to a new socket, a stall probe).
async fn idle(relay: &common::TestRelay, variant: &Variant, n: u64, window: Duration) -> (f64, f64, u64) {
    let room = format!("idle-{n}");
    let proxy = Proxy::start(proxy_config(relay, variant.transport, Profile::perfect("none"), n)).await.expect("proxy");
    let token = relay.token("idle", "netsim", &[&room]);
    let codec = if variant.transport == Transport::Quic { Codec::Postcard } else { Codec::Json };
    let options = (variant.options)(ClientOptions::new(token).codec(codec));
    let client =
        Client::connect(relay.target_at(variant.transport, proxy.local_addr()), options).await.expect("connect");
    if variant.room != Room::None {
        client.join(&room).await.expect("join");
    }
    // The room's other member, connected to the relay directly (not counted), publishing every
    // MESSAGE_EVERY from before the window to its end.
    let publishing = (variant.room == Room::Receiving).then(|| {
        let options = ClientOptions::new(relay.token("talker", "netsim", &[&room])).codec(codec);
        let (target, room) = (relay.target(Transport::Quic), room.clone());
        let messages = (SETTLE + window).as_secs() / MESSAGE_EVERY.as_secs() + 1;
        tokio::spawn(async move {
            let talker = Client::connect(target, options).await.expect("talker connects");
            for i in 0..messages {
                talker.publish(&room, &format!("m{i}"), Payload::from("1")).await.expect("publish");
                tokio::time::sleep(MESSAGE_EVERY).await;
            }
            talker.close().await;
        })
    });
    tokio::time::sleep(SETTLE).await;
    let before = proxy.stats();
    tokio::time::sleep(window).await;
    let after = proxy.stats();
    if let Some(publishing) = publishing {
        publishing.abort();
    }
    client.close().await;
    proxy.shutdown().await;
    let per_minute = |count: u64| count as f64 * 60.0 / window.as_secs_f64();
    let flows = after.flows;
    let (Stats { up: up0, down: down0, .. }, Stats { up: up1, down: down1, .. }) = (before, after);
    (per_minute(up1.packets - up0.packets), per_minute(down1.packets - down0.packets), flows)
}
