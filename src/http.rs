//! The TCP listener's HTTP surface: the WebSocket endpoint, health and readiness, Prometheus
//! metrics, the certificate hashes browsers pin, the demo page at `/`, the call page at
//! `/call/` and the collaborative board at `/board/` with the browser client, and the server API application backends call
//! (`POST /v1/api/publish`, `GET /v1/api/presence/{tenant}/rooms/{room}` and
//! `GET /v1/api/presence/{tenant}/users/{user}`, `GET /v1/api/calls/{tenant}/users/{user}`,
//! bearer key from `api.key`; the admin UI at `/admin/` and its endpoints are in
//! [`crate::admin::http`]), and the ICE servers
//! with TURN credentials for a user (`GET /v1/ice`, bearer: the user's token). With
//! `listen.admin`, metrics and the server API move to a second listener ([`Routes`]). The TCP
//! listener speaks TLS when `tls.tcp` says so.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::history::{CallHistory, HistoryCursor, HistoryError};
use crate::connection::unix_ms;
use crate::control::{Control, Controls, Revocation, Revoked};
use crate::dev_tokens::{DevTokenRequest, DevTokens};
use crate::engine::{Done, Engine, Publish};
use crate::hooks::{Hook, Outcome};
use crate::hub::RoomKey;
use crate::hub::awareness::Awareness;
use crate::hub::presence::UserKey;
use crate::proto::{ErrorCode, Payload, Position, RoomName};
use crate::session::MAX_MESSAGE_ID_LEN;
use crate::transport::websocket::{Upgraded, WebSocketTransport, handshake};

/// The certificate facts clients need: the SHA-256 of the end-entity certificate (what
/// Chromium's `serverCertificateHashes` and the Rust client's pin compare) and its expiry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertInfo {
    pub sha256_hex: String,
    pub sha256_base64: String,
    /// Base64 SHA-256 of every certificate a browser should accept now, for
    /// `serverCertificateHashes`: the current dev certificate and, in the rotation window, its
    /// announced successor. Empty for a real certificate (browsers verify it normally).
    pub hashes: Vec<String>,
    /// Unix seconds.
    pub not_after: u64,
    /// A self-signed development certificate.
    pub dev: bool,
}

