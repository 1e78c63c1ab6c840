//! A `yjs` session in the Rust client (docs/sessions.md, "Yjs sessions"): [`YjsSession`] holds
//! the device's `yrs` document and speaks y-protocols sync through `session` frames, so a Rust
//! program edits the same document as browser editors using the npm `yjs` package.
//!
//! The rules a client follows, done here: join, then sync (send step 1 with the document's state
//! vector; apply the step 2 answer); send each local change as a sync update; apply the updates
//! the relay relays; answer the relay's own step 1 (sent after a join) with the step 2 it asks
//! for. After a reconnect, [`Client::yjs_join`] again with the same document: the sync exchanges
//! only what either side misses.

use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, Transact, Update};

use super::{Client, ClientError};
use crate::proto::{Payload, SessionAction, SessionEvent, SessionRole};

/// A device's copy of a `yjs` session's document.
pub struct YjsSession {
    pub session: String,
    pub doc: Doc,
}

fn protocol(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
}

fn yjs_action(m: Message) -> SessionAction {
    SessionAction::Yjs { message: Payload::from(m.encode_v1()) }
}

impl YjsSession {
    /// Sends a local change (`txn.encode_update_v1()` of the change made on [`YjsSession::doc`]);
    /// the version it became, or the version the relay was at if the update added nothing.
    pub async fn send_update(&self, client: &Client, update: Vec<u8>) -> Result<u64, ClientError> {
        match client.session_action(&self.session, yjs_action(Message::Sync(SyncMessage::Update(update)))).await? {
            SessionEvent::Applied { version, .. } => Ok(version),
            other => Err(protocol(format!("expected applied, got {other:?}"))),
        }
    }

    /// Handles a session event for this session: applies relayed updates and answers the relay's
    /// step 1. Returns the awareness update it carried, if it was one (apps show other users'
    /// cursors from it); other events are ignored.
    pub async fn handle(&self, client: &Client, event: &SessionEvent) -> Result<Option<Vec<u8>>, ClientError> {
        let SessionEvent::Yjs { message } = event else { return Ok(None) };
        match Message::decode_v1(&message.0).map_err(protocol)? {
            Message::Sync(SyncMessage::Update(u) | SyncMessage::SyncStep2(u)) => self.apply(&u)?,
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                let diff = self.doc.transact().encode_diff_v1(&sv);
                let step2 = yjs_action(Message::Sync(SyncMessage::SyncStep2(diff)));
                client.session_action(&self.session, step2).await?;
            }
            Message::Awareness(_) => return Ok(Some(message.0.to_vec())),
            _ => {}
        }
        Ok(None)
    }

    fn apply(&self, update: &[u8]) -> Result<(), ClientError> {
        let update = Update::decode_v1(update).map_err(protocol)?;
        self.doc.transact_mut().apply_update(update).map_err(protocol)
    }

    /// Sync step 1 out, step 2 back and applied.
    async fn sync(&self, client: &Client) -> Result<(), ClientError> {
        let sv = self.doc.transact().state_vector();
        let answer =
            client.session_action(&self.session, yjs_action(Message::Sync(SyncMessage::SyncStep1(sv)))).await?;
        let SessionEvent::Yjs { message } = answer else {
            return Err(protocol(format!("expected sync step 2, got {answer:?}")));
        };
        match Message::decode_v1(&message.0).map_err(protocol)? {
            Message::Sync(SyncMessage::SyncStep2(update)) => self.apply(&update),
            other => Err(protocol(format!("expected sync step 2, got {other:?}"))),
        }
    }
}

impl Client {
    /// Creates a `yjs` session and joins it as its owner, with `doc` (its content, if any, goes
    /// up when the relay's step 1 is handled).
    pub async fn yjs_create(
        &self,
        session: &str,
        default_role: SessionRole,
        doc: Doc,
    ) -> Result<YjsSession, ClientError> {
        let action = SessionAction::CreateYjs { max_bytes: None, default_role };
        self.yjs_joined(session, action, doc).await
    }

    /// Joins a `yjs` session with `doc` (a new `Doc`, or the one this device had before a
    /// reconnect) and syncs it.
    pub async fn yjs_join(&self, session: &str, doc: Doc) -> Result<YjsSession, ClientError> {
        self.yjs_joined(session, SessionAction::Join { version: None }, doc).await
    }

    async fn yjs_joined(&self, session: &str, action: SessionAction, doc: Doc) -> Result<YjsSession, ClientError> {
        match self.session_action(session, action).await? {
            SessionEvent::Joined { .. } => {}
            other => return Err(protocol(format!("expected joined, got {other:?}"))),
        }
        let handle = YjsSession { session: session.to_owned(), doc };
        // What the relay has that this device lacks. The reverse follows: the relay's own step 1,
        // answered by `handle`.
        handle.sync(self).await?;
        Ok(handle)
    }
}
