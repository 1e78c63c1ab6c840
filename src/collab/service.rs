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

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::cursors::Cursors;
use super::machine::{CollabSession, Limits, PatchOutcome, SessionError, SessionKind, YOutcome};
use super::store::{Op, SessionStore};
use super::yjs::{self, YAwareness, YMessage};
use crate::auth::Identity;
use crate::config::SessionsConfig;
use crate::hub::RoomKey;
use crate::hub::presence::DeviceId;
use crate::outbox::{CONTROL, CloseReason, DatagramKey, Outbox, PushError, Reply, Wakes};
use crate::proto::codec::EncodeOnce;
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

pub struct CollabService {
    limits: Limits,
    config: SessionsConfig,
    store: Arc<SessionStore>,
    sessions: Mutex<HashMap<RoomKey, Arc<Live>>>,
    work: mpsc::UnboundedSender<Work>,
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Work>>>,
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
        }
    }

    /// The loaded session, loading it from the store if needed; `None` if there is none.
    fn live(&self, key: &RoomKey) -> Result<Option<Arc<Live>>, SessionError> {
        let mut sessions = lock(&self.sessions);
        if let Some(live) = sessions.get(key).filter(|l| !l.poisoned.load(Ordering::Acquire)) {
            return Ok(Some(live.clone()));
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
        &self,
        who: Requester<'_>,
        session: &str,
        action: SessionAction,
        now_ms: u64,
    ) -> Result<(), (ErrorCode, String)> {
        self.act_inner(who, session, action, now_ms).map_err(|e| (e.code(), e.to_string()))
    }

    fn act_inner(
        &self,
        who: Requester<'_>,
        session: &str,
        action: SessionAction,
        now_ms: u64,
    ) -> Result<(), SessionError> {
        let room =
            RoomName::parse(session).map_err(|_| SessionError::BadRequest(format!("bad session id {session:?}")))?;
        let key = RoomKey { tenant: who.identity.tenant.as_str().into(), room };
        let bound = who.identity.session_bound(session).ok_or(SessionError::Denied)?;
        let user = who.identity.user.as_str();
        let Requester { device, outbox, reply, .. } = who;
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
                    if self.store.load(&key).map_err(|e| SessionError::Store(e.to_string()))?.is_some() {
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
            let live = lock(&self.sessions).get(&key).cloned();
            if let Some(live) = live {
                let mut state = lock(&live.state);
                self.leave_device(&live, &mut state, device, now_ms);
            }
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
    pub fn tick(&self, now_ms: u64, sweep: bool, unload: bool) {
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
        if sweep {
            self.expire_stored(now_ms);
        }
        if unload {
            lock(&self.sessions)
                .retain(|_, live| live.queued.load(Ordering::Acquire) > 0 || !lock(&live.state).devices.is_empty());
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
        let tick_ms = (1000 / u64::from(self.config.cursor_rate.max(1))).clamp(10, 250);
        // Expiry every quarter of the expiry time (at least every minute: it reads every stored
        // session's meta); unloading every 10 s.
        let sweep_every = (self.limits.expire_after_ms / 4).clamp(250, 60_000) / tick_ms;
        let unload_every = UNLOAD_EVERY_MS / tick_ms;
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
