//! Prometheus metrics, all named `edgerelay_*`, recorded through the `metrics` facade.
//!
//! Names live here so the code that records and the docs that list them agree. The recorder is
//! process-wide; several relays in one process (tests) share it. [`install`] describes every
//! metric (`# HELP`) and registers each one, with the label values known in advance, so a
//! scrape shows them at 0 before their first event. [`process_metrics`] adds the standard
//! `process_*` metrics, read from `/proc/self` at scrape time.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::proto::ErrorCode;

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
/// New connection attempts by listener (`port`: `udp`, `tcp`) and what became of them
/// (`verdict`: `accept`, `retry`, `connection_rate_limited`, `too_many_from_address`,
/// `max_connections`); see `admission.rs`.
pub const ADMISSIONS_TOTAL: &str = "edgerelay_admissions_total";
/// Errors sent to clients, by `code` slug.
pub const ERRORS_TOTAL: &str = "edgerelay_errors_total";
/// Tasks alive in the async runtime (gauge, read at scrape time by [`process_metrics`]).
pub const TASKS: &str = "edgerelay_tasks";
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
/// Commits of the receipts store kept in redb (read marks, follows, mentions; embedded and memory
/// engines).
pub const RECEIPT_COMMITS_TOTAL: &str = "edgerelay_receipt_commits_total";
/// Publishes (a client's or the server API's) answered with their original position because the
/// id was a retry.
pub const DUPLICATES_TOTAL: &str = "edgerelay_duplicate_publishes_total";
/// Rooms read again from their Redis stream because pub/sub did not bring every message
/// (redis engine).
pub const REDIS_RESYNCS_TOTAL: &str = "edgerelay_redis_resyncs_total";
/// Times the Redis pub/sub connection was found silent by its probe and reconnected.
pub const REDIS_PROBE_FAILURES_TOTAL: &str = "edgerelay_redis_probe_failures_total";
/// Whether Redis answers this node (redis engine only): 1 while its probe is published and
/// comes back through pub/sub, 0 from a failed probe publish or a silent pub/sub until the next
/// probe that goes round (gauge).
pub const REDIS_UP: &str = "edgerelay_redis_up";

