//! The vocabulary of the 1:1 call state machine ([`super::machine::Call`]): ids, policy, states,
//! end reasons, the events and timers it returns, its errors and the summary for the history.
//! Plain values; the codes (`EndReason::code`, `CallError::code`) are the documented names in
//! docs/calls.md.

use std::fmt;

use crate::hub::presence::{DeviceId, UserKey};

/// Identifies a call. The relay mints it (unique across the nodes of a region); the machine only
/// carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl CallId {
    /// The wire form back: exactly 16 lowercase hex digits, as [`fmt::Display`] writes it.
    pub fn parse(text: &str) -> Option<CallId> {
        let valid = text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !valid {
            return None;
        }
        u64::from_str_radix(text, 16).ok().map(CallId)
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What the caller asked for. The machine does not treat them differently; clients do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    Audio,
    Video,
}

/// The two parties of a 1:1 call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Caller,
    Callee,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The callee declined while it rang.
    Rejected,
    /// The caller gave up before an answer.
    Cancelled,
    /// The callee was in another connected call (and `busy_when_in_call` is on).
    Busy,
    /// Nobody answered within the ring timeout. What the callee is told, and the call's reason
    /// in its [`CallSummary`].
    Missed,
    /// The same end as [`EndReason::Missed`], as the caller is told it.
    NoAnswer,
    /// A participant hung up a connected call.
    Hangup { by: Side },
    /// A side's device dropped and no device of that user rejoined within the grace period; or
    /// the caller's device dropped while it rang.
    ConnectionLost { side: Side },
}

impl EndReason {
    /// The documented name (docs/calls.md), for the protocol and the call history.
    pub fn code(&self) -> &'static str {
        match self {
            EndReason::Rejected => "rejected",
            EndReason::Cancelled => "cancelled",
            EndReason::Busy => "busy",
            EndReason::Missed => "missed",
            EndReason::NoAnswer => "no_answer",
            EndReason::Hangup { .. } => "hangup",
            EndReason::ConnectionLost { .. } => "connection_lost",
        }
    }
}

/// Timeouts and policy. The defaults are the documented ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallConfig {
    /// How long a call rings before it ends as missed.
    pub ring_timeout_ms: u64,
    /// How long a side whose device dropped has to rejoin before the call ends.
    pub reconnect_grace_ms: u64,
    /// Refuse a call at once (`busy`) when the callee is in another connected call.
    pub busy_when_in_call: bool,
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig { ring_timeout_ms: 30_000, reconnect_grace_ms: 15_000, busy_when_in_call: true }
    }
}

/// A call's state as both sides see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Offered to the callee; rings on every connected device of theirs.
    Ringing,
    /// Answered: these two devices talk.
    Connected {
        caller_device: DeviceId,
        callee_device: DeviceId,
    },
    /// Answered, and the device of one side (or both) dropped: the side comes back by `rejoin`
    /// before its deadline (relay clock, ms) or the call ends as `connection_lost`.
    Reconnecting {
        caller_until_ms: Option<u64>,
        callee_until_ms: Option<u64>,
    },
    Ended {
        reason: EndReason,
    },
}

/// Where an event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// Every connected device of the user (their personal channel).
    User(UserKey),
    /// One device of the user.
    Device { user: UserKey, device: DeviceId },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub to: Recipient,
    pub kind: EventKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// To both users, on every state change: the new state. The caller is told `NoAnswer` where
    /// the callee is told `Missed`.
    State(CallState),
    /// To one callee device: start ringing.
    Ring { caller: UserKey, media: Media },
    /// To each callee device that rang when another one answered: stop ringing.
    AnsweredElsewhere,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerKind {
    /// The ring timeout.
    Ring,
    /// A side's reconnect grace.
    Grace(Side),
}

/// Arm a timer that calls [`super::Call::on_timeout`] at `at_ms`. Timers are never cancelled: one that
/// fires after the call moved on does nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    pub kind: TimerKind,
    pub at_ms: u64,
}

/// What a successful input produced, in delivery order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    pub events: Vec<Event>,
    pub timers: Vec<Timer>,
}

/// A caller's request to start a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiate {
    pub caller: UserKey,
    /// The caller's device that places the call.
    pub caller_device: DeviceId,
    pub callee: UserKey,
    /// The callee's connected devices now (possibly none); each one rings.
    pub callee_devices: Vec<DeviceId>,
    pub media: Media,
    /// Whether the callee is in another connected call (the relay's registry knows).
    pub callee_in_call: bool,
}

/// Why an input was refused. A refused input changes nothing and emits nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    #[error("a user cannot call themselves")]
    SelfCall,
    #[error("caller and callee are in different tenants")]
    CrossTenant,
    #[error("not a participant of this call")]
    NotParticipant,
    #[error("only the caller can do this")]
    OnlyCaller,
    #[error("only the callee can do this")]
    OnlyCallee,
    #[error("device {0} is not ringing for this call")]
    NotRinging(DeviceId),
    #[error("the call was already answered")]
    AlreadyAnswered,
    #[error("this side is not reconnecting")]
    NotReconnecting,
    #[error("too late: the deadline passed and the call is ending")]
    TimedOut,
    #[error("the call has ended ({})", .0.code())]
    Ended(EndReason),
}

impl CallError {
    /// The documented error code (docs/calls.md).
    pub fn code(&self) -> &'static str {
        match self {
            CallError::SelfCall => "self_call",
            CallError::CrossTenant => "cross_tenant",
            CallError::NotParticipant => "not_participant",
            CallError::OnlyCaller => "only_caller",
            CallError::OnlyCallee => "only_callee",
            CallError::NotRinging(_) => "not_ringing",
            CallError::AlreadyAnswered => "already_answered",
            CallError::NotReconnecting => "not_reconnecting",
            CallError::TimedOut => "timed_out",
            CallError::Ended(_) => "call_ended",
        }
    }
}

/// A finished or ongoing call, for the call history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSummary {
    pub id: CallId,
    pub caller: UserKey,
    pub callee: UserKey,
    pub media: Media,
    /// The device that placed the call.
    pub caller_device: DeviceId,
    /// The device that answered.
    pub callee_device: Option<DeviceId>,
    pub started_ms: u64,
    pub answered_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// `None` while the call goes on.
    pub reason: Option<EndReason>,
    /// Talk time, answer to end: `Some(0)` for a call that ended unanswered, `None` while it
    /// goes on.
    pub duration_ms: Option<u64>,
}
