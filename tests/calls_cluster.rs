//! 1:1 calls across the nodes of a Redis region (docs/calls.md, "Across nodes"): two relays on
//! one test-started `redis-server`, the caller on one and the callee's devices on the other (or
//! on both). Everything a client sees must be what it sees on one node: ringing on every device,
//! the first answer wins and the others stop ringing, refusals with their codes, signaling in
//! order, hang-up, busy, a caller's drop ending a ringing call, a device connecting mid-call
//! told the state, rejoin from another node, and the call in the history of both nodes.

#[path = "common/calls.rs"]
mod calls;
mod common;

use calls::{connected_call, device, ended, expect_state, history_until, next, quiet, refused, ring_bob};
use common::{TestRelay, Transport, start_with, within};
use edgerelay::config::{Config, StoreEngine};
use edgerelay::proto::{CallEndReason, CallEvent, CallMedia, CallSide, CallState, Codec, ErrorCode};
use edgerelay::testing::RedisServer;

const API_KEY: &str = "calls-cluster-test-api-key";
const QUIC: (Transport, Codec) = (Transport::Quic, Codec::Postcard);
const WS: (Transport, Codec) = (Transport::WebSocket, Codec::Json);

/// Two relays sharing one Redis (and `adjust`ed alike).
async fn region(redis: &RedisServer, adjust: fn(&mut Config)) -> (TestRelay, TestRelay) {
    let url = redis.url();
    let shared = |c: &mut Config| {
        c.api.key = Some(API_KEY.into());
        c.store.engine = StoreEngine::Redis;
        c.redis.url = url.clone();
        adjust(c);
    };
    (start_with(shared).await, start_with(shared).await)
}