/// Time from a publish being handed to the engine (it passed the connection's checks, or the
/// server API's) until its successful outcome is handed on to be sent: the client's ack, or the
/// API answer (histogram, seconds; successful publishes only, duplicates included).
pub const PUBLISH_ACK_SECONDS: &str = "edgerelay_publish_ack_seconds";
/// Time from a message being committed (embedded engine: the durable commit returned; redis
/// engine: the node received it, as the script's reply or from pub/sub) until it is queued in
/// the outbox of every member of its room on this node (histogram, seconds; messages with at
/// least one member here).
pub const DELIVERY_SECONDS: &str = "edgerelay_delivery_seconds";
/// Time from accepting a connection (QUIC: its first packet; TCP: the accepted socket) until
/// its `hello` is accepted and `welcome` queued, by `transport` (histogram, seconds).
pub const HANDSHAKE_SECONDS: &str = "edgerelay_handshake_seconds";
/// QUIC and WebTransport connections whose `hello` arrived as 0-RTT data, before the handshake
/// completed (a resumed TLS session: the client saved a round trip), by `transport`.
pub const ZERO_RTT_TOTAL: &str = "edgerelay_quic_0rtt_total";
/// Heartbeats the relay sent to QUIC and WebTransport clients whose data had stalled (a fade:
/// see `transport::answer`).
pub const QUIC_FADE_PROBES: &str = "edgerelay_quic_fade_probes_total";
/// Always 1, labelled with the relay's `version`.
/// Events published or received from another node, and the connections they reached here.
pub const EVENTS_TOTAL: &str = "edgerelay_events_total";
pub const EVENT_DELIVERIES_TOTAL: &str = "edgerelay_event_deliveries_total";
/// Event subscriptions held on this node (connections and SSE streams).
pub const EVENT_SUBSCRIPTIONS: &str = "edgerelay_event_subscriptions";
/// Backend hook calls, by hook and outcome (allow, deny, rewrite, timeout, error, breaker_open, busy).
pub const HOOK_CALLS_TOTAL: &str = "edgerelay_hook_calls_total";
/// Backend hook call time, by hook.
pub const HOOK_SECONDS: &str = "edgerelay_hook_seconds";
/// Requests refused by a hook, by hook and by whom (backend, or the fallback).
pub const HOOK_DENIALS_TOTAL: &str = "edgerelay_hook_denials_total";
/// A hook's circuit breaker: 0 closed, 1 half-open, 2 open.
pub const HOOK_BREAKER_STATE: &str = "edgerelay_hook_breaker_state";
pub const BUILD_INFO: &str = "edgerelay_build_info";
/// Presence metrics, recorded by `hub::awareness` under these names (a test keeps them equal).
pub const PRESENCE_UPDATES_TOTAL: &str = "edgerelay_presence_updates_total";
pub const PRESENCE_IGNORED_TOTAL: &str = "edgerelay_presence_ignored_total";
pub const PRESENCE_USERS: &str = "edgerelay_presence_users";
/// Media tracks published on this node.
pub const MEDIA_TRACKS: &str = "edgerelay_media_tracks";
/// Media frames received from publishers.
pub const MEDIA_FRAMES_IN_TOTAL: &str = "edgerelay_media_frames_in_total";
/// Media groups dropped for a subscriber, by reason (`stale`: a newer group started; `full`:
/// its media queue was full).
pub const MEDIA_GROUPS_CANCELLED_TOTAL: &str = "edgerelay_media_groups_cancelled_total";
/// Layer probes for subscribers (docs/media.md), by outcome.
pub const MEDIA_PROBES_TOTAL: &str = "edgerelay_media_probes_total";
/// 1:1 calls placed on this node (counter).
pub const CALLS_STARTED_TOTAL: &str = "edgerelay_calls_started_total";
/// 1:1 calls ended, by `reason` (docs/calls.md; `missed` for an unanswered call) (counter).
pub const CALLS_ENDED_TOTAL: &str = "edgerelay_calls_ended_total";
/// 1:1 calls held on this node that have not ended (gauge).
pub const CALLS_ACTIVE: &str = "edgerelay_calls_active";
/// The relay's share of call setup, by `step`: `ring` (an `initiate` received until the ring
/// events are queued) and `connect` (an `answer` received until the `connected` events are
/// queued) (histogram, seconds).
pub const CALL_SETUP_SECONDS: &str = "edgerelay_call_setup_seconds";
/// Call quality flags raised, by `flag` (`high_loss`, `high_latency`, `low_bitrate`;
/// docs/calls.md, "Quality") (counter).
pub const CALL_QUALITY_FLAGS_TOTAL: &str = "edgerelay_call_quality_flags_total";
/// Call quality reports, by `result`: `accepted`, or the refusal's code (`bad_report`,
/// `report_too_frequent`) (counter).
pub const CALL_QUALITY_REPORTS_TOTAL: &str = "edgerelay_call_quality_reports_total";
/// Round-trip times in accepted call quality reports (histogram, seconds).
pub const CALL_QUALITY_RTT_SECONDS: &str = "edgerelay_call_quality_rtt_seconds";
/// The `reason` label's values of [`CALLS_ENDED_TOTAL`].
pub const CALL_END_REASONS: [&str; 6] = ["rejected", "cancelled", "busy", "missed", "hangup", "connection_lost"];

