//! Wires the subsystems together and owns their lifetimes: one cancellation tree, two task
//! sets (long-lived services, and connections), and a shutdown with a deadline.
//!
//! Shutdown (SIGTERM) drains: readiness turns false (`/readyz` answers 503 until the process
//! exits), new connections are refused (QUIC: closed with `going_away` right after their
//! handshake; WebSocket: HTTP 503 with `Retry-After`), every connection is told `go_away`
//! (retryable, with a reconnect delay), its queued frames are flushed, and it is closed.
//! Whatever is still open at the deadline is closed hard, and what remains (the store's last
//! commit, the HTTP listeners) gets at most [`SHUTDOWN_MARGIN`] more.
//!
//! Certificates from `tls.cert_file` / `tls.key_file` are loaded again when the files change
//! (checked every `tls.reload_interval_ms`) or on SIGHUP: new QUIC and TLS-over-TCP connections
//! get the new certificate, open ones keep theirs.

use crate::media::calls::Calls;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Signer, Verifier};
use crate::call::history::{CallHistory, EmbeddedCallHistory, MemoryCallHistory, RedisCallHistory};
use crate::collab::SessionStore;
use crate::config::{Config, LimitsConfig, QuicConfig, StoreEngine};
use crate::connection::{ConnectionContext, unix_ms};
use crate::control::{Control, Controls};
use crate::dev_tokens::DevTokens;
use crate::engine::{Engine, LocalEngine, LocalEngineConfig, RedisEngine, RedisEngineConfig};
use crate::http::{CertInfo, HttpState, Routes};
use crate::hub::Hub;
use crate::hub::awareness::Awareness;
use crate::hub::last_seen::{MemoryRecords, StoredRecords, UserRecords};
use crate::hub::remote::{LocalPresence, PresenceLink};
use crate::receipts::redis::RedisReceipts;
use crate::receipts::store::{EmbeddedReceipts, ReceiptStore};
use crate::session::SessionContext;
use crate::session::limits::UserConnections;
use crate::store::{EmbeddedHistory, History, MemoryHistory, Retention, SideDb};
use crate::tls::{self, CertBundle, SharedServerConfig};
use crate::transport::quic::{UDP_BUFFER_BYTES, try_enlarge_udp_buffers};
use crate::transport::{self, websocket::WebSocketTransport};

/// How often presence applies time (idle, typing expiry, refreshes); at most this coarse.
const PRESENCE_TICK: Duration = Duration::from_millis(250);
/// With a shared engine, a node's presence entries count for others this many presence
/// refreshes without being renewed: a dead node's users disappear within it.
pub const PRESENCE_TTL_REFRESHES: u64 = 3;
/// How often idle rooms are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// How often the dev certificate's expiry is checked.
const CERT_CHECK_EVERY: Duration = Duration::from_secs(3600);
/// Most time shutdown takes beyond `shutdown.drain_timeout_ms`: closing what is still open, the
/// store's last commit, the listeners.
pub const SHUTDOWN_MARGIN: Duration = Duration::from_millis(1000);