pub struct HttpState {
    pub websocket: Arc<WebSocketTransport>,
    pub metrics: PrometheusHandle,
    /// False until the relay serves, and again once it drains.
    pub ready: AtomicBool,
    pub cert: RwLock<CertInfo>,
    /// The UDP port WebTransport is served on (`/v1/endpoints`).
    pub webtransport_port: u16,
    /// Upgraded WebSocket connections are tracked here so shutdown waits for them.
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
    pub awareness: Arc<Awareness>,
    pub engine: Arc<dyn Engine>,
    /// SHA-256 of `api.key`; the server API is off when `None`.
    pub api_key_sha256: Option<[u8; 32]>,
    /// Where `disconnect` and `revoke` are applied on this node.
    pub controls: Arc<Controls>,
    /// Users' calls (`GET /v1/api/calls/...`).
    pub call_history: Arc<dyn CallHistory>,
    /// In-app notifications (`/v1/api/notifications`).
    pub notify: Arc<crate::notify::Notifications>,
    /// `POST /v1/dev/token`: only with dev keys on the self-signed dev certificate.
    pub dev_tokens: Option<DevTokens>,
    /// This node for the admin view (`/admin/`, `/v1/api/admin/...`).
    pub node: Arc<crate::admin::Node>,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routes {
    /// Everything: the TCP listener without `listen.admin`.
    All,
    /// Clients' endpoints (WebSocket, certificate, demo page) and health: the TCP listener when
    /// an admin listener is configured.
    Public,
    /// Metrics, the server API and health: the `listen.admin` listener.
    Admin,
}

pub fn router(state: Arc<HttpState>, routes: Routes) -> Router {
    let health = Router::new().route("/healthz", get(|| async { "ok\n" })).route("/readyz", get(readyz));
    let public = Router::new()
        .route(crate::transport::websocket::PATH, get(websocket))
        .route("/v1/cert", get(cert))
        .route("/v1/endpoints", get(endpoints))
        .route("/v1/ice", get(ice).options(ice_preflight))
        .route("/v1/dev/token", post(dev_token))
        .route(SSE_PATH, get(sse).options(sse_preflight))
        .route("/", get(|| async { asset("text/html; charset=utf-8", DEMO_HTML) }))
        .route("/demo.js", get(|| async { asset(JAVASCRIPT, DEMO_JS) }))
        .route("/sdk/{module}", get(sdk_module))
        .route("/call", get(|| async { axum::response::Redirect::permanent("/call/") }))
        .route("/call/", get(|| async { asset("text/html; charset=utf-8", CALL_HTML) }))
        .route("/call/call.js", get(|| async { asset(JAVASCRIPT, CALL_JS) }))
        .route("/board", get(|| async { axum::response::Redirect::permanent("/board/") }))
        .route("/board/", get(|| async { asset("text/html; charset=utf-8", BOARD_HTML) }))
        .route("/board/board.js", get(|| async { asset(JAVASCRIPT, BOARD_JS) }));
    let admin = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/api/publish", post(api_publish))
        .route("/v1/api/events", post(api_events))
        .route("/v1/api/presence/{tenant}/rooms/{room}", get(api_room_presence))
        .route("/v1/api/presence/{tenant}/users/{user}", get(api_user_status))
        .route("/v1/api/history", get(api_history))
        .route("/v1/api/calls/{tenant}/users/{user}", get(api_user_calls))
        .route("/v1/api/disconnect", post(api_disconnect))
        .route("/v1/api/revoke", post(api_revoke))
        .route("/v1/api/notifications", post(crate::notify::api::add))
        .route("/v1/api/notifications/dead_letters", get(crate::notify::api::dead_letters))
        .route("/v1/api/notifications/dead_letters/{id}", axum::routing::delete(crate::notify::api::delete_dead))
        .route("/v1/api/notifications/dead_letters/{id}/replay", post(crate::notify::api::replay_dead))
        .merge(crate::admin::http::routes());
    // Conformance runs only (`websocket.echo`, tests/autobahn.rs).
    let public = if state.websocket.config.echo {
        public.route(crate::transport::websocket::ECHO_PATH, get(websocket_echo))
    } else {
        public
    };
    let router = match routes {
        Routes::All => health.merge(public).merge(admin),
        Routes::Public => health.merge(public),
        Routes::Admin => health.merge(admin),
    };
    router.with_state(state)
}

/// When the request's TCP connection was accepted (a request extension set by [`serve`]).
#[derive(Debug, Clone, Copy)]
pub struct Accepted(pub Instant);

/// The connection's admission ticket (a request extension set by [`serve`]): an upgraded
/// WebSocket keeps it, so it counts against its address for as long as it is open.
#[derive(Debug, Clone)]
pub struct Admitted(pub Option<Arc<crate::admission::Ticket>>);

/// The whole answer to a TCP connection refused by admission, written without waiting.
fn refusal_response(refusal: crate::admission::Refusal) -> Vec<u8> {
    let code = refusal.code();
    let status = match refusal {
        crate::admission::Refusal::Rate => "429 Too Many Requests",
        crate::admission::Refusal::Concurrent => "503 Service Unavailable",
    };
    let body = format!("{} {}: {refusal}\n", code.0, code.slug());
    format!(
        "HTTP/1.1 {status}\r\nx-edgerelay-error: {}\r\nretry-after: 1\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        code.0,
        body.len()
    )
    .into_bytes()
}

/// Most time a client gets to send its request headers (slow clients hold a connection).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on a TCP listener until `stop`, then lets open requests finish (within
/// [`CLOSE_GRACE`]); with TLS first when `tls` is given (its current config for each new
/// connection, so a certificate reload applies to the next one). Its own accept loop rather
/// than `axum::serve`: the WebSocket transport takes the upgraded connection's `TcpStream` (and
/// TLS session) back from hyper, which hyper allows only when it served the connection on that
/// exact type (see `transport::websocket::handshake`).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    tls: Option<Arc<crate::tls::SharedServerConfig>>,
    admission: Option<Arc<crate::admission::Admission>>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let started = Instant::now();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(%err, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.cancelled() => break,
        };
        // Frames are written whole: Nagle's algorithm would only hold small ones back behind a
        // delayed ACK, up to 40 ms.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(%err, "TCP_NODELAY");
        }
        // Per-IP limits (`[connections]`): a refused connection gets a short HTTP answer
        // naming the error, written only if the socket takes it now, and is closed.
        let ticket = match admission.as_ref().map(|a| a.tcp(peer.ip(), started.elapsed().as_millis() as u64)) {
            None => None,
            Some(Ok(ticket)) => Some(Arc::new(ticket)),
            Some(Err(refusal)) => {
                crate::metrics::admission("tcp", refusal.code().slug());
                let _ = stream.try_write(&refusal_response(refusal));
                continue;
            }
        };
        if ticket.is_some() {
            crate::metrics::admission("tcp", "accept");
        }
        let admitted = Admitted(ticket);
        let accepted = Accepted(Instant::now());
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(accepted);
            request.extensions_mut().insert(admitted.clone());
            let mut router = router.clone();
            async move { tower_service::Service::call(&mut router, request).await }
        });
        let stop = stop.clone();
        let tls = tls.as_ref().map(|tls| tls.current());
        connections.spawn(async move {
            match tls {
                None => serve_connection(stream, service, stop).await,
                Some(config) => {
                    // The handshake shares the header deadline: a client that does not finish
                    // it holds nothing for longer.
                    let handshake = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    let stream = tokio::select! {
                        done = tokio::time::timeout(HEADER_READ_TIMEOUT, handshake) => match done {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(err)) => return tracing::debug!(%err, "TLS handshake failed"),
                            Err(_) => return tracing::debug!("TLS handshake timed out"),
                        },
                        _ = stop.cancelled() => return,
                    };
                    serve_connection(stream, service, stop).await
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// Serves one connection's requests until it closes, is upgraded, or `stop` (then it finishes
/// the request in progress, within [`CLOSE_GRACE`]).
async fn serve_connection<I, S>(io: I, service: S, stop: CancellationToken)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = Response,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        _ = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
    }
}

/// How long a connection may take to finish its request once the listener stops (the process
/// is exiting: the engine is stopped, so an API publish is answered at once); a client still
/// sending its request headers is not waited for longer.
const CLOSE_GRACE: Duration = Duration::from_millis(250);

async fn websocket(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        // Draining (or not started yet): come back when the client's reconnect delay says.
        let retry_after = state.websocket.ctx.reconnect_after_ms.div_ceil(1000).max(1);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, retry_after.to_string())],
            "relay is draining\n",
        )
            .into_response();
    }
    upgrade_websocket(&state, request, false)
}

