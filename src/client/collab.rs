//! Collaborative sessions in the Rust client (docs/sessions.md): the `session` requests, and
//! [`SessionDoc`], a device's copy of a session's document kept by the rules a client follows
//! (take `joined`, then apply `patched` events in version order, skipping what it has).

use serde_json::Value;

use super::{Client, ClientError, Event, Route, unexpected};
use crate::proto::{
    ClientFrame, Payload, ServerFrame, SessionAction, SessionEvent, SessionMember, SessionPatch, SessionRole,
    SessionStatus,
};

/// An event of the session `session` (`req` 0): `patched`, `member`, `closed`, `ended`, `cursor`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionUpdate {
    pub session: String,
    pub event: SessionEvent,
}

/// The answer to `create` and `join`.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionJoined {
    pub role: SessionRole,
    pub status: SessionStatus,
    pub members: Vec<SessionMember>,
    /// The document this device has now (the snapshot, or its own copy, with the patches applied).
    pub doc: SessionDoc,
}

/// The answer to a `patch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchResult {
    Applied {
        version: u64,
        rebased: bool,
    },
    /// Refused: apply the missed versions (`base + 1 ..= version`), then retry against `version`.
    Conflict {
        base: u64,
        version: u64,
        conflicting: Vec<u64>,
    },
}

/// A device's copy of a session's document.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionDoc {
    pub version: u64,
    pub doc: Value,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("patch {got} does not follow version {have}: missed patches (join again with the version)")]
    Gap { have: u64, got: u64 },
    #[error("the relay sent something that is not JSON or does not apply: {0}")]
    Bad(String),
}

impl SessionDoc {
    /// The document a `joined` answer brings a device to that had `own` before (its copy, when
    /// it said its version and the answer carries only patches).
    pub fn joined(event: &SessionEvent, own: Option<&SessionDoc>) -> Result<SessionDoc, DocError> {
        let SessionEvent::Joined { snapshot, patches, .. } = event else {
            return Err(DocError::Bad("not a joined event".into()));
        };
        let mut doc = match (snapshot, own) {
            (Some(s), _) => SessionDoc { version: s.version, doc: parse(&s.doc)? },
            (None, Some(own)) => own.clone(),
            (None, None) => return Err(DocError::Bad("no snapshot and no copy of our own".into())),
        };
        for patch in patches {
            doc.apply(patch)?;
        }
        Ok(doc)
    }

    /// Applies a `patched` event; a version it already has is skipped (`Ok(false)`).
    pub fn apply(&mut self, patch: &SessionPatch) -> Result<bool, DocError> {
        if patch.version <= self.version {
            return Ok(false);
        }
        if patch.version != self.version + 1 {
            return Err(DocError::Gap { have: self.version, got: patch.version });
        }
        let ops: json_patch::Patch =
            serde_json::from_slice(&patch.patch.0).map_err(|e| DocError::Bad(e.to_string()))?;
        json_patch::patch(&mut self.doc, &ops).map_err(|e| DocError::Bad(e.to_string()))?;
        self.version = patch.version;
        Ok(true)
    }
}

fn parse(doc: &Payload) -> Result<Value, DocError> {
    serde_json::from_slice(&doc.0).map_err(|e| DocError::Bad(e.to_string()))
}

impl Client {
    /// Sends one `session` action and waits for its answer's event.
    pub async fn session_action(&self, session: &str, action: SessionAction) -> Result<SessionEvent, ClientError> {
        let frame = |req| ClientFrame::Session { req, session: session.to_owned(), action };
        match self.request(Route::Control, frame).await? {
            ServerFrame::Session { event, .. } => Ok(event),
            other => Err(unexpected("session", &other)),
        }
    }

    async fn session_joined(
        &self,
        session: &str,
        action: SessionAction,
        own: Option<&SessionDoc>,
    ) -> Result<SessionJoined, ClientError> {
        match self.session_action(session, action).await? {
            event @ SessionEvent::Joined { .. } => {
                let doc = SessionDoc::joined(&event, own).map_err(|e| ClientError::Protocol(e.to_string()))?;
                let SessionEvent::Joined { role, status, members, .. } = event else { unreachable!("matched above") };
                Ok(SessionJoined { role, status, members, doc })
            }
            other => Err(ClientError::Protocol(format!("expected joined, got {other:?}"))),
        }
    }

