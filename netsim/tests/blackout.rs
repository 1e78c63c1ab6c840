//! Outages as phones have them, under every profile, over raw QUIC, WebTransport and WebSocket:
//! a `Resilient` subscriber behind the netsim proxy loses the network (once for 2, 5, 10 or
//! 30 s, or several short times in a row) or is handed over to another network (Wi-Fi to 4g: a
//! new local address and the path's delay and loss changing at once) while a publisher
//! connected directly keeps publishing. When the network returns the application calls
//! `network_changed()`, as a mobile app does from the OS's path monitor. The subscriber must
//! then hold every message published, in order, exactly once, without a `NotRecovered`; over
//! QUIC and WebTransport the connection must also have survived (the idle timeout outlives the
//! outage, a handover migrates the connection), so nothing waits for a reconnect.
//!
//! The time from network-back to caught-up is printed (`--nocapture`) and recorded in
//! docs/performance.md; it is not asserted.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Duration;

use common::Transport;
use edgerelay::client::ClientOptions;
use netsim::{Profile, Proxy};
use support::outage::{MESSAGES, Outage, Outcome};
use support::proxy_config;

async fn scenario(
    relay: &common::TestRelay,
    transport: Transport,
    profile: Profile,
    outage: Outage,
    hook: bool,
    seed: u64,
) -> Result<Outcome, String> {
    let room = format!("outage-{}-{transport:?}-{hook}", profile.name);
    let proxy = Proxy::start(proxy_config(relay, transport, profile, seed)).await.map_err(|e| e.to_string())?;
    let target = relay.target_at(transport, proxy.local_addr());
    let token = relay.token("sub", "netsim", &[&room]);
    let mut subscriber = support::outage::subscribe(target, support::former(ClientOptions::new(token)), &room).await?;
    // The publisher talks to the relay directly: only the subscriber's network changes.
    let publisher = relay.connect(transport, edgerelay::proto::Codec::Json, "pub", "netsim", &[&room]).await;
    let hook = hook && !support::former_client();
    let outcome = support::outage::run(&proxy, &mut subscriber, &publisher, &room, outage, hook).await?;
    // The handover moved the client to a new socket: the proxy saw it from a second address
    // (or more: a stall probe in one of `train`'s own blackouts moves it too).
    let flows = proxy.stats().flows;
    if matches!(outage, Outage::Handover(_)) && transport != Transport::WebSocket && flows < 2 {
        return Err(format!("the client came from {flows} address: it did not move"));
    }
    subscriber.close().await;
    publisher.close().await;
    proxy.shutdown().await;
    Ok(outcome)
}

/// Every profile over every transport at once (they mostly wait), each with its own proxy and
/// seed; `without_hook` also runs these transports without `network_changed()`. Every message
/// arrives once and in order (checked by `run`); with `keep_connection`, QUIC and WebTransport
/// must also keep their connection.
async fn under_every_profile(outage: Outage, without_hook: &[Transport], keep_connection: bool) {
    let relay = std::sync::Arc::new(common::start().await);
    let mut runs = Vec::new();
    for (i, profile) in Profile::all().into_iter().enumerate() {
        let variants = [Transport::Quic, Transport::WebTransport, Transport::WebSocket]
            .into_iter()
            .map(|t| (t, true))
            .chain(without_hook.iter().map(|t| (*t, false)));
        for (transport, hook) in variants {
            let (relay, profile, seed) = (relay.clone(), profile.clone(), 700 + i as u64);
            let name = profile.name.clone();
            runs.push(tokio::spawn(async move {
                (name, transport, hook, scenario(&relay, transport, profile, outage, hook, seed).await)
            }));
        }
    }
    let mut failures = Vec::new();
    for run in runs {
        match run.await.expect("scenario task") {
            (profile, transport, hook, Ok(Outcome { caught_up, dropped })) => {
                let hook = if hook { "network_changed()" } else { "no hook" };
                eprintln!(
                    "{outage:?} {profile} over {transport:?} ({hook}): all {MESSAGES} messages held {} ms after the \
                     network came back (connection dropped and resumed: {dropped})",
                    caught_up.as_millis()
                );
                if keep_connection && transport != Transport::WebSocket && dropped && !support::former_client() {
                    failures
                        .push(format!("{profile} over {transport:?} ({hook}): the QUIC connection did not survive"));
                }
            }
            (profile, transport, hook, Err(err)) => {
                failures.push(format!("{profile} over {transport:?} (hook: {hook}): {err}"))
            }
        }
    }
    assert!(failures.is_empty(), "{outage:?}:\n{}", failures.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_two_second_blackout_the_client_has_every_missed_message() {
    under_every_profile(Outage::Blackout(Duration::from_secs(2)), &[], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_five_second_blackout_the_client_has_every_missed_message() {
    under_every_profile(Outage::Blackout(Duration::from_secs(5)), &[], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_ten_second_blackout_the_client_has_every_missed_message() {
    under_every_profile(Outage::Blackout(Duration::from_secs(10)), &[Transport::Quic, Transport::WebSocket], true)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_thirty_second_blackout_the_client_has_every_missed_message() {
    under_every_profile(Outage::Blackout(Duration::from_secs(30)), &[], true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_repeated_short_outages_the_client_has_every_message() {
    // Not `keep_connection`: a network-change probe started in one 1-second light window spans
    // the next outage, and on edge-of-cell's loss it can go unanswered long enough to replace
    // the connection (seen in CI runs on a loaded machine). Nothing is lost or doubled then; how
    // often it happens is a figure of issue 24's outage bench, not a pass/fail property.
    under_every_profile(Outage::REPEATED, &[], false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wifi_to_4g_handover_keeps_the_quic_connection_and_loses_nothing() {
    under_every_profile(Outage::Handover("4g"), &[], true).await;
}