/// `/v1/ws-echo` (only with `websocket.echo`): see `transport::websocket::echo`.
async fn websocket_echo(State(state): State<Arc<HttpState>>, request: Request) -> Response {
    upgrade_websocket(&state, request, true)
}

fn upgrade_websocket(state: &HttpState, request: Request, echo: bool) -> Response {
    let accepted = request.extensions().get::<Accepted>().map_or_else(Instant::now, |a| a.0);
    let admitted = request.extensions().get::<Admitted>().cloned();
    let handshake::Accepted { response, upgrade, deflate } = match handshake::accept(request, &state.websocket.config) {
        Ok(accepted) => accepted,
        Err(refusal) => return refusal.into_response(),
    };
    let transport = state.websocket.clone();
    let stop = state.stop.child_token();
    state.tasks.spawn(async move {
        // Held until the WebSocket ends.
        let _admitted = admitted;
        // Boxed, so the upgrade's and the echo path's states are not part of every connection.
        if let Some((socket, early)) = Box::pin(handshake::into_socket(upgrade)).await {
            let upgraded = Upgraded { socket, early, accepted, deflate };
            if echo {
                Box::pin(transport.serve_echo(upgraded, stop)).await;
            } else {
                transport.serve(upgraded, stop).await;
            }
        }
    });
    response
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    let mut text = state.metrics.render();
    text.push_str(&crate::metrics::process_metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

// The demo page, the call page and the browser SDK they run (`clients/`), compiled into the
// binary so `edgerelay serve` shows them without any files next to it.
const DEMO_HTML: &str = include_str!("../clients/demo/index.html");
const DEMO_JS: &str = include_str!("../clients/demo/demo.js");
// The group-call page (`/call/`).
const CALL_HTML: &str = include_str!("../clients/call/index.html");
const CALL_JS: &str = include_str!("../clients/call/call.js");
// The collaborative board (`/board/`, docs/sessions.md).
const BOARD_HTML: &str = include_str!("../clients/board/index.html");
const BOARD_JS: &str = include_str!("../clients/board/board.js");
/// The SDK's modules (`clients/js/src/`), served at `/sdk/<name>` so pages import them as
/// `/sdk/index.js`. Every module of the package is listed (a test checks).
pub const SDK_MODULES: &[(&str, &str)] = &[
    ("index.js", include_str!("../clients/js/src/index.js")),
    ("edgerelay.js", include_str!("../clients/js/src/edgerelay.js")),
    ("links.js", include_str!("../clients/js/src/links.js")),
    ("room.js", include_str!("../clients/js/src/room.js")),
    ("shared.js", include_str!("../clients/js/src/shared.js")),
    // Imports `react`: for pages with an import map naming it.
    ("react.js", include_str!("../clients/js/src/react.js")),
    ("presence.js", include_str!("../clients/js/src/presence.js")),
    ("typing.js", include_str!("../clients/js/src/typing.js")),
    ("outbox.js", include_str!("../clients/js/src/outbox.js")),
    ("schedule.js", include_str!("../clients/js/src/schedule.js")),
    ("errors.js", include_str!("../clients/js/src/errors.js")),
    ("codec.js", include_str!("../clients/js/src/codec.js")),
    ("media.js", include_str!("../clients/js/src/media.js")),
    ("calls.js", include_str!("../clients/js/src/calls.js")),
    ("events.js", include_str!("../clients/js/src/events.js")),
    ("filter.js", include_str!("../clients/js/src/filter.js")),
    ("receipts.js", include_str!("../clients/js/src/receipts.js")),
    ("notifications.js", include_str!("../clients/js/src/notifications.js")),
    ("sessions.js", include_str!("../clients/js/src/sessions.js")),
    ("jsonpatch.js", include_str!("../clients/js/src/jsonpatch.js")),
    // Imports `yjs`, `y-protocols` and `lib0`: for pages with an import map naming them.
    ("yjs.js", include_str!("../clients/js/src/yjs.js")),
];
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

pub(crate) fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// `POST /v1/dev/token` (`{"user": "alice"}`): a dev token, for the demo page. 404 unless dev
/// keys are on with the self-signed dev certificate (never in production); 400 `bad_request`
/// for a body that is not a valid request. Same-origin only: no CORS headers, and a JSON body
/// needs a preflight cross-origin.
async fn dev_token(State(state): State<Arc<HttpState>>, body: Bytes) -> Response {
    let Some(tokens) = &state.dev_tokens else {
        return api_error(
            StatusCode::NOT_FOUND,
            ErrorCode::BAD_REQUEST,
            "dev tokens are off: they need auth.dev_keys with the self-signed dev certificate",
        );
    };
    let request: DevTokenRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, format!("bad request body: {err}"));
        }
    };
    match tokens.mint(request, unix_ms() / 1000) {
        Ok(token) => axum::Json(token).into_response(),
        Err(err) => api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, err.to_string()),
    }
}

