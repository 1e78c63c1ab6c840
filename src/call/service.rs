//! The relay's 1:1 call service: the IO side of [`super::Call`]. It keeps this node's calls by
//! id, which users are in which call (for `busy`), the timers, and turns `call` frames and
//! device connects and disconnects into machine inputs and the machine's events into `call`
//! frames.
//!
//! Why one lock: a call's inputs come from several connections (two callee devices answering,
//! a hang-up crossing an answer). Applying each input and queueing its events under one mutex
//! makes "first one wins" and "events in the order of the inputs" hold by construction; queueing
//! never blocks (outboxes are byte-capped queues), and calls are few next to messages.
//!
//! # The route seam
//!
//! Where events go and which devices a user has connected is behind [`CallRoute`]. Today
//! [`LocalRoute`] knows this node's connections (a connection is a device; its id is the
//! connection's relay-unique id) and queues frames in their outboxes. A cross-node route (Redis)
//! implements the same four methods: `attach`/`detach` also announce the device to the region,
//! `devices` lists the user's devices on every node, and `deliver` sends to other nodes what is
//! not local. The service then stays as it is, with one more input path: the actions of a
//! device on another node for a call held here, fed to [`CallService::act`] the same way.
//! Device ids will need the node in them then (they are connection ids today).
//!
//! Time: every input takes `now_ms` (unix ms); the timer task is handed its clock, so nothing
//! here reads one.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::history::{CallHistory, CallRecord};
use super::machine::Call;
use super::types::{
    CallConfig, CallError, CallId, CallState, EndReason, Event, EventKind, Initiate, Media, Output, Recipient, Side,
};
use crate::auth::Identity;
use crate::config::CallsConfig;
use crate::hub::presence::{DeviceId, UserKey};
use crate::outbox::{CONTROL, LaneId, Outbox};
use crate::proto::{self, CallAction, CallEvent, ErrorCode, ServerFrame, WireFrame};

/// How long an ended call is kept, so late actions on it get `call_ended` rather than
/// `not_participant`.
pub const ENDED_LINGER_MS: u64 = 60_000;

/// Where call events go, and which devices a user has connected. See the module docs.
pub trait CallRoute: Send + Sync {
    /// A device of `user` connected; frames for it go to `outbox`.
    fn attach(&self, user: &UserKey, device: DeviceId, outbox: Arc<Outbox>);
    /// The device disconnected.
    fn detach(&self, user: &UserKey, device: DeviceId);
    /// The user's connected devices, oldest first.
    fn devices(&self, user: &UserKey) -> Vec<DeviceId>;
    /// Queues `frame` for every device of a user, or for one device. Never blocks; a device
    /// that is gone or closing is skipped.
    fn deliver(&self, to: &Recipient, frame: &ServerFrame);
}

/// A user's connected devices on this node, oldest first, with their outboxes.
type Devices = Vec<(DeviceId, Arc<Outbox>)>;

/// This node's devices, by user.
#[derive(Default)]
pub struct LocalRoute {
    devices: Mutex<HashMap<UserKey, Devices>>,
}

impl CallRoute for LocalRoute {
    fn attach(&self, user: &UserKey, device: DeviceId, outbox: Arc<Outbox>) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.entry(user.clone()).or_default().push((device, outbox));
    }

    fn detach(&self, user: &UserKey, device: DeviceId) {
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = devices.get_mut(user) {
            list.retain(|(d, _)| *d != device);
            if list.is_empty() {
                devices.remove(user);
            }
        }
    }

    fn devices(&self, user: &UserKey) -> Vec<DeviceId> {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        devices.get(user).map(|list| list.iter().map(|(d, _)| *d).collect()).unwrap_or_default()
    }

    fn deliver(&self, to: &Recipient, frame: &ServerFrame) {
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let (user, only) = match to {
            Recipient::User(user) => (user, None),
            Recipient::Device { user, device } => (user, Some(*device)),
        };
        // Encoded once per codec, shared by the user's devices.
        let mut encoded: [Option<WireFrame>; 2] = [None, None];
        for (device, outbox) in devices.get(user).into_iter().flatten() {
            if only.is_some_and(|only| only != *device) {
                continue;
            }
            let codec = outbox.codec();
            let wire = encoded[codec.index()].get_or_insert_with(|| codec.frame(frame)).clone();
            // A closing outbox (the device is leaving) needs nothing more.
            let _ = outbox.push(CONTROL, wire);
        }
    }
}

