//! What a QUIC reconnect costs through the packet-level emulator, with and without 0-RTT
//! resumption: the time from `Client::connect` to `welcome`, and to the rejoin of one room
//! (`join` with `since`, as `Resilient` does after a reconnect). With a ticket from an earlier
//! connection (the options' `quic_sessions`), `hello` goes in the first flight and `welcome`
//! comes back with the relay's handshake: one round trip instead of two.
//!
//! Per profile: one connection to get a ticket, then `ROUNDS` connections with 0-RTT and as many
//! with resumption off (`quic_sessions: None`), interleaved; medians and the spread.
//!
//! Run: `cargo bench -p netsim --bench reconnect` (as root); `NETSIM_PROFILES=4g,3g` chooses.
//! Results: docs/performance.md.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::Transport;
use edgerelay::client::{Client, ClientOptions, QuicSessions};
use edgerelay::proto::Codec;
use netsim::Profile;
use netsim::ns::{Emulator, Side, can_emulate};

const ROUNDS: usize = 10;

fn main() {
    if let Err(why) = can_emulate() {
        println!("SKIPPED: the namespace emulator {why}");
        return;
    }
    let only: Option<Vec<String>> =
        std::env::var("NETSIM_PROFILES").ok().map(|names| names.split(',').map(str::to_owned).collect());
    let default = ["none", "wifi", "4g", "3g", "satellite", "edge-of-cell"];
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
    println!(
        "| profile | 0-RTT: welcome | 0-RTT: + rejoin | full handshake: welcome | full handshake: + rejoin | 0-RTT accepted |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for (i, profile) in Profile::all().into_iter().enumerate() {
        let chosen = match &only {
            Some(names) => names.contains(&profile.name),
            None => default.contains(&profile.name.as_str()),
        };
        if chosen {
            runtime.block_on(measure(profile, 300 + i as u64));
        }
    }
}

/// Median and range, ms.
fn summary(mut times: Vec<Duration>) -> String {
    times.sort();
    let ms = |d: &Duration| d.as_secs_f64() * 1000.0;
    match (times.first(), times.get(times.len() / 2), times.last()) {
        (Some(low), Some(median), Some(high)) => format!("{:.0} ({:.0}-{:.0})", ms(median), ms(low), ms(high)),
        _ => "n/a".into(),
    }
}

async fn measure(profile: Profile, seed: u64) {
    let name = profile.name.clone();
    let emulator = Emulator::start(profile, seed).expect("emulator");
    let _client_side = emulator.enter(Side::Client).expect("client side");
    let relay = {
        let _inside = emulator.enter(Side::Server).expect("server side");
        let server = emulator.addr(Side::Server);
        common::start_with(|config| {
            config.listen.udp = SocketAddr::from((server, 0));
            config.listen.tcp = SocketAddr::from((server, 0));
        })
        .await
    };
    let room = "rejoin";
    let options = ClientOptions {
        request_timeout: Duration::from_secs(30),
        quic_sessions: Some(QuicSessions::new()),
        ..ClientOptions::new(relay.token("sub", "netsim", &[room])).codec(Codec::Postcard)
    };
    let first = Client::connect(relay.target(Transport::Quic), options.clone()).await.expect("first connection");
    let since = first.join(room).await.expect("join").position;
    // Tickets arrive after the handshake; let them land before closing.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.close().await;
    let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    let mut accepted = 0;
    for _ in 0..ROUNDS {
        for (k, resume) in [true, false].into_iter().enumerate() {
            let options =
                if resume { options.clone() } else { ClientOptions { quic_sessions: None, ..options.clone() } };
            let start = Instant::now();
            let Ok(client) = Client::connect(relay.target(Transport::Quic), options).await else { continue };
            times[2 * k].push(start.elapsed());
            if client.join_since(room, Some(since)).await.is_ok() {
                times[2 * k + 1].push(start.elapsed());
            }
            accepted += usize::from(resume && client.resumed_0rtt());
            // The next ticket comes after the handshake; wait for it as a real session would
            // have (the next reconnect is seconds away, not microseconds).
            tokio::time::sleep(Duration::from_millis(300)).await;
            client.close().await;
        }
    }
    let [a, b, c, d] = times.map(summary);
    println!("| {name} | {a} | {b} | {c} | {d} | {accepted}/{ROUNDS} |");
    relay.relay.shutdown().await;
    emulator.shutdown().await;
}
