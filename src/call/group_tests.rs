//! The group call machine, input by input: membership, the cap, the host's powers, devices
//! dropping and coming back, timeouts and the end.

use super::group::*;
use super::{CallId, Media, Recipient};
use crate::hub::presence::{DeviceId, UserKey};

const T0: u64 = 1_000_000;
const RING: u64 = 30_000;
const GRACE: u64 = 15_000;
const H1: DeviceId = 1;
const A1: DeviceId = 11;
const A2: DeviceId = 12;
const B1: DeviceId = 21;
const C1: DeviceId = 31;

fn user(name: &str) -> UserKey {
    UserKey::new("acme", name)
}

fn host() -> UserKey {
    user("hana")
}

/// Hana creates a video call inviting Ann (devices A1, A2) and Ben (B1).
fn created(config: GroupConfig) -> (GroupCall, GroupOutput) {
    GroupCall::create(
        CallId(9),
        host(),
        H1,
        Media::Video,
        vec![(user("ann"), vec![A1, A2]), (user("ben"), vec![B1])],
        config,
        T0,
    )
    .unwrap()
}

fn call() -> GroupCall {
    created(GroupConfig::default()).0
}

/// Ann and Ben joined a second after the start.
fn full_call() -> GroupCall {
    let mut call = call();
    call.join(&user("ann"), A1, T0 + 1_000).unwrap();
    call.join(&user("ben"), B1, T0 + 1_000).unwrap();
    call
}

fn status(call: &GroupCall, name: &str) -> Status {
    call.participant(&user(name)).unwrap().status
}

fn role(call: &GroupCall, name: &str) -> Role {
    call.participant(&user(name)).unwrap().role
}

/// Who got a `state` event, in order.
fn state_recipients(out: &GroupOutput) -> Vec<String> {
    out.iter()
        .filter(|e| matches!(e.kind, GroupEventKind::State(_)))
        .map(|e| match &e.to {
            Recipient::User(u) => u.user.to_string(),
            Recipient::Device { user, .. } => format!("{}#device", user.user),
        })
        .collect()
}

fn others(out: &GroupOutput) -> Vec<(Recipient, GroupEventKind)> {
    out.iter().filter(|e| !matches!(e.kind, GroupEventKind::State(_))).map(|e| (e.to.clone(), e.kind.clone())).collect()
}

fn device(name: &str, device: DeviceId) -> Recipient {
    Recipient::Device { user: user(name), device }
}

fn to_user(name: &str) -> Recipient {
    Recipient::User(user(name))
}

#[test]
fn creating_rings_every_device_of_every_invitee_and_tells_everyone_the_roster() {
    let (call, out) = created(GroupConfig::default());
    assert_eq!(state_recipients(&out), ["hana", "ann", "ben"]);
    let invited = GroupEventKind::Invited { by: host(), media: Media::Video };
    assert_eq!(
        others(&out),
        vec![(device("ann", A1), invited.clone()), (device("ann", A2), invited.clone()), (device("ben", B1), invited)]
    );
    assert_eq!(status(&call, "hana"), Status::Joined { device: H1 });
    assert_eq!(role(&call, "hana"), Role::Host);
    assert_eq!(status(&call, "ann"), Status::Invited { until_ms: T0 + RING });
    assert_eq!(call.next_deadline(), Some(T0 + RING));
}

#[test]
fn creating_checks_tenant_duplicates_and_the_cap() {
    let stranger = UserKey::new("other", "ann");
    let err =
        GroupCall::create(CallId(1), host(), H1, Media::Audio, vec![(stranger, vec![])], GroupConfig::default(), T0)
            .unwrap_err();
    assert_eq!(err, GroupError::CrossTenant);

    let (call, _) = GroupCall::create(
        CallId(1),
        host(),
        H1,
        Media::Audio,
        vec![(user("ann"), vec![]), (user("ann"), vec![]), (host(), vec![])],
        GroupConfig::default(),
        T0,
    )
    .unwrap();
    assert_eq!(call.roster().participants.len(), 2);

    let small = GroupConfig { max_participants: 2, ..GroupConfig::default() };
    let err = GroupCall::create(
        CallId(1),
        host(),
        H1,
        Media::Audio,
        vec![(user("ann"), vec![]), (user("ben"), vec![])],
        small,
        T0,
    )
    .unwrap_err();
    assert_eq!(err.code(), "call_full");
}

