//! Token verification, room capabilities and token minting.
//!
//! Why it is built this way: the relay never talks to an auth server; a client proves who it is
//! with a JWT minted by the application's backend. Each configured key is pinned to one algorithm
//! (the header's `alg` must equal the key's), which closes the classic "alg confusion" holes
//! (HS256 signed with a public key, `none`). Time is always passed in, so expiry is testable and
//! consistent within one request. What a token allows is expressed as room patterns in `caps`,
//! checked per operation without any lookup.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::{AuthConfig, KeyAlg, KeyConfig};
use crate::proto::ErrorCode;

/// The kid of the dev HS256 key.
pub const DEV_KID: &str = "dev";
/// Tokens longer than this are rejected before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest accepted `sub`.
pub const MAX_SUB_BYTES: usize = 256;
/// Longest accepted `tenant`.
pub const MAX_TENANT_CHARS: usize = 64;

/// Token claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub sub: String,
    pub tenant: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
    #[serde(default)]
    pub caps: Caps,
}

/// The `aud` claim: one string or an array of them (RFC 7519 §4.1.3 allows both). A token is
/// for this relay when `auth.audience` is one of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    pub fn contains(&self, audience: &str) -> bool {
        match self {
            Audience::One(one) => one == audience,
            Audience::Many(many) => many.iter().any(|a| a == audience),
        }
    }
}

impl From<String> for Audience {
    fn from(audience: String) -> Self {
        Audience::One(audience)
    }
}

/// Room patterns a token grants, per operation. See [`pattern_matches`].
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Caps {
    #[serde(default)]
    pub join: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    /// Rooms the user may publish media tracks in (calls, docs/media.md). Receiving media needs
    /// only `join`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub media: Vec<String>,
    /// Users the user may place 1:1 calls to (docs/calls.md): patterns matched against the
    /// callee's user id in the caller's tenant, `{sub}` standing for the user's own id.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub call: Vec<String>,
    /// Collaborative sessions the user may create, join and edit (docs/sessions.md): patterns
    /// matched against the session id. The session's own role for the user still applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session: Vec<String>,
    /// Sessions the user may join as a viewer at most, whatever role the session gives them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub session_read: Vec<String>,
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: String,
    pub tenant: String,
    pub caps: Caps,
    /// Unix seconds (the token's `exp`).
    pub expires_at: u64,
    pub token_id: Option<String>,
    /// Unix seconds (the token's `iat`), when it has one.
    pub issued_at: Option<u64>,
}

impl Identity {
    pub fn can_join(&self, room: &str) -> bool {
        self.caps.join.iter().any(|p| pattern_matches(p, room, &self.user))
    }

    pub fn can_publish(&self, room: &str) -> bool {
        self.caps.publish.iter().any(|p| pattern_matches(p, room, &self.user))
    }

    pub fn can_publish_media(&self, room: &str) -> bool {
        self.caps.media.iter().any(|p| pattern_matches(p, room, &self.user))
    }

    /// Whether the token allows placing a call to `callee` (a user id of the same tenant).
    pub fn can_call(&self, callee: &str) -> bool {
        self.caps.call.iter().any(|p| pattern_matches(p, callee, &self.user))
    }

    /// The highest role the token allows in session `id`: `owner` (no bound) through
    /// `caps.session`, `viewer` through `caps.session_read` only, `None`: no access.
    pub fn session_bound(&self, id: &str) -> Option<crate::proto::SessionRole> {
        use crate::proto::SessionRole;
        let matches = |list: &[String]| list.iter().any(|p| pattern_matches(p, id, &self.user));
        if matches(&self.caps.session) {
            Some(SessionRole::Owner)
        } else if matches(&self.caps.session_read) {
            Some(SessionRole::Viewer)
        } else {
            None
        }
    }
}

