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
use edgerelay::client::{ClientOptions, Event};
use edgerelay::proto::Payload;
use netsim::{Profile, Proxy};
use support::{connect, connect_with, proxy_config};

/// A QUIC client `sub` behind a proxy of its own with the `wifi` profile (`seed`), its options
/// adjusted by `adjust`.
async fn behind_wifi(
    relay: &common::TestRelay,
    seed: u64,
    sub: &str,
    room: &str,
    adjust: impl FnOnce(ClientOptions) -> ClientOptions,
) -> (Proxy, edgerelay::client::Client) {
    let config = proxy_config(relay, Transport::Quic, Profile::named("wifi").unwrap(), seed);
    let proxy = Proxy::start(config).await.unwrap();
    let target = relay.target_at(Transport::Quic, proxy.local_addr());
    let client = connect_with(relay, Transport::Quic, target, sub, room, adjust).await.unwrap();
    (proxy, client)
}

/// A publisher on the relay itself and two subscribers joined to `room`, each behind a `wifi`
/// proxy of its own (seeds `seed` and `seed + 1`): the first with the receive-side heartbeats,
/// the second without.
async fn watching_and_not(
    relay: &common::TestRelay,
    room: &str,
    seed: u64,
) -> (edgerelay::client::Client, Vec<Proxy>, Vec<edgerelay::client::Client>) {
    let publisher = connect(relay, Transport::Quic, relay.target(Transport::Quic), "pub", room).await.unwrap();
    let mut proxies = Vec::new();
    let mut subscribers = Vec::new();
    for (k, watch) in [true, false].into_iter().enumerate() {
        let (proxy, subscriber) = behind_wifi(relay, seed + k as u64, &format!("sub{k}"), room, |options| {
            ClientOptions { quic_watch_receiving: watch, ..options }
        })
        .await;
        within("join", subscriber.join(room)).await.unwrap();
        proxies.push(proxy);
        subscribers.push(subscriber);
    }
    (publisher, proxies, subscribers)
}