/// Why the relay could not start. Where a message names an underlying error, that error is part
/// of the message and not also its `source()`, so a report of the whole chain (`{:#}`) says it
/// once.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthSetupError),
    #[error(transparent)]
    Ice(#[from] crate::ice::IceSetupError),
    #[error("cannot create data directory {path}: {error}")]
    DataDir { path: PathBuf, error: std::io::Error },
    #[error("cannot bind {what} {addr}: {error}")]
    Bind { what: &'static str, addr: SocketAddr, error: std::io::Error },
    #[error("QUIC setup: {0}")]
    Quic(String),
    #[error("cannot open history store {path}: {error}")]
    Store { path: PathBuf, error: crate::store::StoreError },
    #[error("cannot start the redis engine ({url}): {error}")]
    Redis { url: String, error: crate::engine::EngineError },
}

/// A running relay.
pub struct Relay {
    udp_addr: SocketAddr,
    tcp_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    /// The TCP listener's TLS, when it speaks TLS.
    tcp_tls: Option<Arc<SharedServerConfig>>,
    /// Reloads `tls.cert_file` / `tls.key_file`, when configured.
    reloader: Option<Arc<CertReloader>>,
    /// The HTTP listeners, stopped last so `/readyz` answers until the end.
    http_servers: TaskTracker,
    http_stop: CancellationToken,
    config: Config,
    endpoint: quinn::Endpoint,
    http: Arc<HttpState>,
    engine: Arc<dyn Engine>,
    hub: Arc<Hub>,
    signer: Option<Signer>,
    services: TaskTracker,
    connections: TaskTracker,
    stop: CancellationToken,
    drain: CancellationToken,
}

impl Relay {
    /// Creates what is missing under the data directory, binds both listeners and serves.
    pub async fn start(config: Config) -> Result<Relay, RelayError> {
        config.validate()?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|error| RelayError::DataDir { path: data_dir.clone(), error })?;
        let metrics = crate::metrics::install();

        let (cert, next_cert) = load_cert(&config)?;
        let dev_secret = if config.auth.dev_keys { Some(load_or_create_dev_secret(&config)?) } else { None };
        let verifier = Arc::new(Verifier::new(&config.auth, dev_secret.as_deref())?);
        let signer = dev_secret.as_deref().map(Signer::dev);
        let ice = Arc::new(crate::ice::IceIssuer::from_config(&config.turn)?);

        let reset_key = tls::load_or_create_secret(&data_dir.join("quic-reset-key"), 64)?;
        let token_key = tls::load_or_create_secret(&data_dir.join("quic-token-key"), 64)?;
        let cid_key = tls::load_or_create_secret(&data_dir.join("quic-cid-key"), 8)?;
        let mut endpoint_config =
            quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &reset_key)));
        // Connection ids carry a keyed check; with the key kept across restarts, a restarted relay
        // recognises its previous life's ids and answers them with a stateless reset (keyed by
        // `reset_key`) instead of dropping them, so those clients reconnect at once.
        endpoint_config.cid_generator(move || Box::new(crate::transport::cid::KeyedCidGenerator::new(&cid_key)) as _);
        let server_config = quic_server_config(&cert, &token_key, &config.limits, &config.quic)?;
        let udp_addr = config.listen.udp;
        let socket = std::net::UdpSocket::from(bind_listener(udp_addr, false)?);
        enlarge_udp_buffers(&socket);
        let endpoint =
            quinn::Endpoint::new(endpoint_config, Some(server_config), socket, Arc::new(quinn::TokioRuntime))
                .map_err(|error| RelayError::Bind { what: "UDP", addr: udp_addr, error })?;
        let tcp_addr = config.listen.tcp;
        let tcp = tokio::net::TcpListener::from_std(std::net::TcpListener::from(bind_listener(tcp_addr, true)?))
            .map_err(|error| RelayError::Bind { what: "TCP", addr: tcp_addr, error })?;
        let udp_addr =
            endpoint.local_addr().map_err(|error| RelayError::Bind { what: "UDP", addr: udp_addr, error })?;
        let tcp_addr = tcp.local_addr().map_err(|error| RelayError::Bind { what: "TCP", addr: tcp_addr, error })?;
        if config.auth.dev_keys && !cert.dev {
            tracing::warn!(
                secret = %config.dev_secret_path().display(),
                "auth.dev_keys = true with a real certificate (tls.cert_file): anyone who can read the dev secret can mint tokens this relay accepts"
            );
        }
        let admin = match config.listen.admin {
            Some(addr) => {
                let bind = |error| RelayError::Bind { what: "admin TCP", addr, error };
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
                let addr = listener.local_addr().map_err(bind)?;
                Some((listener, addr))
            }
            None => None,
        };
        let admin_addr = admin.as_ref().map(|(_, addr)| *addr);
        let tcp_tls = if config.tls.tcp_tls() { Some(Arc::new(SharedServerConfig::new(&cert)?)) } else { None };

        let stop = CancellationToken::new();
        let drain = CancellationToken::new();
        let hub = Arc::new(Hub::new(config.hub.shards, config.hub.room_idle_ttl_secs.saturating_mul(1000)));
        let (engine, records, call_history, session_store, receipt_store, notify_db) =
            start_engine(&config, hub.clone()).await?;
        let notify_store = match notify_db {
            NotifyDb::Embedded(db) => crate::notify::store::NotifyStore::open(db)
                .and_then(|store| crate::notify::Notifications::new(&config.notifications, store)),
            NotifyDb::Redis { client, prefix } => match engine.share_notifications() {
                Some(link) => {
                    let claim_after = config.notifications.webhook_claim_after_ms;
                    crate::notify::redis::RedisNotify::start(client, &prefix, link.node.clone(), claim_after)
                        .await
                        .map(|backend| crate::notify::Notifications::region(&config.notifications, backend, link))
                }
                None => Err(crate::store::StoreError::Backend("the engine shares no notifications channel".into())),
            },
        }
        .map_err(|error| RelayError::Store { path: config.history_path(), error })?;
        let receipts = crate::receipts::Receipts::new(
            &config.receipts,
            config.limits.max_frame_bytes,
            receipt_store,
            engine.clone(),
            hub.clone(),
        );
        let tap = Arc::downgrade(&receipts);
        hub.set_tap(Arc::new(move |key, position| {
            if let Some(receipts) = tap.upgrade() {
                receipts.delivered_message(key, position);
            }
        }));
        let awareness = Arc::new(Awareness::new(&config.presence, records));
        let controls = Arc::new(Controls::default());
        // Other nodes' actions; the revocations in force are already queued: apply them now,
        // before the first connection.
        let mut remote_controls = engine.remote_controls();
        if let Some(remote) = &mut remote_controls {
            while let Ok(control) = remote.try_recv() {
                // Only revocations are queued before the start; events need subscribers anyway.
                controls.apply(&control, unix_ms() / 1000);
            }
        }
        let calls = Arc::new(Calls::new(config.media.clone(), hub.clone()));
        let (call_records, call_records_rx) = tokio::sync::mpsc::unbounded_channel();
        let call_route: Arc<dyn crate::call::CallRoute> = Arc::new(crate::call::LocalRoute::default());
        let mut call_service =
            crate::call::CallService::new(&config.calls, call_route.clone()).with_history(call_records.clone());
        // With a shared engine, 1:1 calls span the region (crate::call::region).
        let call_link = engine.share_calls();
        if let Some(link) = &call_link {
            call_service = call_service.with_region(link.node.clone(), link.out.clone());
        }
        let call_service = Arc::new(call_service);
        let media_rooms =
            crate::call::group_service::RelayMediaRooms { calls: calls.clone(), controls: controls.clone() };
        let group_calls = Arc::new(
            crate::call::GroupService::new(&config.calls, call_route, Arc::new(media_rooms)).with_history(call_records),
        );
        let dedupe_window_ms = config.store.dedupe_window_secs.saturating_mul(1000);
        let events = crate::events::Events::new(&config.events, dedupe_window_ms, hub.clone(), engine.clone());
        let mut collab = crate::collab::CollabService::new(&config.sessions, session_store);
        // With a shared engine, sessions span the region (crate::collab::region).
        if let Some(link) = engine.share_sessions() {
            collab = collab.with_region(link);
        }
        let collab = Arc::new(collab);
        let session_ctx = Arc::new(SessionContext {
            events: events.clone(),
            hub: hub.clone(),
            engine: engine.clone(),
            verifier,
            limits: config.limits.clone(),
            users: Arc::new(UserConnections::default()),
            awareness: awareness.clone(),
            presence_rate: (config.presence.rate, config.presence.burst),
            test_datagram_loss: config.presence.test_datagram_loss,
            controls: controls.clone(),
            calls: calls.clone(),
            ice,
            call_service: call_service.clone(),
            group_calls: group_calls.clone(),
            call_rate: (config.calls.rate, config.calls.burst),
            call_history: call_history.clone(),
            collab: collab.clone(),
            session_rate: (config.sessions.rate, config.sessions.burst),
            hooks: Arc::new(crate::hooks::Hooks::new(&config.hooks)),
            receipts: receipts.clone(),
            notify: notify_store.clone(),
        });
        let conn_ctx = Arc::new(ConnectionContext::new(session_ctx, drain.clone(), config.shutdown.reconnect_after_ms));
        let services = TaskTracker::new();
        let connections = TaskTracker::new();
        let node = Arc::new(crate::admin::Node {
            name: engine.node_name(),
            started_at: unix_ms(),
            controls: controls.clone(),
            awareness: awareness.clone(),
        });
        let http = Arc::new(HttpState {
            websocket: Arc::new(WebSocketTransport::new(conn_ctx.clone(), config.websocket.clone())),
            metrics,
            ready: false.into(),
            cert: RwLock::new(cert_info(&cert, next_cert.as_ref())),
            webtransport_port: udp_addr.port(),
            tasks: connections.clone(),
            stop: stop.clone(),
            awareness: awareness.clone(),
            engine: engine.clone(),
            api_key_sha256: config.api.key.as_deref().map(|key| tls::sha256(key.as_bytes())),
            controls: controls.clone(),
            call_history: call_history.clone(),
            notify: notify_store.clone(),
            dev_tokens: dev_secret.as_deref().filter(|_| cert.dev).map(|secret| {
                DevTokens::new(Signer::dev(secret), config.auth.issuer.clone(), config.auth.audience.clone())
            }),
            node: node.clone(),
        });

        let udp_admission = crate::admission::Admission::new(&config.connections);
        // Fade probes need the heartbeat answer's controller (`transport::answer`).
        let fades = (config.quic.answer_heartbeats && config.quic.probe_fades)
            .then(|| Arc::new(transport::answer::FadeProbes::default()));
        // A service, not a connection: the drain waits for connections only.
        if let Some(fades) = &fades {
            services.spawn(fades.clone().run(stop.clone()));
        }
        services.spawn(transport::quic::serve(
            endpoint.clone(),
            conn_ctx,
            udp_admission,
            fades,
            connections.clone(),
            stop.clone(),
        ));
        let http_servers = TaskTracker::new();
        let http_stop = CancellationToken::new();
        let public = if admin.is_some() { Routes::Public } else { Routes::All };
        http_servers.spawn(crate::http::serve(
            tcp,
            crate::http::router(http.clone(), public),
            tcp_tls.clone(),
            Some(crate::admission::Admission::new(&config.connections)),
            http_stop.clone(),
        ));
        if let Some((listener, _)) = admin {
            let router = crate::http::router(http.clone(), Routes::Admin);
            // The admin listener is the operator's: no per-IP limits.
            http_servers.spawn(crate::http::serve(listener, router, None, None, http_stop.clone()));
        }
        let tick = PRESENCE_TICK.min(Duration::from_millis(config.presence.refresh_ms));
        services.spawn(presence_ticks(awareness.clone(), tick, stop.clone()));
        if let Some(batcher) = events.batcher() {
            services.spawn(crate::events::batch::run(batcher, stop.clone()));
        }
        services.spawn(awareness.clone().run_batches(stop.clone()));
        services.spawn(media_ticks(calls, stop.clone()));
        services.spawn(call_service.clone().run_timers(unix_ms, stop.clone()));
        services.spawn(group_calls.run_timers(unix_ms, stop.clone()));
        services.spawn(crate::call::service::write_history(call_history, call_records_rx, unix_ms, stop.clone()));
        if let Some(link) = call_link {
            services.spawn(call_service.clone().run_region(link.inbound, unix_ms, stop.clone()));
        }
        services.spawn(collab.run(unix_ms, stop.clone()));
        services.spawn(receipts.run(unix_ms, stop.clone()));
        services.spawn(notify_store.clone().run(unix_ms, stop.clone()));
        services.spawn(sweep_rooms(hub.clone(), engine.clone(), stop.clone()));
        services.spawn(report_node(node, engine.clone(), stop.clone()));
        if let Some(link) = engine.share_presence() {
            awareness.share(link.local.clone());
            let every = Duration::from_millis(config.presence.refresh_ms);
            services.spawn(share_presence(awareness.clone(), link, every, stop.clone()));
        }
        if let Some(remote) = remote_controls {
            services.spawn(apply_remote_controls(remote, controls, events, stop.clone()));
        }
        let reloader = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert_file), Some(key_file)) => {
                let reloader = Arc::new(CertReloader {
                    cert_file: cert_file.clone(),
                    key_file: key_file.clone(),
                    loaded: Mutex::new(read_pair(cert_file, key_file)),
                    endpoint: endpoint.clone(),
                    token_key: token_key.clone(),
                    limits: config.limits.clone(),
                    quic: config.quic.clone(),
                    http: http.clone(),
                    tcp_tls: tcp_tls.clone(),
                });
                let every = Duration::from_millis(config.tls.reload_interval_ms);
                // Registered here, not in the task: a SIGHUP right after `start` returns must find
                // the handler (the default action ends the process).
                let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
                    Ok(hangup) => Some(hangup),
                    Err(err) => {
                        tracing::warn!(%err, "no SIGHUP handler; certificates reload only by polling");
                        None
                    }
                };
                services.spawn(reload_certs(reloader.clone(), hangup, every, stop.clone()));
                Some(reloader)
            }
            _ => None,
        };
        if cert.dev {
            let renewal = DevCertRenewal {
                config: config.clone(),
                endpoint: endpoint.clone(),
                token_key,
                http: http.clone(),
                tcp_tls: tcp_tls.clone(),
            };
            services.spawn(renew_dev_cert(renewal, stop.clone()));
        }
        http.ready.store(true, Ordering::Relaxed);
        tracing::info!(%udp_addr, %tcp_addr, ?admin_addr, tcp_tls = tcp_tls.is_some(), "relay serving");
        Ok(Relay {
            udp_addr,
            tcp_addr,
            admin_addr,
            tcp_tls,
            reloader,
            http_servers,
            http_stop,
            config,
            endpoint,
            http,
            engine,
            hub,
            signer,
            services,
            connections,
            stop,
            drain,
        })
    }

    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }

    pub fn tcp_addr(&self) -> SocketAddr {
        self.tcp_addr
    }

    /// Where calls are recorded (the store `store.engine` names), and the server API reads them.
    pub fn call_history(&self) -> Arc<dyn CallHistory> {
        self.http.call_history.clone()
    }

    /// The admin listener (`listen.admin`: metrics and the server API), when configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Whether the TCP listener speaks TLS (`tls.tcp`): its URLs are `https://` and `wss://`
    /// rather than `http://` and `ws://`.
    pub fn tcp_tls(&self) -> bool {
        self.tcp_tls.is_some()
    }

    /// The scheme of the TCP listener's pages and API: `https` or `http`.
    pub fn http_scheme(&self) -> &'static str {
        if self.tcp_tls() { "https" } else { "http" }
    }

    /// The scheme of the WebSocket endpoint: `wss` or `ws`.
    pub fn websocket_scheme(&self) -> &'static str {
        if self.tcp_tls() { "wss" } else { "ws" }
    }

    /// Loads `tls.cert_file` and `tls.key_file` again, as SIGHUP does: if they changed, new
    /// connections (QUIC and TLS over TCP) get the new certificate, open ones keep theirs.
    /// Returns whether a new certificate is served; an error leaves the current one in place.
    pub fn reload_tls(&self) -> Result<bool, RelayError> {
        match &self.reloader {
            Some(reloader) => reloader.reload(),
            None => Ok(false),
        }
    }

    pub fn cert(&self) -> CertInfo {
        self.http.cert.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Signs tokens with the dev key, when dev keys are enabled.
    pub fn dev_signer(&self) -> Option<&Signer> {
        self.signer.as_ref()
    }

    /// What to print on start: where to connect and how to get a token. `command` runs this
    /// binary against this relay's configuration (e.g. `/usr/bin/edgerelay --data-dir /srv/er`):
    /// the token command is printed with it, so it finds the same dev secret. Links name
    /// `localhost` when a listener is bound to a wildcard address: browsers treat
    /// `http://localhost` as a secure context (WebTransport allowed), not `http://0.0.0.0`. The
    /// banner ends with an empty line.
    pub fn banner(&self, command: &str) -> String {
        let cert = self.cert();
        let udp = link_host(self.udp_addr);
        let tcp = link_host(self.tcp_addr);
        let stacks = |addr: SocketAddr| match addr {
            SocketAddr::V6(v6) if v6.ip().is_unspecified() => "all addresses, IPv6 and IPv4",
            addr if addr.ip().is_unspecified() => "all IPv4 addresses",
            _ => "this address only",
        };
        let mut text = format!(
            "edgerelay {version} serving on UDP {udp_bound} ({udp_stack}) and TCP {tcp_bound} ({tcp_stack})\n  \
             QUIC (raw, ALPN edgerelay/1)   udp://{udp}\n  \
             WebTransport (ALPN h3)         https://{udp}{wt_path}\n  \
             WebSocket                      {ws}://{tcp}/v1/ws\n  \
             demo page (browser chat)       {http}://{tcp}/\n  \
             call page (browser video)      {http}://{tcp}/call/\n  \
             {health:<31}{http}://{tcp}/healthz  /readyz{metrics_path}\n  \
             certificate sha256 (hex)       {hex}\n  \
             certificate sha256 (base64)    {b64}\n  \
             certificate                    {kind}, valid until {exp}\n",
            version = env!("CARGO_PKG_VERSION"),
            ws = self.websocket_scheme(),
            // With an admin listener, /metrics (and the server API) are only there.
            health = if self.admin_addr().is_some() { "health, readiness" } else { "health, readiness, metrics" },
            metrics_path = if self.admin_addr().is_some() { "" } else { "  /metrics" },
            http = self.http_scheme(),
            udp_bound = self.udp_addr,
            udp_stack = stacks(self.udp_addr),
            tcp_bound = self.tcp_addr,
            tcp_stack = stacks(self.tcp_addr),
            wt_path = transport::webtransport::PATH,
            hex = cert.sha256_hex,
            b64 = cert.sha256_base64,
            kind = if cert.dev { "self-signed dev (ECDSA P-256)" } else { "from tls.cert_file" },
            exp = tls::rfc3339_utc(UNIX_EPOCH + Duration::from_secs(cert.not_after)),
        );
        if let Some(admin) = self.admin_addr() {
            text.push_str(&format!(
                "  metrics, server API (admin)    http://{}/metrics  /v1/api/*\n",
                link_host(admin)
            ));
        }
        // Browsers allow WebTransport only in a secure context: https pages, or http pages
        // from localhost / 127.0.0.1 / [::1]. Anywhere else the page's client falls back to
        // WebSocket, and browsers do not say why.
        let page_is_secure = self.tcp_addr.ip().is_unspecified() || self.tcp_addr.ip().is_loopback();
        let note = if page_is_secure {
            "the demo page above is a secure context (localhost) and uses WebTransport;\n                                 \
             a page served over http:// from any other origin (this host's LAN\n                                 \
             address, 0.0.0.0) is not a secure context: it uses the WebSocket fallback"
        } else {
            "the demo page above is served over http:// from a non-localhost address,\n                                 \
             which is not a secure context: it uses the WebSocket fallback (for\n                                 \
             WebTransport open it through http://localhost, e.g. an SSH tunnel)"
        };
        text.push_str(&format!("  browsers                       {note}\n"));
        if self.signer.is_some() {
            text.push_str(&format!(
                "  mint a dev token:              {command} token --sub alice --tenant acme --room 'chat:*' --ttl 1h\n"
            ));
        } else {
            text.push_str(&format!(
                "  tokens                         dev keys are off: sign with a key of [[auth.keys]] ({command} token --kid <kid> ...)\n"
            ));
        }
        text.push('\n');
        text
    }

    /// Drains and stops: see the module docs. Returns once everything has stopped, at most
    /// `shutdown.drain_timeout_ms` + [`SHUTDOWN_MARGIN`] after it was called.
    pub async fn shutdown(self) {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(self.config.shutdown.drain_timeout_ms);
        let stage = |what: &str| tracing::debug!(ms = started.elapsed().as_millis() as u64, "shutdown: {what}");
        let end = deadline + SHUTDOWN_MARGIN;
        self.http.ready.store(false, Ordering::Relaxed);
        self.drain.cancel();
        self.connections.close();
        if tokio::time::timeout_at(deadline.into(), self.connections.wait()).await.is_err() {
            tracing::warn!(open = self.connections.len(), "drain deadline passed; closing the rest");
        }
        stage("drained");
        // Hard: every connection task stops flushing (see `transport::flush_wait`), and every QUIC
        // connection is closed with `going_away` at once.
        self.stop.cancel();
        let going_away = crate::proto::codes::CloseReason::Error(crate::proto::ErrorCode::GOING_AWAY);
        self.endpoint.close(going_away.quic_code().into(), b"relay stopped");
        let _ = tokio::time::timeout_at(end.into(), self.connections.wait()).await;
        stage("connections closed");
        self.services.close();
        let _ = tokio::time::timeout_at(end.into(), self.services.wait()).await;
        stage("services stopped");
        // Connections are gone: finish what the store accepted, then stop its writer.
        self.engine.shutdown(end.saturating_duration_since(Instant::now())).await;
        self.hub.finish_fanout(end.saturating_duration_since(Instant::now())).await;
        stage("store closed");
        let _ = tokio::time::timeout_at(end.into(), self.endpoint.wait_idle()).await;
        stage("QUIC endpoint idle");
        // Last, so that `/readyz` answers 503 for as long as the process drains.
        self.http_stop.cancel();
        self.http_servers.close();
        let _ = tokio::time::timeout_at(end.into(), self.http_servers.wait()).await;
        stage("HTTP listeners stopped");
    }
}

