//! edgerelay: a real-time relay. See `README.md` for running it and `docs/protocol.md` for the
//! wire protocol.
//!
//! The data path: `transport → connection → session → hub → outbox → writer → transport`.

pub mod admin;
pub mod admission;
pub mod auth;
pub mod call;
pub mod client;
pub mod collab;
pub mod config;
pub mod connection;
pub mod control;
pub mod dev_tokens;
pub mod engine;
pub mod events;
pub mod hooks;
pub mod http;
pub mod hub;
pub mod ice;
pub mod lock;
pub mod mailbox;
pub mod media;
pub mod metrics;
pub mod notify;
pub mod outbox;
pub mod proto;
pub mod rate;
pub mod receipts;
pub mod relay;
pub mod session;
pub mod store;
pub mod testing;
pub mod tls;
pub mod transport;
