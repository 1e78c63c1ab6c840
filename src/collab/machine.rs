//! One collaborative session as a pure object: its document and version, roles, status, the
//! devices joined to it, and the recent patches the conflict rule and patch-id dedupe look at.
//! No IO and no clock: every input takes `now_ms`, and what must be stored comes back as
//! [`Write`]s for the service to commit before it tells anyone.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::yjs::{YDoc, YError};
use crate::hub::presence::DeviceId;
use crate::proto::{
    ErrorCode, Payload, SessionEvent, SessionMember, SessionPatch, SessionRole, SessionSnapshot, SessionStatus,
};

/// Most versions a `conflict` answer names.
pub const MAX_CONFLICTING: usize = 100;
/// Longest patch id (bytes).
pub const MAX_PATCH_ID_BYTES: usize = 64;
/// Patch ids remembered per user for dedupe (and stored, so they survive a restart): a client
/// retries the few patches it has in flight, whatever the other users send meanwhile.
pub const DEDUPE_PER_USER: usize = 64;
/// Slack per operation in the document size bound (see [`CollabSession::patch`]).
const OP_SLACK: usize = 16;

/// The limits a session runs with (from `[sessions]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_document_bytes: usize,
    pub max_patch_bytes: usize,
    pub snapshot_every_patches: u32,
    pub snapshot_every_bytes: usize,
    /// Patches remembered for the conflict rule and dedupe (and kept in the store before the
    /// latest snapshot).
    pub keep_patches: usize,
    pub expire_after_ms: u64,
}

impl From<&crate::config::SessionsConfig> for Limits {
    fn from(c: &crate::config::SessionsConfig) -> Self {
        Limits {
            max_document_bytes: c.max_document_bytes as usize,
            max_patch_bytes: c.max_patch_bytes as usize,
            snapshot_every_patches: c.snapshot_every_patches,
            snapshot_every_bytes: c.snapshot_every_bytes as usize,
            keep_patches: c.keep_patches as usize,
            expire_after_ms: c.expire_after_secs.saturating_mul(1000),
        }
    }
}

/// What is stored about a session besides its document and patches (JSON in the store; later
/// fields need `#[serde(default)]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub owner: String,
    /// Roles given by the owner; everyone else has `default_role`.
    pub roles: BTreeMap<String, SessionRole>,
    pub default_role: SessionRole,
    pub status: SessionStatus,
    pub max_bytes: u32,
    pub created_ms: u64,
    /// The last join or leave: the session expires `expire_after` after it with nobody joined.
    pub last_active_ms: u64,
    /// The JSON Schema the document must validate against.
    #[serde(default)]
    pub schema: Option<Value>,
    /// What the document is (sessions stored before `yjs` sessions existed are JSON).
    #[serde(default)]
    pub kind: SessionKind,
}

/// What a session's document is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionKind {
    /// JSON, changed by RFC 6902 patches.
    #[default]
    Json,
    /// A Yjs document, changed by Yjs updates (`super::yjs`); snapshots and stored patches hold
    /// Yjs updates (binary).
    Yjs,
}

/// Something to commit, in order, before the events that follow from it go out.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    Meta(Meta),
    Patch(SessionPatch),
    /// A user's latest patch ids (dedupe), oldest first.
    Ids {
        user: String,
        ids: Vec<(String, u64)>,
    },
    /// The document at `version` (JSON text).
    Snapshot(SessionSnapshot),
}