/// Room capability pattern match: `*` matches any run of characters (including none),
/// everything else matches literally; `{sub}` is replaced by the user id before matching (so
/// `dm:{sub}:*` gives personal rooms). The user id is always literal: a `*` in it is no wildcard.
pub fn pattern_matches(pattern: &str, room: &str, user: &str) -> bool {
    #[derive(Clone, Copy, PartialEq)]
    enum Tok {
        Lit(char),
        Star,
    }
    let mut toks = Vec::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(c) = rest.chars().next() {
        if let Some(after) = rest.strip_prefix("{sub}") {
            toks.extend(user.chars().map(Tok::Lit));
            rest = after;
        } else {
            toks.push(if c == '*' { Tok::Star } else { Tok::Lit(c) });
            rest = &rest[c.len_utf8()..];
        }
    }
    let room: Vec<char> = room.chars().collect();

    // Greedy wildcard match with backtracking to the last star: O(len(pattern) * len(room)).
    let (mut p, mut r) = (0, 0);
    let mut last_star: Option<(usize, usize)> = None;
    while r < room.len() {
        match toks.get(p) {
            Some(Tok::Lit(c)) if *c == room[r] => {
                p += 1;
                r += 1;
            }
            Some(Tok::Star) => {
                last_star = Some((p, r));
                p += 1;
            }
            _ => match last_star {
                Some((sp, sr)) => {
                    p = sp + 1;
                    r = sr + 1;
                    last_star = Some((sp, sr + 1));
                }
                None => return false,
            },
        }
    }
    toks[p..].iter().all(|t| *t == Tok::Star)
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unknown signing key")]
    UnknownKey,
    #[error("token algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("bad token signature")]
    BadSignature,
    /// The token names the dev key (kid `dev`) but this relay's dev secret did not sign it:
    /// most often it was minted against another data directory.
    #[error(
        "bad token signature: the token names the dev key (kid `dev`) but this relay's dev secret did not sign it; \
         it may have been minted with another dev secret (another data directory): mint it with `edgerelay token` \
         pointed at this relay's data directory (--data-dir or --config, as the relay's banner prints it)"
    )]
    BadDevSignature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("invalid claim: {0}")]
    InvalidClaim(String),
}

impl AuthError {
    /// The protocol error code sent to the client.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Expired => ErrorCode::TOKEN_EXPIRED,
            AuthError::NotYetValid => ErrorCode::TOKEN_NOT_YET_VALID,
            _ => ErrorCode::TOKEN_INVALID,
        }
    }
}

/// A key could not be set up (at startup or when minting). `key` names the config key, e.g.
/// `auth.keys[kid=main].public_key_file`.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    // The cause is in the message and not also `source()`, so `{:#}` names it once.
    #[error("{key}: {}: {error}", path.display())]
    Io { key: String, path: std::path::PathBuf, error: std::io::Error },
    #[error("{key}: {message}")]
    Key { key: String, message: String },
    #[error("signing token: {0}")]
    Sign(String),
}

fn setup_err(key: impl Into<String>, message: impl Into<String>) -> AuthSetupError {
    AuthSetupError::Key { key: key.into(), message: message.into() }
}

fn jwt_alg(alg: KeyAlg) -> Algorithm {
    match alg {
        KeyAlg::HS256 => Algorithm::HS256,
        KeyAlg::ES256 => Algorithm::ES256,
        KeyAlg::RS256 => Algorithm::RS256,
    }
}

fn read_key_file(key: String, path: &Path) -> Result<Vec<u8>, AuthSetupError> {
    std::fs::read(path).map_err(|error| AuthSetupError::Io { key, path: path.to_path_buf(), error })
}

/// An ES256/RS256 key from the PEM file in one of its fields, parsed by `parse`. Errors name the
/// field (`auth.keys[kid=main].public_key_file`); `missing` says why the field is required and
/// `holds` what the file must hold.
fn pem_key<K>(
    k: &KeyConfig,
    field: &str,
    path: Option<&Path>,
    missing: &str,
    holds: &str,
    parse: fn(&[u8]) -> jsonwebtoken::errors::Result<K>,
) -> Result<K, AuthSetupError> {
    let field = format!("{}.{field}", k.config_key());
    let path = path.ok_or_else(|| setup_err(&field, missing))?;
    let pem = read_key_file(field.clone(), path)?;
    parse(&pem).map_err(|e| setup_err(&field, format!("not a {} {holds}: {e}", k.alg)))
}

/// The HS256 secret of a key config: inline, or the file's bytes without trailing whitespace.
fn hs256_secret(k: &KeyConfig) -> Result<Vec<u8>, AuthSetupError> {
    let base = k.config_key();
    let secret = match (&k.secret, &k.secret_file) {
        (Some(s), None) => s.as_bytes().to_vec(),
        (None, Some(path)) => {
            let mut bytes = read_key_file(format!("{base}.secret_file"), path)?;
            while bytes.last().is_some_and(|b| b.is_ascii_whitespace()) {
                bytes.pop();
            }
            bytes
        }
        _ => {
            return Err(setup_err(format!("{base}.secret"), "HS256 needs exactly one of secret and secret_file"));
        }
    };
    if secret.is_empty() {
        return Err(setup_err(format!("{base}.secret"), "secret is empty"));
    }
    Ok(secret)
}