/// Closes what [`watching_and_not`] made.
async fn shut_down(
    publisher: edgerelay::client::Client,
    subscribers: Vec<edgerelay::client::Client>,
    proxies: Vec<Proxy>,
) {
    for subscriber in subscribers {
        subscriber.close().await;
    }
    publisher.close().await;
    for proxy in proxies {
        proxy.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_probes_the_path_and_an_idle_one_does_not() {
    let relay = common::start().await;
    let room = "fade";
    let mut proxies = Vec::new();
    let mut clients = Vec::new();
    // Probing and publishing; not probing and publishing; probing and idle.
    for (k, probe) in [true, false, true].into_iter().enumerate() {
        let (proxy, client) = behind_wifi(&relay, 40 + k as u64, &format!("user{k}"), room, |options| ClientOptions {
            quic_probe_stalls: probe,
            ..options
        })
        .await;
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

/// A client that only receives sends nothing into a fade, so nothing of its own goes
/// unanswered; after the relay's stream data it sends heartbeats (empty datagrams) for a few
/// seconds, and one left unanswered makes it keep sending them, on the same socket, until the
/// relay is heard (then, unless the relay is resending already, it moves to a new socket: the
/// next test). The relay's message published during the fade then reaches it, once. One
/// without the heartbeats sends nothing into the fade, stays on its socket and waits for the
/// relay's own retransmission.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receive_only_client_notices_a_fade_after_data() {
    let relay = common::start().await;
    let room = "receive-only";
    let (publisher, proxies, mut subscribers) = watching_and_not(&relay, room, 50).await;
    // Settled: the joins' heartbeats are over and each connection's MTU search is done (its
    // probes would be packets sent into the fade too).
    tokio::time::sleep(Duration::from_secs(9)).await;
    // A message received (stream data) starts the heartbeats; the fade begins right after.
    let warm = within("publish", publisher.publish(room, "warm", Payload::from("0"))).await.unwrap();
    for subscriber in &mut subscribers {
        let message = within("the first message", subscriber.next_message()).await.unwrap();
        assert_eq!(message.position, warm);
    }
    let before: Vec<u64> = proxies.iter().map(|p| p.stats().up.dropped_blackout).collect();
    for proxy in &proxies {
        proxy.set_blackout(true);
    }
    let position = within("publish", publisher.publish(room, "m0", Payload::from("1"))).await.unwrap();
    // Dark past the first heartbeat and its unanswered wait; the OS tells nobody, and neither
    // subscriber sends anything of its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for proxy in &proxies {
        proxy.set_blackout(false);
    }
    let into_fade: Vec<u64> =
        proxies.iter().zip(&before).map(|(p, before)| p.stats().up.dropped_blackout - before).collect();
    for subscriber in &mut subscribers {
        let message = within("the message published during the fade", subscriber.next_message()).await.unwrap();
        assert_eq!((message.id.as_str(), message.position), ("m0", position));
        let extra = tokio::time::timeout(Duration::from_millis(300), subscriber.next_message()).await;
        assert!(extra.is_err(), "delivered twice: {extra:?}");
    }
    assert!(into_fade[0] >= 4, "the receiving client sent no heartbeats into the fade: {into_fade:?}");
    assert!(into_fade[1] <= 1, "the client without heartbeats sent into the fade: {into_fade:?}");
    // Whether the watching client moved depends on what it heard first after the fade (the
    // relay's own retransmission or only its acknowledgement of a heartbeat): see below.
    let flows: Vec<u64> = proxies.iter().map(|p| p.stats().flows).collect();
    assert_eq!(flows[1], 1, "the client without heartbeats moved: {flows:?}");
    shut_down(publisher, subscribers, proxies).await;
}

/// A fade that ends with nothing for the relay to resend: what the watching client hears first
/// is the relay's acknowledgement of a heartbeat, so the relay's own probe timer has nothing to
/// say (and the relay does not probe: nothing of its is unacknowledged). The client moves to a new socket as `network_changed()` does and tells the application
/// (`Resilient` catches up on it). The other client notices nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_end_of_a_fade_is_reported_as_path_back() {
    let relay = common::start().await;
    let room = "path-back";
    let (publisher, proxies, mut subscribers) = watching_and_not(&relay, room, 60).await;
    let warm = within("publish", publisher.publish(room, "warm", Payload::from("0"))).await.unwrap();
    for subscriber in &mut subscribers {
        let message = within("the first message", subscriber.next_message()).await.unwrap();
        assert_eq!(message.position, warm);
    }
    // The clients' acknowledgements of it reach the relay (within their 25 ms ACK delay): it has
    // nothing in flight, so nothing to resend and no reason to probe the fade.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for proxy in &proxies {
        proxy.set_blackout(true);
    }
    // Past the first heartbeat (0.5 s after the message) and its unanswered wait.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for proxy in &proxies {
        proxy.set_blackout(false);
    }
    let told = within("Event::PathBack after the fade", path_back(&mut subscribers[0])).await;
    assert!(told, "the watching client's connection closed instead");
    let other = tokio::time::timeout(Duration::from_millis(500), path_back(&mut subscribers[1])).await;
    assert!(other.is_err(), "the client without heartbeats reported a fade");
    // The path works: a message published now arrives.
    let after = within("publish", publisher.publish(room, "after", Payload::from("1"))).await.unwrap();
    for subscriber in &mut subscribers {
        let message = within("the message after the fade", subscriber.next_message()).await.unwrap();
        assert_eq!(message.position, after);
    }
    let flows: Vec<u64> = proxies.iter().map(|p| p.stats().flows).collect();
    assert!(flows[0] >= 2, "the watching client did not move to a new socket: {flows:?}");
    assert_eq!(flows[1], 1, "the client without heartbeats moved: {flows:?}");
    shut_down(publisher, subscribers, proxies).await;
}

/// Waits for [`Event::PathBack`]; false when the connection closed first.
async fn path_back(client: &mut edgerelay::client::Client) -> bool {
    loop {
        match client.next_event().await {
            Some(Event::PathBack) => return true,
            None | Some(Event::Closed { .. }) => return false,
            Some(_) => {}
        }
    }
}