/// Why an input was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("no such session")]
    Unknown,
    #[error("the session exists")]
    Exists,
    #[error("the session is closed")]
    Closed,
    #[error("this device has not joined the session")]
    NotIn,
    #[error("the token does not allow this session")]
    Denied,
    #[error("viewers cannot patch")]
    ReadOnly,
    #[error("only the owner can do this")]
    NotOwner,
    #[error("not a JSON patch: {0}")]
    BadPatch(String),
    #[error("the patch does not apply: {0}")]
    PatchFailed(String),
    #[error("the document would be {size} bytes, over the limit of {max}")]
    TooLarge { size: usize, max: usize },
    #[error("base version {base} is above the session's version {version}")]
    BadVersion { base: u64, version: u64 },
    #[error("the document would not validate against the session's schema: {0}")]
    Schema(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("session store: {0}")]
    Store(String),
    #[error("{0}")]
    WrongKind(&'static str),
    #[error("{0}")]
    BadYjs(String),
    /// The update failed while being applied: the session reloads from the store.
    #[error("{0}")]
    YjsBroken(String),
}

impl SessionError {
    pub fn code(&self) -> ErrorCode {
        match self {
            SessionError::Unknown => ErrorCode::UNKNOWN_SESSION,
            SessionError::Exists => ErrorCode::SESSION_EXISTS,
            SessionError::Closed => ErrorCode::SESSION_CLOSED,
            SessionError::NotIn => ErrorCode::NOT_IN_SESSION,
            SessionError::Denied => ErrorCode::PERMISSION_DENIED,
            SessionError::ReadOnly => ErrorCode::READ_ONLY,
            SessionError::NotOwner => ErrorCode::NOT_OWNER,
            SessionError::BadPatch(_) => ErrorCode::BAD_PATCH,
            SessionError::PatchFailed(_) => ErrorCode::PATCH_FAILED,
            SessionError::TooLarge { .. } => ErrorCode::DOCUMENT_TOO_LARGE,
            SessionError::BadVersion { .. } => ErrorCode::BAD_VERSION,
            SessionError::Schema(_) => ErrorCode::SCHEMA_VIOLATION,
            SessionError::BadRequest(_) => ErrorCode::BAD_REQUEST,
            SessionError::Store(_) => ErrorCode::STORE_UNAVAILABLE,
            SessionError::WrongKind(_) => ErrorCode::WRONG_SESSION_KIND,
            SessionError::BadYjs(_) | SessionError::YjsBroken(_) => ErrorCode::BAD_YJS_MESSAGE,
        }
    }
}

/// The outcome of an accepted `patch` input.
#[derive(Debug, Clone, PartialEq)]
pub enum PatchOutcome {
    /// Applied as `patch.version`: commit `writes` (the patch, maybe a snapshot), then answer
    /// `applied` and send `patched` to every device.
    Applied { patch: SessionPatch, rebased: bool, writes: Vec<Write> },
    /// The same user's patch id was applied before as `version`: answer it again, nothing else.
    Duplicate { version: u64 },
    /// Refused by the conflict rule; nothing changed.
    Conflict { base: u64, version: u64, conflicting: Vec<u64> },
}

/// A joined device.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Device {
    user: String,
    /// The highest role its token allows here.
    bound: SessionRole,
}

/// A patch the conflict rule and dedupe remember.
#[derive(Debug, Clone)]
struct Recent {
    patch: SessionPatch,
    /// The paths it changed, as pointer tokens.
    writes: Vec<Vec<String>>,
}

/// One session's state. See the module docs of `crate::collab` for the rules.
#[derive(Debug)]
pub struct CollabSession {
    meta: Meta,
    doc: Value,
    version: u64,
    /// An upper bound of the document's serialized size (exact after a snapshot or a check).
    size_bound: usize,
    recent: VecDeque<Recent>,
    /// Each user's latest patch ids and their versions, oldest first.
    ids: HashMap<String, VecDeque<(String, u64)>>,
    /// Patches and their bytes since the last snapshot.
    since_snapshot: (u32, usize),
    devices: BTreeMap<DeviceId, Device>,
    limits: Limits,
    validator: Option<super::schema::Validator>,
    /// The document of a `yjs` session (`doc` is then `null`).
    ydoc: Option<YDoc>,
}

