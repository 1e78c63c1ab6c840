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
//! # The route and the region
//!
//! Where events go on this node and which devices a user has connected here is behind
//! [`CallRoute`]: [`LocalRoute`] knows this node's connections (a connection is a device) and
//! queues frames in their outboxes.
//!
//! With a shared engine (Redis) the node is one of a region ([`CallService::with_region`]),
//! and [`super::region`] says how calls cross nodes: a call lives on its owner (where
//! `initiate` arrived); the owner's events also go to the other nodes, which deliver them to
//! their devices; an action on a call held elsewhere is sent to its owner, applied there the
//! same way as a local one ([`CallService::on_region`]), and answered back; devices that
//! connect, disconnect, or are there when a call starts are announced to the owner. Device ids
//! carry the node in their high bits ([`super::region::device_id`]), so they are region-unique;
//! on a single node they are the connection ids.
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
use super::quality::{CallQuality, Flag, FlagChange, QualityConfig, QualityError, Report};
use super::region::{self, ACT_TIMEOUT_MS, CallInfo, Message, REFRESH_MS, RegionTable};
use super::types::{
    CallConfig, CallError, CallId, CallState, EndReason, Event, EventKind, Initiate, Media, Output, Recipient, Side,
};
use crate::auth::Identity;
use crate::config::CallsConfig;
use crate::hub::presence::{DeviceId, UserKey};
use crate::outbox::{CONTROL, LaneId, Outbox};
use crate::proto::codec::EncodeOnce;
use crate::proto::{self, CallAction, CallEvent, ErrorCode, ServerFrame};

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
        let mut encoded = EncodeOnce::new(frame);
        for (device, outbox) in devices.get(user).into_iter().flatten() {
            if only.is_some_and(|only| only != *device) {
                continue;
            }
            // A closing outbox (the device is leaving) needs nothing more.
            let _ = outbox.push(CONTROL, encoded.get(outbox.codec()));
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
    #[error("quality report refused: {0}")]
    Quality(#[from] QualityError),
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
            ActionError::Quality(err) => quality_code(err),
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

/// Where the `ok` of an action goes: the requesting connection here, or the node that sent the
/// action (its device's request `token` there).
enum Answer<'a> {
    Local(&'a Requester<'a>),
    Remote { node: &'a str, token: u64 },
}

/// An action sent to the node holding its call, waiting for the answer.
struct PendingAct {
    outbox: Arc<Outbox>,
    lane: LaneId,
    req: u64,
    call: String,
    until_ms: u64,
}

/// This node in a region: its name and the calls channel.
struct Region {
    node: String,
    out: mpsc::UnboundedSender<String>,
}

struct Entry {
    call: Call,
    /// When the call was placed, for the setup time.
    placed: Instant,
    /// The participants' quality reports and flags.
    quality: CallQuality,
}

impl Entry {
    /// The call's history record, with its quality summary.
    fn record(&self) -> CallRecord {
        CallRecord { quality: self.quality.summary(), ..CallRecord::one_to_one(&self.call.summary()) }
    }
}

#[derive(Default)]
struct Registry {
    calls: HashMap<CallId, Entry>,
    /// Each user's calls that have not ended, either side.
    live: HashMap<UserKey, Vec<CallId>>,
    /// Deadlines to look at: ring timeouts, grace periods, and the purge of ended calls.
    deadlines: BTreeSet<(u64, CallId)>,
    /// Other nodes' calls (in a region).
    region: RegionTable,
    /// Actions sent to other nodes, by token.
    pending: HashMap<u64, PendingAct>,
    next_token: u64,
    next_refresh_ms: u64,
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
    quality: QualityConfig,
    route: Arc<dyn CallRoute>,
    /// Where each change's record goes, in order, for the call history (one writer task:
    /// [`write_history`]).
    history: Option<mpsc::UnboundedSender<CallRecord>>,
    registry: Mutex<Registry>,
    /// Wakes the timer task when a deadline is added.
    wake: Notify,
    /// The tag in this node's device ids (0 on a single node).
    node_tag: u64,
    region: Option<Region>,
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
            quality: config.quality,
            route,
            history: None,
            registry: Mutex::new(Registry::default()),
            wake: Notify::new(),
            node_tag: 0,
            region: None,
        }
    }

    /// Makes this node `node` of a region whose calls channel is `out` (the engine's
    /// [`crate::engine::CallLink`]); what comes in goes to [`CallService::run_region`].
    pub fn with_region(mut self, node: String, out: mpsc::UnboundedSender<String>) -> CallService {
        self.node_tag = region::node_tag(&node);
        self.region = Some(Region { node, out });
        self
    }

    /// The region-unique device id of this node's connection `conn`.
    fn device(&self, conn: u64) -> DeviceId {
        region::device_id(self.node_tag, conn)
    }

    /// Sends a message to the other nodes of the region, if any.
    fn publish(&self, message: &Message) {
        let Some(region) = &self.region else { return };
        match serde_json::to_string(message) {
            // The engine's sender is gone only at shutdown.
            Ok(text) => drop(region.out.send(text)),
            Err(err) => tracing::warn!(%err, "unencodable call message"),
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
    pub fn connect(&self, user: &UserKey, conn: u64, outbox: Arc<Outbox>, now_ms: u64) {
        let device = self.device(conn);
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
        for (call, owner) in reg.region.live_calls_of(user) {
            self.publish(&Message::DeviceUp { to: owner, call, user: user.into(), device, sync: true });
        }
    }

    /// The device disconnected: it stops ringing; a caller's device that placed a ringing call
    /// ends it; a device in an answered call starts its side's grace period.
    pub fn disconnect(&self, user: &UserKey, conn: u64, now_ms: u64) {
        let device = self.device(conn);
        let mut reg = self.registry();
        self.route.detach(user, device);
        for id in reg.live.get(user).cloned().unwrap_or_default() {
            let Some(entry) = reg.calls.get_mut(&id) else { continue };
            if let Ok(out) = entry.call.device_disconnected(user, device, now_ms) {
                self.apply(&mut reg, id, out, now_ms);
            }
        }
        for (call, owner) in reg.region.live_calls_of(user) {
            self.publish(&Message::DeviceDown { to: owner, call, user: user.into(), device });
        }
    }

    /// Applies one `call` request; `who.device` is the connection's id here. On success the
    /// `ok` answer is queued first, then the events. An action on a call another node holds is
    /// sent there, and answered when its answer comes back.
    pub fn act(&self, who: Requester<'_>, call: &str, action: CallAction, now_ms: u64) -> Result<(), ActionError> {
        let who = Requester { device: self.device(who.device), ..who };
        if let CallAction::Initiate { callee, media } = action {
            return self.initiate(who, call, callee, media, now_ms);
        }
        let mut reg = self.registry();
        if let Some(owner) = self.held_elsewhere(&reg, call) {
            self.check_signal(&action)?;
            let token = reg.next_token;
            reg.next_token += 1;
            let until_ms = now_ms.saturating_add(ACT_TIMEOUT_MS);
            let (outbox, lane, req, call) = (who.outbox.clone(), who.lane, who.req, call.to_owned());
            reg.pending.insert(token, PendingAct { outbox, lane, req, call: call.clone(), until_ms });
            let (user, device) = (who.user.into(), who.device);
            self.publish(&Message::Act { to: owner, token, user, device, call, action });
            return Ok(());
        }
        let step = self.step_of(call, action)?;
        self.step(&mut reg, who.user, who.device, call, step, &Answer::Local(&who), now_ms)
    }

    /// The node holding `call`, if it is another node's.
    fn held_elsewhere(&self, reg: &Registry, call: &str) -> Option<String> {
        self.region.as_ref()?;
        let id = CallId::parse(call)?;
        if reg.calls.contains_key(&id) {
            return None;
        }
        reg.region.owner(id).map(str::to_owned)
    }

    fn check_signal(&self, action: &CallAction) -> Result<(), ActionError> {
        match action {
            CallAction::Signal { data } if data.len() > self.max_signal_bytes as usize => {
                Err(ActionError::SignalTooLarge { len: data.len(), max: self.max_signal_bytes })
            }
            _ => Ok(()),
        }
    }

    fn step_of(&self, call: &str, action: CallAction) -> Result<Step, ActionError> {
        self.check_signal(&action)?;
        if let Some(report) = report_of(&action) {
            return Ok(Step::Quality(report));
        }
        Ok(match action {
            // Only ever applied where it arrives.
            CallAction::Initiate { .. } => return Err(ActionError::IdOnInitiate),
            CallAction::Signal { data } => Step::Signal(data),
            CallAction::Answer {} => Step::Answer,
            CallAction::Reject {} => Step::Reject,
            CallAction::Cancel {} => Step::Cancel,
            CallAction::HangUp {} => Step::HangUp,
            CallAction::Rejoin {} => Step::Rejoin,
            // Group actions go to the group service (the session routes them there).
            _ => return Err(ActionError::UnknownCall(call.to_owned())),
        })
    }

    /// Applies an action of `device` of `user` on a call held here; `answer` gets the `ok`.
    #[allow(clippy::too_many_arguments)]
    fn step(
        &self,
        reg: &mut Registry,
        user: &UserKey,
        device: DeviceId,
        call: &str,
        step: Step,
        answer: &Answer<'_>,
        now_ms: u64,
    ) -> Result<(), ActionError> {
        let (id, entry) = lookup(reg, call)?;
        let out = match step {
            Step::Signal(data) => {
                // Forwarded to the other side's device in the call.
                let to = signal_target(&entry.call, user, device)?;
                self.ok(answer, id);
                let frame = ServerFrame::Call { req: 0, call: id.to_string(), event: CallEvent::Signal { data } };
                self.send(&entry.call, &to, &frame);
                return Ok(());
            }
            Step::Quality(report) => {
                // From the device in the call only, as signaling.
                signal_target(&entry.call, user, device)?;
                let changes = take_report(&mut entry.quality, &user.user, &report, now_ms)?;
                self.ok(answer, id);
                for change in &changes {
                    self.announce(&entry.call, change);
                }
                // A flag change is worth keeping at once; the rest waits for the call's next change.
                if let Some(history) = &self.history
                    && !changes.is_empty()
                {
                    let _ = history.send(entry.record());
                }
                return Ok(());
            }
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
        self.ok(answer, id);
        self.apply(reg, id, out, now_ms);
        Ok(())
    }

    /// Tells both users of the call that a participant's quality flag changed.
    fn announce(&self, call: &Call, change: &FlagChange) {
        let frame = ServerFrame::Call { req: 0, call: call.id().to_string(), event: flag_event(change) };
        for user in [call.caller(), call.callee()] {
            self.send(call, &Recipient::User(user.clone()), &frame);
        }
    }

    fn ok(&self, answer: &Answer<'_>, id: CallId) {
        match answer {
            Answer::Local(who) => who.ok(id),
            Answer::Remote { node, token } => {
                self.publish(&Message::Reply { to: (*node).to_owned(), token: *token, error: None })
            }
        }
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
            callee_in_call: reg.in_answered_call(&callee) || reg.region.in_answered_call(&callee),
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
        let quality = CallQuality::new(self.quality, call.media());
        reg.calls.insert(id, Entry { call, placed, quality });
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
            let _ = history.send(entry.record());
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
        self.send(call, &event.to, &ServerFrame::Call { req: 0, call: call.id().to_string(), event: kind });
    }

    /// Queues a frame of `call` for its local devices, and sends it to the other nodes of the
    /// region unless it is for one device here.
    fn send(&self, call: &Call, to: &Recipient, frame: &ServerFrame) {
        self.route.deliver(to, frame);
        if self.region.is_none() {
            return;
        }
        let (user, device) = match to {
            Recipient::User(user) => (user, None),
            Recipient::Device { device, .. } if region::is_local(self.node_tag, *device) => return,
            Recipient::Device { user, device } => (user, Some(*device)),
        };
        let call = Some(call_info(call));
        self.publish(&Message::Deliver { user: user.into(), device, frame: frame.clone(), call });
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

    /// Applies a message from node `from` of the region (see [`super::region`]). A message that
    /// does not parse is logged and dropped.
    pub fn on_region(&self, from: &str, text: &str, now_ms: u64) {
        let Some(region) = &self.region else { return };
        let message: Message = match serde_json::from_str(text) {
            Ok(message) => message,
            Err(err) => return tracing::warn!(%err, from, "undecodable call message"),
        };
        if message.to().is_some_and(|to| to != region.node) {
            return;
        }
        let mut reg = self.registry();
        match message {
            Message::Deliver { user, device, frame, call } => {
                let mut ring = None;
                if let Some(info) = call {
                    let live = !info.ended;
                    if reg.region.learn(from, info.clone(), now_ms, ENDED_LINGER_MS) && live {
                        ring = Some(info);
                    }
                }
                let to = match device {
                    Some(device) => Recipient::Device { user: user.key(), device },
                    None => Recipient::User(user.key()),
                };
                self.route.deliver(&to, &frame);
                // A call new here: its owner learns of the callee's devices here (they ring).
                if let Some(info) = ring {
                    let callee = UserKey::new(&info.tenant, &info.callee);
                    for device in self.route.devices(&callee) {
                        let (to, call, user) = (from.to_owned(), info.id.clone(), (&callee).into());
                        self.publish(&Message::DeviceUp { to, call, user, device, sync: false });
                    }
                }
            }
            Message::Act { token, user, device, call, action, .. } => {
                let answer = Answer::Remote { node: from, token };
                let result = self
                    .step_of(&call, action)
                    .and_then(|step| self.step(&mut reg, &user.key(), device, &call, step, &answer, now_ms));
                if let Err(err) = result {
                    let error = Some((err.code().0, err.to_string()));
                    self.publish(&Message::Reply { to: from.to_owned(), token, error });
                }
            }
            Message::Reply { token, error, .. } => {
                if let Some(pending) = reg.pending.remove(&token) {
                    answer_pending(pending, error);
                }
            }
            Message::DeviceUp { call, user, device, sync, .. } => {
                let user = user.key();
                let Ok((id, entry)) = lookup(&mut reg, &call) else { return };
                if sync && let Some(side) = entry.call.side_of(&user) {
                    let to = Recipient::Device { user: user.clone(), device };
                    self.deliver(&entry.call, &Event { to, kind: EventKind::State(entry.call.state_for(side)) });
                }
                if let Ok(out) = entry.call.device_connected(&user, device, now_ms) {
                    self.apply(&mut reg, id, out, now_ms);
                }
            }
            Message::DeviceDown { call, user, device, .. } => {
                let Ok((id, entry)) = lookup(&mut reg, &call) else { return };
                if let Ok(out) = entry.call.device_disconnected(&user.key(), device, now_ms) {
                    self.apply(&mut reg, id, out, now_ms);
                }
            }
            Message::Refresh { calls } => {
                for info in calls {
                    reg.region.learn(from, info, now_ms, ENDED_LINGER_MS);
                }
            }
        }
    }

    /// The region's periodic work: this node's live calls to the others every
    /// [`REFRESH_MS`]; other nodes' calls that lapsed end for the devices here
    /// (`connection_lost`, no side); actions unanswered after [`ACT_TIMEOUT_MS`] are answered
    /// `store_unavailable`.
    pub fn region_tick(&self, now_ms: u64) {
        if self.region.is_none() {
            return;
        }
        let mut reg = self.registry();
        if now_ms >= reg.next_refresh_ms {
            reg.next_refresh_ms = now_ms.saturating_add(REFRESH_MS);
            let calls: Vec<CallInfo> =
                reg.calls.values().filter(|e| !e.call.is_ended()).map(|e| call_info(&e.call)).collect();
            if !calls.is_empty() {
                self.publish(&Message::Refresh { calls });
            }
        }
        for lapsed in reg.region.expire(now_ms) {
            tracing::warn!(call = %lapsed.info.id, owner = %lapsed.owner, "a call's node went silent; ending it here");
            let state = proto::CallState::Ended { reason: proto::CallEndReason::ConnectionLost, side: None };
            let event = CallEvent::State {
                caller: lapsed.info.caller.clone(),
                callee: lapsed.info.callee.clone(),
                media: lapsed.info.media,
                state,
            };
            let frame = ServerFrame::Call { req: 0, call: lapsed.info.id.clone(), event };
            for user in [lapsed.caller, lapsed.callee] {
                self.route.deliver(&Recipient::User(user), &frame);
            }
        }
        let due: Vec<u64> = reg.pending.iter().filter(|(_, p)| p.until_ms <= now_ms).map(|(token, _)| *token).collect();
        for token in due {
            if let Some(pending) = reg.pending.remove(&token) {
                let message = "no answer from the relay holding the call; try again".to_owned();
                answer_pending(pending, Some((ErrorCode::STORE_UNAVAILABLE.0, message)));
            }
        }
    }

    /// Runs the region side until `stop`: applies the other nodes' messages in their order and
    /// [`CallService::region_tick`] every second. `clock` is unix ms.
    pub async fn run_region(
        self: Arc<Self>,
        mut inbound: mpsc::UnboundedReceiver<(String, String)>,
        clock: fn() -> u64,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => self.region_tick(clock()),
                message = inbound.recv() => match message {
                    Some((from, text)) => self.on_region(&from, &text, clock()),
                    None => return,
                },
            }
        }
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

/// Answers an action another node applied (or did not answer in time) on its connection.
fn answer_pending(pending: PendingAct, error: Option<(u16, String)>) {
    let frame = match error {
        None => ServerFrame::Call { req: pending.req, call: pending.call, event: CallEvent::Ok {} },
        Some((code, message)) => {
            let code = ErrorCode(code);
            metrics::counter!(crate::metrics::ERRORS_TOTAL, "code" => code.slug()).increment(1);
            ServerFrame::error(pending.req, code, message)
        }
    };
    // A closing outbox (the device left) needs nothing more.
    let _ = pending.outbox.reply(pending.lane, &frame);
}

/// What the other nodes of a region learn of a call with each of its frames.
fn call_info(call: &Call) -> CallInfo {
    CallInfo {
        id: call.id().to_string(),
        tenant: call.caller().tenant.to_string(),
        caller: call.caller().user.to_string(),
        callee: call.callee().user.to_string(),
        media: wire_media(call.media()),
        answered: call.is_answered(),
        ended: call.is_ended(),
    }
}

/// The actions on an existing call.
enum Step {
    Signal(String),
    Answer,
    Reject,
    Cancel,
    HangUp,
    Rejoin,
    Quality(Report),
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

/// Takes a participant's quality report into the call's aggregator and counts it (accepted or
/// why not, and the RTT) in the metrics; returns the flag changes to announce. Both call
/// services take reports through here.
pub(super) fn take_report(
    quality: &mut CallQuality,
    user: &str,
    report: &Report,
    now_ms: u64,
) -> Result<Vec<FlagChange>, QualityError> {
    let changes = quality.report(user, report, now_ms).inspect_err(|err| {
        metrics::counter!(crate::metrics::CALL_QUALITY_REPORTS_TOTAL, "result" => err.code()).increment(1);
    })?;
    metrics::counter!(crate::metrics::CALL_QUALITY_REPORTS_TOTAL, "result" => "accepted").increment(1);
    metrics::histogram!(crate::metrics::CALL_QUALITY_RTT_SECONDS).record(report.rtt_ms / 1000.0);
    Ok(changes)
}

/// The `quality_flag` event of a flag change; a raise is counted in the metrics.
pub(super) fn flag_event(change: &FlagChange) -> CallEvent {
    if change.raised {
        metrics::counter!(crate::metrics::CALL_QUALITY_FLAGS_TOTAL, "flag" => change.flag.code()).increment(1);
    }
    CallEvent::QualityFlag {
        user: change.user.clone(),
        flag: wire_flag(change.flag),
        raised: change.raised,
        value: change.value,
    }
}

/// The report a `quality` action carries.
pub(super) fn report_of(action: &CallAction) -> Option<Report> {
    match *action {
        CallAction::Quality { rtt_ms, loss, jitter_ms, send_kbps, recv_kbps } => {
            Some(Report { rtt_ms, loss, jitter_ms, send_kbps, recv_kbps })
        }
        _ => None,
    }
}

/// The protocol code of a refused quality report (1:1 and group calls).
pub(super) fn quality_code(err: &QualityError) -> ErrorCode {
    match err {
        QualityError::BadReport { .. } => ErrorCode::BAD_REPORT,
        QualityError::TooFrequent { .. } => ErrorCode::REPORT_TOO_FREQUENT,
        // Calls have at most history::MAX_PARTICIPANTS participants.
        QualityError::TooManyParticipants => ErrorCode::BAD_REQUEST,
    }
}

fn wire_flag(flag: Flag) -> proto::QualityFlag {
    match flag {
        Flag::HighLoss => proto::QualityFlag::HighLoss,
        Flag::HighLatency => proto::QualityFlag::HighLatency,
        Flag::LowBitrate => proto::QualityFlag::LowBitrate,
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
pub(crate) mod tests {
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

    /// A device's user, identity (its token may call anyone) and outbox, in tenant `acme`.
    pub(crate) fn device_parts(user: &str) -> (UserKey, Identity, Arc<Outbox>) {
        let identity = Identity {
            user: user.into(),
            tenant: "acme".into(),
            caps: Caps { call: vec!["*".into()], ..Caps::default() },
            expires_at: u64::MAX,
            token_id: None,
            issued_at: None,
        };
        (UserKey::new("acme", user), identity, Outbox::new(Codec::Json, 1 << 20))
    }

    impl Device {
        fn new(service: &CallService, user: &str, id: DeviceId) -> Device {
            let (user, identity, outbox) = device_parts(user);
            let device = Device { user, identity, id, outbox };
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

    /// Two nodes of a region, their calls channels as in-memory queues.
    struct Region2 {
        a: CallService,
        b: CallService,
        to_b: mpsc::UnboundedReceiver<String>,
        to_a: mpsc::UnboundedReceiver<String>,
    }

    impl Region2 {
        fn new() -> Region2 {
            let config = CallsConfig { ring_timeout_ms: 1_000, ..CallsConfig::default() };
            let (a_out, to_b) = mpsc::unbounded_channel();
            let (b_out, to_a) = mpsc::unbounded_channel();
            let a = CallService::local(&config).with_region("a".into(), a_out);
            let b = CallService::local(&config).with_region("b".into(), b_out);
            Region2 { a, b, to_b, to_a }
        }

        /// Carries every queued message until both queues are empty.
        fn pump(&mut self, now_ms: u64) {
            loop {
                let mut moved = false;
                while let Ok(text) = self.to_b.try_recv() {
                    self.b.on_region("a", &text, now_ms);
                    moved = true;
                }
                while let Ok(text) = self.to_a.try_recv() {
                    self.a.on_region("b", &text, now_ms);
                    moved = true;
                }
                if !moved {
                    return;
                }
            }
        }

        /// Loses everything queued (pub/sub is at most once).
        fn lose(&mut self) {
            while self.to_b.try_recv().is_ok() || self.to_a.try_recv().is_ok() {}
        }
    }

    /// Every frame queued for `device`, decoded.
    fn all_frames(device: &Device) -> Vec<ServerFrame> {
        let Take::Frames(frames) = device.outbox.take(CONTROL, usize::MAX) else { return Vec::new() };
        frames.iter().filter_map(|f| Codec::Json.decode::<ServerFrame>(&f.body()).ok()).collect()
    }

    fn has_ring(frames: &[(u64, String, CallEvent)]) -> bool {
        frames.iter().any(|(_, _, e)| matches!(e, CallEvent::Ring { .. }))
    }

    #[test]
    fn answers_racing_on_two_nodes_the_first_to_reach_the_owner_wins() {
        let mut r = Region2::new();
        let alice = Device::new(&r.a, "alice", 1);
        let bob_a = Device::new(&r.a, "bob", 2);
        let bob_b = Device::new(&r.b, "bob", 2);
        let id = initiate(&r.a, &alice);
        r.pump(T0);
        assert!(has_ring(&bob_a.frames()) && has_ring(&bob_b.frames()), "rings on both nodes");
        // B's answer is on its way when A's is applied.
        bob_b.act(&r.b, &id, CallAction::Answer {}, T0 + 10).unwrap();
        bob_a.act(&r.a, &id, CallAction::Answer {}, T0 + 11).unwrap();
        r.pump(T0 + 12);
        assert_eq!(bob_a.frames()[0], (7, id.clone(), CallEvent::Ok {}));
        let frames = all_frames(&bob_b);
        assert!(
            frames
                .iter()
                .any(|f| matches!(f, ServerFrame::Error { req: 7, code, .. } if *code == ErrorCode::ALREADY_ANSWERED)),
            "{frames:?}"
        );
        assert!(frames.contains(&ServerFrame::Call {
            req: 0,
            call: id.clone(),
            event: CallEvent::AnsweredElsewhere {}
        }));
        assert_eq!(r.b.active(), 0, "the call is held by A only");
    }

    #[test]
    fn an_action_whose_answer_is_lost_is_refused_after_the_timeout() {
        let mut r = Region2::new();
        let alice = Device::new(&r.a, "alice", 1);
        let bob = Device::new(&r.b, "bob", 1);
        let id = initiate(&r.a, &alice);
        r.pump(T0);
        bob.frames();
        bob.act(&r.b, &id, CallAction::Answer {}, T0 + 10).unwrap();
        r.lose();
        r.b.region_tick(T0 + 10 + ACT_TIMEOUT_MS - 1);
        assert_eq!(all_frames(&bob), vec![], "still waiting");
        r.b.region_tick(T0 + 10 + ACT_TIMEOUT_MS);
        let frames = all_frames(&bob);
        assert!(
            matches!(&frames[..], [ServerFrame::Error { req: 7, code, .. }] if *code == ErrorCode::STORE_UNAVAILABLE),
            "{frames:?}"
        );
    }

    #[test]
    fn a_silent_owners_calls_end_on_the_other_nodes_and_refreshes_keep_them() {
        let mut r = Region2::new();
        let alice = Device::new(&r.a, "alice", 1);
        let bob = Device::new(&r.b, "bob", 1);
        let id = initiate(&r.a, &alice);
        r.pump(T0);
        bob.act(&r.b, &id, CallAction::Answer {}, T0 + 10).unwrap();
        r.pump(T0 + 10);
        bob.frames();
        // A refreshes its live calls: B keeps the call past the first lapse.
        r.a.region_tick(T0 + 100);
        r.pump(T0 + 100);
        r.b.region_tick(T0 + 10 + region::LAPSE_MS);
        assert_eq!(bob.frames(), vec![]);
        // Then A goes silent: the call ends for Bob's devices on B.
        r.b.region_tick(T0 + 100 + region::LAPSE_MS);
        let lost = proto::CallState::Ended { reason: proto::CallEndReason::ConnectionLost, side: None };
        assert!(
            matches!(&bob.frames()[..], [(0, call, CallEvent::State { state, .. })] if *call == id && *state == lost)
        );
        // Unknown there now: a late action gets `not_participant`, as for a purged call.
        let late = bob.act(&r.b, &id, CallAction::HangUp {}, T0 + 200 + region::LAPSE_MS).unwrap_err();
        assert_eq!(late.code(), ErrorCode::NOT_PARTICIPANT);
    }

    #[test]
    fn a_device_connecting_on_another_node_is_told_the_state_and_its_drop_reaches_the_owner() {
        let mut r = Region2::new();
        let alice = Device::new(&r.a, "alice", 1);
        let bob = Device::new(&r.a, "bob", 2);
        let id = initiate(&r.a, &alice);
        bob.act(&r.a, &id, CallAction::Answer {}, T0 + 10).unwrap();
        r.pump(T0 + 10);
        alice.frames();
        // Alice's second device, on B, rejoins after her first one dropped.
        r.a.disconnect(&alice.user, 1, T0 + 20);
        r.pump(T0 + 20);
        let alice_b = Device::new(&r.b, "alice", 1);
        r.pump(T0 + 20);
        let synced = alice_b.frames();
        assert!(
            matches!(synced[..], [(0, _, CallEvent::State { state: proto::CallState::Reconnecting { .. }, .. })]),
            "{synced:?}"
        );
        alice_b.act(&r.b, &id, CallAction::Rejoin {}, T0 + 30).unwrap();
        r.pump(T0 + 30);
        let frames = alice_b.frames();
        assert_eq!(frames[0], (7, id.clone(), CallEvent::Ok {}));
        assert!(matches!(frames[1], (0, _, CallEvent::State { state: proto::CallState::Connected {}, .. })));
        // Its drop on B starts Alice's grace on A.
        r.b.disconnect(&alice_b.user, 1, T0 + 40);
        r.pump(T0 + 40);
        assert!(matches!(
            r.a.registry().calls[&CallId::parse(&id).unwrap()].call.state(),
            CallState::Reconnecting { caller_until_ms: Some(_), callee_until_ms: None }
        ));
    }
}
