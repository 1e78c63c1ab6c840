//! The group call state machine: one [`GroupCall`] per group call, sans-IO like the 1:1
//! [`super::Call`]. It owns membership and permissions; the media itself goes through the
//! SFU-lite plane ([`crate::media`]), which asks this layer who may publish and whether the host
//! muted someone.
//!
//! Why a separate machine: a 1:1 call is two fixed sides racing over one answer; a group call is
//! a meeting that people are invited to, join, leave and rejoin while it lasts, with a host who
//! steers it. Sharing one machine would make every 1:1 rule a special case of a roster.
//!
//! # Membership
//!
//! Each participant has one status: `invited` (rings on every device of theirs until the ring
//! timeout), `joined` (one device is in the call), `away` (that device dropped; back with `join`
//! from any device within the grace), `declined`, `missed` (the invitation timed out), `left`,
//! `removed` (by the host). A participant who declined, missed or left may still `join` while
//! the call lasts (the invitation is the ticket, as a meeting link is); a removed one may not,
//! until invited again. The cap (`max_participants`) counts the active ones: invited, joined
//! and away.
//!
//! # Host
//!
//! The creator is the host. Only the host invites (unless `members_can_invite`), removes, mutes
//! others, hands the role over or ends the call for everyone. A host can mute a participant's
//! audio or video; only that participant can unmute (nobody is put on air without consent).
//! When the host leaves (or their grace passes) the role goes to the participant who joined
//! earliest of those still in, so a call never loses its host while anybody is in it.
//!
//! # End
//!
//! The call ends `all_left` when nobody is joined or away any more (pending invitations end
//! with it), or `ended_by_host`. Ended is final: every input is refused with `call_ended`.
//!
//! # Events
//!
//! - `state` (the whole roster, small by the cap) after every change, to every active
//!   participant and to the one the change was about (so a user who left or declined learns it
//!   on all their devices).
//! - `invited` to an invitee (all devices; or one device that connects while it rings): ring.
//! - `invite_over` to an invitee's devices when their invitation stops ringing (`joined`,
//!   `declined`, `missed`, `removed`, `ended`).
//! - `removed` to a removed participant, `muted` to a participant the host muted.
//!
//! Inputs are applied one at a time in the order the relay receives them; refused inputs change
//! nothing and emit nothing.

use super::types::{CallId, Media, Recipient};
use crate::hub::presence::{DeviceId, UserKey};

/// Limits and timeouts of group calls. The defaults are the documented ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupConfig {
    /// Active participants at most (invited, joined or away), the host included.
    pub max_participants: usize,
    /// How long an invitation rings before it counts as missed.
    pub ring_timeout_ms: u64,
    /// How long a participant whose device dropped has to come back.
    pub reconnect_grace_ms: u64,
    /// Whether participants other than the host may invite.
    pub members_can_invite: bool,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            max_participants: 16,
            ring_timeout_ms: 30_000,
            reconnect_grace_ms: 15_000,
            members_can_invite: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Host,
    Member,
}

/// A participant's place in the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Rings on their devices until `until_ms`.
    Invited {
        until_ms: u64,
    },
    /// `device` is in the call.
    Joined {
        device: DeviceId,
    },
    /// Their device dropped; `join` from any device before `until_ms` resumes.
    Away {
        until_ms: u64,
    },
    Declined,
    Missed,
    Left,
    Removed,
}

impl Status {
    /// Invited, joined or away: counts against the cap and receives the call's state.
    pub fn is_active(&self) -> bool {
        matches!(self, Status::Invited { .. } | Status::Joined { .. } | Status::Away { .. })
    }

    /// Joined or away: in the call (the call lasts while somebody is).
    pub fn is_in(&self) -> bool {
        matches!(self, Status::Joined { .. } | Status::Away { .. })
    }

