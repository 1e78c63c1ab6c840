//! Call history: one record per call (1:1 or group), listed per participant, newest first.
//!
//! A [`CallRecord`] is upserted by call id whenever the call starts, changes or ends, and every
//! participant's list gets it. Lists are read a page at a time with a [`HistoryCursor`]
//! (`before`), and one call can be read by id by its participants only. Everything is scoped by
//! tenant. Retention is per user: at most `max_calls_per_user` calls, none that started more
//! than `max_age_secs` ago ([`HistoryRetention`]).
//!
//! Three backends, like the room history in [`crate::store`], all run through one test suite:
//! [`MemoryCallHistory`] (tests, no disk), [`EmbeddedCallHistory`] (tables in the relay's redb
//! file) and [`RedisCallHistory`] (a region's shared Redis). Memory and embedded share the
//! logic below ([`upsert`], [`page`]), written once against three tables ([`Tables`]): the
//! records by `(tenant, id)`, each user's index by `(user, started, id)`, and every call by
//! `(started, tenant, id)` for age retention. Redis keeps a record key and a sorted set per user
//! and lets key expiry do the age retention (see its module).
//!
//! Why a record with a participant list rather than caller/callee columns: group calls (a host,
//! members joining and leaving) are the same record with `kind: group`, so the history and its
//! API do not change when they arrive. Stored as JSON: a record is small and written a few times
//! per call, and JSON lets later fields (`#[serde(default)]`) read older records.

mod embedded;
mod memory;
mod redis;
#[cfg(test)]
mod suite;

use std::fmt;
use std::str::FromStr;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use embedded::EmbeddedCallHistory;
pub use memory::MemoryCallHistory;
pub use redis::RedisCallHistory;

use super::group::{self, GroupCall};
use super::quality::QualitySummary;
use super::types::{CallId, CallSummary, EndReason, Media, Side};
use crate::hub::presence::{DeviceId, UserKey};
use crate::store::StoreError;

/// Most calls one page lists.
pub const MAX_PAGE: usize = 200;
/// Most participants a record holds.
pub const MAX_PARTICIPANTS: usize = 1000;
/// Longest user name a record holds (bytes): a token subject's.
pub const MAX_USER_BYTES: usize = crate::auth::MAX_SUB_BYTES;
/// Latest time a record may carry: 2^53 ms, exact as a JSON number and a Redis score.
pub const MAX_TIME_MS: u64 = 1 << 53;
/// Calls past their age deleted per write (memory and embedded): writes outnumber new calls, so
/// expired calls never pile up, and no write waits long behind a backlog.
const EXPIRE_PER_WRITE: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallKind {
    OneToOne,
    Group,
}

/// A participant's part in the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 1:1: placed the call.
    Caller,
    /// 1:1: was called.
    Callee,
    /// Group: created the call; may mute or remove others.
    Host,
    /// Group: invited or joined.
    Member,
}