#[test]
fn joining_stops_the_invitees_other_devices_ringing() {
    let mut call = call();
    let out = call.join(&user("ann"), A2, T0 + 500).unwrap();
    assert_eq!(state_recipients(&out), ["hana", "ann", "ben"]);
    assert_eq!(others(&out), vec![(to_user("ann"), GroupEventKind::InviteOver(InviteOver::Joined))]);
    assert_eq!(status(&call, "ann"), Status::Joined { device: A2 });
    assert_eq!(call.participant(&user("ann")).unwrap().first_joined_ms, Some(T0 + 500));
    assert_eq!(call.join(&user("ann"), A1, T0 + 600).unwrap_err(), GroupError::AlreadyJoined);
}

#[test]
fn strangers_cannot_join_and_learn_nothing() {
    let mut call = call();
    assert_eq!(call.join(&user("eve"), 99, T0).unwrap_err().code(), "not_participant");
    call.end(&host(), T0 + 1).unwrap();
    // Even after the end, a stranger is told only that they are not a participant.
    assert_eq!(call.join(&user("eve"), 99, T0 + 2).unwrap_err().code(), "not_participant");
    assert_eq!(call.leave(&user("eve"), T0 + 2).unwrap_err().code(), "not_participant");
}

#[test]
fn declining_tells_the_decliner_and_the_others() {
    let mut call = call();
    let out = call.decline(&user("ben"), T0 + 100).unwrap();
    // Ben is no longer active but is told (all his devices) with the state and invite_over.
    assert_eq!(state_recipients(&out), ["hana", "ann", "ben"]);
    assert_eq!(others(&out), vec![(to_user("ben"), GroupEventKind::InviteOver(InviteOver::Declined))]);
    assert_eq!(status(&call, "ben"), Status::Declined);
    assert_eq!(call.decline(&user("ben"), T0 + 200).unwrap_err(), GroupError::NotInvited);
    assert_eq!(call.decline(&host(), T0 + 200).unwrap_err(), GroupError::NotInvited);
    // A decliner may still join while the call lasts.
    call.join(&user("ben"), B1, T0 + 300).unwrap();
    assert_eq!(status(&call, "ben"), Status::Joined { device: B1 });
}

#[test]
fn an_unanswered_invitation_becomes_missed_at_the_ring_timeout_and_not_before() {
    let mut call = call();
    assert!(call.on_timeout(T0 + RING - 1).is_empty());
    assert_eq!(call.join(&user("ben"), B1, T0 + RING).unwrap_err(), GroupError::TimedOut);
    let out = call.on_timeout(T0 + RING);
    assert_eq!(status(&call, "ann"), Status::Missed);
    assert_eq!(status(&call, "ben"), Status::Missed);
    let over: Vec<_> = others(&out).into_iter().map(|(to, _)| to).collect();
    assert_eq!(over, vec![to_user("ann"), to_user("ben")]);
    assert_eq!(call.next_deadline(), None);
    assert!(call.ended().is_none(), "the host is still in the call");
}

#[test]
fn a_device_connecting_while_invited_rings_and_one_connecting_after_does_not() {
    let mut call = call();
    let out = call.device_connected(&user("ben"), 22);
    assert_eq!(others(&out), vec![(device("ben", 22), GroupEventKind::Invited { by: host(), media: Media::Video })]);
    call.join(&user("ben"), B1, T0 + 1).unwrap();
    assert!(call.device_connected(&user("ben"), 23).is_empty());
    assert!(call.device_connected(&user("eve"), 99).is_empty());
}

#[test]
fn only_the_host_invites_unless_members_may() {
    let mut call = full_call();
    assert_eq!(call.invite(&user("ann"), user("cid"), &[C1], T0 + 2_000).unwrap_err(), GroupError::NotHost);
    let out = call.invite(&host(), user("cid"), &[C1], T0 + 2_000).unwrap();
    assert_eq!(state_recipients(&out), ["hana", "ann", "ben", "cid"]);
    assert_eq!(others(&out), vec![(device("cid", C1), GroupEventKind::Invited { by: host(), media: Media::Video })]);
    assert_eq!(call.invite(&host(), user("cid"), &[], T0 + 2_001).unwrap_err().code(), "already_invited");
    assert_eq!(call.invite(&host(), UserKey::new("other", "x"), &[], T0).unwrap_err().code(), "cross_tenant");

    let mut open = created(GroupConfig { members_can_invite: true, ..GroupConfig::default() }).0;
    open.join(&user("ann"), A1, T0 + 1).unwrap();
    open.invite(&user("ann"), user("cid"), &[], T0 + 2).unwrap();
    assert_eq!(open.participant(&user("cid")).unwrap().invited_by, user("ann"));
    // An invitee who has not joined cannot invite.
    assert_eq!(open.invite(&user("ben"), user("dan"), &[], T0 + 3).unwrap_err(), GroupError::NotInCall);
}