/// Why a `call` request was refused. Nothing changed and nobody else was told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("no call {0} of yours")]
    UnknownCall(String),
    #[error("initiate takes an empty call id")]
    IdOnInitiate,
    #[error("callee must be a user id of 1-256 bytes without control characters")]
    BadCallee,
    #[error("the token does not allow calling {0:?} (caps.call)")]
    NotAllowed(String),
    #[error("signal of {len} bytes exceeds calls.max_signal_bytes ({max})")]
    SignalTooLarge { len: usize, max: u32 },
    #[error("the call is not connected on this device")]
    NotConnected,
}

impl ActionError {
    /// The protocol error code (docs/protocol.md).
    pub fn code(&self) -> ErrorCode {
        match self {
            ActionError::Call(err) => match err {
                CallError::SelfCall => ErrorCode::SELF_CALL,
                CallError::CrossTenant => ErrorCode::CROSS_TENANT,
                CallError::NotParticipant => ErrorCode::NOT_PARTICIPANT,
                CallError::OnlyCaller => ErrorCode::ONLY_CALLER,
                CallError::OnlyCallee => ErrorCode::ONLY_CALLEE,
                CallError::NotRinging(_) => ErrorCode::NOT_RINGING,
                CallError::AlreadyAnswered => ErrorCode::ALREADY_ANSWERED,
                CallError::NotReconnecting => ErrorCode::NOT_RECONNECTING,
                CallError::TimedOut => ErrorCode::TIMED_OUT,
                CallError::Ended(_) => ErrorCode::CALL_ENDED,
            },
            ActionError::UnknownCall(_) => ErrorCode::NOT_PARTICIPANT,
            ActionError::IdOnInitiate | ActionError::BadCallee => ErrorCode::BAD_REQUEST,
            ActionError::NotAllowed(_) => ErrorCode::PERMISSION_DENIED,
            ActionError::SignalTooLarge { .. } => ErrorCode::PAYLOAD_TOO_LARGE,
            ActionError::NotConnected => ErrorCode::NOT_CONNECTED,
        }
    }
}

/// Who sends a `call` request, and where its answer goes.
pub struct Requester<'a> {
    pub identity: &'a Identity,
    pub user: &'a UserKey,
    pub device: DeviceId,
    pub outbox: &'a Arc<Outbox>,
    pub lane: LaneId,
    pub req: u64,
}

impl Requester<'_> {
    /// The `ok` answer, queued before the events the action causes.
    pub(super) fn ok(&self, call: CallId) {
        let frame = ServerFrame::Call { req: self.req, call: call.to_string(), event: CallEvent::Ok {} };
        let _ = self.outbox.reply(self.lane, &frame);
    }
}

struct Entry {
    call: Call,
    /// When the call was placed, for the setup time.
    placed: Instant,
}

#[derive(Default)]
struct Registry {
    calls: HashMap<CallId, Entry>,
    /// Each user's calls that have not ended, either side.
    live: HashMap<UserKey, Vec<CallId>>,
    /// Deadlines to look at: ring timeouts, grace periods, and the purge of ended calls.
    deadlines: BTreeSet<(u64, CallId)>,
}

impl Registry {
    fn in_answered_call(&self, user: &UserKey) -> bool {
        self.live.get(user).into_iter().flatten().any(|id| self.calls.get(id).is_some_and(|e| e.call.is_answered()))
    }