/// `GET /sdk/<module>`: one module of the browser SDK.
async fn sdk_module(Path(module): Path<String>) -> Response {
    match SDK_MODULES.iter().find(|(name, _)| *name == module) {
        Some((_, body)) => asset(JAVASCRIPT, body),
        None => (StatusCode::NOT_FOUND, "no such SDK module\n").into_response(),
    }
}

/// Where a browser on this page connects: WebTransport on the QUIC port of the same host, and
/// the WebSocket path on this listener.
#[derive(Serialize)]
struct Endpoints {
    webtransport_port: u16,
    webtransport_path: &'static str,
    websocket_path: &'static str,
}

async fn endpoints(State(state): State<Arc<HttpState>>) -> Response {
    axum::Json(Endpoints {
        webtransport_port: state.webtransport_port,
        webtransport_path: crate::transport::webtransport::PATH,
        websocket_path: crate::transport::websocket::PATH,
    })
    .into_response()
}

async fn cert(State(state): State<Arc<HttpState>>) -> Response {
    let info = state.cert.read().unwrap_or_else(|e| e.into_inner()).clone();
    axum::Json(info).into_response()
}

/// `GET /v1/ice` response: the `ice_servers` frame's fields, for clients that fetch them before
/// they connect. An entry without credentials (STUN) has no `username` and `credential` keys,
/// so it can be passed to `RTCPeerConnection` as it is.
#[derive(Serialize)]
struct IceResponse {
    ice_servers: Vec<IceServerJson>,
    expires_at: u64,
}

#[derive(Serialize)]
struct IceServerJson {
    urls: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    username: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential: Option<String>,
}

/// CORS for `GET /v1/ice`: any origin may call it, since it is authorised by a bearer token
/// (never a cookie), like the WebSocket and WebTransport endpoints any page may open.
const ICE_CORS: [(header::HeaderName, &str); 1] = [(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];

/// `GET /v1/ice` with `Authorization: Bearer <the user's token>`: the ICE servers and TURN
/// credentials `ice_servers` answers with, for the token's user. The token is checked as
/// `hello` checks it (signature, expiry, issuer, audience, revocations).
async fn ice(State(state): State<Arc<HttpState>>, headers: HeaderMap) -> Response {
    let refuse = |code: ErrorCode, message: &str| {
        let mut response = api_error(StatusCode::UNAUTHORIZED, code, message);
        response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        (ICE_CORS, response).into_response()
    };
    let Some(token) = bearer(&headers) else {
        return refuse(ErrorCode::TOKEN_INVALID, "missing Authorization: Bearer <token>");
    };
    let ctx = &state.websocket.ctx.session;
    let now_s = unix_ms() / 1000;
    let identity = match ctx.authenticate(token.trim(), now_s) {
        Ok(identity) => identity,
        Err((code, message)) => return refuse(code, &message),
    };
    let (servers, expires_at) = ctx.ice.servers(&identity.tenant, &identity.user, now_s);
    let ice_servers = servers
        .into_iter()
        .map(|s| IceServerJson { urls: s.urls, username: s.username, credential: s.credential })
        .collect();
    // Credentials: never cached by the browser or a proxy.
    (ICE_CORS, [(header::CACHE_CONTROL, "no-store")], axum::Json(IceResponse { ice_servers, expires_at }))
        .into_response()
}

/// The CORS preflight of a cross-origin `GET` from any origin that sends `headers`.
fn get_preflight(headers: &'static str) -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
            (header::ACCESS_CONTROL_ALLOW_METHODS, "GET"),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, headers),
            (header::ACCESS_CONTROL_MAX_AGE, "600"),
        ],
    )
        .into_response()
}

/// The CORS preflight of `GET /v1/ice` (a cross-origin request with `Authorization`).
async fn ice_preflight() -> Response {
    get_preflight("authorization")
}

/// The SSE endpoint (docs/events.md).
pub const SSE_PATH: &str = "/v1/events";

/// CORS for the SSE endpoint: any origin, as for `GET /v1/ice` (authorised by a token, never
/// a cookie); `Last-Event-ID` and `Authorization` may be sent.
const SSE_CORS: [(header::HeaderName, &str); 1] = ICE_CORS;

async fn sse_preflight() -> Response {
    get_preflight("authorization, last-event-id")
}

