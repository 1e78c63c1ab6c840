//! Connection floods against a real relay on loopback (docs/operations.md, "Connection floods"):
//! QUIC Initial packets crafted with quinn-proto and sent from a raw UDP socket, and bursts of
//! TCP connections, while clients keep chatting.
//!
//! Asserted: the relay never sends an unvalidated address more than 3x what it received from
//! it; above `connections.retry_above_per_sec` it answers Initials with Retry; per-IP limits
//! refuse TCP connections with the documented 429 / `x-edgerelay-error: 116`; and established
//! clients get every message while it happens. Delivery, not timing.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Transport;
use edgerelay::proto::Codec;
use edgerelay::transport::ALPN_RAW;

/// `n` distinct QUIC Initial datagrams (each a new connection attempt) for `server`.
fn initials(n: usize, server: SocketAddr, pin: [u8; 32]) -> Vec<Vec<u8>> {
    let crypto = edgerelay::tls::pinned_client_config(vec![pin], &[ALPN_RAW]);
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(crypto).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut endpoint = quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None);
    let now = Instant::now();
    (0..n)
        .map(|_| {
            let (_, mut conn) = endpoint.connect(now, config.clone(), server, "localhost").unwrap();
            let mut buf = Vec::new();
            let transmit = conn.poll_transmit(now, 1, &mut buf).expect("an Initial");
            buf.truncate(transmit.size);
            buf
        })
        .collect()
}

/// A long-header Retry packet of QUIC v1 (RFC 9000 section 17.2.5).
fn is_retry(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| b & 0xf0 == 0xf0)
}

/// A datagram starting with a long-header packet (Initial, Handshake, Retry).
fn is_long(packet: &[u8]) -> bool {
    packet.first().is_some_and(|b| b & 0x80 != 0)
}

/// Reads what arrives on `socket` for `time` (bounded): bytes, Retry packets, and the bytes of
/// datagrams that start with a short-header (1-RTT) packet.
fn collect(socket: &UdpSocket, time: Duration) -> (usize, usize, usize) {
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let until = Instant::now() + time;
    let (mut bytes, mut retries, mut short) = (0, 0, 0);
    let mut buf = [0u8; 2048];
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buf) {
            bytes += n;
            retries += usize::from(is_retry(&buf[..n]));
            if !is_long(&buf[..n]) {
                short += n;
            }
        }
    }
    (bytes, retries, short)
}

