//! Collaborative sessions (issue 18, docs/sessions.md): a shared JSON document that members
//! change with RFC 6902 JSON Patches, with roles, versions, a written-down conflict rule,
//! snapshots and catch-up, and live cursors.
//!
//! - [`machine::CollabSession`] is one session as a pure object (`now_ms` passed in): lifecycle,
//!   roles bounded by the token, versions, the conflict rule, compare-and-set through `test`
//!   operations, the size limit and the optional JSON Schema ([`schema`]), patch-id dedupe,
//!   when to snapshot. Every rule is a unit test.
//! - [`cursors::Cursors`] throttles live cursors per user (the latest wins).
//! - [`store::SessionStore`] keeps meta, patches and the latest snapshot in the relay's redb
//!   file, so sessions survive a restart.
//! - [`service::CollabService`] is the IO side: loaded sessions, joined devices, the ordered
//!   writer (acked means durable, events in version order), the cursor tick and expiry.
//!
//! Why a pure object: concurrent patches are races (two editors on the same path, a patch
//! crossing a role change or a close); with inputs applied one at a time under the session's lock
//! and `now` passed in, each race is a unit test with the inputs in either order, as for calls
//! (`crate::call`).
//!
//! # The conflict rule
//!
//! A patch names the version it was made against (`base`). At the current version it applies
//! as the next one. Based on an older version, it is *rebased* (applied unchanged) when none of
//! the patches after `base` wrote a path it writes or reads, and refused as a `conflict` naming
//! those patches otherwise. Two paths overlap when one is the other or lies inside it; adding or
//! removing an array element counts as writing the whole array (indices shift). A base older
//! than the remembered patches (`sessions.keep_patches`) is always a conflict. `test` operations
//! are checked against the current document, which gives compare-and-set. A patch applies whole
//! or not at all.
//!
//! - [`yjs`]: sessions of kind `yjs`, whose document is a Yjs document merged by `yrs`, spoken
//!   to in y-protocols sync and awareness messages.
//!
//! - [`region`] and [`redis_store`]: sessions across the nodes of a Redis region, each applied on
//!   the node holding its lease, stored in the region's Redis.

pub mod cursors;
pub mod machine;
pub mod redis_store;
pub mod region;
pub mod schema;
pub mod service;
pub mod store;
pub mod yjs;

pub use machine::{CollabSession, Limits, Meta, PatchOutcome, SessionError, SessionKind, Write, YOutcome};
pub use service::{CollabService, Requester};
pub use store::SessionStore;