/// The `transport` label's values.
pub const TRANSPORTS: [&str; 3] = ["quic", "webtransport", "websocket"];
/// The `reason` label's values of [`DATAGRAM_DROPS_TOTAL`].
pub const DATAGRAM_DROP_REASONS: [&str; 9] = [
    "superseded",
    "evicted",
    "too_large",
    "backlog",
    "undecodable",
    "unauthenticated",
    "not_datagram",
    "send_failed",
    "test_loss",
];
const PRESENCE_UPDATE_KINDS: [&str; 4] = ["presence", "typing", "refresh", "snapshot"];
const PRESENCE_IGNORED_REASONS: [&str; 3] = ["rate_limited", "not_joined", "hidden"];

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
            if metrics::set_global_recorder(recorder).is_ok() {
                describe();
                register();
            }
            handle
        })
        .clone()
}

/// `# HELP` text for every metric.
fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(CONNECTIONS, "Open connections, by transport.");
    describe_counter!(EVENTS_TOTAL, "Events fanned out on this node (published here or received from another node).");
    describe_counter!(
        EVENT_DELIVERIES_TOTAL,
        "Event deliveries queued: connections (or SSE streams) an event reached."
    );
    describe_gauge!(EVENT_SUBSCRIPTIONS, "Event subscriptions held on this node.");
    describe_counter!(HOOK_CALLS_TOTAL, "Backend hook calls, by hook and outcome.");
    describe_histogram!(HOOK_SECONDS, "Time of one backend hook call, by hook.");
    describe_counter!(HOOK_DENIALS_TOTAL, "Requests refused by a backend hook, by hook and by (backend, fallback).");
    describe_gauge!(HOOK_BREAKER_STATE, "A hook's circuit breaker: 0 closed, 1 half-open, 2 open.");
    describe_counter!(CONNECTIONS_TOTAL, "Connections accepted, by transport.");
    describe_counter!(
        ADMISSIONS_TOTAL,
        "New connection attempts by listener port and verdict (accept, retry, refusals)."
    );
    describe_counter!(DISCONNECTS_TOTAL, "Connections closed, by close reason (normal or the close code's name).");
    describe_counter!(FRAMES_IN_TOTAL, "Frames received, by transport.");
    describe_counter!(FRAMES_OUT_TOTAL, "Frames sent, by transport.");
    describe_counter!(BYTES_IN_TOTAL, "Frame bytes received, by transport.");
    describe_counter!(BYTES_OUT_TOTAL, "Frame bytes sent, by transport.");
    describe_counter!(PUBLISHES_TOTAL, "Committed messages fanned out to a room on this node.");
    describe_counter!(DELIVERIES_TOTAL, "Messages queued to subscribers.");
    describe_histogram!(FANOUT_SECONDS, "Time to queue one message for every member of its room on this node.");
    describe_counter!(DATAGRAMS_IN_TOTAL, "Datagram-class frames received as QUIC datagrams, by transport.");
    describe_counter!(DATAGRAMS_OUT_TOTAL, "Datagram-class frames sent as QUIC datagrams, by transport.");
    describe_counter!(DATAGRAM_DROPS_TOTAL, "Datagram-class frames dropped, by reason.");
    describe_counter!(DATAGRAMS_REROUTED_TOTAL, "Datagrams too large for the path sent on the control stream instead.");
    describe_counter!(ERRORS_TOTAL, "Error frames sent to clients, by error code name.");
    describe_gauge!(ROOMS, "Rooms held in memory.");
    describe_counter!(CATCH_UPS_TOTAL, "Members switched from live fanout to replay from history (fell behind).");
    describe_counter!(REPLAYED_TOTAL, "Messages sent from history (resume, catch-up).");
    describe_histogram!(STORE_COMMIT_SECONDS, "Time of one durable history commit.");
    describe_histogram!(STORE_BATCH_SIZE, "Messages per history commit.");
    describe_counter!(STORE_FAILURES_TOTAL, "History commits that failed (their publishes were refused).");
    describe_counter!(RECEIPT_COMMITS_TOTAL, "Commits of the receipts store (embedded and memory engines).");
    describe_counter!(DUPLICATES_TOTAL, "Publishes (client or server API) answered with their original position.");
    describe_counter!(REDIS_RESYNCS_TOTAL, "Rooms read again from their Redis stream because pub/sub missed messages.");
    describe_counter!(
        REDIS_PROBE_FAILURES_TOTAL,
        "Times the Redis pub/sub connection was found silent and reconnected."
    );
    describe_gauge!(
        REDIS_UP,
        "1 while Redis takes this node's probe and brings it back through pub/sub; 0 after a failed or lost probe (redis engine)."
    );
    describe_histogram!(PUBLISH_ACK_SECONDS, "Time from a publish reaching the engine to its ack being queued.");
    describe_histogram!(
        DELIVERY_SECONDS,
        "Time from a message's commit (with early delivery: its publish reaching the engine) to its being queued for every member here."
    );
    describe_histogram!(HANDSHAKE_SECONDS, "Time from accepting a connection to its welcome, by transport.");
    describe_counter!(
        ZERO_RTT_TOTAL,
        "QUIC and WebTransport connections whose hello arrived as 0-RTT data, by transport."
    );
    describe_counter!(QUIC_FADE_PROBES, "Heartbeats sent to QUIC clients whose data had gone unacknowledged (a fade).");
    describe_gauge!(BUILD_INFO, "Always 1; the version label is the relay's version.");
    describe_counter!(PRESENCE_UPDATES_TOTAL, "Presence frames queued to members, by kind.");
    describe_counter!(PRESENCE_IGNORED_TOTAL, "Presence and typing requests ignored, by reason.");
    describe_gauge!(PRESENCE_USERS, "Users with a connected device.");
    describe_gauge!(MEDIA_TRACKS, "Media tracks published on this node.");
    describe_counter!(MEDIA_FRAMES_IN_TOTAL, "Media frames received from publishers.");
    describe_counter!(
        MEDIA_GROUPS_CANCELLED_TOTAL,
        "Media groups dropped for a subscriber, by reason (stale: a newer group started; full: its queue was full)."
    );
    describe_counter!(MEDIA_PROBES_TOTAL, "Trials of a higher video layer for a subscriber, by outcome.");
    describe_counter!(CALLS_STARTED_TOTAL, "1:1 calls placed on this node.");
    describe_counter!(CALLS_ENDED_TOTAL, "1:1 calls ended, by reason.");
    describe_gauge!(CALLS_ACTIVE, "1:1 calls held on this node that have not ended.");
    describe_histogram!(
        CALL_SETUP_SECONDS,
        "The relay's share of call setup, by step (ring: initiate to ring queued; connect: answer to connected queued)."
    );
    describe_counter!(CALL_QUALITY_FLAGS_TOTAL, "Call quality flags raised, by flag.");
    describe_counter!(CALL_QUALITY_REPORTS_TOTAL, "Call quality reports, by result (accepted or the refusal's code).");
    describe_histogram!(CALL_QUALITY_RTT_SECONDS, "Round-trip times in accepted call quality reports.");
}