    fn unlink(&mut self, user: &UserKey, id: CallId) {
        unlink(&mut self.live, user, id);
    }
}

/// Takes call `id` off `user`'s list of live calls (the group service keeps the same lists).
pub(super) fn unlink(live: &mut HashMap<UserKey, Vec<CallId>>, user: &UserKey, id: CallId) {
    if let Some(ids) = live.get_mut(user) {
        ids.retain(|i| *i != id);
        if ids.is_empty() {
            live.remove(user);
        }
    }
}

/// The 1:1 calls of this node. See the module docs.
pub struct CallService {
    machine: CallConfig,
    max_signal_bytes: u32,
    route: Arc<dyn CallRoute>,
    /// Where each change's record goes, in order, for the call history (one writer task:
    /// [`write_history`]).
    history: Option<mpsc::UnboundedSender<CallRecord>>,
    registry: Mutex<Registry>,
    /// Wakes the timer task when a deadline is added.
    wake: Notify,
}

impl CallService {
    pub fn new(config: &CallsConfig, route: Arc<dyn CallRoute>) -> CallService {
        CallService {
            machine: CallConfig {
                ring_timeout_ms: config.ring_timeout_ms,
                reconnect_grace_ms: config.reconnect_grace_ms,
                busy_when_in_call: config.busy_when_in_call,
            },
            max_signal_bytes: config.max_signal_bytes,
            route,
            history: None,
            registry: Mutex::new(Registry::default()),
            wake: Notify::new(),
        }
    }

    /// With this node's devices only.
    pub fn local(config: &CallsConfig) -> CallService {
        CallService::new(config, Arc::new(LocalRoute::default()))
    }

