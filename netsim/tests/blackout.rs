//! A 10-second blackout under every profile: a subscriber behind the netsim proxy
//! loses the network entirely while messages keep being published; when the network returns it
//! reconnects or resumes by itself and has every missed message, in order, exactly once. The
//! time from network-back to caught-up is printed (`--nocapture`) and recorded in
//! docs/performance.md; it is not asserted.
//!
//! Over QUIC the blackout outlasts the client's idle timeout (8 s), so the client detects it,
//! reconnects once packets flow again, and resumes from its last position. Over WebSocket the
//! TCP proxy holds the bytes: the connection may survive and simply deliver the backlog.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::Transport;
use edgerelay::client::ClientOptions;
use edgerelay::client::resilient::{Reconnect, Resilient, ResilientEvent};
use edgerelay::proto::Payload;
use netsim::{Profile, Proxy};
use support::proxy_config;

const BLACKOUT: Duration = Duration::from_secs(10);
/// Published during the blackout, one every `BLACKOUT / MISSED`.
const MISSED: u64 = 200;

/// Runs the scenario over `transport`; returns the time from network-back to caught-up and
/// whether the client saw its connection drop.
async fn through_a_blackout(
    relay: &common::TestRelay,
    transport: Transport,
    profile: Profile,
    seed: u64,
) -> Result<(Duration, bool), String> {
    let room = format!("blackout-{}-{transport:?}", profile.name);
    let proxy = Proxy::start(proxy_config(relay, transport, profile, seed)).await.map_err(|e| e.to_string())?;
    let target = relay.target_at(transport, proxy.local_addr());
    let token = relay.token("sub", "netsim", &[&room]);
    let reconnect =
        Reconnect { base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(1), ..Reconnect::default() };
    let mut subscriber = Resilient::start(target, ClientOptions::new(token), reconnect);
    subscriber.join(&room);
    let joined = tokio::time::timeout(Duration::from_secs(20), async {
        while subscriber.positions().get(&room).is_none_or(Option::is_none) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    joined.map_err(|_| "subscriber never joined")?;
    // The publisher talks to the relay directly: only the subscriber's network goes dark.
    let publisher = relay.connect(transport, edgerelay::proto::Codec::Json, "pub", "netsim", &[&room]).await;

    proxy.set_blackout(true);
    let dark = Instant::now();
    let mut acked = Vec::new();
    for i in 0..MISSED {
        let position =
            publisher.publish(&room, &format!("m{i}"), Payload::from("1")).await.map_err(|e| e.to_string())?;
        acked.push(position.offset);
        tokio::time::sleep_until((dark + BLACKOUT.mul_f64((i + 1) as f64 / MISSED as f64)).into()).await;
    }
    proxy.set_blackout(false);
    let back = Instant::now();

    let mut dropped = false;
    let mut received = Vec::new();
    let caught_up = tokio::time::timeout(Duration::from_secs(30), async {
        while received.len() < acked.len() {
            match subscriber.next_event().await {
                Some(ResilientEvent::Message(m)) => received.push(m.position.offset),
                Some(ResilientEvent::Disconnected { .. }) => dropped = true,
                Some(ResilientEvent::NotRecovered { room, position }) => {
                    return Err(format!("not recovered in {room} at {position:?}"));
                }
                Some(ResilientEvent::Connected { .. }) => {}
                None => return Err("subscriber stopped".to_string()),
            }
        }
        Ok(back.elapsed())
    })
    .await
    .map_err(|_| format!("not caught up 30 s after the network came back: {} of {}", received.len(), acked.len()))??;
    if received != acked {
        return Err(format!("received {received:?}, acked {acked:?}"));
    }
    subscriber.close().await;
    publisher.close().await;
    proxy.shutdown().await;
    Ok((caught_up, dropped))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_ten_second_blackout_the_client_has_every_missed_message() {
    let relay = std::sync::Arc::new(common::start().await);
    // Every profile and both transports at once (they mostly wait), each with its own proxy.
    let mut runs = Vec::new();
    for (i, profile) in Profile::all().into_iter().enumerate() {
        for transport in [Transport::Quic, Transport::WebSocket] {
            let (relay, profile, seed) = (relay.clone(), profile.clone(), 700 + i as u64);
            let name = profile.name.clone();
            runs.push(tokio::spawn(async move {
                (name, transport, through_a_blackout(&relay, transport, profile, seed).await)
            }));
        }
    }
    let mut failures = Vec::new();
    for run in runs {
        match run.await.expect("scenario task") {
            (profile, transport, Ok((caught_up, dropped))) => {
                eprintln!(
                    "{profile} over {transport:?}: {MISSED} messages missed during a {BLACKOUT:?} blackout, all \
                     held {} ms after the network came back (connection dropped and resumed: {dropped})",
                    caught_up.as_millis()
                );
                if transport == Transport::Quic && !dropped {
                    failures.push(format!("{profile} over QUIC: the client never noticed a 10 s blackout"));
                }
            }
            (profile, transport, Err(err)) => failures.push(format!("{profile} over {transport:?}: {err}")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
