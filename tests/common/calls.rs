//! Helpers for call tests: devices with the call capability, reading a call's events, and the
//! common flows (ring Bob's two devices, answer on the first).
#![allow(dead_code)]

use edgerelay::client::{Client, ClientError, Event};
use edgerelay::proto::{CallEndReason, CallEvent, CallMedia, CallSide, CallState, Codec, ErrorCode, QualityFlag};

use crate::common::{TestRelay, Transport, claims, within};

/// A device of `sub` in `tenant` whose token may call anyone of its tenant.
pub async fn device(relay: &TestRelay, (transport, codec): (Transport, Codec), sub: &str, tenant: &str) -> Client {
    let mut c = claims(sub, tenant, &[]);
    c.caps.call = vec!["*".into()];
    relay.try_connect(transport, codec, &relay.sign(&c)).await.expect("device connects")
}

/// The next call event, which must be about `call`.
pub async fn next(client: &mut Client, call: &str) -> CallEvent {
    let update = within("a call event", client.next_call_update()).await.expect("connection open");
    assert_eq!(update.call, call, "{update:?}");
    update.event
}

/// The next event must be `state` with this state.
pub async fn expect_state(client: &mut Client, call: &str, state: CallState) {
    match next(client, call).await {
        CallEvent::State { state: got, .. } => assert_eq!(got, state),
        other => panic!("expected state {state:?}, got {other:?}"),
    }
}

/// Reads `call`'s events until it ended.
pub async fn until_ended(client: &mut Client, call: &str) {
    while !matches!(next(client, call).await, CallEvent::State { state: CallState::Ended { .. }, .. }) {}
}

pub fn ended(reason: CallEndReason, side: Option<CallSide>) -> CallState {
    CallState::Ended { reason, side }
}

/// Nothing about any call is queued for `client`: a ping round trip on the control stream (where
/// call events come) finds no call event before its pong.
pub async fn quiet(client: &mut Client) {
    within("ping", client.ping()).await.expect("pong");
    while let Some(event) = client.try_next_event() {
        assert!(!matches!(event, Event::CallUpdate(_)), "unexpected {event:?}");
    }
}

pub fn refused(result: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) {
    match result {
        Err(ClientError::Rejected { code: got, .. }) => assert_eq!(got, code, "{got}"),
        other => panic!("expected {code}, got {other:?}"),
    }
}

/// `caller` calls Bob: it is told `ringing`, and both of Bob's devices are told `ringing` (with
/// who calls) and get `ring`. Returns the call's id.
pub async fn ring_bob(caller: &mut Client, bob1: &mut Client, bob2: &mut Client, media: CallMedia) -> String {
    let id = within("initiate", caller.call_initiate("bob", media)).await.expect("call placed");
    assert_eq!(id.len(), 16, "{id}");
    expect_state(caller, &id, CallState::Ringing {}).await;
    let name = caller.welcome().user.clone();
    for bob in [bob1, bob2] {
        match next(bob, &id).await {
            CallEvent::State { caller, callee, media: got, state } => {
                assert_eq!((caller.as_str(), callee.as_str(), got), (name.as_str(), "bob", media));
                assert_eq!(state, CallState::Ringing {});
            }
            other => panic!("expected state ringing, got {other:?}"),
        }
        assert_eq!(next(bob, &id).await, CallEvent::Ring { caller: name.clone(), media });
    }
    id
}

/// `caller` calls Bob, who has two devices; Bob answers on the first. Returns the call's id.
pub async fn connected_call(caller: &mut Client, bob1: &mut Client, bob2: &mut Client) -> String {
    let id = ring_bob(caller, bob1, bob2, CallMedia::Video).await;
    within("answer", bob1.call_answer(&id)).await.expect("answered");
    expect_state(caller, &id, CallState::Connected {}).await;
    expect_state(bob1, &id, CallState::Connected {}).await;
    expect_state(bob2, &id, CallState::Connected {}).await;
    assert_eq!(next(bob2, &id).await, CallEvent::AnsweredElsewhere {});
    id
}

/// The calls the server API of `relay` (API key `key`) lists for `user`, newest first, once
/// `want` holds for them.
pub async fn history_until(
    relay: &TestRelay,
    key: &str,
    user: &str,
    want: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let auth = format!("Bearer {key}");
    let path = format!("/v1/api/calls/acme/users/{user}");
    within("the call history", async {
        loop {
            let (status, body) =
                crate::common::http_request(relay.relay.tcp_addr(), "GET", &path, &[("authorization", &auth)], "")
                    .await;
            assert_eq!(status, 200, "{body}");
            let page: serde_json::Value = serde_json::from_str(&body).expect("JSON");
            let calls = page["calls"].as_array().expect("calls").clone();
            if want(&calls) {
                return calls;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
}

/// The next call event must be `quality_flag` about `user`'s `flag`, raised or cleared as
/// `raised`, and then nothing else about a call is queued; returns the value that crossed.
pub async fn expect_flag(client: &mut Client, call: &str, user: &str, flag: QualityFlag, raised: bool) -> f64 {
    let value = match next(client, call).await {
        CallEvent::QualityFlag { user: u, flag: f, raised: r, value } if u == user && f == flag && r == raised => value,
        other => panic!("expected {flag:?} of {user} raised={raised}, got {other:?}"),
    };
    quiet(client).await;
    value
}