impl From<Side> for Role {
    fn from(side: Side) -> Role {
        match side {
            Side::Caller => Role::Caller,
            Side::Callee => Role::Callee,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Participant {
    pub user: String,
    pub role: Role,
    /// The connection (on its relay) the user took part from; `None` if they never joined.
    pub device: Option<DeviceId>,
    /// When they joined (the caller: when the call started; the callee: the answer). `None` if
    /// they never did.
    pub joined_ms: Option<u64>,
    /// When they last left; `None` while they are in the call or if they never joined.
    pub left_ms: Option<u64>,
}

/// One call in the history, as stored and as the server API returns it (docs/calls.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    #[serde(with = "hex_id")]
    pub id: CallId,
    pub tenant: String,
    pub kind: CallKind,
    #[serde(with = "media_name")]
    pub media: Media,
    pub participants: Vec<Participant>,
    pub started_ms: u64,
    /// 1:1: the answer; group: when a second participant joined.
    pub answered_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    /// The end reason's code (docs/calls.md, "Reasons"); `None` while the call goes on.
    pub reason: Option<String>,
    /// Who hung up (`hangup`).
    pub by: Option<Role>,
    /// Whose connection was lost (`connection_lost`).
    pub side: Option<Role>,
    /// Talk time, answer to end; 0 for a call never answered; `None` while it goes on.
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub quality: Option<QualitySummary>,
}

impl CallRecord {
    /// Where the call sits in its participants' lists.
    pub fn cursor(&self) -> HistoryCursor {
        HistoryCursor { started_ms: self.started_ms, id: self.id }
    }

    pub fn has(&self, user: &str) -> bool {
        self.participants.iter().any(|p| p.user == user)
    }

    /// The record of a 1:1 call, from the state machine's summary.
    pub fn one_to_one(s: &CallSummary) -> CallRecord {
        let left = s.ended_ms;
        let caller = Participant {
            user: s.caller.user.to_string(),
            role: Role::Caller,
            device: Some(s.caller_device),
            joined_ms: Some(s.started_ms),
            left_ms: left,
        };
        let callee = Participant {
            user: s.callee.user.to_string(),
            role: Role::Callee,
            device: s.callee_device,
            joined_ms: s.answered_ms,
            left_ms: s.answered_ms.and(left),
        };
        let (by, side) = match s.reason {
            Some(EndReason::Hangup { by }) => (Some(by.into()), None),
            Some(EndReason::ConnectionLost { side }) => (None, Some(side.into())),
            _ => (None, None),
        };
        CallRecord {
            id: s.id,
            tenant: s.caller.tenant.to_string(),
            kind: CallKind::OneToOne,
            media: s.media,
            participants: vec![caller, callee],
            started_ms: s.started_ms,
            answered_ms: s.answered_ms,
            ended_ms: s.ended_ms,
            reason: s.reason.map(|r| r.code().to_owned()),
            by,
            side,
            duration_ms: s.duration_ms,
            quality: None,
        }
    }

    /// The record of a group call: everyone ever invited (the creator, `host`, first), when
    /// they first joined and when they last left (`None` while in). It counts as answered when
    /// a second participant joined; `duration_ms` runs from then to the end.
    pub fn group(call: &GroupCall) -> CallRecord {
        let participants: Vec<Participant> = call
            .roster()
            .participants
            .iter()
            .enumerate()
            .map(|(i, p)| Participant {
                user: p.user.user.to_string(),
                // The host role moves during a call; the record keeps who created it.
                role: if i == 0 { Role::Host } else { Role::Member },
                device: match p.status {
                    group::Status::Joined { device } => Some(device),
                    _ => None,
                },
                joined_ms: p.first_joined_ms,
                left_ms: if p.status.is_in() { None } else { p.last_left_ms },
            })
            .collect();
        let mut joins: Vec<u64> = participants.iter().filter_map(|p| p.joined_ms).collect();
        joins.sort_unstable();
        let answered_ms = joins.get(1).copied();
        let ended = call.ended();
        CallRecord {
            id: call.id(),
            tenant: call.tenant().to_string(),
            kind: CallKind::Group,
            media: call.media(),
            participants,
            started_ms: call.started_ms(),
            answered_ms,
            ended_ms: ended.map(|(_, at)| at),
            reason: ended.map(|(reason, _)| reason.code().to_owned()),
            by: None,
            side: None,
            duration_ms: ended.map(|(_, at)| answered_ms.map_or(0, |from| at.saturating_sub(from))),
            quality: None,
        }
    }

    /// Refuses a record the stores cannot hold or index (they key by tenant, user and start).
    pub fn check(&self) -> Result<(), HistoryError> {
        let invalid = |what: String| Err(HistoryError::Invalid(what));
        if !crate::auth::valid_tenant(&self.tenant) {
            return invalid(format!("tenant {:?} is not a valid tenant name", self.tenant));
        }
        if self.participants.is_empty() || self.participants.len() > MAX_PARTICIPANTS {
            return invalid(format!("a call has 1-{MAX_PARTICIPANTS} participants"));
        }
        if self.kind == CallKind::OneToOne
            && !matches!(self.participants.as_slice(), [a, b] if a.role == Role::Caller && b.role == Role::Callee)
        {
            return invalid("a 1:1 call has a caller, then a callee".into());
        }
        for (i, p) in self.participants.iter().enumerate() {
            if p.user.is_empty() || p.user.len() > MAX_USER_BYTES || p.user.contains('\0') {
                return invalid(format!("participant {i}: user must be 1-{MAX_USER_BYTES} bytes, no zero byte"));
            }
            if self.participants[..i].iter().any(|q| q.user == p.user) {
                return invalid(format!("participant {:?} is listed twice", p.user));
            }
        }
        let times = [Some(self.started_ms), self.answered_ms, self.ended_ms];
        if times.into_iter().flatten().any(|t| t >= MAX_TIME_MS) {
            return invalid(format!("times must be below 2^53 ms ({MAX_TIME_MS})"));
        }
        Ok(())
    }
}

/// A position in a user's list: calls sort by start time, then id, newest first. A page's
/// `next` is the last call's cursor; the page after it lists the calls strictly older.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HistoryCursor {
    pub started_ms: u64,
    pub id: CallId,
}

/// `<started_ms>-<id as 16 hex digits>`; a plain `<ms>` means "calls that started before it".
impl fmt::Display for HistoryCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.started_ms, self.id)
    }
}

