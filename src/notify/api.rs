//! The server API of notifications (docs/notifications.md, "Server API"), behind `api.key`:
//! `POST /v1/api/notifications` adds one to users' feeds; `GET /v1/api/notifications/dead_letters`
//! lists the webhook's dead letters, `DELETE .../dead_letters/{id}` drops one and
//! `POST .../dead_letters/{id}/replay` queues it again.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;

use super::Spec;
use super::prefs::MAX_TYPE_BYTES;
use crate::connection::unix_ms;
use crate::http::{HttpState, api_error, bad_tenant, unauthorized, user_request};
use crate::proto::{ErrorCode, Payload, Priority, RoomName};
use crate::session::MAX_MESSAGE_ID_LEN;

/// Most users one call names.
pub const MAX_USERS: usize = 1000;
/// Longest title and body.
pub const MAX_TITLE_BYTES: usize = 256;
pub const MAX_BODY_BYTES: usize = 4096;

/// `POST /v1/api/notifications` body: `user` or `users`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AddRequest {
    tenant: String,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    users: Vec<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    priority: Priority,
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    data: Option<Payload>,
    #[serde(default)]
    room: Option<String>,
    /// Idempotency key: a retry with the same key adds nothing (per user, while the first is in
    /// the feed).
    #[serde(default)]
    id: Option<String>,
}

fn bad(message: impl Into<String>) -> Response {
    api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_NOTIFICATION, message)
}

pub async fn add(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match user_request(&state, &headers, &body, |r: &AddRequest| &r.tenant) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let mut users = request.users;
    users.extend(request.user);
    users.sort();
    users.dedup();
    if users.is_empty() || users.len() > MAX_USERS || users.iter().any(|u| u.is_empty() || u.len() > 256) {
        return bad(format!("name 1-{MAX_USERS} users (user or users) of 1-256 bytes"));
    }
    if request.kind.is_empty() || request.kind.len() > MAX_TYPE_BYTES {
        return bad(format!("type must be 1-{MAX_TYPE_BYTES} bytes"));
    }
    if request.title.len() > MAX_TITLE_BYTES || request.body.len() > MAX_BODY_BYTES {
        return bad(format!("title at most {MAX_TITLE_BYTES} bytes, body at most {MAX_BODY_BYTES}"));
    }
    if request.id.as_ref().is_some_and(|id| id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN) {
        return bad(format!("id must be 1-{MAX_MESSAGE_ID_LEN} bytes"));
    }
    let data = request.data.unwrap_or_else(|| Payload::from("null"));
    let max_payload = state.websocket.ctx.session.limits.max_payload_bytes as usize;
    if data.len() > max_payload {
        let message = format!("data of {} bytes exceeds {max_payload}", data.len());
        return api_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PAYLOAD_TOO_LARGE, message);
    }
    let room = match request.room.as_deref().map(RoomName::parse).transpose() {
        Ok(room) => room,
        Err(code) => return api_error(StatusCode::BAD_REQUEST, code, "invalid room name"),
    };
    let spec = Spec {
        kind: request.kind,
        priority: request.priority,
        title: request.title,
        body: request.body,
        data,
        room,
        key: request.id,
    };
    match state.notify.add(&request.tenant, users, spec, unix_ms()).await {
        Ok(results) => axum::Json(serde_json::json!({ "results": results })).into_response(),
        Err((code, message)) => api_error(StatusCode::SERVICE_UNAVAILABLE, code, message),
    }
}

/// `GET /v1/api/notifications/dead_letters` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadQuery {
    /// One tenant's; every tenant's when absent.
    tenant: Option<String>,
    /// Dead letters with ids above this (a page's `next`).
    #[serde(default)]
    after: u64,
    /// 1-1000, default 100.
    limit: Option<usize>,
}

/// `tenant` query of the delete and replay calls.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantQuery {
    tenant: Option<String>,
}

/// The response refusing a request: no key, or a bad tenant.
fn refused(state: &HttpState, headers: &HeaderMap, tenant: Option<&str>) -> Option<Response> {
    unauthorized(state, headers).or_else(|| tenant.and_then(bad_tenant))
}

pub async fn dead_letters(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Query(query): Query<DeadQuery>,
) -> Response {
    if let Some(response) = refused(&state, &headers, query.tenant.as_deref()) {
        return response;
    }
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, "limit must be 1-1000");
    }
    match state.notify.dead_letters(query.tenant, query.after, limit).await {
        Ok(letters) => {
            let next = (letters.len() == limit).then(|| letters.last().map_or(0, |l| l.delivery.seq));
            let letters: Vec<serde_json::Value> = letters
                .into_iter()
                .map(|l| {
                    serde_json::json!({
                        "id": l.delivery.seq,
                        "tenant": l.delivery.tenant,
                        "user": l.delivery.user,
                        "notification": l.delivery.notification,
                        "attempts": l.delivery.attempts,
                        "last_error": l.delivery.last_error,
                        "failed_at": l.failed_at,
                    })
                })
                .collect();
            axum::Json(serde_json::json!({ "dead_letters": letters, "next": next })).into_response()
        }
        Err((code, message)) => api_error(StatusCode::SERVICE_UNAVAILABLE, code, message),
    }
}

/// The answer to a delete or replay of dead letter `seq`: `{"<done>": seq}`, or 404.
fn dead_letter_answer(seq: u64, done: &str, outcome: Result<bool, (ErrorCode, String)>) -> Response {
    match outcome {
        Ok(true) => axum::Json(serde_json::json!({ done: seq })).into_response(),
        Ok(false) => api_error(StatusCode::NOT_FOUND, ErrorCode::UNKNOWN_DEAD_LETTER, format!("no dead letter {seq}")),
        Err((code, message)) => api_error(StatusCode::SERVICE_UNAVAILABLE, code, message),
    }
}

pub async fn delete_dead(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(seq): Path<u64>,
    Query(query): Query<TenantQuery>,
) -> Response {
    match refused(&state, &headers, query.tenant.as_deref()) {
        Some(response) => response,
        None => dead_letter_answer(seq, "deleted", state.notify.delete_dead(seq, query.tenant).await),
    }
}

pub async fn replay_dead(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path(seq): Path<u64>,
    Query(query): Query<TenantQuery>,
) -> Response {
    match refused(&state, &headers, query.tenant.as_deref()) {
        Some(response) => response,
        None => dead_letter_answer(seq, "replayed", state.notify.replay_dead(seq, query.tenant, unix_ms()).await),
    }
}
