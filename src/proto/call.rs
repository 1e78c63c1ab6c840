//! The wire form of calls, 1:1 and group: what a `call` frame asks (`CallAction`) and what a relay's `call`
//! frame tells (`CallEvent`). One frame type per direction with a nested action or event keeps
//! the frame table short and lets calls grow (new actions and events are appended here, as
//! frames are in `frame.rs`); group calls use the same frame and ids, with their own actions
//! (`create_group`...) and events (`group`...) appended. The states, reasons and rules are the state machine's
//! (`crate::call`); `docs/calls.md` is the user's page and `docs/protocol.md` the layouts.

use serde::{Deserialize, Serialize};

/// What a client asks about a call, in a `call` frame. (Not `Eq`: `quality` carries floats.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallAction {
    /// Place a call to `callee` (a user id of the caller's tenant); answered with the new id.
    Initiate { callee: String, media: CallMedia },
    /// Take the call on this (ringing) device.
    Answer {},
    /// Decline a ringing call (callee).
    Reject {},
    /// Give up a ringing call (caller).
    Cancel {},
    /// Leave the call in any live state ("end call").
    HangUp {},
    /// Take the call back on this device after this side's device dropped.
    Rejoin {},
    /// WebRTC signaling (an SDP offer or answer, an ICE candidate): opaque text forwarded to
    /// the other side's device in the call, in order.
    Signal { data: String },
    /// Create a group call (docs/calls.md, "Group calls"): this device joins it as the host and
    /// `invite` ring; answered with the new id.
    CreateGroup { media: CallMedia, invite: Vec<String> },
    /// Invite more users to a group call (the host; all or none).
    Invite { users: Vec<String> },
    /// Join a group call on this device (answer an invitation, come back after leaving, or
    /// resume after this user's device dropped).
    Join {},
    /// Decline a group call's invitation (every device stops ringing).
    Decline {},
    /// Leave a group call (`hang_up` on a group call means the same).
    Leave {},
    /// The host removes a participant (who cannot join again unless invited again).
    Remove { user: String },
    /// The host mutes a participant's audio or video; the relay stops forwarding it.
    Mute { user: String, kind: MuteKind },
    /// Lift the host's mute on your own audio or video.
    Unmute { kind: MuteKind },
    /// The host hands the role over to a participant in the call.
    MakeHost { user: String },
    /// The host ends the group call for everyone.
    End {},
    /// A quality report from the device in a connected 1:1 call, or from a joined group call
    /// participant's device (docs/calls.md, "Quality"):
    /// what it measured since its previous report. Floats: postcard writes each as 8 bytes,
    /// little-endian IEEE 754; every value must be finite, not negative and within its bound.
    Quality { rtt_ms: f64, loss: f64, jitter_ms: f64, send_kbps: f64, recv_kbps: f64 },
}

/// A problem users notice in a call, raised or cleared by the participants' quality reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QualityFlag {
    HighLoss,
    HighLatency,
    LowBitrate,
}

/// Which medium a host mutes in a group call (`video` covers screen tracks too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MuteKind {
    Audio,
    Video,
}

/// A participant's role in a group call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupRole {
    Host,
    Member,
}

/// A participant's place in a group call (docs/calls.md, "Group calls").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    Invited,
    Joined,
    Away,
    Declined,
    Missed,
    Left,
    Removed,
}

/// One participant in a group call's roster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupParticipant {
    pub user: String,
    pub role: GroupRole,
    pub status: GroupStatus,
    /// Muted by the host (the relay does not forward it until the participant unmutes).
    pub muted_audio: bool,
    pub muted_video: bool,
}

/// Why a group call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupEndReason {
    AllLeft,
    EndedByHost,
}

/// Why a group call's invitation stopped ringing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InviteOverReason {
    Joined,
    Declined,
    Missed,
    Removed,
    Ended,
}

/// What the caller asked for; both sides' apps decide what to open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallMedia {
    Audio,
    Video,
}

/// One side of a 1:1 call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallSide {
    Caller,
    Callee,
}

/// Why a call ended (docs/calls.md, "Reasons").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEndReason {
    Rejected,
    Cancelled,
    Busy,
    Missed,
    NoAnswer,
    Hangup,
    ConnectionLost,
}

/// A call's state as one side is told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Ringing {},
    /// One device of each side is in the call (the one that answered or rejoined knows it is).
    Connected {},
    /// A side's device dropped: the side has until the deadline (unix ms, relay clock) to
    /// `rejoin`; `None` for a side that is present.
    Reconnecting {
        caller_until: Option<u64>,
        callee_until: Option<u64>,
    },
    /// Final. `side`: who hung up (`hangup`) or whose device was lost (`connection_lost`);
    /// `None` for the other reasons.
    Ended {
        reason: CallEndReason,
        side: Option<CallSide>,
    },
}

/// What the relay tells about a call, in a `call` frame. (Not `Eq`: `quality_flag` carries a
/// float.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEvent {
    /// The request `req` was done (for `initiate`: the frame's `call` is the new call's id).
    Ok {},
    /// The call's state changed (to every device of both users), or the current state of a
    /// live call for a device that connected.
    State { caller: String, callee: String, media: CallMedia, state: CallState },
    /// This device should ring.
    Ring { caller: String, media: CallMedia },
    /// Another device of this user answered: stop ringing.
    AnsweredElsewhere {},
    /// The other side's signaling, as it sent it.
    Signal { data: String },
    /// A group call's roster changed (to every active participant and to the one the change was
    /// about), or its current roster for a device that connected. `ended` is set once, finally.
    Group { host: String, media: CallMedia, participants: Vec<GroupParticipant>, ended: Option<GroupEndReason> },
    /// This device should ring: `by` invites you to a group call.
    Invited { by: String, media: CallMedia },
    /// Your invitation stopped ringing.
    InviteOver { reason: InviteOverReason },
    /// The host removed you from the group call.
    Removed { by: String },
    /// The host muted your audio or video: the relay does not forward it until you `unmute`.
    Muted { by: String, kind: MuteKind },
    /// A participant's quality flag was raised or cleared (to both users of a 1:1 call):
    /// `value` is the mean of their latest reports that crossed the threshold (loss fraction,
    /// RTT ms or kbit/s).
    QualityFlag { user: String, flag: QualityFlag, raised: bool, value: f64 },
}