/// `addr` as a browser or client should be pointed at it: `localhost` for a wildcard address
/// (the listener takes every local address, and `localhost` is a secure context), else the
/// address itself.
fn link_host(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() { format!("localhost:{}", addr.port()) } else { addr.to_string() }
}

/// Binds a UDP socket (`stream` false) or a listening TCP socket for `addr`. An IPv6 wildcard
/// (`[::]`) is dual-stack, `IPV6_V6ONLY` off, so IPv4 clients connect to it too; on a host
/// without IPv6 it falls back to `0.0.0.0` on the same port and logs so.
fn bind_listener(addr: SocketAddr, stream: bool) -> Result<socket2::Socket, RelayError> {
    use socket2::{Domain, Socket, Type};
    let what = if stream { "TCP" } else { "UDP" };
    let bind = |addr: SocketAddr| -> std::io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), if stream { Type::STREAM } else { Type::DGRAM }, None)?;
        if stream {
            // As std and tokio do: a restarted relay can bind while old connections linger.
            socket.set_reuse_address(true)?;
        }
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            socket.set_only_v6(false)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        if stream {
            socket.listen(1024)?;
        }
        Ok(socket)
    };
    match bind(addr) {
        Ok(socket) => Ok(socket),
        // The port being taken or forbidden is not about IPv6: report it as it is.
        Err(error)
            if addr.is_ipv6()
                && addr.ip().is_unspecified()
                && !matches!(error.kind(), std::io::ErrorKind::AddrInUse | std::io::ErrorKind::PermissionDenied) =>
        {
            let v4 = SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, addr.port()));
            tracing::info!(%error, "IPv6 is unavailable on this host: {what} listens on {v4} (IPv4 only) instead of {addr}");
            bind(v4).map_err(|error| RelayError::Bind { what, addr: v4, error })
        }
        Err(error) => Err(RelayError::Bind { what, addr, error }),
    }
}

