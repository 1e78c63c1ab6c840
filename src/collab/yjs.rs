//! `yjs` sessions (docs/sessions.md, "Yjs sessions"): the session's document is a Yjs document,
//! merged by `yrs`, and members speak the y-protocols sync and awareness messages that Yjs
//! editors already speak (y-websocket's framing: a varuint type, 0 sync or 1 awareness, then the
//! message), carried in `yjs` session actions and events.
//!
//! Why the relay holds the document rather than only forwarding messages: a joiner, a device
//! back from a lost connection and a relay after a restart must get the whole state from the
//! relay alone (sync step 1 → step 2), and an acked update must be durable like an acked patch.
//! Yjs updates commute and are idempotent, so there is no conflict rule: every update that adds
//! something is the next version; one that adds nothing (a resent update, a sync step 2 of what
//! the relay has) changes nothing and gets no version.
//!
//! Pure parts only: [`YDoc`] (the document, its updates and diffs) and [`YAwareness`] (which
//! device announced which awareness clients, so their states can be removed when it leaves).

use std::collections::HashMap;

use yrs::sync::awareness::{AwarenessUpdate, AwarenessUpdateEntry};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact, Update};

use crate::hub::presence::DeviceId;

/// Awareness clients one device may announce (a page usually has one per Yjs document).
pub const MAX_AWARENESS_CLIENTS: usize = 16;

/// A y-protocols message from a client, decoded.
#[derive(Debug)]
pub enum YMessage {
    /// Sync step 1: the client's state vector; answered with what it misses.
    Step1(StateVector),
    /// Sync step 2 (what the relay misses, after the relay's step 1) or an update.
    Update {
        update: Vec<u8>,
        step2: bool,
    },
    Awareness(AwarenessUpdate),
    AwarenessQuery,
}

/// Why a y-protocols message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YError {
    #[error("not a y-protocols sync or awareness message: {0}")]
    Bad(String),
    #[error("the update does not apply: {0}")]
    Apply(String),
}

/// Decodes one client message.
pub fn decode(bytes: &[u8]) -> Result<YMessage, YError> {
    match Message::decode_v1(bytes).map_err(|e| YError::Bad(e.to_string()))? {
        Message::Sync(SyncMessage::SyncStep1(sv)) => Ok(YMessage::Step1(sv)),
        Message::Sync(SyncMessage::SyncStep2(update)) => Ok(YMessage::Update { update, step2: true }),
        Message::Sync(SyncMessage::Update(update)) => Ok(YMessage::Update { update, step2: false }),
        Message::Awareness(update) => Ok(YMessage::Awareness(update)),
        Message::AwarenessQuery => Ok(YMessage::AwarenessQuery),
        Message::Auth(_) | Message::Custom(..) => {
            Err(YError::Bad("only sync and awareness messages are relayed".into()))
        }
    }
}

/// A sync message (step 1, step 2 or update) as y-protocols frames it.
pub fn sync_message(message: SyncMessage) -> Vec<u8> {
    Message::Sync(message).encode_v1()
}

/// An awareness message with no states (the answer to a query when nobody announced any).
pub fn no_awareness() -> Vec<u8> {
    Message::Awareness(AwarenessUpdate { clients: HashMap::new() }).encode_v1()
}

/// A session's Yjs document.
pub struct YDoc {
    doc: Doc,
}

impl std::fmt::Debug for YDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("YDoc").finish_non_exhaustive()
    }
}

impl YDoc {
    /// An empty document.
    pub fn new() -> YDoc {
        // The relay never edits: its own client id never appears in the document.
        YDoc { doc: Doc::with_client_id(0) }
    }

    /// The document a stored state (a Yjs update of the whole document) holds.
    pub fn from_state(state: &[u8]) -> Result<YDoc, YError> {
        let doc = YDoc::new();
        doc.apply(state)?;
        Ok(doc)
    }

