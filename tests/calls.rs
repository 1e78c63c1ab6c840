//! 1:1 calls against a real relay (docs/calls.md, docs/protocol.md "Calls (1:1)"): ringing on
//! every device of the callee, answering on one, rejecting, cancelling, busy, the ring timeout,
//! hanging up, a dropped device rejoining from a new connection or the grace running out, and
//! WebRTC signaling forwarded in order between the two devices in the call and nowhere else.
//! Independent clients over raw QUIC and the WebSocket fallback, in both codecs.

#[path = "common/calls.rs"]
mod calls;
mod common;

use calls::{
    connected_call, device, ended, expect_flag, expect_state, history_until, next, quiet, refused, ring_bob,
    until_ended,
};
use common::{TestRelay, Transport, claims, start_with, within};
use edgerelay::client::{Client, ClientError};
use edgerelay::proto::{CallAction, CallEndReason, CallEvent, CallMedia, CallSide, CallState, Codec, ErrorCode};

/// Caller on QUIC and callee on WebSocket, then the other way round, each in its own codec.
const MIXES: [((Transport, Codec), (Transport, Codec)); 2] = [
    ((Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json)),
    ((Transport::WebSocket, Codec::Postcard), (Transport::Quic, Codec::Json)),
];

/// Alice on `caller`, and two devices of Bob on `callee`.
async fn alice_and_bob(
    relay: &TestRelay,
    caller: (Transport, Codec),
    callee: (Transport, Codec),
) -> (Client, Client, Client) {
    let alice = device(relay, caller, "alice", "acme").await;
    let bob1 = device(relay, callee, "bob", "acme").await;
    let bob2 = device(relay, callee, "bob", "acme").await;
    (alice, bob1, bob2)
}

