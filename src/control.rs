//! Operator actions on users, from the server API: disconnect a user's connections, revoke
//! tokens (one by its `jti`, or all of a user's issued before a time).
//!
//! An action applies on the node that received it at once, and the engine carries it to every
//! other node ([`crate::engine::Engine::broadcast`]; with Redis, revocations are also kept there
//! so a node that starts later knows them). Applying is idempotent, so a node may see an action
//! twice. A revocation is remembered until its `until` (unix seconds), normally the expiry of
//! the newest token it covers: after that no such token verifies anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::mailbox::MailSender;
use serde::{Deserialize, Serialize};

use crate::auth::Identity;
use crate::proto::ErrorCode;

/// What an operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Control {
    /// Close every connection of the user (code `disconnected`; they may reconnect).
    Disconnect { tenant: String, user: String, reason: String },
    /// Refuse the tokens it covers from now on, and close the connections that use them (code
    /// `token_revoked`).
    Revoke(Revocation),
    /// An event another node published (docs/events.md): deliver it to this node's subscribers.
    Event { tenant: String, event: Box<crate::events::Event> },
    /// An event for every connection of a user.
    UserEvent { tenant: String, user: String, event: Box<crate::events::Event> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub tenant: String,
    #[serde(flatten)]
    pub target: Revoked,
    /// Unix seconds after which the revocation is forgotten.
    pub until: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Revoked {
    /// The token with this `jti`.
    Token { jti: String },
    /// The user's tokens issued (`iat`) before this unix second; tokens without `iat` too.
    User { user: String, issued_before: u64 },
}

impl Revocation {
    /// A stable name, so the same revocation is stored once.
    pub fn key(&self) -> String {
        match &self.target {
            Revoked::Token { jti } => format!("{}/jti/{jti}", self.tenant),
            Revoked::User { user, issued_before } => format!("{}/user/{user}/{issued_before}", self.tenant),
        }
    }

    fn covers(&self, identity: &Identity) -> bool {
        identity.tenant == self.tenant
            && match &self.target {
                Revoked::Token { jti } => identity.token_id.as_deref() == Some(jti.as_str()),
                Revoked::User { user, issued_before } => {
                    identity.user == *user && identity.issued_at.is_none_or(|iat| iat < *issued_before)
                }
            }
    }
}

/// What a connection is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Order {
    Close {
        code: ErrorCode,
        reason: String,
    },
    /// Leave this room if joined (the right to be in it ended: a group call's media room after
    /// the user left the call or was removed). The connection stays.
    LeaveRoom {
        room: crate::proto::RoomName,
        reason: String,
    },
    /// Queue this event (server API `publish` to a user).
    Event(Arc<crate::events::Event>),
}

struct Connection {
    /// The session's own identity, shared (not a copy per connection).
    identity: Arc<Identity>,
    orders: MailSender<Order>,
    /// `quic`, `webtransport`, `websocket` or `sse` (the admin view).
    transport: &'static str,
    /// Unix ms of the registration (its `hello`).
    since_ms: u64,
}

/// One authenticated connection as the admin view lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionInfo {
    pub id: u64,
    pub tenant: String,
    pub user: String,
    pub transport: &'static str,
    /// Unix ms.
    pub connected_at: u64,
    /// Unix seconds: the token's `exp`.
    pub expires_at: u64,
    /// The token's `jti`, what `revoke` takes.
    pub token_id: Option<String>,
}

#[derive(Default)]
struct State {
    /// By connection id. An action on a user scans them all: operator actions are rare, and an
    /// idle connection costs one small entry instead of a map per user.
    connections: HashMap<u64, Connection>,
    revocations: HashMap<String, Revocation>,
}

/// This node's authenticated connections, and the revocations in force.
#[derive(Default)]
pub struct Controls {
    state: Mutex<State>,
}

/// A connection's entry; dropping it removes the entry.
pub struct Registration {
    controls: Arc<Controls>,
    id: u64,
}

impl Registration {
    /// The connection refreshed its token: actions now judge it by `identity`. The entry stays
    /// the same one (a second registration for the id would be removed by the first's drop).
    pub fn refresh(&self, identity: Arc<Identity>) {
        if let Some(connection) = self.controls.lock().connections.get_mut(&self.id) {
            connection.identity = identity;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.controls.lock().connections.remove(&self.id);
    }
}

impl Controls {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a revocation in force covers the token behind `identity`.
    pub fn is_revoked(&self, identity: &Identity, now_s: u64) -> bool {
        self.lock().revocations.values().any(|r| r.until > now_s && r.covers(identity))
    }

