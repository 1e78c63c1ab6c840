//! Sessions across the nodes of a Redis region: the messages nodes exchange about sessions and
//! the stand-in outbox that carries an owner's frames to a device on another node.
//!
//! Why an owner node: the conflict rule, versions and dedupe need a session's inputs applied one
//! at a time in one place. So a session is loaded on one node at a time, its *owner*, which
//! holds a lease in Redis ([`super::redis_store`]) and applies every input exactly as on a single
//! node, with the same [`super::CollabSession`] and the same ordered writer, committing to Redis
//! instead of the embedded file. A device on another node reaches it through messages: its
//! actions and cursors go to the owner ([`Message::Act`]); on the owner it is a device like any
//! other, whose outbox is a stand-in ([`proxy`]) that sends what is queued to the device's node
//! ([`Message::Frames`]), which queues the frames, already encoded in the device's codec, on the
//! device's connection. Everything a device hears about a session thus comes from one place, in
//! one order, and the ordered writer's promise (acked means durable, events in version order)
//! holds across nodes.
//!
//! When the owner goes (killed, cut off, or it unloaded the session): its lease lapses
//! (`LEASE_MS`); the next action on any node takes the lease and loads the session from Redis,
//! with every acked patch. Devices that were joined through the old owner are closed with
//! `session_moved` (183) by their own node, which checks the owners of the sessions its devices
//! use every `CHECK_MS`; they reconnect and join again with their version, as after any
//! reconnect. Pub/sub is at most once: a lost `act` leaves a request unanswered (the client's
//! request timeout applies), a lost `frames` message leaves a device behind until it joins
//! again — the same as a lost frame on a broken connection, which clients heal by joining with
//! their version.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use crate::hub::presence::DeviceId;
use crate::outbox::{CONTROL, DirectWrite, Outbox, Take};
use crate::proto::{Codec, ErrorCode, SessionAction, SessionRole};

/// How long an owner's lease lasts without renewal.
pub const LEASE_MS: u64 = 6_000;
/// How often an owner renews its leases, and a node checks the owners of sessions its devices
/// use through another node.
pub const CHECK_MS: u64 = 1_000;

/// What nodes tell each other about sessions (postcard on the engine's sessions link).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// A device's action for the session's owner. `device` is the connection's id on the sending
    /// node; `bound` the highest role its token allows for this session (checked there).
    Act {
        tenant: String,
        session: String,
        device: DeviceId,
        /// `true` for JSON, else postcard: the codec the owner encodes the device's frames in.
        json: bool,
        user: String,
        bound: SessionRole,
        req: u64,
        action: SessionAction,
    },
    /// The device's connection ended (it leaves the session).
    Left { tenant: String, session: String, device: DeviceId },
    /// Frames from the owner for a device of the receiving node: reliable ones for its control
    /// lane, datagrams (cursors), and the close the owner asks for.
    Frames {
        tenant: String,
        session: String,
        device: DeviceId,
        reliable: Vec<Vec<u8>>,
        datagrams: Vec<Vec<u8>>,
        close: Option<ErrorCode>,
    },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Message> {
        postcard::from_bytes(bytes).ok()
    }
}

pub fn codec_of(json: bool) -> Codec {
    if json { Codec::Json } else { Codec::Postcard }
}

/// The stand-in outbox, on the owner, of a device on another node: what the session service
/// queues for it is sent on at once, as a [`Message::Frames`], to that node.
pub fn proxy(
    codec: Codec,
    cap: usize,
    to: String,
    tenant: String,
    session: String,
    device: DeviceId,
    out: UnboundedSender<(String, Vec<u8>)>,
) -> Arc<Outbox> {
    let outbox = Outbox::new(codec, cap);
    let writer = ProxyWriter { to, tenant, session, device, out, order: Mutex::new(()) };
    outbox.write_directly(Arc::new(writer));
    outbox
}

struct ProxyWriter {
    to: String,
    tenant: String,
    session: String,
    device: DeviceId,
    out: UnboundedSender<(String, Vec<u8>)>,
    /// Held from taking frames to sending them, so two threads queueing at once send in order.
    order: Mutex<()>,
}

impl ProxyWriter {
    /// Sends what `outbox` holds; `close` to close the device too.
    fn send(&self, outbox: &Outbox, close: Option<ErrorCode>) {
        let _order = crate::lock::lock(&self.order);
        let mut reliable = Vec::new();
        while let Take::Frames(frames) = outbox.take(CONTROL, 256) {
            reliable.extend(frames.iter().map(|f| f.body_slice().to_vec()));
        }
        let mut datagrams = Vec::new();
        while let Take::Frames(frames) = outbox.take_datagrams(64) {
            datagrams.extend(frames.iter().map(|f| f.body_slice().to_vec()));
        }
        if reliable.is_empty() && datagrams.is_empty() && close.is_none() {
            return;
        }
        let message = Message::Frames {
            tenant: self.tenant.clone(),
            session: self.session.clone(),
            device: self.device,
            reliable,
            datagrams,
            close,
        };
        let _ = self.out.send((self.to.clone(), message.encode()));
    }
}

impl DirectWrite for ProxyWriter {
    fn write_now(&self, outbox: &Outbox) -> bool {
        self.send(outbox, None);
        true
    }
}

/// Closes a stand-in outbox and tells the device's node to close the device with `code`, after
/// what is queued.
pub fn close_proxy(
    outbox: &Outbox,
    code: ErrorCode,
    to: &str,
    tenant: &str,
    session: &str,
    device: DeviceId,
    out: &UnboundedSender<(String, Vec<u8>)>,
) {
    let message = Message::Frames {
        tenant: tenant.to_owned(),
        session: session.to_owned(),
        device,
        reliable: Vec::new(),
        datagrams: Vec::new(),
        close: Some(code),
    };
    // What is queued went out already (the writer sends at once); the close follows it.
    outbox.close(crate::outbox::CloseReason::Error(code));
    let _ = out.send((to.to_owned(), message.encode()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{ServerFrame, SessionEvent};

    #[test]
    fn a_proxy_sends_frames_in_the_order_queued_with_the_device_codec() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let outbox = proxy(Codec::Json, 1 << 20, "b".into(), "acme".into(), "doc".into(), 7, tx);
        let mut reply = outbox.reserve(CONTROL, 5);
        let event = |v| ServerFrame::Session {
            req: 0,
            session: "doc".into(),
            event: SessionEvent::Applied { version: v, rebased: false },
        };
        outbox.send(CONTROL, &event(2)).unwrap();
        assert!(rx.try_recv().is_err(), "held behind the unanswered reply");
        reply.send(&event(1)).unwrap();
        let (to, bytes) = rx.try_recv().unwrap();
        assert_eq!(to, "b");
        let Some(Message::Frames { device, reliable, close, .. }) = Message::decode(&bytes) else { panic!() };
        assert_eq!((device, close), (7, None));
        let texts: Vec<String> = reliable.iter().map(|b| String::from_utf8(b.clone()).unwrap()).collect();
        assert_eq!(texts.len(), 2);
        assert!(texts[0].contains(r#""version":1"#) && texts[1].contains(r#""version":2"#), "{texts:?}");
    }
}
