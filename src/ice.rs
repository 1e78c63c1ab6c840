//! ICE servers for WebRTC and their TURN credentials (`ice_servers` frame, `GET /v1/ice`).
//!
//! The credentials are the TURN REST form coturn checks in `use-auth-secret` mode, with the
//! secret shared between the relay and every TURN server (coturn's `static-auth-secret`):
//!
//! - `username = "<expiry unix seconds>:<tenant>/<user>"`, the user percent-encoded where it
//!   holds `%`, `:` or `#` (so the first `:` ends the expiry and the first `/` the tenant: tenant
//!   names have neither), or `#` and 32 hex digits of the user's SHA-256 when the encoded
//!   username would not fit STUN's 512 bytes;
//! - `password = base64(HMAC-SHA1(secret, username))`.
//!
//! Why this form: coturn (and most TURN servers) verify it statelessly, with nothing to
//! provision per user; the expiry is inside the signed username. The relay never talks to the
//! TURN server. Everything here takes `now` as an argument.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::config::TurnConfig;
use crate::proto::IceServer;

/// Longest STUN `USERNAME` (RFC 8489 §14.3: fewer than 513 bytes).
pub const MAX_USERNAME_BYTES: usize = 512;

/// A TURN credential in the REST form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnCredential {
    pub username: String,
    pub password: String,
    /// Unix seconds; the TURN server refuses the credential from then on.
    pub expires_at: u64,
}

/// The username of a credential for `user` of `tenant` valid until `expires_at`.
pub fn turn_username(tenant: &str, user: &str, expires_at: u64) -> String {
    let mut encoded = String::with_capacity(user.len());
    for c in user.chars() {
        match c {
            '%' => encoded.push_str("%25"),
            ':' => encoded.push_str("%3A"),
            '#' => encoded.push_str("%23"),
            c => encoded.push(c),
        }
    }
    let username = format!("{expires_at}:{tenant}/{encoded}");
    if username.len() <= MAX_USERNAME_BYTES {
        return username;
    }
    let digest = crate::tls::sha256(user.as_bytes());
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{expires_at}:{tenant}/#{hex}")
}

/// `base64(HMAC-SHA1(secret, username))`.
pub fn turn_password(secret: &[u8], username: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    BASE64.encode(ring::hmac::sign(&key, username.as_bytes()).as_ref())
}

/// A credential for `user` of `tenant`, valid from `now` (unix seconds) for `ttl_secs`.
pub fn turn_credential(secret: &[u8], tenant: &str, user: &str, now: u64, ttl_secs: u64) -> TurnCredential {
    let expires_at = now.saturating_add(ttl_secs);
    let username = turn_username(tenant, user, expires_at);
    let password = turn_password(secret, &username);
    TurnCredential { username, password, expires_at }
}

/// Why `[turn]` could not be put to use at start.
#[derive(Debug, thiserror::Error)]
pub enum IceSetupError {
    #[error("config key `turn.secret_file`: cannot read {}: {error}", path.display())]
    SecretFile { path: PathBuf, error: std::io::Error },
    #[error("config key `turn.secret_file`: {} is empty", path.display())]
    EmptySecret { path: PathBuf },
}

/// Hands out the configured ICE servers with fresh TURN credentials.
pub struct IceIssuer {
    stun_urls: Vec<String>,
    turn_urls: Vec<String>,
    /// `None`: no TURN (STUN only, or nothing).
    secret: Option<Vec<u8>>,
    ttl_secs: u64,
}

impl std::fmt::Debug for IceIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IceIssuer")
            .field("stun_urls", &self.stun_urls)
            .field("turn_urls", &self.turn_urls)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