    /// The documented name.
    pub fn code(&self) -> &'static str {
        match self {
            Status::Invited { .. } => "invited",
            Status::Joined { .. } => "joined",
            Status::Away { .. } => "away",
            Status::Declined => "declined",
            Status::Missed => "missed",
            Status::Left => "left",
            Status::Removed => "removed",
        }
    }
}

/// What the host turned off; the participant's own mute is a media-plane matter
/// (`track_mute`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostMute {
    pub audio: bool,
    pub video: bool,
}

/// Which medium a host mutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MuteKind {
    Audio,
    Video,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    pub user: UserKey,
    pub role: Role,
    pub status: Status,
    pub muted: HostMute,
    /// Who invited them (the host for the creator).
    pub invited_by: UserKey,
    /// When they first joined, and when they were last out of the call (left, removed, lost).
    pub first_joined_ms: Option<u64>,
    pub last_left_ms: Option<u64>,
    /// Time in the call so far, summed over joins.
    pub in_call_ms: u64,
    /// When the current stay began (joined or away), to add to `in_call_ms` at the next exit.
    stay_since_ms: Option<u64>,
}

/// Why a group call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupEnd {
    /// Nobody was joined or away any more.
    AllLeft,
    /// The host ended it for everyone.
    EndedByHost,
}

impl GroupEnd {
    pub fn code(&self) -> &'static str {
        match self {
            GroupEnd::AllLeft => "all_left",
            GroupEnd::EndedByHost => "ended_by_host",
        }
    }
}

/// Why an invitation stopped ringing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteOver {
    Joined,
    Declined,
    Missed,
    Removed,
    Ended,
}

impl InviteOver {
    pub fn code(&self) -> &'static str {
        match self {
            InviteOver::Joined => "joined",
            InviteOver::Declined => "declined",
            InviteOver::Missed => "missed",
            InviteOver::Removed => "removed",
            InviteOver::Ended => "ended",
        }
    }
}

/// The whole call as participants see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster {
    pub id: CallId,
    pub media: Media,
    pub host: UserKey,
    /// In the order they were first invited (the creator first).
    pub participants: Vec<Participant>,
    pub ended: Option<GroupEnd>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupEventKind {
    State(Roster),
    /// Ring: `by` invites you to a call of this `media`.
    Invited {
        by: UserKey,
        media: Media,
    },
    InviteOver(InviteOver),
    Removed {
        by: UserKey,
    },
    Muted {
        by: UserKey,
        kind: MuteKind,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEvent {
    pub to: Recipient,
    pub kind: GroupEventKind,
}

/// Why an input was refused. Codes shared with the 1:1 calls mean the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("not a participant of this call")]
    NotParticipant,
    #[error("participants must be in the caller's tenant")]
    CrossTenant,
    #[error("only the host can do this")]
    NotHost,
    #[error("the call is full")]
    CallFull,
    #[error("already invited or in the call")]
    AlreadyActive,
    #[error("already in the call")]
    AlreadyJoined,
    #[error("not invited (any more)")]
    NotInvited,
    #[error("not in the call")]
    NotInCall,
    #[error("removed from the call by the host")]
    Removed,
    #[error("the host cannot do this to themselves")]
    SelfTarget,
    #[error("too late: the deadline passed")]
    TimedOut,
    #[error("the call has ended ({})", .0.code())]
    Ended(GroupEnd),
}

impl GroupError {
    /// The documented error code (docs/calls.md).
    pub fn code(&self) -> &'static str {
        match self {
            GroupError::NotParticipant => "not_participant",
            GroupError::CrossTenant => "cross_tenant",
            GroupError::NotHost => "not_host",
            GroupError::CallFull => "call_full",
            GroupError::AlreadyActive => "already_invited",
            GroupError::AlreadyJoined => "already_joined",
            GroupError::NotInvited => "not_invited",
            GroupError::NotInCall => "not_in_call",
            GroupError::Removed => "removed",
            GroupError::SelfTarget => "self_target",
            GroupError::TimedOut => "timed_out",
            GroupError::Ended(_) => "call_ended",
        }
    }
}

