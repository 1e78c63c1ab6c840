//! The TCP listener's HTTP surface: the WebSocket endpoint, health and readiness, Prometheus
//! metrics and the certificate hash browsers pin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::transport::websocket::WebSocketTransport;

/// The certificate facts clients need: the SHA-256 of the end-entity certificate (what
/// Chromium's `serverCertificateHashes` and the Rust client's pin compare) and its expiry.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertInfo {
    pub sha256_hex: String,
    pub sha256_base64: String,
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
    /// Upgraded WebSocket connections are tracked here so shutdown waits for them.
    pub tasks: TaskTracker,
    pub stop: CancellationToken,
}

pub fn router(state: Arc<HttpState>) -> Router {
    Router::new()
        .route("/v1/ws", get(websocket))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cert", get(cert))
        .with_state(state)
}

async fn websocket(State(state): State<Arc<HttpState>>, upgrade: WebSocketUpgrade) -> Response {
    if !state.ready.load(Ordering::Relaxed) {
        return (StatusCode::SERVICE_UNAVAILABLE, "relay is draining\n").into_response();
    }
    let limit = state.websocket.socket_message_limit();
    let transport = state.websocket.clone();
    let stop = state.stop.child_token();
    let tasks = state.tasks.clone();
    upgrade
        .max_message_size(limit)
        .max_frame_size(limit)
        .on_upgrade(move |socket| tasks.track_future(transport.serve(socket, stop)))
}

async fn readyz(State(state): State<Arc<HttpState>>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<HttpState>>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn cert(State(state): State<Arc<HttpState>>) -> Response {
    let info = state.cert.read().unwrap_or_else(|e| e.into_inner()).clone();
    axum::Json(info).into_response()
}
