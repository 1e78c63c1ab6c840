//! Scenarios shared by the guarantee tests: a relay (from the relay's own test helpers), clients
//! connected through a netsim proxy, and the check that reliable messages arrive all, in order,
//! exactly once.
#![allow(dead_code)]

pub mod outage;

use std::time::Duration;

use edgerelay::client::{Client, ClientOptions, Target};
use edgerelay::proto::{Codec, Payload, Position};
use netsim::{Profile, Proxy, ProxyConfig};

use crate::common::{TestRelay, Transport, within};

/// A proxy in front of the relay's listener for `transport`: UDP for QUIC and WebTransport, TCP
/// for WebSocket.
pub fn proxy_config(relay: &TestRelay, transport: Transport, profile: Profile, seed: u64) -> ProxyConfig {
    let upstream = relay.listen_addr(transport);
    let config = match transport {
        Transport::Quic | Transport::WebTransport => ProxyConfig::udp(upstream, profile),
        Transport::WebSocket => ProxyConfig::tcp(upstream, profile),
    };
    config.seed(seed)
}

fn codec_for(transport: Transport) -> Codec {
    match transport {
        Transport::Quic => Codec::Postcard,
        Transport::WebSocket | Transport::WebTransport => Codec::Json,
    }
}

/// Connects `sub` to `target` (the relay, or something in front of it) over `transport`, allowed
/// to join and publish to `room`, with a request timeout that leaves room for a bad network.
pub async fn connect(
    relay: &TestRelay,
    transport: Transport,
    target: Target,
    sub: &str,
    room: &str,
) -> Result<Client, String> {
    connect_with(relay, transport, target, sub, room, |options| options).await
}

/// [`connect`] with the client's options adjusted by `adjust`.
/// `NETSIM_FORMER_CLIENT=1`: clients as they were before issue 24 (QUIC idle timeout 8 s,
/// keep-alive 2 s, and no `network_changed()` where a test would call it), for
/// docs/performance.md's "before" figures.
pub fn former_client() -> bool {
    std::env::var("NETSIM_FORMER_CLIENT").is_ok_and(|v| v == "1")
}

/// `options` with the former client's QUIC timeouts when [`former_client`], with 0-RTT
/// resumption with `NETSIM_0RTT=1` (off by default), without the stall probe with
/// `NETSIM_NO_STALL_PROBE=1` (or the former client), and without the receive-side heartbeats
/// (`quic_watch_receiving`, on by default, needing the stall probe) with
/// `NETSIM_NO_RECEIVE_WATCH=1`.
pub fn former(mut options: ClientOptions) -> ClientOptions {
    let env = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
    if former_client() {
        (options.quic_idle_timeout, options.quic_keep_alive) = (Duration::from_secs(8), Duration::from_secs(2));
    }
    if former_client() || env("NETSIM_NO_STALL_PROBE") {
        options.quic_probe_stalls = false;
    }
    options.quic_watch_receiving = options.quic_probe_stalls && !env("NETSIM_NO_RECEIVE_WATCH");
    if std::env::var("NETSIM_0RTT").is_ok_and(|v| v == "1") {
        options.quic_sessions = Some(edgerelay::client::QuicSessions::new());
    }
    options
}

pub async fn connect_with(
    relay: &TestRelay,
    transport: Transport,
    target: Target,
    sub: &str,
    room: &str,
    adjust: impl FnOnce(ClientOptions) -> ClientOptions,
) -> Result<Client, String> {
    let token = relay.token(sub, "netsim", &[room]);
    let options = ClientOptions { request_timeout: Duration::from_secs(15), ..ClientOptions::new(token) };
    let options = adjust(former(options.codec(codec_for(transport))));
    Client::connect(target, options).await.map_err(|e| format!("{sub} connect: {e}"))
}

/// Connects `sub` through `proxy`, allowed to join and publish to `room`.
pub async fn connect_via(
    relay: &TestRelay,
    transport: Transport,
    proxy: &Proxy,
    sub: &str,
    room: &str,
) -> Result<Client, String> {
    connect(relay, transport, relay.target_at(transport, proxy.local_addr()), sub, room).await
}

/// A message the relay acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    pub id: String,
    pub data: Payload,
    pub position: Position,
}

/// Publishes messages `first..first + count` concurrently and returns what was acknowledged.
pub async fn publish_window(publisher: &Client, room: &str, first: u32, count: u32) -> Result<Vec<Acked>, String> {
    let publishes = (first..first + count).map(|i| async move {
        let id = format!("m{i}");
        let data = Payload::json(&serde_json::json!({ "n": i, "pad": "x".repeat((i as usize * 37) % 600) }));
        let position = publisher.publish(room, &id, data.clone()).await.map_err(|e| format!("publish {id}: {e}"))?;
        Ok::<_, String>(Acked { id, data, position })
    });
    futures_util::future::join_all(publishes).await.into_iter().collect()
}

/// Checks that the acks cover contiguous offsets after `joined`, and that `subscriber` receives
/// exactly those messages, in position order, once each, with the acknowledged payloads.
pub async fn expect_delivered(subscriber: &mut Client, joined: Position, acked: &[Acked]) -> Result<(), String> {
    let mut acked = acked.to_vec();
    acked.sort_by_key(|a| a.position.offset);
    for (k, a) in acked.iter().enumerate() {
        let expected = Position { epoch: joined.epoch, offset: joined.offset + 1 + k as u64 };
        if a.position != expected {
            return Err(format!("acks not contiguous: {} acked at {:?}, expected {expected:?}", a.id, a.position));
        }
    }
    for a in &acked {
        let m =
            within("delivery", subscriber.next_message()).await.map_err(|e| format!("waiting for {}: {e}", a.id))?;
        if (m.position, &m.id, &m.data) != (a.position, &a.id, &a.data) {
            return Err(format!("expected {} at {:?}, got {} at {:?}", a.id, a.position, m.id, m.position));
        }
    }
    // Nothing more: a duplicate would show up here.
    if let Ok(extra) = tokio::time::timeout(Duration::from_millis(300), subscriber.next_message()).await {
        return Err(format!("unexpected delivery after the last message: {extra:?}"));
    }
    Ok(())
}