impl IceIssuer {
    /// From a validated `[turn]`; reads `turn.secret_file` (trailing whitespace removed).
    pub fn from_config(cfg: &TurnConfig) -> Result<IceIssuer, IceSetupError> {
        let secret = match (&cfg.secret, &cfg.secret_file) {
            (Some(secret), _) => Some(secret.as_bytes().to_vec()),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| IceSetupError::SecretFile { path: path.clone(), error })?;
                let secret = text.trim_end();
                if secret.is_empty() {
                    return Err(IceSetupError::EmptySecret { path: path.clone() });
                }
                Some(secret.as_bytes().to_vec())
            }
            (None, None) => None,
        };
        // Validation refuses URLs without a secret; without one there is no TURN entry anyway.
        let turn_urls = if secret.is_some() { cfg.urls.clone() } else { Vec::new() };
        Ok(IceIssuer { stun_urls: cfg.stun_urls.clone(), turn_urls, secret, ttl_secs: cfg.ttl_secs })
    }

    /// The ICE servers for `user` of `tenant` at `now` (unix seconds): one entry with every STUN
    /// URL (no credentials) if any, then one with every TURN URL and a credential if a secret
    /// is configured; and when the credential expires (`now + ttl_secs`, also when there is
    /// none).
    pub fn servers(&self, tenant: &str, user: &str, now: u64) -> (Vec<IceServer>, u64) {
        let mut servers = Vec::with_capacity(2);
        if !self.stun_urls.is_empty() {
            servers.push(IceServer { urls: self.stun_urls.clone(), username: None, credential: None });
        }
        let expires_at = now.saturating_add(self.ttl_secs);
        if let Some(secret) = &self.secret
            && !self.turn_urls.is_empty()
        {
            let credential = turn_credential(secret, tenant, user, now, self.ttl_secs);
            servers.push(IceServer {
                urls: self.turn_urls.clone(),
                username: Some(credential.username),
                credential: Some(credential.password),
            });
        }
        (servers, expires_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"edgerelay-test-secret";

    #[test]
    fn known_vector() {
        // Computed independently:
        // python3 -c "import hmac,hashlib,base64; u='1700086400:acme/alice';
        //   print(base64.b64encode(hmac.new(b'edgerelay-test-secret',u.encode(),hashlib.sha1).digest()).decode())"
        let c = turn_credential(SECRET, "acme", "alice", 1_700_000_000, 86_400);
        assert_eq!(c.username, "1700086400:acme/alice");
        assert_eq!(c.password, "WO0uCwAps3TeZPw85UvYp+Lz6Nk=");
        assert_eq!(c.expires_at, 1_700_086_400);
        // The same with ':' in the user, percent-encoded before signing:
        // u='1700003600:acme/bob%3Awork' → xQuIw6XyaiyBmtc5MhTjlyRX/58=
        let c = turn_credential(SECRET, "acme", "bob:work", 1_700_000_000, 3600);
        assert_eq!(c.username, "1700003600:acme/bob%3Awork");
        assert_eq!(c.password, "xQuIw6XyaiyBmtc5MhTjlyRX/58=");
    }

    #[test]
    fn username_is_tenant_scoped_and_unambiguous() {
        assert_eq!(turn_username("t1", "alice", 5), "5:t1/alice");
        assert_ne!(turn_username("t1", "alice", 5), turn_username("t2", "alice", 5), "tenants differ");
        // Only the expiry precedes the first ':'; only the tenant precedes the first '/'.
        assert_eq!(turn_username("a.b", "c/d:e%f#g", 5), "5:a.b/c/d%3Ae%25f%23g");
        assert_eq!(turn_username("t", "é", 5), "5:t/é", "other characters stay as they are");
        // A user that does not fit STUN's USERNAME is replaced by a digest, marked by '#' (which
        // an encoded user never holds).
        let long = ":".repeat(256);
        let name = turn_username("t", &long, 1_700_000_000);
        assert!(name.len() <= MAX_USERNAME_BYTES);
        let user_part = name.strip_prefix("1700000000:t/#").expect(&name);
        assert_eq!(user_part.len(), 32);
        assert!(user_part.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(name, turn_username("t", &":".repeat(255), 1_700_000_000));
        let fits = "a".repeat(256);
        assert!(turn_username(&"t".repeat(64), &fits, u64::MAX).ends_with(&fits), "the longest plain sub fits");
    }

    #[test]
    fn expiry_follows_now_and_ttl() {
        let c = turn_credential(SECRET, "acme", "alice", 100, 60);
        assert_eq!(c.expires_at, 160);
        assert!(c.username.starts_with("160:"));
        let later = turn_credential(SECRET, "acme", "alice", 101, 60);
        assert_ne!(c.password, later.password, "a new expiry is a new password");
        assert_eq!(turn_credential(SECRET, "acme", "alice", u64::MAX - 1, 60).expires_at, u64::MAX);
    }

    #[test]
    fn issuer_lists_stun_then_turn() {
        let mut cfg = TurnConfig {
            urls: vec!["turn:a:3478?transport=udp".into(), "turns:b:5349".into()],
            stun_urls: vec!["stun:s:3478".into()],
            secret: Some("edgerelay-test-secret".into()),
            ..TurnConfig::default()
        };
        let issuer = IceIssuer::from_config(&cfg).unwrap();
        assert!(!format!("{issuer:?}").contains("edgerelay-test-secret"));
        let (servers, expires_at) = issuer.servers("acme", "alice", 1_700_000_000);
        assert_eq!(expires_at, 1_700_086_400);
        assert_eq!(servers.len(), 2);
        assert_eq!(servers[0], IceServer { urls: vec!["stun:s:3478".into()], username: None, credential: None });
        assert_eq!(servers[1].urls, cfg.urls);
        assert_eq!(servers[1].username.as_deref(), Some("1700086400:acme/alice"));
        assert_eq!(servers[1].credential.as_deref(), Some("WO0uCwAps3TeZPw85UvYp+Lz6Nk="));

        // From a file, trailing newline removed: the same credential.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turn-secret");
        std::fs::write(&path, "edgerelay-test-secret\n").unwrap();
        cfg.secret = None;
        cfg.secret_file = Some(path.clone());
        let (from_file, _) = IceIssuer::from_config(&cfg).unwrap().servers("acme", "alice", 1_700_000_000);
        assert_eq!(from_file, servers);
        std::fs::write(&path, " \n").unwrap();
        assert!(matches!(IceIssuer::from_config(&cfg), Err(IceSetupError::EmptySecret { .. })));
        cfg.secret_file = Some(dir.path().join("missing"));
        let err = IceIssuer::from_config(&cfg).unwrap_err();
        assert!(err.to_string().contains("turn.secret_file"), "{err}");

        // No secret: STUN only; nothing configured: an empty list.
        let stun_only = TurnConfig { stun_urls: vec!["stun:s:3478".into()], ..TurnConfig::default() };
        let (servers, expires_at) = IceIssuer::from_config(&stun_only).unwrap().servers("acme", "alice", 10);
        assert_eq!(servers, vec![IceServer { urls: vec!["stun:s:3478".into()], username: None, credential: None }]);
        assert_eq!(expires_at, 10 + 86_400);
        let (servers, _) = IceIssuer::from_config(&TurnConfig::default()).unwrap().servers("acme", "alice", 10);
        assert!(servers.is_empty());
    }
}
