//! Group calls against a real relay (docs/calls.md "Group calls", docs/protocol.md "Calls
//! (group)"): creating a call rings the invitees on every device, joining, declining, leaving,
//! the host's role passing on when the host leaves, the last one out ending it, the cap, only
//! the host removing, muting and ending, a dropped device away until it comes back or the grace
//! passes, and the history record; quality reports from joined participants, their flags to
//! everyone and their summary in the history. Then the media room over raw QUIC: membership is the right
//! to it (no token capability needed, nobody else admitted), a host mute is enforced by the
//! relay until the participant unmutes, and a removed participant loses the room (their track
//! ends for the others) and cannot come back. Independent clients over raw QUIC and the
//! WebSocket fallback, in both codecs.

#[path = "common/calls.rs"]
mod calls;
mod common;

use common::{TestRelay, Transport, claims, start_with, within};
use edgerelay::client::media::MediaEvent;
use edgerelay::client::{Client, ClientError, Event};
use edgerelay::proto::media::{GroupHeader, LayerInfo, TrackInfo, TrackKind};
use edgerelay::proto::{
    CallAction, CallEvent, CallMedia, Codec, ErrorCode, GroupEndReason, GroupParticipant, GroupRole, GroupStatus,
    InviteOverReason, MuteKind, ServerFrame,
};

/// The host on QUIC and the others on WebSocket, then the other way round, each in its codec.
const MIXES: [((Transport, Codec), (Transport, Codec)); 2] = [
    ((Transport::Quic, Codec::Postcard), (Transport::WebSocket, Codec::Json)),
    ((Transport::WebSocket, Codec::Postcard), (Transport::Quic, Codec::Json)),
];

/// A device of `sub` in `acme` whose token may call anyone of its tenant, and nothing else: no
/// room may be joined and no media published by the token's grace.
async fn device(relay: &TestRelay, (transport, codec): (Transport, Codec), sub: &str) -> Client {
    let mut c = claims(sub, "acme", &[]);
    c.caps.call = vec!["*".into()];
    relay.try_connect(transport, codec, &relay.sign(&c)).await.expect("device connects")
}

async fn act(client: &Client, call: &str, action: CallAction) -> Result<String, ClientError> {
    within("a call request", client.call_action(call, action)).await
}

async fn create(host: &Client, media: CallMedia, invite: &[&str]) -> Result<String, ClientError> {
    let invite = invite.iter().map(|u| u.to_string()).collect();
    act(host, "", CallAction::CreateGroup { media, invite }).await
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) {
    match result {
        Err(ClientError::Rejected { code: got, .. }) => assert_eq!(got, code, "{got}"),
        other => panic!("expected {code}, got {other:?}"),
    }
}

/// The next call event, which must be about `call`.
async fn next(client: &mut Client, call: &str) -> CallEvent {
    let update = within("a call event", client.next_call_update()).await.expect("connection open");
    assert_eq!(update.call, call, "{update:?}");
    update.event
}

/// A roster as a `group` event tells it.
#[derive(Debug)]
struct Roster {
    host: String,
    participants: Vec<GroupParticipant>,
    ended: Option<GroupEndReason>,
}

impl Roster {
    fn status(&self, user: &str) -> GroupStatus {
        self.participants.iter().find(|p| p.user == user).map(|p| p.status).expect("listed")
    }

    fn statuses(&self) -> Vec<(&str, GroupStatus)> {
        self.participants.iter().map(|p| (p.user.as_str(), p.status)).collect()
    }
}

/// The next event must be `group`.
async fn roster(client: &mut Client, call: &str) -> Roster {
    match next(client, call).await {
        CallEvent::Group { host, participants, ended, .. } => Roster { host, participants, ended },
        other => panic!("expected group, got {other:?}"),
    }
}

/// Call events until a roster where `pred` holds (other events are skipped).
async fn roster_where(client: &mut Client, call: &str, pred: impl Fn(&Roster) -> bool) -> Roster {
    loop {
        if let CallEvent::Group { host, participants, ended, .. } = next(client, call).await {
            let roster = Roster { host, participants, ended };
            if pred(&roster) {
                return roster;
            }
        }
    }
}

/// Nothing about any call is queued for `client`: a ping round trip on the control stream (where
/// call events come) finds no call event before its pong.
async fn quiet(client: &mut Client) {
    within("ping", client.ping()).await.expect("pong");
    while let Some(event) = client.try_next_event() {
        assert!(!matches!(event, Event::CallUpdate(_)), "unexpected {event:?}");
    }
}

