//! Prometheus metrics, all named `edgerelay_*`, recorded through the `metrics` facade.
//!
//! Names live here so the code that records and the docs that list them agree. The recorder is
//! process-wide; several relays in one process (tests) share it.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Open connections, by `transport` (gauge).
pub const CONNECTIONS: &str = "edgerelay_connections";
/// Connections accepted, by `transport` (counter).
pub const CONNECTIONS_TOTAL: &str = "edgerelay_connections_total";
/// Connections closed, by `code` (the protocol close code slug, or `normal`).
pub const DISCONNECTS_TOTAL: &str = "edgerelay_disconnects_total";
/// Frames received / sent, by `transport`.
pub const FRAMES_IN_TOTAL: &str = "edgerelay_frames_in_total";
pub const FRAMES_OUT_TOTAL: &str = "edgerelay_frames_out_total";
/// Bytes received / sent in frames (bodies and prefixes), by `transport`.
pub const BYTES_IN_TOTAL: &str = "edgerelay_bytes_in_total";
pub const BYTES_OUT_TOTAL: &str = "edgerelay_bytes_out_total";
/// Accepted publishes.
pub const PUBLISHES_TOTAL: &str = "edgerelay_publishes_total";
/// Messages queued to subscribers.
pub const DELIVERIES_TOTAL: &str = "edgerelay_deliveries_total";
/// Time to fan one message out to every subscriber's outbox (histogram, seconds).
pub const FANOUT_SECONDS: &str = "edgerelay_fanout_seconds";
/// Datagram-class frames received / sent as QUIC datagrams, by `transport`.
pub const DATAGRAMS_IN_TOTAL: &str = "edgerelay_datagrams_in_total";
pub const DATAGRAMS_OUT_TOTAL: &str = "edgerelay_datagrams_out_total";
/// Datagram-class frames dropped, by `reason`: `superseded` (a newer one for the same key was
/// queued), `evicted` (queue or byte cap full), `too_large` (over `limits.max_datagram_bytes`),
/// `backlog` (the connection loop was busy), `undecodable`, `unauthenticated`, `not_datagram`
/// (a frame type that is not allowed as a datagram), `send_failed`, `test_loss` (dropped on
/// purpose by the `presence.test_datagram_loss` test knob).
pub const DATAGRAM_DROPS_TOTAL: &str = "edgerelay_datagram_drops_total";
/// Datagrams too large for the path (or refused by the peer) sent on the control stream instead.
pub const DATAGRAMS_REROUTED_TOTAL: &str = "edgerelay_datagrams_rerouted_total";
/// Errors sent to clients, by `code` slug.
pub const ERRORS_TOTAL: &str = "edgerelay_errors_total";
/// Rooms currently held by the hub (gauge).
pub const ROOMS: &str = "edgerelay_rooms";
/// Members switched from live fanout to replay from history because they fell behind.
pub const CATCH_UPS_TOTAL: &str = "edgerelay_catch_ups_total";
/// Messages sent from history (resume, catch-up).
pub const REPLAYED_TOTAL: &str = "edgerelay_replayed_total";
/// Time of one durable history commit (histogram, seconds).
pub const STORE_COMMIT_SECONDS: &str = "edgerelay_store_commit_seconds";
/// Messages per history commit (histogram).
pub const STORE_BATCH_SIZE: &str = "edgerelay_store_batch_size";
/// History commits that failed (their publishes were refused, not acknowledged).
pub const STORE_FAILURES_TOTAL: &str = "edgerelay_store_failures_total";
/// Publishes (a client's or the server API's) answered with their original position because the
/// id was a retry.
pub const DUPLICATES_TOTAL: &str = "edgerelay_duplicate_publishes_total";
/// Rooms read again from their Redis stream because pub/sub did not bring every message
/// (redis engine).
pub const REDIS_RESYNCS_TOTAL: &str = "edgerelay_redis_resyncs_total";
/// Times the Redis pub/sub connection was found silent by its probe and reconnected.
pub const REDIS_PROBE_FAILURES_TOTAL: &str = "edgerelay_redis_probe_failures_total";