struct VerifyKey {
    kid: String,
    alg: Algorithm,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys. Built once at startup and shared.
pub struct Verifier {
    keys: Vec<VerifyKey>,
    leeway: u64,
    issuer: Option<String>,
    audience: Option<String>,
    refusals: RefusalLog,
}

/// Refused tokens, logged at WARN at most once per second (of the `now` given to
/// [`Verifier::verify`]): a line for the first refusal of a second, which also counts the ones
/// left unlogged since the previous line. A flood of bad tokens costs a line a second, and an
/// operator still sees that tokens are being refused and why.
#[derive(Default)]
struct RefusalLog {
    state: std::sync::Mutex<RefusalState>,
}

#[derive(Default)]
struct RefusalState {
    /// The second of the last line logged.
    logged_at: Option<u64>,
    /// Refusals since then that were not logged, and the last one's reason.
    unlogged: u64,
    last_unlogged: String,
}

impl RefusalLog {
    fn note(&self, err: &AuthError, kid: Option<&str>, now: u64) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.logged_at == Some(now) {
            state.unlogged += 1;
            state.last_unlogged = err.to_string();
            return;
        }
        state.logged_at = Some(now);
        let unlogged = std::mem::take(&mut state.unlogged);
        let last = std::mem::take(&mut state.last_unlogged);
        drop(state);
        let kid = kid.unwrap_or("-");
        if unlogged == 0 {
            tracing::warn!(kid, "token refused: {err}");
        } else {
            tracing::warn!(
                kid,
                "token refused: {err} (and {unlogged} more since the previous such line, the last: {last})"
            );
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<String> = self.keys.iter().map(|k| format!("{}:{:?}", k.kid, k.alg)).collect();
        f.debug_struct("Verifier")
            .field("keys", &keys)
            .field("leeway", &self.leeway)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl Verifier {
    /// Keys from `cfg` plus, when `cfg.dev_keys`, the HS256 `dev_secret` under kid `dev`.
    /// Reads key files; errors name the config key.
    pub fn new(cfg: &AuthConfig, dev_secret: Option<&[u8]>) -> Result<Verifier, AuthSetupError> {
        let mut keys = Vec::with_capacity(cfg.keys.len() + 1);
        if cfg.dev_keys {
            let secret = dev_secret
                .filter(|s| !s.is_empty())
                .ok_or_else(|| setup_err("auth.dev_keys", "enabled but no dev secret given"))?;
            keys.push(VerifyKey {
                kid: DEV_KID.to_string(),
                alg: Algorithm::HS256,
                key: DecodingKey::from_secret(secret),
            });
        }
        for k in &cfg.keys {
            let base = k.config_key();
            if keys.iter().any(|existing| existing.kid == k.kid) {
                return Err(setup_err(format!("{base}.kid"), "duplicate kid"));
            }
            let key = match k.alg {
                KeyAlg::HS256 => DecodingKey::from_secret(&hs256_secret(k)?),
                KeyAlg::ES256 | KeyAlg::RS256 => pem_key(
                    k,
                    "public_key_file",
                    k.public_key_file.as_deref(),
                    &format!("required for {}", k.alg),
                    "public key PEM",
                    if k.alg == KeyAlg::ES256 { DecodingKey::from_ec_pem } else { DecodingKey::from_rsa_pem },
                )?,
            };
            keys.push(VerifyKey { kid: k.kid.clone(), alg: jwt_alg(k.alg), key });
        }
        if keys.is_empty() {
            return Err(setup_err("auth.keys", "no token keys: add [[auth.keys]] or set auth.dev_keys = true"));
        }
        Ok(Verifier {
            keys,
            leeway: cfg.leeway_secs,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            refusals: RefusalLog::default(),
        })
    }

    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub fn leeway_secs(&self) -> u64 {
        self.leeway
    }

    /// Verifies `token` at `now` (unix seconds).
    ///
    /// The header's `alg` must equal the key's. With a `kid` only that key is tried; without
    /// one, every key with the header's `alg`. Then `exp`/`nbf` (with leeway), `sub`, `tenant`
    /// and the configured `iss`/`aud` are checked.
    ///
    /// A refusal is logged (at WARN, at most a line per second; see [`RefusalLog`]).
    pub fn verify(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        let verified = self.verify_quietly(token, now);
        if let Err(err) = &verified {
            let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
            self.refusals.note(err, kid.as_deref(), now);
        }
        verified
    }

    fn verify_quietly(&self, token: &str, now: u64) -> Result<Identity, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed(format!("longer than {MAX_TOKEN_BYTES} bytes")));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;

        let candidates: Vec<&VerifyKey> = match &header.kid {
            Some(kid) => {
                let key = self.keys.iter().find(|k| &k.kid == kid).ok_or(AuthError::UnknownKey)?;
                if key.alg != header.alg {
                    return Err(AuthError::AlgorithmMismatch);
                }
                vec![key]
            }
            None => {
                let same_alg: Vec<_> = self.keys.iter().filter(|k| k.alg == header.alg).collect();
                if same_alg.is_empty() {
                    return Err(AuthError::AlgorithmMismatch);
                }
                same_alg
            }
        };

        let mut validation = Validation::new(header.alg);
        // Time and claims are checked below against the `now` we were given.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();

        let mut raw = None;
        for key in candidates {
            match jsonwebtoken::decode::<serde_json::Value>(token, &key.key, &validation) {
                Ok(data) => {
                    raw = Some(data.claims);
                    break;
                }
                Err(e) => match e.kind() {
                    jsonwebtoken::errors::ErrorKind::InvalidSignature => continue,
                    jsonwebtoken::errors::ErrorKind::InvalidEcdsaKey
                    | jsonwebtoken::errors::ErrorKind::InvalidRsaKey(_)
                    | jsonwebtoken::errors::ErrorKind::InvalidKeyFormat => {
                        // A key that cannot verify anything; the token cannot be accepted by it.
                        tracing::warn!(kid = %key.kid, error = %e, "token key unusable");
                        continue;
                    }
                    _ => return Err(AuthError::Malformed(e.to_string())),
                },
            }
        }
        let raw = raw.ok_or(if header.kid.as_deref() == Some(DEV_KID) {
            AuthError::BadDevSignature
        } else {
            AuthError::BadSignature
        })?;
        // The signature is good from here on; claim errors may be specific.
        let claims: Claims = serde_json::from_value(raw).map_err(|e| AuthError::InvalidClaim(e.to_string()))?;
        self.check_claims(claims, now)
    }

