//! edgerelay: a real-time relay. See `README.md` for running it and `docs/protocol.md` for the
//! wire protocol.
//!
//! The data path: `transport → connection → session → hub → outbox → writer → transport`.

pub mod auth;
pub mod config;
pub mod proto;
pub mod tls;