    /// Records every call, at its start, each change and its end, through `to` (see
    /// [`write_history`]).
    pub fn with_history(mut self, to: mpsc::UnboundedSender<CallRecord>) -> CallService {
        self.history = Some(to);
        self
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A device of `user` connected (after `welcome`): it is told the state of the user's live
    /// calls, and starts ringing for those that ring.
    pub fn connect(&self, user: &UserKey, device: DeviceId, outbox: Arc<Outbox>, now_ms: u64) {
        let mut reg = self.registry();
        self.route.attach(user, device, outbox);
        for id in reg.live.get(user).cloned().unwrap_or_default() {
            let Some(entry) = reg.calls.get_mut(&id) else { continue };
            let Some(side) = entry.call.side_of(user) else { continue };
            let state = Event {
                to: Recipient::Device { user: user.clone(), device },
                kind: EventKind::State(entry.call.state_for(side)),
            };
            self.deliver(&entry.call, &state);
            if let Ok(out) = entry.call.device_connected(user, device, now_ms) {
                self.apply(&mut reg, id, out, now_ms);
            }
        }
    }

    /// The device disconnected: it stops ringing; a caller's device that placed a ringing call
    /// ends it; a device in an answered call starts its side's grace period.
    pub fn disconnect(&self, user: &UserKey, device: DeviceId, now_ms: u64) {
        let mut reg = self.registry();
        self.route.detach(user, device);
        for id in reg.live.get(user).cloned().unwrap_or_default() {
            let Some(entry) = reg.calls.get_mut(&id) else { continue };
            if let Ok(out) = entry.call.device_disconnected(user, device, now_ms) {
                self.apply(&mut reg, id, out, now_ms);
            }
        }
    }

    /// Applies one `call` request. On success the `ok` answer is queued first, then the events.
    pub fn act(&self, who: Requester<'_>, call: &str, action: CallAction, now_ms: u64) -> Result<(), ActionError> {
        let step = match action {
            CallAction::Initiate { callee, media } => return self.initiate(who, call, callee, media, now_ms),
            CallAction::Signal { data } => return self.signal(who, call, data),
            CallAction::Answer {} => Step::Answer,
            CallAction::Reject {} => Step::Reject,
            CallAction::Cancel {} => Step::Cancel,
            CallAction::HangUp {} => Step::HangUp,
            CallAction::Rejoin {} => Step::Rejoin,
            // Group actions go to the group service (the session routes them there).
            _ => return Err(ActionError::UnknownCall(call.to_owned())),
        };
        let mut reg = self.registry();
        let (id, entry) = lookup(&mut reg, call)?;
        let (user, device) = (who.user, who.device);
        let out = match step {
            Step::Answer => {
                let out = entry.call.answer(user, device, now_ms)?;
                record_setup("connect", entry.placed);
                out
            }
            Step::Reject => entry.call.reject(user, now_ms)?,
            Step::Cancel => entry.call.cancel(user, now_ms)?,
            Step::HangUp => entry.call.hang_up(user, now_ms)?,
            Step::Rejoin => entry.call.rejoin(user, device, now_ms)?,
        };
        who.ok(id);
        self.apply(&mut reg, id, out, now_ms);
        Ok(())
    }

    /// Forwards signaling to the other side's device in the call.
    fn signal(&self, who: Requester<'_>, call: &str, data: String) -> Result<(), ActionError> {
        if data.len() > self.max_signal_bytes as usize {
            return Err(ActionError::SignalTooLarge { len: data.len(), max: self.max_signal_bytes });
        }
        let mut reg = self.registry();
        let (id, entry) = lookup(&mut reg, call)?;
        let to = signal_target(&entry.call, who.user, who.device)?;
        who.ok(id);
        self.route.deliver(&to, &ServerFrame::Call { req: 0, call: id.to_string(), event: CallEvent::Signal { data } });
        Ok(())
    }

    fn initiate(
        &self,
        who: Requester<'_>,
        call: &str,
        callee: String,
        media: proto::CallMedia,
        now_ms: u64,
    ) -> Result<(), ActionError> {
        if !call.is_empty() {
            return Err(ActionError::IdOnInitiate);
        }
        if !crate::auth::valid_sub(&callee) {
            return Err(ActionError::BadCallee);
        }
        if !who.identity.can_call(&callee) {
            return Err(ActionError::NotAllowed(callee));
        }
        // The callee is always of the caller's tenant: calls never cross tenants.
        let callee = UserKey { tenant: who.user.tenant.clone(), user: callee.as_str().into() };
        let placed = Instant::now();
        let mut reg = self.registry();
        let request = Initiate {
            caller: who.user.clone(),
            caller_device: who.device,
            callee_devices: self.route.devices(&callee),
            callee_in_call: reg.in_answered_call(&callee),
            callee,
            media: match media {
                proto::CallMedia::Audio => Media::Audio,
                proto::CallMedia::Video => Media::Video,
            },
        };
        let mut id = CallId(rand::random());
        while reg.calls.contains_key(&id) {
            id = CallId(rand::random());
        }
        let (call, out) = Call::initiate(id, request, self.machine, now_ms)?;
        metrics::counter!(crate::metrics::CALLS_STARTED_TOTAL).increment(1);
        metrics::gauge!(crate::metrics::CALLS_ACTIVE).increment(1.0);
        for user in [call.caller().clone(), call.callee().clone()] {
            reg.live.entry(user).or_default().push(id);
        }
        reg.calls.insert(id, Entry { call, placed });
        who.ok(id);
        self.apply(&mut reg, id, out, now_ms);
        record_setup("ring", placed);
        Ok(())
    }

    /// Delivers an input's events and arms its timers; an ended call leaves the users' live
    /// lists and is purged after [`ENDED_LINGER_MS`].
    fn apply(&self, reg: &mut Registry, id: CallId, out: Output, now_ms: u64) {
        let Some(entry) = reg.calls.get(&id) else { return };
        for event in &out.events {
            self.deliver(&entry.call, event);
        }
        if let Some(history) = &self.history
            && !out.events.is_empty()
        {
            // The writer is gone only at shutdown.
            let _ = history.send(CallRecord::one_to_one(&entry.call.summary()));
        }
        let mut deadlines: Vec<u64> = out.timers.iter().map(|t| t.at_ms).collect();
        if entry.call.is_ended() {
            // Only a successful input of a live call gets here, so this runs once per call.
            let summary = entry.call.summary();
            let (caller, callee) = (summary.caller.clone(), summary.callee.clone());
            if let Some(reason) = summary.reason {
                metrics::counter!(crate::metrics::CALLS_ENDED_TOTAL, "reason" => reason.code()).increment(1);
                metrics::gauge!(crate::metrics::CALLS_ACTIVE).decrement(1.0);
                tracing::debug!(call = %id, reason = reason.code(), duration_ms = ?summary.duration_ms, "call ended");
            }
            reg.unlink(&caller, id);
            reg.unlink(&callee, id);
            deadlines.push(now_ms.saturating_add(ENDED_LINGER_MS));
        }
        if !deadlines.is_empty() {
            reg.deadlines.extend(deadlines.into_iter().map(|at| (at, id)));
            self.wake.notify_one();
        }
    }

    /// Turns a machine event into a `call` frame and queues it.
    fn deliver(&self, call: &Call, event: &Event) {
        let kind = match &event.kind {
            EventKind::State(state) => CallEvent::State {
                caller: call.caller().user.to_string(),
                callee: call.callee().user.to_string(),
                media: wire_media(call.media()),
                state: wire_state(*state),
            },
            EventKind::Ring { caller, media } => {
                CallEvent::Ring { caller: caller.user.to_string(), media: wire_media(*media) }
            }
            EventKind::AnsweredElsewhere => CallEvent::AnsweredElsewhere {},
        };
        self.route.deliver(&event.to, &ServerFrame::Call { req: 0, call: call.id().to_string(), event: kind });
    }

    /// Applies the deadlines that passed by `now_ms`; returns the next one.
    pub fn fire(&self, now_ms: u64) -> Option<u64> {
        let mut reg = self.registry();
        loop {
            let id = match super::timer::next_due(&mut reg.deadlines, now_ms) {
                Ok(id) => id,
                Err(next) => return next,
            };
            let Some(entry) = reg.calls.get_mut(&id) else { continue };
            if entry.call.is_ended() {
                if entry.call.summary().ended_ms.is_some_and(|end| super::timer::lingered(end, now_ms)) {
                    reg.calls.remove(&id);
                }
                continue;
            }
            let out = entry.call.on_timeout(now_ms);
            self.apply(&mut reg, id, out, now_ms);
        }
    }

    /// Runs the timers until `stop`: sleeps until the next deadline (or a new earlier one) and
    /// applies what is due. `clock` is unix ms.
    pub async fn run_timers(self: Arc<Self>, clock: fn() -> u64, stop: CancellationToken) {
        super::timer::run(&self.wake, |now_ms| self.fire(now_ms), clock, stop).await
    }

    /// Calls held here that have not ended.
    pub fn active(&self) -> usize {
        self.registry().calls.values().filter(|e| !e.call.is_ended()).count()
    }
}

/// Writes the call service's records to the history in the order they were made (a call's later
/// record replaces its earlier one, so order matters), until `stop`; then what is already queued.
/// A write that fails is logged and dropped: the next change of the call writes it whole again.
pub async fn write_history(
    history: Arc<dyn CallHistory>,
    mut records: mpsc::UnboundedReceiver<CallRecord>,
    clock: fn() -> u64,
    stop: CancellationToken,
) {
    loop {
        let record = tokio::select! {
            _ = stop.cancelled() => break,
            record = records.recv() => match record {
                Some(record) => record,
                None => return,
            },
        };
        write_record(&*history, record, clock()).await;
    }
    while let Ok(record) = records.try_recv() {
        write_record(&*history, record, clock()).await;
    }
}

async fn write_record(history: &dyn CallHistory, record: CallRecord, now_ms: u64) {
    let id = record.id;
    if let Err(err) = history.record(record, now_ms).await {
        tracing::warn!(call = %id, %err, "call history: record not written");
    }
}

/// The state-changing actions on an existing call.
enum Step {
    Answer,
    Reject,
    Cancel,
    HangUp,
    Rejoin,
}

/// The call a request names, if it is held here.
fn lookup<'r>(reg: &'r mut Registry, call: &str) -> Result<(CallId, &'r mut Entry), ActionError> {
    let unknown = || ActionError::UnknownCall(call.to_owned());
    let id = CallId::parse(call).ok_or_else(unknown)?;
    Ok((id, reg.calls.get_mut(&id).ok_or_else(unknown)?))
}

