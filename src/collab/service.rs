//! The relay's side of sessions: the loaded sessions by `(tenant, id)`, the devices joined to
//! each, the ordered writer that makes changes durable before anyone hears of them, the cursor
//! tick and expiry.
//!
//! Why everything goes through one ordered queue ([`Work`]): an acked patch must be durable, and
//! every device must see patches in version order with no gap and no duplicate. A session's
//! input is applied to its machine under the session's lock and its consequences (stores,
//! answers, events) are queued in that order; the writer commits a batch of queued work in one
//! transaction, then delivers the batch's answers and events in queue order. A device that joins
//! at version V is answered through the same queue and skips `patched` events up to V, so what it
//! got in `joined` and what follows join without a gap or a duplicate.
//!
//! Sessions are loaded from the store on first use (synchronously: a snapshot and at most
//! `snapshot_every_patches` patches) and unloaded when nobody is joined and nothing is queued.
//!
//! In a Redis region ([`CollabService::with_region`]) a session is loaded on the node holding its
//! lease, and the other nodes' devices reach it through messages (`super::region`): actions wait
//! in arrival order while the session's owner is found ([`Region::pending`]), then are applied
//! here or forwarded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cursors::Cursors;
use super::machine::{CollabSession, Limits, PatchOutcome, SessionError, SessionKind, YOutcome};
use super::redis_store::RedisSessions;
use super::region::{self, Message};
use super::store::{Op, SessionStore};
use super::yjs::{self, YAwareness, YMessage};
use crate::auth::Identity;
use crate::config::SessionsConfig;
use crate::engine::SessionLink;
use crate::hub::RoomKey;
use crate::hub::presence::DeviceId;
use crate::outbox::{CONTROL, CloseReason, DatagramKey, Outbox, PushError, Reply, Wakes};
use crate::proto::codec::{EncodeOnce, WireFrame};
use crate::proto::{
    ErrorCode, Payload, RoomName, ServerFrame, SessionAction, SessionEnd, SessionEvent, SessionPatch, SessionRole,
};

/// Datagram queue key kind of a session cursor (one key per session and user).
pub const KIND_SESSION_CURSOR: u8 = 5;

/// How often sessions nobody is joined to are unloaded (they load again from the store).
const UNLOAD_EVERY_MS: u64 = 10_000;

/// Most queued work items committed in one transaction.
const MAX_BATCH: usize = 256;

use crate::lock::lock;

/// A joined device: where its frames go, and the version its `joined` answer brought it to.
struct Joined {
    outbox: Arc<Outbox>,
    since: u64,
}

struct LiveState {
    /// `None` once the session ended (destroyed or expired) and its deletion is queued.
    machine: Option<CollabSession>,
    devices: HashMap<DeviceId, Joined>,
    cursors: Cursors,
    /// The awareness states of a `yjs` session's devices.
    awareness: YAwareness,
}

/// A loaded session.
struct Live {
    key: RoomKey,
    state: Mutex<LiveState>,
    /// Work queued and not yet delivered: the session stays loaded while there is some.
    queued: AtomicUsize,
    /// A commit of its work failed: what is queued after it fails too, and the next use
    /// reloads the session from the store.
    poisoned: AtomicBool,
}

/// What to deliver once a work item's writes are committed.
enum Out {
    /// A request's answer (`STORE_UNAVAILABLE` instead if the commit failed).
    Answer(Reply, SessionEvent),
    /// To every joined device that does not have this version yet.
    Patched(SessionPatch),
    /// To every joined device.
    Event(SessionEvent),
    /// To every joined device but this one (the one that joined: its answer has it).
    Others(DeviceId, SessionEvent),
    /// To this device only (the relay's sync step 1 after its step 2).
    To(DeviceId, SessionEvent),
    /// A Yjs update to every joined device but its sender's; one that cannot take it is closed as
    /// a slow consumer (it syncs again when it reconnects), as for `Patched`.
    Relayed(DeviceId, SessionEvent),
    /// The session ended: tell every joined device, then forget them.
    Ended(SessionEvent),
}

struct Work {
    live: Arc<Live>,
    ops: Vec<Op>,
    outs: Vec<Out>,
}

/// Who asks: the device (connection), its user's identity, where to answer.
pub struct Requester<'a> {
    pub identity: &'a Identity,
    pub device: DeviceId,
    pub outbox: &'a Arc<Outbox>,
    pub reply: Reply,
}

/// A request as the service applies it: who (the role bound already taken from the token, on
/// the device's node), and where to answer. A device of another node has a stand-in outbox.
struct Who {
    tenant: String,
    user: String,
    bound: SessionRole,
    device: DeviceId,
    outbox: Arc<Outbox>,
    reply: Reply,
}

/// An action waiting for its session's owner to be found.
struct Queued {
    who: Who,
    action: SessionAction,
    now_ms: u64,
    /// The node it was forwarded from (a device of that node), or `None` for this node's.
    from: Option<String>,
}

/// A session held by another node that this node's devices use.
struct Remote {
    owner: String,
    /// Devices whose frames for the session come from the owner: where they go, and whether the
    /// device is a member (it sent `join` or `create` and no `leave` since). Members are closed
    /// with `session_moved` when the owner goes.
    devices: HashMap<DeviceId, (Arc<Outbox>, bool)>,
}

impl Remote {
    /// Closes the member devices with `code`.
    fn close_members(&self, code: ErrorCode) {
        for (outbox, _) in self.devices.values().filter(|(_, member)| *member) {
            outbox.close(CloseReason::Error(code));
        }
    }
}

/// A stand-in, on the owner, for another node's device.
struct Proxy {
    outbox: Arc<Outbox>,
    node: String,
    /// The device's id on its node.
    device: DeviceId,
}

