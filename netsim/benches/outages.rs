//! The outage scenarios of `tests/blackout.rs` (2, 5, 10 and 30 s blackouts, five 1.5 s outages
//! in a row, a handover to `4g` with a new client address) through the packet-level emulator
//! instead of the user-space proxy, so the kernel's TCP faces the blackout with its own
//! retransmission timeout and backoff, as QUIC faces it with quinn's: the fair comparison of
//! QUIC, WebTransport and WebSocket after an outage.
//!
//! Each scenario is a thread of its own with a current-thread runtime living in the emulator's
//! client namespace (so the subscriber's reconnects and new sockets are made there), its own
//! emulator and a relay in the server namespace; the publisher connects to the relay inside the
//! server namespace (over its loopback), so only the subscriber's network fails. Every profile
//! and variant of one outage run at once. Variants: QUIC and WebSocket with and without the
//! network-change hook (`Resilient::network_changed()` as the network returns), WebTransport
//! with it. The check is the test's: every message once, in order (a failure is printed and
//! fails the bench at the end). The figure: from the network's return to holding all 100.
//!
//! Run: `cargo bench -p netsim --bench outages` (as root; about 2 minutes a round).
//! `NETSIM_RUNS=3` rounds (interleaved: every outage once per round), `NETSIM_PROFILES=train,4g`,
//! `NETSIM_OUTAGES=2,5,10,30,repeated,handover` (also `quiet5`: a 5 s outage with everything
//! published in its first 0.5 s, so the relay's probe timer backs off; not in the default) and `NETSIM_VARIANTS=QUIC+hook,WS` choose;
//! `NETSIM_SEED_BASE=1900` plays other loss patterns (each cell's seed is the base plus its
//! profile's and variant's index), `NETSIM_SEED_OF=WT+hook` gives every variant that column's.
//! `NETSIM_LOG=quinn_proto=trace` traces every scenario to stderr. `NETSIM_FORMER_CLIENT=1` runs the
//! former client, `NETSIM_0RTT=1` clients with 0-RTT resumption, `NETSIM_NO_STALL_PROBE=1`
//! clients without the stall probe, `NETSIM_NO_RECEIVE_WATCH=1` without the receive-side
//! heartbeats (on by default) (see `tests/support`), `NETSIM_NO_HEARTBEAT_ANSWER=1` a relay that
//! does not answer heartbeats through a full window (`quic.answer_heartbeats`), `NETSIM_NO_FADE_PROBE=1`
//! a relay that does not probe stalled connections with heartbeats (`quic.probe_fades`). Prints a Markdown table per outage:
//! the median of the rounds, the values, and ↻n when the subscriber's connection dropped in n
//! rounds. Results: docs/performance.md.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::Transport;
use edgerelay::client::{Client, ClientOptions};
use edgerelay::proto::Codec;
use netsim::Profile;
use netsim::ns::{Emulator, Side, can_emulate};
use support::outage::{NOT_CAUGHT_UP, Outage, Outcome};

/// A transport, and whether the app calls the network-change hook.
type Variant = (Transport, bool);

const VARIANTS: [Variant; 5] = [
    (Transport::Quic, true),
    (Transport::Quic, false),
    (Transport::WebTransport, true),
    (Transport::WebSocket, true),
    (Transport::WebSocket, false),
];

fn variant_name((transport, hook): Variant) -> String {
    let name = match transport {
        Transport::Quic => "QUIC",
        Transport::WebTransport => "WT",
        Transport::WebSocket => "WS",
    };
    format!("{name}{}", if hook { "+hook" } else { "" })
}

fn outages() -> Vec<Outage> {
    let names = std::env::var("NETSIM_OUTAGES").unwrap_or_else(|_| "2,5,10,30,repeated,handover".into());
    names
        .split(',')
        .map(|name| match name.trim() {
            "repeated" => Outage::REPEATED,
            "handover" => Outage::Handover("4g"),
            name => match name.strip_prefix("quiet") {
                Some(secs) => Outage::QuietFade(Duration::from_secs(
                    secs.parse().expect("NETSIM_OUTAGES: quiet and seconds, e.g. quiet5"),
                )),
                None => Outage::Blackout(Duration::from_secs(name.parse().expect("NETSIM_OUTAGES: seconds or a name"))),
            },
        })
        .collect()
}