#[tokio::test]
async fn caller_on_one_node_and_callee_on_the_other() {
    let redis = RedisServer::start().expect("start redis-server");
    let (a, b) = region(&redis, |_| {}).await;
    let mut alice = device(&a, QUIC, "alice", "acme").await;
    let mut bob1 = device(&b, WS, "bob", "acme").await;
    let mut bob2 = device(&b, QUIC, "bob", "acme").await;

    // Both of Bob's devices ring; Bob answers on one, the other is told answered elsewhere.
    let id = connected_call(&mut alice, &mut bob1, &mut bob2).await;
    refused(bob2.call_answer(&id).await, ErrorCode::ALREADY_ANSWERED);
    refused(alice.call_answer(&id).await, ErrorCode::ONLY_CALLEE);

    // Signaling both ways, in order, only to the devices in the call.
    let offer = r#"{"type":"offer","sdp":"v=0\r\n"}"#;
    alice.call_signal(&id, offer).await.expect("offer forwarded");
    let candidates: Vec<String> = (0..20).map(|i| format!(r#"{{"candidate":"candidate:{i} 1 udp"}}"#)).collect();
    for candidate in &candidates {
        alice.call_signal(&id, candidate).await.expect("candidate forwarded");
    }
    for i in 0..candidates.len() {
        bob1.call_signal(&id, &format!("answer-{i}")).await.expect("forwarded");
    }
    assert_eq!(next(&mut bob1, &id).await, CallEvent::Signal { data: offer.into() });
    for candidate in &candidates {
        assert_eq!(next(&mut bob1, &id).await, CallEvent::Signal { data: candidate.clone() });
    }
    for i in 0..candidates.len() {
        assert_eq!(next(&mut alice, &id).await, CallEvent::Signal { data: format!("answer-{i}") });
    }
    refused(bob2.call_signal(&id, "not in the call").await, ErrorCode::NOT_CONNECTED);
    quiet(&mut bob2).await;

    // Bob's device drops and Bob takes the call back from a new connection on the caller's node.
    bob1.close().await;
    for client in [&mut alice, &mut bob2] {
        assert!(matches!(
            next(client, &id).await,
            CallEvent::State { state: CallState::Reconnecting { caller_until: None, callee_until: Some(_) }, .. }
        ));
    }
    let mut bob3 = device(&a, WS, "bob", "acme").await;
    assert!(matches!(next(&mut bob3, &id).await, CallEvent::State { state: CallState::Reconnecting { .. }, .. }));
    bob3.call_rejoin(&id).await.expect("rejoined");
    for client in [&mut alice, &mut bob2, &mut bob3] {
        expect_state(client, &id, CallState::Connected {}).await;
    }
    bob3.call_signal(&id, "after-rejoin").await.expect("forwarded");
    assert_eq!(next(&mut alice, &id).await, CallEvent::Signal { data: "after-rejoin".into() });

    // Hang-up from the other node: everyone is told, with who did it.
    bob2.call_hang_up(&id).await.expect("hung up");
    let hangup = ended(CallEndReason::Hangup, Some(CallSide::Callee));
    for client in [&mut alice, &mut bob2, &mut bob3] {
        expect_state(client, &id, hangup).await;
    }
    refused(bob2.call_hang_up(&id).await, ErrorCode::CALL_ENDED);

    // One record, listed by both nodes for both users.
    for relay in [&a, &b] {
        for user in ["alice", "bob"] {
            let hung_up = |calls: &[serde_json::Value]| calls.first().is_some_and(|c| c["reason"] == "hangup");
            let calls = history_until(relay, API_KEY, user, hung_up).await;
            assert_eq!(calls[0]["id"], id.as_str(), "{calls:?}");
            assert_eq!(calls[0]["by"], "callee", "{calls:?}");
        }
    }
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}

#[tokio::test]
async fn callee_devices_on_both_nodes_ring_and_busy_holds_region_wide() {
    let redis = RedisServer::start().expect("start redis-server");
    let (a, b) = region(&redis, |_| {}).await;
    let mut bob_a = device(&a, QUIC, "bob", "acme").await;
    let mut bob_b = device(&b, WS, "bob", "acme").await;
    let mut alice = device(&b, QUIC, "alice", "acme").await;

    // Alice (on B) calls: Bob's devices on A and on B ring; the one on A answers.
    let id = connected_call(&mut alice, &mut bob_a, &mut bob_b).await;

    // Carol on A calls Bob, who is in Alice's call (held by B): busy at once, nothing rings.
    let mut carol = device(&a, WS, "carol", "acme").await;
    let busy = within("initiate", carol.call_initiate("bob", CallMedia::Audio)).await.expect("placed");
    for client in [&mut carol, &mut bob_a, &mut bob_b] {
        expect_state(client, &busy, ended(CallEndReason::Busy, None)).await;
    }
    quiet(&mut bob_a).await;
    quiet(&mut bob_b).await;
    quiet(&mut alice).await;

    // Once Alice hung up, Carol's call rings on both of Bob's devices.
    alice.call_hang_up(&id).await.expect("hung up");
    for client in [&mut alice, &mut bob_a, &mut bob_b] {
        expect_state(client, &id, ended(CallEndReason::Hangup, Some(CallSide::Caller))).await;
    }
    let again = ring_bob(&mut carol, &mut bob_a, &mut bob_b, CallMedia::Audio).await;
    bob_b.call_reject(&again).await.expect("rejected");
    for client in [&mut carol, &mut bob_a, &mut bob_b] {
        expect_state(client, &again, ended(CallEndReason::Rejected, None)).await;
    }
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}

#[tokio::test]
async fn a_device_connecting_mid_ring_rings_and_the_callers_drop_ends_the_call_elsewhere() {
    let redis = RedisServer::start().expect("start redis-server");
    let (a, b) = region(&redis, |_| {}).await;
    let mut alice = device(&a, WS, "alice", "acme").await;
    let mut bob1 = device(&b, QUIC, "bob", "acme").await;
    let mut bob2 = device(&b, WS, "bob", "acme").await;
    let id = ring_bob(&mut alice, &mut bob1, &mut bob2, CallMedia::Video).await;

    // A third device of Bob's connects on B while it rings: told the state, and rings too.
    let mut bob3 = device(&b, QUIC, "bob", "acme").await;
    expect_state(&mut bob3, &id, CallState::Ringing {}).await;
    assert_eq!(next(&mut bob3, &id).await, CallEvent::Ring { caller: "alice".into(), media: CallMedia::Video });

    // The caller's device drops while it rings: the call ends for Bob's devices on the other node.
    alice.close().await;
    let lost = ended(CallEndReason::ConnectionLost, Some(CallSide::Caller));
    for bob in [&mut bob1, &mut bob2, &mut bob3] {
        expect_state(bob, &id, lost).await;
    }
    refused(bob1.call_answer(&id).await, ErrorCode::CALL_ENDED);
    quiet(&mut bob2).await;
    a.relay.shutdown().await;
    b.relay.shutdown().await;
}