/// Registers every metric, with each label value known in advance, so that each is scraped
/// (at 0) before its first event. Per-transport metrics are registered by their transports.
fn register() {
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for transport in TRANSPORTS {
        drop(TransportMetrics::new(transport));
    }
    metrics::counter!(DISCONNECTS_TOTAL, "code" => "normal").absolute(0);
    metrics::counter!(QUIC_FADE_PROBES).absolute(0);
    metrics::counter!(RECEIPT_COMMITS_TOTAL).absolute(0);
    for code in ErrorCode::ALL.iter().filter(|code| code.is_fatal()) {
        metrics::counter!(DISCONNECTS_TOTAL, "code" => code.slug()).absolute(0);
    }
    for code in ErrorCode::ALL {
        metrics::counter!(ERRORS_TOTAL, "code" => code.slug()).absolute(0);
    }
    for reason in DATAGRAM_DROP_REASONS {
        metrics::counter!(DATAGRAM_DROPS_TOTAL, "reason" => reason).absolute(0);
    }
    for kind in PRESENCE_UPDATE_KINDS {
        metrics::counter!(PRESENCE_UPDATES_TOTAL, "kind" => kind).absolute(0);
    }
    for reason in PRESENCE_IGNORED_REASONS {
        metrics::counter!(PRESENCE_IGNORED_TOTAL, "reason" => reason).absolute(0);
    }
    for reason in CALL_END_REASONS {
        metrics::counter!(CALLS_ENDED_TOTAL, "reason" => reason).absolute(0);
    }
    for step in ["ring", "connect"] {
        drop(metrics::histogram!(CALL_SETUP_SECONDS, "step" => step));
    }
    for flag in crate::call::quality::Flag::ALL {
        metrics::counter!(CALL_QUALITY_FLAGS_TOTAL, "flag" => flag.code()).absolute(0);
    }
    for result in ["accepted", "bad_report", "report_too_frequent"] {
        metrics::counter!(CALL_QUALITY_REPORTS_TOTAL, "result" => result).absolute(0);
    }
    drop(metrics::histogram!(CALL_QUALITY_RTT_SECONDS));
    for reason in ["stale", "full"] {
        metrics::counter!(MEDIA_GROUPS_CANCELLED_TOTAL, "reason" => reason).absolute(0);
    }
    for outcome in ["started", "succeeded", "failed", "abandoned"] {
        metrics::counter!(MEDIA_PROBES_TOTAL, "outcome" => outcome).absolute(0);
    }
    for name in [
        PUBLISHES_TOTAL,
        DELIVERIES_TOTAL,
        CATCH_UPS_TOTAL,
        REPLAYED_TOTAL,
        STORE_FAILURES_TOTAL,
        DUPLICATES_TOTAL,
        REDIS_RESYNCS_TOTAL,
        REDIS_PROBE_FAILURES_TOTAL,
        MEDIA_FRAMES_IN_TOTAL,
        CALLS_STARTED_TOTAL,
        EVENTS_TOTAL,
        EVENT_DELIVERIES_TOTAL,
    ] {
        metrics::counter!(name).absolute(0);
    }
    for name in [ROOMS, PRESENCE_USERS, MEDIA_TRACKS, CALLS_ACTIVE, EVENT_SUBSCRIPTIONS] {
        metrics::gauge!(name).increment(0.0);
    }
    for name in [FANOUT_SECONDS, STORE_COMMIT_SECONDS, STORE_BATCH_SIZE, PUBLISH_ACK_SECONDS, DELIVERY_SECONDS] {
        drop(metrics::histogram!(name));
    }
}

