//! Backend hooks (docs/events.md, "Backend hooks"): optional HTTP calls to the operator's
//! backend before the relay accepts a connection (`connect`), a room join or topic subscription
//! (`subscribe`), or a client's publish (`publish`). The backend answers allow, deny (with a
//! reason) or rewrite (a publish's data, a subscription's filter).
//!
//! A slow or dead backend must not stall the relay: each call has a timeout, calls in flight
//! are bounded by one semaphore (a call past it does not wait), and each hook has a circuit
//! breaker (`breaker`) that stops calling a failing backend for a while. Whenever the backend
//! cannot answer, the hook's configured fallback (allow or deny) decides. Only the asking
//! connection waits for its call; other connections never do.
//!
//! Calls are signed (HMAC-SHA256 of `<unix seconds>.<body>` with `hooks.secret`), so the
//! backend can tell them from forged ones and refuse replays by their age.

pub mod breaker;
pub mod client;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ring::hmac;
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::config::{HookConfig, HookFallback, HooksConfig};
use crate::proto::{ErrorCode, Payload};
use breaker::{Admit, Breaker};

/// Which hook a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Connect = 0,
    Subscribe = 1,
    Publish = 2,
}

impl Hook {
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Connect => "connect",
            Hook::Subscribe => "subscribe",
            Hook::Publish => "publish",
        }
    }

    /// The code of a refusal by the backend.
    fn denied(self) -> ErrorCode {
        if self == Hook::Connect { ErrorCode::CONNECT_DENIED } else { ErrorCode::HOOK_DENIED }
    }

    /// The code of a refusal because the backend could not answer (the hook fails closed).
    fn unavailable(self) -> ErrorCode {
        if self == Hook::Connect { ErrorCode::CONNECT_UNAVAILABLE } else { ErrorCode::HOOK_UNAVAILABLE }
    }
}

/// Why a call got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach the backend: {0}")]
    Connect(String),
    #[error("the backend answered HTTP {0}")]
    Status(u16),
    #[error("bad answer: {0}")]
    BadAnswer(String),
}

impl HookError {
    fn label(&self) -> &'static str {
        match self {
            HookError::Timeout(_) => "timeout",
            HookError::Connect(_) | HookError::Status(_) | HookError::BadAnswer(_) => "error",
        }
    }
}

/// What the relay does with the request the hook was asked about.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Allow,
    /// Allowed with a replacement: a publish's `data`, a topic subscription's `filter`.
    Rewrite {
        data: Option<Payload>,
        filter: Option<String>,
    },
    /// Refused with this code and message.
    Deny {
        code: ErrorCode,
        message: String,
    },
}

/// The backend's answer (HTTP 2xx, JSON; an empty body means allow). A flat struct, not a
/// tagged enum: serde's internally tagged enums cannot hand a raw JSON value to [`Payload`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    result: Verdict,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    data: Option<Payload>,
    #[serde(default)]
    filter: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Verdict {
    Allow,
    Deny,
    Rewrite,
}

fn parse_answer(status: u16, body: &[u8]) -> Result<Answer, HookError> {
    if !(200..300).contains(&status) {
        return Err(HookError::Status(status));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Answer { result: Verdict::Allow, reason: None, data: None, filter: None });
    }
    serde_json::from_slice(body).map_err(|e| HookError::BadAnswer(e.to_string()))
}

/// The JSON body of a call: `hook`, `tenant`, `user`, `time` (unix ms) and the fields of
/// `what` (an object).
pub fn call_body(hook: Hook, tenant: &str, user: &str, now_ms: u64, what: serde_json::Value) -> Bytes {
    let mut body = serde_json::json!({"hook": hook.as_str(), "tenant": tenant, "user": user, "time": now_ms});
    if let (Some(body), serde_json::Value::Object(what)) = (body.as_object_mut(), what) {
        body.extend(what);
    }
    Bytes::from(body.to_string())
}

/// One configured hook.
struct Site {
    target: client::Target,
    timeout: Duration,
    fallback: HookFallback,
    breaker: Mutex<Breaker>,
}

pub struct Hooks {
    key: Option<hmac::Key>,
    in_flight: Semaphore,
    sites: [Option<Site>; 3],
}

use crate::lock::lock;

impl Hooks {
    /// `config` is validated (URLs parse, a secret is set when a hook is).
    pub fn new(config: &HooksConfig) -> Hooks {
        let site = |hook: &Option<HookConfig>| {
            let hook = hook.as_ref()?;
            Some(Site {
                target: client::Target::parse(&hook.url).ok()?,
                timeout: Duration::from_millis(hook.timeout_ms),
                fallback: hook.fallback,
                breaker: Mutex::new(Breaker::new(config.breaker_failures, config.breaker_open_ms)),
            })
        };
        Hooks {
            key: config.secret.as_ref().map(|s| hmac::Key::new(hmac::HMAC_SHA256, s.as_bytes())),
            in_flight: Semaphore::new(config.max_in_flight as usize),
            sites: [site(&config.connect), site(&config.subscribe), site(&config.publish)],
        }
    }

    /// Whether any hook is configured (if not, frames skip the hook path entirely).
    pub fn any(&self) -> bool {
        self.sites.iter().any(Option::is_some)
    }

    pub fn has(&self, hook: Hook) -> bool {
        self.sites[hook as usize].is_some()
    }

