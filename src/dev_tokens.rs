//! Dev tokens over HTTP (`POST /v1/dev/token`), so the demo page gives two people a chat without
//! anyone minting and pasting a JWT. It signs with the dev key, so it exists only where that key
//! is trusted already: dev keys on *and* the self-signed dev certificate. A relay with a real
//! certificate (`tls.cert_file`, i.e. production) never serves it, even with `auth.dev_keys =
//! true`. No IO here: the handler passes the request and the time in.

use serde::{Deserialize, Serialize};

use crate::auth::{Caps, Claims, Signer, valid_sub, valid_tenant};

/// The longest lifetime a dev token may ask for: one day.
pub const MAX_TTL_SECS: u64 = 86_400;

/// `POST /v1/dev/token` body. Only `user` is required.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevTokenRequest {
    pub user: String,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Room patterns the token may join and publish to.
    #[serde(default = "default_rooms")]
    pub rooms: Vec<String>,
    /// Users the token may call (1:1 calls).
    #[serde(default = "default_call")]
    pub call: Vec<String>,
    /// Session patterns the token may create, join and edit (the board demo's `board:*`).
    #[serde(default = "default_session")]
    pub session: Vec<String>,
    #[serde(default = "default_ttl")]
    pub ttl_secs: u64,
}

fn default_tenant() -> String {
    "demo".to_owned()
}

fn default_rooms() -> Vec<String> {
    vec!["chat:*".to_owned()]
}

fn default_call() -> Vec<String> {
    vec!["*".to_owned()]
}

fn default_session() -> Vec<String> {
    vec!["board:*".to_owned()]
}

fn default_ttl() -> u64 {
    3600
}

/// The answer: the token and what it grants.
#[derive(Debug, Clone, Serialize)]
pub struct DevToken {
    pub token: String,
    pub user: String,
    pub tenant: String,
    /// Unix seconds.
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DevTokenError {
    #[error("user must be 1-256 bytes of UTF-8 without control characters")]
    BadUser,
    #[error("tenant must be 1-64 characters of A-Z a-z 0-9 _ . -")]
    BadTenant,
    #[error("ttl_secs must be 1-{MAX_TTL_SECS}")]
    BadTtl,
    #[error("signing failed: {0}")]
    Sign(String),
}

/// Mints dev tokens: the dev key plus the issuer and audience the relay checks.
pub struct DevTokens {
    signer: Signer,
    issuer: Option<String>,
    audience: Option<String>,
}

impl DevTokens {
    pub fn new(signer: Signer, issuer: Option<String>, audience: Option<String>) -> DevTokens {
        DevTokens { signer, issuer, audience }
    }

    /// A token for `request` issued at `now` (unix seconds).
    pub fn mint(&self, request: DevTokenRequest, now: u64) -> Result<DevToken, DevTokenError> {
        if !valid_sub(&request.user) {
            return Err(DevTokenError::BadUser);
        }
        if !valid_tenant(&request.tenant) {
            return Err(DevTokenError::BadTenant);
        }
        if request.ttl_secs == 0 || request.ttl_secs > MAX_TTL_SECS {
            return Err(DevTokenError::BadTtl);
        }
        let expires_at = now + request.ttl_secs;
        let claims = Claims {
            sub: request.user.clone(),
            tenant: request.tenant.clone(),
            exp: expires_at,
            nbf: None,
            iat: Some(now),
            jti: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone().map(Into::into),
            caps: Caps {
                join: request.rooms.clone(),
                publish: request.rooms,
                call: request.call,
                session: request.session,
                ..Caps::default()
            },
        };
        let token = self.signer.sign(&claims).map_err(|e| DevTokenError::Sign(e.to_string()))?;
        Ok(DevToken { token, user: request.user, tenant: request.tenant, expires_at })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Verifier;
    use crate::config::AuthConfig;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const NOW: u64 = 1_700_000_000;

    fn request(user: &str) -> DevTokenRequest {
        serde_json::from_value(serde_json::json!({ "user": user })).unwrap()
    }

    #[test]
    fn a_minted_token_verifies_with_the_dev_key_and_grants_the_demo_rooms() {
        let tokens = DevTokens::new(Signer::dev(SECRET), None, None);
        let minted = tokens.mint(request("alice"), NOW).unwrap();
        assert_eq!((minted.user.as_str(), minted.tenant.as_str(), minted.expires_at), ("alice", "demo", NOW + 3600));
        let verifier = Verifier::new(&AuthConfig::default(), Some(SECRET)).unwrap();
        let identity = verifier.verify(&minted.token, NOW).unwrap();
        assert!(identity.can_join("chat:lobby") && identity.can_publish("chat:lobby"));
        assert!(!identity.can_join("secret:room"));
        assert_eq!(identity.session_bound("board:team"), Some(crate::proto::SessionRole::Owner), "the board demo's");
        assert_eq!(identity.session_bound("doc:secret"), None);
    }

    #[test]
    fn bad_requests_are_refused_with_the_field_named() {
        let tokens = DevTokens::new(Signer::dev(SECRET), None, None);
        assert_eq!(tokens.mint(request(""), NOW).unwrap_err(), DevTokenError::BadUser);
        let mut r = request("alice");
        r.tenant = "no spaces".into();
        assert_eq!(tokens.mint(r, NOW).unwrap_err(), DevTokenError::BadTenant);
        for ttl in [0, MAX_TTL_SECS + 1] {
            let mut r = request("alice");
            r.ttl_secs = ttl;
            assert_eq!(tokens.mint(r, NOW).unwrap_err(), DevTokenError::BadTtl);
        }
        let unknown = serde_json::from_value::<DevTokenRequest>(serde_json::json!({"user": "a", "admin": true}));
        assert!(unknown.is_err(), "unknown fields are refused, not ignored");
    }
}
