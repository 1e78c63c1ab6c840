//! The 1:1 call state machine, input by input, with the exact events each side receives.

use super::*;
use crate::hub::presence::{DeviceId, UserKey};

const T0: u64 = 1_000_000;
const RING: u64 = 30_000;
const GRACE: u64 = 15_000;
const A1: DeviceId = 1;
const A2: DeviceId = 2;
const B1: DeviceId = 11;
const B2: DeviceId = 12;
const B3: DeviceId = 13;

fn alice() -> UserKey {
    UserKey::new("acme", "alice")
}

fn bob() -> UserKey {
    UserKey::new("acme", "bob")
}

fn eve() -> UserKey {
    UserKey::new("acme", "eve")
}

fn request(callee_devices: &[DeviceId], callee_in_call: bool) -> Initiate {
    Initiate {
        caller: alice(),
        caller_device: A1,
        callee: bob(),
        callee_devices: callee_devices.to_vec(),
        media: Media::Video,
        callee_in_call,
    }
}

/// Alice (device A1) calls Bob, whose `devices` are connected.
fn start(devices: &[DeviceId]) -> (Call, Output) {
    Call::initiate(CallId(7), request(devices, false), CallConfig::default(), T0).unwrap()
}

/// Alice calls Bob (devices B1, B2); Bob answers on B1 a second later.
fn answered() -> Call {
    let (mut call, _) = start(&[B1, B2]);
    call.answer(&bob(), B1, T0 + 1_000).unwrap();
    call
}

fn to_user(user: UserKey, state: CallState) -> Event {
    Event { to: Recipient::User(user), kind: EventKind::State(state) }
}

/// The state event to Alice, then to Bob.
fn both(state: CallState) -> Vec<Event> {
    vec![to_user(alice(), state), to_user(bob(), state)]
}

fn ended(reason: EndReason) -> Vec<Event> {
    both(CallState::Ended { reason })
}

fn connected(caller_device: DeviceId, callee_device: DeviceId) -> CallState {
    CallState::Connected { caller_device, callee_device }
}

fn ring(device: DeviceId) -> Event {
    Event {
        to: Recipient::Device { user: bob(), device },
        kind: EventKind::Ring { caller: alice(), media: Media::Video },
    }
}

fn elsewhere(device: DeviceId) -> Event {
    Event { to: Recipient::Device { user: bob(), device }, kind: EventKind::AnsweredElsewhere }
}

fn events(events: Vec<Event>) -> Output {
    Output { events, timers: Vec::new() }
}

/// Runs a refused input and checks that it changed nothing (the whole call, field by field).
fn refused(call: &mut Call, input: impl FnOnce(&mut Call) -> Result<Output, CallError>) -> CallError {
    let before = format!("{call:?}");
    let err = input(call).expect_err("the input should be refused");
    assert_eq!(format!("{call:?}"), before, "a refused input changed the call ({err})");
    err
}

#[test]
fn initiate_rings_every_connected_callee_device_and_arms_the_ring_timer() {
    let (call, out) = start(&[B1, B2]);
    let mut expected = both(CallState::Ringing);
    expected.extend([ring(B1), ring(B2)]);
    assert_eq!(out.events, expected);
    assert_eq!(out.timers, vec![Timer { kind: TimerKind::Ring, at_ms: T0 + RING }]);
    assert_eq!(
        (call.state(), call.ringing(), call.next_deadline()),
        (CallState::Ringing, &[B1, B2][..], Some(T0 + RING))
    );
}

#[test]
fn answer_connects_that_device_and_tells_the_others_answered_elsewhere() {
    let (mut call, _) = start(&[B1, B2, B3]);
    let out = call.answer(&bob(), B2, T0 + 5_000).unwrap();
    let mut expected = both(connected(A1, B2));
    expected.extend([elsewhere(B1), elsewhere(B3)]);
    assert_eq!(out, events(expected));
    assert_eq!((call.state(), call.ringing(), call.next_deadline()), (connected(A1, B2), &[][..], None));
    assert!(call.is_answered());
}

#[test]
fn a_second_answer_racing_the_first_is_refused() {
    let (mut call, _) = start(&[B1, B2]);
    call.answer(&bob(), B1, T0 + 1_000).unwrap();
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), B2, T0 + 1_001)), CallError::AlreadyAnswered);
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), B1, T0 + 1_002)), CallError::AlreadyAnswered);
    assert_eq!(call.state(), connected(A1, B1));
}