    /// Creates the session `session` with this initial document and joins it as its owner.
    pub async fn session_create(
        &self,
        session: &str,
        doc: impl Into<Payload>,
        max_bytes: Option<u32>,
        default_role: SessionRole,
    ) -> Result<SessionJoined, ClientError> {
        let action = SessionAction::Create { doc: doc.into(), max_bytes, default_role, schema: None };
        self.session_joined(session, action, None).await
    }

    /// [`Client::session_create`] with a JSON Schema the document must always validate against.
    pub async fn session_create_with_schema(
        &self,
        session: &str,
        doc: impl Into<Payload>,
        max_bytes: Option<u32>,
        default_role: SessionRole,
        schema: impl Into<Payload>,
    ) -> Result<SessionJoined, ClientError> {
        let action = SessionAction::Create { doc: doc.into(), max_bytes, default_role, schema: Some(schema.into()) };
        self.session_joined(session, action, None).await
    }

    /// Joins the session on this device; with `own` (the copy this device has), only the missed
    /// patches come when the relay still has them.
    pub async fn session_join(&self, session: &str, own: Option<&SessionDoc>) -> Result<SessionJoined, ClientError> {
        let action = SessionAction::Join { version: own.map(|d| d.version) };
        self.session_joined(session, action, own).await
    }

    /// Sends a JSON Patch against version `base`, with the patch id `id` (retry with the same id).
    pub async fn session_patch(
        &self,
        session: &str,
        id: &str,
        base: u64,
        patch: impl Into<Payload>,
    ) -> Result<PatchResult, ClientError> {
        let action = SessionAction::Patch { id: id.to_owned(), base, patch: patch.into() };
        match self.session_action(session, action).await? {
            SessionEvent::Applied { version, rebased } => Ok(PatchResult::Applied { version, rebased }),
            SessionEvent::Conflict { base, version, conflicting } => {
                Ok(PatchResult::Conflict { base, version, conflicting })
            }
            other => Err(ClientError::Protocol(format!("expected applied or conflict, got {other:?}"))),
        }
    }

    async fn session_ok(&self, session: &str, action: SessionAction) -> Result<(), ClientError> {
        match self.session_action(session, action).await? {
            SessionEvent::Ok {} => Ok(()),
            other => Err(ClientError::Protocol(format!("expected ok, got {other:?}"))),
        }
    }

    pub async fn session_leave(&self, session: &str) -> Result<(), ClientError> {
        self.session_ok(session, SessionAction::Leave {}).await
    }

    /// The owner gives `user` a role (`owner`: hands ownership over).
    pub async fn session_role(&self, session: &str, user: &str, role: SessionRole) -> Result<(), ClientError> {
        self.session_ok(session, SessionAction::Role { user: user.to_owned(), role }).await
    }

    pub async fn session_close(&self, session: &str) -> Result<(), ClientError> {
        self.session_ok(session, SessionAction::Close {}).await
    }

    pub async fn session_destroy(&self, session: &str) -> Result<(), ClientError> {
        self.session_ok(session, SessionAction::Destroy {}).await
    }

    /// This device's cursor (any JSON): a datagram on QUIC and WebTransport, a frame on
    /// WebSocket; no answer.
    pub async fn session_cursor(&self, session: &str, data: impl Into<Payload>) -> Result<(), ClientError> {
        let action = SessionAction::Cursor { data: data.into() };
        self.send_datagram(&ClientFrame::Session { req: 0, session: session.to_owned(), action }).await
    }

    /// The next session event, skipping other events; `Err` when the connection closed.
    pub async fn next_session_update(&mut self) -> Result<SessionUpdate, ClientError> {
        self.next_of(|event| match event {
            Event::Session(update) => Some(update),
            _ => None,
        })
        .await
    }
}
