//! An outage the OS does not report (no `network_changed()` call): a QUIC client that sent
//! something and hears nothing back probes the path by itself, moving to new sockets until the
//! relay answers, so its publish is acknowledged once the network returns without waiting for
//! quinn's doubled probe timeout. One with `quic_probe_stalls` off stays on its socket, and an
//! idle client sends nothing extra at all (no probe without something outstanding). The proxy
//! counts the addresses each client came from. (No client joins the room: a joined client's
//! presence refresh is something sent too.)

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::time::Duration;

use common::{Transport, within};
use edgerelay::proto::Payload;
use netsim::{Profile, Proxy};
use support::{connect_with, proxy_config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_probes_the_path_and_an_idle_one_does_not() {
    let relay = common::start().await;
    let room = "fade";
    let mut proxies = Vec::new();
    let mut clients = Vec::new();
    // Probing and publishing; not probing and publishing; probing and idle.
    for (k, probe) in [true, false, true].into_iter().enumerate() {
        let config = proxy_config(&relay, Transport::Quic, Profile::named("wifi").unwrap(), 40 + k as u64);
        let proxy = Proxy::start(config).await.unwrap();
        let target = relay.target_at(Transport::Quic, proxy.local_addr());
        let client = connect_with(&relay, Transport::Quic, target, &format!("user{k}"), room, |options| {
            edgerelay::client::ClientOptions { quic_probe_stalls: probe, ..options }
        })
        .await
        .unwrap();
        proxies.push(proxy);
        clients.push(std::sync::Arc::new(client));
    }
    for proxy in &proxies {
        proxy.set_blackout(true);
    }
    let publishes: Vec<_> = clients[..2]
        .iter()
        .enumerate()
        .map(|(k, client)| {
            let client = client.clone();
            tokio::spawn(async move { client.publish(room, &format!("m{k}"), Payload::from("1")).await })
        })
        .collect();
    // Dark for longer than the stall threshold and a few probes; the OS tells nobody.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for proxy in &proxies {
        proxy.set_blackout(false);
    }
    for publish in publishes {
        within("the publish after the fade", publish).await.unwrap().expect("acknowledged");
    }
    let flows: Vec<u64> = proxies.iter().map(|p| p.stats().flows).collect();
    assert!(flows[0] >= 2, "the stalled client did not probe from a new socket: {flows:?}");
    assert_eq!(flows[1], 1, "the client without stall probes moved: {flows:?}");
    assert_eq!(flows[2], 1, "the idle client probed although it had sent nothing: {flows:?}");
    for client in clients {
        if let Ok(client) = std::sync::Arc::try_unwrap(client) {
            client.close().await;
        }
    }
    for proxy in proxies {
        proxy.shutdown().await;
    }
}