/// Records one publish's time from `since` to its ack ([`PUBLISH_ACK_SECONDS`]).
pub fn publish_acked(since: Instant) {
    static HISTOGRAM: OnceLock<metrics::Histogram> = OnceLock::new();
    HISTOGRAM.get_or_init(|| metrics::histogram!(PUBLISH_ACK_SECONDS)).record(since.elapsed().as_secs_f64());
}

/// Records one message's time from `since` (its commit, or with early delivery its publish
/// reaching the engine) to its queueing ([`DELIVERY_SECONDS`]), if it was queued for anyone here.
pub fn delivered(since: Instant, members: usize) {
    static HISTOGRAM: OnceLock<metrics::Histogram> = OnceLock::new();
    if members > 0 {
        HISTOGRAM.get_or_init(|| metrics::histogram!(DELIVERY_SECONDS)).record(since.elapsed().as_secs_f64());
    }
}

/// Counts a publish answered with its original position.
pub fn duplicate_publish() {
    metrics::counter!(DUPLICATES_TOTAL).increment(1);
}

/// The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_start_time_seconds`, `process_open_fds`,
/// `process_max_fds`) in the Prometheus text format, read from `/proc/self` now. Empty where
/// `/proc` is not there; a value that cannot be read is left out.
pub fn process_metrics() -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: Option<f64>| {
        if let Some(value) = value {
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n");
        }
    };
    let stat = ProcStat::read();
    // The kernel reports these times in USER_HZ, which is 100 on every Linux architecture.
    const TICKS: f64 = 100.0;
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
        stat.lines().find_map(|line| line.strip_prefix("btime ")).and_then(|v| v.trim().parse::<f64>().ok())
    });
    metric(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        stat.as_ref().map(|s| (s.utime + s.stime) as f64 / TICKS),
    );
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        status_kib("VmRSS:").map(|kib| kib as f64 * 1024.0),
    );
    metric(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        stat.as_ref().map(|s| s.vsize as f64),
    );
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        stat.as_ref().zip(boot_time).map(|(s, boot)| boot + s.starttime as f64 / TICKS),
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        std::fs::read_dir("/proc/self/fd").ok().map(|dir| dir.count() as f64),
    );
    metric("process_max_fds", "gauge", "Maximum number of open file descriptors.", max_fds());
    // Not a process metric, but read at scrape time too: tokio's count of the runtime's live
    // tasks (connections, rooms, timers). A soak run checks it returns to its baseline.
    metric(
        TASKS,
        "gauge",
        "Tasks alive in the relay's async runtime.",
        tokio::runtime::Handle::try_current().ok().map(|rt| rt.metrics().num_alive_tasks() as f64),
    );
    out
}

