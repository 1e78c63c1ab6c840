//! 1:1 call setup time on loopback (docs/calls.md): Alice calls Bob, who has two devices
//! connected; Bob answers on the first; Alice hangs up. `CALLS` calls one after the other per
//! transport, each clock read by the client the moment the event is read off its connection:
//!
//! - ring: `initiate` sent → `ring` received on both of Bob's devices (the later one);
//! - connect: `answer` sent → `state: connected` received by Alice and by Bob's answering device
//!   (the later one).
//!
//! Then the same across the nodes of a region: two relays on one `redis-server` the bench
//! starts, Alice on the first, both of Bob's devices on the second.
//!
//! The relays run in this process (the clients share its two cores), so these are loopback
//! figures of the protocol path, not of a loaded server.
//!
//! Run: `cargo bench --bench calls`. Bounded: `CALLS` calls per transport, each step within
//! `WAIT`. Results: `docs/performance.md`.

use std::time::{Duration, Instant};

use edgerelay::client::{Client, Event};
use edgerelay::config::{Config, StoreEngine};
use edgerelay::proto::{CallEvent, CallMedia, CallState, Codec};
use edgerelay::testing::RedisServer;
use tokio::sync::mpsc::Receiver;

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support.rs"]
mod support;

use common::{TestRelay, Transport, claims};

const CALLS: usize = 300;
const WAIT: Duration = Duration::from_secs(5);

async fn device(relay: &TestRelay, transport: Transport, codec: Codec, sub: &str) -> Client {
    let mut c = claims(sub, "bench", &[]);
    c.caps.call = vec!["*".into()];
    relay.try_connect(transport, codec, &relay.sign(&c)).await.expect("device connects")
}

/// Reads a client's events until a call event for which `want` holds; returns when it came.
async fn until(events: &mut Receiver<Event>, want: impl Fn(&CallEvent) -> bool) -> Instant {
    let wait = async {
        loop {
            match events.recv().await.expect("connection open") {
                Event::CallUpdate(update) if want(&update.event) => return Instant::now(),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, wait).await.expect("call event in time")
}

fn is_state(event: &CallEvent, want: fn(&CallState) -> bool) -> bool {
    matches!(event, CallEvent::State { state, .. } if want(state))
}

/// Alice on `caller`, Bob's two devices on `callee` (the same relay, or another of the region).
async fn run(label: &str, caller: &TestRelay, callee: &TestRelay, transport: Transport, codec: Codec) {
    let mut alice = device(caller, transport, codec, "alice").await;
    let mut bob1 = device(callee, transport, codec, "bob").await;
    let mut bob2 = device(callee, transport, codec, "bob").await;
    // Requests share a client while its events are read apart.
    let (mut alice_events, mut bob1_events, mut bob2_events) =
        (alice.take_events(), bob1.take_events(), bob2.take_events());
    let (mut ring, mut connect) = (Vec::with_capacity(CALLS), Vec::with_capacity(CALLS));
    for _ in 0..CALLS {
        let started = Instant::now();
        let ringing = |e: &CallEvent| matches!(e, CallEvent::Ring { .. });
        let (id, at1, at2) = tokio::join!(
            alice.call_initiate("bob", CallMedia::Audio),
            until(&mut bob1_events, ringing),
            until(&mut bob2_events, ringing)
        );
        let id = id.expect("call placed");
        ring.push(at1.max(at2) - started);

        let answered = Instant::now();
        let connected = |e: &CallEvent| is_state(e, |s| matches!(s, CallState::Connected {}));
        let (ok, at_alice, at_bob) = tokio::join!(
            bob1.call_answer(&id),
            until(&mut alice_events, connected),
            until(&mut bob1_events, connected)
        );
        ok.expect("answered");
        connect.push(at_alice.max(at_bob) - answered);

        let ended = |e: &CallEvent| is_state(e, |s| matches!(s, CallState::Ended { .. }));
        let (ok, ..) = tokio::join!(
            alice.call_hang_up(&id),
            until(&mut alice_events, ended),
            until(&mut bob1_events, ended),
            until(&mut bob2_events, ended)
        );
        ok.expect("hung up");
    }
    let line = |name: &str, values: &mut Vec<Duration>| {
        let p50 = support::quantile(values, 0.5);
        let p99 = support::quantile(values, 0.99);
        format!("{name} p50 {} p99 {}", support::ms(p50), support::ms(p99))
    };
    println!(
        "{label} {transport:?}/{}: {CALLS} calls: {}; {}",
        codec.name(),
        line("ring", &mut ring),
        line("connect", &mut connect)
    );
    for client in [alice, bob1, bob2] {
        client.close().await;
    }
}

/// Calls back to back, faster than a person places them: above the default `calls.rate`.
fn unlimited(c: &mut Config) {
    c.calls.rate = 100_000;
    c.calls.burst = 100_000;
}

const VARIANTS: [(Transport, Codec); 2] = [(Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json)];

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        let relay = common::start_with(unlimited).await;
        for (transport, codec) in VARIANTS {
            run("one node", &relay, &relay, transport, codec).await;
        }
        relay.relay.shutdown().await;

        let redis = RedisServer::start().expect("start redis-server");
        let shared = |c: &mut Config| {
            unlimited(c);
            c.store.engine = StoreEngine::Redis;
            c.redis.url = redis.url();
        };
        let (a, b) = (common::start_with(shared).await, common::start_with(shared).await);
        for (transport, codec) in VARIANTS {
            run("two nodes", &a, &b, transport, codec).await;
        }
        a.relay.shutdown().await;
        b.relay.shutdown().await;
    });
}
