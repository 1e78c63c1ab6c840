//! The proxies against plain echo servers on loopback: what they forward, drop, hold and rebind.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::within;
use netsim::{LinkConfig, Loss, Profile, Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A UDP echo server that remembers every source address it saw.
async fn udp_echo() -> (SocketAddr, Arc<Mutex<HashSet<SocketAddr>>>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let sources = Arc::new(Mutex::new(HashSet::new()));
    let seen = sources.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        while let Ok((len, from)) = socket.recv_from(&mut buf).await {
            seen.lock().unwrap().insert(from);
            let _ = socket.send_to(&buf[..len], from).await;
        }
    });
    (addr, sources)
}

async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

fn profile(link: LinkConfig) -> Profile {
    Profile { up: link.clone(), down: link, ..Profile::perfect("test") }
}

async fn client(proxy: &Proxy) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(proxy.local_addr()).await.unwrap();
    socket
}

async fn echo_once(socket: &UdpSocket, payload: &[u8]) -> Vec<u8> {
    socket.send(payload).await.unwrap();
    let mut buf = vec![0u8; 2048];
    let len = within("echo", socket.recv(&mut buf)).await.unwrap();
    buf.truncate(len);
    buf
}

#[tokio::test]
async fn udp_rebind_moves_the_flow_to_a_new_source_port() {
    let (upstream, sources) = udp_echo().await;
    let proxy = Proxy::start(ProxyConfig::udp(upstream, Profile::perfect("none"))).await.unwrap();
    let socket = client(&proxy).await;
    assert_eq!(echo_once(&socket, b"one").await, b"one");
    let before = proxy.flows();
    assert_eq!(before.len(), 1);
    for round in 0..3 {
        assert_eq!(proxy.rebind().unwrap(), 1);
        let payload = format!("after rebind {round}");
        assert_eq!(echo_once(&socket, payload.as_bytes()).await, payload.as_bytes());
    }
    // The server saw four distinct sources for one client; the proxy reports the last.
    let sources = sources.lock().unwrap().clone();
    assert_eq!(sources.len(), 4);
    let after = proxy.flows();
    assert_eq!(after[0].0, before[0].0);
    assert!(sources.contains(&after[0].1) && after[0].1 != before[0].1);
    assert_eq!(proxy.stats().rebinds, 3);
    proxy.shutdown().await;
}

#[tokio::test]
async fn udp_loss_matches_the_model_and_blackout_drops_everything() {
    let (upstream, _) = udp_echo().await;
    let link = LinkConfig { loss: Loss::Random(0.2), ..LinkConfig::perfect() };
    let proxy = Proxy::start(ProxyConfig::udp(upstream, profile(link)).seed(5)).await.unwrap();
    let socket = client(&proxy).await;
    let n = 2000u64;
    for i in 0..n {
        socket.send(&i.to_be_bytes()).await.unwrap();
        if i % 100 == 0 {
            tokio::task::yield_now().await;
        }
    }
    // Every packet is counted by the model before anything else; wait until all are.
    within("all packets seen", async {
        while proxy.stats().up.packets < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let up = proxy.stats().up;
    let lost = up.dropped_loss as f64 / n as f64;
    assert!((0.16..0.24).contains(&lost), "up loss {lost}");
    assert_eq!(up.delivered + up.dropped(), n);

    proxy.set_blackout(true);
    for i in 0..10u8 {
        socket.send(&[i]).await.unwrap();
    }
    within("blackout drops", async {
        while proxy.stats().up.dropped_blackout < 10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    proxy.set_blackout(false);
    proxy.shutdown().await;
}

#[tokio::test]
async fn udp_mtu_clamp_and_duplicates() {
    let (upstream, _) = udp_echo().await;
    let link = LinkConfig { mtu: Some(1000), duplicate: 1.0, ..LinkConfig::perfect() };
    let proxy = Proxy::start(ProxyConfig::udp(upstream, Profile { down: LinkConfig::perfect(), ..profile(link) }))
        .await
        .unwrap();
    let socket = client(&proxy).await;
    socket.send(&[1u8; 1001]).await.unwrap();
    // Duplicated up, so the small packet comes back twice.
    assert_eq!(echo_once(&socket, &[2u8; 1000]).await, vec![2u8; 1000]);
    let mut buf = [0u8; 2048];
    assert_eq!(within("duplicate", socket.recv(&mut buf)).await.unwrap(), 1000);
    let up = proxy.stats().up;
    assert_eq!((up.dropped_mtu, up.duplicated), (1, 1));
    proxy.shutdown().await;
}

#[tokio::test]
async fn tcp_stream_arrives_whole_and_in_order_through_a_lossy_profile() {
    let upstream = tcp_echo().await;
    let proxy = Proxy::start(ProxyConfig::tcp(upstream, Profile::named("wifi-lossy").unwrap())).await.unwrap();
    let stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    let (mut r, mut w) = stream.into_split();
    let sent: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let expected = sent.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut received = Vec::new();
    within("echo through the proxy", r.read_to_end(&mut received)).await.unwrap();
    writer.await.unwrap();
    assert!(received == expected, "stream corrupted: {} of {} bytes", received.len(), expected.len());
    let stats = proxy.stats();
    assert!(stats.up.retransmitted > 0 && stats.down.retransmitted > 0, "{stats:?}");
    proxy.shutdown().await;
}

#[tokio::test]
async fn tcp_blackout_holds_bytes_until_it_ends() {
    let upstream = tcp_echo().await;
    let proxy = Proxy::start(ProxyConfig::tcp(upstream, Profile::perfect("none"))).await.unwrap();
    let mut stream = TcpStream::connect(proxy.local_addr()).await.unwrap();
    stream.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    within("before", stream.read_exact(&mut buf)).await.unwrap();
    proxy.set_blackout(true);
    stream.write_all(b"during").await.unwrap();
    let held = tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await;
    assert!(held.is_err(), "bytes crossed a blackout: {held:?}");
    proxy.set_blackout(false);
    within("after", stream.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"during");
    assert_eq!(proxy.stats().active_flows, 1);
    proxy.shutdown().await;
}
