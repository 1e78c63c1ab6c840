//! The relay's group call service: the IO side of [`super::group::GroupCall`], as
//! [`super::service::CallService`] is for 1:1 calls. It keeps this node's group calls by id,
//! turns `call` frames with group actions (and any action on a group call's id) into machine
//! inputs and the machine's events into `call` frames, and runs the ring and grace timers. It
//! shares the 1:1 service's route (delivery to users' devices), timer loop and history writer.
//!
//! # Media
//!
//! Each group call has a media room, `call:<id>` in the call's tenant ([`media_room_call`]). The
//! call's membership is the right to it: a participant who is joined may join that room and
//! publish and subscribe there without the token's `join`/`media` capabilities, and nobody else
//! may (the session asks [`GroupService::in_call`]). After every change this service brings the
//! media plane in line with the roster through the [`MediaRooms`] seam:
//!
//! - the host's mutes become holds ([`crate::media::calls::Calls::hold`]): the relay stops
//!   forwarding that medium whatever the client sends, until the participant unmutes;
//! - a participant who is no longer in the call (left, removed, grace over, call ended) loses
//!   the room: each of their connections is ordered to leave it, so their tracks end for
//!   everyone and their subscriptions stop.
//!
//! Why a seam: the machine stays pure, the media plane stays ignorant of calls (it only knows
//! "hold this publisher" and rooms), and the unit tests here record what would be done.
//!
//! One lock, as in the 1:1 service: inputs from several connections apply in order, their
//! events are queued (never blocking) under it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::group::{
    GroupCall, GroupConfig, GroupError, GroupEvent, GroupEventKind, GroupOutput, InviteOver, MuteKind, Role, Roster,
    Status,
};
use super::history::CallRecord;
use super::quality::{CallQuality, QualityConfig, QualityError, Report};
use super::service::{
    CallRoute, ENDED_LINGER_MS, Requester, flag_event, quality_code, report_of, take_report, wire_media,
};
use super::types::{CallId, Media, Recipient};
use crate::config::CallsConfig;
use crate::control::{Controls, Order};
use crate::hub::RoomKey;
use crate::hub::presence::{DeviceId, UserKey};
use crate::media::calls::{Calls, Hold};
use crate::proto::{self, CallAction, CallEvent, ErrorCode, RoomName, ServerFrame};

/// The media room of a group call, if `room` names one: `call:` and the call's id.
pub fn media_room_call(room: &RoomName) -> Option<CallId> {
    room.as_str().strip_prefix("call:").and_then(CallId::parse)
}

/// What the service asks of the media plane. See the module docs.
pub trait MediaRooms: Send + Sync {
    /// Hold back (or release) what `user` publishes in `room`.
    fn hold(&self, room: &RoomKey, user: &UserKey, hold: Hold, now_ms: u64);
    /// Take every connection of `user` out of `room`.
    fn evict(&self, room: &RoomKey, user: &UserKey);
}

/// The relay's media plane: holds in the calls registry, evictions as orders to the user's
/// connections on this node.
pub struct RelayMediaRooms {
    pub calls: Arc<Calls>,
    pub controls: Arc<Controls>,
}

impl MediaRooms for RelayMediaRooms {
    fn hold(&self, room: &RoomKey, user: &UserKey, hold: Hold, now_ms: u64) {
        self.calls.hold(room, &user.user, hold, now_ms);
    }

    fn evict(&self, room: &RoomKey, user: &UserKey) {
        let order = Order::LeaveRoom { room: room.room.clone(), reason: "no longer in the call".into() };
        self.controls.order_user(&room.tenant, &user.user, &order);
    }
}