    /// Applies an update; `true` if it may have added anything: insertions the document did not
    /// have, deletions (not told apart from ones it had, so they always count), or a part the
    /// document keeps pending until what it depends on arrives.
    pub fn apply(&self, update: &[u8]) -> Result<bool, YError> {
        let update = Update::decode_v1(update).map_err(|e| YError::Bad(format!("the update does not decode: {e}")))?;
        if update.is_empty() {
            return Ok(false);
        }
        let before = self.doc.transact().state_vector();
        let deletes = !update.delete_set().is_empty();
        // yrs reports bad updates as errors; a panic deep inside it on a crafted update must
        // not take the relay down: it is refused, and the caller reloads the session.
        let doc = &self.doc;
        let applied =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.transact_mut().apply_update(update)));
        match applied {
            Ok(Ok(())) => {
                let txn = self.doc.transact();
                Ok(deletes || txn.state_vector() != before || txn.store().pending_update().is_some())
            }
            Ok(Err(e)) => Err(YError::Apply(e.to_string())),
            Err(_) => Err(YError::Apply("the update broke the document".into())),
        }
    }

    /// The whole document as one update (what a snapshot stores).
    pub fn state(&self) -> Vec<u8> {
        self.doc.transact().encode_state_as_update_v1(&StateVector::default())
    }

    /// What a client with `sv` misses, as an update.
    pub fn diff(&self, sv: &StateVector) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(sv)
    }

    pub fn state_vector(&self) -> StateVector {
        self.doc.transact().state_vector()
    }
}

impl Default for YDoc {
    fn default() -> Self {
        YDoc::new()
    }
}

/// The awareness states of a session's devices (ephemeral, like cursors): the latest entry of
/// each awareness client and the device that announced it.
#[derive(Debug, Default)]
pub struct YAwareness {
    clients: HashMap<ClientID, (DeviceId, AwarenessUpdateEntry)>,
}

impl YAwareness {
    /// Takes a device's awareness update. Refused when an entry is over `max_entry_bytes` or the
    /// device would hold more than [`MAX_AWARENESS_CLIENTS`] clients; a `null` state removes the
    /// client.
    pub fn update(&mut self, device: DeviceId, update: &AwarenessUpdate, max_entry_bytes: usize) -> Result<(), YError> {
        if let Some((_, entry)) = update.clients.iter().find(|(_, e)| e.json.len() > max_entry_bytes) {
            return Err(YError::Bad(format!(
                "an awareness state of {} bytes, over sessions.max_cursor_bytes ({max_entry_bytes})",
                entry.json.len()
            )));
        }
        let held = self.clients.values().filter(|(d, _)| *d == device).count();
        let new = update.clients.keys().filter(|c| !self.clients.contains_key(c)).count();
        if held + new > MAX_AWARENESS_CLIENTS {
            return Err(YError::Bad(format!("more than {MAX_AWARENESS_CLIENTS} awareness clients on one device")));
        }
        for (client, entry) in &update.clients {
            if &*entry.json == "null" {
                self.clients.remove(client);
            } else {
                self.clients.insert(*client, (device, entry.clone()));
            }
        }
        Ok(())
    }

    /// Every known state, as one awareness message; `None` when there is none.
    pub fn all(&self) -> Option<Vec<u8>> {
        if self.clients.is_empty() {
            return None;
        }
        let clients = self.clients.iter().map(|(c, (_, e))| (*c, e.clone())).collect();
        Some(Message::Awareness(AwarenessUpdate { clients }).encode_v1())
    }

    /// A device left: forgets its clients; the awareness message removing them for the others
    /// (`None` if it had none).
    pub fn remove(&mut self, device: DeviceId) -> Option<Vec<u8>> {
        let gone: Vec<ClientID> = self.clients.iter().filter(|(_, (d, _))| *d == device).map(|(c, _)| *c).collect();
        if gone.is_empty() {
            return None;
        }
        let mut clients = HashMap::new();
        for client in gone {
            if let Some((_, entry)) = self.clients.remove(&client) {
                clients
                    .insert(client, AwarenessUpdateEntry { clock: entry.clock.wrapping_add(1), json: "null".into() });
            }
        }
        Some(Message::Awareness(AwarenessUpdate { clients }).encode_v1())
    }
}

