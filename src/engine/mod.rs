//! The engine: what turns a publish into a durable, ordered, deduplicated message, and what
//! serves history. It is the seam between the relay's connections (session, hub) and where
//! rooms' logs live.
//!
//! - [`LocalEngine`] (one node): a per-room sequencer assigns offsets and checks idempotency in
//!   memory, one writer thread commits appends in groups to a [`History`](crate::store::History)
//!   (redb or memory), and only then delivers them to the hub and acknowledges them.
//! - [`RedisEngine`] (several nodes): a script assigns the offset, appends and publishes
//!   atomically in Redis, and each node's pub/sub subscription delivers to its hub.
//!
//! Either way the hub receives committed messages through [`Hub::deliver`](crate::hub::Hub),
//! and must tolerate gaps (a lost pub/sub message) by letting subscribers catch up from
//! [`Engine::read_after`]. Acknowledged means committed: `done` is called only after the
//! store said so.

mod local;
mod redis;
#[cfg(test)]
pub(crate) mod suite;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

pub use local::{LocalEngine, LocalEngineConfig};
pub use redis::{RedisEngine, RedisEngineConfig, redacted};

use crate::control::Control;
use crate::hub::RoomKey;
use crate::proto::{ErrorCode, Payload, Position, RoomName};
use crate::store::{Cursor, RoomMeta, StoreError, StoredMessage};

/// A publish as the engine sees it: already authorized and validated.
#[derive(Debug, Clone)]
pub struct Publish {
    pub key: RoomKey,
    pub from: String,
    pub id: String,
    pub data: Payload,
    pub now_ms: u64,
}

/// A publish the engine accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub position: Position,
    /// The id was already published within the dedupe window; `position` is the original one
    /// and nothing was delivered again.
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    #[error("the relay is shutting down")]
    ShuttingDown,
}

impl EngineError {
    pub fn code(&self) -> ErrorCode {
        match self {
            EngineError::Unavailable(_) => ErrorCode::STORE_UNAVAILABLE,
            EngineError::ShuttingDown => ErrorCode::GOING_AWAY,
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Unavailable(e.to_string())
    }
}

type Callback = Box<dyn FnOnce(Result<Accepted, EngineError>) + Send>;

/// Called exactly once with a publish's outcome. If the engine drops it unanswered (shutdown),
/// the drop answers [`EngineError::ShuttingDown`], so no publisher waits forever. The time from
/// its creation to a successful outcome, just before the answer is handed on (the session
/// queues the ack), is the publish's ack latency ([`crate::metrics::PUBLISH_ACK_SECONDS`]).
pub struct Done(Option<Callback>, std::time::Instant);

impl Done {
    pub fn new(f: impl FnOnce(Result<Accepted, EngineError>) + Send + 'static) -> Done {
        Done(Some(Box::new(f)), std::time::Instant::now())
    }

    /// A `Done` that sends the outcome on a channel.
    pub fn channel() -> (Done, tokio::sync::oneshot::Receiver<Result<Accepted, EngineError>>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Done::new(move |r| drop(tx.send(r))), rx)
    }

    /// When the publish reached the engine.
    pub fn since(&self) -> std::time::Instant {
        self.1
    }

    pub fn complete(mut self, result: Result<Accepted, EngineError>) {
        if let Some(f) = self.0.take() {
            // Recorded before the answer goes out, so a client that has its ack sees it counted.
            if result.is_ok() {
                crate::metrics::publish_acked(self.1);
            }
            f(result);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(Err(EngineError::ShuttingDown));
        }
    }
}