#[test]
fn answer_by_a_device_not_ringing_or_by_the_caller_is_refused() {
    let (mut call, _) = start(&[B1, B2]);
    call.device_disconnected(&bob(), B2, T0 + 100).unwrap();
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), B2, T0 + 200)), CallError::NotRinging(B2));
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), 99, T0 + 200)), CallError::NotRinging(99));
    assert_eq!(refused(&mut call, |c| c.answer(&alice(), A1, T0 + 200)), CallError::OnlyCallee);
    assert_eq!(refused(&mut call, |c| c.reject(&alice(), T0 + 200)), CallError::OnlyCallee);
    assert_eq!(refused(&mut call, |c| c.cancel(&bob(), T0 + 200)), CallError::OnlyCaller);
}

#[test]
fn reject_by_the_callee_ends_the_call_rejected() {
    let (mut call, _) = start(&[B1, B2]);
    assert_eq!(call.reject(&bob(), T0 + 2_000).unwrap(), events(ended(EndReason::Rejected)));
    assert_eq!((call.ringing(), call.next_deadline()), (&[][..], None));
    // The callee's hang_up while it rings is a reject too.
    let (mut call, _) = start(&[B1]);
    assert_eq!(call.hang_up(&bob(), T0 + 2_000).unwrap(), events(ended(EndReason::Rejected)));
}

#[test]
fn cancel_before_answer_ends_the_call_cancelled() {
    let (mut call, _) = start(&[B1, B2]);
    assert_eq!(call.cancel(&alice(), T0 + 3_000).unwrap(), events(ended(EndReason::Cancelled)));
    assert!(call.ringing().is_empty(), "the callee's devices stop ringing");
}

#[test]
fn answer_after_cancel_is_refused() {
    let (mut call, _) = start(&[B1, B2]);
    call.cancel(&alice(), T0 + 3_000).unwrap();
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), B1, T0 + 3_001)), CallError::Ended(EndReason::Cancelled));
}

#[test]
fn caller_hang_up_before_the_answer_arrives_wins_as_cancelled() {
    let (mut call, _) = start(&[B1, B2]);
    assert_eq!(call.hang_up(&alice(), T0 + 4_000).unwrap(), events(ended(EndReason::Cancelled)));
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), B1, T0 + 4_000)), CallError::Ended(EndReason::Cancelled));
    assert_eq!(call.summary().answered_ms, None);
}

#[test]
fn caller_hang_up_after_the_answer_arrives_ends_as_hangup_by_the_caller() {
    let (mut call, _) = start(&[B1, B2]);
    call.answer(&bob(), B1, T0 + 4_000).unwrap();
    let out = call.hang_up(&alice(), T0 + 4_000).unwrap();
    assert_eq!(out, events(ended(EndReason::Hangup { by: Side::Caller })));
    assert_eq!(call.summary().duration_ms, Some(0));
}

#[test]
fn cancel_or_reject_arriving_after_the_answer_is_refused_and_the_call_stays_connected() {
    let mut call = answered();
    assert_eq!(refused(&mut call, |c| c.cancel(&alice(), T0 + 1_001)), CallError::AlreadyAnswered);
    assert_eq!(refused(&mut call, |c| c.reject(&bob(), T0 + 1_001)), CallError::AlreadyAnswered);
    assert_eq!(call.state(), connected(A1, B1));
}

#[test]
fn hang_up_by_either_side_ends_the_connected_call_with_who() {
    let mut call = answered();
    assert_eq!(call.hang_up(&bob(), T0 + 61_000).unwrap(), events(ended(EndReason::Hangup { by: Side::Callee })));
    let mut call = answered();
    // From a device that is not the one in the call: the user leaves, whichever device says so.
    assert_eq!(call.hang_up(&alice(), T0 + 61_000).unwrap(), events(ended(EndReason::Hangup { by: Side::Caller })));
}

#[test]
fn ring_timeout_ends_missed_for_the_callee_and_no_answer_for_the_caller() {
    let (mut call, _) = start(&[B1, B2]);
    assert_eq!(call.on_timeout(T0 + RING - 1), Output::default(), "an early timer does nothing");
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), B1, T0 + RING)), CallError::TimedOut);
    let out = call.on_timeout(T0 + RING);
    let expected = vec![
        to_user(alice(), CallState::Ended { reason: EndReason::NoAnswer }),
        to_user(bob(), CallState::Ended { reason: EndReason::Missed }),
    ];
    assert_eq!(out, events(expected));
    assert_eq!(
        (call.state(), call.state_for(Side::Caller)),
        (CallState::Ended { reason: EndReason::Missed }, CallState::Ended { reason: EndReason::NoAnswer })
    );
    assert_eq!(call.summary().reason, Some(EndReason::Missed));
}