    /// Lists connection `id` (with its token's identity and its transport) to receive orders,
    /// until the registration is dropped; [`Registration::refresh`] replaces the identity.
    pub fn register(
        self: &Arc<Self>,
        identity: Arc<Identity>,
        id: u64,
        transport: &'static str,
        now_ms: u64,
        orders: MailSender<Order>,
    ) -> Registration {
        self.lock().connections.insert(id, Connection { identity, orders, transport, since_ms: now_ms });
        Registration { controls: self.clone(), id }
    }

    /// This node's connections, of one tenant (and user) when given, oldest first.
    pub fn list(&self, tenant: Option<&str>, user: Option<&str>) -> Vec<ConnectionInfo> {
        let mut list: Vec<ConnectionInfo> = self
            .lock()
            .connections
            .iter()
            .filter(|(_, c)| tenant.is_none_or(|t| c.identity.tenant == t) && user.is_none_or(|u| c.identity.user == u))
            .map(|(&id, c)| ConnectionInfo {
                id,
                tenant: c.identity.tenant.clone(),
                user: c.identity.user.clone(),
                transport: c.transport,
                connected_at: c.since_ms,
                expires_at: c.identity.expires_at,
                token_id: c.identity.token_id.clone(),
            })
            .collect();
        list.sort_by_key(|c| (c.connected_at, c.id));
        list
    }

    /// How many connections each transport carries here (of one tenant when given).
    pub fn by_transport(&self, tenant: Option<&str>) -> std::collections::BTreeMap<&'static str, usize> {
        self.census(tenant).0
    }

    /// Connections by transport and distinct users here (of one tenant when given), counted
    /// under the lock without copying an entry.
    pub fn census(&self, tenant: Option<&str>) -> (std::collections::BTreeMap<&'static str, usize>, usize) {
        let mut counts: std::collections::BTreeMap<&'static str, usize> =
            ["quic", "webtransport", "websocket", "sse"].into_iter().map(|t| (t, 0)).collect();
        let state = self.lock();
        let mut users = std::collections::HashSet::new();
        for c in state.connections.values().filter(|c| tenant.is_none_or(|t| c.identity.tenant == t)) {
            *counts.entry(c.transport).or_default() += 1;
            users.insert((c.identity.tenant.as_str(), c.identity.user.as_str()));
        }
        (counts, users.len())
    }

    /// Sends `order` to every connection of the user on this node; returns how many took it.
    pub fn order_user(&self, tenant: &str, user: &str, order: &Order) -> usize {
        let state = self.lock();
        state
            .connections
            .values()
            .filter(|c| c.identity.tenant == tenant && c.identity.user == user)
            .filter(|c| c.orders.send(order.clone()).is_ok())
            .count()
    }

