//! A region for tests: relay processes sharing one real `redis-server` and one dev token secret,
//! and the resilient clients' helpers the region tests share. Included with
//! `#[path = "common/region.rs"] mod region;` beside `mod common;` and `mod process;`.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use edgerelay::client::resilient::{Reconnect, Resilient};
use edgerelay::client::{ServerTrust, Target};
use edgerelay::proto::{Payload, Position};
use edgerelay::testing::RedisServer;
use tokio::task::JoinSet;

use crate::common::Transport;
use crate::process::RelayProcess;

/// Relays sharing one Redis and one dev token secret (so a token is good on every node).
pub struct Cluster {
    pub nodes: Vec<RelayProcess>,
    /// Every node's certificate hash: a client may land on any of them.
    pub pins: Vec<[u8; 32]>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// A region with no node yet.
    pub fn empty() -> Cluster {
        Cluster { nodes: Vec::new(), pins: Vec::new(), dir: tempfile::tempdir().unwrap() }
    }

    pub async fn start(redis: &RedisServer, nodes: usize) -> Cluster {
        let mut cluster = Cluster::empty();
        for _ in 0..nodes {
            cluster.add_node(redis).await;
        }
        cluster
    }

    /// Starts one more node. One at a time: the first creates the shared secret, the others
    /// read it.
    pub async fn add_node(&mut self, redis: &RedisServer) {
        self.add_node_with(redis, &[]).await;
    }

    pub async fn add_node_with(&mut self, redis: &RedisServer, env: &[(&str, &str)]) {
        let dir = self.dir.path();
        let secret = dir.join("dev-token-secret");
        let mut node = RelayProcess::new(&dir.join(format!("node-{}", self.nodes.len())))
            .with_env("EDGERELAY_STORE__ENGINE", "redis")
            .with_env("EDGERELAY_REDIS__URL", redis.url())
            .with_env("EDGERELAY_REDIS__RESYNC_INTERVAL_MS", "250")
            .with_env("EDGERELAY_AUTH__DEV_SECRET_FILE", secret.display().to_string());
        for (key, value) in env {
            node = node.with_env(key, *value);
        }
        node.start().await;
        self.pins.push(node.cert_pin().await);
        self.nodes.push(node);
    }

    pub fn quic(&self, node: usize) -> Target {
        self.nodes[node].quic_target(self.pins.clone())
    }

    pub fn ws(&self, node: usize) -> Target {
        self.nodes[node].ws_target()
    }

    /// Node `node`'s listener for `transport`.
    pub fn target(&self, transport: Transport, node: usize) -> Target {
        match transport {
            Transport::Quic => self.quic(node),
            Transport::WebSocket => self.ws(node),
            Transport::WebTransport => Target::WebTransport {
                addr: self.nodes[node].udp,
                server_name: "localhost".into(),
                tls: ServerTrust::Pinned(self.pins.clone()),
                path: edgerelay::transport::webtransport::PATH.into(),
            },
        }
    }

    /// Every node's listener for `transport`, node `first`'s first: what a client of that node
    /// that may resume on any other is given.
    pub fn targets_from(&self, transport: Transport, first: usize) -> Vec<Target> {
        let n = self.nodes.len();
        (0..n).map(|i| self.target(transport, (first + i) % n)).collect()
    }

    pub fn token(&self, sub: &str) -> String {
        self.nodes[0].token(sub)
    }
}

/// Reconnects quickly (tests of resumption, not of backoff).
pub fn fast() -> Reconnect {
    Reconnect { base_delay: Duration::from_millis(50), max_delay: Duration::from_millis(500), ..Reconnect::default() }
}

/// Waits until a resilient client has joined `room` (it knows a position there); the events
/// it reported meanwhile explain a failure.
pub async fn joined(client: &mut Resilient, room: &str) {
    let mut events = Vec::new();
    let waited = tokio::time::timeout(Duration::from_secs(20), async {
        while client.positions().get(room).is_none_or(Option::is_none) {
            if let Ok(Some(event)) = tokio::time::timeout(Duration::from_millis(10), client.next_event()).await {
                events.push(event);
            }
        }
    })
    .await;
    assert!(waited.is_ok(), "never joined {room}; events: {events:?}");
    if events.len() > 1 {
        eprintln!("joined {room} after {events:?}");
    }
}

/// One acknowledged publish: where it was stored, when it was made and when its ack came.
#[derive(Debug, Clone, Copy)]
pub struct Acked {
    pub position: Position,
    pub sent: Instant,
    pub acked: Instant,
}

/// Publishes `ids` through `publisher`, one every `every`, each awaited in its own task until
/// acked; returns the acks by id.
pub fn publish_steadily(
    publisher: Arc<Resilient>,
    room: &str,
    ids: Vec<String>,
    every: Duration,
) -> tokio::task::JoinHandle<BTreeMap<String, Acked>> {
    let room = room.to_owned();
    tokio::spawn(async move {
        let mut acks = JoinSet::new();
        for id in ids {
            let (publisher, room) = (publisher.clone(), room.clone());
            acks.spawn(async move {
                let sent = Instant::now();
                let position = publisher.publish(&room, &id, Payload::from("1")).await.expect("acked eventually");
                (id, Acked { position, sent, acked: Instant::now() })
            });
            tokio::time::sleep(every).await;
        }
        let mut out = BTreeMap::new();
        while let Some(ack) = acks.join_next().await {
            let (id, acked) = ack.unwrap();
            out.insert(id, acked);
        }
        out
    })
}

/// The positions of [`publish_steadily`]'s acks.
pub fn positions(acks: BTreeMap<String, Acked>) -> BTreeMap<String, Position> {
    acks.into_iter().map(|(id, a)| (id, a.position)).collect()
}