/// The dev token secret (HS256, 32 random bytes on first use) at `config.dev_secret_path()`;
/// `serve` verifies with it and `edgerelay token` signs with it, so both must read it alike.
pub fn load_or_create_dev_secret(config: &Config) -> Result<Vec<u8>, tls::TlsError> {
    tls::load_or_create_secret(&config.dev_secret_path(), 32)
}

/// The certificate to serve, and a dev certificate's announced successor.
fn load_cert(config: &Config) -> Result<(CertBundle, Option<CertBundle>), RelayError> {
    Ok(match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(cert), Some(key)) => (tls::load_cert_files(cert, key)?, None),
        _ => {
            let certs = tls::load_or_create_dev_certs(&config.data_dir, SystemTime::now())?;
            (certs.current, certs.next)
        }
    })
}

fn cert_info(cert: &CertBundle, next: Option<&CertBundle>) -> CertInfo {
    // A real certificate is verified by browsers the usual way: no hash to pin.
    let hashes =
        if cert.dev { std::iter::once(cert).chain(next).map(CertBundle::sha256_base64).collect() } else { Vec::new() };
    CertInfo {
        sha256_hex: cert.sha256_hex(),
        sha256_base64: cert.sha256_base64(),
        hashes,
        not_after: cert.not_after.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        dev: cert.dev,
    }
}

