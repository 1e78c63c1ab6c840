//! The admin UI's HTTP side: the page (`/admin/`, plain HTML and JavaScript compiled into the
//! binary, no build step) and the JSON endpoints it calls, `GET /v1/api/admin/{nodes, rooms,
//! connections, metrics}`. The page holds no data: every endpoint wants the server API key
//! (`Authorization: Bearer <api.key>`) and answers as the rest of the server API does. They are
//! served where the server API is (the `listen.admin` listener when set). Disconnect, revoke and
//! history are the server API's own endpoints.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;
use serde_json::json;

use super::{DEFAULT_PAGE, LIVE_METRICS, MAX_PAGE, page, region, summarize};
use crate::connection::unix_ms;
use crate::http::{HttpState, api_error, bad_tenant, unauthorized};
use crate::proto::ErrorCode;

const ADMIN_HTML: &str = include_str!("../../clients/admin/index.html");
const ADMIN_JS: &str = include_str!("../../clients/admin/admin.js");

pub fn routes() -> Router<Arc<HttpState>> {
    Router::new()
        .route("/admin", get(|| async { axum::response::Redirect::permanent("/admin/") }))
        .route("/admin/", get(|| async { asset("text/html; charset=utf-8", ADMIN_HTML) }))
        .route("/admin/admin.js", get(|| async { asset("text/javascript; charset=utf-8", ADMIN_JS) }))
        .route("/v1/api/admin/nodes", get(nodes))
        .route("/v1/api/admin/rooms", get(rooms))
        .route("/v1/api/admin/connections", get(connections))
        .route("/v1/api/admin/metrics", get(live_metrics))
}

/// A file of the page, which no other page may frame (it holds the key in sessionStorage).
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = crate::http::asset(content_type, body);
    response.headers_mut().insert(header::X_FRAME_OPTIONS, header::HeaderValue::from_static("DENY"));
    response
}

/// A listing request checked: the key first (nothing is said about a request without it), then
/// the query, its tenant (when given) and its page (`offset`, `limit`).
fn checked<T>(
    state: &HttpState,
    headers: &HeaderMap,
    q: Result<Query<T>, QueryRejection>,
    parts: impl Fn(&T) -> (Option<&str>, Option<usize>, Option<usize>),
) -> Result<(T, usize, usize), Box<Response>> {
    let bad = |message: String| Box::new(api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, message));
    if let Some(response) = unauthorized(state, headers) {
        return Err(Box::new(response));
    }
    let Query(q) = q.map_err(|err| bad(err.body_text()))?;
    let (tenant, offset, limit) = parts(&q);
    if let Some(response) = tenant.and_then(bad_tenant) {
        return Err(Box::new(response));
    }
    match limit.unwrap_or(DEFAULT_PAGE) {
        limit @ 1..=MAX_PAGE => Ok((q, offset.unwrap_or(0), limit)),
        _ => Err(bad(format!("limit must be 1-{MAX_PAGE}"))),
    }
}

/// `GET /v1/api/admin/nodes`: this node, then every other node of the region still reporting.
async fn nodes(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Some(response) = unauthorized(&state, &headers) {
        return response;
    }
    let now = unix_ms();
    let own = state.node.report(now);
    match state.engine.node_reports().await {
        Ok(reports) => {
            axum::Json(json!({"node": own.node.clone(), "nodes": region(own, reports, now)})).into_response()
        }
        Err(err) => api_error(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string()),
    }
}

/// `GET /v1/api/admin/rooms` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomsQuery {
    tenant: Option<String>,
    /// Rooms whose name contains this.
    q: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// `GET /v1/api/admin/rooms`: the rooms with a connection on this node, most members first.
async fn rooms(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    q: Result<Query<RoomsQuery>, QueryRejection>,
) -> Response {
    let (q, offset, limit) = match checked(&state, &headers, q, |q| (q.tenant.as_deref(), q.offset, q.limit)) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let mut rooms = state.node.awareness.rooms_here(q.tenant.as_deref());
    if let Some(needle) = q.q.as_deref().filter(|n| !n.is_empty()) {
        rooms.retain(|r| r.room.contains(needle));
    }
    rooms.sort_by(|a, b| b.members.cmp(&a.members).then_with(|| (&a.tenant, &a.room).cmp(&(&b.tenant, &b.room))));
    let page = page(rooms, offset, limit);
    axum::Json(json!({"node": state.node.name, "total": page.total, "next": page.next, "rooms": page.items}))
        .into_response()
}

/// `GET /v1/api/admin/connections` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectionsQuery {
    tenant: Option<String>,
    user: Option<String>,
    transport: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// `GET /v1/api/admin/connections`: this node's authenticated connections, oldest first, with
/// the rooms each joined, and the counts by transport.
async fn connections(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    q: Result<Query<ConnectionsQuery>, QueryRejection>,
) -> Response {
    let (q, offset, limit) = match checked(&state, &headers, q, |q| (q.tenant.as_deref(), q.offset, q.limit)) {
        Ok(checked) => checked,
        Err(response) => return *response,
    };
    let controls = &state.node.controls;
    let user = q.user.as_deref().filter(|u| !u.is_empty());
    let mut list = controls.list(q.tenant.as_deref(), user);
    if let Some(transport) = q.transport.as_deref().filter(|t| !t.is_empty()) {
        list.retain(|c| c.transport == transport);
    }
    let page = page(list, offset, limit);
    let items: Vec<serde_json::Value> = page
        .items
        .into_iter()
        .map(|c| {
            let rooms = state.node.awareness.device_rooms(c.id);
            let mut entry = serde_json::to_value(c).unwrap_or_default();
            entry["rooms"] = json!(rooms);
            entry
        })
        .collect();
    axum::Json(json!({
        "node": state.node.name,
        "by_transport": controls.by_transport(q.tenant.as_deref()),
        "total": page.total,
        "next": page.next,
        "connections": items,
    }))
    .into_response()
}

/// `GET /v1/api/admin/metrics`: a few key series of this node's `/metrics`, summed over their
/// labels, with the time they were read (the page computes rates between two reads).
async fn live_metrics(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    if let Some(response) = unauthorized(&state, &headers) {
        return response;
    }
    let mut text = state.metrics.render();
    text.push_str(&crate::metrics::process_metrics());
    let values = summarize(&text, LIVE_METRICS);
    axum::Json(json!({"node": state.node.name, "time": unix_ms(), "values": values})).into_response()
}
