//! The wire form of collaborative sessions (docs/sessions.md): what a `session` frame asks
//! (`SessionAction`) and what a relay's `session` frame tells (`SessionEvent`). One frame type per
//! direction with a nested action or event, as calls do (`super::call`): sessions grow by
//! appending actions and events here, never by new frames. Documents, patches and cursors are
//! [`Payload`]s holding JSON text (readable in the JSON codec, a byte string in postcard), because
//! RFC 6902 patches are internally tagged JSON that postcard could not carry as typed values.
//! The rules (roles, versions, the conflict rule) are the state machine's, `crate::collab`.

use serde::{Deserialize, Serialize};

use super::payload::Payload;

/// A user's role in a session. Ordered: `viewer < editor < owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionRole {
    /// Reads the document and sends cursors; its patches are refused (`read_only`).
    Viewer,
    /// Reads and patches.
    Editor,
    /// An editor who may also change roles, hand over ownership, close and destroy. One per
    /// session.
    Owner,
}

/// Whether a session takes patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionStatus {
    Open,
    /// Closed by its owner: still readable (join, catch-up), patches are refused.
    Closed,
}

/// Why a session is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEnd {
    /// The owner destroyed it.
    Destroyed,
    /// Nobody joined it for `sessions.expire_after_secs`.
    Expired,
}

/// What a client asks about a session, in a `session` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionAction {
    /// Create the session with this initial JSON document and join it as its owner (on this
    /// device). `max_bytes`: the document's size limit (serialized JSON), at most and by default
    /// `sessions.max_document_bytes`. `default_role`: the role of users with no role of their own
    /// (`editor` or `viewer`). `schema`: a JSON Schema (drafts 4 to 2020-12) the document must
    /// always validate against. Answered by `joined`.
    Create { doc: Payload, max_bytes: Option<u32>, default_role: SessionRole, schema: Option<Payload> },
    /// Join on this device. `version`: the version this device has, if any; the answer then
    /// carries only the patches after it when the relay still has them. Answered by `joined`.
    Join { version: Option<u64> },
    /// Leave on this device (cursors go, the session stays). Answered by `ok`.
    Leave {},
    /// An RFC 6902 JSON Patch (a JSON array of operations) against version `base`. `id` is the
    /// client's patch id (1-64 bytes): a retry with the same id is answered with the original
    /// version and applied once. Answered by `applied`, `conflict` or an error.
    Patch { id: String, base: u64, patch: Payload },
    /// The owner gives `user` a role; `owner` hands ownership over (the former owner becomes an
    /// editor). Answered by `ok`.
    Role { user: String, role: SessionRole },
    /// The owner closes the session: it stays readable, patches are refused. Answered by `ok`.
    Close {},
    /// The owner deletes the session and its history. Answered by `ok`.
    Destroy {},
    /// This device's cursor or selection (any JSON the app defines), ephemeral: the latest wins,
    /// delivered at most `sessions.cursor_rate` times per second per user. May be a datagram; no
    /// answer (an error only when sent as a stream frame and refused).
    Cursor { data: Payload },
    /// Create a `yjs` session (its document is a Yjs document, changed by Yjs updates; docs/sessions.md
    /// "Yjs sessions") and join it as its owner. `max_bytes` and `default_role` as in `create`.
    /// Answered by `joined` (no snapshot: sync with a `yjs` sync step 1).
    CreateYjs { max_bytes: Option<u32>, default_role: SessionRole },
    /// A y-protocols message (binary, as y-websocket frames them: a varuint type, 0 sync or 1
    /// awareness, then the message) for a `yjs` session. Sync step 1 is answered by a `yjs` event
    /// with sync step 2 (what this device misses); sync step 2 and updates by `applied` once durable
    /// (a viewer's sync step 2 is ignored, its update refused with `read_only`); awareness is
    /// relayed to the other devices (answered `ok` only with a `req`); an awareness query by a `yjs` event
    /// with the awareness states.
    Yjs { message: Payload },
}

/// A session's document at a version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSnapshot {
    pub version: u64,
    pub doc: Payload,
}

/// One applied patch, as stored and delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionPatch {
    pub version: u64,
    /// Who sent it.
    pub user: String,
    /// The sender's patch id.
    pub id: String,
    /// The patch as applied (JSON array), unchanged from what the client sent.
    pub patch: Payload,
    /// Unix ms when the relay applied it.
    pub time: u64,
}

/// A user with a role in the session, and whether a device of theirs is joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionMember {
    pub user: String,
    pub role: SessionRole,
    pub present: bool,
}

/// What the relay tells about a session, in a `session` frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionEvent {
    /// The request `req` was done.
    Ok {},
    /// Answer to `create` and `join`: the document is `snapshot` (absent when the client's
    /// `version` was recent enough) followed by `patches`, in order; after them the client is at
    /// `version`. `role` is this device's effective role (the session's, bounded by the token).
    Joined {
        role: SessionRole,
        status: SessionStatus,
        version: u64,
        snapshot: Option<SessionSnapshot>,
        patches: Vec<SessionPatch>,
        members: Vec<SessionMember>,
    },
    /// Answer to `patch`: it is durable as `version` (`rebased`: it was based on an older version
    /// and touched nothing the patches in between touched). Its `patched` event follows.
    Applied { version: u64, rebased: bool },
    /// Answer to `patch`: refused, nothing changed. The client missed versions `base + 1 ..=
    /// version`; `conflicting` are those that touched a path this patch touches (at most 100).
    Conflict { base: u64, version: u64, conflicting: Vec<u64> },
    /// A patch was applied (to every joined device, the sender's included), in version order.
    Patched { patch: SessionPatch },
    /// A member joined or left (`present`), or their role changed.
    Member { member: SessionMember },
    /// The session was closed by `by`.
    Closed { by: String },
    /// The session is gone (destroyed by `by`, or expired): members are out of it.
    Ended { reason: SessionEnd, by: Option<String> },
    /// A member's cursor (usually a datagram; the latest per user wins). `data` absent: their
    /// cursor is gone.
    Cursor { user: String, data: Option<Payload> },
    /// A y-protocols message for a `yjs` session: the answer to a sync step 1 (sync step 2), the
    /// relay's own sync step 1 after it, another member's update or awareness, the awareness states
    /// (answer to an awareness query), or the removal of a departed device's awareness.
    Yjs { message: Payload },
}
