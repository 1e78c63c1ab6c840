//! The wire form of 1:1 calls: what a `call` frame asks (`CallAction`) and what a relay's `call`
//! frame tells (`CallEvent`). One frame type per direction with a nested action or event keeps
//! the frame table short and lets calls grow (new actions and events are appended here, as
//! frames are in `frame.rs`). The states, reasons and rules are the state machine's
//! (`crate::call`); `docs/calls.md` is the user's page and `docs/protocol.md` the layouts.

use serde::{Deserialize, Serialize};

/// What a client asks about a call, in a `call` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// What the relay tells about a call, in a `call` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}