#[cfg(test)]
mod tests {
    use yrs::{GetString, Text};

    use super::*;

    fn edit(doc: &Doc, at: u32, text: &str) -> Vec<u8> {
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.insert(&mut txn, at, text);
        txn.encode_update_v1()
    }

    #[test]
    fn updates_merge_in_any_order_and_a_repeat_adds_nothing() {
        let (a, b) = (Doc::with_client_id(1), Doc::with_client_id(2));
        let (ua, ub) = (edit(&a, 0, "hello "), edit(&b, 0, "world"));
        let (one, two) = (YDoc::new(), YDoc::new());
        assert_eq!((one.apply(&ua), one.apply(&ub)), (Ok(true), Ok(true)));
        assert_eq!((two.apply(&ub), two.apply(&ua)), (Ok(true), Ok(true)));
        assert_eq!(one.apply(&ua), Ok(false), "a repeat adds nothing");
        assert_eq!(one.state(), two.state(), "the same document either way");
        let restored = YDoc::from_state(&one.state()).unwrap();
        assert_eq!(restored.diff(&one.state_vector()), one.diff(&one.state_vector()));
        // A client that has A's edit gets only B's from the diff.
        let c = Doc::with_client_id(3);
        c.transact_mut().apply_update(Update::decode_v1(&ua).unwrap()).unwrap();
        let diff = one.diff(&c.transact().state_vector());
        c.transact_mut().apply_update(Update::decode_v1(&diff).unwrap()).unwrap();
        let text = c.get_or_insert_text("t");
        assert_eq!(text.get_string(&c.transact()).len(), "hello world".len());
    }

    #[test]
    fn bad_messages_and_updates_are_refused() {
        assert!(matches!(decode(&[]), Err(YError::Bad(_))));
        assert!(matches!(decode(&[0, 7, 0]), Err(YError::Bad(_))), "an unknown sync type");
        assert!(matches!(decode(&[2, 0]), Err(YError::Bad(_))), "auth is not relayed");
        assert!(matches!(YDoc::new().apply(&[0xff, 0xff, 0xff]), Err(YError::Bad(_))));
        let step1 = sync_message(SyncMessage::SyncStep1(StateVector::default()));
        assert!(matches!(decode(&step1), Ok(YMessage::Step1(_))));
    }

    #[test]
    fn awareness_is_bounded_and_removed_with_its_device() {
        let mut aw = YAwareness::default();
        let entry = |json: &str| AwarenessUpdateEntry { clock: 1, json: json.into() };
        let update = |c: u64, json: &str| AwarenessUpdate { clients: [(ClientID::new(c), entry(json))].into() };
        let (d1, d2): (DeviceId, DeviceId) = (1, 2);
        aw.update(d1, &update(10, r#"{"user":"a"}"#), 64).unwrap();
        aw.update(d2, &update(20, r#"{"user":"b"}"#), 64).unwrap();
        assert!(aw.update(d1, &update(11, &"x".repeat(65)), 64).is_err(), "over the size");
        let removal = aw.remove(d1).unwrap();
        let Message::Awareness(gone) = Message::decode_v1(&removal).unwrap() else { panic!("awareness") };
        assert_eq!(gone.clients.keys().copied().collect::<Vec<_>>(), vec![ClientID::new(10)]);
        assert_eq!(&*gone.clients[&ClientID::new(10)].json, "null");
        assert_eq!(aw.remove(d1), None);
        let Message::Awareness(all) = Message::decode_v1(&aw.all().unwrap()).unwrap() else { panic!("awareness") };
        assert_eq!(all.clients.len(), 1);
        let many = AwarenessUpdate { clients: (100..117).map(|c| (ClientID::new(c), entry("{}"))).collect() };
        assert!(aw.update(d1, &many, 64).is_err(), "too many clients");
    }
}