/// The outcome of an accepted Yjs update (or sync step 2).
#[derive(Debug, Clone, PartialEq)]
pub enum YOutcome {
    /// It added something: the next version; commit `writes`, then answer and relay it.
    Applied { patch: SessionPatch, writes: Vec<Write> },
    /// It added nothing (or a viewer's sync step 2, ignored): the version stays.
    Unchanged { version: u64 },
}

/// Parses a document's JSON text.
fn parse_doc(doc: &Payload) -> Result<Value, SessionError> {
    serde_json::from_slice(&doc.0).map_err(|e| SessionError::BadPatch(format!("the document is not JSON: {e}")))
}

fn doc_size(doc: &Value) -> usize {
    serde_json::to_vec(doc).map_or(usize::MAX, |v| v.len())
}

/// Checks a patch id: 1-64 bytes.
pub fn check_patch_id(id: &str) -> Result<(), SessionError> {
    if id.is_empty() || id.len() > MAX_PATCH_ID_BYTES {
        return Err(SessionError::BadRequest(format!("patch id must be 1-{MAX_PATCH_ID_BYTES} bytes")));
    }
    Ok(())
}

/// The paths a patch writes and reads, as pointer tokens. Adding or removing at an array index
/// (a last token that is a number or `-`) shifts its siblings, so it counts as writing the
/// parent: the whole array.
fn touched(ops: &[json_patch::PatchOperation]) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    use json_patch::PatchOperation as Op;
    let tokens =
        |p: &json_patch::jsonptr::Pointer| p.tokens().map(|t| t.decoded().into_owned()).collect::<Vec<String>>();
    let shifting = |p: &json_patch::jsonptr::Pointer| {
        let mut t = tokens(p);
        if t.last().is_some_and(|last| last == "-" || (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))) {
            t.pop();
        }
        t
    };
    let (mut writes, mut reads) = (Vec::new(), Vec::new());
    for op in ops {
        match op {
            Op::Add(o) => writes.push(shifting(&o.path)),
            Op::Remove(o) => writes.push(shifting(&o.path)),
            Op::Replace(o) => writes.push(tokens(&o.path)),
            Op::Move(o) => {
                writes.push(shifting(&o.from));
                writes.push(shifting(&o.path));
            }
            Op::Copy(o) => {
                reads.push(tokens(&o.from));
                writes.push(shifting(&o.path));
            }
            Op::Test(o) => reads.push(tokens(&o.path)),
        }
    }
    (writes, reads)
}