/// A long fade while the room goes on: the relay's congestion window fills with messages sent
/// into it and its probe timer backs off far (its next probe comes 15-20 s after the network's
/// return here). When the network returns, the client's next heartbeat is answered at once,
/// window full or not (quinn alone held the ACK back with the waiting data until that timer),
/// so the client acknowledges the relay's newest packet, the relay learns what the fade lost
/// and resends it. What remains is the wait for that heartbeat (every 2 s this late in a fade)
/// and the resend, paced by an RTT estimate the fade's late acknowledgements inflated:
/// 1.3-4.5 s in a debug build, against 19.5-21.7 s with `quic.answer_heartbeats` off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_is_answered_through_a_full_window() {
    // Without the relay's own probes, which would end the fade too (the next test).
    let relay = common::start_with(|config| config.quic.probe_fades = false).await;
    let room = "full-window";
    let publisher = connect(&relay, Transport::Quic, relay.target(Transport::Quic), "pub", room).await.unwrap();
    let (proxy, mut subscriber) = behind_wifi(&relay, 70, "sub", room, |options| options).await;
    let fade = long_fade(&publisher, &mut subscriber, &proxy, room).await;
    assert!(fade.took < Duration::from_secs(10), "caught up {:?} after the network returned", fade.took);
    subscriber.close().await;
    publisher.close().await;
    proxy.shutdown().await;
}

/// The same long fade for a client that sends nothing during it (no receive watch, no stall
/// probe, no keep-alive within it), only the heartbeat after `welcome` that says it takes the
/// relay's. The relay probes the stalled connection with heartbeats of its own every 0.5 s
/// (counted at the emulator), so the first after the network's return reaches the client,
/// whose acknowledgement makes the relay resend at once: 0.10-0.40 s over five debug-build
/// runs, 45-46 packets into the fade's last 19 s. Without the probes the relay's backed-off
/// probe timer decides: 1.0-19.6 s over three runs with `quic.probe_fades` off, 8 packets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_probes_a_fade_for_a_client_that_sends_nothing() {
    let relay = common::start().await;
    let room = "probed";
    let publisher = connect(&relay, Transport::Quic, relay.target(Transport::Quic), "pub", room).await.unwrap();
    let (proxy, mut subscriber) = behind_wifi(&relay, 71, "sub", room, |options| ClientOptions {
        quic_watch_receiving: false,
        quic_probe_stalls: false,
        // No keep-alive within the fade either.
        quic_keep_alive: Duration::from_secs(40),
        ..options
    })
    .await;
    let fade = long_fade(&publisher, &mut subscriber, &proxy, room).await;
    // Probes every 0.5 s (about 38 in 19 s), against a dozen probe timeouts at most without.
    assert!(fade.into_fade >= 25, "{} packets from the relay into the fade's last 19 s", fade.into_fade);
    assert!(fade.took < Duration::from_secs(5), "caught up {:?} after the network returned", fade.took);
    subscriber.close().await;
    publisher.close().await;
    proxy.shutdown().await;
}

/// What [`long_fade`] measured: packets from the relay into the fade's last 19 s, and how long
/// after the network's return the subscriber held every message.
struct Fade {
    into_fade: u64,
    took: Duration,
}

/// A long fade while the room goes on: `subscriber` (behind `proxy`) joins and gets a first
/// message, the network goes, 40 messages of 1 KB are published into the fade (more than the
/// relay's first window, about 14 KB), and it lasts 19 s more. Checks that the subscriber then
/// gets all 40, in order and once.
async fn long_fade(
    publisher: &edgerelay::client::Client,
    subscriber: &mut edgerelay::client::Client,
    proxy: &Proxy,
    room: &str,
) -> Fade {
    within("join", subscriber.join(room)).await.unwrap();
    let warm = within("publish", publisher.publish(room, "warm", Payload::from("0"))).await.unwrap();
    assert_eq!(within("the first message", subscriber.next_message()).await.unwrap().position, warm);
    proxy.set_blackout(true);
    let body = "x".repeat(1_000);
    let mut positions = Vec::new();
    for k in 0..40 {
        let id = format!("m{k}");
        positions.push(within("publish", publisher.publish(room, &id, Payload::from(body.as_str()))).await.unwrap());
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let before = proxy.stats().down.dropped_blackout;
    tokio::time::sleep(Duration::from_secs(19)).await;
    let into_fade = proxy.stats().down.dropped_blackout - before;
    proxy.set_blackout(false);
    let back = tokio::time::Instant::now();
    for (k, position) in positions.iter().enumerate() {
        let message = within("a message published into the fade", subscriber.next_message()).await.unwrap();
        assert_eq!((message.id.as_str(), message.position), (format!("m{k}").as_str(), *position));
    }
    let took = back.elapsed();
    eprintln!(
        "caught up {took:?} after the network returned; {into_fade} packets from the relay into the fade's last 19 s"
    );
    let extra = tokio::time::timeout(Duration::from_millis(300), subscriber.next_message()).await;
    assert!(extra.is_err(), "delivered twice: {extra:?}");
    Fade { into_fade, took }
}