fn quic_server_config(
    cert: &CertBundle,
    token_key: &[u8],
    limits: &LimitsConfig,
    quic: &QuicConfig,
) -> Result<quinn::ServerConfig, RelayError> {
    let mut crypto = tls::server_config(cert, &[transport::ALPN_RAW, transport::webtransport::ALPN])?;
    // 0-RTT resumption (docs/decisions.md, "0-RTT resumption"): tickets name sessions kept in
    // this process (rustls takes early data only with stateful resumption), each usable once,
    // so a replayed first flight finds its ticket gone and its early data refused. Two tickets
    // per connection (rustls's default), at most `quic.resumption_sessions` (about 4 KiB each,
    // the oldest dropped first); a restarted relay has none, and its clients do a full handshake.
    crypto.max_early_data_size = u32::MAX;
    crypto.session_storage = if quic.resumption_sessions == 0 {
        Arc::new(rustls::server::NoServerSessionStorage {})
    } else {
        rustls::server::ServerSessionMemoryCache::new(quic.resumption_sessions)
    };
    let crypto =
        quinn::crypto::rustls::QuicServerConfig::try_from(crypto).map_err(|e| RelayError::Quic(e.to_string()))?;
    let token_key = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, &[]).extract(token_key);
    let mut server = quinn::ServerConfig::new(Arc::new(crypto), Arc::new(token_key));
    let mut transport = quinn::TransportConfig::default();
    // The same liveness rule as WebSocket: QUIC keep-alives every `ping_interval_ms` keep a
    // quiet connection (and the client's NAT mapping) alive, and one silent for
    // `idle_timeout_ms` is closed. QUIC uses the smaller of both sides' idle timeouts; the Rust
    // client offers 45 s too, and keeps alive a little more often (14 s): any packet received
    // restarts a side's keep-alive timer, so then only the client's fires.
    let idle = Duration::from_millis(u64::from(limits.idle_timeout_ms));
    transport
        .max_idle_timeout(Some(idle.try_into().map_err(|_| RelayError::Quic("idle timeout out of range".into()))?));
    transport.keep_alive_interval(Some(Duration::from_millis(u64::from(limits.ping_interval_ms))));
    // Few streams at first: quinn keeps state for every stream a peer may open, so a limit
    // of 132 cost each connection about 10 KiB; the transport raises it as rooms are joined.
    transport.max_concurrent_bidi_streams(transport::quic::StreamCredit::initial(limits).into());
    // HTTP/3 (WebTransport) peers open a control stream and two QPACK streams; protocol v1 uses
    // no unidirectional streams, so any other is stopped as soon as it arrives.
    transport.max_concurrent_uni_streams(8u8.into());
    tune_transport(&mut transport, quic);
    server.transport_config(Arc::new(transport));
    Ok(server)
}