#[test]
fn busy_callee_ends_the_call_at_once() {
    let (call, out) = Call::initiate(CallId(8), request(&[B1, B2], true), CallConfig::default(), T0).unwrap();
    assert_eq!(out, events(ended(EndReason::Busy)), "no ring, no timer");
    assert_eq!((call.ringing(), call.next_deadline()), (&[][..], None));
    assert_eq!(call.summary().reason, Some(EndReason::Busy));
}

#[test]
fn busy_policy_off_rings_a_callee_who_is_in_a_call() {
    let config = CallConfig { busy_when_in_call: false, ..CallConfig::default() };
    let (call, out) = Call::initiate(CallId(8), request(&[B1], true), config, T0).unwrap();
    let mut expected = both(CallState::Ringing);
    expected.push(ring(B1));
    assert_eq!(out.events, expected);
    assert_eq!(call.state(), CallState::Ringing);
}

#[test]
fn a_callee_device_connecting_while_ringing_rings_and_one_disconnecting_stops() {
    let (mut call, _) = start(&[B1]);
    assert_eq!(call.device_connected(&bob(), B2, T0 + 1_000).unwrap(), events(vec![ring(B2)]));
    assert_eq!(call.device_connected(&bob(), B2, T0 + 1_001).unwrap(), Output::default(), "rings once");
    assert_eq!(call.device_disconnected(&bob(), B1, T0 + 2_000).unwrap(), Output::default());
    assert_eq!(call.ringing(), &[B2][..]);
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), B1, T0 + 2_001)), CallError::NotRinging(B1));
    let out = call.answer(&bob(), B2, T0 + 3_000).unwrap();
    assert_eq!(out, events(both(connected(A1, B2))), "nobody else rang");
}

#[test]
fn a_callee_without_connected_devices_rings_when_one_connects() {
    let (mut call, out) = start(&[]);
    assert_eq!(out.events, both(CallState::Ringing));
    assert_eq!(call.device_connected(&bob(), B3, T0 + 10_000).unwrap(), events(vec![ring(B3)]));
    assert_eq!(call.device_connected(&bob(), B1, T0 + RING).unwrap(), Output::default(), "too late to ring");
    call.answer(&bob(), B3, T0 + 12_000).unwrap();
    assert_eq!(call.state(), connected(A1, B3));
}

#[test]
fn connections_of_devices_outside_the_call_change_nothing() {
    let (mut call, _) = start(&[B1]);
    assert_eq!(call.device_connected(&alice(), A2, T0 + 1).unwrap(), Output::default());
    assert_eq!(call.device_disconnected(&alice(), A2, T0 + 2).unwrap(), Output::default());
    call.answer(&bob(), B1, T0 + 3).unwrap();
    assert_eq!(call.device_connected(&bob(), B2, T0 + 4).unwrap(), Output::default(), "no ring once answered");
    assert_eq!(call.device_disconnected(&bob(), B2, T0 + 5).unwrap(), Output::default());
    assert_eq!(call.state(), connected(A1, B1));
}

#[test]
fn caller_device_dropping_while_ringing_ends_the_call() {
    let (mut call, _) = start(&[B1, B2]);
    let out = call.device_disconnected(&alice(), A1, T0 + 5_000).unwrap();
    assert_eq!(out, events(ended(EndReason::ConnectionLost { side: Side::Caller })));
    assert!(call.ringing().is_empty());
}

#[test]
fn device_drop_mid_call_reconnects_and_a_rejoin_within_grace_resumes() {
    let mut call = answered();
    let out = call.device_disconnected(&bob(), B1, T0 + 10_000).unwrap();
    let until = T0 + 10_000 + GRACE;
    let reconnecting = CallState::Reconnecting { caller_until_ms: None, callee_until_ms: Some(until) };
    assert_eq!(out.events, both(reconnecting));
    assert_eq!(out.timers, vec![Timer { kind: TimerKind::Grace(Side::Callee), at_ms: until }]);
    assert_eq!(call.next_deadline(), Some(until));
    // The same phone reconnects under a new connection id, just before the deadline.
    let out = call.rejoin(&bob(), 21, until - 1).unwrap();
    assert_eq!(out, events(both(connected(A1, 21))));
    assert_eq!(call.on_timeout(until), Output::default(), "the grace timer is stale now");
    assert_eq!(call.state(), connected(A1, 21));
    assert_eq!(call.summary().callee_device, Some(B1), "the history keeps the answering device");
}