#[tokio::test]
async fn invitees_ring_everywhere_join_decline_leave_and_the_last_one_out_ends_it() {
    const KEY: &str = "group-calls-test-api-key";
    let relay = start_with(|c| c.api.key = Some(KEY.into())).await;
    for (host_mix, others) in MIXES {
        let mut alice = device(&relay, host_mix, "alice").await;
        let mut bob1 = device(&relay, others, "bob").await;
        let mut bob2 = device(&relay, others, "bob").await;
        let mut carol = device(&relay, others, "carol").await;

        let id = create(&alice, CallMedia::Video, &["bob", "carol"]).await.expect("created");
        assert_eq!(id.len(), 16, "{id}");
        let r = roster(&mut alice, &id).await;
        assert_eq!(r.host, "alice");
        use GroupStatus::*;
        assert_eq!(r.statuses(), [("alice", Joined), ("bob", Invited), ("carol", Invited)]);
        assert_eq!(r.participants[0].role, GroupRole::Host);
        // Every device of every invitee rings.
        for invitee in [&mut bob1, &mut bob2, &mut carol] {
            assert_eq!(roster(invitee, &id).await.status("bob"), Invited);
            assert_eq!(next(invitee, &id).await, CallEvent::Invited { by: "alice".into(), media: CallMedia::Video });
        }
        // A device that connects while the invitation rings is told the roster and rings too.
        let mut bob3 = device(&relay, others, "bob").await;
        assert_eq!(roster(&mut bob3, &id).await.status("bob"), Invited);
        assert_eq!(next(&mut bob3, &id).await, CallEvent::Invited { by: "alice".into(), media: CallMedia::Video });

        // Bob joins on one device: everyone sees it, all his devices stop ringing.
        act(&bob1, &id, CallAction::Join {}).await.expect("joined");
        assert_eq!(roster(&mut alice, &id).await.status("bob"), Joined);
        assert_eq!(roster(&mut carol, &id).await.status("bob"), Joined);
        for bob in [&mut bob1, &mut bob2, &mut bob3] {
            assert_eq!(roster(bob, &id).await.status("bob"), Joined);
            assert_eq!(next(bob, &id).await, CallEvent::InviteOver { reason: InviteOverReason::Joined });
        }
        refused(act(&bob2, &id, CallAction::Join {}).await, ErrorCode::ALREADY_JOINED);

        // Carol declines: she learns it on her devices, the others see it.
        act(&carol, &id, CallAction::Decline {}).await.expect("declined");
        assert_eq!(roster(&mut carol, &id).await.status("carol"), Declined);
        assert_eq!(next(&mut carol, &id).await, CallEvent::InviteOver { reason: InviteOverReason::Declined });
        assert_eq!(roster(&mut alice, &id).await.status("carol"), Declined);
        refused(act(&carol, &id, CallAction::Decline {}).await, ErrorCode::NOT_INVITED);

        // The host hangs up (on a group call: leave): the role passes to Bob, in the call.
        act(&alice, &id, CallAction::HangUp {}).await.expect("left");
        let r = roster(&mut alice, &id).await;
        assert_eq!((r.host.as_str(), r.status("alice"), r.ended), ("bob", Left, None));
        let r = roster_where(&mut bob1, &id, |r| r.status("alice") == Left).await;
        assert_eq!(r.host, "bob");
        assert_eq!(r.participants.iter().find(|p| p.user == "bob").unwrap().role, GroupRole::Host);

        // Carol changes her mind (the invitation is the ticket), then Bob leaves: she is host.
        act(&carol, &id, CallAction::Join {}).await.expect("joined after declining");
        assert_eq!(roster(&mut carol, &id).await.status("carol"), Joined);
        act(&bob2, &id, CallAction::Leave {}).await.expect("left from another device");
        let r = roster_where(&mut carol, &id, |r| r.status("bob") == Left).await;
        assert_eq!(r.host, "carol");

        // The last one out ends it.
        act(&carol, &id, CallAction::Leave {}).await.expect("left");
        let r = roster(&mut carol, &id).await;
        assert_eq!(r.ended, Some(GroupEndReason::AllLeft));
        refused(act(&alice, &id, CallAction::Join {}).await, ErrorCode::CALL_ENDED);
        quiet(&mut alice).await;

        // The history has it for each participant, with who created it and who took part.
        let auth = format!("Bearer {KEY}");
        let calls = within("the group call recorded as ended", async {
            loop {
                let path = "/v1/api/calls/acme/users/carol";
                let (status, body) =
                    common::http_request(relay.relay.tcp_addr(), "GET", path, &[("authorization", &auth)], "").await;
                assert_eq!(status, 200, "{body}");
                let body: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                let calls = body["calls"].as_array().expect("calls").clone();
                if calls.first().is_some_and(|c| c["id"] == id.as_str() && c["reason"] == "all_left") {
                    return calls;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await;
        let record = &calls[0];
        assert_eq!((record["kind"].as_str(), record["media"].as_str()), (Some("group"), Some("video")));
        let participants: Vec<(&str, &str, bool)> = record["participants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["user"].as_str().unwrap(), p["role"].as_str().unwrap(), p["joined_ms"].is_u64()))
            .collect();
        assert_eq!(participants, [("alice", "host", true), ("bob", "member", true), ("carol", "member", true)]);
        assert!(record["duration_ms"].is_u64() && record["answered_ms"].is_u64(), "{record}");
    }
}

#[tokio::test]
async fn only_the_host_removes_mutes_and_ends_and_the_cap_holds() {
    let relay = start_with(|c| c.calls.group_max_participants = 3).await;
    for (host_mix, others) in MIXES {
        let mut alice = device(&relay, host_mix, "alice").await;
        let mut bob = device(&relay, others, "bob").await;
        let mut carol = device(&relay, others, "carol").await;
        let dave = device(&relay, others, "dave").await;

        // The cap counts the host, the invited and the joined.
        refused(create(&alice, CallMedia::Audio, &["bob", "carol", "dave"]).await, ErrorCode::CALL_FULL);
        let id = create(&alice, CallMedia::Audio, &["bob", "carol"]).await.expect("created");
        refused(act(&alice, &id, CallAction::Invite { users: vec!["dave".into()] }).await, ErrorCode::CALL_FULL);
        refused(act(&alice, &id, CallAction::Invite { users: vec!["bob".into()] }).await, ErrorCode::ALREADY_INVITED);
        // Strangers learn nothing.
        refused(act(&dave, &id, CallAction::Join {}).await, ErrorCode::NOT_PARTICIPANT);
        act(&bob, &id, CallAction::Join {}).await.expect("joined");

        // Members cannot steer the call; the host cannot target themselves.
        refused(act(&bob, &id, CallAction::Remove { user: "carol".into() }).await, ErrorCode::NOT_HOST);
        let mute_alice = CallAction::Mute { user: "alice".into(), kind: MuteKind::Audio };
        refused(act(&bob, &id, mute_alice).await, ErrorCode::NOT_HOST);
        refused(act(&bob, &id, CallAction::End {}).await, ErrorCode::NOT_HOST);
        refused(act(&bob, &id, CallAction::MakeHost { user: "bob".into() }).await, ErrorCode::NOT_HOST);
        refused(act(&alice, &id, CallAction::Remove { user: "alice".into() }).await, ErrorCode::SELF_TARGET);
        let mute_carol = CallAction::Mute { user: "carol".into(), kind: MuteKind::Audio };
        refused(act(&alice, &id, mute_carol).await, ErrorCode::NOT_IN_CALL);
        refused(act(&bob, &id, CallAction::Signal { data: "x".into() }).await, ErrorCode::BAD_REQUEST);

        // The host mutes Bob: he is told, and everyone sees it in the roster.
        let mute_bob = CallAction::Mute { user: "bob".into(), kind: MuteKind::Video };
        act(&alice, &id, mute_bob).await.expect("muted");
        let muted = async |client: &mut Client| loop {
            match next(client, &id).await {
                CallEvent::Muted { by, kind } => return (by, kind),
                CallEvent::Group { .. } | CallEvent::Invited { .. } | CallEvent::InviteOver { .. } => {}
                other => panic!("unexpected {other:?}"),
            }
        };
        assert_eq!(muted(&mut bob).await, ("alice".to_string(), MuteKind::Video));
        let r = roster_where(&mut alice, &id, |r| r.participants.iter().any(|p| p.muted_video)).await;
        assert_eq!(r.participants[1].user, "bob");

        // The host removes Bob: he is told, and cannot come back unless invited again.
        act(&alice, &id, CallAction::Remove { user: "bob".into() }).await.expect("removed");
        let removed = async |client: &mut Client| loop {
            if let CallEvent::Removed { by } = next(client, &id).await {
                return by;
            }
        };
        assert_eq!(removed(&mut bob).await, "alice");
        roster_where(&mut bob, &id, |r| r.status("bob") == GroupStatus::Removed).await;
        refused(act(&bob, &id, CallAction::Join {}).await, ErrorCode::REMOVED);
        // The freed place can be taken.
        act(&alice, &id, CallAction::Invite { users: vec!["dave".into()] }).await.expect("invited");

        // The host ends it for everyone: pending invitations stop ringing.
        act(&alice, &id, CallAction::End {}).await.expect("ended");
        let r = roster_where(&mut alice, &id, |r| r.ended.is_some()).await;
        assert_eq!(r.ended, Some(GroupEndReason::EndedByHost));
        let over = async |client: &mut Client| loop {
            if let CallEvent::InviteOver { reason } = next(client, &id).await {
                return reason;
            }
        };
        // Carol's invitation rang from the start; it ends with the call.
        assert_eq!(over(&mut carol).await, InviteOverReason::Ended);
        refused(act(&alice, &id, CallAction::End {}).await, ErrorCode::CALL_ENDED);
    }
}

#[tokio::test]
async fn a_dropped_device_is_away_until_it_comes_back_or_the_grace_passes() {
    // A short grace so that the test waits for its end (by events, not by timing).
    let relay = start_with(|c| c.calls.reconnect_grace_ms = 300).await;
    for (host_mix, others) in MIXES {
        let mut alice = device(&relay, host_mix, "alice").await;
        let bob = device(&relay, others, "bob").await;
        let carol = device(&relay, others, "carol").await;
        let id = create(&alice, CallMedia::Video, &["bob", "carol"]).await.expect("created");
        act(&bob, &id, CallAction::Join {}).await.expect("bob joins");
        act(&carol, &id, CallAction::Join {}).await.expect("carol joins");
        roster_where(&mut alice, &id, |r| r.status("carol") == GroupStatus::Joined).await;

        // Bob's device drops: he is away; from a new device he comes back in.
        bob.close().await;
        roster_where(&mut alice, &id, |r| r.status("bob") == GroupStatus::Away).await;
        let mut bob = device(&relay, others, "bob").await;
        assert_eq!(roster(&mut bob, &id).await.status("bob"), GroupStatus::Away, "told on connect");
        act(&bob, &id, CallAction::Join {}).await.expect("bob resumes");
        roster_where(&mut alice, &id, |r| r.status("bob") == GroupStatus::Joined).await;

        // Carol's device drops and nothing comes back: after the grace she has left.
        carol.close().await;
        roster_where(&mut alice, &id, |r| r.status("carol") == GroupStatus::Away).await;
        let r = roster_where(&mut alice, &id, |r| r.status("carol") != GroupStatus::Away).await;
        assert_eq!(r.status("carol"), GroupStatus::Left);
        assert_eq!(r.ended, None, "Alice and Bob are still in");
        act(&alice, &id, CallAction::End {}).await.expect("ended");
    }
}

// ---------------------------------------------------------------------------------------------
// The media room
// ---------------------------------------------------------------------------------------------

fn audio_layer() -> Vec<LayerInfo> {
    vec![LayerInfo { width: 0, height: 0, bitrate: 32_000 }]
}

/// The next `tracks` event listing `track` (or ending it, when `ended`), skipping other events.
async fn tracks_event(client: &mut Client, track: u64, ended: bool) -> Option<TrackInfo> {
    within("a tracks event", async {
        loop {
            match client.next_event().await {
                Some(Event::Call(ServerFrame::Tracks { tracks, ended: gone, .. })) => {
                    if ended && gone.contains(&track) {
                        return None;
                    }
                    if let Some(info) = tracks.into_iter().find(|t| t.track == track)
                        && !ended
                    {
                        return Some(info);
                    }
                }
                Some(Event::Closed { code, reason }) => panic!("closed: {code:?} {reason}"),
                Some(_) => {}
                None => panic!("client gone"),
            }
        }
    })
    .await
}

/// Sends one audio group of 3 frames whose payloads start with the group number.
async fn send_audio(client: &Client, track: u64, group: u64) {
    let header = GroupHeader { track, layer: 0, group, flags: 0 };
    let mut writer = client.open_group(header, TrackKind::Audio).await.expect("group opens");
    for n in 0..3u8 {
        writer.frame(u64::from(n) * 20_000, 0x80 | 20, &[group as u8, n, 0, 0]).await.expect("frame sent");
    }
    writer.finish();
}

/// The next group forwarded to `client` in full: the publisher's group number, from the payload.
async fn receive_audio(client: &mut Client) -> u8 {
    within("a forwarded group", async {
        let mut first = None;
        loop {
            match client.next_media().await.expect("media events") {
                MediaEvent::Group(_) => {}
                MediaEvent::Frame { frame, .. } => {
                    first.get_or_insert(frame.payload[0]);
                }
                MediaEvent::End { reset: None, .. } => return first.expect("a frame"),
                // Reset (stale or held mid-way): not a delivered group.
                MediaEvent::End { .. } => first = None,
            }
        }
    })
    .await
}

#[tokio::test]
async fn call_membership_is_the_right_to_the_media_room_and_the_relay_enforces_the_host() {
    let relay = start_with(|_| {}).await;
    let quic = (Transport::Quic, Codec::Postcard);
    let mut alice = device(&relay, quic, "alice").await;
    let bob = device(&relay, quic, "bob").await;
    let carol = device(&relay, (Transport::Quic, Codec::Json), "carol").await;
    // A stranger whose token may join and publish media in any `call:` room.
    let mallory = relay.connect(Transport::Quic, Codec::Postcard, "mallory", "acme", &["call:*", "*"]).await;

    let id = create(&alice, CallMedia::Audio, &["bob", "carol"]).await.expect("created");
    let room = format!("call:{id}");
    // Only participants in the call: not a stranger, not an invitee who has not joined.
    refused(mallory.join(&room).await, ErrorCode::PERMISSION_DENIED);
    refused(bob.join(&room).await, ErrorCode::PERMISSION_DENIED);
    act(&bob, &id, CallAction::Join {}).await.expect("bob joins the call");
    // The token allows no room at all: membership is the right.
    within("alice joins the media room", alice.join(&room)).await.expect("host admitted");
    within("bob joins the media room", bob.join(&room)).await.expect("participant admitted");
    refused(carol.join(&room).await, ErrorCode::PERMISSION_DENIED);

    let mic = within("publish", bob.publish_track(&room, "mic", TrackKind::Audio, "opus", audio_layer()))
        .await
        .expect("bob publishes without caps.media");
    assert!(!tracks_event(&mut alice, mic, false).await.unwrap().muted);
    within("subscribe", alice.subscribe_track(mic, 0, false)).await.expect("alice subscribes");
    send_audio(&bob, mic, 1).await;
    assert_eq!(receive_audio(&mut alice).await, 1);

    // The host mutes Bob's audio: his track is listed muted and nothing of it is forwarded,
    // whatever his client sends, and his own track_mute cannot lift it.
    act(&alice, &id, CallAction::Mute { user: "bob".into(), kind: MuteKind::Audio }).await.expect("muted");
    assert!(tracks_event(&mut alice, mic, false).await.unwrap().muted);
    within("own unmute", bob.mute_track(mic, false)).await.expect("track_mute answered");
    assert!(tracks_event(&mut alice, mic, false).await.unwrap().muted, "still held");
    send_audio(&bob, mic, 2).await;
    send_audio(&bob, mic, 3).await;
    // Bob lifts the host's mute: the next group is forwarded, and is the first Alice receives.
    act(&bob, &id, CallAction::Unmute { kind: MuteKind::Audio }).await.expect("unmuted");
    assert!(!tracks_event(&mut alice, mic, false).await.unwrap().muted);
    send_audio(&bob, mic, 4).await;
    assert_eq!(receive_audio(&mut alice).await, 4, "groups sent while held were never forwarded");

    // The host removes Bob: his connection leaves the media room, his track ends for everyone,
    // and neither the room nor the call takes him back.
    act(&alice, &id, CallAction::Remove { user: "bob".into() }).await.expect("removed");
    assert_eq!(tracks_event(&mut alice, mic, true).await, None);
    refused(bob.join(&room).await, ErrorCode::PERMISSION_DENIED);
    refused(act(&bob, &id, CallAction::Join {}).await, ErrorCode::REMOVED);
    refused(alice.subscribe_track(mic, 0, false).await, ErrorCode::UNKNOWN_TRACK);

    // The call ends: the host is out of the room too.
    act(&alice, &id, CallAction::End {}).await.expect("ended");
    let gone = within("alice evicted", async {
        loop {
            match alice.publish_track(&room, "cam", TrackKind::Audio, "opus", audio_layer()).await {
                Err(ClientError::Rejected { code, .. }) if code != ErrorCode::MEDIA_LIMIT => return code,
                Ok(track) => {
                    let _ = alice.unpublish_track(track).await;
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(gone == ErrorCode::NOT_JOINED || gone == ErrorCode::PERMISSION_DENIED, "{gone}");
    refused(alice.join(&room).await, ErrorCode::PERMISSION_DENIED);
}

/// Drops every event queued for `client` so far (a ping round trip on the control stream).
async fn drain(client: &mut Client) {
    within("ping", client.ping()).await.expect("pong");
    while client.try_next_event().is_some() {}
}

/// Quality reports in a group call of three (and an invitee who never joins): a lasting loss
/// of one joined participant raises `high_loss` once to every active participant and clears it
/// once; an invitee who has not joined, and a stranger, are refused. After the host ends the
/// call, its history entry (server API and the `call_history` frame) carries the summary.
#[tokio::test]
async fn quality_flags_in_a_group_call_reach_everyone_and_the_history_keeps_the_summary() {
    use edgerelay::call::quality::Report;
    use edgerelay::proto::QualityFlag;
    const KEY: &str = "group-quality-test-api-key";
    let relay = start_with(|c| {
        c.api.key = Some(KEY.into());
        // Reports as fast as the test sends them; the rate limit is a unit test's.
        c.calls.quality.min_interval_ms = 0;
    })
    .await;
    let report = |loss: f64| Report { rtt_ms: 80.0, loss, jitter_ms: 5.0, send_kbps: 900.0, recv_kbps: 800.0 };
    for (host_mix, others) in MIXES {
        let mut alice = device(&relay, host_mix, "alice").await;
        let mut bob = device(&relay, others, "bob").await;
        let mut carol = device(&relay, others, "carol").await;
        let mut dave = device(&relay, others, "dave").await;
        let eve = device(&relay, others, "eve").await;

        let id = create(&alice, CallMedia::Audio, &["bob", "carol", "dave"]).await.expect("created");
        act(&bob, &id, CallAction::Join {}).await.expect("bob joined");
        act(&carol, &id, CallAction::Join {}).await.expect("carol joined");
        for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
            drain(client).await;
        }

        // Refused: a bad value, an invitee who has not joined, a stranger.
        refused(within("report", bob.call_quality(&id, report(1.5))).await, ErrorCode::BAD_REPORT);
        refused(within("report", dave.call_quality(&id, report(0.3))).await, ErrorCode::NOT_IN_CALL);
        refused(within("report", eve.call_quality(&id, report(0.3))).await, ErrorCode::NOT_PARTICIPANT);

        // Bob's lossy reports fill the window: raised once, to every active participant
        // (the invitee too: active participants follow the call).
        for _ in 0..5 {
            within("report", bob.call_quality(&id, report(0.3))).await.expect("report accepted");
        }
        for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
            let value = calls::expect_flag(client, &id, "bob", QualityFlag::HighLoss, true).await;
            assert!((value - 0.3).abs() < 1e-9, "{value}");
        }
        // Clean reports bring the mean below 2 %: cleared once.
        for _ in 0..5 {
            within("report", bob.call_quality(&id, report(0.0))).await.expect("report accepted");
        }
        for client in [&mut alice, &mut bob, &mut carol, &mut dave] {
            calls::expect_flag(client, &id, "bob", QualityFlag::HighLoss, false).await;
        }

        act(&alice, &id, CallAction::End {}).await.expect("ended");
        let done = |calls: &[serde_json::Value]| {
            calls.first().is_some_and(|c| c["id"] == id.as_str() && c["reason"] == "ended_by_host")
        };
        let calls = calls::history_until(&relay, KEY, "carol", done).await;
        let summary = &calls[0]["quality"]["participants"];
        assert_eq!(summary.as_array().map(Vec::len), Some(1), "only Bob reported: {summary}");
        assert_eq!(summary[0]["user"], "bob");
        assert_eq!(summary[0]["samples"], 10);
        assert_eq!(summary[0]["refused"], 1);
        assert_eq!(summary[0]["flags_raised"], serde_json::json!({"high_loss": 1}));
        // Over the protocol, the same entry.
        let (page, _) = within("history", alice.call_history(None, 1)).await.expect("history");
        assert_eq!(page[0].id.to_string(), id);
        let quality = page[0].quality.as_ref().expect("summary");
        assert_eq!(serde_json::to_value(quality).unwrap(), calls[0]["quality"]);
    }
}