#[tokio::test]
async fn ring_everywhere_answer_on_one_signal_in_order_and_hang_up() {
    let relay = start_with(|_| {}).await;
    for (caller, callee) in MIXES {
        let (mut alice, mut bob1, mut bob2) = alice_and_bob(&relay, caller, callee).await;
        let id = connected_call(&mut alice, &mut bob1, &mut bob2).await;

        // The second device lost the race.
        refused(bob2.call_answer(&id).await, ErrorCode::ALREADY_ANSWERED);

        // The caller offers, the callee answers, both trickle candidates: each side receives
        // the other's signals in the order they were sent, and only the device in the call.
        let offer = r#"{"type":"offer","sdp":"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}"#;
        alice.call_signal(&id, offer).await.expect("offer forwarded");
        let candidates: Vec<String> = (0..20).map(|i| format!(r#"{{"candidate":"candidate:{i} 1 udp"}}"#)).collect();
        for candidate in &candidates {
            alice.call_signal(&id, candidate).await.expect("candidate forwarded");
        }
        bob1.call_signal(&id, r#"{"type":"answer","sdp":"v=0\r\n"}"#).await.expect("answer forwarded");
        assert_eq!(next(&mut bob1, &id).await, CallEvent::Signal { data: offer.into() });
        for candidate in &candidates {
            assert_eq!(next(&mut bob1, &id).await, CallEvent::Signal { data: candidate.clone() });
        }
        assert_eq!(
            next(&mut alice, &id).await,
            CallEvent::Signal { data: r#"{"type":"answer","sdp":"v=0\r\n"}"#.into() }
        );
        quiet(&mut bob2).await;

        // Either side hangs up: everyone is told, with who did it.
        bob1.call_hang_up(&id).await.expect("hung up");
        let hangup = ended(CallEndReason::Hangup, Some(CallSide::Callee));
        for client in [&mut alice, &mut bob1, &mut bob2] {
            expect_state(client, &id, hangup).await;
        }
        refused(alice.call_hang_up(&id).await, ErrorCode::CALL_ENDED);
        refused(alice.call_signal(&id, "late").await, ErrorCode::CALL_ENDED);
        for client in [alice, bob1, bob2] {
            client.close().await;
        }
    }
}

#[tokio::test]
async fn reject_cancel_and_busy() {
    let relay = start_with(|_| {}).await;
    let (quic, ws) = ((Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json));
    let (mut alice, mut bob1, mut bob2) = alice_and_bob(&relay, quic, ws).await;

    // Rejected by the callee, from either device.
    let id = ring_bob(&mut alice, &mut bob1, &mut bob2, CallMedia::Audio).await;
    refused(alice.call_reject(&id).await, ErrorCode::ONLY_CALLEE);
    refused(alice.call_answer(&id).await, ErrorCode::ONLY_CALLEE);
    refused(bob1.call_cancel(&id).await, ErrorCode::ONLY_CALLER);
    bob2.call_reject(&id).await.unwrap();
    for client in [&mut alice, &mut bob1, &mut bob2] {
        expect_state(client, &id, ended(CallEndReason::Rejected, None)).await;
    }

    // Cancelled by the caller: the answer that comes after it is refused.
    let id = ring_bob(&mut alice, &mut bob1, &mut bob2, CallMedia::Video).await;
    alice.call_cancel(&id).await.unwrap();
    refused(bob1.call_answer(&id).await, ErrorCode::CALL_ENDED);
    for client in [&mut alice, &mut bob1, &mut bob2] {
        expect_state(client, &id, ended(CallEndReason::Cancelled, None)).await;
    }

    // Busy: Bob is in a connected call with Carol; Alice's call ends at once and never rings.
    let mut carol = device(&relay, ws, "carol", "acme").await;
    connected_call(&mut carol, &mut bob1, &mut bob2).await;

    let id = alice.call_initiate("bob", CallMedia::Video).await.unwrap();
    for client in [&mut alice, &mut bob1, &mut bob2] {
        expect_state(client, &id, ended(CallEndReason::Busy, None)).await;
    }
    quiet(&mut bob1).await;
    quiet(&mut bob2).await;
    quiet(&mut carol).await;
}

#[tokio::test]
async fn unanswered_call_is_missed_for_the_callee_and_no_answer_for_the_caller() {
    let relay = start_with(|c| c.calls.ring_timeout_ms = 300).await;
    let mut alice = device(&relay, (Transport::WebSocket, Codec::Json), "alice", "acme").await;
    let mut bob = device(&relay, (Transport::Quic, Codec::Json), "bob", "acme").await;
    let id = alice.call_initiate("bob", CallMedia::Audio).await.unwrap();
    expect_state(&mut alice, &id, CallState::Ringing {}).await;
    expect_state(&mut bob, &id, CallState::Ringing {}).await;
    assert!(matches!(next(&mut bob, &id).await, CallEvent::Ring { .. }));
    expect_state(&mut alice, &id, ended(CallEndReason::NoAnswer, None)).await;
    expect_state(&mut bob, &id, ended(CallEndReason::Missed, None)).await;
    refused(bob.call_answer(&id).await, ErrorCode::CALL_ENDED);
}

#[tokio::test]
async fn dropped_device_rejoins_from_a_new_connection_within_the_grace() {
    let relay = start_with(|c| c.calls.reconnect_grace_ms = 10_000).await;
    for (caller, callee) in MIXES {
        let (mut alice, mut bob1, mut bob2) = alice_and_bob(&relay, caller, callee).await;
        let id = connected_call(&mut alice, &mut bob1, &mut bob2).await;

        // Bob's device in the call goes away: both sides see Bob reconnecting, with a deadline.
        bob1.close().await;
        for client in [&mut alice, &mut bob2] {
            match next(client, &id).await {
                CallEvent::State {
                    state: CallState::Reconnecting { caller_until: None, callee_until: Some(until) },
                    ..
                } => {
                    assert!(until > common::now_secs() * 1000, "deadline {until} in the future")
                }
                other => panic!("expected reconnecting, got {other:?}"),
            }
        }
        // Nothing can be signaled to an away side.
        refused(alice.call_signal(&id, "lost").await, ErrorCode::NOT_CONNECTED);
        refused(alice.call_rejoin(&id).await, ErrorCode::NOT_RECONNECTING);

        // Bob comes back on a new connection: it is told the state, and takes the call back.
        let mut bob3 = device(&relay, callee, "bob", "acme").await;
        assert!(matches!(next(&mut bob3, &id).await, CallEvent::State { state: CallState::Reconnecting { .. }, .. }));
        bob3.call_rejoin(&id).await.expect("rejoined");
        for client in [&mut alice, &mut bob2, &mut bob3] {
            expect_state(client, &id, CallState::Connected {}).await;
        }
        // Signaling now goes to the new device, not the other one.
        alice.call_signal(&id, "offer-after-rejoin").await.unwrap();
        assert_eq!(next(&mut bob3, &id).await, CallEvent::Signal { data: "offer-after-rejoin".into() });
        refused(bob2.call_signal(&id, "not me").await, ErrorCode::NOT_CONNECTED);
        quiet(&mut alice).await;

        alice.call_hang_up(&id).await.unwrap();
        for client in [&mut alice, &mut bob2, &mut bob3] {
            expect_state(client, &id, ended(CallEndReason::Hangup, Some(CallSide::Caller))).await;
        }
        for client in [alice, bob2, bob3] {
            client.close().await;
        }
    }
}

#[tokio::test]
async fn grace_passing_ends_the_call_as_connection_lost() {
    let relay = start_with(|c| c.calls.reconnect_grace_ms = 300).await;
    let (quic, ws) = ((Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json));
    let (mut alice, mut bob1, mut bob2) = alice_and_bob(&relay, quic, ws).await;
    let id = connected_call(&mut alice, &mut bob1, &mut bob2).await;
    alice.close().await;
    for bob in [&mut bob1, &mut bob2] {
        assert!(matches!(
            next(bob, &id).await,
            CallEvent::State { state: CallState::Reconnecting { caller_until: Some(_), callee_until: None }, .. }
        ));
        expect_state(bob, &id, ended(CallEndReason::ConnectionLost, Some(CallSide::Caller))).await;
    }
    // Alice is back too late.
    let mut alice = device(&relay, quic, "alice", "acme").await;
    refused(alice.call_rejoin(&id).await, ErrorCode::CALL_ENDED);
    quiet(&mut alice).await;
}

#[tokio::test]
async fn signaling_is_refused_outside_the_call_and_forwarded_nowhere() {
    let relay = start_with(|c| c.calls.max_signal_bytes = 1000).await;
    let (quic, ws) = ((Transport::Quic, Codec::Json), (Transport::WebSocket, Codec::Postcard));
    let (mut alice, mut bob1, mut bob2) = alice_and_bob(&relay, quic, ws).await;
    let mut eve = device(&relay, ws, "eve", "acme").await;

    // Before the answer there is no one to signal to.
    let id = alice.call_initiate("bob", CallMedia::Video).await.unwrap();
    refused(alice.call_signal(&id, "early offer").await, ErrorCode::NOT_CONNECTED);
    refused(eve.call_answer(&id).await, ErrorCode::NOT_PARTICIPANT);
    refused(eve.call_hang_up(&id).await, ErrorCode::NOT_PARTICIPANT);
    alice.call_cancel(&id).await.unwrap();
    for client in [&mut alice, &mut bob1, &mut bob2] {
        until_ended(client, &id).await;
    }

    let id = connected_call(&mut alice, &mut bob1, &mut bob2).await;
    // A stranger of the same tenant, the callee's other device, an unknown or malformed id, an
    // oversized signal: all refused with their documented codes, nothing forwarded.
    refused(eve.call_signal(&id, "from eve").await, ErrorCode::NOT_PARTICIPANT);
    refused(bob2.call_signal(&id, "from the other device").await, ErrorCode::NOT_CONNECTED);
    refused(eve.call_signal("0123456789abcdef", "guess").await, ErrorCode::NOT_PARTICIPANT);
    refused(eve.call_signal("not-an-id", "guess").await, ErrorCode::NOT_PARTICIPANT);
    refused(alice.call_signal(&id, &"x".repeat(1001)).await, ErrorCode::PAYLOAD_TOO_LARGE);
    refused(alice.call_action("", CallAction::Answer {}).await, ErrorCode::NOT_PARTICIPANT);
    refused(
        alice.call_action(&id, CallAction::Initiate { callee: "bob".into(), media: CallMedia::Audio }).await,
        ErrorCode::BAD_REQUEST,
    );
    for client in [&mut alice, &mut bob1, &mut bob2, &mut eve] {
        quiet(client).await;
    }
    // The largest allowed signal passes.
    alice.call_signal(&id, &"x".repeat(1000)).await.unwrap();
    assert_eq!(next(&mut bob1, &id).await, CallEvent::Signal { data: "x".repeat(1000) });
}

#[tokio::test]
async fn calls_stay_in_their_tenant_and_need_the_call_capability() {
    let relay = start_with(|_| {}).await;
    let (quic, ws) = ((Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json));
    let mut alice = device(&relay, quic, "alice", "acme").await;
    let mut globex_bob = device(&relay, ws, "bob", "globex").await;

    // "bob" means acme's bob, who is offline: the call rings nowhere, globex's bob hears nothing
    // and cannot touch it.
    let id = alice.call_initiate("bob", CallMedia::Audio).await.unwrap();
    expect_state(&mut alice, &id, CallState::Ringing {}).await;
    quiet(&mut globex_bob).await;
    refused(globex_bob.call_answer(&id).await, ErrorCode::NOT_PARTICIPANT);
    refused(globex_bob.call_hang_up(&id).await, ErrorCode::NOT_PARTICIPANT);
    quiet(&mut alice).await;
    // Acme's bob connecting starts ringing.
    let mut bob = device(&relay, quic, "bob", "acme").await;
    expect_state(&mut bob, &id, CallState::Ringing {}).await;
    assert!(matches!(next(&mut bob, &id).await, CallEvent::Ring { .. }));

    // Calling oneself, a bad callee id, a token without `caps.call` (or not for this callee).
    refused(alice.call_initiate("alice", CallMedia::Audio).await, ErrorCode::SELF_CALL);
    refused(alice.call_initiate("", CallMedia::Audio).await, ErrorCode::BAD_REQUEST);
    let no_calls = relay.try_connect(ws.0, ws.1, &relay.token("carol", "acme", &["*"])).await.unwrap();
    refused(no_calls.call_initiate("bob", CallMedia::Audio).await, ErrorCode::PERMISSION_DENIED);
    let mut only_support = claims("dave", "acme", &[]);
    only_support.caps.call = vec!["support-*".into()];
    let dave = relay.try_connect(quic.0, quic.1, &relay.sign(&only_support)).await.unwrap();
    refused(dave.call_initiate("bob", CallMedia::Audio).await, ErrorCode::PERMISSION_DENIED);
    quiet(&mut bob).await;
}

#[tokio::test]
async fn call_frames_are_rate_limited_per_connection() {
    let relay = start_with(|c| {
        c.calls.rate = 1;
        c.calls.burst = 2;
    })
    .await;
    let alice = device(&relay, (Transport::WebSocket, Codec::Json), "alice", "acme").await;
    let id = alice.call_initiate("bob", CallMedia::Audio).await.unwrap();
    // Burst 2, one more a second: of ten quick rejoins at most a few pass the bucket (and are
    // then refused by the call: Alice is not away); the rest are rate limited.
    let mut limited = 0;
    for _ in 0..10 {
        match alice.call_rejoin(&id).await {
            Err(ClientError::Rejected { code: ErrorCode::RATE_LIMITED, .. }) => limited += 1,
            other => refused(other, ErrorCode::NOT_RECONNECTING),
        }
    }
    assert!(limited > 0, "no call frame was rate limited");
}

/// Every call lands in both users' call history (server API), at its start and with its end: a
/// rejected call and a call hung up after the answer, newest first, with who did what.
#[tokio::test]
async fn calls_are_recorded_in_both_users_history() {
    const KEY: &str = "calls-history-test-api-key";
    let relay = start_with(|c| c.api.key = Some(KEY.into())).await;
    let (mut alice, mut bob1, mut bob2) = alice_and_bob(&relay, MIXES[0].0, MIXES[0].1).await;
    let rejected = ring_bob(&mut alice, &mut bob1, &mut bob2, CallMedia::Audio).await;
    // Ringing: recorded at its start, not ended yet.
    let calls = history_until(&relay, KEY, "bob", |calls| !calls.is_empty()).await;
    assert_eq!(calls[0]["id"], rejected.as_str());
    assert!(calls[0]["reason"].is_null(), "{calls:?}");
    within("reject", bob2.call_action(&rejected, CallAction::Reject {})).await.expect("rejected");
    until_ended(&mut alice, &rejected).await;
    until_ended(&mut bob1, &rejected).await;
    until_ended(&mut bob2, &rejected).await;

    let talked = connected_call(&mut alice, &mut bob1, &mut bob2).await;
    within("hang up", bob1.call_hang_up(&talked)).await.expect("hung up");
    until_ended(&mut alice, &talked).await;

    let want = |calls: &[serde_json::Value]| {
        calls.len() == 2 && calls[0]["id"] == talked.as_str() && !calls[0]["reason"].is_null()
    };
    for user in ["alice", "bob"] {
        let calls = history_until(&relay, KEY, user, want).await;
        assert_eq!(calls[0]["reason"], "hangup", "{user}: {calls:?}");
        assert_eq!(calls[0]["by"], "callee", "{user}: {calls:?}");
        assert_eq!(calls[0]["media"], "video");
        assert_eq!(calls[1]["id"], rejected.as_str());
        assert_eq!(calls[1]["reason"], "rejected", "{user}: {calls:?}");
        assert_eq!(calls[1]["media"], "audio");
        let users: Vec<&str> =
            calls[0]["participants"].as_array().unwrap().iter().map(|p| p["user"].as_str().unwrap()).collect();
        assert_eq!(users, ["alice", "bob"]);
    }
}

/// Quality reports in a connected call: a lasting loss raises `high_loss` once to both users'
/// devices and clears it once; bad reports and reports from a device not in the call are
/// refused with their codes. After the hang-up the history entry (server API and the
/// `call_history` frame) carries the summary, `call_history` pages newest first, and each user
/// reads only their own calls.
#[tokio::test]
async fn quality_flags_reach_both_sides_and_the_history_pages_over_the_protocol() {
    use edgerelay::call::quality::Report;
    use edgerelay::proto::QualityFlag;
    const KEY: &str = "calls-quality-test-api-key";
    let relay = start_with(|c| {
        c.api.key = Some(KEY.into());
        // Reports as fast as the test sends them; the rate limit is a unit test's.
        c.calls.quality.min_interval_ms = 0;
    })
    .await;
    for (caller, callee) in MIXES {
        let (mut alice, mut bob1, mut bob2) = alice_and_bob(&relay, caller, callee).await;
        let carol = device(&relay, caller, "carol", "acme").await;
        // Two older calls, rejected, for the paging.
        let mut older = Vec::new();
        for _ in 0..2 {
            let id = ring_bob(&mut alice, &mut bob1, &mut bob2, CallMedia::Audio).await;
            within("reject", bob1.call_reject(&id)).await.expect("rejected");
            for client in [&mut alice, &mut bob1, &mut bob2] {
                until_ended(client, &id).await;
            }
            older.push(id);
        }
        let id = connected_call(&mut alice, &mut bob1, &mut bob2).await;
        let report = |loss: f64| Report { rtt_ms: 80.0, loss, jitter_ms: 5.0, send_kbps: 900.0, recv_kbps: 800.0 };

        // Refused: out-of-range values, and a device that is not the one in the call.
        refused(bob1.call_quality(&id, report(1.5)).await, ErrorCode::BAD_REPORT);
        refused(bob1.call_quality(&id, Report { rtt_ms: -1.0, ..report(0.0) }).await, ErrorCode::BAD_REPORT);
        refused(bob2.call_quality(&id, report(0.3)).await, ErrorCode::NOT_CONNECTED);
        refused(carol.call_quality(&id, report(0.3)).await, ErrorCode::NOT_PARTICIPANT);

        // Three lossy reports fill the window: raised once, to every device of both users.
        for _ in 0..5 {
            within("report", bob1.call_quality(&id, report(0.3))).await.expect("report accepted");
        }
        for client in [&mut alice, &mut bob1, &mut bob2] {
            let value = expect_flag(client, &id, "bob", QualityFlag::HighLoss, true).await;
            assert!((value - 0.3).abs() < 1e-9, "{value}");
        }
        // Three clean reports bring the mean below 2 %: cleared once.
        for _ in 0..5 {
            within("report", bob1.call_quality(&id, report(0.0))).await.expect("report accepted");
        }
        for client in [&mut alice, &mut bob1, &mut bob2] {
            expect_flag(client, &id, "bob", QualityFlag::HighLoss, false).await;
        }
        within("hang up", alice.call_hang_up(&id)).await.expect("hung up");
        for client in [&mut alice, &mut bob1, &mut bob2] {
            until_ended(client, &id).await;
        }

        // The server API's entry carries the summary.
        let done = |calls: &[serde_json::Value]| {
            calls.first().is_some_and(|c| c["id"] == id.as_str() && !c["reason"].is_null())
        };
        let calls = history_until(&relay, KEY, "alice", done).await;
        let bob_q = &calls[0]["quality"]["participants"][0];
        assert_eq!(bob_q["user"], "bob", "{calls:?}");
        assert_eq!(bob_q["samples"], 10);
        assert_eq!(bob_q["refused"], 2);
        assert_eq!(bob_q["flags_raised"], serde_json::json!({"high_loss": 1}));

        // Over the protocol: the same entry, and two pages newest first.
        for client in [&alice, &bob1] {
            let (page, next_page) = within("history", client.call_history(None, 2)).await.expect("page 1");
            let ids: Vec<String> = page.iter().map(|c| c.id.to_string()).collect();
            assert_eq!(ids, [id.clone(), older[1].clone()]);
            let quality = page[0].quality.as_ref().expect("summary");
            assert_eq!(serde_json::to_value(quality).unwrap(), calls[0]["quality"]);
            assert_eq!(page[0].reason.as_deref(), Some("hangup"));
            let next_page = next_page.expect("a second page");
            let (page, last) = within("history", client.call_history(Some(&next_page), 2)).await.expect("page 2");
            // Earlier rounds of the loop left older calls behind these.
            assert_eq!(page[0].id.to_string(), older[0]);
            if caller == MIXES[0].0 {
                assert_eq!((page.len(), last), (1, None), "the first round's calls end the list");
            }
        }
        // Carol took part in none of them: her list is empty.
        if caller == MIXES[0].0 {
            let (page, last) = within("history", carol.call_history(None, 50)).await.expect("carol's page");
            assert!(page.is_empty() && last.is_none(), "{page:?}");
        }
        refused(alice.call_history(None, 0).await, ErrorCode::BAD_REQUEST);
        refused(alice.call_history(Some("yesterday"), 10).await, ErrorCode::BAD_REQUEST);
        for client in [alice, bob1, bob2, carol] {
            client.close().await;
        }
    }
}