/// The `[quic]` section's trade-offs between memory per connection and CPU per packet
/// (docs/decisions.md, "QUIC: cost per delivery and per connection").
fn tune_transport(transport: &mut quinn::TransportConfig, quic: &QuicConfig) {
    transport.mtu_discovery_config(Some(transport::quic::mtu_discovery()));
    transport.enable_segmentation_offload(quic.segmentation_offload);
    // quinn's Cubic, answering a client's heartbeat even when the window is full (a fade's end).
    if quic.answer_heartbeats {
        transport.congestion_controller_factory(Arc::new(transport::answer::AnsweringCubic::default()));
        transport.send_window(transport::answer::SEND_WINDOW);
    }
    if let Some(threshold) = quic.ack_eliciting_threshold {
        let mut ack = quinn::AckFrequencyConfig::default();
        ack.ack_eliciting_threshold(threshold.into());
        transport.ack_frequency_config(Some(ack));
    }
}

fn enlarge_udp_buffers(socket: &std::net::UdpSocket) {
    match try_enlarge_udp_buffers(socket) {
        Ok((recv, send)) => {
            tracing::debug!(recv, send, "UDP socket buffers");
            for (sysctl, granted) in capped_udp_buffers(recv, send) {
                tracing::warn!(
                    granted,
                    asked = UDP_BUFFER_BYTES,
                    "UDP socket buffer capped by the kernel: raise {sysctl} to at least {UDP_BUFFER_BYTES} \
                     (docs/operations.md, \"UDP socket buffers\"); bursts may be dropped"
                );
            }
        }
        Err(err) => tracing::warn!(%err, "could not enlarge the UDP socket buffers"),
    }
}

/// The kernel limits that cut the buffers below what was asked: (sysctl, size granted). Linux
/// reports twice the size it accepted (its bookkeeping share), so a granted size below the
/// request means the request was capped.
fn capped_udp_buffers(recv: usize, send: usize) -> Vec<(&'static str, usize)> {
    [("net.core.rmem_max", recv), ("net.core.wmem_max", send)]
        .into_iter()
        .filter(|&(_, granted)| granted < UDP_BUFFER_BYTES)
        .collect()
}

/// Drives presence time and saves changed user records (a blocking store commit, on the
/// blocking pool); saves them a last time when the relay stops.
/// Writes this node's report for the region's admin view every [`crate::admin::REPORT_MS`]
/// (nothing is written for a single node).
async fn report_node(node: Arc<crate::admin::Node>, engine: Arc<dyn Engine>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(crate::admin::REPORT_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if let Err(err) = engine.report_node(&node.report(unix_ms())).await {
                    tracing::debug!(%err, "node report not written");
                }
            }
        }
    }
}

async fn presence_ticks(awareness: Arc<Awareness>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => awareness.tick(unix_ms()),
        }
        let saving = awareness.clone();
        let _ = tokio::task::spawn_blocking(move || saving.flush()).await;
    }
    awareness.depart_lingering(unix_ms());
    let _ = tokio::task::spawn_blocking(move || awareness.flush()).await;
}

/// The calls' periodic decisions (layer budgets, keyframe requests, dynacast, speakers).
async fn media_ticks(calls: Arc<Calls>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(crate::media::calls::TICK_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => calls.tick(unix_ms()),
        }
    }
}

/// Presence with other nodes: this node's rooms again every `every` (so its entries do not
/// lapse), and the others' changes into the rooms' views.
async fn share_presence(awareness: Arc<Awareness>, mut link: PresenceLink, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                let _ = link.local.send(LocalPresence::All(awareness.local_rooms()));
            }
            others = link.others.recv() => match others {
                Some(others) => awareness.apply_remote(others, unix_ms()),
                None => return,
            },
        }
    }
}

/// Applies the actions other nodes broadcast.
async fn apply_remote_controls(
    mut remote: tokio::sync::mpsc::UnboundedReceiver<Control>,
    controls: Arc<Controls>,
    events: Arc<crate::events::Events>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            control = remote.recv() => match control {
                Some(Control::Event { tenant, event }) => events.apply_remote(&tenant, &event),
                Some(control @ Control::UserEvent { .. }) => {
                    controls.apply(&control, unix_ms() / 1000);
                }
                Some(control) => {
                    let closed = controls.apply(&control, unix_ms() / 1000);
                    tracing::info!(?control, closed, "applied another node's action");
                }
                None => return,
            },
        }
    }
}

