//! Golden byte vectors: the wire format of every frame type in both codecs, pinned in
//! `tests/golden/frames-v1.json`. Clients in other languages test against the same file.
//! Regenerate (only for a deliberate protocol change) with `UPDATE_GOLDEN=1 cargo test --test golden`.

use std::collections::BTreeMap;

use edgerelay::call::history::CallRecord;
use edgerelay::proto::media::{LayerInfo, SpeakerLevel, TrackInfo, TrackKind};
use edgerelay::proto::{
    CallAction, CallEndReason, CallEvent, CallMedia, CallSide, CallState, ClientFrame, Codec, ErrorCode,
    GroupEndReason, GroupParticipant, GroupRole, GroupStatus, HistoryEntry, IceServer, InviteOverReason, MemberReceipt,
    Mute, MuteKind, Notification, NotifyAction, NotifyEvent, NotifyPrefs, Payload, Position, PresenceEntry, Priority,
    PushPlatform, QualityFlag, QuietHours, ReadMark, ReceiptAction, ReceiptEvent, RoomCursor, RoomUnread, ServerFrame,
    SessionAction, SessionEnd, SessionEvent, SessionMember, SessionPatch, SessionRole, SessionSnapshot, SessionStatus,
    Status, WireLimits,
};
use serde::{Deserialize, Serialize};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/frames-v1.json");

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Vector {
    /// `client` (client → relay) or `server` (relay → client).
    direction: String,
    /// The JSON codec's exact bytes, as text.
    json: String,
    /// The postcard codec's exact bytes, hex.
    postcard_hex: String,
}

fn pos(epoch: u64, offset: u64) -> Position {
    Position { epoch, offset }
}