/// Sends one crafted Initial to `relay` from a fresh socket and collects the answer for `time`:
/// the Initial's size and what [`collect`] counted.
async fn answer_to_one_initial(relay: &common::TestRelay, time: Duration) -> (usize, (usize, usize, usize)) {
    let server = relay.relay.udp_addr();
    let initial = initials(1, server, relay.cert_sha256()).remove(0);
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(server).unwrap();
    socket.send(&initial).unwrap();
    let answer = tokio::task::spawn_blocking(move || collect(&socket, time)).await.unwrap();
    (initial.len(), answer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_validation_the_relay_sends_at_most_three_times_what_it_received() {
    // No Retry: the relay answers with its handshake flight (certificate included), which is
    // larger than 3x one Initial; quinn must hold the rest back until the address is proven.
    let relay = common::start_with(|c| c.connections.retry_above_per_sec = u32::MAX).await;
    // The relay retransmits its flight on its probe timer meanwhile; it never answers more.
    let (initial, (received, retries, short)) = answer_to_one_initial(&relay, Duration::from_secs(3)).await;
    assert_eq!(retries, 0);
    assert!(received > 0, "the relay answered");
    // The handshake flight (Initial and Handshake packets) keeps within 3x. quinn 0.11.19 also
    // sends one small 1-RTT datagram (0.5-RTT data, ~140 bytes) outside that budget: measured
    // 3738 bytes in all for a 1200-byte Initial (docs/fuzzing.md, "Findings"); bounded here.
    let long = received - short;
    assert!(long <= 3 * initial, "{long} handshake bytes answered to one Initial of {initial}");
    assert!(short <= 300, "{short} bytes of 1-RTT datagrams before validation");

    // With validation always on, one small Retry is all an unproven address gets.
    let relay = common::start_with(|c| c.connections.retry_above_per_sec = 0).await;
    let (initial, (received, retries, _)) = answer_to_one_initial(&relay, Duration::from_secs(1)).await;
    assert_eq!(retries, 1);
    assert!(received < initial, "a Retry of {received} bytes");
    // And a real client connects through the Retry.
    relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &["chat"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_goes_on_through_an_initial_flood_and_a_tcp_connection_burst() {
    const MESSAGES: usize = 100;
    let relay = common::start_with(|c| {
        c.connections.retry_above_per_sec = 50;
        c.connections.exempt_loopback = false;
        c.connections.per_ip_burst = 20;
        c.connections.per_ip_rate = 10;
    })
    .await;
    let alice = relay.connect(Transport::Quic, Codec::Postcard, "alice", "acme", &["chat"]).await;
    let mut bob = relay.connect(Transport::Quic, Codec::Json, "bob", "acme", &["chat"]).await;
    let mut carol = relay.connect(Transport::WebSocket, Codec::Json, "carol", "acme", &["chat"]).await;
    alice.join("chat").await.unwrap();
    bob.join("chat").await.unwrap();
    carol.join("chat").await.unwrap();

    // The flood: 1000 distinct Initials, each sent 3 times, from one raw socket; and 200 TCP
    // connections opened at once. Both bounded in count and time.
    let server = relay.relay.udp_addr();
    let packets = initials(1000, server, relay.cert_sha256());
    let flood = tokio::task::spawn_blocking(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(server).unwrap();
        socket.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut sent, mut received, mut retries) = (0usize, 0usize, 0usize);
        let mut buf = [0u8; 2048];
        for packet in packets.iter().cycle().take(3 * packets.len()) {
            if Instant::now() > deadline {
                break;
            }
            if socket.send(packet).is_ok() {
                sent += packet.len();
            }
            while let Ok(n) = socket.recv(&mut buf) {
                received += n;
                retries += usize::from(is_retry(&buf[..n]));
            }
        }
        socket.set_nonblocking(false).unwrap();
        let (late, late_retries, _) = collect(&socket, Duration::from_millis(500));
        (sent, received + late, retries + late_retries)
    });
    let tcp_addr = relay.relay.tcp_addr();
    let burst = tokio::spawn(async move {
        let mut refused = 0;
        let mut held = Vec::new();
        for _ in 0..200 {
            let Ok(mut stream) = tokio::net::TcpStream::connect(tcp_addr).await else { continue };
            stream.set_nodelay(true).unwrap();
            let mut head = [0u8; 256];
            // A refused connection is answered at once; an admitted one waits for a request.
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(20), async {
                use tokio::io::AsyncReadExt;
                stream.read(&mut head).await
            })
            .await
            {
                let text = String::from_utf8_lossy(&head[..n]).to_string();
                if text.starts_with("HTTP/1.1 429") && text.contains("x-edgerelay-error: 116") {
                    refused += 1;
                }
            }
            held.push(stream);
        }
        refused
    });

    // Meanwhile alice chats; bob (QUIC) and carol (WebSocket) get every message, in order.
    for i in 0..MESSAGES {
        alice.publish("chat", &format!("m{i}"), format!("hello {i}").into_bytes()).await.expect("publish acked");
    }
    for reader in [&mut bob, &mut carol] {
        for i in 0..MESSAGES {
            let message = tokio::time::timeout(Duration::from_secs(30), reader.next_message())
                .await
                .expect("message within 30 s")
                .unwrap();
            assert_eq!(message.id, format!("m{i}"));
        }
    }
    let (sent, received, retries) = flood.await.unwrap();
    let refused = burst.await.unwrap();
    eprintln!(
        "flood: {sent} bytes of Initials sent, {received} bytes answered, {retries} Retry packets; {refused} TCP connections refused"
    );
    assert!(retries > 0, "the flood was answered with Retry");
    assert!(received <= 3 * sent, "{received} bytes answered to {sent}");
    assert!(refused > 0, "the TCP burst hit the per-IP limit");
    // Still serving new clients once it is over.
    let mut dave = relay.connect(Transport::Quic, Codec::Json, "dave", "acme", &["chat"]).await;
    dave.join("chat").await.unwrap();
    alice.publish("chat", "after", "after the flood").await.unwrap();
    assert_eq!(dave.next_message().await.unwrap().id, "after");
}