async fn sweep_rooms(hub: Arc<Hub>, engine: Arc<dyn Engine>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                hub.sweep(unix_ms());
                engine.maintain(unix_ms());
            }
        }
    }
}

/// Where notifications live: this node's embedded store (or memory), or the region's Redis.
enum NotifyDb {
    Embedded(SideDb),
    Redis { client: fred::clients::Client, prefix: String },
}

/// The history engine, presence's user records, the call history and the collaborative
/// sessions, the receipts' store and where notifications live.
type Stores =
    (Arc<dyn Engine>, Arc<dyn UserRecords>, Arc<dyn CallHistory>, Arc<SessionStore>, Arc<dyn ReceiptStore>, NotifyDb);

/// Opens the configured history store and starts the engine.
async fn start_engine(config: &Config, hub: Arc<Hub>) -> Result<Stores, RelayError> {
    let st = &config.store;
    let retention = Retention { max_messages: st.max_messages, max_age_ms: st.max_age_secs.saturating_mul(1000) };
    let open_embedded = || {
        let path = config.history_path();
        let (history, corrupted) =
            EmbeddedHistory::open(&path).map_err(|error| RelayError::Store { path: path.clone(), error })?;
        if corrupted {
            tracing::error!(path = %path.display(), "history was corrupted and is reset; rooms start new epochs");
        }
        Ok::<_, RelayError>(Arc::new(history))
    };
    let calls_retention = config.calls.history.retention();
    let store_err = |error| RelayError::Store { path: config.history_path(), error };
    let keep = u64::from(config.sessions.keep_patches);
    type Opened = (
        Arc<dyn History>,
        Arc<dyn UserRecords>,
        Arc<dyn CallHistory>,
        Arc<SessionStore>,
        Arc<dyn ReceiptStore>,
        SideDb,
    );
    let embedded_receipts = |db: SideDb| -> Result<Arc<dyn ReceiptStore>, RelayError> {
        let interval = Duration::from_millis(config.receipts.commit_interval_ms);
        Ok(Arc::new(EmbeddedReceipts::open(db, interval).map_err(store_err)?))
    };
    let (history, records, calls, sessions, receipts, notify): Opened = match st.engine {
        StoreEngine::Memory => (
            Arc::new(MemoryHistory::new()),
            Arc::new(MemoryRecords::default()),
            Arc::new(MemoryCallHistory::new(calls_retention)),
            Arc::new(SessionStore::memory(keep).map_err(store_err)?),
            embedded_receipts(SideDb::memory().map_err(store_err)?)?,
            SideDb::memory().map_err(store_err)?,
        ),
        StoreEngine::Embedded => {
            let history = open_embedded()?;
            let calls = EmbeddedCallHistory::new(history.clone(), calls_retention).map_err(store_err)?;
            let sessions = SessionStore::embedded(history.clone(), keep).map_err(store_err)?;
            let receipts = embedded_receipts(SideDb::File(history.clone()))?;
            let notify = SideDb::File(history.clone());
            (
                history.clone(),
                Arc::new(StoredRecords::new(history)),
                Arc::new(calls),
                Arc::new(sessions),
                receipts,
                notify,
            )
        }
        StoreEngine::Redis => {
            let r = &config.redis;
            let redis_config = RedisEngineConfig {
                url: r.url.clone(),
                prefix: r.prefix.clone(),
                retention,
                dedupe_window_ms: st.dedupe_window_secs.saturating_mul(1000),
                max_batch: st.commit_max_batch,
                command_timeout: Duration::from_millis(r.command_timeout_ms),
                resync_every: Duration::from_millis(r.resync_interval_ms),
                probe_every: Duration::from_millis(r.probe_interval_ms),
                probe_timeout: Duration::from_millis(r.probe_timeout_ms),
                presence_ttl: Duration::from_millis(PRESENCE_TTL_REFRESHES * config.presence.refresh_ms),
            };
            let engine = RedisEngine::connect(redis_config, hub)
                .await
                .map_err(|error| RelayError::Redis { url: crate::engine::redacted(&r.url), error })?;
            // Users' last-seen records stay in this node's embedded store; calls, read marks
            // (docs/receipts.md), notifications (docs/notifications.md) and sessions (kept in
            // Redis by crate::collab::redis_store; the embedded session tables are unused) are
            // shared.
            let local = open_embedded()?;
            let sessions = Arc::new(SessionStore::embedded(local.clone(), keep).map_err(store_err)?);
            let receipts: Arc<dyn ReceiptStore> = Arc::new(RedisReceipts::start(engine.client(), &r.prefix));
            let notify = NotifyDb::Redis { client: engine.client(), prefix: r.prefix.clone() };
            let records = Arc::new(StoredRecords::new(local));
            let calls = Arc::new(RedisCallHistory::new(engine.client(), &r.prefix, calls_retention));
            return Ok((Arc::new(engine), records, calls, sessions, receipts, notify));
        }
    };
    let engine_config = LocalEngineConfig {
        retention,
        dedupe_window_ms: st.dedupe_window_secs.saturating_mul(1000),
        max_batch: st.commit_max_batch,
        linger: Duration::from_micros(st.commit_linger_us),
        // Pacing shares fsyncs; the memory engine has none to share, only acks to delay.
        min_commit_interval: match st.engine {
            StoreEngine::Embedded => Duration::from_micros(st.commit_interval_us),
            StoreEngine::Memory | StoreEngine::Redis => Duration::ZERO,
        },
        idle_ttl_ms: config.hub.room_idle_ttl_secs.saturating_mul(1000),
        shards: config.hub.shards,
        deliver_before_commit: st.deliver_before_commit,
        commit_delay: test_commit_delay(),
    };
    let renewed = history.begin_run(st.deliver_before_commit).map_err(store_err)?;
    if renewed > 0 {
        tracing::warn!(
            rooms = renewed,
            "the previous run delivered before commit and did not stop cleanly: every room starts a new epoch"
        );
    }
    let engine =
        LocalEngine::start(engine_config, history, hub).map_err(|e| store_err(crate::store::StoreError::backend(e)))?;
    Ok((Arc::new(engine), records, calls, sessions, receipts, NotifyDb::Embedded(notify)))
}

