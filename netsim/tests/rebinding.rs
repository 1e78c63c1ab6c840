//! NAT rebinding on QUIC: the relay-facing source port of both clients changes again and again
//! mid-session, and the session survives it by connection migration: same connection, no new
//! handshake, no message lost or duplicated.
//!
//! Its own test binary, so the process-wide metrics count only this test's connections.

#[path = "../../tests/common/mod.rs"]
mod common;
mod support;

use std::collections::HashSet;

use common::Transport;
use netsim::{Profile, Proxy};
use support::{connect_via, expect_delivered, proxy_config, publish_window};

const REBINDS: u32 = 6;
const PER_ROUND: u32 = 10;

/// The value of a metric line such as `edgerelay_connections_total{transport="quic"} 2`.
fn metric(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_session_survives_repeated_nat_rebinding() {
    let relay = common::start().await;
    let proxy = Proxy::start(proxy_config(&relay, Transport::Quic, Profile::named("4g").unwrap(), 77)).await.unwrap();
    let room = "rebinding";
    let mut subscriber = connect_via(&relay, Transport::Quic, &proxy, "sub", room).await.unwrap();
    let joined = subscriber.join(room).await.unwrap();
    let publisher = connect_via(&relay, Transport::Quic, &proxy, "pub", room).await.unwrap();
    let sessions = (subscriber.welcome().session.clone(), publisher.welcome().session.clone());

    let mut relay_saw: HashSet<std::net::SocketAddr> =
        proxy.flows().into_iter().map(|(_, upstream)| upstream).collect();
    let mut acked = Vec::new();
    for round in 0..=REBINDS {
        acked.extend(publish_window(&publisher, room, round * PER_ROUND, PER_ROUND).await.unwrap());
        if round == REBINDS {
            break;
        }
        assert_eq!(proxy.rebind().unwrap(), 2);
        relay_saw.extend(proxy.flows().into_iter().map(|(_, upstream)| upstream));
        // A NAT mapping is only re-created by the client sending; an idle receiver would wait
        // for its keep-alive. The subscriber's app traffic here is a ping.
        subscriber.ping().await.unwrap();
    }
    expect_delivered(&mut subscriber, joined.position, &acked).await.unwrap();

    // Both clients came from 1 + REBINDS addresses each, and it was one connection each.
    assert_eq!(relay_saw.len(), 2 * (1 + REBINDS as usize));
    assert_eq!(proxy.stats().rebinds, u64::from(2 * REBINDS));
    assert_eq!((subscriber.welcome().session.clone(), publisher.welcome().session.clone()), sessions);
    let (status, metrics) = relay.http_get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&metrics, "edgerelay_connections_total{transport=\"quic\"}"), Some(2.0), "{metrics}");
    assert_eq!(metric(&metrics, "edgerelay_connections{transport=\"quic\"}"), Some(2.0), "{metrics}");

    publisher.close().await;
    subscriber.close().await;
    proxy.shutdown().await;
}