/// `GET /v1/events?topic=<pattern>[&topic=...][&filter=...][&token=...]`: a receive-only
/// `text/event-stream` of the token's user's subscriptions. The token comes from `token` or
/// `Authorization: Bearer`; `Last-Event-ID` (header, or `last_event_id`) resumes a stream of
/// one exact persistent topic.
async fn sse(State(state): State<Arc<HttpState>>, headers: HeaderMap, request: Request) -> Response {
    let refuse = |status: StatusCode, code: ErrorCode, message: &str| {
        (SSE_CORS, api_error(status, code, message)).into_response()
    };
    let query = request.uri().query().unwrap_or("");
    let (mut patterns, mut filter, mut token, mut last_id) = (Vec::new(), None, None, None);
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "topic" => patterns.push(value.into_owned()),
            "filter" => filter = Some(value.into_owned()),
            "token" => token = Some(value.into_owned()),
            "last_event_id" => last_id = Some(value.into_owned()),
            _ => {}
        }
    }
    let header_id = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let last_id = header_id.or(last_id).filter(|id| !id.is_empty());
    let Some(token) = token.or_else(|| bearer(&headers).map(str::to_owned)) else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            ErrorCode::TOKEN_INVALID,
            "missing token (query `token` or Authorization: Bearer)",
        );
    };
    let conn = &state.websocket.ctx;
    let ctx = &conn.session;
    let identity = match ctx.authenticate(token.trim(), unix_ms() / 1000) {
        Ok(identity) => identity,
        Err((code, message)) => return refuse(StatusCode::UNAUTHORIZED, code, &message),
    };
    let events = ctx.events.clone();
    if patterns.is_empty() || patterns.len() > events.max_subscriptions {
        let message = format!("give 1-{} `topic` parameters", events.max_subscriptions);
        return refuse(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, &message);
    }
    let since = match last_id.as_deref().map(crate::transport::sse::parse_event_id) {
        Some(None) => {
            return refuse(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, "Last-Event-ID must be <epoch>-<offset>");
        }
        Some(Some(position)) => Some(position),
        None => None,
    };
    // The backend hooks: connect for the stream, subscribe for each pattern (which may rewrite
    // its filter).
    let hooks = &ctx.hooks;
    let ask = async |hook, what| {
        let call = crate::hooks::call_body(hook, &identity.tenant, &identity.user, unix_ms(), what);
        hooks.ask(hook, call, unix_ms()).await
    };
    let hook_refusal = |code: ErrorCode, message: &str| {
        let status = if code.is_retryable() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::FORBIDDEN };
        refuse(status, code, message)
    };
    if hooks.has(Hook::Connect)
        && let Outcome::Deny { code, message } = ask(Hook::Connect, json!({"client": "sse"})).await
    {
        return hook_refusal(code, &message);
    }
    let mut checked = Vec::new();
    for pattern in &patterns {
        // `since` applies only to a stream of one pattern.
        let since = since.filter(|_| patterns.len() == 1);
        let mut filter = filter.clone();
        if hooks.has(Hook::Subscribe) {
            match ask(Hook::Subscribe, json!({"topic": pattern, "filter": filter})).await {
                Outcome::Deny { code, message } => return hook_refusal(code, &message),
                Outcome::Rewrite { filter: Some(rewritten), .. } => filter = Some(rewritten),
                Outcome::Allow | Outcome::Rewrite { .. } => {}
            }
        }
        match events.check(&identity, pattern, filter.as_deref(), since) {
            Ok(c) => checked.push(c),
            Err((code, message)) => {
                let status =
                    if code == ErrorCode::PERMISSION_DENIED { StatusCode::FORBIDDEN } else { StatusCode::BAD_REQUEST };
                return refuse(status, code, &message);
            }
        }
    }
    // A stream holds one of the user's connection slots, as a connection does.
    let max = ctx.limits.max_connections_per_user;
    let Some(slot) = ctx.users.acquire(&identity.tenant, &identity.user, max) else {
        let message = format!("user already holds {max} connections");
        return refuse(StatusCode::TOO_MANY_REQUESTS, ErrorCode::TOO_MANY_CONNECTIONS, &message);
    };
    let resumable = checked.len() == 1 && checked[0].pattern.exact().is_some_and(|t| events.is_persistent(&t));
    let tenant: Arc<str> = identity.tenant.as_str().into();
    let outbox = crate::outbox::Outbox::new(crate::proto::Codec::Json, ctx.limits.outbox_bytes);
    let id = conn.next_id();
    let owner = crate::events::Owner::new(id);
    let mut guard =
        crate::transport::sse::StreamGuard { events: events.clone(), tenant: tenant.clone(), subs: Vec::new() };
    for c in checked {
        let pattern = c.pattern.to_string();
        let (sub, resume) = events.subscribe(&tenant, &owner, c, outbox.clone(), crate::outbox::CONTROL);
        guard.subs.push(sub.clone());
        match resume {
            Some((topic, since)) => {
                let reply = outbox.reserve(crate::outbox::CONTROL, 0);
                let (events, tenant) = (events.clone(), tenant.clone());
                state.tasks.spawn(async move { events.resume(&tenant, &sub, &topic, since, reply).await });
            }
            None => {
                let frame = crate::proto::ServerFrame::Subscribed {
                    req: 0,
                    pattern,
                    position: None,
                    recovered: since.is_none(),
                };
                let _ = outbox.send(crate::outbox::CONTROL, &frame);
            }
        }
    }
    let (orders_tx, orders) = crate::mailbox::mailbox();
    let registration = state.controls.register(Arc::new(identity.clone()), id, "sse", unix_ms(), orders_tx);
    let stream = crate::transport::sse::Stream {
        outbox,
        guard,
        orders,
        registration,
        _slot: slot,
        resumable,
        heartbeat: Duration::from_millis(events.sse_heartbeat_ms),
        expires_at_ms: identity.expires_at.saturating_mul(1000),
        stop: state.stop.clone(),
        started: false,
        ended: false,
    };
    let body = futures_util::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next(unix_ms).await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), stream))
    });
    (
        SSE_CORS,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// Most events in one `POST /v1/api/events`.
pub const MAX_EVENTS_PER_CALL: usize = 1000;

/// `POST /v1/api/events` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsRequest {
    tenant: String,
    events: Vec<EventRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventRequest {
    topic: String,
    /// Event id, 1-64 bytes: the idempotency key.
    id: String,
    #[serde(default)]
    tags: crate::events::Tags,
    data: Payload,
    #[serde(default)]
    priority: Priority,
    /// To every connection of this user instead of the topic's subscribers.
    #[serde(default)]
    user: Option<String>,
    #[serde(default = "server_sender")]
    from: String,
}

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
enum Priority {
    #[default]
    Normal,
    Critical,
}

#[derive(Serialize)]
struct EventResult {
    topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    /// Where a persistent topic's event is stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<Position>,
    duplicate: bool,
    /// For a user's event: how many of the user's connections on this node took it.
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_here: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
}

/// `POST /v1/api/events`: publishes a batch of events, in order; checked whole first.
async fn api_events(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match user_request(&state, &headers, &body, |r: &EventsRequest| &r.tenant) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    if request.events.is_empty() || request.events.len() > MAX_EVENTS_PER_CALL {
        let message = format!("events must hold 1-{MAX_EVENTS_PER_CALL} events");
        return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, message);
    }
    let max_payload = state.websocket.ctx.session.limits.max_payload_bytes as usize;
    let now_ms = unix_ms();
    let mut checked = Vec::with_capacity(request.events.len());
    for (i, e) in request.events.into_iter().enumerate() {
        let refuse = |status, code, message: String| api_error(status, code, format!("events[{i}]: {message}"));
        let topic = match crate::events::TopicName::parse(&e.topic) {
            Ok(topic) => topic,
            Err(code) => return refuse(StatusCode::BAD_REQUEST, code, format!("invalid topic {:?}", e.topic)),
        };
        if let Err(message) = crate::events::check_tags(&e.tags) {
            return refuse(StatusCode::BAD_REQUEST, ErrorCode::BAD_TAGS, message);
        }
        if e.id.is_empty() || e.id.len() > MAX_MESSAGE_ID_LEN || e.from.is_empty() {
            let message = format!("id must be 1-{MAX_MESSAGE_ID_LEN} bytes and from non-empty");
            return refuse(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, message);
        }
        if e.user.as_deref().is_some_and(str::is_empty) {
            return refuse(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, "user must not be empty".into());
        }
        if e.data.len() > max_payload {
            let message = format!("payload of {} bytes exceeds {max_payload}", e.data.len());
            return refuse(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PAYLOAD_TOO_LARGE, message);
        }
        let new = crate::events::NewEvent {
            topic,
            id: e.id,
            tags: e.tags,
            data: e.data,
            critical: e.priority == Priority::Critical,
            from: e.from,
            now_ms,
        };
        checked.push((new, e.user));
    }
    let events = state.websocket.ctx.session.events.clone();
    let mut pending = Vec::with_capacity(checked.len());
    for (new, user) in checked {
        let topic = new.topic.to_string();
        match user {
            Some(user) => {
                let (reached, duplicate) = events.publish_to_user(&request.tenant, &user, new, &state.controls);
                let result = EventResult {
                    topic,
                    user: Some(user),
                    position: None,
                    duplicate,
                    delivered_here: Some(reached),
                    error: None,
                };
                pending.push(futures_util::future::Either::Left(std::future::ready(result)));
            }
            None => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                events.publish(&request.tenant, new, move |outcome| drop(tx.send(outcome)));
                pending.push(futures_util::future::Either::Right(async move {
                    let result = |position, duplicate, error| EventResult {
                        topic: topic.clone(),
                        user: None,
                        position,
                        duplicate,
                        delivered_here: None,
                        error,
                    };
                    match rx.await {
                        Ok(Ok(p)) => {
                            if p.duplicate {
                                crate::metrics::duplicate_publish();
                            }
                            result(p.position, p.duplicate, None)
                        }
                        Ok(Err(err)) => {
                            let code = err.code();
                            let error =
                                serde_json::json!({"code": code.0, "error": code.slug(), "message": err.to_string()});
                            result(None, false, Some(error))
                        }
                        Err(_) => {
                            let code = ErrorCode::GOING_AWAY;
                            let error =
                                serde_json::json!({"code": code.0, "error": code.slug(), "message": "shutting down"});
                            result(None, false, Some(error))
                        }
                    }
                }));
            }
        }
    }
    let results = futures_util::future::join_all(pending).await;
    axum::Json(serde_json::json!({ "results": results })).into_response()
}