/// The fields of `/proc/self/stat` the process metrics use.
struct ProcStat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // The command name (field 2) is in parentheses and may hold spaces: count fields after it.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `fields[0]` is field 3 (state).
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok());
        Some(ProcStat { utime: field(14)?, stime: field(15)?, starttime: field(22)?, vsize: field(23)? })
    }
}

/// A `kB` line of `/proc/self/status`.
fn status_kib(key: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|line| line.strip_prefix(key))?;
    line.split_whitespace().next()?.parse().ok()
}

/// The soft limit on open files, from `/proc/self/limits`.
fn max_fds() -> Option<f64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

/// Counter and gauge handles for one transport, registered once and shared by its connections
/// so the per-frame path does not look names up. A clone is one pointer: a connection's tasks
/// each hold one, and the eleven handles and the label are 192 bytes. The connection gauge and counter
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
    /// Accept to welcome ([`HANDSHAKE_SECONDS`]).
    pub handshake_seconds: metrics::Histogram,
    /// Hellos that came as 0-RTT data ([`ZERO_RTT_TOTAL`]).
    pub zero_rtt: metrics::Counter,
    /// The `transport` label.
    pub transport: &'static str,
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
            handshake_seconds: metrics::histogram!(HANDSHAKE_SECONDS, "transport" => transport),
            zero_rtt: metrics::counter!(ZERO_RTT_TOTAL, "transport" => transport),
            transport,
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

/// Counts a connection attempt's verdict (see [`ADMISSIONS_TOTAL`]).
pub fn admission(port: &'static str, verdict: &'static str) {
    metrics::counter!(ADMISSIONS_TOTAL, "port" => port, "verdict" => verdict).increment(1);
}

/// Counts a closed connection by reason.
pub fn disconnected(reason: &'static str) {
    metrics::counter!(DISCONNECTS_TOTAL, "code" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_names_are_the_ones_awareness_records() {
        assert_eq!(PRESENCE_UPDATES_TOTAL, crate::hub::awareness::UPDATES_TOTAL);
        assert_eq!(PRESENCE_IGNORED_TOTAL, crate::hub::awareness::IGNORED_TOTAL);
        assert_eq!(PRESENCE_USERS, crate::hub::awareness::USERS);
    }

    #[test]
    fn process_metrics_are_read_from_proc() {
        let text = process_metrics();
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_virtual_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
            "process_max_fds",
        ] {
            let value = text
                .lines()
                .find_map(|line| line.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
                .unwrap_or_else(|| panic!("{name} missing in {text}"));
            assert!(
                value.parse::<f64>().is_ok_and(|v| v > 0.0 || name == "process_cpu_seconds_total"),
                "{name} {value}"
            );
        }
    }
}