    /// Applies an action here; returns how many of this node's connections it closed.
    pub fn apply(&self, control: &Control, now_s: u64) -> usize {
        let mut state = self.lock();
        state.revocations.retain(|_, r| r.until > now_s);
        match control {
            Control::Disconnect { tenant, user, reason } => state
                .connections
                .values()
                .filter(|c| c.identity.tenant == *tenant && c.identity.user == *user)
                .filter(|c| {
                    let order = Order::Close { code: ErrorCode::DISCONNECTED, reason: reason.clone() };
                    c.orders.send(order).is_ok()
                })
                .count(),
            Control::UserEvent { tenant, user, event } => {
                let event = Arc::new((**event).clone());
                state
                    .connections
                    .values()
                    .filter(|c| c.identity.tenant == *tenant && c.identity.user == *user)
                    .filter(|c| c.orders.send(Order::Event(event.clone())).is_ok())
                    .count()
            }
            // Topic events are the relay's to deliver (`crate::events`), not a connection's.
            Control::Event { .. } => 0,
            Control::Revoke(revocation) => {
                if revocation.until <= now_s {
                    return 0;
                }
                state.revocations.insert(revocation.key(), revocation.clone());
                state
                    .connections
                    .values()
                    .filter(|c| revocation.covers(&c.identity))
                    .filter(|c| {
                        let reason = "the token was revoked".to_string();
                        c.orders.send(Order::Close { code: ErrorCode::TOKEN_REVOKED, reason }).is_ok()
                    })
                    .count()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Caps;

    fn identity(user: &str, jti: Option<&str>, iat: Option<u64>) -> Identity {
        Identity {
            user: user.into(),
            tenant: "acme".into(),
            caps: Caps::default(),
            expires_at: 10_000,
            token_id: jti.map(Into::into),
            issued_at: iat,
        }
    }

    #[test]
    fn revocations_cover_what_they_name_until_they_lapse() {
        let controls = Arc::new(Controls::default());
        let by_jti = Revocation { tenant: "acme".into(), target: Revoked::Token { jti: "t1".into() }, until: 500 };
        let by_user = Revocation {
            tenant: "acme".into(),
            target: Revoked::User { user: "bob".into(), issued_before: 100 },
            until: 500,
        };
        controls.apply(&Control::Revoke(by_jti), 10);
        controls.apply(&Control::Revoke(by_user), 10);
        assert!(controls.is_revoked(&identity("alice", Some("t1"), Some(5)), 10));
        assert!(!controls.is_revoked(&identity("alice", Some("t2"), Some(5)), 10));
        assert!(controls.is_revoked(&identity("bob", None, Some(99)), 10));
        assert!(controls.is_revoked(&identity("bob", None, None), 10), "no iat: issued whenever");
        assert!(!controls.is_revoked(&identity("bob", None, Some(100)), 10), "issued after");
        let mut other_tenant = identity("alice", Some("t1"), Some(5));
        other_tenant.tenant = "globex".into();
        assert!(!controls.is_revoked(&other_tenant, 10));
        assert!(!controls.is_revoked(&identity("alice", Some("t1"), Some(5)), 500), "lapsed");
    }

    #[test]
    fn actions_reach_the_connections_they_concern_and_registrations_end() {
        let controls = Arc::new(Controls::default());
        let (tx1, mut rx1) = crate::mailbox::mailbox();
        let (tx2, mut rx2) = crate::mailbox::mailbox();
        let (tx3, mut rx3) = crate::mailbox::mailbox();
        let a1 = controls.register(Arc::new(identity("alice", Some("t0"), Some(5))), 1, "quic", 100, tx1);
        a1.refresh(Arc::new(identity("alice", Some("t1"), Some(5))));
        let a2 = controls.register(Arc::new(identity("alice", Some("t2"), Some(5))), 2, "websocket", 200, tx2);
        let _b = controls.register(Arc::new(identity("bob", Some("t3"), Some(5))), 3, "websocket", 300, tx3);
        let alice: Vec<(u64, &str, Option<String>)> =
            controls.list(Some("acme"), Some("alice")).into_iter().map(|c| (c.id, c.transport, c.token_id)).collect();
        assert_eq!(alice, [(1, "quic", Some("t1".into())), (2, "websocket", Some("t2".into()))]);
        assert!(controls.list(Some("globex"), None).is_empty());
        let (counts, users) = controls.census(None);
        assert_eq!((counts["quic"], counts["websocket"], counts["sse"], users), (1, 2, 0, 2));
        let kick = Control::Disconnect { tenant: "acme".into(), user: "alice".into(), reason: "bye".into() };
        assert_eq!(controls.apply(&kick, 10), 2);
        assert!(matches!(rx1.try_recv(), Ok(Order::Close { code: ErrorCode::DISCONNECTED, .. })));
        assert!(matches!(rx2.try_recv(), Ok(Order::Close { code: ErrorCode::DISCONNECTED, .. })));
        assert!(rx3.try_recv().is_err(), "bob is not alice");
        drop(a2);
        let revoke = Revocation { tenant: "acme".into(), target: Revoked::Token { jti: "t1".into() }, until: 500 };
        assert_eq!(controls.apply(&Control::Revoke(revoke), 10), 1);
        assert!(matches!(rx1.try_recv(), Ok(Order::Close { code: ErrorCode::TOKEN_REVOKED, .. })));
        assert!(rx3.try_recv().is_err());
        assert_eq!(controls.apply(&kick, 10), 1, "connection 2 deregistered");
    }

    #[test]
    fn controls_travel_as_json() {
        let revoke = Control::Revoke(Revocation {
            tenant: "acme".into(),
            target: Revoked::User { user: "bob".into(), issued_before: 100 },
            until: 500,
        });
        let json = serde_json::to_string(&revoke).unwrap();
        assert_eq!(json, r#"{"action":"revoke","tenant":"acme","user":"bob","issued_before":100,"until":500}"#);
        assert_eq!(serde_json::from_str::<Control>(&json).unwrap(), revoke);
    }
}