#[test]
fn the_cap_counts_invited_joined_and_away_but_not_those_who_left() {
    let mut call = created(GroupConfig { max_participants: 3, ..GroupConfig::default() }).0;
    assert_eq!(call.invite(&host(), user("cid"), &[], T0 + 1).unwrap_err(), GroupError::CallFull);
    call.decline(&user("ben"), T0 + 2).unwrap();
    call.invite(&host(), user("cid"), &[], T0 + 3).unwrap();
    // Ben declined; rejoining now would make four.
    assert_eq!(call.join(&user("ben"), B1, T0 + 4).unwrap_err(), GroupError::CallFull);
    call.decline(&user("cid"), T0 + 5).unwrap();
    call.join(&user("ben"), B1, T0 + 6).unwrap();
}

#[test]
fn the_host_removes_and_a_removed_participant_cannot_join_until_invited_again() {
    let mut call = full_call();
    assert_eq!(call.remove(&user("ann"), &user("ben"), T0 + 2_000).unwrap_err(), GroupError::NotHost);
    let out = call.remove(&host(), &user("ben"), T0 + 2_000).unwrap();
    assert_eq!(others(&out), vec![(to_user("ben"), GroupEventKind::Removed { by: host() })]);
    assert_eq!(state_recipients(&out), ["hana", "ann", "ben"]);
    assert_eq!(status(&call, "ben"), Status::Removed);
    assert_eq!(call.participant(&user("ben")).unwrap().in_call_ms, 1_000);
    assert_eq!(call.join(&user("ben"), B1, T0 + 3_000).unwrap_err().code(), "removed");
    assert_eq!(call.remove(&host(), &host(), T0).unwrap_err(), GroupError::SelfTarget);
    call.invite(&host(), user("ben"), &[B1], T0 + 4_000).unwrap();
    call.join(&user("ben"), B1, T0 + 5_000).unwrap();
}

#[test]
fn removing_a_ringing_invitee_stops_the_ringing() {
    let mut call = call();
    let out = call.remove(&host(), &user("ann"), T0 + 10).unwrap();
    assert_eq!(
        others(&out),
        vec![
            (to_user("ann"), GroupEventKind::Removed { by: host() }),
            (to_user("ann"), GroupEventKind::InviteOver(InviteOver::Removed)),
        ]
    );
}

#[test]
fn the_host_mutes_and_only_the_participant_unmutes() {
    let mut call = full_call();
    assert!(call.may_send(&user("ann"), MuteKind::Audio));
    assert_eq!(call.mute(&user("ben"), &user("ann"), MuteKind::Audio).unwrap_err(), GroupError::NotHost);
    let out = call.mute(&host(), &user("ann"), MuteKind::Audio).unwrap();
    assert_eq!(others(&out), vec![(to_user("ann"), GroupEventKind::Muted { by: host(), kind: MuteKind::Audio })]);
    assert!(!call.may_send(&user("ann"), MuteKind::Audio));
    assert!(call.may_send(&user("ann"), MuteKind::Video));
    assert!(call.mute(&host(), &user("ann"), MuteKind::Audio).unwrap().is_empty(), "muting twice says nothing");
    call.unmute(&user("ann"), MuteKind::Audio).unwrap();
    assert!(call.may_send(&user("ann"), MuteKind::Audio));
    assert!(call.unmute(&user("ann"), MuteKind::Audio).unwrap().is_empty());
    // Invitees and strangers send nothing.
    let call = self::call();
    assert!(!call.may_send(&user("ann"), MuteKind::Audio));
    assert!(!call.may_send(&user("eve"), MuteKind::Audio));
}

#[test]
fn a_dropped_device_makes_the_participant_away_and_any_device_resumes_within_the_grace() {
    let mut call = full_call();
    assert!(call.device_disconnected(&user("ann"), A2, T0 + 2_000).is_empty(), "not the device in the call");
    let out = call.device_disconnected(&user("ann"), A1, T0 + 2_000);
    assert_eq!(state_recipients(&out), ["hana", "ann", "ben"]);
    assert_eq!(status(&call, "ann"), Status::Away { until_ms: T0 + 2_000 + GRACE });
    assert!(!call.may_send(&user("ann"), MuteKind::Audio));
    call.join(&user("ann"), 13, T0 + 5_000).unwrap();
    assert_eq!(status(&call, "ann"), Status::Joined { device: 13 });
    // The stay went on through the drop.
    call.leave(&user("ann"), T0 + 11_000).unwrap();
    assert_eq!(call.participant(&user("ann")).unwrap().in_call_ms, 10_000);
}