impl FromStr for HistoryCursor {
    type Err = HistoryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || HistoryError::Invalid(format!("before {s:?} is not <ms> or <ms>-<16 hex digits>"));
        let (ms, id) = match s.split_once('-') {
            Some((ms, id)) if id.len() == 16 => (ms, u64::from_str_radix(id, 16).map_err(|_| bad())?),
            Some(_) => return Err(bad()),
            None => (s, 0),
        };
        let started_ms = ms.parse().map_err(|_| bad())?;
        Ok(HistoryCursor { started_ms, id: CallId(id) })
    }
}

/// One page of a user's list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CallPage {
    /// Newest first.
    pub calls: Vec<CallRecord>,
    /// Where the next (older) page starts; `None` when this one reached the end.
    #[serde(serialize_with = "display_opt")]
    pub next: Option<HistoryCursor>,
}

fn display_opt<S: serde::Serializer>(v: &Option<HistoryCursor>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(c) => s.collect_str(c),
        None => s.serialize_none(),
    }
}

/// How much history each user keeps (`[calls.history]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRetention {
    pub max_calls_per_user: u64,
    pub max_age_ms: u64,
}

impl HistoryRetention {
    /// Calls that started before this are gone.
    pub fn cutoff(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.max_age_ms)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A record or query the caller should not have made; nothing was stored.
    #[error("call history: {0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where calls are remembered. Writes are upserts, so recording the same call again (a retry,
/// or every state change) is safe.
pub trait CallHistory: Send + Sync + 'static {
    /// Stores the call (replacing an earlier record with its id) in every participant's list,
    /// then applies retention to those lists.
    fn record(&self, call: CallRecord, now_ms: u64) -> BoxFuture<'_, Result<(), HistoryError>>;

    /// The user's calls started strictly before `before` (the newest when `None`), newest first,
    /// at most `limit` (1-[`MAX_PAGE`]).
    fn list(
        &self,
        user: &UserKey,
        before: Option<HistoryCursor>,
        limit: usize,
        now_ms: u64,
    ) -> BoxFuture<'_, Result<CallPage, HistoryError>>;

    /// The call, if it is in the user's list: for anyone who did not take part it does not
    /// exist, and for a participant it is gone once retention dropped it from their list.
    fn get(&self, user: &UserKey, id: CallId, now_ms: u64) -> BoxFuture<'_, Result<Option<CallRecord>, HistoryError>>;
}

/// Refuses a page size outside 1-[`MAX_PAGE`].
pub fn check_limit(limit: usize) -> Result<(), HistoryError> {
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(())
    } else {
        Err(HistoryError::Invalid(format!("limit must be 1-{MAX_PAGE}")))
    }
}

/// Reads of the three tables the memory and embedded backends keep.
pub(crate) trait ReadTables {
    fn call(&self, tenant: &str, id: CallId) -> Result<Option<CallRecord>, StoreError>;
    /// The user's entries strictly before `before` (all when `None`), newest first.
    fn index_before(
        &self,
        user: &UserKey,
        before: Option<HistoryCursor>,
        limit: usize,
    ) -> Result<Vec<HistoryCursor>, StoreError>;
    fn index_has(&self, user: &UserKey, at: HistoryCursor) -> Result<bool, StoreError>;
    /// The user's entries after the newest `keep`.
    fn index_beyond(&self, user: &UserKey, keep: u64) -> Result<Vec<HistoryCursor>, StoreError>;
    /// Calls that started before `cutoff_ms`, oldest first.
    fn started_before(&self, cutoff_ms: u64, limit: usize) -> Result<Vec<(String, HistoryCursor)>, StoreError>;
}

/// Writes of the three tables. A record and its `(started, tenant, id)` entry go together.
pub(crate) trait Tables: ReadTables {
    fn put_call(&mut self, call: &CallRecord) -> Result<(), StoreError>;
    fn delete_call(&mut self, tenant: &str, at: HistoryCursor) -> Result<(), StoreError>;
    /// Whether the entry is new.
    fn index_add(&mut self, user: &UserKey, at: HistoryCursor) -> Result<bool, StoreError>;
    fn index_remove(&mut self, user: &UserKey, at: HistoryCursor) -> Result<(), StoreError>;
}

