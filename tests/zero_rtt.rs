//! 0-RTT resumption over raw QUIC (opt-in, `ClientOptions::quic_sessions`): a client connecting
//! again with the options of an earlier connection (whose session ticket they keep) sends `hello` in its first flight, the relay
//! answers before the handshake completes and counts it in `edgerelay_quic_0rtt_total`; the
//! connection then works as any other. A relay that no longer has the ticket (restarted) refuses
//! the early data, and the client connects anyway with a full handshake. The Rust WebTransport
//! client does not try 0-RTT (its library cannot take a refusal) and always connects.
//! docs/decisions.md, "0-RTT resumption".

mod common;

use std::time::Duration;

use common::{Transport, within};
use edgerelay::client::{Client, ClientOptions, QuicSessions};
use edgerelay::proto::{Codec, Payload};

/// Each QUIC transport, its metrics label, and whether its client resumes with 0-RTT.
const QUIC_TRANSPORTS: [(Transport, &str, bool); 2] =
    [(Transport::Quic, "quic", true), (Transport::WebTransport, "webtransport", false)];

/// The relay's count of 0-RTT hellos for `label`. The metrics recorder is process-wide: the
/// tests of this file that resume run one after the other (`serial`).
async fn zero_rtt_total(relay: &common::TestRelay, label: &str) -> u64 {
    let (_, page) = relay.http_get("/metrics").await;
    let series = format!("edgerelay_quic_0rtt_total{{transport=\"{label}\"}} ");
    page.lines().find_map(|l| l.strip_prefix(&series)).map_or(0, |v| v.trim().parse::<f64>().unwrap_or(0.0) as u64)
}

/// The tests that count 0-RTT connections must not overlap.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A joined room works on the resumed connection: a message published on it comes back.
async fn works(client: &mut Client, room: &str) {
    client.join(room).await.expect("join");
    client.publish(room, "after-0rtt", Payload::from("1")).await.expect("publish");
    let m = within("the message", client.next_message()).await.expect("message");
    assert_eq!(m.id, "after-0rtt");
}

#[tokio::test]
async fn a_second_connection_sends_hello_in_0rtt_and_the_relay_counts_it() {
    let _serial = SERIAL.lock().await;
    let relay = common::start().await;
    for (transport, label, resumes) in QUIC_TRANSPORTS {
        let room = format!("resume-{label}");
        let options = ClientOptions {
            quic_sessions: Some(QuicSessions::new()),
            ..ClientOptions::new(relay.token("alice", "acme", &[&room])).codec(Codec::Postcard)
        };
        let before = zero_rtt_total(&relay, label).await;
        let first = Client::connect(relay.target(transport), options.clone()).await.expect("first connection");
        assert!(!first.resumed_0rtt(), "{label}: the first connection has no ticket to resume");
        first.close().await;
        // The same options (their clones share the ticket store), as a `Resilient` reconnects.
        let mut second = Client::connect(relay.target(transport), options.clone()).await.expect("second connection");
        assert_eq!(second.resumed_0rtt(), resumes, "{label}: the second connection resumed with 0-RTT");
        let counted = u64::from(resumes);
        assert_eq!(zero_rtt_total(&relay, label).await, before + counted, "{label}: the relay counts each 0-RTT hello");
        works(&mut second, &room).await;
        second.close().await;
        // Options of their own hold no ticket: a full handshake, not counted.
        let fresh = ClientOptions { quic_sessions: Some(QuicSessions::new()), ..options.clone() };
        let third = Client::connect(relay.target(transport), fresh).await.expect("fresh connection");
        assert!(!third.resumed_0rtt());
        // Without a store (resumption off, the default) never.
        let off = ClientOptions { quic_sessions: None, ..options.clone() };
        let fourth = Client::connect(relay.target(transport), off.clone()).await.expect("no store");
        fourth.close().await;
        let fifth = Client::connect(relay.target(transport), off).await.expect("no store again");
        assert!(!fifth.resumed_0rtt(), "{label}: resumed without a ticket store");
        assert_eq!(zero_rtt_total(&relay, label).await, before + counted, "{label}: only a resumed connection counts");
        third.close().await;
        fifth.close().await;
    }
}

#[tokio::test]
async fn a_restarted_relay_refuses_the_early_data_and_the_client_connects_anyway() {
    let _serial = SERIAL.lock().await;
    let mut relay = common::start().await;
    for (transport, label, resumes) in QUIC_TRANSPORTS {
        let room = format!("restart-{label}");
        let options = ClientOptions {
            quic_sessions: Some(QuicSessions::new()),
            ..ClientOptions::new(relay.token("alice", "acme", &[&room])).codec(Codec::Json)
        };
        let first = Client::connect(relay.target(transport), options.clone()).await.expect("first connection");
        first.close().await;
        // Same ports, certificate and data; the TLS sessions were in the old process.
        relay = relay.restart(Duration::from_millis(100)).await;
        let before = zero_rtt_total(&relay, label).await;
        let mut again = within("connect after the restart", Client::connect(relay.target(transport), options.clone()))
            .await
            .expect("connects with a full handshake");
        assert!(!again.resumed_0rtt(), "{label}: early data accepted by a relay without the ticket");
        assert_eq!(zero_rtt_total(&relay, label).await, before);
        works(&mut again, &room).await;
        again.close().await;
        // That connection brought a new ticket: the next one resumes again.
        let next = Client::connect(relay.target(transport), options).await.expect("next connection");
        assert_eq!(next.resumed_0rtt(), resumes, "{label}: 0-RTT with the ticket of the restarted relay");
        next.close().await;
    }
}