    fn check_claims(&self, claims: Claims, now: u64) -> Result<Identity, AuthError> {
        // Valid while now < exp (+ leeway), as RFC 7519 puts it.
        if now >= claims.exp.saturating_add(self.leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && nbf > now.saturating_add(self.leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        if !valid_sub(&claims.sub) {
            return Err(AuthError::InvalidClaim(format!(
                "sub must be 1-{MAX_SUB_BYTES} bytes without control characters"
            )));
        }
        if !valid_tenant(&claims.tenant) {
            return Err(AuthError::InvalidClaim(format!(
                "tenant must be 1-{MAX_TENANT_CHARS} characters of [A-Za-z0-9_.-]"
            )));
        }
        if let Some(iss) = &self.issuer
            && claims.iss.as_ref() != Some(iss)
        {
            return Err(AuthError::InvalidClaim("iss does not match".into()));
        }
        if let Some(aud) = &self.audience
            && !claims.aud.as_ref().is_some_and(|a| a.contains(aud))
        {
            return Err(AuthError::InvalidClaim("aud does not match".into()));
        }
        Ok(Identity {
            user: claims.sub,
            tenant: claims.tenant,
            caps: claims.caps,
            expires_at: claims.exp,
            token_id: claims.jti,
            issued_at: claims.iat,
        })
    }
}

/// User ids (`sub`, a call's callee): 1-256 bytes of UTF-8 without control characters.
pub fn valid_sub(sub: &str) -> bool {
    !sub.is_empty() && sub.len() <= MAX_SUB_BYTES && !sub.chars().any(char::is_control)
}

/// Tenant names: 1-64 characters of `[A-Za-z0-9_.-]`.
pub fn valid_tenant(tenant: &str) -> bool {
    (1..=MAX_TENANT_CHARS).contains(&tenant.len())
        && tenant.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// A key to sign tokens with: the dev secret, or a configured key that has a secret or a
/// private key.
pub struct Signer {
    kid: String,
    alg: Algorithm,
    key: EncodingKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl Signer {
    /// HS256 with the dev secret, kid `dev`.
    pub fn dev(secret: &[u8]) -> Signer {
        Signer { kid: DEV_KID.to_string(), alg: Algorithm::HS256, key: EncodingKey::from_secret(secret) }
    }

    /// A configured key: HS256 uses its secret, ES256/RS256 its `private_key_file` (PKCS#8 PEM).
    pub fn from_key_config(k: &KeyConfig) -> Result<Signer, AuthSetupError> {
        let key = match k.alg {
            KeyAlg::HS256 => EncodingKey::from_secret(&hs256_secret(k)?),
            KeyAlg::ES256 | KeyAlg::RS256 => pem_key(
                k,
                "private_key_file",
                k.private_key_file.as_deref(),
                &format!("needed to sign {} tokens", k.alg),
                "PKCS#8 private key PEM",
                if k.alg == KeyAlg::ES256 { EncodingKey::from_ec_pem } else { EncodingKey::from_rsa_pem },
            )?,
        };
        Ok(Signer { kid: k.kid.clone(), alg: jwt_alg(k.alg), key })
    }

    /// The key id put in the token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A signed JWT with `kid` and `alg` in the header.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthSetupError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| AuthSetupError::Sign(e.to_string()))
    }
}

/// Parses a TTL like `30s`, `15m`, `1h`, `7d` or plain seconds. Zero is refused.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, ""),
    };
    let multiplier: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("bad TTL `{text}`: use e.g. 30s, 15m, 1h, 7d")),
    };
    let n: u64 = digits.parse().map_err(|_| format!("bad TTL `{text}`: use e.g. 30s, 15m, 1h, 7d"))?;
    if n == 0 {
        return Err(format!("bad TTL `{text}`: must be greater than 0"));
    }
    n.checked_mul(multiplier).map(Duration::from_secs).ok_or_else(|| format!("bad TTL `{text}`: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const NOW: u64 = 1_700_000_000;
    const DEV_SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn claims(exp: u64) -> Claims {
        Claims {
            sub: "alice".into(),
            tenant: "acme".into(),
            exp,
            nbf: None,
            iat: Some(NOW),
            jti: Some("t1".into()),
            iss: None,
            aud: None,
            caps: Caps {
                join: vec!["chat:*".into(), "dm:{sub}:*".into()],
                publish: vec!["chat:*".into()],
                media: Vec::new(),
                ..Caps::default()
            },
        }
    }

    fn dev_cfg() -> AuthConfig {
        AuthConfig::default()
    }

    fn dev_verifier() -> Verifier {
        Verifier::new(&dev_cfg(), Some(DEV_SECRET)).unwrap()
    }

    fn key_cfg(kid: &str, alg: KeyAlg) -> KeyConfig {
        KeyConfig {
            kid: kid.into(),
            alg,
            secret: None,
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
        }
    }

    fn test_keys_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys")
    }

    #[test]
    fn verifier_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Verifier>();
        assert_send_sync::<Signer>();
    }