/// The service's side of a Redis region (`super::region`).
struct Region {
    node: String,
    out: mpsc::UnboundedSender<(String, Vec<u8>)>,
    store: RedisSessions,
    /// Actions in arrival order per session whose owner is being found. Taken before
    /// `sessions` and a session's state, and held while an action is routed, so actions of a
    /// session are routed in arrival order.
    pending: Mutex<HashMap<RoomKey, Vec<Queued>>>,
    remote: Mutex<HashMap<RoomKey, Remote>>,
    /// Stand-ins of other nodes' devices, by session and region-unique device id.
    proxies: Mutex<HashMap<(RoomKey, DeviceId), Proxy>>,
    inbound: Mutex<Option<Inbound>>,
    tasks: TaskTracker,
    stop: CancellationToken,
    /// A lease check is running.
    checking: AtomicBool,
}

/// Other nodes' messages for this node: `(sending node, message)`.
type Inbound = mpsc::UnboundedReceiver<(String, Vec<u8>)>;

/// Byte cap of a stand-in outbox (what it holds is sent on at once).
const PROXY_CAP: usize = 16 << 20;

pub struct CollabService {
    limits: Limits,
    config: SessionsConfig,
    store: Arc<SessionStore>,
    sessions: Mutex<HashMap<RoomKey, Arc<Live>>>,
    work: mpsc::UnboundedSender<Work>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Work>>>,
    region: Option<Region>,
}

impl CollabService {
    pub fn new(config: &SessionsConfig, store: Arc<SessionStore>) -> CollabService {
        let (work, inbox) = mpsc::unbounded_channel();
        CollabService {
            limits: Limits::from(config),
            config: config.clone(),
            store,
            sessions: Mutex::new(HashMap::new()),
            work,
            inbox: Mutex::new(Some(inbox)),
            region: None,
        }
    }

    /// Sessions shared by the nodes of a Redis region: stored in its Redis, each applied on the
    /// node holding its lease (`super::region`).
    pub fn with_region(mut self, link: SessionLink) -> CollabService {
        let store = RedisSessions::new(
            link.client,
            &link.prefix,
            &link.node,
            region::LEASE_MS,
            self.limits.expire_after_ms,
            u64::from(self.config.keep_patches),
        );
        self.region = Some(Region {
            node: link.node,
            out: link.out,
            store,
            pending: Mutex::new(HashMap::new()),
            remote: Mutex::new(HashMap::new()),
            proxies: Mutex::new(HashMap::new()),
            inbound: Mutex::new(Some(link.inbound)),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            checking: AtomicBool::new(false),
        });
        self
    }

    /// The loaded session (not one being deleted), if it is loaded here.
    fn loaded(&self, key: &RoomKey) -> Option<Arc<Live>> {
        lock(&self.sessions).get(key).filter(|l| !l.poisoned.load(Ordering::Acquire)).cloned()
    }

    /// The loaded session, loading it from the store if needed; `None` if there is none.
    fn live(&self, key: &RoomKey) -> Result<Option<Arc<Live>>, SessionError> {
        let mut sessions = lock(&self.sessions);
        if let Some(live) = sessions.get(key).filter(|l| !l.poisoned.load(Ordering::Acquire)) {
            return Ok(Some(live.clone()));
        }
        if self.region.is_some() {
            // Loaded only by the region's routing, with the lease.
            return Ok(None);
        }
        let stored = self.store.load(key).map_err(|e| SessionError::Store(e.to_string()))?;
        let Some(stored) = stored else { return Ok(None) };
        let machine = CollabSession::restore(
            stored.meta,
            &stored.snapshot,
            &stored.earlier,
            &stored.after,
            stored.ids,
            self.limits,
        )
        .map_err(SessionError::Store)?;
        let live = self.wrap(key, Some(machine));
        sessions.insert(key.clone(), live.clone());
        Ok(Some(live))
    }

    fn wrap(&self, key: &RoomKey, machine: Option<CollabSession>) -> Arc<Live> {
        Arc::new(Live {
            key: key.clone(),
            state: Mutex::new(LiveState {
                machine,
                devices: HashMap::new(),
                cursors: Cursors::new(self.config.cursor_rate),
                awareness: YAwareness::default(),
            }),
            queued: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        })
    }

    fn queue(&self, live: &Arc<Live>, ops: Vec<Op>, outs: Vec<Out>) {
        live.queued.fetch_add(1, Ordering::AcqRel);
        // The writer stops only at shutdown; work queued after it is dropped unanswered (the
        // replies free their slots), which is "not acknowledged".
        let _ = self.work.send(Work { live: live.clone(), ops, outs });
    }

    /// Handles one `session` action. Refusals come back as errors (nothing changed); everything
    /// else is answered through the queue.
    pub fn act(
        self: &Arc<Self>,
        who: Requester<'_>,
        session: &str,
        action: SessionAction,
        now_ms: u64,
    ) -> Result<(), (ErrorCode, String)> {
        let routed = || {
            let room = RoomName::parse(session)
                .map_err(|_| SessionError::BadRequest(format!("bad session id {session:?}")))?;
            let key = RoomKey { tenant: who.identity.tenant.as_str().into(), room };
            let bound = who.identity.session_bound(session).ok_or(SessionError::Denied)?;
            let who = Who {
                tenant: who.identity.tenant.as_str().to_owned(),
                user: who.identity.user.as_str().to_owned(),
                bound,
                device: who.device,
                outbox: who.outbox.clone(),
                reply: who.reply,
            };
            match &self.region {
                None => self.act_inner(key, who, action, now_ms),
                Some(_) => self.route(key, Queued { who, action, now_ms, from: None }),
            }
        };
        routed().map_err(|e| (e.code(), e.to_string()))
    }