/// `POST /v1/api/publish` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishRequest {
    tenant: String,
    room: String,
    /// Message id, 1-64 bytes, delivered to subscribers like a client's.
    id: String,
    /// Any JSON value, or `{"$binary": "<base64>"}`.
    data: Payload,
    /// Shown to subscribers as the sender; `server` by default.
    #[serde(default = "server_sender")]
    from: String,
}

fn server_sender() -> String {
    "server".into()
}

#[derive(Serialize)]
struct PublishResponse {
    room: String,
    position: Position,
    /// The id was already published within the dedupe window: `position` is the original.
    duplicate: bool,
}

/// An API error: HTTP status plus the protocol's error code and name.
pub(crate) fn api_error(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({"code": code.0, "error": code.slug(), "message": message.into()});
    (status, axum::Json(body)).into_response()
}

/// The credential of an `Authorization: Bearer <credential>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
}

/// The response refusing a server API request, unless it carries the API key.
pub(crate) fn unauthorized(state: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = state.api_key_sha256 else {
        return Some(api_error(StatusCode::NOT_FOUND, ErrorCode::PERMISSION_DENIED, "server API is off: set api.key"));
    };
    let given = bearer(headers);
    // Comparing digests keeps the comparison independent of where the key differs.
    match given {
        Some(key) if crate::tls::sha256(key.as_bytes()) == expected => None,
        _ => Some(api_error(StatusCode::UNAUTHORIZED, ErrorCode::PERMISSION_DENIED, "missing or wrong API key")),
    }
}