#[test]
fn another_device_of_the_away_user_can_take_the_call_back() {
    let mut call = answered();
    call.device_disconnected(&alice(), A1, T0 + 2_000).unwrap();
    assert_eq!(refused(&mut call, |c| c.rejoin(&bob(), B2, T0 + 2_001)), CallError::NotReconnecting);
    let out = call.rejoin(&alice(), A2, T0 + 3_000).unwrap();
    assert_eq!(out, events(both(connected(A2, B1))));
}

#[test]
fn drop_past_grace_ends_the_call_connection_lost_for_everyone() {
    let mut call = answered();
    call.device_disconnected(&bob(), B1, T0 + 10_000).unwrap();
    let until = T0 + 10_000 + GRACE;
    assert_eq!(call.on_timeout(until - 1), Output::default());
    assert_eq!(refused(&mut call, |c| c.rejoin(&bob(), B2, until)), CallError::TimedOut);
    let out = call.on_timeout(until);
    assert_eq!(out, events(ended(EndReason::ConnectionLost { side: Side::Callee })));
    let s = call.summary();
    assert_eq!((s.ended_ms, s.duration_ms), (Some(until), Some(until - (T0 + 1_000))));
}

#[test]
fn both_sides_dropping_wait_each_for_their_own_grace() {
    let mut call = answered();
    call.device_disconnected(&bob(), B1, T0 + 10_000).unwrap();
    let out = call.device_disconnected(&alice(), A1, T0 + 12_000).unwrap();
    let (bob_until, alice_until) = (T0 + 10_000 + GRACE, T0 + 12_000 + GRACE);
    let both_away = CallState::Reconnecting { caller_until_ms: Some(alice_until), callee_until_ms: Some(bob_until) };
    assert_eq!(out.events, both(both_away));
    let out = call.rejoin(&bob(), B2, T0 + 13_000).unwrap();
    let alice_away = CallState::Reconnecting { caller_until_ms: Some(alice_until), callee_until_ms: None };
    assert_eq!(out, events(both(alice_away)), "still reconnecting: alice is away");
    assert_eq!(call.on_timeout(bob_until), Output::default());
    let out = call.on_timeout(alice_until);
    assert_eq!(out, events(ended(EndReason::ConnectionLost { side: Side::Caller })));
}

#[test]
fn hang_up_while_the_other_side_reconnects_ends_the_call() {
    let mut call = answered();
    call.device_disconnected(&bob(), B1, T0 + 10_000).unwrap();
    let out = call.hang_up(&alice(), T0 + 11_000).unwrap();
    assert_eq!(out, events(ended(EndReason::Hangup { by: Side::Caller })));
    assert_eq!(call.on_timeout(T0 + 10_000 + GRACE), Output::default());
}

#[test]
fn rejoin_when_the_side_is_not_away_is_refused() {
    let (mut call, _) = start(&[B1]);
    assert_eq!(refused(&mut call, |c| c.rejoin(&bob(), B1, T0 + 1)), CallError::NotReconnecting);
    call.answer(&bob(), B1, T0 + 2).unwrap();
    assert_eq!(refused(&mut call, |c| c.rejoin(&alice(), A2, T0 + 3)), CallError::NotReconnecting);
}

#[test]
fn non_participants_are_refused_and_nothing_is_emitted() {
    let (mut ringing, _) = start(&[B1]);
    let mut connected = answered();
    for call in [&mut ringing, &mut connected] {
        let t = T0 + 2_000;
        assert_eq!(refused(call, |c| c.answer(&eve(), B1, t)), CallError::NotParticipant);
        assert_eq!(refused(call, |c| c.reject(&eve(), t)), CallError::NotParticipant);
        assert_eq!(refused(call, |c| c.cancel(&eve(), t)), CallError::NotParticipant);
        assert_eq!(refused(call, |c| c.hang_up(&eve(), t)), CallError::NotParticipant);
        assert_eq!(refused(call, |c| c.rejoin(&eve(), 31, t)), CallError::NotParticipant);
        assert_eq!(refused(call, |c| c.device_connected(&eve(), 31, t)), CallError::NotParticipant);
        assert_eq!(refused(call, |c| c.device_disconnected(&eve(), 31, t)), CallError::NotParticipant);
        // The same name in another tenant is another user.
        let other_bob = UserKey::new("globex", "bob");
        assert_eq!(refused(call, |c| c.hang_up(&other_bob, t)), CallError::NotParticipant);
    }
}