    fn act_inner(&self, key: RoomKey, who: Who, action: SessionAction, now_ms: u64) -> Result<(), SessionError> {
        let Who { user, bound, device, outbox, reply, .. } = who;
        let (user, outbox) = (user.as_str(), &outbox);
        if matches!(action, SessionAction::Create { .. } | SessionAction::CreateYjs { .. }) {
            if bound != SessionRole::Owner {
                return Err(SessionError::Denied);
            }
            let (machine, writes) = match action {
                SessionAction::Create { doc, max_bytes, default_role, schema } => {
                    CollabSession::create(user, &doc, max_bytes, default_role, schema.as_ref(), self.limits, now_ms)?
                }
                SessionAction::CreateYjs { max_bytes, default_role } => {
                    CollabSession::create_yjs(user, max_bytes, default_role, self.limits, now_ms)?
                }
                _ => unreachable!("matched above"),
            };
            let mut sessions = lock(&self.sessions);
            let loaded = sessions.get(&key).filter(|l| !l.poisoned.load(Ordering::Acquire)).cloned();
            let live = match loaded {
                // A session whose deletion is queued may be created again (its writes follow).
                Some(live) if lock(&live.state).machine.is_none() => live,
                Some(_) => return Err(SessionError::Exists),
                None => {
                    // (In a region, routing loaded the session, or found none, before this.)
                    if self.region.is_none()
                        && self.store.load(&key).map_err(|e| SessionError::Store(e.to_string()))?.is_some()
                    {
                        return Err(SessionError::Exists);
                    }
                    let live = self.wrap(&key, None);
                    sessions.insert(key.clone(), live.clone());
                    live
                }
            };
            drop(sessions);
            let mut state = lock(&live.state);
            state.machine = Some(machine);
            let ops = writes.into_iter().map(Op::Write).collect();
            self.queue(&live, ops, vec![]);
            return self.join(&live, &mut state, device, user, bound, outbox, reply, None, now_ms);
        }
        let live = self.live(&key)?.ok_or(SessionError::Unknown)?;
        let mut state = lock(&live.state);
        if state.machine.is_none() {
            return Err(SessionError::Unknown);
        }
        match action {
            SessionAction::Create { .. } | SessionAction::CreateYjs { .. } => unreachable!("handled above"),
            SessionAction::Join { version } => {
                self.join(&live, &mut state, device, user, bound, outbox, reply, version, now_ms)
            }
            SessionAction::Leave {} => {
                let left = self.leave_device(&live, &mut state, device, now_ms);
                if !left {
                    return Err(SessionError::NotIn);
                }
                self.queue(&live, vec![], vec![Out::Answer(reply, SessionEvent::Ok {})]);
                Ok(())
            }
            SessionAction::Patch { id, base, patch } => {
                let machine = state.machine.as_mut().ok_or(SessionError::Unknown)?;
                let outs = match machine.patch(device, &id, base, &patch, now_ms)? {
                    PatchOutcome::Applied { patch, rebased, writes } => {
                        let version = patch.version;
                        let ops = writes.into_iter().map(Op::Write).collect();
                        let outs =
                            vec![Out::Answer(reply, SessionEvent::Applied { version, rebased }), Out::Patched(patch)];
                        self.queue(&live, ops, outs);
                        return Ok(());
                    }
                    PatchOutcome::Duplicate { version } => {
                        vec![Out::Answer(reply, SessionEvent::Applied { version, rebased: false })]
                    }
                    PatchOutcome::Conflict { base, version, conflicting } => {
                        vec![Out::Answer(reply, SessionEvent::Conflict { base, version, conflicting })]
                    }
                };
                self.queue(&live, vec![], outs);
                Ok(())
            }
            SessionAction::Role { user: target, role } => {
                let machine = state.machine.as_mut().ok_or(SessionError::Unknown)?;
                let (events, write) = machine.set_role(device, &target, role)?;
                let mut outs = vec![Out::Answer(reply, SessionEvent::Ok {})];
                outs.extend(events.into_iter().map(Out::Event));
                self.queue(&live, vec![Op::Write(write)], outs);
                Ok(())
            }
            SessionAction::Close {} => {
                let machine = state.machine.as_mut().ok_or(SessionError::Unknown)?;
                let (event, write) = machine.close(device)?;
                self.queue(
                    &live,
                    vec![Op::Write(write)],
                    vec![Out::Answer(reply, SessionEvent::Ok {}), Out::Event(event)],
                );
                Ok(())
            }
            SessionAction::Destroy {} => {
                let machine = state.machine.as_ref().ok_or(SessionError::Unknown)?;
                let by = machine.can_destroy(device)?;
                state.machine = None;
                state.cursors = Cursors::new(self.config.cursor_rate);
                let ended = SessionEvent::Ended { reason: SessionEnd::Destroyed, by: Some(by) };
                self.queue(&live, vec![Op::Delete], vec![Out::Answer(reply, SessionEvent::Ok {}), Out::Ended(ended)]);
                Ok(())
            }
            SessionAction::Cursor { data } => {
                drop(reply);
                self.cursor_in(&live, &mut state, device, data, now_ms)
            }
            SessionAction::Yjs { message } => self.yjs_in(&live, &mut state, device, reply, &message, now_ms),
        }
    }