/// What a successful input produced, in delivery order. Re-arm the call's timer at
/// [`GroupCall::next_deadline`] after each input.
pub type GroupOutput = Vec<GroupEvent>;

/// One group call.
#[derive(Debug, Clone)]
pub struct GroupCall {
    id: CallId,
    config: GroupConfig,
    media: Media,
    tenant: std::sync::Arc<str>,
    participants: Vec<Participant>,
    started_ms: u64,
    ended: Option<(GroupEnd, u64)>,
}

impl GroupCall {
    /// The host creates a call, joined on `host_device`, and invites `invitees` (each with the
    /// devices of theirs connected now; they all ring). Invitees listed twice, or the host
    /// among them, count once.
    pub fn create(
        id: CallId,
        host: UserKey,
        host_device: DeviceId,
        media: Media,
        invitees: Vec<(UserKey, Vec<DeviceId>)>,
        config: GroupConfig,
        now_ms: u64,
    ) -> Result<(GroupCall, GroupOutput), GroupError> {
        if invitees.iter().any(|(user, _)| user.tenant != host.tenant) {
            return Err(GroupError::CrossTenant);
        }
        let mut call = GroupCall {
            id,
            config,
            media,
            tenant: host.tenant.clone(),
            participants: Vec::new(),
            started_ms: now_ms,
            ended: None,
        };
        call.participants.push(Participant {
            user: host.clone(),
            role: Role::Host,
            status: Status::Joined { device: host_device },
            muted: HostMute::default(),
            invited_by: host.clone(),
            first_joined_ms: Some(now_ms),
            last_left_ms: None,
            in_call_ms: 0,
            stay_since_ms: Some(now_ms),
        });
        let mut unique: Vec<(UserKey, Vec<DeviceId>)> = Vec::new();
        for (user, devices) in invitees {
            if user != host && !unique.iter().any(|(u, _)| *u == user) {
                unique.push((user, devices));
            }
        }
        if 1 + unique.len() > config.max_participants {
            return Err(GroupError::CallFull);
        }
        let mut out = Vec::new();
        let mut rings = Vec::new();
        for (user, devices) in unique {
            call.participants.push(Participant {
                user: user.clone(),
                role: Role::Member,
                status: Status::Invited { until_ms: now_ms.saturating_add(config.ring_timeout_ms) },
                muted: HostMute::default(),
                invited_by: host.clone(),
                first_joined_ms: None,
                last_left_ms: None,
                in_call_ms: 0,
                stay_since_ms: None,
            });
            rings.push((user, devices));
        }
        call.push_state(None, &mut out);
        for (user, devices) in rings {
            call.ring(&user, &host, &devices, &mut out);
        }
        Ok((call, out))
    }

    /// `by` invites `user` (whose connected devices are `devices`). A participant who declined,
    /// missed, left or was removed can be invited again.
    pub fn invite(
        &mut self,
        by: &UserKey,
        user: UserKey,
        devices: &[DeviceId],
        now_ms: u64,
    ) -> Result<GroupOutput, GroupError> {
        let inviter = self.live(by)?;
        if !inviter.status.is_in() {
            return Err(GroupError::NotInCall);
        }
        if inviter.role != Role::Host && !self.config.members_can_invite {
            return Err(GroupError::NotHost);
        }
        if user.tenant != self.tenant {
            return Err(GroupError::CrossTenant);
        }
        let until_ms = now_ms.saturating_add(self.config.ring_timeout_ms);
        match self.index(&user) {
            Some(i) if self.participants[i].status.is_active() => return Err(GroupError::AlreadyActive),
            _ if self.active_count() >= self.config.max_participants => return Err(GroupError::CallFull),
            Some(i) => {
                let p = &mut self.participants[i];
                p.status = Status::Invited { until_ms };
                p.invited_by = by.clone();
                p.muted = HostMute::default();
            }
            None => self.participants.push(Participant {
                user: user.clone(),
                role: Role::Member,
                status: Status::Invited { until_ms },
                muted: HostMute::default(),
                invited_by: by.clone(),
                first_joined_ms: None,
                last_left_ms: None,
                in_call_ms: 0,
                stay_since_ms: None,
            }),
        }
        let mut out = Vec::new();
        self.push_state(None, &mut out);
        self.ring(&user, by, devices, &mut out);
        Ok(out)
    }