#[test]
fn every_input_after_the_end_is_refused() {
    let (mut call, _) = start(&[B1, B2]);
    call.reject(&bob(), T0 + 1_000).unwrap();
    let gone = CallError::Ended(EndReason::Rejected);
    let t = T0 + 2_000;
    assert_eq!(refused(&mut call, |c| c.answer(&bob(), B1, t)), gone);
    assert_eq!(refused(&mut call, |c| c.reject(&bob(), t)), gone);
    assert_eq!(refused(&mut call, |c| c.cancel(&alice(), t)), gone);
    assert_eq!(refused(&mut call, |c| c.hang_up(&alice(), t)), gone);
    assert_eq!(refused(&mut call, |c| c.rejoin(&alice(), A2, t)), gone);
    assert_eq!(refused(&mut call, |c| c.device_connected(&bob(), B3, t)), gone);
    assert_eq!(refused(&mut call, |c| c.device_disconnected(&alice(), A1, t)), gone);
    assert_eq!(refused(&mut call, |c| c.hang_up(&eve(), t)), CallError::NotParticipant, "strangers learn nothing");
    assert_eq!(call.on_timeout(T0 + RING), Output::default(), "the ring timer fires into an ended call");
    assert_eq!(gone.code(), "call_ended");
}

#[test]
fn self_calls_and_cross_tenant_calls_are_refused() {
    let config = CallConfig::default();
    let mut req = request(&[B1], false);
    req.callee = alice();
    assert_eq!(Call::initiate(CallId(9), req, config, T0).unwrap_err(), CallError::SelfCall);
    let mut req = request(&[B1], false);
    req.callee = UserKey::new("globex", "bob");
    assert_eq!(Call::initiate(CallId(9), req, config, T0).unwrap_err(), CallError::CrossTenant);
    let mut req = request(&[B1], false);
    req.callee = UserKey::new("globex", "alice");
    assert_eq!(Call::initiate(CallId(9), req, config, T0).unwrap_err(), CallError::CrossTenant);
}

#[test]
fn summary_records_the_call_for_history() {
    let (call, _) = start(&[B1]);
    let s = call.summary();
    assert_eq!(
        (s.id, s.started_ms, s.answered_ms, s.ended_ms, s.reason, s.duration_ms),
        (CallId(7), T0, None, None, None, None)
    );
    let mut call = answered();
    call.hang_up(&bob(), T0 + 91_000).unwrap();
    let expected = CallSummary {
        id: CallId(7),
        caller: alice(),
        callee: bob(),
        media: Media::Video,
        caller_device: A1,
        callee_device: Some(B1),
        started_ms: T0,
        answered_ms: Some(T0 + 1_000),
        ended_ms: Some(T0 + 91_000),
        reason: Some(EndReason::Hangup { by: Side::Callee }),
        duration_ms: Some(90_000),
    };
    assert_eq!(call.summary(), expected);
    let (mut call, _) = start(&[B1]);
    call.cancel(&alice(), T0 + 5_000).unwrap();
    assert_eq!(call.summary().duration_ms, Some(0), "unanswered: no talk time");
    assert_eq!(CallId(255).to_string(), "00000000000000ff");
}

#[test]
fn timeouts_and_grace_are_configurable() {
    let config = CallConfig { ring_timeout_ms: 5_000, reconnect_grace_ms: 2_000, busy_when_in_call: true };
    let (mut call, out) = Call::initiate(CallId(1), request(&[B1], false), config, T0).unwrap();
    assert_eq!(out.timers, vec![Timer { kind: TimerKind::Ring, at_ms: T0 + 5_000 }]);
    call.answer(&bob(), B1, T0 + 1_000).unwrap();
    let out = call.device_disconnected(&alice(), A1, T0 + 2_000).unwrap();
    assert_eq!(out.timers, vec![Timer { kind: TimerKind::Grace(Side::Caller), at_ms: T0 + 4_000 }]);
    assert_eq!(
        CallConfig::default(),
        CallConfig { ring_timeout_ms: 30_000, reconnect_grace_ms: 15_000, busy_when_in_call: true }
    );
}