/// Whether two paths overlap: one is the other or inside it.
fn overlaps(a: &[String], b: &[String]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

impl CollabSession {
    /// A new session owned by `owner`, with the initial document at version 0. Returns the
    /// writes that store it (meta and the version-0 snapshot).
    pub fn create(
        owner: &str,
        doc: &Payload,
        max_bytes: Option<u32>,
        default_role: SessionRole,
        schema: Option<&Payload>,
        limits: Limits,
        now_ms: u64,
    ) -> Result<(CollabSession, Vec<Write>), SessionError> {
        if default_role == SessionRole::Owner {
            return Err(SessionError::BadRequest("default_role must be editor or viewer".into()));
        }
        let max = (max_bytes.map_or(limits.max_document_bytes, |m| m as usize)).min(limits.max_document_bytes);
        if max == 0 {
            return Err(SessionError::BadRequest("max_bytes must be greater than 0".into()));
        }
        let value = parse_doc(doc)?;
        let size = doc_size(&value);
        if size > max {
            return Err(SessionError::TooLarge { size, max });
        }
        let schema = schema
            .map(|s| serde_json::from_slice::<Value>(&s.0))
            .transpose()
            .map_err(|e| SessionError::BadRequest(format!("the schema is not JSON: {e}")))?;
        let validator = schema
            .as_ref()
            .map(super::schema::Validator::compile)
            .transpose()
            .map_err(|e| SessionError::BadRequest(format!("bad schema: {e}")))?;
        if let Some(v) = &validator {
            v.check(&value).map_err(SessionError::Schema)?;
        }
        let meta = Meta {
            owner: owner.to_owned(),
            roles: BTreeMap::new(),
            default_role,
            status: SessionStatus::Open,
            max_bytes: max as u32,
            created_ms: now_ms,
            last_active_ms: now_ms,
            schema,
            kind: SessionKind::Json,
        };
        let snapshot = SessionSnapshot { version: 0, doc: Payload::json(&value) };
        let writes = vec![Write::Meta(meta.clone()), Write::Snapshot(snapshot)];
        let mut session = CollabSession::from_parts(meta, value, 0, size, limits);
        session.validator = validator;
        Ok((session, writes))
    }

    /// A new `yjs` session owned by `owner`, with an empty Yjs document at version 0, and the
    /// writes that store it.
    pub fn create_yjs(
        owner: &str,
        max_bytes: Option<u32>,
        default_role: SessionRole,
        limits: Limits,
        now_ms: u64,
    ) -> Result<(CollabSession, Vec<Write>), SessionError> {
        let (mut session, _) =
            CollabSession::create(owner, &Payload::from("null"), max_bytes, default_role, None, limits, now_ms)?;
        session.meta.kind = SessionKind::Yjs;
        let ydoc = YDoc::new();
        session.size_bound = ydoc.state().len();
        let mut writes = vec![Write::Meta(session.meta.clone())];
        session.ydoc = Some(ydoc);
        writes.push(Write::Snapshot(session.snapshot()));
        Ok((session, writes))
    }

    fn from_parts(meta: Meta, doc: Value, version: u64, size: usize, limits: Limits) -> CollabSession {
        CollabSession {
            ydoc: None,
            validator: None,
            meta,
            doc,
            version,
            size_bound: size,
            recent: VecDeque::new(),
            ids: HashMap::new(),
            since_snapshot: (0, 0),
            devices: BTreeMap::new(),
            limits,
        }
    }

    /// A stored session: its meta, latest snapshot and the patches after it (in order), replayed.
    /// `earlier`: stored patches up to the snapshot, remembered for the conflict rule;
    /// `ids`: each user's stored patch ids, for dedupe.
    pub fn restore(
        meta: Meta,
        snapshot: &SessionSnapshot,
        earlier: &[SessionPatch],
        patches: &[SessionPatch],
        ids: HashMap<String, Vec<(String, u64)>>,
        limits: Limits,
    ) -> Result<CollabSession, String> {
        if meta.kind == SessionKind::Yjs {
            return CollabSession::restore_yjs(meta, snapshot, patches, limits);
        }
        let doc = parse_doc(&snapshot.doc).map_err(|e| e.to_string())?;
        let size = doc_size(&doc);
        let validator = meta.schema.as_ref().map(super::schema::Validator::compile).transpose()?;
        let mut session = CollabSession::from_parts(meta, doc, snapshot.version, size, limits);
        session.validator = validator;
        session.ids = ids.into_iter().map(|(user, ids)| (user, ids.into())).collect();
        for p in earlier.iter().filter(|p| p.version <= snapshot.version) {
            let ops: json_patch::Patch = serde_json::from_slice(&p.patch.0).map_err(|e| e.to_string())?;
            session.remember(p, touched(&ops).0);
        }
        for p in patches {
            if p.version != session.version + 1 {
                return Err(format!("patch {} follows version {}", p.version, session.version));
            }
            let ops: json_patch::Patch = serde_json::from_slice(&p.patch.0).map_err(|e| e.to_string())?;
            json_patch::patch(&mut session.doc, &ops).map_err(|e| format!("stored patch {}: {e}", p.version))?;
            session.version = p.version;
            session.size_bound += p.patch.len() + OP_SLACK * ops.len();
            session.since_snapshot.0 += 1;
            session.since_snapshot.1 += p.patch.len();
            session.remember(p, touched(&ops).0);
        }
        Ok(session)
    }

    fn restore_yjs(
        meta: Meta,
        snapshot: &SessionSnapshot,
        patches: &[SessionPatch],
        limits: Limits,
    ) -> Result<CollabSession, String> {
        let ydoc = YDoc::from_state(&snapshot.doc.0).map_err(|e| format!("stored Yjs snapshot: {e}"))?;
        let mut session = CollabSession::from_parts(meta, Value::Null, snapshot.version, snapshot.doc.len(), limits);
        for p in patches {
            if p.version != session.version + 1 {
                return Err(format!("update {} follows version {}", p.version, session.version));
            }
            ydoc.apply(&p.patch.0).map_err(|e| format!("stored update {}: {e}", p.version))?;
            session.version = p.version;
            session.size_bound += p.patch.len();
            session.since_snapshot.0 += 1;
            session.since_snapshot.1 += p.patch.len();
        }
        session.ydoc = Some(ydoc);
        Ok(session)
    }

    fn remember(&mut self, p: &SessionPatch, writes: Vec<Vec<String>>) {
        let ids = self.ids.entry(p.user.clone()).or_default();
        if !ids.iter().any(|(id, _)| *id == p.id) {
            ids.push_back((p.id.clone(), p.version));
            if ids.len() > DEDUPE_PER_USER {
                ids.pop_front();
            }
        }
        self.recent.push_back(Recent { patch: p.clone(), writes });
        if self.recent.len() > self.limits.keep_patches.max(1) {
            self.recent.pop_front();
        }
    }

    /// The version a user's patch id was applied as, if it is remembered.
    fn applied_as(&self, user: &str, id: &str) -> Option<u64> {
        self.ids.get(user)?.iter().find(|(known, _)| known == id).map(|(_, version)| *version)
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn status(&self) -> SessionStatus {
        self.meta.status
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn doc(&self) -> &Value {
        &self.doc
    }

    /// The document now, as a snapshot.
    pub fn snapshot(&self) -> SessionSnapshot {
        match &self.ydoc {
            Some(ydoc) => SessionSnapshot { version: self.version, doc: Payload::from(ydoc.state()) },
            None => SessionSnapshot { version: self.version, doc: Payload::json(&self.doc) },
        }
    }

    /// The Yjs document of a `yjs` session.
    pub fn ydoc(&self) -> Option<&YDoc> {
        self.ydoc.as_ref()
    }

    pub fn kind(&self) -> SessionKind {
        self.meta.kind
    }

    /// The oldest version a device may say it has and still get only the patches after it
    /// (the ones the session remembers).
    pub fn oldest_base(&self) -> u64 {
        self.recent.front().map_or(self.version, |r| r.patch.version - 1)
    }

    /// The patches after `version`, if the session still remembers all of them.
    pub fn patches_after(&self, version: u64) -> Option<Vec<SessionPatch>> {
        if version > self.version || version < self.oldest_base() {
            return None;
        }
        Some(self.recent.iter().filter(|r| r.patch.version > version).map(|r| r.patch.clone()).collect())
    }

    /// A user's role: the session's, not bounded by any token.
    pub fn role_of(&self, user: &str) -> SessionRole {
        if user == self.meta.owner {
            return SessionRole::Owner;
        }
        self.meta.roles.get(user).copied().unwrap_or(self.meta.default_role)
    }

    /// A joined device's effective role: its user's, bounded by its token.
    pub fn device_role(&self, device: DeviceId) -> Option<SessionRole> {
        self.devices.get(&device).map(|d| self.role_of(&d.user).min(d.bound))
    }

    pub fn device_user(&self, device: DeviceId) -> Option<&str> {
        self.devices.get(&device).map(|d| d.user.as_str())
    }

    /// The joined devices and their users.
    pub fn devices(&self) -> impl Iterator<Item = (DeviceId, &str)> {
        self.devices.iter().map(|(id, d)| (*id, d.user.as_str()))
    }

    fn present(&self, user: &str) -> bool {
        self.devices.values().any(|d| d.user == user)
    }

    fn member(&self, user: &str) -> SessionMember {
        SessionMember { user: user.to_owned(), role: self.role_of(user), present: self.present(user) }
    }

    /// The users with a role of their own or a joined device, the owner first.
    pub fn members(&self) -> Vec<SessionMember> {
        let mut users: Vec<&str> = vec![&self.meta.owner];
        users.extend(self.meta.roles.keys().map(String::as_str));
        users.extend(self.devices.values().map(|d| d.user.as_str()));
        let mut seen = std::collections::HashSet::new();
        users.into_iter().filter(|u| seen.insert(*u)).map(|u| self.member(u)).collect()
    }

    /// A device joins (again). Returns its effective role, the events for the other devices (a
    /// `member` event when the user was not present) and the meta write (last activity).
    pub fn join(
        &mut self,
        device: DeviceId,
        user: &str,
        bound: SessionRole,
        now_ms: u64,
    ) -> (SessionRole, Vec<SessionEvent>, Write) {
        let was_present = self.present(user);
        self.devices.insert(device, Device { user: user.to_owned(), bound });
        self.meta.last_active_ms = now_ms;
        let events = if was_present { vec![] } else { vec![SessionEvent::Member { member: self.member(user) }] };
        (self.role_of(user).min(bound), events, Write::Meta(self.meta.clone()))
    }

    /// A device leaves (or disconnects). Returns the events (a `member` event and the end of the
    /// user's cursor when it was their last device) and the meta write; nothing if it was not
    /// joined.
    pub fn leave(&mut self, device: DeviceId, now_ms: u64) -> Option<(Vec<SessionEvent>, Write)> {
        let gone = self.devices.remove(&device)?;
        self.meta.last_active_ms = now_ms;
        let events = if self.present(&gone.user) {
            vec![]
        } else {
            vec![
                SessionEvent::Member { member: self.member(&gone.user) },
                SessionEvent::Cursor { user: gone.user, data: None },
            ]
        };
        Some((events, Write::Meta(self.meta.clone())))
    }

    /// Whether the session expired: nobody joined and no join or leave for `expire_after`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.devices.is_empty() && now_ms.saturating_sub(self.meta.last_active_ms) >= self.limits.expire_after_ms
    }

    fn owner_device(&self, device: DeviceId) -> Result<&str, SessionError> {
        match self.device_role(device) {
            None => Err(SessionError::NotIn),
            Some(SessionRole::Owner) => Ok(&self.devices[&device].user),
            Some(_) => Err(SessionError::NotOwner),
        }
    }

    /// A patch from a joined device, against version `base`. The rule (docs/sessions.md,
    /// "Versions and conflicts"):
    /// - `base` = the current version: applied as the next version.
    /// - `base` older: rebased (applied unchanged as the next version) when no patch after
    ///   `base` wrote a path this patch writes or reads (`test`, `copy`'s `from`), where paths
    ///   overlap when one is the other or inside it; refused as a conflict otherwise, and always
    ///   when `base` is older than the patches the session remembers.
    /// - `test` operations are checked against the current document: compare-and-set.
    /// - The patch applies whole or not at all; the document must stay within its size limit.
    pub fn patch(
        &mut self,
        device: DeviceId,
        id: &str,
        base: u64,
        patch: &Payload,
        now_ms: u64,
    ) -> Result<PatchOutcome, SessionError> {
        let role = self.device_role(device).ok_or(SessionError::NotIn)?;
        if self.ydoc.is_some() {
            return Err(SessionError::WrongKind("a yjs session takes Yjs updates (yjs messages), not patches"));
        }
        check_patch_id(id)?;
        let user = self.devices[&device].user.clone();
        if let Some(version) = self.applied_as(&user, id) {
            return Ok(PatchOutcome::Duplicate { version });
        }
        if role == SessionRole::Viewer {
            return Err(SessionError::ReadOnly);
        }
        if self.meta.status == SessionStatus::Closed {
            return Err(SessionError::Closed);
        }
        if patch.len() > self.limits.max_patch_bytes {
            return Err(SessionError::BadRequest(format!(
                "patch of {} bytes, over sessions.max_patch_bytes ({})",
                patch.len(),
                self.limits.max_patch_bytes
            )));
        }
        if base > self.version {
            return Err(SessionError::BadVersion { base, version: self.version });
        }
        let ops: json_patch::Patch =
            serde_json::from_slice(&patch.0).map_err(|e| SessionError::BadPatch(e.to_string()))?;
        let (writes, reads) = touched(&ops);
        let rebased = base < self.version;
        if rebased {
            let conflict = |conflicting| PatchOutcome::Conflict { base, version: self.version, conflicting };
            if base < self.oldest_base() {
                return Ok(conflict(vec![]));
            }
            let conflicting: Vec<u64> = self
                .recent
                .iter()
                .filter(|r| r.patch.version > base)
                .filter(|r| r.writes.iter().any(|w| writes.iter().chain(&reads).any(|p| overlaps(w, p))))
                .map(|r| r.patch.version)
                .take(MAX_CONFLICTING)
                .collect();
            if !conflicting.is_empty() {
                return Ok(conflict(conflicting));
            }
        }
        // The document grows by at most the patch's text (plus a little per operation) unless
        // it copies: within the limit by that bound, apply in place; else (or with a schema to
        // check) on a copy, measured and checked.
        let max = self.meta.max_bytes as usize;
        let copies = ops.iter().any(|op| matches!(op, json_patch::PatchOperation::Copy(_)));
        let bound = self.size_bound + patch.len() + OP_SLACK * ops.len();
        if !copies && bound <= max && self.validator.is_none() {
            json_patch::patch(&mut self.doc, &ops).map_err(|e| SessionError::PatchFailed(e.to_string()))?;
            self.size_bound = bound;
        } else {
            let mut next = self.doc.clone();
            json_patch::patch(&mut next, &ops).map_err(|e| SessionError::PatchFailed(e.to_string()))?;
            let size = doc_size(&next);
            if size > max {
                return Err(SessionError::TooLarge { size, max });
            }
            if let Some(v) = &self.validator {
                v.check(&next).map_err(SessionError::Schema)?;
            }
            self.doc = next;
            self.size_bound = size;
        }
        self.version += 1;
        let applied =
            SessionPatch { version: self.version, user, id: id.to_owned(), patch: patch.clone(), time: now_ms };
        self.remember(&applied, writes);
        let ids = self.ids.get(&applied.user).map(|ids| ids.iter().cloned().collect()).unwrap_or_default();
        let mut out = vec![Write::Patch(applied.clone()), Write::Ids { user: applied.user.clone(), ids }];
        self.since_snapshot.0 += 1;
        self.since_snapshot.1 += patch.len();
        self.snapshot_due(&mut out);
        Ok(PatchOutcome::Applied { patch: applied, rebased, writes: out })
    }

    /// Writes a snapshot when `snapshot_every_patches` or `snapshot_every_bytes` is reached.
    fn snapshot_due(&mut self, out: &mut Vec<Write>) {
        if self.since_snapshot.0 >= self.limits.snapshot_every_patches
            || self.since_snapshot.1 >= self.limits.snapshot_every_bytes
        {
            let snapshot = self.snapshot();
            self.size_bound = snapshot.doc.len();
            self.since_snapshot = (0, 0);
            out.push(Write::Snapshot(snapshot));
        }
    }

    /// A Yjs update (`step2`: a sync step 2) from a joined device of a `yjs` session. A viewer's
    /// sync step 2 is ignored (a Yjs client sends one on every connect) and its update refused; an
    /// update that adds nothing gets no version. Every version is stored as a patch holding the
    /// update, and compacted into a snapshot (the whole document as one update) like patches.
    pub fn y_update(
        &mut self,
        device: DeviceId,
        update: &[u8],
        step2: bool,
        now_ms: u64,
    ) -> Result<YOutcome, SessionError> {
        let role = self.device_role(device).ok_or(SessionError::NotIn)?;
        let Some(ydoc) = &self.ydoc else {
            return Err(SessionError::WrongKind("a JSON session takes patches, not yjs messages"));
        };
        let unchanged = YOutcome::Unchanged { version: self.version };
        if role == SessionRole::Viewer || self.meta.status == SessionStatus::Closed {
            return match (step2, role) {
                (true, _) => Ok(unchanged),
                (false, SessionRole::Viewer) => Err(SessionError::ReadOnly),
                (false, _) => Err(SessionError::Closed),
            };
        }
        if update.len() > self.limits.max_patch_bytes {
            return Err(SessionError::BadRequest(format!(
                "update of {} bytes, over sessions.max_patch_bytes ({})",
                update.len(),
                self.limits.max_patch_bytes
            )));
        }
        // The encoded document grows by at most about the update's size: measure it only when
        // that bound is over the limit.
        let max = self.meta.max_bytes as usize;
        if self.size_bound + update.len() > max {
            self.size_bound = ydoc.state().len();
            if self.size_bound + update.len() > max {
                return Err(SessionError::TooLarge { size: self.size_bound + update.len(), max });
            }
        }
        let changed = ydoc.apply(update).map_err(|e| match e {
            YError::Bad(e) => SessionError::BadYjs(e),
            YError::Apply(e) => SessionError::YjsBroken(e),
        })?;
        if !changed {
            return Ok(unchanged);
        }
        self.version += 1;
        self.size_bound += update.len();
        let user = self.devices[&device].user.clone();
        let patch = SessionPatch {
            version: self.version,
            user,
            id: format!("y{}", self.version),
            patch: Payload::from(update.to_vec()),
            time: now_ms,
        };
        let mut writes = vec![Write::Patch(patch.clone())];
        self.since_snapshot.0 += 1;
        self.since_snapshot.1 += update.len();
        self.snapshot_due(&mut writes);
        Ok(YOutcome::Applied { patch, writes })
    }

    /// The owner gives `user` a role; `owner` hands ownership over (the former owner becomes an
    /// editor). Returns the `member` events and the meta write.
    pub fn set_role(
        &mut self,
        device: DeviceId,
        user: &str,
        role: SessionRole,
    ) -> Result<(Vec<SessionEvent>, Write), SessionError> {
        let owner = self.owner_device(device)?.to_owned();
        if !crate::auth::valid_sub(user) {
            return Err(SessionError::BadRequest("user must be 1-256 bytes without control characters".into()));
        }
        if user == owner {
            return Err(SessionError::BadRequest("the owner's role changes only by handing ownership over".into()));
        }
        let mut changed = vec![user.to_owned()];
        if role == SessionRole::Owner {
            self.meta.owner = user.to_owned();
            self.meta.roles.remove(user);
            self.meta.roles.insert(owner.clone(), SessionRole::Editor);
            changed.push(owner);
        } else {
            self.meta.roles.insert(user.to_owned(), role);
        }
        let events = changed.iter().map(|u| SessionEvent::Member { member: self.member(u) }).collect();
        Ok((events, Write::Meta(self.meta.clone())))
    }

    /// The owner closes the session (it stays readable). Returns the `closed` event and the meta
    /// write.
    pub fn close(&mut self, device: DeviceId) -> Result<(SessionEvent, Write), SessionError> {
        let by = self.owner_device(device)?.to_owned();
        if self.meta.status == SessionStatus::Closed {
            return Err(SessionError::Closed);
        }
        self.meta.status = SessionStatus::Closed;
        Ok((SessionEvent::Closed { by }, Write::Meta(self.meta.clone())))
    }

    /// Whether `device` may destroy the session (the owner's); returns who destroys it.
    pub fn can_destroy(&self, device: DeviceId) -> Result<String, SessionError> {
        self.owner_device(device).map(str::to_owned)
    }
}

#[cfg(test)]
mod tests;