    /// A y-protocols message for a `yjs` session (docs/sessions.md, "Yjs sessions").
    fn yjs_in(
        &self,
        live: &Arc<Live>,
        state: &mut LiveState,
        device: DeviceId,
        reply: Reply,
        message: &Payload,
        now_ms: u64,
    ) -> Result<(), SessionError> {
        let machine = state.machine.as_mut().ok_or(SessionError::Unknown)?;
        machine.device_role(device).ok_or(SessionError::NotIn)?;
        let ydoc = machine.ydoc().ok_or(SessionError::WrongKind("a JSON session takes patches, not yjs messages"))?;
        let yjs_event = |bytes: Vec<u8>| SessionEvent::Yjs { message: Payload::from(bytes) };
        match yjs::decode(&message.0).map_err(|e| SessionError::BadYjs(e.to_string()))? {
            YMessage::Step1(sv) => {
                // What the device misses, then the relay's own step 1 so it sends what the relay
                // misses, then who else is here.
                let step2 = yjs::sync_message(yrs::sync::SyncMessage::SyncStep2(ydoc.diff(&sv)));
                let step1 = yjs::sync_message(yrs::sync::SyncMessage::SyncStep1(ydoc.state_vector()));
                let mut outs = vec![Out::Answer(reply, yjs_event(step2)), Out::To(device, yjs_event(step1))];
                if let Some(all) = state.awareness.all() {
                    outs.push(Out::To(device, yjs_event(all)));
                }
                self.queue(live, vec![], outs);
            }
            YMessage::Update { update, step2 } => match machine.y_update(device, &update, step2, now_ms) {
                Ok(YOutcome::Applied { patch, writes }) => {
                    let version = patch.version;
                    let relayed = yjs_event(yjs::sync_message(yrs::sync::SyncMessage::Update(update)));
                    let ops = writes.into_iter().map(Op::Write).collect();
                    let applied = SessionEvent::Applied { version, rebased: false };
                    self.queue(live, ops, vec![Out::Answer(reply, applied), Out::Relayed(device, relayed)]);
                }
                Ok(YOutcome::Unchanged { version }) => {
                    let applied = SessionEvent::Applied { version, rebased: false };
                    self.queue(live, vec![], vec![Out::Answer(reply, applied)]);
                }
                Err(e @ SessionError::YjsBroken(_)) => {
                    // The document may hold part of the update: start over from the store.
                    live.poisoned.store(true, Ordering::Release);
                    return Err(e);
                }
                Err(e) => return Err(e),
            },
            YMessage::Awareness(update) => {
                let max = self.config.max_cursor_bytes as usize;
                state.awareness.update(device, &update, max).map_err(|e| SessionError::BadYjs(e.to_string()))?;
                broadcast(&live.key.room.to_string(), state, yjs_event(message.0.to_vec()), Some(device));
                // Answered only when asked with a request id (a Yjs client sends them with 0).
                if reply.req() != 0 {
                    self.queue(live, vec![], vec![Out::Answer(reply, SessionEvent::Ok {})]);
                }
            }
            YMessage::AwarenessQuery => {
                let all = state.awareness.all().unwrap_or_else(yjs::no_awareness);
                self.queue(live, vec![], vec![Out::Answer(reply, yjs_event(all))]);
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn join(
        &self,
        live: &Arc<Live>,
        state: &mut LiveState,
        device: DeviceId,
        user: &str,
        bound: SessionRole,
        outbox: &Arc<Outbox>,
        reply: Reply,
        version: Option<u64>,
        now_ms: u64,
    ) -> Result<(), SessionError> {
        let Some(machine) = state.machine.as_mut() else { return Err(SessionError::Unknown) };
        let (role, events, write) = machine.join(device, user, bound, now_ms);
        let now = machine.version();
        // The missed patches when the device's version is recent enough and they weigh less
        // than the document; else the document.
        let missed = version.and_then(|v| machine.patches_after(v));
        let (snapshot, patches) = match missed {
            // A Yjs client syncs with a sync step 1 after joining.
            _ if machine.kind() == SessionKind::Yjs => (None, vec![]),
            Some(patches) if patches.iter().map(|p| p.patch.len()).sum::<usize>() < machine.snapshot().doc.len() => {
                (None, patches)
            }
            _ => (Some(machine.snapshot()), vec![]),
        };
        let joined = SessionEvent::Joined {
            role,
            status: machine.status(),
            version: now,
            snapshot,
            patches,
            members: machine.members(),
        };
        // A device joined already (tabs of a browser sharing one connection join one by one)
        // keeps its `since`: a patch committed before this join but not yet delivered must still
        // reach it, for the tabs that joined earlier at an older version. Clients skip versions
        // they hold, so the joiner seeing it twice is harmless.
        state.devices.entry(device).or_insert(Joined { outbox: outbox.clone(), since: now }).outbox = outbox.clone();
        let mut outs = vec![Out::Answer(reply, joined)];
        outs.extend(events.into_iter().map(|e| Out::Others(device, e)));
        self.queue(live, vec![Op::Write(write)], outs);
        Ok(())
    }

    /// Takes a device out of a session; `false` if it was not in it.
    fn leave_device(&self, live: &Arc<Live>, state: &mut LiveState, device: DeviceId, now_ms: u64) -> bool {
        if state.devices.remove(&device).is_none() {
            return false;
        }
        if let Some(gone) = state.awareness.remove(device) {
            let event = SessionEvent::Yjs { message: Payload::from(gone) };
            broadcast(&live.key.room.to_string(), state, event, None);
        }
        if let Some(machine) = state.machine.as_mut()
            && let Some((events, write)) = machine.leave(device, now_ms)
        {
            for event in &events {
                if let SessionEvent::Cursor { user, .. } = event {
                    state.cursors.remove(user);
                }
            }
            self.queue(live, vec![Op::Write(write)], events.into_iter().map(Out::Event).collect());
        }
        true
    }

    /// A device's connection ended: it leaves every session it joined.
    pub fn disconnect(&self, tenant: &str, sessions: &[RoomName], device: DeviceId, now_ms: u64) {
        for room in sessions {
            let key = RoomKey { tenant: tenant.into(), room: room.clone() };
            self.leave_key(&key, device, now_ms);
            if let Some(region) = &self.region {
                // Held elsewhere: the owner takes the device out.
                let mut remote = lock(&region.remote);
                if let Some(entry) = remote.get_mut(&key)
                    && entry.devices.remove(&device).is_some()
                {
                    let left = Message::Left { tenant: tenant.to_owned(), session: room.to_string(), device };
                    let _ = region.out.send((entry.owner.clone(), left.encode()));
                }
            }
        }
    }

    /// Takes a device out of a session loaded here.
    fn leave_key(&self, key: &RoomKey, device: DeviceId, now_ms: u64) {
        let live = lock(&self.sessions).get(key).cloned();
        if let Some(live) = live {
            let mut state = lock(&live.state);
            self.leave_device(&live, &mut state, device, now_ms);
        }
    }

    /// A cursor sent as a datagram: dropped silently when refused.
    pub fn cursor(&self, identity: &Identity, session: &str, device: DeviceId, data: Payload, now_ms: u64) {
        let Ok(room) = RoomName::parse(session) else { return };
        let key = RoomKey { tenant: identity.tenant.as_str().into(), room };
        let live = lock(&self.sessions).get(&key).cloned();
        if let Some(live) = live {
            let mut state = lock(&live.state);
            let _ = self.cursor_in(&live, &mut state, device, data, now_ms);
        } else if let Some(region) = &self.region
            && let Some(bound) = identity.session_bound(session)
            && let Some(entry) = lock(&region.remote).get(&key)
            && let Some((outbox, _)) = entry.devices.get(&device)
        {
            let act = Message::Act {
                tenant: identity.tenant.as_str().to_owned(),
                session: session.to_owned(),
                device,
                json: outbox.codec() == crate::proto::Codec::Json,
                user: identity.user.as_str().to_owned(),
                bound,
                req: 0,
                action: SessionAction::Cursor { data },
            };
            let _ = region.out.send((entry.owner.clone(), act.encode()));
        }
    }

    fn cursor_in(
        &self,
        live: &Live,
        state: &mut LiveState,
        device: DeviceId,
        data: Payload,
        now_ms: u64,
    ) -> Result<(), SessionError> {
        if data.len() > self.config.max_cursor_bytes as usize {
            return Err(SessionError::BadRequest(format!(
                "cursor data over sessions.max_cursor_bytes ({})",
                self.config.max_cursor_bytes
            )));
        }
        let user = state.machine.as_ref().and_then(|m| m.device_user(device)).ok_or(SessionError::NotIn)?.to_owned();
        if let Some(data) = state.cursors.update(&user, data, now_ms) {
            send_cursor(live, state, &user, data);
        }
        Ok(())
    }

    /// Sends the held cursors that are due; with `sweep`, expires idle sessions (also those only
    /// in the store); with `unload`, unloads sessions nobody is joined to and nothing is queued
    /// for. Called by [`CollabService::run`]'s tick.
    pub fn tick(self: &Arc<Self>, now_ms: u64, sweep: bool, unload: bool) {
        let lives: Vec<Arc<Live>> = lock(&self.sessions).values().cloned().collect();
        for live in &lives {
            let mut state = lock(&live.state);
            if state.cursors.pending() {
                for (user, data) in state.cursors.due(now_ms) {
                    send_cursor(live, &state, &user, data);
                }
            }
            if sweep && state.machine.as_ref().is_some_and(|m| m.expired(now_ms)) {
                state.machine = None;
                let ended = SessionEvent::Ended { reason: SessionEnd::Expired, by: None };
                self.queue(live, vec![Op::Delete], vec![Out::Ended(ended)]);
            }
        }
        // In a region, sessions nobody loaded expire by their keys' TTL (`super::redis_store`).
        if sweep && self.region.is_none() {
            self.expire_stored(now_ms);
        }
        if unload {
            // In a region, under `pending` (routing must not see a session go between finding
            // and using it), and the unloaded sessions' leases are given up.
            let _routing = self.region.as_ref().map(|r| lock(&r.pending));
            let mut gone = Vec::new();
            lock(&self.sessions).retain(|key, live| {
                let keep = live.queued.load(Ordering::Acquire) > 0 || !lock(&live.state).devices.is_empty();
                if !keep {
                    gone.push(key.clone());
                }
                keep
            });
            if let Some(region) = &self.region {
                lock(&region.proxies).retain(|(key, _), _| !gone.contains(key));
                lock(&region.remote).retain(|_, entry| entry.devices.values().any(|(_, member)| *member));
                let this = self.clone();
                region.tasks.spawn(async move {
                    let Some(region) = &this.region else { return };
                    for key in gone {
                        if let Err(e) = region.store.release(&key).await {
                            tracing::debug!(error = %e, "sessions: could not give a lease up");
                        }
                    }
                });
            }
        }
    }

    fn expire_stored(&self, now_ms: u64) {
        // Sessions nobody loaded lately: load (so a racing join sees the end) and expire them.
        let before = now_ms.saturating_sub(self.limits.expire_after_ms);
        match self.store.idle(before) {
            Ok(keys) => {
                for key in keys {
                    if let Ok(Some(live)) = self.live(&key) {
                        let mut state = lock(&live.state);
                        if state.machine.as_ref().is_some_and(|m| m.expired(now_ms)) {
                            state.machine = None;
                            let ended = SessionEvent::Ended { reason: SessionEnd::Expired, by: None };
                            self.queue(&live, vec![Op::Delete], vec![Out::Ended(ended)]);
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "sessions: could not list idle sessions"),
        }
    }

    /// The writer and the tick, until `stop`; then what is queued is committed and delivered.
    pub async fn run(self: Arc<Self>, clock: fn() -> u64, stop: CancellationToken) {
        let Some(mut inbox) = lock(&self.inbox).take() else { return };
        let mut inbound = self.region.as_ref().and_then(|r| lock(&r.inbound).take());
        let tick_ms = (1000 / u64::from(self.config.cursor_rate.max(1))).clamp(10, 250);
        // Expiry every quarter of the expiry time (at least every minute: it reads every stored
        // session's meta); unloading every 10 s.
        let sweep_every = (self.limits.expire_after_ms / 4).clamp(250, 60_000) / tick_ms;
        let unload_every = UNLOAD_EVERY_MS / tick_ms;
        let check_every = region::CHECK_MS / tick_ms;
        let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u64;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    ticks += 1;
                    let (sweep, unload) = (ticks.is_multiple_of(sweep_every.max(1)), ticks.is_multiple_of(unload_every.max(1)));
                    self.tick(clock(), sweep, unload);
                    if self.region.is_some() && ticks.is_multiple_of(check_every.max(1)) {
                        self.check_region();
                    }
                }
                message = async { match &mut inbound { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    match message {
                        Some((from, bytes)) => self.on_message(from, &bytes, clock()),
                        None => inbound = None,
                    }
                }
                work = inbox.recv() => {
                    let Some(work) = work else { return };
                    let mut batch = vec![work];
                    while batch.len() < MAX_BATCH && let Ok(more) = inbox.try_recv() {
                        batch.push(more);
                    }
                    self.commit(batch).await;
                }
            }
        }
        // Shutdown: commit and answer what was accepted.
        inbox.close();
        let mut batch = Vec::new();
        while let Ok(work) = inbox.try_recv() {
            batch.push(work);
        }
        if !batch.is_empty() {
            self.commit(batch).await;
        }
        if let Some(region) = &self.region {
            region.stop.cancel();
            region.tasks.close();
            region.tasks.wait().await;
            // Leases given up, so another node takes the sessions at once.
            let keys: Vec<RoomKey> = lock(&self.sessions).keys().cloned().collect();
            for key in keys {
                let _ = region.store.release(&key).await;
            }
        }
    }

    async fn commit(&self, batch: Vec<Work>) {
        let mut ops = Vec::new();
        for work in &batch {
            if !work.live.poisoned.load(Ordering::Acquire) {
                ops.extend(work.ops.iter().map(|op| (work.live.key.clone(), op.clone())));
            }
        }
        let result = if ops.is_empty() {
            Ok(())
        } else if let Some(region) = &self.region {
            region.store.commit(&ops).await.map_err(|e| e.to_string())
        } else {
            let store = self.store.clone();
            match tokio::task::spawn_blocking(move || store.commit(&ops)).await {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(format!("session store task did not finish: {e}")),
            }
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, "sessions: commit failed; the sessions involved reload from the store");
        }
        let mut wakes = Wakes::new();
        for work in batch {
            let ok = result.is_ok() && !work.live.poisoned.load(Ordering::Acquire);
            if !ok {
                work.live.poisoned.store(true, Ordering::Release);
            }
            deliver(&work.live, work.outs, ok, &mut wakes);
            work.live.queued.fetch_sub(1, Ordering::AcqRel);
        }
        drop(wakes);
        if result.is_err() {
            lock(&self.sessions).retain(|_, live| !live.poisoned.load(Ordering::Acquire));
        }
    }
}

/// Sessions across a Redis region (`super::region`).
impl CollabService {
    /// Applies an action here if the session is loaded here, forwards it to the owner if another
    /// node holds it, else queues it while the owner is found. `from`: the node a forwarded
    /// action came from.
    fn route(self: &Arc<Self>, key: RoomKey, item: Queued) -> Result<(), SessionError> {
        let Some(region) = &self.region else { return self.act_inner(key, item.who, item.action, item.now_ms) };
        self.route_locked(region, &mut lock(&region.pending), key, item)
    }

    /// [`CollabService::route`] with `pending` held.
    fn route_locked(
        self: &Arc<Self>,
        region: &Region,
        pending: &mut HashMap<RoomKey, Vec<Queued>>,
        key: RoomKey,
        item: Queued,
    ) -> Result<(), SessionError> {
        let Queued { who, action, now_ms, from } = item;
        if let Some(queue) = pending.get_mut(&key) {
            queue.push(Queued { who, action, now_ms, from });
            return Ok(());
        }
        if self.loaded(&key).is_some() {
            return self.act_inner(key, who, action, now_ms);
        }
        let owner = lock(&region.remote).get(&key).map(|r| r.owner.clone());
        match (owner, from) {
            (Some(owner), None) => {
                self.forward(region, &key, who, action, &owner);
                Ok(())
            }
            (Some(_), Some(_)) => {
                // Another node holds it: the device's node must find the owner again.
                self.drop_proxy(region, &key, who.device, ErrorCode::SESSION_MOVED);
                Ok(())
            }
            (None, from) => {
                pending.insert(key.clone(), vec![Queued { who, action, now_ms, from }]);
                let this = self.clone();
                let stop = region.stop.clone();
                region.tasks.spawn(async move {
                    if let Some(found) = stop.run_until_cancelled(this.find_owner(&key)).await {
                        this.resolved(&key, found);
                    }
                });
                Ok(())
            }
        }
    }

    /// Takes the session's lease if nobody holds it (and loads it), or names its owner.
    async fn find_owner(&self, key: &RoomKey) -> Result<Found, SessionError> {
        let region = self.region.as_ref().ok_or(SessionError::Unknown)?;
        let store = |e: crate::store::StoreError| SessionError::Store(e.to_string());
        let owner = region.store.acquire(key).await.map_err(store)?;
        if owner != region.node {
            return Ok(Found::Elsewhere(owner));
        }
        let machine = match region.store.load(key).await.map_err(store)? {
            Some(s) => Some(Box::new(
                CollabSession::restore(s.meta, &s.snapshot, &s.earlier, &s.after, s.ids, self.limits)
                    .map_err(SessionError::Store)?,
            )),
            None => None,
        };
        Ok(Found::Here(machine))
    }

    /// Routes the actions that waited for the session's owner, in order.
    fn resolved(self: &Arc<Self>, key: &RoomKey, found: Result<Found, SessionError>) {
        let Some(region) = &self.region else { return };
        let mut pending = lock(&region.pending);
        let queued = pending.remove(key).unwrap_or_default();
        match found {
            Ok(Found::Here(machine)) => {
                let mut sessions = lock(&self.sessions);
                if sessions.get(key).is_none_or(|l| l.poisoned.load(Ordering::Acquire)) {
                    sessions.insert(key.clone(), self.wrap(key, machine.map(|m| *m)));
                }
            }
            Ok(Found::Elsewhere(owner)) => {
                lock(&region.remote).entry(key.clone()).or_insert(Remote { owner, devices: HashMap::new() });
            }
            Err(e) => {
                for item in queued.into_iter().filter(|i| !is_quiet(i.who.reply.req(), &i.action)) {
                    refuse(item.who.reply, &e);
                }
                return;
            }
        }
        for item in queued {
            // Routed as if just arrived, still under `pending`: what arrives meanwhile waits.
            let (outbox, req) = (item.who.outbox.clone(), item.who.reply.req());
            let quiet = is_quiet(req, &item.action);
            if let Err(e) = self.route_locked(region, &mut pending, key.clone(), item)
                && !quiet
            {
                let _ = outbox.push(CONTROL, outbox.codec().frame(&ServerFrame::error(req, e.code(), e.to_string())));
            }
        }
    }

    /// Sends a device's action to the session's owner; the owner answers the device.
    fn forward(&self, region: &Region, key: &RoomKey, who: Who, action: SessionAction, owner: &str) {
        let mut remote = lock(&region.remote);
        let Some(entry) = remote.get_mut(key) else { return };
        let joins = matches!(
            action,
            SessionAction::Create { .. } | SessionAction::CreateYjs { .. } | SessionAction::Join { .. }
        );
        let member = entry.devices.get(&who.device).is_some_and(|(_, member)| *member);
        // A `leave` ends membership, but its answer still comes through here.
        let member = joins || (member && !matches!(action, SessionAction::Leave {}));
        entry.devices.insert(who.device, (who.outbox.clone(), member));
        let act = Message::Act {
            tenant: who.tenant,
            session: key.room.to_string(),
            device: who.device,
            json: who.outbox.codec() == crate::proto::Codec::Json,
            user: who.user,
            bound: who.bound,
            req: who.reply.req(),
            action,
        };
        // The answer comes from the owner, on the control lane.
        drop(who.reply);
        let _ = region.out.send((owner.to_owned(), act.encode()));
    }

    /// Closes another node's device's stand-in for a session, telling its node to close it.
    fn drop_proxy(&self, region: &Region, key: &RoomKey, device: DeviceId, code: ErrorCode) {
        if let Some(proxy) = lock(&region.proxies).remove(&(key.clone(), device)) {
            region::close_proxy(
                &proxy.outbox,
                code,
                &proxy.node,
                &key.tenant,
                key.room.as_str(),
                proxy.device,
                &region.out,
            );
        }
    }

    /// A message from another node.
    fn on_message(self: &Arc<Self>, from: String, bytes: &[u8], now_ms: u64) {
        let Some(region) = &self.region else { return };
        let Some(message) = Message::decode(bytes) else {
            tracing::warn!(node = %from, "sessions: undecodable message from another node");
            return;
        };
        match message {
            Message::Act { tenant, session, device, json, user, bound, req, action } => {
                let Ok(room) = RoomName::parse(&session) else { return };
                let key = RoomKey { tenant: tenant.as_str().into(), room };
                let id = crate::call::region::device_id(crate::call::region::node_tag(&from), device);
                let outbox = lock(&region.proxies)
                    .entry((key.clone(), id))
                    .or_insert_with(|| Proxy {
                        outbox: region::proxy(
                            region::codec_of(json),
                            PROXY_CAP,
                            from.clone(),
                            tenant.clone(),
                            session.clone(),
                            device,
                            region.out.clone(),
                        ),
                        node: from.clone(),
                        device,
                    })
                    .outbox
                    .clone();
                let quiet = is_quiet(req, &action);
                let reply = outbox.reserve(CONTROL, req);
                let who = Who { tenant, user, bound, device: id, outbox: outbox.clone(), reply };
                if let Err(e) = self.route(key, Queued { who, action, now_ms, from: Some(from) })
                    && !quiet
                {
                    let _ =
                        outbox.push(CONTROL, outbox.codec().frame(&ServerFrame::error(req, e.code(), e.to_string())));
                }
            }
            Message::Left { tenant, session, device } => {
                let Ok(room) = RoomName::parse(&session) else { return };
                let key = RoomKey { tenant: tenant.as_str().into(), room };
                let id = crate::call::region::device_id(crate::call::region::node_tag(&from), device);
                lock(&region.proxies).remove(&(key.clone(), id));
                self.leave_key(&key, id, now_ms);
            }
            Message::Frames { tenant, session, device, reliable, datagrams, close } => {
                let Ok(room) = RoomName::parse(&session) else { return };
                let key = RoomKey { tenant: tenant.as_str().into(), room };
                let mut remote = lock(&region.remote);
                let Some(entry) = remote.get_mut(&key).filter(|e| e.owner == from) else { return };
                let Some((outbox, _)) = entry.devices.get(&device).cloned() else { return };
                for body in &reliable {
                    let _ = outbox.push(CONTROL, WireFrame::from_body(body));
                }
                for (i, body) in datagrams.iter().enumerate() {
                    // Each its own key: the owner already kept only each user's latest.
                    let scope = format!("{tenant}/{session}/{now_ms}/{i}");
                    let _ =
                        outbox.push_datagram(DatagramKey::new(KIND_SESSION_CURSOR, scope), WireFrame::from_body(body));
                }
                if let Some(code) = close {
                    entry.devices.remove(&device);
                    outbox.close(CloseReason::Error(code));
                    if code == ErrorCode::SESSION_MOVED {
                        // The owner we knew does not hold it: the other devices follow.
                        if let Some(entry) = remote.remove(&key) {
                            entry.close_members(code);
                        }
                    }
                }
            }
        }
    }

    /// Renews this node's leases and checks the owners of sessions held elsewhere, in a task
    /// (one at a time). A lost lease unloads the session; a changed owner closes the devices
    /// that used the old one (`session_moved`): they join again.
    fn check_region(self: &Arc<Self>) {
        let Some(region) = &self.region else { return };
        if region.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let this = self.clone();
        let stop = region.stop.clone();
        region.tasks.spawn(async move {
            stop.run_until_cancelled(this.check_region_now()).await;
            if let Some(region) = &this.region {
                region.checking.store(false, Ordering::Release);
            }
        });
    }

    async fn check_region_now(&self) {
        let Some(region) = &self.region else { return };
        let owned: Vec<RoomKey> = lock(&self.sessions).keys().cloned().collect();
        for key in owned {
            match region.store.renew(&key).await {
                Ok(true) => {}
                Ok(false) => self.lost(region, &key),
                Err(e) => tracing::warn!(error = %e, "sessions: could not renew a lease"),
            }
        }
        let used: Vec<(RoomKey, String)> =
            lock(&region.remote).iter().map(|(k, r)| (k.clone(), r.owner.clone())).collect();
        for (key, owner) in used {
            match region.store.owner(&key).await {
                Ok(now) if now.as_deref() == Some(owner.as_str()) => {}
                Ok(_) => {
                    let mut remote = lock(&region.remote);
                    if remote.get(&key).is_some_and(|r| r.owner == owner)
                        && let Some(entry) = remote.remove(&key)
                    {
                        entry.close_members(ErrorCode::SESSION_MOVED);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "sessions: could not read a session's owner"),
            }
        }
    }

    /// This node's lease on a session lapsed (another node may hold it now): the session is
    /// unloaded and its devices closed, here and on other nodes (`session_moved`).
    fn lost(&self, region: &Region, key: &RoomKey) {
        let _routing = lock(&region.pending);
        let Some(live) = lock(&self.sessions).remove(key) else { return };
        live.poisoned.store(true, Ordering::Release);
        tracing::warn!(session = %key.room, "sessions: lease lost; the session moves to another node");
        let devices: Vec<(DeviceId, Arc<Outbox>)> =
            lock(&live.state).devices.drain().map(|(d, j)| (d, j.outbox)).collect();
        for (device, outbox) in devices {
            if lock(&region.proxies).contains_key(&(key.clone(), device)) {
                self.drop_proxy(region, key, device, ErrorCode::SESSION_MOVED);
            } else {
                outbox.close(CloseReason::Error(ErrorCode::SESSION_MOVED));
            }
        }
    }
}

/// Where a session's owner was found.
enum Found {
    /// Here, with the lease: the stored session (`None`: there is none).
    Here(Option<Box<CollabSession>>),
    Elsewhere(String),
}

/// A cursor sent as a datagram (forwarded with request id 0) is dropped silently when refused.
fn is_quiet(req: u64, action: &SessionAction) -> bool {
    req == 0 && matches!(action, SessionAction::Cursor { .. })
}

/// Answers a request with the error that refused it.
fn refuse(mut reply: Reply, e: &SessionError) {
    let req = reply.req();
    let _ = reply.send(&ServerFrame::error(req, e.code(), e.to_string()));
}

/// Sends a cursor to the devices of the session's other users.
fn send_cursor(live: &Live, state: &LiveState, user: &str, data: Payload) {
    let frame = ServerFrame::Session {
        req: 0,
        session: live.key.room.to_string(),
        event: SessionEvent::Cursor { user: user.to_owned(), data: Some(data) },
    };
    let scope = format!("{}/{}/{}", live.key.tenant, live.key.room, user);
    let mut encoded = EncodeOnce::new(&frame);
    let Some(machine) = state.machine.as_ref() else { return };
    for (device, joined) in &state.devices {
        if machine.device_user(*device) == Some(user) {
            continue;
        }
        let _ = joined
            .outbox
            .push_datagram(DatagramKey::new(KIND_SESSION_CURSOR, scope.as_str()), encoded.get(joined.outbox.codec()));
    }
}

/// Delivers a committed work item's answers and events (`ok`: the commit succeeded). The
/// members' writers are woken once, when `wakes` is dropped after the whole batch, as the hub's
/// fanout does.
fn deliver(live: &Live, outs: Vec<Out>, ok: bool, wakes: &mut Wakes) {
    let session = live.key.room.to_string();
    let mut state = lock(&live.state);
    for out in outs {
        match out {
            Out::Answer(mut reply, event) => {
                let req = reply.req();
                let frame = if ok {
                    ServerFrame::Session { req, session: session.clone(), event }
                } else {
                    ServerFrame::error(req, ErrorCode::STORE_UNAVAILABLE, "the session store could not commit; retry")
                };
                let _ = reply.send(&frame);
            }
            _ if !ok => {}
            Out::Patched(patch) => {
                let version = patch.version;
                let frame =
                    ServerFrame::Session { req: 0, session: session.clone(), event: SessionEvent::Patched { patch } };
                let mut encoded = EncodeOnce::new(&frame);
                for joined in state.devices.values_mut().filter(|j| j.since < version) {
                    joined.since = version;
                    push_or_close(&joined.outbox, &mut encoded, wakes);
                }
            }
            Out::Event(event) => broadcast(&session, &state, event, None),
            Out::Others(device, event) => broadcast(&session, &state, event, Some(device)),
            Out::Relayed(from, event) => {
                let frame = ServerFrame::Session { req: 0, session: session.clone(), event };
                let mut encoded = EncodeOnce::new(&frame);
                for (_, joined) in state.devices.iter().filter(|(d, _)| **d != from) {
                    push_or_close(&joined.outbox, &mut encoded, wakes);
                }
            }
            Out::To(device, event) => {
                if let Some(joined) = state.devices.get(&device) {
                    let frame = ServerFrame::Session { req: 0, session: session.clone(), event };
                    let _ = joined.outbox.push(CONTROL, joined.outbox.codec().frame(&frame));
                }
            }
            Out::Ended(event) => {
                broadcast(&session, &state, event, None);
                state.devices.clear();
            }
        }
    }
}

/// Queues a change (a patch, a Yjs update) for a member. One that cannot take it would miss it:
/// it is closed as a slow consumer and catches up when it reconnects.
fn push_or_close(outbox: &Arc<Outbox>, encoded: &mut EncodeOnce<'_, ServerFrame>, wakes: &mut Wakes) {
    if let Err(PushError::Full) = outbox.push_batched(CONTROL, encoded.get(outbox.codec()), outbox.cap(), wakes) {
        outbox.close(CloseReason::Error(ErrorCode::SLOW_CONSUMER));
    }
}

fn broadcast(session: &str, state: &LiveState, event: SessionEvent, except: Option<DeviceId>) {
    let frame = ServerFrame::Session { req: 0, session: session.to_owned(), event };
    let mut encoded = EncodeOnce::new(&frame);
    for (_, joined) in state.devices.iter().filter(|(d, _)| Some(**d) != except) {
        let _ = joined.outbox.push(CONTROL, encoded.get(joined.outbox.codec()));
    }
}
