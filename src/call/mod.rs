//! Calls: the signaling layer around the media (issue 17). The 1:1 call state machine,
//! [`machine::Call`] (its vocabulary in [`types`]), decides who rings, who answered, who hung
//! up, what each side is told and which timers run; it does no IO. [`service::CallService`] is
//! the relay's side of it: the calls of this node by id, who is in which call, the timers, and
//! the translation between `call` frames (`crate::proto::call`) and the machine, with delivery
//! behind the [`service::CallRoute`] seam. In a Redis region, [`region`] carries calls across
//! nodes: a call stays on the node where it was placed, and the others forward to it.
//!
//! Group calls have their own machine, [`group::GroupCall`] (membership, host, cap), and
//! service, [`group_service::GroupService`], which shares the route, the timer loop and the
//! history writer and authorises each call's media room (`call:<id>`).
//!
//! Why a pure object: the call flow is all races (an answer crossing a cancel, two devices
//! answering at once, a device dropping while the other side hangs up) and timeouts (ring,
//! reconnect grace). With `now_ms` passed in and events returned, every race is a test with two
//! calls in either order and every timeout a test with a number, no sockets and no sleeping, as
//! quinn's protocol logic is tested without IO and as the media forwarder is here
//! ([`crate::media::forwarder`]). Inputs are applied one at a time in the order the relay
//! receives them; the first one wins and the later one is refused with a [`types::CallError`].
//!
//! # The state machine
//!
//! States: `ringing`, `connected`, `reconnecting`, `ended(reason)`.
//!
//! - `initiate` by a caller device: `ringing`, every connected callee device gets `ring`, the
//!   ring timer is armed. If the callee is in another connected call and `busy_when_in_call` is
//!   on (the default), the call goes straight to `ended(busy)` instead.
//! - While `ringing`: a callee device that connects starts ringing, one that disconnects stops
//!   (nothing changes otherwise).
//!   - `answer` on a ringing callee device → `connected` with that device; the other ringing
//!     devices get `answered_elsewhere`.
//!   - `reject` by the callee (or the callee's `hang_up`) → `ended(rejected)`.
//!   - `cancel` by the caller (or the caller's `hang_up`) → `ended(cancelled)`.
//!   - the ring timeout (default 30 s) → `ended(missed)`; the caller is told `no_answer`.
//!   - the caller's device disconnects → `ended(connection_lost)`.
//! - While `connected`: `hang_up` by either side → `ended(hangup, by)`. The device in the call
//!   of either side disconnecting → `reconnecting` for that side, with a grace period (default
//!   15 s).
//! - While `reconnecting`: `rejoin` by any device of the away user → `connected` with that
//!   device (or still `reconnecting` if the other side is away too); `hang_up` by either side →
//!   `ended(hangup, by)`; the grace period passing → `ended(connection_lost)` for everyone.
//! - `ended` is final: every input is refused with `call_ended`.
//!
//! Every state change is a `state` event to both users (all their connected devices). Refused
//! inputs (`answer` after `cancel`, a second `answer`, anything by a non-participant, anything
//! after the end) return an error and emit nothing. `docs/calls.md` is the same for app
//! developers.

pub mod group;
pub mod group_service;
pub mod history;
pub mod machine;
pub mod quality;
pub mod region;
pub mod service;
mod timer;
pub mod types;

pub use group_service::{GroupActionError, GroupService};
pub use machine::Call;
pub use service::{ActionError, CallRoute, CallService, LocalRoute, Requester};
pub use types::{
    CallConfig, CallError, CallId, CallState, CallSummary, EndReason, Event, EventKind, Initiate, Media, Output,
    Recipient, Side, Timer, TimerKind,
};

#[cfg(test)]
mod group_tests;
#[cfg(test)]
mod tests;