fn main() {
    // `NETSIM_LOG=quinn_proto=trace,edgerelay=debug`: a trace of every scenario on stderr (run
    // one cell with NETSIM_PROFILES and NETSIM_OUTAGES), e.g. to see where a catch-up's time goes.
    if let Ok(filter) = std::env::var("NETSIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .with_thread_names(true)
            .init();
    }
    if let Err(why) = can_emulate() {
        println!("SKIPPED: the namespace emulator {why}");
        return;
    }
    let rounds: usize = std::env::var("NETSIM_RUNS").ok().and_then(|n| n.parse().ok()).unwrap_or(1);
    let only: Option<Vec<String>> =
        std::env::var("NETSIM_PROFILES").ok().map(|names| names.split(',').map(str::to_owned).collect());
    let profiles: Vec<Profile> =
        Profile::all().into_iter().filter(|p| only.as_ref().is_none_or(|names| names.contains(&p.name))).collect();
    let outages = outages();
    // `NETSIM_VARIANTS=QUIC+hook,WS`: only these columns (the seeds stay those of the full run).
    let variants: Option<Vec<String>> =
        std::env::var("NETSIM_VARIANTS").ok().map(|names| names.split(',').map(str::to_owned).collect());
    // `NETSIM_SEED_BASE=1900`: other loss patterns (the default, 900, is the matrix's).
    let seed_base: u64 = std::env::var("NETSIM_SEED_BASE").ok().and_then(|n| n.parse().ok()).unwrap_or(900);
    let seed_of: Option<usize> = std::env::var("NETSIM_SEED_OF")
        .ok()
        .filter(|n| !n.is_empty())
        .map(|name| VARIANTS.iter().position(|&v| variant_name(v) == name).expect("NETSIM_SEED_OF: a variant's name"));
    // (outage, profile, variant) → one outcome per round.
    let mut results: BTreeMap<(usize, usize, usize), Vec<Result<Outcome, String>>> = BTreeMap::new();
    for round in 0..rounds {
        for (o, &outage) in outages.iter().enumerate() {
            let mut threads = Vec::new();
            for (p, profile) in profiles.iter().enumerate() {
                for (v, &variant) in VARIANTS.iter().enumerate() {
                    if variants.as_ref().is_some_and(|names| !names.contains(&variant_name(variant))) {
                        continue;
                    }
                    // Without the hook a WebSocket client cannot notice that its address is
                    // gone until TCP gives up (minutes): not a scenario anyone waits for.
                    if matches!(outage, Outage::Handover(_)) && variant == (Transport::WebSocket, false) {
                        continue;
                    }
                    // `NETSIM_SEED_OF=WT+hook`: every variant with that column's seed (its loss
                    // pattern), to tell a variant's behaviour from its seed's.
                    let seeded = seed_of.unwrap_or(v);
                    let (profile, seed) = (profile.clone(), seed_base + (p * VARIANTS.len() + seeded) as u64);
                    let thread = std::thread::spawn(move || scenario(profile, variant, outage, seed));
                    threads.push(((o, p, v), thread));
                }
            }
            for (key, thread) in threads {
                let outcome = thread.join().unwrap_or_else(|_| Err("scenario panicked".into()));
                let (_, p, v) = key;
                match &outcome {
                    Ok(Outcome { caught_up, dropped }) => println!(
                        "round {round} {} {} {}: {} ms{}",
                        outage.label(),
                        profiles[p].name,
                        variant_name(VARIANTS[v]),
                        caught_up.as_millis(),
                        if *dropped { " (reconnected)" } else { "" }
                    ),
                    Err(err) => {
                        println!(
                            "round {round} {} {} {}: FAILED {err}",
                            outage.label(),
                            profiles[p].name,
                            variant_name(VARIANTS[v])
                        )
                    }
                }
                results.entry(key).or_default().push(outcome);
            }
        }
    }
    let mut failed = false;
    for (o, outage) in outages.iter().enumerate() {
        println!(
            "\n**{}** (ms from the network's return to holding all {} messages)\n",
            outage.label(),
            support::outage::MESSAGES
        );
        println!("| profile | {} |", VARIANTS.map(variant_name).join(" | "));
        println!("|---|{}", "---:|".repeat(VARIANTS.len()));
        for (p, profile) in profiles.iter().enumerate() {
            let cells: Vec<String> = (0..VARIANTS.len())
                .map(|v| match results.get(&(o, p, v)) {
                    None => "n/a".into(),
                    Some(outcomes) => {
                        failed |= outcomes.iter().any(|o| o.as_ref().is_err_and(|e| !e.starts_with(NOT_CAUGHT_UP)));
                        cell(outcomes)
                    }
                })
                .collect();
            println!("| {} | {} |", profile.name, cells.join(" | "));
        }
    }
    assert!(!failed, "some scenarios failed (see FAILED above)");
}