    #[test]
    fn dev_round_trip() {
        let token = Signer::dev(DEV_SECRET).sign(&claims(NOW + 600)).unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("dev"));
        assert_eq!(header.alg, Algorithm::HS256);
        let id = dev_verifier().verify(&token, NOW).unwrap();
        assert_eq!(id.user, "alice");
        assert_eq!(id.tenant, "acme");
        assert_eq!(id.expires_at, NOW + 600);
        assert_eq!(id.token_id.as_deref(), Some("t1"));
        assert!(id.can_join("chat:lobby"));
        assert!(id.can_join("dm:alice:bob"));
        assert!(!id.can_join("dm:bob:alice"));
        assert!(id.can_publish("chat:lobby"));
        assert!(!id.can_publish("dm:alice:bob"));
    }

    #[test]
    fn expiry_with_leeway() {
        let v = dev_verifier(); // leeway 30 s
        let token = Signer::dev(DEV_SECRET).sign(&claims(NOW)).unwrap();
        assert!(v.verify(&token, NOW - 1).is_ok());
        assert!(v.verify(&token, NOW + 29).is_ok(), "within leeway");
        assert_eq!(v.verify(&token, NOW + 30), Err(AuthError::Expired));
        assert_eq!(v.verify(&token, NOW + 3600), Err(AuthError::Expired));
        assert_eq!(AuthError::Expired.code(), ErrorCode::TOKEN_EXPIRED);
    }

    #[test]
    fn not_before_in_future() {
        let v = dev_verifier();
        let mut c = claims(NOW + 3600);
        c.nbf = Some(NOW + 600);
        let token = Signer::dev(DEV_SECRET).sign(&c).unwrap();
        let err = v.verify(&token, NOW).unwrap_err();
        assert_eq!(err, AuthError::NotYetValid);
        assert_eq!(err.code(), ErrorCode::TOKEN_NOT_YET_VALID);
        assert!(v.verify(&token, NOW + 580).is_ok(), "within leeway");
        assert!(v.verify(&token, NOW + 600).is_ok());
    }

    /// Log lines written while `f` runs.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Sink {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let writer = sink.clone();
        let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(sink.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn refusals_are_logged_at_most_once_per_second_with_a_count() {
        let v = dev_verifier();
        let foreign = Signer::dev(b"another-secret-another-secret!!!").sign(&claims(NOW + 60)).unwrap();
        let log = logged(|| {
            for _ in 0..5 {
                assert!(v.verify(&foreign, NOW).is_err());
            }
            assert!(v.verify("garbage", NOW).is_err());
            assert!(v.verify(&foreign, NOW + 1).is_err());
            assert!(v.verify(&foreign, NOW + 1).is_err());
            let ok = Signer::dev(DEV_SECRET).sign(&claims(NOW + 60)).unwrap();
            assert!(v.verify(&ok, NOW + 2).is_ok(), "an accepted token is not logged");
        });
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "one line per second with refusals:\n{log}");
        assert!(lines.iter().all(|l| l.contains("WARN") && l.contains("token refused")), "{log}");
        assert!(lines[0].contains("another dev secret") && lines[0].contains("kid=\"dev\""), "{log}");
        assert!(lines[1].contains("and 5 more") && lines[1].contains("the last: malformed token"), "{log}");
    }

    #[test]
    fn wrong_secret_is_bad_signature() {
        let token = Signer::dev(b"another-secret-another-secret!!!").sign(&claims(NOW + 60)).unwrap();
        let err = dev_verifier().verify(&token, NOW).unwrap_err();
        assert_eq!(err, AuthError::BadDevSignature);
        assert!(err.to_string().contains("minted with another dev secret"), "{err}");
        assert_eq!(err.code(), ErrorCode::TOKEN_INVALID);
    }

    #[test]
    fn garbage_is_malformed() {
        let v = dev_verifier();
        for token in ["", "garbage", "a.b.c", "....", &"x".repeat(MAX_TOKEN_BYTES + 1)] {
            let err = v.verify(token, NOW).unwrap_err();
            assert!(matches!(err, AuthError::Malformed(_)), "{token:?}: {err:?}");
            assert_eq!(err.code(), ErrorCode::TOKEN_INVALID);
        }
    }

    #[test]
    fn claim_checks() {
        let v = dev_verifier();
        let signer = Signer::dev(DEV_SECRET);

        // Missing tenant: signature fine, claims not.
        let mut raw = serde_json::to_value(claims(NOW + 60)).unwrap();
        raw.as_object_mut().unwrap().remove("tenant");
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("dev".into());
        let token = jsonwebtoken::encode(&header, &raw, &EncodingKey::from_secret(DEV_SECRET)).unwrap();
        assert!(matches!(v.verify(&token, NOW), Err(AuthError::InvalidClaim(_))));

        for tenant in ["", "acme corp", "a/b", &"t".repeat(65)] {
            let mut c = claims(NOW + 60);
            c.tenant = tenant.into();
            let token = signer.sign(&c).unwrap();
            assert!(matches!(v.verify(&token, NOW), Err(AuthError::InvalidClaim(_))), "{tenant:?}");
        }
        let mut c = claims(NOW + 60);
        c.sub = String::new();
        let token = signer.sign(&c).unwrap();
        assert!(matches!(v.verify(&token, NOW), Err(AuthError::InvalidClaim(_))));
    }

    #[test]
    fn issuer_and_audience() {
        let mut cfg = dev_cfg();
        cfg.issuer = Some("https://auth.example".into());
        cfg.audience = Some("edgerelay".into());
        let v = Verifier::new(&cfg, Some(DEV_SECRET)).unwrap();
        let signer = Signer::dev(DEV_SECRET);

        let mut c = claims(NOW + 60);
        assert!(matches!(v.verify(&signer.sign(&c).unwrap(), NOW), Err(AuthError::InvalidClaim(_))));
        c.iss = Some("https://auth.example".into());
        c.aud = Some(Audience::One("other".into()));
        assert!(matches!(v.verify(&signer.sign(&c).unwrap(), NOW), Err(AuthError::InvalidClaim(_))));
        c.aud = Some(Audience::One("edgerelay".into()));
        assert!(v.verify(&signer.sign(&c).unwrap(), NOW).is_ok());
        // An array (RFC 7519) that names this relay among others.
        c.aud = Some(Audience::Many(vec!["billing".into(), "edgerelay".into()]));
        assert!(v.verify(&signer.sign(&c).unwrap(), NOW).is_ok());
        c.aud = Some(Audience::Many(vec!["billing".into()]));
        assert!(matches!(v.verify(&signer.sign(&c).unwrap(), NOW), Err(AuthError::InvalidClaim(_))));
        // Without auth.audience, any aud (string or array) is accepted.
        let open = Verifier::new(&dev_cfg(), Some(DEV_SECRET)).unwrap();
        assert!(open.verify(&signer.sign(&c).unwrap(), NOW).is_ok());
    }

    /// Writes a fresh ES256 keypair (public SPKI PEM, private PKCS#8 PEM) into `dir`.
    fn es256_files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let public = dir.join(format!("{name}.pub.pem"));
        let private = dir.join(format!("{name}.key.pem"));
        std::fs::write(&public, kp.public_key_pem()).unwrap();
        std::fs::write(&private, kp.serialize_pem()).unwrap();
        (public, private)
    }

    #[test]
    fn es256_verification_and_kid_selection() {
        let dir = tempfile::tempdir().unwrap();
        let (pub_a, priv_a) = es256_files(dir.path(), "a");
        let (pub_b, priv_b) = es256_files(dir.path(), "b");
        let mut ka = key_cfg("a", KeyAlg::ES256);
        ka.public_key_file = Some(pub_a);
        ka.private_key_file = Some(priv_a);
        let mut kb = key_cfg("b", KeyAlg::ES256);
        kb.public_key_file = Some(pub_b);
        kb.private_key_file = Some(priv_b);
        let cfg = AuthConfig { dev_keys: false, keys: vec![ka.clone(), kb.clone()], ..AuthConfig::default() };
        let v = Verifier::new(&cfg, None).unwrap();

        let signer_a = Signer::from_key_config(&ka).unwrap();
        let signer_b = Signer::from_key_config(&kb).unwrap();
        assert_eq!(signer_a.kid(), "a");
        let ta = signer_a.sign(&claims(NOW + 60)).unwrap();
        let tb = signer_b.sign(&claims(NOW + 60)).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&ta).unwrap().alg, Algorithm::ES256);
        assert!(v.verify(&ta, NOW).is_ok());
        assert!(v.verify(&tb, NOW).is_ok());

        // A token signed by b but claiming kid a: only key a is tried.
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("a".into());
        let forged = jsonwebtoken::encode(
            &header,
            &claims(NOW + 60),
            &EncodingKey::from_ec_pem(&std::fs::read(kb.private_key_file.as_ref().unwrap()).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&forged, NOW), Err(AuthError::BadSignature));

        // Unknown kid.
        header.kid = Some("zzz".into());
        let t = jsonwebtoken::encode(
            &header,
            &claims(NOW + 60),
            &EncodingKey::from_ec_pem(&std::fs::read(ka.private_key_file.as_ref().unwrap()).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&t, NOW), Err(AuthError::UnknownKey));

        // No kid: every ES256 key is tried, so b's token verifies.
        header.kid = None;
        let t = jsonwebtoken::encode(
            &header,
            &claims(NOW + 60),
            &EncodingKey::from_ec_pem(&std::fs::read(kb.private_key_file.as_ref().unwrap()).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(v.verify(&t, NOW).unwrap().user, "alice");
    }

    #[test]
    fn rs256_verification() {
        let keys = test_keys_dir();
        let mut k = key_cfg("rsa", KeyAlg::RS256);
        k.public_key_file = Some(keys.join("rs256-test-public.pem"));
        k.private_key_file = Some(keys.join("rs256-test-private.pem"));
        let cfg = AuthConfig { keys: vec![k.clone()], ..AuthConfig::default() };
        let v = Verifier::new(&cfg, Some(DEV_SECRET)).unwrap();
        let token = Signer::from_key_config(&k).unwrap().sign(&claims(NOW + 60)).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&token).unwrap().alg, Algorithm::RS256);
        assert_eq!(v.verify(&token, NOW).unwrap().tenant, "acme");
        // Tampered payload.
        let mut parts: Vec<&str> = token.split('.').collect();
        let other = Signer::dev(DEV_SECRET).sign(&claims(NOW + 999)).unwrap();
        let other_payload = other.split('.').nth(1).unwrap().to_string();
        parts[1] = &other_payload;
        assert_eq!(v.verify(&parts.join("."), NOW), Err(AuthError::BadSignature));
    }

    #[test]
    fn algorithm_is_pinned_per_key() {
        let dir = tempfile::tempdir().unwrap();
        let (public, _) = es256_files(dir.path(), "es");
        let mut k = key_cfg("es", KeyAlg::ES256);
        k.public_key_file = Some(public.clone());
        let cfg = AuthConfig { dev_keys: false, keys: vec![k], ..AuthConfig::default() };
        let v = Verifier::new(&cfg, None).unwrap();

        // HS256 "signed" with the public key bytes, claiming the ES256 key: the classic confusion.
        let pem = std::fs::read(&public).unwrap();
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some("es".into());
        let token = jsonwebtoken::encode(&header, &claims(NOW + 60), &EncodingKey::from_secret(&pem)).unwrap();
        assert_eq!(v.verify(&token, NOW), Err(AuthError::AlgorithmMismatch));
        // Same without kid: no HS256 key exists at all.
        header.kid = None;
        let token = jsonwebtoken::encode(&header, &claims(NOW + 60), &EncodingKey::from_secret(&pem)).unwrap();
        assert_eq!(v.verify(&token, NOW), Err(AuthError::AlgorithmMismatch));
        // alg "none" is not even parseable as an algorithm.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIn0.";
        assert!(matches!(v.verify(none, NOW), Err(AuthError::Malformed(_))));
    }

    #[test]
    fn hs256_key_from_secret_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hs.secret");
        std::fs::write(&path, "file-secret-file-secret-file-sec\n").unwrap();
        let mut k = key_cfg("hs", KeyAlg::HS256);
        k.secret_file = Some(path);
        let cfg = AuthConfig { dev_keys: false, keys: vec![k.clone()], ..AuthConfig::default() };
        let v = Verifier::new(&cfg, None).unwrap();
        let signer = Signer::from_key_config(&k).unwrap();
        assert!(v.verify(&signer.sign(&claims(NOW + 60)).unwrap(), NOW).is_ok());
        // Same bytes inline (newline trimmed from the file).
        let mut inline = key_cfg("hs", KeyAlg::HS256);
        inline.secret = Some("file-secret-file-secret-file-sec".into());
        let t = Signer::from_key_config(&inline).unwrap().sign(&claims(NOW + 60)).unwrap();
        assert!(v.verify(&t, NOW).is_ok());
    }

    #[test]
    fn setup_errors_name_the_key() {
        let mut k = key_cfg("x", KeyAlg::ES256);
        k.public_key_file = Some("/nonexistent/x.pem".into());
        let cfg = AuthConfig { keys: vec![k.clone()], ..AuthConfig::default() };
        let err = Verifier::new(&cfg, Some(DEV_SECRET)).unwrap_err().to_string();
        assert!(err.starts_with("auth.keys[kid=x].public_key_file"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, "not a pem").unwrap();
        k.public_key_file = Some(bad);
        let cfg = AuthConfig { keys: vec![k.clone()], ..AuthConfig::default() };
        let err = Verifier::new(&cfg, Some(DEV_SECRET)).unwrap_err().to_string();
        assert!(err.starts_with("auth.keys[kid=x].public_key_file"), "{err}");

        let err = Signer::from_key_config(&k).unwrap_err().to_string();
        assert!(err.starts_with("auth.keys[kid=x].private_key_file"), "{err}");

        let err = Verifier::new(&dev_cfg(), None).unwrap_err().to_string();
        assert!(err.starts_with("auth.dev_keys"), "{err}");
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("chat:*", "chat:lobby", "u"));
        assert!(pattern_matches("chat:*", "chat:", "u"));
        assert!(!pattern_matches("chat:*", "chatx", "u"));
        assert!(!pattern_matches("chat:*", "chat", "u"));
        assert!(pattern_matches("*", "anything:at:all", "u"));
        assert!(pattern_matches("*", "", "u"));
        assert!(pattern_matches("lobby", "lobby", "u"));
        assert!(!pattern_matches("lobby", "lobby2", "u"));
        assert!(!pattern_matches("lobby", "lobb", "u"));
        assert!(pattern_matches("dm:{sub}:*", "dm:alice:bob", "alice"));
        assert!(!pattern_matches("dm:{sub}:*", "dm:bob:alice", "alice"));
        assert!(pattern_matches("*:{sub}", "dm:bob:alice", "alice"));
        assert!(pattern_matches("a*b*c", "axxbyyc", "u"));
        assert!(pattern_matches("a*b*c", "abbc", "u"));
        assert!(!pattern_matches("a*b*c", "axxbyy", "u"));
        assert!(pattern_matches("**x", "abx", "u"));
        // A `*` in the user id is literal, not a wildcard.
        assert!(!pattern_matches("dm:{sub}:x", "dm:bob:x", "*"));
        assert!(pattern_matches("dm:{sub}:x", "dm:*:x", "*"));
        // `{sub}` only as the whole token.
        assert!(pattern_matches("{su", "{su", "alice"));
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl("120"), Ok(Duration::from_secs(120)));
        for bad in ["", "s", "0", "1w", "-5s", "1.5h", "99999999999999999999d"] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