    /// `user` joins on `device`: an invitee answering, a participant coming back after leaving,
    /// or one whose device dropped resuming from a new device within the grace.
    pub fn join(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> Result<GroupOutput, GroupError> {
        let i = self.index(user).ok_or(GroupError::NotParticipant)?;
        if let Some((reason, _)) = self.ended {
            return Err(GroupError::Ended(reason));
        }
        let was = self.participants[i].status;
        match was {
            Status::Joined { .. } => return Err(GroupError::AlreadyJoined),
            Status::Removed => return Err(GroupError::Removed),
            Status::Invited { until_ms } | Status::Away { until_ms } if now_ms >= until_ms => {
                return Err(GroupError::TimedOut);
            }
            Status::Declined | Status::Missed | Status::Left if self.active_count() >= self.config.max_participants => {
                return Err(GroupError::CallFull);
            }
            _ => {}
        }
        let p = &mut self.participants[i];
        p.status = Status::Joined { device };
        p.first_joined_ms.get_or_insert(now_ms);
        if !matches!(was, Status::Away { .. }) {
            p.stay_since_ms = Some(now_ms);
        }
        let mut out = Vec::new();
        self.push_state(None, &mut out);
        if matches!(was, Status::Invited { .. }) {
            out.push(GroupEvent {
                to: Recipient::User(user.clone()),
                kind: GroupEventKind::InviteOver(InviteOver::Joined),
            });
        }
        Ok(out)
    }

    /// An invitee declines (from any device).
    pub fn decline(&mut self, user: &UserKey, now_ms: u64) -> Result<GroupOutput, GroupError> {
        let i = self.live_index(user)?;
        match self.participants[i].status {
            Status::Invited { until_ms } if now_ms >= until_ms => Err(GroupError::TimedOut),
            Status::Invited { .. } => {
                self.participants[i].status = Status::Declined;
                let mut out = Vec::new();
                self.push_state(Some(user), &mut out);
                out.push(GroupEvent {
                    to: Recipient::User(user.clone()),
                    kind: GroupEventKind::InviteOver(InviteOver::Declined),
                });
                Ok(out)
            }
            _ => Err(GroupError::NotInvited),
        }
    }

    /// A participant leaves (joined or away). The host's role passes on; the last one out ends
    /// the call.
    pub fn leave(&mut self, user: &UserKey, now_ms: u64) -> Result<GroupOutput, GroupError> {
        let i = self.live_index(user)?;
        if !self.participants[i].status.is_in() {
            return Err(GroupError::NotInCall);
        }
        let mut out = Vec::new();
        self.exit(i, Status::Left, now_ms, &mut out);
        Ok(out)
    }

    /// The host removes a participant (invited or in the call). They cannot join again unless
    /// invited again.
    pub fn remove(&mut self, by: &UserKey, user: &UserKey, now_ms: u64) -> Result<GroupOutput, GroupError> {
        let i = self.host_on(by, user)?.1;
        let was = self.participants[i].status;
        if !was.is_active() {
            return Err(GroupError::NotInCall);
        }
        let mut out = Vec::new();
        out.push(GroupEvent { to: Recipient::User(user.clone()), kind: GroupEventKind::Removed { by: by.clone() } });
        if matches!(was, Status::Invited { .. }) {
            out.push(GroupEvent {
                to: Recipient::User(user.clone()),
                kind: GroupEventKind::InviteOver(InviteOver::Removed),
            });
        }
        self.exit(i, Status::Removed, now_ms, &mut out);
        Ok(out)
    }

    /// The host mutes a participant's audio or video. Only the participant unmutes
    /// ([`GroupCall::unmute`]).
    pub fn mute(&mut self, by: &UserKey, user: &UserKey, kind: MuteKind) -> Result<GroupOutput, GroupError> {
        let i = self.host_on(by, user)?.1;
        let flag = self.in_call_mute(i, kind)?;
        if *flag {
            return Ok(Vec::new());
        }
        *flag = true;
        let mut out = vec![GroupEvent {
            to: Recipient::User(user.clone()),
            kind: GroupEventKind::Muted { by: by.clone(), kind },
        }];
        self.push_state(None, &mut out);
        Ok(out)
    }

    /// A participant lifts the host's mute on their own audio or video.
    pub fn unmute(&mut self, user: &UserKey, kind: MuteKind) -> Result<GroupOutput, GroupError> {
        let i = self.live_index(user)?;
        let flag = self.in_call_mute(i, kind)?;
        if !*flag {
            return Ok(Vec::new());
        }
        *flag = false;
        let mut out = Vec::new();
        self.push_state(None, &mut out);
        Ok(out)
    }

    /// The host hands the role to a participant in the call.
    pub fn make_host(&mut self, by: &UserKey, user: &UserKey) -> Result<GroupOutput, GroupError> {
        let (from, to) = self.host_on(by, user)?;
        if !self.participants[to].status.is_in() {
            return Err(GroupError::NotInCall);
        }
        self.participants[from].role = Role::Member;
        self.participants[to].role = Role::Host;
        self.participants[to].muted = HostMute::default();
        let mut out = Vec::new();
        self.push_state(None, &mut out);
        Ok(out)
    }

    /// The host ends the call for everyone.
    pub fn end(&mut self, by: &UserKey, now_ms: u64) -> Result<GroupOutput, GroupError> {
        self.host_check(by)?;
        let mut out = Vec::new();
        self.finish(GroupEnd::EndedByHost, now_ms, &mut out);
        Ok(out)
    }

    /// A device of `user` connected: if their invitation rings, that device rings too.
    pub fn device_connected(&mut self, user: &UserKey, device: DeviceId) -> GroupOutput {
        let mut out = Vec::new();
        if self.ended.is_none()
            && let Some(i) = self.index(user)
            && matches!(self.participants[i].status, Status::Invited { .. })
        {
            let by = self.participants[i].invited_by.clone();
            self.ring(user, &by, &[device], &mut out);
        }
        out
    }

    /// A device of `user` disconnected: if it was the one in the call, the participant is away
    /// until the grace passes.
    pub fn device_disconnected(&mut self, user: &UserKey, device: DeviceId, now_ms: u64) -> GroupOutput {
        let mut out = Vec::new();
        if self.ended.is_some() {
            return out;
        }
        if let Some(i) = self.index(user)
            && self.participants[i].status == (Status::Joined { device })
        {
            let until_ms = now_ms.saturating_add(self.config.reconnect_grace_ms);
            self.participants[i].status = Status::Away { until_ms };
            self.push_state(None, &mut out);
        }
        out
    }

    /// Applies the deadlines that passed: invitations nobody answered become `missed`, away
    /// participants whose grace passed have `left`. Call it at [`GroupCall::next_deadline`].
    pub fn on_timeout(&mut self, now_ms: u64) -> GroupOutput {
        let mut out = Vec::new();
        for i in 0..self.participants.len() {
            if self.ended.is_some() {
                break;
            }
            match self.participants[i].status {
                Status::Invited { until_ms } if until_ms <= now_ms => {
                    self.participants[i].status = Status::Missed;
                    let user = self.participants[i].user.clone();
                    self.push_state(Some(&user), &mut out);
                    out.push(GroupEvent {
                        to: Recipient::User(user),
                        kind: GroupEventKind::InviteOver(InviteOver::Missed),
                    });
                }
                Status::Away { until_ms } if until_ms <= now_ms => self.exit(i, Status::Left, now_ms, &mut out),
                _ => {}
            }
        }
        out
    }

    /// When [`GroupCall::on_timeout`] has something to do next, if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.ended.is_some() {
            return None;
        }
        self.participants
            .iter()
            .filter_map(|p| match p.status {
                Status::Invited { until_ms } | Status::Away { until_ms } => Some(until_ms),
                _ => None,
            })
            .min()
    }

    pub fn id(&self) -> CallId {
        self.id
    }

    pub fn media(&self) -> Media {
        self.media
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }

    /// The end and when, once ended.
    pub fn ended(&self) -> Option<(GroupEnd, u64)> {
        self.ended
    }

    pub fn participant(&self, user: &UserKey) -> Option<&Participant> {
        self.index(user).map(|i| &self.participants[i])
    }

    /// Checks that `device` of `user` may report quality: the user is joined on that device
    /// in a call that has not ended (`NotInCall` otherwise, `NotParticipant` for a stranger).
    pub fn joined_on(&self, user: &UserKey, device: DeviceId) -> Result<(), GroupError> {
        match self.live(user)?.status {
            Status::Joined { device: d } if d == device => Ok(()),
            _ => Err(GroupError::NotInCall),
        }
    }

    /// Every active participant (invited, joined or away): who is told what happens in the call.
    pub fn active_users(&self) -> Vec<UserKey> {
        self.recipients(None)
    }

    /// Whether `user` may send media in this call now: in the call (joined), and for the
    /// medium, not muted by the host. The media plane asks this before forwarding.
    pub fn may_send(&self, user: &UserKey, kind: MuteKind) -> bool {
        self.participant(user).is_some_and(|p| {
            self.ended.is_none()
                && matches!(p.status, Status::Joined { .. })
                && match kind {
                    MuteKind::Audio => !p.muted.audio,
                    MuteKind::Video => !p.muted.video,
                }
        })
    }

    pub fn roster(&self) -> Roster {
        Roster {
            id: self.id,
            media: self.media,
            host: self.host().map(|p| p.user.clone()).unwrap_or_else(|| self.participants[0].user.clone()),
            participants: self.participants.clone(),
            ended: self.ended.map(|(reason, _)| reason),
        }
    }

    fn host(&self) -> Option<&Participant> {
        self.participants.iter().find(|p| p.role == Role::Host)
    }

    fn index(&self, user: &UserKey) -> Option<usize> {
        self.participants.iter().position(|p| p.user == *user)
    }

    fn active_count(&self) -> usize {
        self.participants.iter().filter(|p| p.status.is_active()).count()
    }

    /// A participant of a call that has not ended. Non-participants are refused first, so
    /// they learn nothing about the call.
    fn live_index(&self, user: &UserKey) -> Result<usize, GroupError> {
        let i = self.index(user).ok_or(GroupError::NotParticipant)?;
        match self.ended {
            Some((reason, _)) => Err(GroupError::Ended(reason)),
            None => Ok(i),
        }
    }

    fn live(&self, user: &UserKey) -> Result<&Participant, GroupError> {
        self.live_index(user).map(|i| &self.participants[i])
    }

    /// Participant `i`'s host-mute flag for `kind`, if they are in the call.
    fn in_call_mute(&mut self, i: usize, kind: MuteKind) -> Result<&mut bool, GroupError> {
        let p = &mut self.participants[i];
        if !p.status.is_in() {
            return Err(GroupError::NotInCall);
        }
        Ok(match kind {
            MuteKind::Audio => &mut p.muted.audio,
            MuteKind::Video => &mut p.muted.video,
        })
    }

    /// `by` is the host acting on another participant, `user`: both indexes.
    fn host_on(&self, by: &UserKey, user: &UserKey) -> Result<(usize, usize), GroupError> {
        let host = self.host_check(by)?;
        if by == user {
            return Err(GroupError::SelfTarget);
        }
        Ok((host, self.index(user).ok_or(GroupError::NotParticipant)?))
    }

    /// `by` is the host and in the call; their index.
    fn host_check(&self, by: &UserKey) -> Result<usize, GroupError> {
        let i = self.live_index(by)?;
        if self.participants[i].role != Role::Host {
            return Err(GroupError::NotHost);
        }
        Ok(i)
    }

    /// Participant `i` goes out of the call (`to`: left or removed); the host role passes on,
    /// and the call ends if nobody is in any more.
    fn exit(&mut self, i: usize, to: Status, now_ms: u64, out: &mut GroupOutput) {
        let p = &mut self.participants[i];
        if let Some(since) = p.stay_since_ms.take() {
            p.in_call_ms += now_ms.saturating_sub(since);
            p.last_left_ms = Some(now_ms);
        }
        p.status = to;
        p.muted = HostMute::default();
        let user = p.user.clone();
        if p.role == Role::Host {
            p.role = Role::Member;
            let next = self
                .participants
                .iter()
                .enumerate()
                .filter(|(_, q)| q.status.is_in())
                .min_by_key(|(_, q)| q.stay_since_ms.unwrap_or(u64::MAX))
                .map(|(j, _)| j);
            if let Some(j) = next {
                self.participants[j].role = Role::Host;
                self.participants[j].muted = HostMute::default();
            }
        }
        if self.participants.iter().any(|q| q.status.is_in()) {
            self.push_state(Some(&user), out);
        } else {
            self.finish_with(GroupEnd::AllLeft, now_ms, Some(&user), out);
        }
    }

    fn finish(&mut self, reason: GroupEnd, now_ms: u64, out: &mut GroupOutput) {
        self.finish_with(reason, now_ms, None, out);
    }

    /// Ends the call: everyone active (and `also`) gets the final state, pending invitations
    /// stop ringing.
    fn finish_with(&mut self, reason: GroupEnd, now_ms: u64, also: Option<&UserKey>, out: &mut GroupOutput) {
        let recipients = self.recipients(also);
        let mut ringing = Vec::new();
        for p in &mut self.participants {
            if let Some(since) = p.stay_since_ms.take() {
                p.in_call_ms += now_ms.saturating_sub(since);
                p.last_left_ms = Some(now_ms);
            }
            match p.status {
                Status::Invited { .. } => {
                    ringing.push(p.user.clone());
                    p.status = Status::Missed;
                }
                Status::Joined { .. } | Status::Away { .. } => p.status = Status::Left,
                _ => {}
            }
        }
        self.ended = Some((reason, now_ms));
        let roster = self.roster();
        for user in recipients {
            out.push(GroupEvent { to: Recipient::User(user), kind: GroupEventKind::State(roster.clone()) });
        }
        for user in ringing {
            out.push(GroupEvent { to: Recipient::User(user), kind: GroupEventKind::InviteOver(InviteOver::Ended) });
        }
    }

    /// Every active participant, plus `also` (the user a change was about) if not among them.
    fn recipients(&self, also: Option<&UserKey>) -> Vec<UserKey> {
        let mut users: Vec<UserKey> =
            self.participants.iter().filter(|p| p.status.is_active()).map(|p| p.user.clone()).collect();
        if let Some(user) = also
            && !users.contains(user)
        {
            users.push(user.clone());
        }
        users
    }

    fn push_state(&self, also: Option<&UserKey>, out: &mut GroupOutput) {
        let roster = self.roster();
        for user in self.recipients(also) {
            out.push(GroupEvent { to: Recipient::User(user), kind: GroupEventKind::State(roster.clone()) });
        }
    }

    fn ring(&self, user: &UserKey, by: &UserKey, devices: &[DeviceId], out: &mut GroupOutput) {
        for device in devices {
            out.push(GroupEvent {
                to: Recipient::Device { user: user.clone(), device: *device },
                kind: GroupEventKind::Invited { by: by.clone(), media: self.media },
            });
        }
    }
}