async fn api_publish(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(response) = unauthorized(&state, &headers) {
        return response;
    }
    let request: PublishRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, err.to_string()),
    };
    let key = match room_key(&request.tenant, &request.room) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    if request.id.is_empty() || request.id.len() > MAX_MESSAGE_ID_LEN || request.from.is_empty() {
        let message = format!("id must be 1-{MAX_MESSAGE_ID_LEN} bytes and from non-empty");
        return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, message);
    }
    // The same limit clients' publishes are held to.
    let max_payload = state.websocket.ctx.session.limits.max_payload_bytes as usize;
    if request.data.len() > max_payload {
        let message = format!("payload of {} bytes exceeds {max_payload}", request.data.len());
        return api_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::PAYLOAD_TOO_LARGE, message);
    }
    let (done, outcome) = Done::channel();
    let publish = Publish { key, from: request.from, id: request.id, data: request.data, now_ms: unix_ms() };
    state.engine.publish(publish, done);
    match outcome.await {
        Ok(Ok(accepted)) => {
            if accepted.duplicate {
                crate::metrics::duplicate_publish();
            }
            let response =
                PublishResponse { room: request.room, position: accepted.position, duplicate: accepted.duplicate };
            axum::Json(response).into_response()
        }
        Ok(Err(err)) => api_error(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string()),
        Err(_) => api_error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::GOING_AWAY, "the relay is shutting down"),
    }
}

/// How long a revocation is kept when the request does not say (`until`): a week, longer than
/// access tokens should live.
pub const REVOKE_DEFAULT_SECS: u64 = 7 * 24 * 3600;