fn client_frames() -> Vec<(&'static str, ClientFrame)> {
    vec![
        ("hello", ClientFrame::Hello { version: 1, token: "eyJ.x.y".into(), client: "demo/1".into() }),
        ("join", ClientFrame::Join { req: 1, room: "chat:lobby".into(), since: None }),
        ("join_since", ClientFrame::Join { req: 2, room: "chat:lobby".into(), since: Some(pos(7, 42)) }),
        ("leave", ClientFrame::Leave { req: 3, room: "chat:lobby".into() }),
        (
            "publish_json",
            ClientFrame::Publish {
                req: 4,
                room: "chat:lobby".into(),
                id: "m-1".into(),
                data: Payload::from(r#"{"text":"hi"}"#),
            },
        ),
        (
            "publish_binary",
            ClientFrame::Publish {
                req: 5,
                room: "chat:lobby".into(),
                id: "m-2".into(),
                data: Payload::from(vec![0u8, 255, 1]),
            },
        ),
        ("ping", ClientFrame::Ping { req: 6 }),
        ("refresh", ClientFrame::Refresh { req: 7, token: "eyJ.new.sig".into() }),
        ("set_status", ClientFrame::SetStatus { status: Status::Busy, custom: Some("in a call".into()) }),
        ("set_status_plain", ClientFrame::SetStatus { status: Status::Online, custom: None }),
        ("activity", ClientFrame::Activity {}),
        ("typing", ClientFrame::Typing { room: "chat:lobby".into(), typing: true }),
        ("presence_sync", ClientFrame::PresenceSync { req: 8, room: "chat:lobby".into() }),
        ("privacy", ClientFrame::Privacy { hide_presence: false, hide_typing: true }),
        ("history", ClientFrame::History { req: 9, room: "chat:lobby".into(), before: Some(43), limit: 50 }),
        ("history_newest", ClientFrame::History { req: 10, room: "chat:lobby".into(), before: None, limit: 20 }),
        ("history_after", ClientFrame::HistoryAfter { req: 12, room: "chat:lobby".into(), after: 42, limit: 100 }),
        ("rooms", ClientFrame::Rooms { req: 11 }),
        ("cursor", ClientFrame::Cursor { room: "chat:lobby".into(), position: pos(7, 42) }),
        (
            "track_publish",
            ClientFrame::TrackPublish {
                req: 12,
                room: "call:standup".into(),
                name: "cam".into(),
                kind: TrackKind::Video,
                codec: "vp8".into(),
                layers: vec![
                    LayerInfo { width: 320, height: 180, bitrate: 150_000 },
                    LayerInfo { width: 1280, height: 720, bitrate: 1_500_000 },
                ],
            },
        ),
        ("track_unpublish", ClientFrame::TrackUnpublish { req: 13, track: 5 }),
        ("track_subscribe", ClientFrame::TrackSubscribe { req: 14, track: 5, max_layer: 1, paused: false }),
        ("track_unsubscribe", ClientFrame::TrackUnsubscribe { req: 15, track: 5 }),
        ("track_mute", ClientFrame::TrackMute { req: 16, track: 5, muted: true }),
        ("ice_servers", ClientFrame::IceServers { req: 17 }),
        (
            "call_initiate",
            ClientFrame::Call {
                req: 18,
                call: String::new(),
                action: CallAction::Initiate { callee: "bob".into(), media: CallMedia::Video },
            },
        ),
        ("call_answer", ClientFrame::Call { req: 19, call: CALL.into(), action: CallAction::Answer {} }),
        ("call_reject", ClientFrame::Call { req: 20, call: CALL.into(), action: CallAction::Reject {} }),
        ("call_cancel", ClientFrame::Call { req: 21, call: CALL.into(), action: CallAction::Cancel {} }),
        ("call_hang_up", ClientFrame::Call { req: 22, call: CALL.into(), action: CallAction::HangUp {} }),
        ("call_rejoin", ClientFrame::Call { req: 23, call: CALL.into(), action: CallAction::Rejoin {} }),
        (
            "call_signal",
            ClientFrame::Call {
                req: 24,
                call: CALL.into(),
                action: CallAction::Signal { data: r#"{"type":"offer","sdp":"v=0\r\n"}"#.into() },
            },
        ),
        (
            "call_create_group",
            ClientFrame::Call {
                req: 30,
                call: String::new(),
                action: CallAction::CreateGroup { media: CallMedia::Video, invite: vec!["bob".into(), "carol".into()] },
            },
        ),
        group_action("call_invite", 31, CallAction::Invite { users: vec!["dave".into()] }),
        group_action("call_join", 32, CallAction::Join {}),
        group_action("call_decline", 33, CallAction::Decline {}),
        group_action("call_leave", 34, CallAction::Leave {}),
        group_action("call_remove", 35, CallAction::Remove { user: "bob".into() }),
        group_action("call_mute", 36, CallAction::Mute { user: "bob".into(), kind: MuteKind::Audio }),
        group_action("call_unmute", 37, CallAction::Unmute { kind: MuteKind::Video }),
        group_action("call_make_host", 38, CallAction::MakeHost { user: "carol".into() }),
        group_action("call_end", 39, CallAction::End {}),
        (
            "call_quality",
            ClientFrame::Call {
                req: 40,
                call: CALL.into(),
                action: CallAction::Quality {
                    rtt_ms: 84.5,
                    loss: 0.25,
                    jitter_ms: 4.5,
                    send_kbps: 910.5,
                    recv_kbps: 880.5,
                },
            },
        ),
        (
            "call_history",
            ClientFrame::CallHistory { req: 41, before: Some("1767225600000-6f1c2a9be04d7731".into()), limit: 20 },
        ),
        session_action(
            "session_create",
            50,
            SessionAction::Create {
                doc: Payload::from(r#"{"cards":{}}"#),
                max_bytes: Some(65536),
                default_role: SessionRole::Editor,
                schema: None,
            },
        ),
        session_action(
            "session_create_schema",
            58,
            SessionAction::Create {
                doc: Payload::from(r#"{"items":[]}"#),
                max_bytes: None,
                default_role: SessionRole::Viewer,
                schema: Some(Payload::from(r#"{"type":"object","required":["items"]}"#)),
            },
        ),
        session_action("session_join", 51, SessionAction::Join { version: None }),
        session_action("session_join_since", 52, SessionAction::Join { version: Some(7) }),
        session_action("session_leave", 53, SessionAction::Leave {}),
        session_action(
            "session_patch",
            54,
            SessionAction::Patch {
                id: "p-1".into(),
                base: 7,
                patch: Payload::from(r#"[{"op":"add","path":"/cards/c1","value":{"text":"hi"}}]"#),
            },
        ),
        session_action("session_role", 55, SessionAction::Role { user: "carol".into(), role: SessionRole::Viewer }),
        session_action("session_close", 56, SessionAction::Close {}),
        session_action("session_destroy", 57, SessionAction::Destroy {}),
        session_action("session_cursor", 0, SessionAction::Cursor { data: Payload::from(r#"{"x":10,"y":20}"#) }),
        session_action(
            "session_create_yjs",
            58,
            SessionAction::CreateYjs { max_bytes: None, default_role: SessionRole::Editor },
        ),
        // A y-protocols sync step 1 with an empty state vector.
        session_action("session_yjs", 59, SessionAction::Yjs { message: Payload::from(vec![0, 0, 1, 0]) }),
        (
            "subscribe",
            ClientFrame::Subscribe {
                req: 50,
                pattern: "orders.*.created".into(),
                filter: Some("qty >= 10 and region in (eu, us)".into()),
                since: None,
            },
        ),
        (
            "subscribe_since",
            ClientFrame::Subscribe {
                req: 51,
                pattern: "orders.eu.created".into(),
                filter: None,
                since: Some(pos(7, 42)),
            },
        ),
        ("unsubscribe", ClientFrame::Unsubscribe { req: 52, pattern: "orders.*.created".into() }),
        // Receipts (docs/receipts.md).
        ("receipts_sync", ClientFrame::Receipts { req: 60, action: ReceiptAction::Sync {} }),
        (
            "receipts_read",
            ClientFrame::Receipts {
                req: 61,
                action: ReceiptAction::Read {
                    marks: vec![
                        ReadMark { room: "chat:team".into(), position: pos(7, 42) },
                        ReadMark { room: "chat:side".into(), position: pos(9, 3) },
                    ],
                },
            },
        ),
        (
            "receipts_status",
            ClientFrame::Receipts { req: 62, action: ReceiptAction::Status { room: "chat:team".into() } },
        ),
        ("receipts_privacy", ClientFrame::Receipts { req: 63, action: ReceiptAction::Privacy { share_read: false } }),
        (
            "publish_mentions",
            ClientFrame::PublishMentions {
                req: 64,
                room: "chat:team".into(),
                id: "m-43".into(),
                data: Payload::from(r#"{"text":"@bob lunch?"}"#),
                mentions: vec!["bob".into()],
            },
        ),
        // Notifications (docs/notifications.md).
        (
            "notifications_feed",
            ClientFrame::Notifications { req: 70, action: NotifyAction::Feed { before: Some(12), limit: 20 } },
        ),
        (
            "notifications_mark_read",
            ClientFrame::Notifications { req: 71, action: NotifyAction::MarkRead { id: 11, up_to: true } },
        ),
        (
            "notifications_prefs",
            ClientFrame::Notifications { req: 72, action: NotifyAction::Prefs { set: Some(notify_prefs()) } },
        ),
        (
            "notifications_register_device",
            ClientFrame::Notifications {
                req: 73,
                action: NotifyAction::RegisterDevice {
                    device: "phone-1".into(),
                    platform: PushPlatform::Apns,
                    token: "740f4707bebcf74f".into(),
                },
            },
        ),
        (
            "notifications_unregister_device",
            ClientFrame::Notifications { req: 74, action: NotifyAction::UnregisterDevice { device: "phone-1".into() } },
        ),
        (
            "notifications_background",
            ClientFrame::Notifications { req: 75, action: NotifyAction::Background { background: true } },
        ),
    ]
}

fn notify_prefs() -> NotifyPrefs {
    NotifyPrefs {
        mutes: vec![
            Mute { room: "chat:noisy".into(), until: None },
            Mute { room: "chat:team".into(), until: Some(1_700_003_600_000) },
        ],
        quiet_hours: Some(QuietHours { start: "22:00".into(), end: "07:00".into(), tz: "Europe/Berlin".into() }),
        min_priority: Priority::Normal,
        skip_types: vec!["digest".into()],
    }
}

fn notification() -> Notification {
    Notification {
        id: 12,
        time: 1_700_000_000_000,
        kind: "mention".into(),
        priority: Priority::High,
        title: "bob mentioned you".into(),
        body: "@alice lunch?".into(),
        data: Payload::from(r#"{"thread":7}"#),
        room: Some("chat:team".into()),
        read: false,
        silent: false,
    }
}

const SESSION: &str = "doc:board";

fn session_action(name: &'static str, req: u64, action: SessionAction) -> (&'static str, ClientFrame) {
    (name, ClientFrame::Session { req, session: SESSION.into(), action })
}

fn session_event(name: &'static str, req: u64, event: SessionEvent) -> (&'static str, ServerFrame) {
    (name, ServerFrame::Session { req, session: SESSION.into(), event })
}

fn session_patch() -> SessionPatch {
    SessionPatch {
        version: 8,
        user: "bob".into(),
        id: "p-1".into(),
        patch: Payload::from(r#"[{"op":"add","path":"/cards/c1","value":{"text":"hi"}}]"#),
        time: 1_700_000_000_000,
    }
}

fn group_action(name: &'static str, req: u64, action: CallAction) -> (&'static str, ClientFrame) {
    (name, ClientFrame::Call { req, call: CALL.into(), action })
}

fn group_event(name: &'static str, event: CallEvent) -> (&'static str, ServerFrame) {
    (name, ServerFrame::Call { req: 0, call: CALL.into(), event })
}

fn server_frames() -> Vec<(&'static str, ServerFrame)> {
    let limits = WireLimits {
        max_frame_bytes: 65536,
        max_payload_bytes: 32768,
        max_rooms: 128,
        publish_rate: 100,
        publish_burst: 200,
        ping_interval_ms: 15000,
        idle_timeout_ms: 45000,
    };
    vec![
        (
            "welcome",
            ServerFrame::Welcome {
                version: 1,
                session: "00000000000000a1".into(),
                user: "alice".into(),
                server_time: 1_700_000_000_000,
                limits,
            },
        ),
        ("joined", ServerFrame::Joined { req: 1, room: "chat:lobby".into(), position: pos(7, 42), recovered: true }),
        ("left", ServerFrame::Left { req: 3, room: "chat:lobby".into() }),
        ("ack", ServerFrame::Ack { req: 4, room: "chat:lobby".into(), id: "m-1".into(), position: pos(7, 43) }),
        (
            "message_json",
            ServerFrame::Message {
                room: "chat:lobby".into(),
                position: pos(7, 43),
                from: "alice".into(),
                time: 1_700_000_000_123,
                id: "m-1".into(),
                data: Payload::from(r#"{"text":"hi"}"#),
            },
        ),
        (
            "message_binary",
            ServerFrame::Message {
                room: "chat:lobby".into(),
                position: pos(7, 44),
                from: "bob".into(),
                time: 1_700_000_000_456,
                id: "m-2".into(),
                data: Payload::from(vec![0u8, 255, 1]),
            },
        ),
        ("pong", ServerFrame::Pong { req: 6, server_time: 1_700_000_000_789 }),
        (
            "error",
            ServerFrame::Error {
                req: 4,
                code: ErrorCode::PERMISSION_DENIED,
                message: "token does not allow publishing to chat:lobby".into(),
            },
        ),
        (
            "go_away",
            ServerFrame::GoAway {
                code: ErrorCode::GOING_AWAY,
                reason: "relay is draining".into(),
                reconnect_after_ms: 1000,
            },
        ),
        ("refreshed", ServerFrame::Refreshed { req: 7, expires_at: 1_700_003_600 }),
        ("presence", ServerFrame::Presence { room: "chat:lobby".into(), entry: presence_entry() }),
        (
            "presence_snapshot",
            ServerFrame::PresenceSnapshot { req: 0, room: "chat:lobby".into(), users: vec![presence_entry()] },
        ),
        ("presence_refresh", ServerFrame::PresenceRefresh { room: "chat:lobby".into(), count: 1, digest: 12_345 }),
        (
            "typing",
            ServerFrame::Typing {
                room: "chat:lobby".into(),
                users: vec!["alice".into(), "bob".into()],
                others: 0,
                version: 1_700_000_000_500,
                ttl_ms: 6000,
            },
        ),
        (
            "history",
            ServerFrame::History {
                req: 9,
                room: "chat:lobby".into(),
                position: pos(7, 43),
                first: 1,
                messages: vec![HistoryEntry {
                    offset: 41,
                    from: "alice".into(),
                    time: 1_700_000_000_100,
                    id: "m-0".into(),
                    data: Payload::from(r#"{"text":"earlier"}"#),
                }],
            },
        ),
        (
            "rooms",
            ServerFrame::Rooms { req: 11, rooms: vec![RoomCursor { room: "chat:lobby".into(), position: pos(7, 42) }] },
        ),
        ("track_published", ServerFrame::TrackPublished { req: 12, room: "call:standup".into(), track: 5 }),
        ("track_ok", ServerFrame::TrackOk { req: 14, track: 5 }),
        (
            "tracks",
            ServerFrame::Tracks {
                room: "call:standup".into(),
                tracks: vec![TrackInfo {
                    track: 5,
                    user: "alice".into(),
                    name: "mic".into(),
                    kind: TrackKind::Audio,
                    codec: "opus".into(),
                    layers: vec![LayerInfo { width: 0, height: 0, bitrate: 32_000 }],
                    muted: false,
                }],
                ended: vec![3],
            },
        ),
        ("layer", ServerFrame::Layer { track: 5, layer: 1 }),
        ("keyframe_request", ServerFrame::KeyframeRequest { track: 5, layer: 0 }),
        ("layers_wanted", ServerFrame::LayersWanted { track: 5, layers: 0b011 }),
        (
            "speakers",
            ServerFrame::Speakers {
                room: "call:standup".into(),
                speakers: vec![SpeakerLevel { user: "alice".into(), level: 87 }],
                dominant: Some("alice".into()),
            },
        ),
        (
            "ice_servers",
            ServerFrame::IceServers {
                req: 17,
                servers: vec![
                    IceServer { urls: vec!["stun:stun.example.com:3478".into()], username: None, credential: None },
                    IceServer {
                        urls: vec![
                            "turn:turn.example.com:3478?transport=udp".into(),
                            "turns:turn.example.com:5349?transport=tcp".into(),
                        ],
                        username: Some("1700086400:acme/alice".into()),
                        credential: Some("WO0uCwAps3TeZPw85UvYp+Lz6Nk=".into()),
                    },
                ],
                expires_at: 1_700_086_400,
            },
        ),
        ("call_ok", ServerFrame::Call { req: 18, call: CALL.into(), event: CallEvent::Ok {} }),
        ("call_state_ringing", call_state(CallState::Ringing {})),
        ("call_state_connected", call_state(CallState::Connected {})),
        (
            "call_state_reconnecting",
            call_state(CallState::Reconnecting { caller_until: None, callee_until: Some(1_700_000_015_000) }),
        ),
        (
            "call_state_ended",
            call_state(CallState::Ended { reason: CallEndReason::Hangup, side: Some(CallSide::Callee) }),
        ),
        ("call_state_ended_plain", call_state(CallState::Ended { reason: CallEndReason::NoAnswer, side: None })),
        (
            "call_ring",
            ServerFrame::Call {
                req: 0,
                call: CALL.into(),
                event: CallEvent::Ring { caller: "alice".into(), media: CallMedia::Video },
            },
        ),
        (
            "call_answered_elsewhere",
            ServerFrame::Call { req: 0, call: CALL.into(), event: CallEvent::AnsweredElsewhere {} },
        ),
        (
            "call_signal",
            ServerFrame::Call {
                req: 0,
                call: CALL.into(),
                event: CallEvent::Signal {
                    data: r#"{"candidate":"candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host"}"#.into(),
                },
            },
        ),
        group_event(
            "call_group",
            CallEvent::Group {
                host: "alice".into(),
                media: CallMedia::Video,
                participants: vec![
                    GroupParticipant {
                        user: "alice".into(),
                        role: GroupRole::Host,
                        status: GroupStatus::Joined,
                        muted_audio: false,
                        muted_video: false,
                    },
                    GroupParticipant {
                        user: "bob".into(),
                        role: GroupRole::Member,
                        status: GroupStatus::Away,
                        muted_audio: true,
                        muted_video: false,
                    },
                ],
                ended: None,
            },
        ),
        group_event(
            "call_group_ended",
            CallEvent::Group {
                host: "alice".into(),
                media: CallMedia::Audio,
                participants: vec![GroupParticipant {
                    user: "alice".into(),
                    role: GroupRole::Host,
                    status: GroupStatus::Left,
                    muted_audio: false,
                    muted_video: false,
                }],
                ended: Some(GroupEndReason::EndedByHost),
            },
        ),
        group_event("call_invited", CallEvent::Invited { by: "alice".into(), media: CallMedia::Video }),
        group_event("call_invite_over", CallEvent::InviteOver { reason: InviteOverReason::Declined }),
        group_event("call_removed", CallEvent::Removed { by: "alice".into() }),
        group_event("call_muted", CallEvent::Muted { by: "alice".into(), kind: MuteKind::Video }),
        group_event(
            "call_quality_flag",
            CallEvent::QualityFlag { user: "bob".into(), flag: QualityFlag::HighLoss, raised: true, value: 0.25 },
        ),
        ("call_history", ServerFrame::CallHistory { req: 41, calls: vec![call_record()], next: None }),
        session_event("session_ok", 53, SessionEvent::Ok {}),
        session_event(
            "session_joined",
            51,
            SessionEvent::Joined {
                role: SessionRole::Editor,
                status: SessionStatus::Open,
                version: 7,
                snapshot: Some(SessionSnapshot { version: 7, doc: Payload::from(r#"{"cards":{}}"#) }),
                patches: vec![],
                members: vec![
                    SessionMember { user: "alice".into(), role: SessionRole::Owner, present: true },
                    SessionMember { user: "carol".into(), role: SessionRole::Viewer, present: false },
                ],
            },
        ),
        session_event(
            "session_joined_since",
            52,
            SessionEvent::Joined {
                role: SessionRole::Owner,
                status: SessionStatus::Closed,
                version: 8,
                snapshot: None,
                patches: vec![session_patch()],
                members: vec![SessionMember { user: "alice".into(), role: SessionRole::Owner, present: true }],
            },
        ),
        session_event("session_applied", 54, SessionEvent::Applied { version: 8, rebased: true }),
        session_event("session_conflict", 54, SessionEvent::Conflict { base: 5, version: 8, conflicting: vec![6, 8] }),
        session_event("session_patched", 0, SessionEvent::Patched { patch: session_patch() }),
        session_event(
            "session_member",
            0,
            SessionEvent::Member {
                member: SessionMember { user: "carol".into(), role: SessionRole::Viewer, present: true },
            },
        ),
        session_event("session_closed", 0, SessionEvent::Closed { by: "alice".into() }),
        session_event(
            "session_ended",
            0,
            SessionEvent::Ended { reason: SessionEnd::Destroyed, by: Some("alice".into()) },
        ),
        session_event("session_expired", 0, SessionEvent::Ended { reason: SessionEnd::Expired, by: None }),
        session_event(
            "session_cursor",
            0,
            SessionEvent::Cursor { user: "bob".into(), data: Some(Payload::from(r#"{"x":10,"y":20}"#)) },
        ),
        session_event("session_cursor_gone", 0, SessionEvent::Cursor { user: "bob".into(), data: None }),
        // A y-protocols sync step 2 holding an empty update.
        session_event("session_yjs", 59, SessionEvent::Yjs { message: Payload::from(vec![0, 1, 2, 0, 0]) }),
        (
            "subscribed",
            ServerFrame::Subscribed { req: 50, pattern: "orders.*.created".into(), position: None, recovered: true },
        ),
        (
            "subscribed_topic",
            ServerFrame::Subscribed {
                req: 51,
                pattern: "orders.eu.created".into(),
                position: Some(pos(7, 45)),
                recovered: true,
            },
        ),
        ("unsubscribed", ServerFrame::Unsubscribed { req: 52, pattern: "orders.*.created".into() }),
        (
            "event",
            ServerFrame::Event {
                topic: "orders.eu.created".into(),
                position: Some(pos(7, 43)),
                time: 1_767_225_600_000,
                id: "o-1".into(),
                tags: [("qty".to_string(), "12".to_string()), ("region".to_string(), "eu".to_string())].into(),
                data: Payload::from(r#"{"order":17}"#),
            },
        ),
        (
            "event_ephemeral",
            ServerFrame::Event {
                topic: "scores.match1".into(),
                position: None,
                time: 1_767_225_600_000,
                id: "s-9".into(),
                tags: BTreeMap::new(),
                data: Payload::from(vec![0u8, 255, 1]),
            },
        ),
        // Receipts (docs/receipts.md).
        ("receipts_ok", ServerFrame::Receipts { req: 61, event: ReceiptEvent::Ok {} }),
        (
            "receipts_unread",
            ServerFrame::Receipts {
                req: 60,
                event: ReceiptEvent::Unread {
                    full: true,
                    rooms: vec![RoomUnread {
                        room: "chat:team".into(),
                        read: pos(7, 40),
                        top: pos(7, 43),
                        unread: 3,
                        mentions: 1,
                    }],
                    total: 3,
                    mentions: 1,
                },
            },
        ),
        (
            "receipts_receipts",
            ServerFrame::Receipts {
                req: 0,
                event: ReceiptEvent::Receipts {
                    room: "chat:team".into(),
                    epoch: 7,
                    delivered_all: 43,
                    read_all: 42,
                    count: 4,
                    members: vec![
                        MemberReceipt { user: "carol".into(), delivered: 43, read: Some(43) },
                        MemberReceipt { user: "dave".into(), delivered: 43, read: None },
                    ],
                },
            },
        ),
        (
            "presence_batch",
            ServerFrame::PresenceBatch {
                room: "chat:lobby".into(),
                entries: vec![
                    presence_entry(),
                    PresenceEntry {
                        user: "bob".into(),
                        status: Status::Offline,
                        custom: None,
                        version: 1_700_000_000_400,
                        last_seen: 1_700_000_000_400,
                    },
                ],
            },
        ),
        // Notifications (docs/notifications.md).
        ("notifications_ok", ServerFrame::Notifications { req: 73, event: NotifyEvent::Ok {} }),
        (
            "notifications_page",
            ServerFrame::Notifications {
                req: 70,
                event: NotifyEvent::Page { notifications: vec![notification()], unread: 1, next: Some(12) },
            },
        ),
        (
            "notifications_new",
            ServerFrame::Notifications { req: 0, event: NotifyEvent::New { notification: notification(), unread: 2 } },
        ),
        (
            "notifications_read",
            ServerFrame::Notifications { req: 71, event: NotifyEvent::Read { id: 11, up_to: true, unread: 0 } },
        ),
        (
            "notifications_prefs",
            ServerFrame::Notifications { req: 0, event: NotifyEvent::Prefs { prefs: notify_prefs() } },
        ),
    ]
}

/// A history entry as docs/calls.md shows it, with a quality summary.
fn call_record() -> CallRecord {
    let aggregate = serde_json::json!({"last": 84.0, "mean": 95.25, "min": 61.0, "max": 410.0});
    serde_json::from_value(serde_json::json!({
        "id": CALL,
        "tenant": "acme",
        "kind": "one_to_one",
        "media": "video",
        "participants": [
            {"user": "alice", "role": "caller", "device": 17, "joined_ms": 1767225600000u64, "left_ms": 1767225690000u64},
            {"user": "bob", "role": "callee", "device": 42, "joined_ms": 1767225604000u64, "left_ms": 1767225690000u64}
        ],
        "started_ms": 1767225600000u64,
        "answered_ms": 1767225604000u64,
        "ended_ms": 1767225690000u64,
        "reason": "hangup",
        "by": "callee",
        "side": null,
        "duration_ms": 86000,
        "quality": {"participants": [{
            "user": "bob", "samples": 42, "refused": 1,
            "rtt_ms": aggregate, "loss": aggregate, "jitter_ms": aggregate,
            "send_kbps": aggregate, "recv_kbps": aggregate,
            "flags_raised": {"high_latency": 1}
        }]}
    }))
    .expect("a valid record")
}

/// A call id as the relay writes it: 16 lowercase hex digits.
const CALL: &str = "6f1c2a9be04d7731";

fn call_state(state: CallState) -> ServerFrame {
    let event = CallEvent::State { caller: "alice".into(), callee: "bob".into(), media: CallMedia::Video, state };
    ServerFrame::Call { req: 0, call: CALL.into(), event }
}

fn presence_entry() -> PresenceEntry {
    PresenceEntry {
        user: "alice".into(),
        status: Status::Away,
        custom: Some("lunch".into()),
        version: 1_700_000_000_321,
        last_seen: 0,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn vector<T: Serialize>(direction: &str, frame: &T) -> Vector {
    Vector {
        direction: direction.into(),
        json: String::from_utf8(Codec::Json.encode(frame).to_vec()).unwrap(),
        postcard_hex: hex(&Codec::Postcard.encode(frame)),
    }
}

/// The vectors pinned in the golden file.
fn golden() -> BTreeMap<String, Vector> {
    serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap()
}

fn current() -> BTreeMap<String, Vector> {
    let mut all = BTreeMap::new();
    for (name, frame) in client_frames() {
        all.insert(format!("client.{name}"), vector("client", &frame));
    }
    for (name, frame) in server_frames() {
        all.insert(format!("server.{name}"), vector("server", &frame));
    }
    all
}

#[test]
fn encoding_matches_golden_vectors() {
    let current = current();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&current).unwrap() + "\n").unwrap();
    }
    let golden = golden();
    assert_eq!(golden.keys().collect::<Vec<_>>(), current.keys().collect::<Vec<_>>(), "frame set changed");
    for (name, vector) in &golden {
        assert_eq!(&current[name], vector, "{name} encodes differently from the golden vector");
    }
}

#[test]
fn golden_vectors_decode_to_the_same_frames() {
    let golden = golden();
    for (name, frame) in client_frames() {
        let v = &golden[&format!("client.{name}")];
        assert_eq!(Codec::Json.decode::<ClientFrame>(v.json.as_bytes()).unwrap(), frame, "{name} json");
        assert_eq!(Codec::Postcard.decode::<ClientFrame>(&unhex(&v.postcard_hex)).unwrap(), frame, "{name} postcard");
    }
    for (name, frame) in server_frames() {
        let v = &golden[&format!("server.{name}")];
        assert_eq!(Codec::Json.decode::<ServerFrame>(v.json.as_bytes()).unwrap(), frame, "{name} json");
        assert_eq!(Codec::Postcard.decode::<ServerFrame>(&unhex(&v.postcard_hex)).unwrap(), frame, "{name} postcard");
    }
}

#[test]
fn hello_fixes_the_codec() {
    let golden = golden();
    let hello = &golden["client.hello"];
    assert_eq!(Codec::detect(hello.json.as_bytes()), Codec::Json);
    assert_eq!(Codec::detect(&unhex(&hello.postcard_hex)), Codec::Postcard);
}

#[test]
fn protocol_doc_lists_every_error_code() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    for code in ErrorCode::ALL {
        let row = format!("| {} | `{}` |", code.0, code.slug());
        assert!(doc.contains(&row), "docs/protocol.md lacks the row starting {row:?}");
    }
}