/// Where a `signal` from `device` of `user` goes: the other side's device in the call, if the
/// call is connected on `device`.
fn signal_target(call: &Call, user: &UserKey, device: DeviceId) -> Result<Recipient, ActionError> {
    let side = call.side_of(user).ok_or(CallError::NotParticipant)?;
    let state = call.state();
    if let CallState::Ended { reason } = state {
        return Err(CallError::Ended(reason).into());
    }
    let CallState::Connected { caller_device, callee_device } = state else { return Err(ActionError::NotConnected) };
    let (mine, theirs) = match side {
        Side::Caller => (caller_device, callee_device),
        Side::Callee => (callee_device, caller_device),
    };
    if mine != device {
        return Err(ActionError::NotConnected);
    }
    let other = match side {
        Side::Caller => call.callee(),
        Side::Callee => call.caller(),
    };
    Ok(Recipient::Device { user: other.clone(), device: theirs })
}

fn record_setup(step: &'static str, since: Instant) {
    metrics::histogram!(crate::metrics::CALL_SETUP_SECONDS, "step" => step).record(since.elapsed().as_secs_f64());
}

pub(super) fn wire_media(media: Media) -> proto::CallMedia {
    match media {
        Media::Audio => proto::CallMedia::Audio,
        Media::Video => proto::CallMedia::Video,
    }
}