/// `POST /v1/api/disconnect` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DisconnectRequest {
    tenant: String,
    user: String,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /v1/api/revoke` body: `jti`, or `user` (with `issued_before`, default now).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    tenant: String,
    jti: Option<String>,
    user: Option<String>,
    /// Unix seconds; the user's tokens issued before it are revoked. Default: now.
    issued_before: Option<u64>,
    /// Unix seconds until which the revocation is kept. Default: a week from now.
    until: Option<u64>,
}

/// Applies an action on this node, sends it to the others, and answers how many of this
/// node's connections it closed.
fn act(state: &HttpState, control: Control) -> Response {
    let closed = state.controls.apply(&control, unix_ms() / 1000);
    state.engine.broadcast(&control);
    axum::Json(serde_json::json!({ "closed_here": closed })).into_response()
}

/// A server API request body for a tenant's users: the key checked, the body parsed, the
/// tenant valid; otherwise the error response.
pub(crate) fn user_request<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    headers: &HeaderMap,
    body: &[u8],
    tenant: impl Fn(&T) -> &str,
) -> Result<T, Box<Response>> {
    if let Some(response) = unauthorized(state, headers) {
        return Err(Box::new(response));
    }
    let request: T = serde_json::from_slice(body)
        .map_err(|err| Box::new(api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, err.to_string())))?;
    match bad_tenant(tenant(&request)) {
        Some(response) => Err(Box::new(response)),
        None => Ok(request),
    }
}

async fn api_disconnect(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match user_request(&state, &headers, &body, |r: &DisconnectRequest| &r.tenant) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let reason = request.reason.unwrap_or_else(|| "disconnected by the server".into());
    act(&state, Control::Disconnect { tenant: request.tenant, user: request.user, reason })
}

async fn api_revoke(State(state): State<Arc<HttpState>>, headers: HeaderMap, body: Bytes) -> Response {
    let request = match user_request(&state, &headers, &body, |r: &RevokeRequest| &r.tenant) {
        Ok(request) => request,
        Err(response) => return *response,
    };
    let now_s = unix_ms() / 1000;
    let target = match (request.jti, request.user) {
        (Some(jti), None) if !jti.is_empty() && request.issued_before.is_none() => Revoked::Token { jti },
        (None, Some(user)) if !user.is_empty() => {
            Revoked::User { user, issued_before: request.issued_before.unwrap_or(now_s + 1) }
        }
        _ => {
            let message = "give jti, or user (with issued_before), not both";
            return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, message);
        }
    };
    let until = request.until.unwrap_or(now_s + REVOKE_DEFAULT_SECS);
    if until <= now_s {
        return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, "until is in the past");
    }
    act(&state, Control::Revoke(Revocation { tenant: request.tenant, target, until }))
}

/// `GET /v1/api/history` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    tenant: String,
    room: String,
    /// Messages before this offset; the newest when absent.
    before: Option<u64>,
    /// At most this many (1-1000, default 100).
    limit: Option<usize>,
}

#[derive(Serialize)]
struct HistoryResponse {
    room: String,
    /// The room's top.
    position: Position,
    /// Lowest retained offset.
    first: u64,
    messages: Vec<HistoryMessage>,
}

#[derive(Serialize)]
struct HistoryMessage {
    offset: u64,
    from: String,
    time: u64,
    id: String,
    data: Payload,
}

/// Most messages one API history page returns.
const MAX_API_HISTORY_PAGE: usize = 1000;

async fn api_history(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(response) = unauthorized(&state, &headers) {
        return response;
    }
    let Query(query) = match query {
        Ok(query) => query,
        Err(err) => return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, err.body_text()),
    };
    let key = match room_key(&query.tenant, &query.room) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let limit = query.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_API_HISTORY_PAGE {
        let message = format!("limit must be 1-{MAX_API_HISTORY_PAGE}");
        return api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, message);
    }
    let page = async {
        let meta = state.engine.meta(&key).await?;
        let messages = state.engine.read_before(&key, query.before.unwrap_or(u64::MAX), limit).await?;
        Ok::<_, crate::engine::EngineError>((meta, messages))
    };
    match page.await {
        Ok((meta, messages)) => axum::Json(HistoryResponse {
            room: query.room,
            position: meta.position(),
            first: meta.first,
            messages: messages
                .into_iter()
                .map(|m| HistoryMessage { offset: m.offset, from: m.from, time: m.time, id: m.id, data: m.data })
                .collect(),
        })
        .into_response(),
        Err(err) => api_error(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string()),
    }
}

/// The response refusing a tenant name, unless it is valid.
pub(crate) fn bad_tenant(tenant: &str) -> Option<Response> {
    (!crate::auth::valid_tenant(tenant))
        .then(|| api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, "tenant must be 1-64 of [A-Za-z0-9_.-]"))
}

/// The room an API request names, or the response refusing its tenant or room name.
fn room_key(tenant: &str, room: &str) -> Result<RoomKey, Box<Response>> {
    if let Some(response) = bad_tenant(tenant) {
        return Err(Box::new(response));
    }
    match RoomName::parse(room) {
        Ok(room) => Ok(RoomKey { tenant: tenant.into(), room }),
        Err(code) => Err(Box::new(api_error(StatusCode::BAD_REQUEST, code, format!("invalid room name {room:?}")))),
    }
}

/// `GET /v1/api/presence/{tenant}/rooms/{room}`: the room's present members, as a joining
/// client's snapshot lists them (users hiding their presence are not listed).
async fn api_room_presence(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path((tenant, room)): Path<(String, String)>,
) -> Response {
    if let Some(response) = unauthorized(&state, &headers) {
        return response;
    }
    let key = match room_key(&tenant, &room) {
        Ok(key) => key,
        Err(response) => return *response,
    };
    let users = state.awareness.room(&key);
    axum::Json(serde_json::json!({"room": room, "users": users})).into_response()
}

/// `GET /v1/api/presence/{tenant}/users/{user}`: the user's status as others see it, with the
/// last time they were seen online.
async fn api_user_status(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
) -> Response {
    if let Some(response) = unauthorized(&state, &headers).or_else(|| bad_tenant(&tenant)) {
        return response;
    }
    axum::Json(state.awareness.user(&UserKey::new(&tenant, &user))).into_response()
}

/// `GET /v1/api/calls/{tenant}/users/{user}` query.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CallsQuery {
    /// A page's `next`, or a time (ms): calls that started before it. The newest when absent.
    before: Option<String>,
    /// At most this many (1-200, default 50).
    limit: Option<usize>,
}

/// `GET /v1/api/calls/{tenant}/users/{user}`: a page of the user's call history, newest first,
/// with the cursor of the next page (docs/calls.md, "History").
async fn api_user_calls(
    State(state): State<Arc<HttpState>>,
    headers: HeaderMap,
    Path((tenant, user)): Path<(String, String)>,
    query: Result<Query<CallsQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(response) = unauthorized(&state, &headers).or_else(|| bad_tenant(&tenant)) {
        return response;
    }
    let bad = |message: String| api_error(StatusCode::BAD_REQUEST, ErrorCode::BAD_REQUEST, message);
    let Query(query) = match query {
        Ok(query) => query,
        Err(err) => return bad(err.body_text()),
    };
    let before = match query.before.as_deref().map(str::parse::<HistoryCursor>).transpose() {
        Ok(before) => before,
        Err(HistoryError::Invalid(message)) => return bad(message),
        Err(err) => return bad(err.to_string()),
    };
    let limit = query.limit.unwrap_or(50);
    match state.call_history.list(&UserKey::new(&tenant, &user), before, limit, unix_ms()).await {
        Ok(page) => axum::Json(page).into_response(),
        Err(HistoryError::Invalid(message)) => bad(message),
        Err(HistoryError::Store(err)) => {
            api_error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::STORE_UNAVAILABLE, err.to_string())
        }
    }
}