/// Why a group `call` request was refused. Nothing changed and nobody else was told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupActionError {
    #[error(transparent)]
    Group(#[from] GroupError),
    #[error("no group call {0} of yours")]
    UnknownCall(String),
    #[error("create_group takes an empty call id")]
    IdOnCreate,
    #[error("users must be 1-256 byte user ids without control characters, at least one")]
    BadUser,
    #[error("the token does not allow calling {0:?} (caps.call)")]
    NotAllowed(String),
    #[error("{0} is not an action of group calls ({1})")]
    NotForGroup(&'static str, &'static str),
    #[error("quality report refused: {0}")]
    Quality(#[from] QualityError),
}

impl GroupActionError {
    /// The protocol error code (docs/protocol.md).
    pub fn code(&self) -> ErrorCode {
        match self {
            GroupActionError::Group(err) => match err {
                GroupError::NotParticipant => ErrorCode::NOT_PARTICIPANT,
                GroupError::CrossTenant => ErrorCode::CROSS_TENANT,
                GroupError::NotHost => ErrorCode::NOT_HOST,
                GroupError::CallFull => ErrorCode::CALL_FULL,
                GroupError::AlreadyActive => ErrorCode::ALREADY_INVITED,
                GroupError::AlreadyJoined => ErrorCode::ALREADY_JOINED,
                GroupError::NotInvited => ErrorCode::NOT_INVITED,
                GroupError::NotInCall => ErrorCode::NOT_IN_CALL,
                GroupError::Removed => ErrorCode::REMOVED,
                GroupError::SelfTarget => ErrorCode::SELF_TARGET,
                GroupError::TimedOut => ErrorCode::TIMED_OUT,
                GroupError::Ended(_) => ErrorCode::CALL_ENDED,
            },
            GroupActionError::UnknownCall(_) => ErrorCode::NOT_PARTICIPANT,
            GroupActionError::IdOnCreate | GroupActionError::BadUser | GroupActionError::NotForGroup(..) => {
                ErrorCode::BAD_REQUEST
            }
            GroupActionError::NotAllowed(_) => ErrorCode::PERMISSION_DENIED,
            GroupActionError::Quality(err) => quality_code(err),
        }
    }
}

struct Entry {
    call: GroupCall,
    /// The call's media room.
    room: RoomKey,
    /// What the media plane was last told: the holds in force, and who was in the call.
    held: HashMap<UserKey, Hold>,
    in_call: Vec<UserKey>,
    /// The joined participants' quality reports and flags.
    quality: CallQuality,
}

impl Entry {
    /// The call's history record, with its quality summary.
    fn record(&self) -> CallRecord {
        CallRecord { quality: self.quality.summary(), ..CallRecord::group(&self.call) }
    }
}

#[derive(Default)]
struct Registry {
    calls: HashMap<CallId, Entry>,
    /// Each user's group calls that have not ended (any status), for their devices' connects
    /// and disconnects.
    live: HashMap<UserKey, Vec<CallId>>,
    /// Ring timeouts, grace periods, and the purge of ended calls.
    deadlines: BTreeSet<(u64, CallId)>,
}

impl Registry {
    fn link(&mut self, user: &UserKey, id: CallId) {
        let ids = self.live.entry(user.clone()).or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }

    fn unlink(&mut self, user: &UserKey, id: CallId) {
        super::service::unlink(&mut self.live, user, id);
    }

    fn lookup(&mut self, call: &str) -> Result<(CallId, &mut Entry), GroupActionError> {
        let unknown = || GroupActionError::UnknownCall(call.to_owned());
        let id = CallId::parse(call).ok_or_else(unknown)?;
        Ok((id, self.calls.get_mut(&id).ok_or_else(unknown)?))
    }
}

/// The group calls of this node. See the module docs.
pub struct GroupService {
    config: GroupConfig,
    quality: QualityConfig,
    route: Arc<dyn CallRoute>,
    media: Arc<dyn MediaRooms>,
    history: Option<mpsc::UnboundedSender<CallRecord>>,
    registry: Mutex<Registry>,
    wake: Notify,
}

impl GroupService {
    /// `route` is the 1:1 service's: that service attaches and detaches devices, this one only
    /// reads and delivers.
    pub fn new(config: &CallsConfig, route: Arc<dyn CallRoute>, media: Arc<dyn MediaRooms>) -> GroupService {
        GroupService {
            config: GroupConfig {
                max_participants: config.group_max_participants as usize,
                ring_timeout_ms: config.ring_timeout_ms,
                reconnect_grace_ms: config.reconnect_grace_ms,
                members_can_invite: config.group_members_can_invite,
            },
            quality: config.quality,
            route,
            media,
            history: None,
            registry: Mutex::new(Registry::default()),
            wake: Notify::new(),
        }
    }

    /// Records every group call at its start, each change and its end (the 1:1 service's
    /// writer: [`super::service::write_history`]).
    pub fn with_history(mut self, to: mpsc::UnboundedSender<CallRecord>) -> GroupService {
        self.history = Some(to);
        self
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this service takes the request: a group action, or any action on a group call
    /// held here.
    pub fn handles(&self, call: &str, action: &CallAction) -> bool {
        let group_action = matches!(
            action,
            CallAction::CreateGroup { .. }
                | CallAction::Invite { .. }
                | CallAction::Join {}
                | CallAction::Decline {}
                | CallAction::Leave {}
                | CallAction::Remove { .. }
                | CallAction::Mute { .. }
                | CallAction::Unmute { .. }
                | CallAction::MakeHost { .. }
                | CallAction::End {}
        );
        group_action || CallId::parse(call).is_some_and(|id| self.registry().calls.contains_key(&id))
    }

    /// Whether `user` is joined in group call `call` now: the right to its media room.
    pub fn in_call(&self, user: &UserKey, call: CallId) -> bool {
        let reg = self.registry();
        let Some(entry) = reg.calls.get(&call) else { return false };
        entry.call.ended().is_none()
            && entry.call.participant(user).is_some_and(|p| matches!(p.status, Status::Joined { .. }))
    }

    /// A device of `user` connected (after the 1:1 service attached it): it is told the roster
    /// of the user's live group calls they are active in, and rings for an invitation.
    pub fn connect(&self, user: &UserKey, device: DeviceId, now_ms: u64) {
        let mut reg = self.registry();
        for id in reg.live.get(user).cloned().unwrap_or_default() {
            let Some(entry) = reg.calls.get_mut(&id) else { continue };
            if entry.call.participant(user).is_some_and(|p| p.status.is_active()) {
                let to = super::types::Recipient::Device { user: user.clone(), device };
                self.deliver(id, &GroupEvent { to, kind: GroupEventKind::State(entry.call.roster()) });
            }
            let out = entry.call.device_connected(user, device);
            self.apply(&mut reg, id, out, now_ms);
        }
    }

    /// The device disconnected: if it was the one in a call, its user is away for the grace.
    pub fn disconnect(&self, user: &UserKey, device: DeviceId, now_ms: u64) {
        let mut reg = self.registry();
        for id in reg.live.get(user).cloned().unwrap_or_default() {
            let Some(entry) = reg.calls.get_mut(&id) else { continue };
            let out = entry.call.device_disconnected(user, device, now_ms);
            self.apply(&mut reg, id, out, now_ms);
        }
    }

    /// Applies one group `call` request. On success the `ok` answer is queued first, then the
    /// events.
    pub fn act(&self, who: Requester<'_>, call: &str, action: CallAction, now_ms: u64) -> Result<(), GroupActionError> {
        if let Some(report) = report_of(&action) {
            return self.report(who, call, &report, now_ms);
        }
        let (user, device) = (who.user, who.device);
        let wrong = |action, instead| Err(GroupActionError::NotForGroup(action, instead));
        match action {
            CallAction::CreateGroup { media, invite } => return self.create(who, call, media, invite, now_ms),
            CallAction::Invite { users } => return self.invite(who, call, users, now_ms),
            CallAction::Initiate { .. } => return wrong("initiate", "use create_group"),
            CallAction::Answer {} => return wrong("answer", "use join"),
            CallAction::Reject {} => return wrong("reject", "use decline"),
            CallAction::Cancel {} => return wrong("cancel", "the host uses end"),
            CallAction::Rejoin {} => return wrong("rejoin", "use join"),
            CallAction::Signal { .. } => return wrong("signal", "media goes through the call's media room"),
            _ => {}
        }
        let mut reg = self.registry();
        let (id, entry) = reg.lookup(call)?;
        let out = match action {
            CallAction::Join {} => entry.call.join(user, device, now_ms)?,
            CallAction::Decline {} => entry.call.decline(user, now_ms)?,
            CallAction::Leave {} | CallAction::HangUp {} => entry.call.leave(user, now_ms)?,
            CallAction::Remove { user: target } => entry.call.remove(user, &target_user(user, &target)?, now_ms)?,
            CallAction::Mute { user: target, kind } => {
                entry.call.mute(user, &target_user(user, &target)?, mute_kind(kind))?
            }
            CallAction::Unmute { kind } => entry.call.unmute(user, mute_kind(kind))?,
            CallAction::MakeHost { user: target } => entry.call.make_host(user, &target_user(user, &target)?)?,
            CallAction::End {} => entry.call.end(user, now_ms)?,
            // Answered above.
            _ => return wrong("this action", "see docs/calls.md"),
        };
        who.ok(id);
        self.apply(&mut reg, id, out, now_ms);
        Ok(())
    }

    fn create(
        &self,
        who: Requester<'_>,
        call: &str,
        media: proto::CallMedia,
        invite: Vec<String>,
        now_ms: u64,
    ) -> Result<(), GroupActionError> {
        if !call.is_empty() {
            return Err(GroupActionError::IdOnCreate);
        }
        let invitees = self.invitees(&who, invite, true)?;
        let media = match media {
            proto::CallMedia::Audio => Media::Audio,
            proto::CallMedia::Video => Media::Video,
        };
        let mut reg = self.registry();
        let mut id = CallId(rand::random());
        while reg.calls.contains_key(&id) {
            id = CallId(rand::random());
        }
        let Some(room) = media_room_key(&who.user.tenant, id) else { return Err(GroupActionError::BadUser) };
        let (call, out) = GroupCall::create(id, who.user.clone(), who.device, media, invitees, self.config, now_ms)?;
        for p in &call.roster().participants {
            reg.link(&p.user, id);
        }
        let quality = CallQuality::new(self.quality, media);
        reg.calls.insert(id, Entry { call, room, held: HashMap::new(), in_call: Vec::new(), quality });
        who.ok(id);
        self.apply(&mut reg, id, out, now_ms);
        Ok(())
    }

    /// Takes a quality report from the device a participant is joined on; flag changes go to
    /// every active participant, as the 1:1 service sends them to both users.
    fn report(&self, who: Requester<'_>, call: &str, report: &Report, now_ms: u64) -> Result<(), GroupActionError> {
        let mut reg = self.registry();
        let (id, entry) = reg.lookup(call)?;
        entry.call.joined_on(who.user, who.device)?;
        let changes = take_report(&mut entry.quality, &who.user.user, report, now_ms)?;
        who.ok(id);
        if changes.is_empty() {
            return Ok(());
        }
        let users = entry.call.active_users();
        for change in &changes {
            let frame = ServerFrame::Call { req: 0, call: id.to_string(), event: flag_event(change) };
            for user in &users {
                self.route.deliver(&Recipient::User(user.clone()), &frame);
            }
        }
        // A flag change is worth keeping at once; the rest waits for the call's next change.
        if let Some(history) = &self.history {
            let _ = history.send(entry.record());
        }
        Ok(())
    }

    /// Invites every user of `users` or none: applied to a copy of the call, kept if all pass.
    fn invite(&self, who: Requester<'_>, call: &str, users: Vec<String>, now_ms: u64) -> Result<(), GroupActionError> {
        let invitees = self.invitees(&who, users, false)?;
        let mut reg = self.registry();
        let (id, entry) = reg.lookup(call)?;
        let mut next = entry.call.clone();
        let mut out = Vec::new();
        for (user, devices) in &invitees {
            out.extend(next.invite(who.user, user.clone(), devices, now_ms)?);
        }
        entry.call = next;
        for (user, _) in &invitees {
            reg.link(user, id);
        }
        who.ok(id);
        self.apply(&mut reg, id, out, now_ms);
        Ok(())
    }

    /// The users a request invites, once each, with their connected devices; each must be a
    /// valid user id the token may call (`caps.call`). `may_be_empty`: a call may start alone.
    fn invitees(
        &self,
        who: &Requester<'_>,
        users: Vec<String>,
        may_be_empty: bool,
    ) -> Result<Vec<(UserKey, Vec<DeviceId>)>, GroupActionError> {
        if users.is_empty() && !may_be_empty {
            return Err(GroupActionError::BadUser);
        }
        let mut out: Vec<(UserKey, Vec<DeviceId>)> = Vec::new();
        for user in users {
            if !crate::auth::valid_sub(&user) {
                return Err(GroupActionError::BadUser);
            }
            if !who.identity.can_call(&user) {
                return Err(GroupActionError::NotAllowed(user));
            }
            // Always of the requester's tenant: calls never cross tenants.
            let key = UserKey { tenant: who.user.tenant.clone(), user: user.as_str().into() };
            if !out.iter().any(|(u, _)| *u == key) {
                let devices = self.route.devices(&key);
                out.push((key, devices));
            }
        }
        Ok(out)
    }

    /// Delivers an input's events, records the call, brings the media room in line with the
    /// roster and arms the next deadline; an ended call leaves the users' live lists and is
    /// purged after [`ENDED_LINGER_MS`].
    fn apply(&self, reg: &mut Registry, id: CallId, out: GroupOutput, now_ms: u64) {
        if out.is_empty() {
            return;
        }
        let Some(entry) = reg.calls.get_mut(&id) else { return };
        for event in &out {
            self.deliver(id, event);
        }
        if let Some(history) = &self.history {
            // The writer is gone only at shutdown.
            let _ = history.send(entry.record());
        }
        self.sync_media(entry, now_ms);
        let ended = entry.call.ended().is_some();
        let next = entry.call.next_deadline();
        let users: Vec<UserKey> = entry.call.roster().participants.into_iter().map(|p| p.user).collect();
        if ended {
            for user in &users {
                reg.unlink(user, id);
            }
        }
        if let Some(at) = next.or(ended.then(|| now_ms.saturating_add(ENDED_LINGER_MS))) {
            reg.deadlines.insert((at, id));
            self.wake.notify_one();
        }
    }

    /// Holds follow the host's mutes of participants in the call; whoever is no longer in the
    /// call (or everyone, once it ended) leaves the media room.
    fn sync_media(&self, entry: &mut Entry, now_ms: u64) {
        let ended = entry.call.ended().is_some();
        let roster = entry.call.roster();
        let mut in_call = Vec::new();
        for p in &roster.participants {
            let is_in = !ended && p.status.is_in();
            let hold = if is_in { Hold { audio: p.muted.audio, video: p.muted.video } } else { Hold::default() };
            if entry.held.get(&p.user).copied().unwrap_or_default() != hold {
                self.media.hold(&entry.room, &p.user, hold, now_ms);
                if hold == Hold::default() {
                    entry.held.remove(&p.user);
                } else {
                    entry.held.insert(p.user.clone(), hold);
                }
            }
            if is_in {
                in_call.push(p.user.clone());
            } else if entry.in_call.contains(&p.user) {
                self.media.evict(&entry.room, &p.user);
            }
        }
        entry.in_call = in_call;
    }

    /// Turns a machine event into a `call` frame and queues it.
    fn deliver(&self, id: CallId, event: &GroupEvent) {
        let kind = match &event.kind {
            GroupEventKind::State(roster) => wire_roster(roster),
            GroupEventKind::Invited { by, media } => {
                CallEvent::Invited { by: by.user.to_string(), media: wire_media(*media) }
            }
            GroupEventKind::InviteOver(reason) => CallEvent::InviteOver { reason: wire_invite_over(*reason) },
            GroupEventKind::Removed { by } => CallEvent::Removed { by: by.user.to_string() },
            GroupEventKind::Muted { by, kind } => CallEvent::Muted {
                by: by.user.to_string(),
                kind: match kind {
                    MuteKind::Audio => proto::MuteKind::Audio,
                    MuteKind::Video => proto::MuteKind::Video,
                },
            },
        };
        self.route.deliver(&event.to, &ServerFrame::Call { req: 0, call: id.to_string(), event: kind });
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
            match entry.call.ended() {
                Some((_, ended_ms)) if super::timer::lingered(ended_ms, now_ms) => drop(reg.calls.remove(&id)),
                Some(_) => {}
                None => {
                    let out = entry.call.on_timeout(now_ms);
                    self.apply(&mut reg, id, out, now_ms);
                }
            }
        }
    }

    /// Runs the timers until `stop` (the loop the 1:1 service runs too). `clock` is unix ms.
    pub async fn run_timers(self: Arc<Self>, clock: fn() -> u64, stop: CancellationToken) {
        super::timer::run(&self.wake, |now_ms| self.fire(now_ms), clock, stop).await
    }

    /// Group calls held here that have not ended.
    pub fn active(&self) -> usize {
        self.registry().calls.values().filter(|e| e.call.ended().is_none()).count()
    }
}

/// A user a host action names, in the requester's tenant.
fn target_user(by: &UserKey, user: &str) -> Result<UserKey, GroupActionError> {
    if !crate::auth::valid_sub(user) {
        return Err(GroupActionError::BadUser);
    }
    Ok(UserKey { tenant: by.tenant.clone(), user: user.into() })
}

fn media_room_key(tenant: &Arc<str>, id: CallId) -> Option<RoomKey> {
    let room = RoomName::parse(&format!("call:{id}")).ok()?;
    Some(RoomKey { tenant: tenant.clone(), room })
}

fn mute_kind(kind: proto::MuteKind) -> MuteKind {
    match kind {
        proto::MuteKind::Audio => MuteKind::Audio,
        proto::MuteKind::Video => MuteKind::Video,
    }
}

fn wire_invite_over(reason: InviteOver) -> proto::InviteOverReason {
    use proto::InviteOverReason as R;
    match reason {
        InviteOver::Joined => R::Joined,
        InviteOver::Declined => R::Declined,
        InviteOver::Missed => R::Missed,
        InviteOver::Removed => R::Removed,
        InviteOver::Ended => R::Ended,
    }
}

/// The roster as the wire carries it (devices and deadlines stay in the relay).
fn wire_roster(roster: &Roster) -> CallEvent {
    use proto::GroupStatus as S;
    let participants = roster
        .participants
        .iter()
        .map(|p| proto::GroupParticipant {
            user: p.user.user.to_string(),
            role: match p.role {
                Role::Host => proto::GroupRole::Host,
                Role::Member => proto::GroupRole::Member,
            },
            status: match p.status {
                Status::Invited { .. } => S::Invited,
                Status::Joined { .. } => S::Joined,
                Status::Away { .. } => S::Away,
                Status::Declined => S::Declined,
                Status::Missed => S::Missed,
                Status::Left => S::Left,
                Status::Removed => S::Removed,
            },
            muted_audio: p.muted.audio,
            muted_video: p.muted.video,
        })
        .collect();
    CallEvent::Group {
        host: roster.host.user.to_string(),
        media: wire_media(roster.media),
        participants,
        ended: roster.ended.map(|end| match end {
            super::group::GroupEnd::AllLeft => proto::GroupEndReason::AllLeft,
            super::group::GroupEnd::EndedByHost => proto::GroupEndReason::EndedByHost,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Identity;
    use crate::outbox::{CONTROL, Outbox};

    const T0: u64 = 1_000_000;

    /// What the service asked of the media plane, in order.
    #[derive(Default)]
    struct Recorded(Mutex<Vec<String>>);

    impl MediaRooms for Recorded {
        fn hold(&self, room: &RoomKey, user: &UserKey, hold: Hold, _now_ms: u64) {
            let line = format!("hold {} {} a={} v={}", room.room, user.user, hold.audio, hold.video);
            self.0.lock().unwrap().push(line);
        }

        fn evict(&self, room: &RoomKey, user: &UserKey) {
            self.0.lock().unwrap().push(format!("evict {} {}", room.room, user.user));
        }
    }

    impl Recorded {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    struct Device {
        user: UserKey,
        identity: Identity,
        id: DeviceId,
        outbox: Arc<Outbox>,
    }

    impl Device {
        fn new(route: &dyn CallRoute, service: &GroupService, user: &str, id: DeviceId) -> Device {
            let (user, identity, outbox) = crate::call::service::tests::device_parts(user);
            let device = Device { user, identity, id, outbox };
            route.attach(&device.user, id, device.outbox.clone());
            service.connect(&device.user, id, T0);
            device
        }

        fn act(&self, service: &GroupService, call: &str, action: CallAction) -> Result<(), GroupActionError> {
            let who = Requester {
                identity: &self.identity,
                user: &self.user,
                device: self.id,
                outbox: &self.outbox,
                lane: CONTROL,
                req: 7,
            };
            service.act(who, call, action, T0)
        }
    }

    fn setup() -> (Arc<Recorded>, GroupService, Device, Device) {
        let route: Arc<dyn CallRoute> = Arc::new(super::super::LocalRoute::default());
        let media = Arc::new(Recorded::default());
        let service = GroupService::new(&CallsConfig::default(), route.clone(), media.clone());
        let alice = Device::new(&*route, &service, "alice", 1);
        let bob = Device::new(&*route, &service, "bob", 2);
        (media, service, alice, bob)
    }

    /// Alice creates a call with Bob, who joins; returns its id.
    fn call_with_bob(service: &GroupService, alice: &Device, bob: &Device) -> String {
        let create = CallAction::CreateGroup { media: proto::CallMedia::Audio, invite: vec!["bob".into()] };
        alice.act(service, "", create).unwrap();
        let id = service.registry().calls.keys().next().unwrap().to_string();
        bob.act(service, &id, CallAction::Join {}).unwrap();
        id
    }

    #[test]
    fn the_media_plane_follows_mutes_and_departures() {
        let (media, service, alice, bob) = setup();
        let id = call_with_bob(&service, &alice, &bob);
        let room = format!("call:{id}");
        assert!(media.take().is_empty(), "joining asks nothing of the media plane");
        let mute = CallAction::Mute { user: "bob".into(), kind: proto::MuteKind::Audio };
        alice.act(&service, &id, mute).unwrap();
        assert_eq!(media.take(), [format!("hold {room} bob a=true v=false")]);
        bob.act(&service, &id, CallAction::Unmute { kind: proto::MuteKind::Audio }).unwrap();
        assert_eq!(media.take(), [format!("hold {room} bob a=false v=false")]);
        // Removed while muted: the hold is lifted and the connections leave the room.
        let mute = CallAction::Mute { user: "bob".into(), kind: proto::MuteKind::Video };
        alice.act(&service, &id, mute).unwrap();
        media.take();
        alice.act(&service, &id, CallAction::Remove { user: "bob".into() }).unwrap();
        assert_eq!(media.take(), [format!("hold {room} bob a=false v=false"), format!("evict {room} bob")]);
        // The last one out: the call ends and the host leaves the room too.
        alice.act(&service, &id, CallAction::Leave {}).unwrap();
        assert_eq!(media.take(), [format!("evict {room} alice")]);
        assert_eq!(service.active(), 0);
    }

    #[test]
    fn only_participants_joined_in_the_call_are_in_it() {
        let (_, service, alice, bob) = setup();
        let create = CallAction::CreateGroup { media: proto::CallMedia::Video, invite: vec!["bob".into()] };
        alice.act(&service, "", create).unwrap();
        let id = *service.registry().calls.keys().next().unwrap();
        assert!(service.in_call(&alice.user, id));
        assert!(!service.in_call(&bob.user, id), "invited is not in");
        assert!(!service.in_call(&UserKey::new("acme", "mallory"), id));
        assert!(!service.in_call(&UserKey::new("globex", "alice"), id), "tenant-scoped");
        bob.act(&service, &id.to_string(), CallAction::Join {}).unwrap();
        assert!(service.in_call(&bob.user, id));
        // Bob's device drops: away is not in (the room is for a connected device).
        service.disconnect(&bob.user, bob.id, T0 + 1);
        assert!(!service.in_call(&bob.user, id));
    }

    #[test]
    fn only_the_device_a_participant_joined_on_reports_quality() {
        let (_, service, alice, bob) = setup();
        let id = call_with_bob(&service, &alice, &bob);
        let quality =
            CallAction::Quality { rtt_ms: 80.0, loss: 0.0, jitter_ms: 5.0, send_kbps: 900.0, recv_kbps: 800.0 };
        bob.act(&service, &id, quality.clone()).unwrap();
        // Bob's other device is not the one in the call.
        let route: &dyn CallRoute = &*service.route;
        let bob2 = Device::new(route, &service, "bob", 3);
        assert_eq!(bob2.act(&service, &id, quality.clone()).unwrap_err().code(), ErrorCode::NOT_IN_CALL);
        // Away is not joined.
        service.disconnect(&bob.user, bob.id, T0);
        assert_eq!(bob.act(&service, &id, quality.clone()).unwrap_err().code(), ErrorCode::NOT_IN_CALL);
        let bad = CallAction::Quality { rtt_ms: f64::NAN, loss: 0.0, jitter_ms: 0.0, send_kbps: 0.0, recv_kbps: 0.0 };
        assert_eq!(alice.act(&service, &id, bad).unwrap_err().code(), ErrorCode::BAD_REPORT);
        let summary = service.registry().calls.values().next().unwrap().record().quality.unwrap();
        let users: Vec<_> = summary.participants.iter().map(|p| (p.user.as_str(), p.samples, p.refused)).collect();
        assert_eq!(users, [("bob", 1, 0)], "refused reports change nothing, Alice never got one in");
    }

    #[test]
    fn requests_go_to_the_service_that_holds_the_call() {
        let (_, service, alice, bob) = setup();
        let id = call_with_bob(&service, &alice, &bob);
        assert!(service.handles("", &CallAction::CreateGroup { media: proto::CallMedia::Audio, invite: vec![] }));
        assert!(service.handles(&id, &CallAction::HangUp {}), "hang_up on a group call is leave");
        assert!(!service.handles("6f1c2a9be04d7731", &CallAction::HangUp {}), "a 1:1 call's id");
        let err = bob.act(&service, &id, CallAction::Answer {}).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BAD_REQUEST);
        let err = bob.act(&service, &id, CallAction::Invite { users: vec!["carol".into(), "x\n".into()] }).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BAD_REQUEST);
        // All or none: a refused invitee leaves the others uninvited.
        let invite = CallAction::Invite { users: vec!["carol".into(), "bob".into()] };
        assert_eq!(alice.act(&service, &id, invite).unwrap_err().code(), ErrorCode::ALREADY_INVITED);
        let carol = UserKey::new("acme", "carol");
        assert!(service.registry().calls.values().all(|e| e.call.participant(&carol).is_none()));
    }
}