fn wire_side(side: Side) -> proto::CallSide {
    match side {
        Side::Caller => proto::CallSide::Caller,
        Side::Callee => proto::CallSide::Callee,
    }
}

/// The machine's state as the wire carries it (device ids stay in the relay).
fn wire_state(state: CallState) -> proto::CallState {
    use proto::CallEndReason as R;
    match state {
        CallState::Ringing => proto::CallState::Ringing {},
        CallState::Connected { .. } => proto::CallState::Connected {},
        CallState::Reconnecting { caller_until_ms, callee_until_ms } => {
            proto::CallState::Reconnecting { caller_until: caller_until_ms, callee_until: callee_until_ms }
        }
        CallState::Ended { reason } => {
            let (reason, side) = match reason {
                EndReason::Rejected => (R::Rejected, None),
                EndReason::Cancelled => (R::Cancelled, None),
                EndReason::Busy => (R::Busy, None),
                EndReason::Missed => (R::Missed, None),
                EndReason::NoAnswer => (R::NoAnswer, None),
                EndReason::Hangup { by } => (R::Hangup, Some(wire_side(by))),
                EndReason::ConnectionLost { side } => (R::ConnectionLost, Some(wire_side(side))),
            };
            proto::CallState::Ended { reason, side }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Caps;
    use crate::outbox::Take;
    use crate::proto::{CallMedia, Codec};

    const T0: u64 = 1_000_000;

    struct Device {
        user: UserKey,
        identity: Identity,
        id: DeviceId,
        outbox: Arc<Outbox>,
    }

    impl Device {
        fn new(service: &CallService, user: &str, id: DeviceId) -> Device {
            let identity = Identity {
                user: user.into(),
                tenant: "acme".into(),
                caps: Caps { call: vec!["*".into()], ..Caps::default() },
                expires_at: u64::MAX,
                token_id: None,
                issued_at: None,
            };
            let device =
                Device { user: UserKey::new("acme", user), identity, id, outbox: Outbox::new(Codec::Json, 1 << 20) };
            service.connect(&device.user, id, device.outbox.clone(), T0);
            device
        }

        fn act(&self, service: &CallService, call: &str, action: CallAction, now_ms: u64) -> Result<(), ActionError> {
            let who = Requester {
                identity: &self.identity,
                user: &self.user,
                device: self.id,
                outbox: &self.outbox,
                lane: CONTROL,
                req: 7,
            };
            service.act(who, call, action, now_ms)
        }

        /// The `call` frames queued so far: (req, call, event).
        fn frames(&self) -> Vec<(u64, String, CallEvent)> {
            let Take::Frames(frames) = self.outbox.take(CONTROL, usize::MAX) else { return Vec::new() };
            frames
                .iter()
                .filter_map(|f| match Codec::Json.decode::<ServerFrame>(&f.body()) {
                    Ok(ServerFrame::Call { req, call, event }) => Some((req, call, event)),
                    _ => None,
                })
                .collect()
        }
    }

    fn service() -> CallService {
        CallService::local(&CallsConfig { ring_timeout_ms: 1_000, ..CallsConfig::default() })
    }

    fn initiate(service: &CallService, caller: &Device) -> String {
        let action = CallAction::Initiate { callee: "bob".into(), media: CallMedia::Audio };
        caller.act(service, "", action, T0).unwrap();
        caller.frames()[0].1.clone()
    }

    #[test]
    fn the_answer_comes_before_the_events_it_causes() {
        let service = service();
        let (alice, bob) = (Device::new(&service, "alice", 1), Device::new(&service, "bob", 2));
        let id = initiate(&service, &alice);
        bob.frames();
        bob.act(&service, &id, CallAction::Answer {}, T0 + 10).unwrap();
        let frames = bob.frames();
        assert_eq!(frames[0], (7, id.clone(), CallEvent::Ok {}));
        assert!(matches!(frames[1], (0, _, CallEvent::State { state: proto::CallState::Connected {}, .. })));
    }

    #[test]
    fn an_ended_call_answers_call_ended_until_it_is_purged() {
        let service = service();
        let (alice, bob) = (Device::new(&service, "alice", 1), Device::new(&service, "bob", 2));
        let id = initiate(&service, &alice);
        assert_eq!(service.active(), 1);
        assert_eq!(service.fire(T0 + 999), Some(T0 + 1_000), "the ring deadline is next");
        service.fire(T0 + 1_000);
        assert_eq!(service.active(), 0);
        let late = bob.act(&service, &id, CallAction::Answer {}, T0 + 1_001).unwrap_err();
        assert_eq!(late.code(), ErrorCode::CALL_ENDED);
        // Purged after the linger: the id is unknown now; nothing else is left.
        assert_eq!(service.fire(T0 + 1_000 + ENDED_LINGER_MS), None);
        let gone = bob.act(&service, &id, CallAction::Answer {}, T0 + 1_000 + ENDED_LINGER_MS).unwrap_err();
        assert_eq!(gone.code(), ErrorCode::NOT_PARTICIPANT);
        assert!(service.registry().calls.is_empty() && service.registry().live.is_empty());
    }

    #[test]
    fn call_ids_round_trip_and_refuse_other_text() {
        let id = CallId(0x6f1c_2a9b_e04d_7731);
        assert_eq!(CallId::parse(&id.to_string()), Some(id));
        for bad in ["", "6F1C2A9BE04D7731", "6f1c2a9be04d773", "6f1c2a9be04d77311", "+f1c2a9be04d7731"] {
            assert_eq!(CallId::parse(bad), None, "{bad:?}");
        }
    }
}
