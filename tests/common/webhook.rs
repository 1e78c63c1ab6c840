//! A real HTTP receiver for the notifications webhook (axum on 127.0.0.1), for the tests that
//! check what the relay posts: every call's body, whether its signature verified, and the
//! status answered. Included with `#[path = "common/webhook.rs"] mod webhook;` beside
//! `mod common;`.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::AtomicU8;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::common::within;

/// How the receiver answers.
pub const OK: u8 = 0;
pub const FAIL: u8 = 1;
pub const HANG: u8 = 2;

pub struct Receiver {
    /// The webhook secret the signatures are checked with.
    secret: String,
    pub mode: AtomicU8,
    /// Answers for the next calls, before `mode` applies again.
    pub script: Mutex<VecDeque<u8>>,
    /// Every call: its body, whether its signature verified, and the status answered (0: none).
    calls: Mutex<Vec<(Value, bool, u16)>>,
    seen: tokio::sync::Notify,
}

impl Receiver {
    pub fn calls(&self) -> Vec<(Value, bool, u16)> {
        self.calls.lock().unwrap().clone()
    }

    /// Calls answered 2xx for notification titled `title`.
    pub fn delivered(&self, title: &str) -> Vec<Value> {
        self.calls()
            .into_iter()
            .filter(|(body, _, status)| *status == 200 && body["notification"]["title"] == title)
            .map(|(body, _, _)| body)
            .collect()
    }

    /// Waits until `done` holds for the calls so far.
    pub async fn until(&self, what: &str, done: impl Fn(&[(Value, bool, u16)]) -> bool) {
        within(what, async {
            loop {
                let seen = self.seen.notified();
                if done(&self.calls()) {
                    return;
                }
                seen.await;
            }
        })
        .await
    }
}

async fn receive(State(receiver): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let call: Value = serde_json::from_slice(&body).unwrap();
    let header = headers.get("x-edgerelay-signature").and_then(|v| v.to_str().ok());
    let signed = crate::common::signature_ok(header, &body, &receiver.secret);
    let scripted = receiver.script.lock().unwrap().pop_front();
    let status = match scripted.unwrap_or_else(|| receiver.mode.load(std::sync::atomic::Ordering::SeqCst)) {
        HANG => {
            receiver.calls.lock().unwrap().push((call, signed, 0));
            receiver.seen.notify_waiters();
            tokio::time::sleep(Duration::from_secs(30)).await;
            return StatusCode::OK;
        }
        FAIL => StatusCode::INTERNAL_SERVER_ERROR,
        _ if !signed => StatusCode::UNAUTHORIZED,
        _ => StatusCode::OK,
    };
    receiver.calls.lock().unwrap().push((call, signed, status.as_u16()));
    receiver.seen.notify_waiters();
    status
}

/// A relay calling the webhook at `url` signed with `secret`, fast retries (50-200 ms), 3
/// attempts, each given `timeout_ms`; the server API on `api_key`.
pub fn webhook_config(config: &mut edgerelay::config::Config, url: &str, secret: &str, api_key: &str, timeout_ms: u64) {
    config.api.key = Some(api_key.into());
    config.notifications.webhook_url = Some(url.into());
    config.notifications.webhook_secret = Some(secret.into());
    config.notifications.webhook_backoff_ms = 50;
    config.notifications.webhook_max_backoff_ms = 200;
    config.notifications.webhook_timeout_ms = timeout_ms;
    config.notifications.webhook_max_attempts = 3;
}

/// A server API call to the relay at `addr` with API key `key`: the status and the JSON answer.
pub async fn api(addr: std::net::SocketAddr, key: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
    let body = if body.is_null() { String::new() } else { body.to_string() };
    let (status, answer) = crate::common::http_request(addr, method, path, &headers, &body).await;
    (status, serde_json::from_str(&answer).unwrap_or(Value::Null))
}

/// Waits for tenant `acme`'s first dead letter, as the server API at `addr` lists it.
pub async fn first_dead_letter(addr: std::net::SocketAddr, key: &str) -> Value {
    within("the dead letter", async {
        loop {
            let path = "/v1/api/notifications/dead_letters?tenant=acme";
            let (status, answer) = api(addr, key, "GET", path, Value::Null).await;
            assert_eq!(status, 200, "{answer}");
            if let Some(letter) = answer["dead_letters"].as_array().unwrap().first() {
                return letter.clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// CPU seconds (user + system) this process used so far, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 of stat(5) (utime, stime), counted after the command name; 100 ticks/s.
    (ticks(11) + ticks(12)) / 100.0
}

/// Three server API calls in a row, each adding a notification for 1,000 users, through the
/// relay at `addr`; prints each call's wall time and this process's CPU seconds during it.
pub async fn notify_1000_users(addr: std::net::SocketAddr, key: &str) {
    let users: Vec<String> = (0..1000).map(|i| format!("u{i}")).collect();
    for round in 0..3 {
        let (cpu, started) = (cpu_seconds(), std::time::Instant::now());
        let body =
            serde_json::json!({"tenant": "acme", "users": users, "type": "mention", "title": format!("r{round}")});
        let auth = format!("Bearer {key}");
        let headers = [("authorization", auth.as_str()), ("content-type", "application/json")];
        let limit = Duration::from_secs(120);
        let path = "/v1/api/notifications";
        let (status, answer) =
            crate::common::http_request_within(addr, "POST", path, &headers, &body.to_string(), limit).await;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(status, 200, "{answer}");
        println!("notify 1000 users: {ms:.0} ms wall, {:.2} CPU-s", cpu_seconds() - cpu);
    }
}

/// Starts a receiver checking signatures with `secret`; its URL (`/push`) and state.
pub async fn receiver(secret: &str) -> (String, Arc<Receiver>) {
    let state = Arc::new(Receiver {
        secret: secret.to_owned(),
        mode: AtomicU8::new(OK),
        script: Mutex::default(),
        calls: Mutex::default(),
        seen: tokio::sync::Notify::new(),
    });
    let app = axum::Router::new().route("/push", axum::routing::post(receive)).with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/push", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, state)
}