pub trait Engine: Send + Sync + 'static {
    /// Assigns the next position (or finds the original one for a retried id), makes the message
    /// durable, delivers it to the hub, then calls `done`. Never blocks on IO.
    fn publish(&self, publish: Publish, done: Done);

    /// The room's current epoch and bounds. A room the engine has never seen gets its epoch here.
    fn meta(&self, key: &RoomKey) -> BoxFuture<'_, Result<RoomMeta, EngineError>>;

    /// Up to `limit` committed messages after offset `after`, oldest first.
    fn read_after(
        &self,
        key: &RoomKey,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, EngineError>>;

    /// Up to `limit` committed messages before offset `before`, the newest of them, oldest first.
    fn read_before(
        &self,
        key: &RoomKey,
        before: u64,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<StoredMessage>, EngineError>>;

    /// Records where a user is in rooms (offline replay); fire and forget.
    fn save_cursors(&self, tenant: &str, user: &str, cursors: Vec<Cursor>);

    /// Forgets a user's cursor in a room (they left it); fire and forget.
    fn forget_cursor(&self, tenant: &str, user: &str, room: RoomName);

    /// The user's rooms and cursors, most recent first.
    fn cursors(&self, tenant: &str, user: &str, limit: usize) -> BoxFuture<'_, Result<Vec<Cursor>, EngineError>>;

    /// Periodic housekeeping: drops idle per-room state, applies age retention.
    fn maintain(&self, now_ms: u64);

    /// Finishes everything accepted so far (bounded by `deadline`), then stops accepting.
    fn shutdown(&self, deadline: std::time::Duration) -> BoxFuture<'_, ()>;

    /// Carries a server API action to the other nodes (nothing to do for a single node); the
    /// node that received it has applied it already. Fire and forget.
    fn broadcast(&self, control: &Control) {
        let _ = control;
    }

    /// Presence shared with the other nodes (a shared engine): this node's changes go in, the
    /// others' come out. `None` for a single node. Taken once.
    fn share_presence(&self) -> Option<crate::hub::remote::PresenceLink> {
        None
    }

    /// The actions other nodes broadcast (first, at start, the revocations still in force), for
    /// the relay to apply here; `None` for a single node. Taken once.
    fn remote_controls(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Control>> {
        None
    }

    /// The region's call channel (a shared engine): what this node sends goes to every other
    /// node, in the order sent; what they send comes out, in their order. `None` for a single
    /// node. Taken once.
    fn share_calls(&self) -> Option<CallLink> {
        None
    }

    /// This node's name in the region (the admin view); `local` for a single node.
    fn node_name(&self) -> String {
        "local".into()
    }

    /// Keeps this node's report where the other nodes read it (a shared engine; nothing to do
    /// for a single node). Written every [`crate::admin::REPORT_MS`].
    fn report_node(&self, report: &crate::admin::NodeReport) -> BoxFuture<'_, Result<(), EngineError>> {
        let _ = report;
        Box::pin(async { Ok(()) })
    }

    /// The last report of every node that wrote one (a shared engine; empty for a single
    /// node). Lapsed ones may be among them: [`crate::admin::region`] leaves them out.
    fn node_reports(&self) -> BoxFuture<'_, Result<Vec<crate::admin::NodeReport>, EngineError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    /// The region's receipts channel (a shared engine), carrying read marks, mentions and
    /// privacy changes between nodes (`crate::receipts`): the same shape and guarantees as the
    /// call channel. `None` for a single node. Taken once.
    fn share_receipts(&self) -> Option<CallLink> {
        None
    }

    /// The region's notifications channel (a shared engine), carrying per-user feed events
    /// (`crate::notify::region`): the same shape and guarantees as the call channel. `None` for
    /// a single node. Taken once.
    fn share_notifications(&self) -> Option<CallLink> {
        None
    }

    /// The current top of each room, without holding it here (`None`: unknown, or unavailable).
    /// The default reads each room's meta.
    fn tops(&self, keys: Vec<RoomKey>) -> BoxFuture<'_, Vec<Option<Position>>> {
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in &keys {
                out.push(self.meta(key).await.ok().map(|meta| meta.position()));
            }
            out
        }
        .boxed()
    }

    /// The region's collaborative-session link (a shared engine): messages to one node, and the
    /// Redis client the sessions' store and leases use. `None` for a single node. Taken once.
    fn share_sessions(&self) -> Option<SessionLink> {
        None
    }
}

/// What the collaborative-session service needs of a region (`crate::collab::region`): the
/// engine carries bytes to one node, at most once, in order per pair of nodes.
pub struct SessionLink {
    /// This node's name in the region (unique per process start).
    pub node: String,
    /// `(node, message)` to send to that node.
    pub out: tokio::sync::mpsc::UnboundedSender<(String, Vec<u8>)>,
    /// Messages for this node: `(sending node, message)`.
    pub inbound: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// The engine's Redis client (sessions keep their store and leases in the same Redis).
    pub client: fred::clients::Client,
    /// The key prefix (`redis.prefix`).
    pub prefix: String,
}

/// The two directions of the region's call channel, for the call service
/// (`crate::call::region`). The engine only carries the text: at most once, in order per
/// sending node, never back to the node that sent it.
pub struct CallLink {
    /// This node's name in the region (unique per process start).
    pub node: String,
    /// Messages for the other nodes.
    pub out: tokio::sync::mpsc::UnboundedSender<String>,
    /// The other nodes' messages: `(sending node, message)`.
    pub inbound: tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
}