#[test]
fn past_the_grace_an_away_participant_has_left() {
    let mut call = full_call();
    call.device_disconnected(&user("ann"), A1, T0 + 2_000);
    assert_eq!(call.next_deadline(), Some(T0 + 2_000 + GRACE));
    assert_eq!(call.join(&user("ann"), 13, T0 + 2_000 + GRACE).unwrap_err(), GroupError::TimedOut);
    let out = call.on_timeout(T0 + 2_000 + GRACE);
    assert_eq!(status(&call, "ann"), Status::Left);
    assert_eq!(state_recipients(&out), ["hana", "ben", "ann"]);
}

#[test]
fn when_the_host_leaves_the_earliest_joined_takes_over() {
    let mut call = call();
    call.join(&user("ben"), B1, T0 + 100).unwrap();
    call.join(&user("ann"), A1, T0 + 200).unwrap();
    call.mute(&host(), &user("ben"), MuteKind::Video).unwrap();
    call.leave(&host(), T0 + 300).unwrap();
    assert_eq!(role(&call, "ben"), Role::Host);
    assert!(call.participant(&user("ben")).unwrap().muted == HostMute::default(), "a host is never muted by others");
    assert_eq!(call.roster().host, user("ben"));
    assert_eq!(call.end(&host(), T0 + 400).unwrap_err(), GroupError::NotHost);
}

#[test]
fn the_host_hands_over_the_role() {
    let mut call = full_call();
    assert_eq!(call.make_host(&host(), &user("eve")).unwrap_err(), GroupError::NotParticipant);
    call.make_host(&host(), &user("ann")).unwrap();
    assert_eq!(role(&call, "ann"), Role::Host);
    assert_eq!(role(&call, "hana"), Role::Member);
    assert_eq!(call.remove(&host(), &user("ben"), T0 + 2).unwrap_err(), GroupError::NotHost);
    call.remove(&user("ann"), &host(), T0 + 2).unwrap();
}

#[test]
fn the_last_one_out_ends_the_call_and_pending_invitations_stop_ringing() {
    let mut call = call();
    call.join(&user("ann"), A1, T0 + 100).unwrap();
    call.leave(&host(), T0 + 200).unwrap();
    assert!(call.ended().is_none());
    let out = call.leave(&user("ann"), T0 + 300).unwrap();
    assert_eq!(call.ended(), Some((GroupEnd::AllLeft, T0 + 300)));
    // Ann (who just left) and Ben (still invited) get the final state; Ben stops ringing.
    assert_eq!(state_recipients(&out), ["ben", "ann"]);
    assert_eq!(others(&out), vec![(to_user("ben"), GroupEventKind::InviteOver(InviteOver::Ended))]);
    assert_eq!(status(&call, "ben"), Status::Missed);
    assert_eq!(call.join(&user("ben"), B1, T0 + 400).unwrap_err().code(), "call_ended");
    assert_eq!(call.next_deadline(), None);
}

#[test]
fn the_host_ends_the_call_for_everyone() {
    let mut call = full_call();
    assert_eq!(call.end(&user("ann"), T0 + 2_000).unwrap_err(), GroupError::NotHost);
    let out = call.end(&host(), T0 + 2_000).unwrap();
    assert_eq!(state_recipients(&out), ["hana", "ann", "ben"]);
    let roster = call.roster();
    assert_eq!(roster.ended, Some(GroupEnd::EndedByHost));
    assert!(roster.participants.iter().all(|p| p.status == Status::Left));
    assert_eq!(call.participant(&user("ann")).unwrap().in_call_ms, 1_000);
    assert_eq!(call.end(&host(), T0 + 2_001).unwrap_err().code(), "call_ended");
    assert!(call.device_disconnected(&host(), H1, T0 + 2_002).is_empty());
    assert!(call.on_timeout(T0 + RING * 10).is_empty());
}

#[test]
fn the_last_device_dropping_ends_the_call_only_when_the_grace_passes() {
    let (mut call, _) =
        GroupCall::create(CallId(3), host(), H1, Media::Audio, vec![], GroupConfig::default(), T0).unwrap();
    call.device_disconnected(&host(), H1, T0 + 1);
    assert!(call.ended().is_none());
    call.on_timeout(T0 + 1 + GRACE);
    assert_eq!(call.ended(), Some((GroupEnd::AllLeft, T0 + 1 + GRACE)));
}