const LATENCY_BUCKETS: &[f64] =
    &[0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// Installs the process-wide Prometheus recorder once and returns the handle that renders it.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed by an embedding program; then ours only
            // renders what it is given, which is nothing. That is the embedder's choice.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Counter and gauge handles for one transport, registered once and shared by its connections
/// so the per-frame path does not look names up. A clone is one pointer: a connection's tasks
/// each hold one, and the nine handles themselves are 144 bytes. The connection gauge and counter
/// move only through [`TransportMetrics::opened`].
#[derive(Clone)]
pub struct TransportMetrics(std::sync::Arc<TransportHandles>);

pub struct TransportHandles {
    pub frames_in: metrics::Counter,
    pub frames_out: metrics::Counter,
    pub bytes_in: metrics::Counter,
    pub bytes_out: metrics::Counter,
    connections: metrics::Gauge,
    connections_total: metrics::Counter,
    pub datagrams_in: metrics::Counter,
    pub datagrams_out: metrics::Counter,
    pub datagrams_rerouted: metrics::Counter,
}

impl TransportMetrics {
    pub fn new(transport: &'static str) -> Self {
        TransportMetrics(std::sync::Arc::new(TransportHandles {
            frames_in: metrics::counter!(FRAMES_IN_TOTAL, "transport" => transport),
            frames_out: metrics::counter!(FRAMES_OUT_TOTAL, "transport" => transport),
            bytes_in: metrics::counter!(BYTES_IN_TOTAL, "transport" => transport),
            bytes_out: metrics::counter!(BYTES_OUT_TOTAL, "transport" => transport),
            connections: metrics::gauge!(CONNECTIONS, "transport" => transport),
            connections_total: metrics::counter!(CONNECTIONS_TOTAL, "transport" => transport),
            datagrams_in: metrics::counter!(DATAGRAMS_IN_TOTAL, "transport" => transport),
            datagrams_out: metrics::counter!(DATAGRAMS_OUT_TOTAL, "transport" => transport),
            datagrams_rerouted: metrics::counter!(DATAGRAMS_REROUTED_TOTAL, "transport" => transport),
        }))
    }

    /// Counts an opened connection; the returned guard counts it closed when dropped.
    pub fn opened(&self) -> OpenConnection {
        self.connections.increment(1.0);
        self.connections_total.increment(1);
        OpenConnection(self.connections.clone())
    }
}

impl std::ops::Deref for TransportMetrics {
    type Target = TransportHandles;

    fn deref(&self) -> &TransportHandles {
        &self.0
    }
}

/// The hub's handles, registered once so that a publish does not look names up.
#[derive(Clone)]
pub struct HubMetrics {
    pub publishes: metrics::Counter,
    pub deliveries: metrics::Counter,
    pub fanout_seconds: metrics::Histogram,
    pub catch_ups: metrics::Counter,
    pub rooms: metrics::Gauge,
}

impl HubMetrics {
    /// Handles on the recorder installed now (install it first).
    pub fn new() -> Self {
        HubMetrics {
            publishes: metrics::counter!(PUBLISHES_TOTAL),
            deliveries: metrics::counter!(DELIVERIES_TOTAL),
            fanout_seconds: metrics::histogram!(FANOUT_SECONDS),
            catch_ups: metrics::counter!(CATCH_UPS_TOTAL),
            rooms: metrics::gauge!(ROOMS),
        }
    }
}

impl Default for HubMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the open-connections gauge when the connection ends, however it ends.
pub struct OpenConnection(metrics::Gauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Counts a datagram dropped on the way in or out (see [`DATAGRAM_DROPS_TOTAL`] for reasons).
pub fn datagram_dropped(reason: &'static str) {
    metrics::counter!(DATAGRAM_DROPS_TOTAL, "reason" => reason).increment(1);
}

/// Counts a closed connection by reason.
pub fn disconnected(reason: &'static str) {
    metrics::counter!(DISCONNECTS_TOTAL, "code" => reason).increment(1);
}