    /// Asks the backend about a request (`body` from [`call_body`]); `now_ms` is the wall clock
    /// (unix ms). Never waits longer than the hook's timeout; never fails: when the backend
    /// cannot answer, the hook's fallback decides.
    pub async fn ask(&self, hook: Hook, body: Bytes, now_ms: u64) -> Outcome {
        let Some(site) = &self.sites[hook as usize] else { return Outcome::Allow };
        let Ok(_permit) = self.in_flight.try_acquire() else {
            return Self::fallback(hook, site, "busy", "too many backend calls in flight");
        };
        let admit = lock(&site.breaker).admit(now_ms);
        Self::report_breaker(hook, site, now_ms);
        if admit == Admit::Reject {
            return Self::fallback(hook, site, "breaker_open", "the backend is failing (circuit breaker open)");
        }
        let signature = match &self.key {
            Some(key) => client::sign(key, now_ms / 1000, &body),
            None => String::new(),
        };
        let started = Instant::now();
        let answer = match tokio::time::timeout(site.timeout, client::post(&site.target, signature, body)).await {
            Ok(result) => result.and_then(|(status, body)| parse_answer(status, &body)),
            Err(_) => Err(HookError::Timeout(site.timeout)),
        };
        let elapsed = started.elapsed();
        metrics::histogram!(crate::metrics::HOOK_SECONDS, "hook" => hook.as_str()).record(elapsed.as_secs_f64());
        let after_ms = now_ms.saturating_add(elapsed.as_millis() as u64);
        match &answer {
            Ok(_) => lock(&site.breaker).success(),
            Err(_) => lock(&site.breaker).failure(after_ms),
        }
        Self::report_breaker(hook, site, after_ms);
        let calls = |outcome: &'static str| {
            metrics::counter!(crate::metrics::HOOK_CALLS_TOTAL, "hook" => hook.as_str(), "outcome" => outcome)
                .increment(1)
        };
        match answer {
            Ok(Answer { result: Verdict::Allow, .. }) => {
                calls("allow");
                Outcome::Allow
            }
            Ok(Answer { result: Verdict::Rewrite, data, filter, .. }) => {
                calls("rewrite");
                Outcome::Rewrite { data, filter }
            }
            Ok(Answer { result: Verdict::Deny, reason, .. }) => {
                calls("deny");
                metrics::counter!(crate::metrics::HOOK_DENIALS_TOTAL, "hook" => hook.as_str(), "by" => "backend")
                    .increment(1);
                let message = reason.unwrap_or_else(|| "refused by the backend".into());
                Outcome::Deny { code: hook.denied(), message }
            }
            Err(err) => {
                tracing::warn!(hook = hook.as_str(), error = %err, "backend hook failed");
                Self::fallback(hook, site, err.label(), &err.to_string())
            }
        }
    }

    /// The hook's fallback for a call the backend did not answer (`why`: the metrics label).
    fn fallback(hook: Hook, site: &Site, why: &'static str, message: &str) -> Outcome {
        metrics::counter!(crate::metrics::HOOK_CALLS_TOTAL, "hook" => hook.as_str(), "outcome" => why).increment(1);
        match site.fallback {
            HookFallback::Allow => Outcome::Allow,
            HookFallback::Deny => {
                metrics::counter!(crate::metrics::HOOK_DENIALS_TOTAL, "hook" => hook.as_str(), "by" => "fallback")
                    .increment(1);
                let message = format!("{} hook: {message}; try again later", hook.as_str());
                Outcome::Deny { code: hook.unavailable(), message }
            }
        }
    }

    fn report_breaker(hook: Hook, site: &Site, now_ms: u64) {
        let state = lock(&site.breaker).state(now_ms);
        metrics::gauge!(crate::metrics::HOOK_BREAKER_STATE, "hook" => hook.as_str()).set(state as u8 as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        let verdict = |status, body: &[u8]| parse_answer(status, body).map(|a| a.result);
        assert_eq!(verdict(200, b"").unwrap(), Verdict::Allow);
        assert_eq!(verdict(204, b" \n").unwrap(), Verdict::Allow);
        assert_eq!(verdict(200, br#"{"result":"allow"}"#).unwrap(), Verdict::Allow);
        let deny = parse_answer(200, br#"{"result":"deny","reason":"banned"}"#).unwrap();
        assert_eq!((deny.result, deny.reason.as_deref()), (Verdict::Deny, Some("banned")));
        let rewrite = parse_answer(200, br#"{"result":"rewrite","data":{"text":"***"},"filter":"a = b"}"#).unwrap();
        assert_eq!(rewrite.result, Verdict::Rewrite);
        assert_eq!(rewrite.data, Some(Payload::from(r#"{"text":"***"}"#)));
        assert_eq!(rewrite.filter.as_deref(), Some("a = b"));
        assert!(matches!(parse_answer(500, b""), Err(HookError::Status(500))));
        assert!(matches!(parse_answer(200, br#"{"result":"maybe"}"#), Err(HookError::BadAnswer(_))));
        assert!(matches!(parse_answer(200, b"allow"), Err(HookError::BadAnswer(_))));
    }

    #[test]
    fn call_bodies_carry_who_and_what() {
        let body = call_body(Hook::Publish, "acme", "alice", 7, serde_json::json!({"room": "lobby"}));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"hook": "publish", "tenant": "acme", "user": "alice", "time": 7, "room": "lobby"})
        );
    }
}