/// `EDGERELAY_TEST_COMMIT_DELAY_MS`: a pause before every commit, for tests that kill the relay
/// between an early delivery and its commit. Not a config key; zero when unset.
fn test_commit_delay() -> Duration {
    let ms = std::env::var("EDGERELAY_TEST_COMMIT_DELAY_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    Duration::from_millis(ms)
}

/// What the dev certificate's rotation swaps the certificate in.
struct DevCertRenewal {
    config: Config,
    endpoint: quinn::Endpoint,
    token_key: Vec<u8>,
    http: Arc<HttpState>,
    tcp_tls: Option<Arc<SharedServerConfig>>,
}

/// Rotates the dev certificate: announces its successor's hash, then swaps the successor into
/// the live endpoint and the TCP listener's TLS (see `tls.rs`).
async fn renew_dev_cert(renewal: DevCertRenewal, stop: CancellationToken) {
    let DevCertRenewal { config, endpoint, token_key, http, tcp_tls } = renewal;
    let mut tick = tokio::time::interval(CERT_CHECK_EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let renewed = tls::load_or_create_dev_certs(&config.data_dir, SystemTime::now())
            .map_err(RelayError::from)
            .and_then(|certs| {
                let server_config = quic_server_config(&certs.current, &token_key, &config.limits, &config.quic)?;
                Ok((server_config, cert_info(&certs.current, certs.next.as_ref()), certs.current))
            });
        match renewed {
            Ok((server_config, info, bundle)) => {
                let mut current = http.cert.write().unwrap_or_else(|e| e.into_inner());
                if current.sha256_hex != info.sha256_hex {
                    if let Some(tcp_tls) = &tcp_tls
                        && let Err(err) = tcp_tls.replace(&bundle)
                    {
                        tracing::error!(%err, "dev certificate not switched on the TCP listener");
                    }
                    endpoint.set_server_config(Some(server_config));
                    tracing::info!(sha256 = %info.sha256_hex, "dev certificate switched");
                } else if current.hashes != info.hashes {
                    tracing::info!(hashes = ?info.hashes, "next dev certificate announced");
                }
                *current = info;
            }
            Err(err) => tracing::error!(%err, "dev certificate renewal failed"),
        }
    }
}

/// Reloads the configured certificate files into the live listeners.
struct CertReloader {
    cert_file: PathBuf,
    key_file: PathBuf,
    /// The files' contents last served (or found unusable), to tell a change.
    loaded: Mutex<Option<(Vec<u8>, Vec<u8>)>>,
    endpoint: quinn::Endpoint,
    token_key: Vec<u8>,
    limits: LimitsConfig,
    quic: QuicConfig,
    http: Arc<HttpState>,
    tcp_tls: Option<Arc<SharedServerConfig>>,
}

/// Both files' contents, if both can be read.
fn read_pair(cert: &std::path::Path, key: &std::path::Path) -> Option<(Vec<u8>, Vec<u8>)> {
    Some((std::fs::read(cert).ok()?, std::fs::read(key).ok()?))
}

impl CertReloader {
    /// Serves the files' certificate if they changed since the last load; whether it did.
    fn reload(&self) -> Result<bool, RelayError> {
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        let now = read_pair(&self.cert_file, &self.key_file);
        if now.is_some() && *loaded == now {
            return Ok(false);
        }
        let bundle = tls::load_cert_files(&self.cert_file, &self.key_file)?;
        let server_config = quic_server_config(&bundle, &self.token_key, &self.limits, &self.quic)?;
        if let Some(tcp_tls) = &self.tcp_tls {
            tcp_tls.replace(&bundle)?;
        }
        self.endpoint.set_server_config(Some(server_config));
        *self.http.cert.write().unwrap_or_else(|e| e.into_inner()) = cert_info(&bundle, None);
        *loaded = now;
        tracing::info!(sha256 = %bundle.sha256_hex(), "certificate reloaded");
        Ok(true)
    }
}

/// Reloads the certificate files on SIGHUP and when a check every `every` (unless zero) finds
/// them changed. A failed load is logged and the current certificate stays.
async fn reload_certs(
    reloader: Arc<CertReloader>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut tick = (!every.is_zero()).then(|| tokio::time::interval_at((Instant::now() + every).into(), every));
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(hangup) => hangup.recv().await,
                None => std::future::pending().await,
            }
        };
        let poll = async {
            match tick.as_mut() {
                Some(tick) => tick.tick().await,
                None => std::future::pending().await,
            }
        };
        let signalled = tokio::select! {
            _ = stop.cancelled() => return,
            _ = hup => true,
            _ = poll => false,
        };
        let reloader = reloader.clone();
        // File reads and key parsing, off the runtime's threads.
        let outcome = tokio::task::spawn_blocking(move || reloader.reload()).await;
        match outcome {
            Ok(Ok(false)) if signalled => tracing::info!("SIGHUP: certificate files unchanged"),
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::error!(%err, "certificate reload failed; the current certificate stays"),
            Err(err) => tracing::error!(%err, "certificate reload panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_buffers_below_the_request_name_the_sysctl_to_raise() {
        // Linux with net.core.rmem_max = wmem_max = 4 MiB reports 8 MiB each: nothing to say.
        assert!(capped_udp_buffers(2 * UDP_BUFFER_BYTES, 2 * UDP_BUFFER_BYTES).is_empty());
        // A stock kernel (208 KiB caps) reports 416 KiB.
        let stock = 2 * 212_992;
        assert_eq!(capped_udp_buffers(stock, 2 * UDP_BUFFER_BYTES), vec![("net.core.rmem_max", stock)]);
        assert_eq!(capped_udp_buffers(stock, stock), vec![("net.core.rmem_max", stock), ("net.core.wmem_max", stock)]);
    }
}