/// "median (values)" and ↻n for the rounds whose connection dropped, or the failure count; a
/// round not caught up within 30 s counts as ">30000".
fn cell(outcomes: &[Result<Outcome, String>]) -> String {
    let late = |e: &String| e.starts_with(NOT_CAUGHT_UP);
    let mut ms: Vec<u128> = outcomes
        .iter()
        .filter_map(|o| match o {
            Ok(o) => Some(o.caught_up.as_millis()),
            Err(e) if late(e) => Some(u128::MAX),
            Err(_) => None,
        })
        .collect();
    let show = |v: &u128| if *v == u128::MAX { ">30000".to_string() } else { v.to_string() };
    let values = ms.iter().map(show).collect::<Vec<_>>().join(" / ");
    let dropped = outcomes.iter().filter(|o| o.as_ref().is_ok_and(|o| o.dropped)).count();
    let failures = outcomes.len() - ms.len();
    ms.sort_unstable();
    let mut cell = match ms.get(ms.len() / 2) {
        Some(median) if ms.len() > 1 => format!("{} ({values})", show(median)),
        Some(median) => show(median),
        None => String::new(),
    };
    if dropped > 0 {
        cell.push_str(&format!(" ↻{dropped}"));
    }
    if failures > 0 {
        cell.push_str(&format!(" ✗{failures}"));
    }
    cell
}

/// One scenario on a thread of its own (see the module doc).
fn scenario(profile: Profile, (transport, hook): Variant, outage: Outage, seed: u64) -> Result<Outcome, String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let emulator = Emulator::start(profile, seed).map_err(|e| e.to_string())?;
        // This thread, and so every socket the subscriber makes, in the client namespace.
        let _client_side = emulator.enter(Side::Client).map_err(|e| e.to_string())?;
        let room = "outage";
        let (relay, publisher) = {
            let _inside = emulator.enter(Side::Server).map_err(|e| e.to_string())?;
            let server = emulator.addr(Side::Server);
            let relay = common::start_with(|config| {
                config.listen.udp = SocketAddr::from((server, 0));
                config.listen.tcp = SocketAddr::from((server, 0));
                // `NETSIM_NO_HEARTBEAT_ANSWER=1`: quinn's Cubic as it is (`quic.answer_heartbeats`).
                config.quic.answer_heartbeats = !std::env::var("NETSIM_NO_HEARTBEAT_ANSWER").is_ok_and(|v| v == "1");
                // `NETSIM_NO_FADE_PROBE=1`: no heartbeats from the relay (`quic.probe_fades`).
                config.quic.probe_fades = !std::env::var("NETSIM_NO_FADE_PROBE").is_ok_and(|v| v == "1");
            })
            .await;
            // Wired, not a phone: no stall probe, whose new socket would be made in this
            // thread's namespace (the client's), behind the emulator.
            let options = ClientOptions {
                quic_probe_stalls: false,
                ..ClientOptions::new(relay.token("pub", "netsim", &[room])).codec(Codec::Json)
            };
            let publisher = Client::connect(relay.target(transport), options).await.map_err(|e| e.to_string())?;
            (relay, publisher)
        };
        let token = relay.token("sub", "netsim", &[room]);
        let options = support::former(ClientOptions::new(token));
        let mut subscriber = support::outage::subscribe(relay.target(transport), options, room).await?;
        let hook = hook && !support::former_client();
        let outcome = support::outage::run(&emulator, &mut subscriber, &publisher, room, outage, hook).await;
        subscriber.close().await;
        publisher.close().await;
        relay.relay.shutdown().await;
        emulator.shutdown().await;
        outcome
    })
}