fn key(tenant: &str, user: &str) -> UserKey {
    UserKey::new(tenant, user)
}

/// Records `call` (already checked), in one transaction of the caller's.
pub(crate) fn upsert(
    t: &mut impl Tables,
    call: &CallRecord,
    retention: &HistoryRetention,
    now_ms: u64,
) -> Result<(), StoreError> {
    let at = call.cursor();
    if let Some(old) = t.call(&call.tenant, call.id)? {
        // Participants that are gone, or every one if the start moved, leave their old entry.
        for p in old.participants.iter().filter(|p| old.started_ms != call.started_ms || !call.has(&p.user)) {
            t.index_remove(&key(&call.tenant, &p.user), old.cursor())?;
        }
        t.delete_call(&call.tenant, old.cursor())?;
    }
    t.put_call(call)?;
    for p in &call.participants {
        let user = key(&call.tenant, &p.user);
        // Only a new entry can push the list past its count (most writes update a call).
        if !t.index_add(&user, at)? {
            continue;
        }
        for trimmed in t.index_beyond(&user, retention.max_calls_per_user)? {
            t.index_remove(&user, trimmed)?;
            delete_if_unlisted(t, &call.tenant, trimmed)?;
        }
    }
    for (tenant, at) in t.started_before(retention.cutoff(now_ms), EXPIRE_PER_WRITE)? {
        if let Some(old) = t.call(&tenant, at.id)? {
            for p in &old.participants {
                t.index_remove(&key(&tenant, &p.user), at)?;
            }
        }
        t.delete_call(&tenant, at)?;
    }
    Ok(())
}

/// Deletes a call no participant lists any more (count retention trimmed it everywhere).
fn delete_if_unlisted(t: &mut impl Tables, tenant: &str, at: HistoryCursor) -> Result<(), StoreError> {
    let Some(call) = t.call(tenant, at.id)? else { return Ok(()) };
    for p in &call.participants {
        if t.index_has(&key(tenant, &p.user), at)? {
            return Ok(());
        }
    }
    t.delete_call(tenant, at)
}

/// One page of the user's list (limit already checked).
pub(crate) fn page(
    t: &(impl ReadTables + ?Sized),
    user: &UserKey,
    before: Option<HistoryCursor>,
    limit: usize,
    retention: &HistoryRetention,
    now_ms: u64,
) -> Result<CallPage, StoreError> {
    let cutoff = retention.cutoff(now_ms);
    let entries = t.index_before(user, before, limit + 1)?;
    let more = entries.len() > limit;
    let mut calls = Vec::with_capacity(limit.min(entries.len()));
    for at in entries.into_iter().take(limit).take_while(|at| at.started_ms >= cutoff) {
        if let Some(call) = t.call(&user.tenant, at.id)?.filter(|c| c.has(&user.user)) {
            calls.push(call);
        }
    }
    let next = if more && calls.len() == limit { calls.last().map(CallRecord::cursor) } else { None };
    Ok(CallPage { calls, next })
}

/// The call, if it is in the user's list (they took part, and retention kept it for them).
pub(crate) fn get(
    t: &(impl ReadTables + ?Sized),
    user: &UserKey,
    id: CallId,
    retention: &HistoryRetention,
    now_ms: u64,
) -> Result<Option<CallRecord>, StoreError> {
    let Some(call) = t.call(&user.tenant, id)? else { return Ok(None) };
    let listed = call.started_ms >= retention.cutoff(now_ms) && t.index_has(user, call.cursor())?;
    Ok(listed.then_some(call))
}

/// Call ids as 16 hex digits (JSON numbers are exact only to 2^53).
mod hex_id {
    use super::CallId;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &CallId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<CallId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        u64::from_str_radix(&text, 16).map(CallId).map_err(serde::de::Error::custom)
    }
}

/// `audio` or `video`.
mod media_name {
    use super::Media;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(media: &Media, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match media {
            Media::Audio => "audio",
            Media::Video => "video",
        })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Media, D::Error> {
        match <std::borrow::Cow<'de, str>>::deserialize(d)?.as_ref() {
            "audio" => Ok(Media::Audio),
            "video" => Ok(Media::Video),
            other => Err(serde::de::Error::unknown_variant(other, &["audio", "video"])),
        }
    }
}

/// A stored record's bytes (JSON).
pub(crate) fn encode(call: &CallRecord) -> Vec<u8> {
    serde_json::to_vec(call).unwrap_or_default()
}

pub(crate) fn decode(table: &'static str, bytes: &[u8]) -> Result<CallRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt { table, detail: e.to_string() })
}
