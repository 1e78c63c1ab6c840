//! Relay configuration: defaults, then a TOML file, then `EDGERELAY_*` environment variables.
//!
//! Why one merged TOML table instead of three typed layers: the file and the environment are
//! overlaid as plain TOML values and deserialized once, so every type and unknown-key error comes
//! out of the same place and can name the dotted key (`limits.max_frame_bytes`) and where the bad
//! value came from (the file or a particular environment variable). Operators fix config by key
//! name; an error that says only "invalid type" wastes their time.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Prefix of the environment variables read by [`Config::load`].
pub const ENV_PREFIX: &str = "EDGERELAY_";
/// Environment variables with the prefix that belong to the CLI, not to the config tree.
/// `EDGERELAY_TEST_COMMIT_DELAY_MS` is read by the relay for its own crash tests (see
/// `engine::LocalEngineConfig::commit_delay`), not a config key.
const ENV_RESERVED: &[&str] = &["config", "log", "test_commit_delay_ms"];

/// Largest accepted `limits.max_frame_bytes` (16 MiB).
pub const MAX_FRAME_BYTES_LIMIT: u32 = 16 * 1024 * 1024;
/// Smallest accepted `limits.max_frame_bytes`.
pub const MIN_FRAME_BYTES: u32 = 1024;
/// Room kept in a frame for everything but the payload (headers, ids, room name).
pub const FRAME_OVERHEAD_BYTES: u32 = 1024;

/// The whole relay configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where dev certificates and the dev token secret live.
    pub data_dir: PathBuf,
    pub listen: ListenConfig,
    pub tls: TlsConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub shutdown: ShutdownConfig,
    pub hub: HubConfig,
    pub store: StoreConfig,
    pub redis: RedisConfig,
    pub api: ApiConfig,
    pub presence: PresenceConfig,
    pub media: MediaConfig,
    pub turn: TurnConfig,
    pub calls: CallsConfig,
    pub events: EventsConfig,
    pub sessions: SessionsConfig,
    pub hooks: HooksConfig,
    pub quic: QuicConfig,
    pub receipts: ReceiptsConfig,
    pub notifications: NotificationsConfig,
    pub websocket: WebSocketConfig,
    pub connections: ConnectionsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("edgerelay-data"),
            listen: ListenConfig::default(),
            tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            hub: HubConfig::default(),
            store: StoreConfig::default(),
            redis: RedisConfig::default(),
            api: ApiConfig::default(),
            presence: PresenceConfig::default(),
            media: MediaConfig::default(),
            turn: TurnConfig::default(),
            calls: CallsConfig::default(),
            events: EventsConfig::default(),
            sessions: SessionsConfig::default(),
            hooks: HooksConfig::default(),
            quic: QuicConfig::default(),
            receipts: ReceiptsConfig::default(),
            notifications: NotificationsConfig::default(),
            websocket: WebSocketConfig::default(),
            connections: ConnectionsConfig::default(),
        }
    }
}

/// Listening sockets. The default `[::]` is dual-stack: IPv6 with `IPV6_V6ONLY` off, so IPv4
/// clients connect too (and `localhost`, which may resolve to `::1` first, works); on a host
/// without IPv6 the relay falls back to `0.0.0.0` and logs it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenConfig {
    /// QUIC and WebTransport.
    pub udp: SocketAddr,
    /// WebSocket (and HTTP endpoints).
    pub tcp: SocketAddr,
    /// When set, `/metrics` and the server API (`/v1/api/*`) are served here (plain HTTP) and
    /// no longer on `tcp`; `/healthz` and `/readyz` are served on both.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
}

impl Default for ListenConfig {
    fn default() -> Self {
        let any = std::net::Ipv6Addr::UNSPECIFIED;
        ListenConfig { udp: SocketAddr::from((any, 4433)), tcp: SocketAddr::from((any, 8080)), admin: None }
    }
}

/// Server certificate. Both files or neither; neither means a self-signed dev certificate
/// kept in `data_dir`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// TLS on the TCP listener (`wss://`, `https://`) with the same certificate. Unset: on with
    /// `cert_file`, off with the dev certificate (browsers do not accept a self-signed
    /// certificate over TCP without a manual exception).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<bool>,
    /// How often `cert_file` and `key_file` are checked for a change (milliseconds); 0 checks
    /// only on SIGHUP. A changed pair is loaded for new connections; open ones keep theirs.
    pub reload_interval_ms: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig { cert_file: None, key_file: None, tcp: None, reload_interval_ms: 5000 }
    }
}

impl TlsConfig {
    /// Whether the TCP listener speaks TLS (see [`TlsConfig::tcp`]).
    pub fn tcp_tls(&self) -> bool {
        self.tcp.unwrap_or(self.cert_file.is_some())
    }
}

/// Token verification.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    /// Where the dev HS256 secret is kept; `None` means `<data_dir>/dev-token-secret`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev_secret_file: Option<PathBuf>,
    /// Accept HS256 tokens signed with the dev secret (kid `dev`). When the file and the
    /// environment leave it unset, [`Config::load`] makes it true with the self-signed dev
    /// certificate and false when `tls.cert_file` is set: production is the explicit choice.
    pub dev_keys: bool,
    /// `[[auth.keys]]`: verification keys, selected by the token header's `kid`.
    pub keys: Vec<KeyConfig>,
    /// If set, `iss` must equal it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// If set, `aud` must equal it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            leeway_secs: 30,
            dev_secret_file: None,
            dev_keys: true,
            keys: Vec::new(),
            issuer: None,
            audience: None,
        }
    }
}

/// A token algorithm. Each key is pinned to exactly one.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    HS256,
    ES256,
    RS256,
}

impl fmt::Display for KeyAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyAlg::HS256 => "HS256",
            KeyAlg::ES256 => "ES256",
            KeyAlg::RS256 => "RS256",
        })
    }
}

/// One `[[auth.keys]]` entry.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Matched against the token header's `kid`.
    pub kid: String,
    pub alg: KeyAlg,
    /// HS256 secret inline (UTF-8 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// HS256 secret in a file (contents, trailing whitespace removed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// ES256/RS256 public key, PEM (SubjectPublicKeyInfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_file: Option<PathBuf>,
    /// Optional ES256/RS256 private key, PKCS#8 PEM, so `edgerelay token --kid X` can sign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key_file: Option<PathBuf>,
}

// Hand-written so an inline secret never reaches logs.
impl fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("public_key_file", &self.public_key_file)
            .field("private_key_file", &self.private_key_file)
            .finish()
    }
}

impl KeyConfig {
    /// The dotted name used in error messages, e.g. `auth.keys[kid=main]`.
    pub fn config_key(&self) -> String {
        format!("auth.keys[kid={}]", self.kid)
    }
}

/// Per-connection and global limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_frame_bytes: u32,
    pub max_payload_bytes: u32,
    pub max_rooms_per_connection: u32,
    pub max_connections_per_user: u32,
    /// Publishes per second per connection.
    pub publish_rate: u32,
    pub publish_burst: u32,
    pub auth_timeout_ms: u64,
    pub outbox_bytes: usize,
    pub ping_interval_ms: u32,
    pub idle_timeout_ms: u32,
    /// Total connections on this relay.
    pub max_connections: u32,
    /// Largest datagram accepted from a client; larger ones are dropped (and counted), never
    /// fatal. Datagrams the relay sends are bounded by the path's `max_datagram_size()` instead.
    pub max_datagram_bytes: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_frame_bytes: 65_536,
            max_payload_bytes: 32_768,
            max_rooms_per_connection: 128,
            max_connections_per_user: 32,
            publish_rate: 100,
            publish_burst: 200,
            auth_timeout_ms: 5_000,
            outbox_bytes: 1_048_576,
            ping_interval_ms: 15_000,
            idle_timeout_ms: 45_000,
            max_connections: 100_000,
            max_datagram_bytes: 1_500,
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long connections get to drain before they are closed.
    pub drain_timeout_ms: u64,
    /// Reconnect hint sent to clients in `going_away`.
    pub reconnect_after_ms: u32,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { drain_timeout_ms: 10_000, reconnect_after_ms: 1000 }
    }
}

/// Presence and typing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A device with no activity for this long is idle; a user whose devices are all idle is
    /// shown as away.
    pub idle_after_ms: u64,
    /// A device's typing ends by itself this long after its last `typing` start.
    pub typing_ttl_ms: u64,
    /// How often members get each room's compact presence refresh (count + digest).
    pub refresh_ms: u64,
    /// A disconnected device stays in its rooms this long before its user is shown leaving, so
    /// a client that reconnects within it (a network blip, a reconnect storm) changes nothing
    /// others see. 0: leaves are shown at once. An explicit `leave` is never delayed.
    pub leave_grace_ms: u64,
    /// Presence and typing frames per second per connection (status, activity, typing, sync,
    /// privacy), and the burst above it; the excess is dropped.
    pub rate: u32,
    pub burst: u32,
    /// Test knob, 0 in production: the share of QUIC datagrams (both directions) the relay
    /// drops on purpose, to show that presence converges under loss.
    pub test_datagram_loss: f64,
    /// Presence changes of a room are collected this long and sent to its members as one
    /// `presence_batch` frame. 0: each change is sent at once as a `presence` frame.
    pub batch_ms: u64,
    /// Room name patterns (`*` matches any run of characters) of quiet rooms: their members
    /// are counted but not listed, and joins, leaves and status changes are not announced.
    pub quiet_rooms: Vec<String>,
    /// A room's batch interval grows with its size: one millisecond per member, at least
    /// `batch_ms` and at most this (at or below `batch_ms`: no growth). The periodic refresh
    /// sends pending batches anyway, so nothing waits longer than `refresh_ms`.
    pub max_batch_ms: u64,
    /// Rooms with more users than this are counted but not listed, as quiet rooms are, and
    /// listed again at three quarters of it. 0: no limit.
    pub list_max_members: u32,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            idle_after_ms: 300_000,
            typing_ttl_ms: 6_000,
            refresh_ms: 5_000,
            leave_grace_ms: 0,
            rate: 20,
            burst: 40,
            test_datagram_loss: 0.0,
            batch_ms: 50,
            quiet_rooms: Vec::new(),
            max_batch_ms: 250,
            list_max_members: 200,
        }
    }
}

/// Event broadcasting (docs/events.md): which topics are kept and replayable, which conflate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Topic patterns whose events are stored (as rooms `#<topic>`: history, positions, epochs,
    /// resume); events of other topics are ephemeral: delivered live, never stored.
    pub persistent: Vec<String>,
    /// Topic patterns where only the latest value matters: a subscriber that reads slowly gets
    /// the newest event of each such topic, not a backlog. Ephemeral topics only: a topic that
    /// `persistent` also matches is persistent (and the same pattern in both lists is refused).
    pub latest: Vec<String>,
    /// Subscriptions one connection (or one SSE stream) may hold.
    pub max_subscriptions: u32,
    /// Events held for a subscription while it replays history (`since`, `Last-Event-ID`);
    /// beyond it the connection is closed as a slow consumer.
    pub resume_buffer: usize,
    /// SSE: a comment line is sent after this long without an event, to keep proxies open.
    pub sse_heartbeat_ms: u64,
    /// Batching: a normal event may wait this long (ms) in a connection's queue so that it goes
    /// out in one write with what follows it; critical events never wait. 0 (default): off.
    pub batch_delay_ms: u64,
    /// Batching: a connection with this many bytes queued is written at once.
    pub batch_bytes: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            persistent: Vec::new(),
            latest: Vec::new(),
            max_subscriptions: 100,
            resume_buffer: 10_000,
            sse_heartbeat_ms: 15_000,
            batch_delay_ms: 0,
            batch_bytes: 16_384,
        }
    }
}

/// Read marks, unread counts and receipts (docs/receipts.md).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReceiptsConfig {
    /// A room's `receipts` update goes out at most this often (ms); the moves in between are
    /// merged into it. Unread updates for a user's other rooms go out at most this often too.
    pub interval_ms: u64,
    /// Rooms with at most this many members list each member's progress in `receipts`; bigger
    /// rooms get the counts and watermarks only.
    pub max_detailed_members: u32,
    /// Marks in one `read` action.
    pub max_marks: u32,
    /// Users named in one `publish_mentions`.
    pub max_mentions: u32,
    /// `receipts` frames per second per connection, and burst (`rate_limited` above).
    pub rate: u32,
    pub burst: u32,
    /// The receipts store's writes nobody waits for (the follows and marks that joins, cursors
    /// and a user's own publishes make) start a commit no sooner than this after the previous
    /// one (ms), sharing it; a `read` action's `ok` and `sync` never wait. 0: at once.
    pub commit_interval_ms: u64,
}

impl Default for ReceiptsConfig {
    fn default() -> Self {
        ReceiptsConfig {
            interval_ms: 500,
            max_detailed_members: 100,
            max_marks: 100,
            max_mentions: 50,
            rate: 20,
            burst: 40,
            commit_interval_ms: 500,
        }
    }
}

/// In-app notifications, preferences, push devices and the offline webhook
/// (docs/notifications.md).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsConfig {
    /// Notifications kept per user; the oldest are dropped beyond it.
    pub max_feed: u32,
    /// Push devices per user (`register_device`).
    pub max_devices: u32,
    /// Muted rooms per user.
    pub max_mutes: u32,
    /// `notifications` frames per second per connection, and burst (`rate_limited` above).
    pub rate: u32,
    pub burst: u32,
    /// Where notifications for users with no foreground connection are posted
    /// (`http://host[:port]/path`); none: no webhook.
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key of the webhook's `x-edgerelay-signature`; at least 16 bytes, required
    /// with `webhook_url`.
    pub webhook_secret: Option<String>,
    /// How long one webhook call may take before it counts as failed.
    pub webhook_timeout_ms: u64,
    /// Calls made to the webhook (a first one and the retries) before the delivery is moved to
    /// the dead letters.
    pub webhook_max_attempts: u32,
    /// The wait after the first failure; it doubles after each further one, up to
    /// `webhook_max_backoff_ms`.
    pub webhook_backoff_ms: u64,
    pub webhook_max_backoff_ms: u64,
    /// Webhook calls in flight at once.
    pub webhook_concurrency: u32,
    /// Dead letters kept (the oldest are dropped beyond it).
    pub max_dead_letters: u32,
    /// A Redis region: a delivery held by a node that has not shown it is alive for this long
    /// (it renews every third of it) is taken over by another node.
    pub webhook_claim_after_ms: u64,
    /// A Redis region: how long a node's word that one of a user's connections is in the
    /// foreground counts without a renewal (renewed every third of it).
    pub foreground_ttl_ms: u64,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        NotificationsConfig {
            max_feed: 500,
            max_devices: 10,
            max_mutes: 200,
            rate: 20,
            burst: 40,
            webhook_url: None,
            webhook_secret: None,
            webhook_timeout_ms: 5_000,
            webhook_max_attempts: 8,
            webhook_backoff_ms: 1_000,
            webhook_max_backoff_ms: 300_000,
            webhook_concurrency: 16,
            max_dead_letters: 10_000,
            webhook_claim_after_ms: 30_000,
            foreground_ttl_ms: 30_000,
        }
    }
}

// Hand-written so the secret never reaches logs.
impl fmt::Debug for NotificationsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NotificationsConfig")
            .field("max_feed", &self.max_feed)
            .field("max_devices", &self.max_devices)
            .field("webhook_url", &self.webhook_url)
            .field("webhook_secret", &self.webhook_secret.as_ref().map(|_| "<hidden>"))
            .field("webhook_max_attempts", &self.webhook_max_attempts)
            .finish_non_exhaustive()
    }
}

/// The media plane (SFU-lite, docs/media.md): limits per publisher and memory per subscriber.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Tracks one connection may publish at once.
    pub max_tracks_per_connection: u32,
    /// Largest media frame (header and payload), bytes; a bigger one resets its group stream.
    pub max_frame_bytes: u32,
    /// Highest bitrate a track's layer may announce, bits per second; a track may send this
    /// much per layer it announced, averaged over up to 2 s.
    pub max_bitrate: u32,
    /// Bytes of media queued per subscriber connection; beyond it groups are dropped (video
    /// layers first), never buffered.
    pub queue_bytes: usize,
    /// Bytes of the latest group kept per track layer for instant join.
    pub cache_bytes: usize,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            max_tracks_per_connection: 4,
            max_frame_bytes: 512 * 1024,
            max_bitrate: 8_000_000,
            queue_bytes: 4 * 1024 * 1024,
            cache_bytes: 2 * 1024 * 1024,
        }
    }
}

/// QUIC transport tuning (docs/performance.md, "QUIC: cost per delivery and per connection"):
/// what the relay's quinn endpoint trades between memory per connection and CPU per packet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct QuicConfig {
    /// Hand the kernel up to 10 packets of one connection in one `sendmsg` (UDP GSO). quinn
    /// then keeps a 10-packet transmit buffer (about 14 KiB) in every connection that once sent
    /// more than one packet in a turn; off, one packet per system call and a one-packet buffer.
    pub segmentation_offload: bool,
    /// Ask peers that support the ACK frequency extension (draft-ietf-quic-ack-frequency; quinn
    /// clients do) to acknowledge only after more than this many ack-eliciting packets, or after
    /// their ACK delay (quinn asks for at most the larger of the RTT and 25 ms). Unset: not asked,
    /// peers acknowledge every second packet.
    pub ack_eliciting_threshold: Option<u32>,
    /// TLS sessions kept for resumption and 0-RTT (two per connection, about 4 KiB each, oldest
    /// dropped first); 0 keeps none, so every connection does a full handshake.
    pub resumption_sessions: usize,
    /// Answer a client's heartbeat (an empty datagram) at once even when the connection's
    /// congestion window is full, with one transmission of at most two packets (at most once
    /// a round trip): after an outage the relay then resends what it lost a round trip after
    /// the client's first heartbeat, not at its backed-off probe timer (`transport::answer`).
    pub answer_heartbeats: bool,
    /// Send heartbeats of the relay's own to a client that sent one (it takes them) while the
    /// connection's data goes unacknowledged (1 s, then every 0.5 s): the first after the
    /// client's network returns starts the resend, however long the outage was, and the phone
    /// sends nothing for it. Needs `answer_heartbeats` (`transport::answer`).
    pub probe_fades: bool,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            segmentation_offload: true,
            ack_eliciting_threshold: None,
            resumption_sessions: 16_384,
            answer_heartbeats: true,
            probe_fades: true,
        }
    }
}

/// Calls (docs/calls.md): timeouts, the busy policy, the signaling limits, group call limits.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    /// How long a call rings before it ends as missed, ms.
    pub ring_timeout_ms: u64,
    /// How long a side whose in-call device dropped has to rejoin, ms.
    pub reconnect_grace_ms: u64,
    /// A callee in another connected call is `busy` at once; off, the call rings anyway.
    pub busy_when_in_call: bool,
    /// Largest `signal` data, bytes (a `call` frame is also bound by `limits.max_frame_bytes`).
    pub max_signal_bytes: u32,
    /// `call` frames per second per connection (every action, signals included), and burst.
    pub rate: u32,
    pub burst: u32,
    /// How much call history each user keeps (`[calls.history]`).
    pub history: CallHistoryConfig,
    /// Quality report rate and the thresholds of its flags (`[calls.quality]`).
    pub quality: crate::call::quality::QualityConfig,
    /// Group calls: active participants at most (invited, joined or away), the host included.
    pub group_max_participants: u32,
    /// Group calls: whether participants other than the host may invite.
    pub group_members_can_invite: bool,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            ring_timeout_ms: 30_000,
            reconnect_grace_ms: 15_000,
            busy_when_in_call: true,
            max_signal_bytes: 16 * 1024,
            rate: 20,
            burst: 100,
            history: CallHistoryConfig::default(),
            quality: crate::call::quality::QualityConfig::default(),
            group_max_participants: 16,
            group_members_can_invite: false,
        }
    }
}

/// Collaborative sessions (docs/sessions.md): document limits, snapshots, expiry, cursors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsConfig {
    /// Largest document (serialized JSON), bytes; a session's own `max_bytes` may only lower it.
    /// At most half of `limits.outbox_bytes` (a `joined` answer carries the document).
    pub max_document_bytes: u32,
    /// Largest patch (its JSON text), bytes (a `session` frame is also bound by
    /// `limits.max_frame_bytes`).
    pub max_patch_bytes: u32,
    /// A snapshot of the document is stored every this many patches...
    pub snapshot_every_patches: u32,
    /// ...or once the patches since the last snapshot add up to this many bytes.
    pub snapshot_every_bytes: u32,
    /// Patches kept before the latest snapshot, so a device that says its version catches up
    /// with the patches it missed rather than the whole document.
    pub keep_patches: u32,
    /// A session nobody joined for this long is deleted, seconds.
    pub expire_after_secs: u64,
    /// Cursor updates delivered per second per user per session, at most (the latest wins).
    pub cursor_rate: u32,
    /// Largest cursor `data`, bytes.
    pub max_cursor_bytes: u32,
    /// `session` frames per second per connection (cursors included), and burst.
    pub rate: u32,
    pub burst: u32,
}

impl Default for SessionsConfig {
    fn default() -> Self {
        SessionsConfig {
            max_document_bytes: 256 * 1024,
            max_patch_bytes: 64 * 1024,
            snapshot_every_patches: 500,
            snapshot_every_bytes: 1024 * 1024,
            keep_patches: 1000,
            expire_after_secs: 30 * 86_400,
            cursor_rate: 10,
            max_cursor_bytes: 1024,
            rate: 100,
            burst: 200,
        }
    }
}

/// ICE servers handed to clients for WebRTC (`ice_servers` frame, `GET /v1/ice`): STUN URLs,
/// and TURN URLs with time-limited credentials in the TURN REST form coturn checks with
/// `use-auth-secret` and `static-auth-secret` (see `crate::ice`).
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// `turn:` / `turns:` URLs (`turn:host:port?transport=udp`), every server sharing the secret.
    pub urls: Vec<String>,
    /// `stun:` / `stuns:` URLs, handed out without credentials.
    pub stun_urls: Vec<String>,
    /// coturn's `static-auth-secret`, inline (UTF-8 bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The same secret in a file (contents, trailing whitespace removed), read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_file: Option<PathBuf>,
    /// How long an issued TURN credential is valid, seconds.
    pub ttl_secs: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            urls: Vec::new(),
            stun_urls: Vec::new(),
            secret: None,
            secret_file: None,
            ttl_secs: TURN_DEFAULT_TTL_SECS,
        }
    }
}

// Hand-written so an inline secret never reaches logs.
impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("urls", &self.urls)
            .field("stun_urls", &self.stun_urls)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("secret_file", &self.secret_file)
            .field("ttl_secs", &self.ttl_secs)
            .finish()
    }
}

/// Default `turn.ttl_secs`: a day, the TURN REST API convention coturn follows. A TURN
/// allocation is refreshed with the credential it was made with, so a call cannot outlive it.
pub const TURN_DEFAULT_TTL_SECS: u64 = 86_400;
/// Accepted `turn.ttl_secs`: a minute to a week.
pub const TURN_TTL_RANGE: std::ops::RangeInclusive<u64> = 60..=7 * 86_400;
/// Most URLs in `turn.urls`, and in `turn.stun_urls`.
pub const TURN_MAX_URLS: usize = 16;
/// Longest URL in `turn.urls` and `turn.stun_urls`.
pub const TURN_MAX_URL_BYTES: usize = 256;

impl TurnConfig {
    /// Whether TURN credentials are issued (a secret is configured).
    pub fn has_secret(&self) -> bool {
        self.secret.is_some() || self.secret_file.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        for (key, urls, schemes) in
            [("turn.urls", &self.urls, ["turn:", "turns:"]), ("turn.stun_urls", &self.stun_urls, ["stun:", "stuns:"])]
        {
            if urls.len() > TURN_MAX_URLS {
                return Err(invalid(key, format!("at most {TURN_MAX_URLS} URLs")));
            }
            for (i, url) in urls.iter().enumerate() {
                let rest = schemes.iter().find_map(|scheme| url.strip_prefix(scheme));
                let ok = rest.is_some_and(|rest| !rest.is_empty())
                    && url.len() <= TURN_MAX_URL_BYTES
                    && !url.chars().any(|c| c.is_whitespace() || c.is_control());
                if !ok {
                    let (a, b) = (schemes[0], schemes[1]);
                    let message = format!(
                        "{url:?}: must be a {a} or {b} URL with a host, at most {TURN_MAX_URL_BYTES} bytes, no spaces"
                    );
                    return Err(invalid(format!("{key}[{i}]"), message));
                }
            }
        }
        match (&self.secret, &self.secret_file) {
            (Some(_), Some(_)) => return Err(invalid("turn.secret", "set turn.secret or turn.secret_file, not both")),
            (Some(secret), None) if secret.is_empty() => return Err(invalid("turn.secret", "must not be empty")),
            _ => {}
        }
        if !self.urls.is_empty() && !self.has_secret() {
            return Err(invalid("turn.secret", "required when turn.urls is set (or use turn.secret_file)"));
        }
        if self.urls.is_empty() && self.has_secret() {
            return Err(invalid("turn.urls", "required when turn.secret or turn.secret_file is set"));
        }
        if !TURN_TTL_RANGE.contains(&self.ttl_secs) {
            let message = format!("must be in {}..={}", TURN_TTL_RANGE.start(), TURN_TTL_RANGE.end());
            return Err(invalid("turn.ttl_secs", message));
        }
        Ok(())
    }
}

/// The room hub.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HubConfig {
    pub shards: usize,
    /// An empty room is dropped after this long.
    pub room_idle_ttl_secs: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig { shards: 64, room_idle_ttl_secs: 600 }
    }
}

/// Where room history lives, how much is kept, and how publishes are committed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (redb file, survives restarts), `memory` (lost on restart; rooms then start
    /// new epochs and clients are told), or `redis` (shared by every relay of a region; see
    /// `[redis]`).
    pub engine: StoreEngine,
    /// The redb file; default `<data_dir>/history.redb`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// Messages kept per room.
    pub max_messages: u64,
    /// Messages older than this are deleted.
    pub max_age_secs: u64,
    /// A publish retried with the same id within this window gets its original position.
    pub dedupe_window_secs: u64,
    /// Most messages in one durable commit.
    pub commit_max_batch: usize,
    /// How long the writer keeps collecting a batch while publishes keep arriving.
    pub commit_linger_us: u64,
    /// Least time between the starts of two commits: publishes arriving sooner wait and share
    /// the next one. With `deliver_before_commit` only the publisher's ack waits; fewer fsyncs
    /// under a steady trickle of publishes. 0: commit as soon as the previous one is done.
    /// Embedded engine only (the memory engine has no fsync to share).
    pub commit_interval_us: u64,
    /// Deliver each message to subscribers as soon as it has its offset, before its durable
    /// commit (acks still wait for the commit). On by default: subscribers skip the fsync and
    /// two thread hand-offs. After a crash every room then starts a new epoch, so a message
    /// subscribers saw but the store lost never shares a position with another; `false` keeps
    /// the epochs across crashes at the cost of that latency. Embedded and memory engines only
    /// (Redis commits and delivers in one script).
    pub deliver_before_commit: bool,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreEngine {
    Embedded,
    Memory,
    Redis,
}

/// `store.commit_interval_us`'s default (docs/decisions.md, "Pacing commits").
const COMMIT_INTERVAL_US: u64 = 20_000;

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            engine: StoreEngine::Embedded,
            path: None,
            max_messages: 10_000,
            max_age_secs: 86_400,
            dedupe_window_secs: 300,
            commit_max_batch: 256,
            commit_linger_us: 2000,
            commit_interval_us: COMMIT_INTERVAL_US,
            deliver_before_commit: true,
        }
    }
}

/// How much call history each user keeps. It lives where `store.engine` says: the redb file,
/// memory, or the shared Redis.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallHistoryConfig {
    /// Calls kept per user; older ones leave the user's list as new ones arrive.
    pub max_calls_per_user: u64,
    /// Calls that started longer ago than this are deleted.
    pub max_age_secs: u64,
}

impl Default for CallHistoryConfig {
    fn default() -> Self {
        CallHistoryConfig { max_calls_per_user: 1000, max_age_secs: 90 * 86_400 }
    }
}

impl CallHistoryConfig {
    pub fn retention(&self) -> crate::call::history::HistoryRetention {
        crate::call::history::HistoryRetention {
            max_calls_per_user: self.max_calls_per_user,
            max_age_ms: self.max_age_secs.saturating_mul(1000),
        }
    }
}

/// The Redis (7+, or Valkey) that relays share with `store.engine = "redis"`: rooms' history,
/// offsets, idempotency keys and cursors live there, and messages cross nodes by its sharded
/// pub/sub. Retention and the dedupe window come from `[store]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// Prefix of every key and channel, so several deployments can share one Redis.
    pub prefix: String,
    /// A Redis command unanswered after this long fails; a failed publish is retried for twice
    /// this long after its first failure, then refused with `store_unavailable` (3-4 x this
    /// after it was made).
    pub command_timeout_ms: u64,
    /// How often each room's top offset is compared with what this relay delivered; a message
    /// pub/sub has not brought by the next check is read from the room's stream.
    pub resync_interval_ms: u64,
    /// How often a probe goes through this relay's pub/sub connection.
    pub probe_interval_ms: u64,
    /// A probe not back within this means the pub/sub connection is silent: it is reconnected.
    pub probe_timeout_ms: u64,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            prefix: "edgerelay".into(),
            command_timeout_ms: 2000,
            resync_interval_ms: 1000,
            probe_interval_ms: 1000,
            probe_timeout_ms: 3000,
        }
    }
}

/// The WebSocket transport: permessage-deflate (RFC 7692, docs/protocol.md) and the echo path
/// for conformance runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Accept a client's permessage-deflate offer. Off by default: see docs/decisions.md.
    pub permessage_deflate: bool,
    /// Compress each message on its own (less memory per connection, worse ratio).
    pub server_no_context_takeover: bool,
    /// Ask clients to compress each message on its own (the relay then keeps no inflate state
    /// between their messages).
    pub client_no_context_takeover: bool,
    /// The window clients are told to keep within (8-15), when their offer lets the relay say.
    pub client_max_window_bits: u8,
    /// Deflate level, 0-9 (1 is fastest).
    pub compression_level: u32,
    /// Messages shorter than this go out uncompressed.
    pub compress_min_bytes: usize,
    /// Serve `/v1/ws-echo`, a WebSocket that echoes every message (same framing code, no
    /// session). For conformance test runs only (tests/autobahn.rs): never in production.
    pub echo: bool,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            permessage_deflate: false,
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            client_max_window_bits: 15,
            compression_level: 1,
            compress_min_bytes: 64,
            echo: false,
        }
    }
}

/// Connection floods (docs/operations.md): QUIC address validation and per-IP limits on both
/// ports.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// New QUIC connections per second (over the last second) above which a client must prove
    /// its address with a Retry round trip first; 0 validates every new connection.
    pub retry_above_per_sec: u32,
    /// Connection attempts per second one IP address may make (QUIC and TCP each), with
    /// `per_ip_burst` at once; over it attempts are refused.
    pub per_ip_rate: u32,
    pub per_ip_burst: u32,
    /// Connections one IP address may hold open at once on each port.
    pub per_ip_max: u32,
    /// Loopback addresses (a local proxy, load tests) are not held to the per-IP limits.
    pub exempt_loopback: bool,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            retry_above_per_sec: 100,
            per_ip_rate: 50,
            per_ip_burst: 100,
            per_ip_max: 1000,
            exempt_loopback: true,
        }
    }
}

/// The server HTTP API (`/v1/api/*`), for application backends.
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Bearer key the backend sends as `Authorization: Bearer <key>`; the API is off when unset.
    pub key: Option<String>,
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig").field("key", &self.key.as_ref().map(|_| "<hidden>")).finish()
    }
}

/// Shortest accepted API key.
pub const MIN_API_KEY_LEN: usize = 16;

/// Backend hooks (docs/events.md#backend-hooks): HTTP calls to the operator's backend on
/// connect, subscribe (rooms and topics) and publish, which allow, deny or rewrite.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// HMAC-SHA256 key the relay signs each call with (`x-edgerelay-signature`); at least 16
    /// bytes. Required when a hook is set.
    pub secret: Option<String>,
    /// Calls in flight at once, over every hook; a call past it gets the hook's fallback.
    pub max_in_flight: u32,
    /// Consecutive failures (timeout, connection error, non-2xx, bad answer) that open a
    /// hook's circuit breaker: calls then get the fallback without trying the backend.
    pub breaker_failures: u32,
    /// How long an open breaker stays open before one probe call is let through.
    pub breaker_open_ms: u64,
    pub connect: Option<HookConfig>,
    pub subscribe: Option<HookConfig>,
    pub publish: Option<HookConfig>,
}

impl Default for HooksConfig {
    fn default() -> Self {
        HooksConfig {
            secret: None,
            max_in_flight: 256,
            breaker_failures: 5,
            breaker_open_ms: 5_000,
            connect: None,
            subscribe: None,
            publish: None,
        }
    }
}

// Hand-written so the secret never reaches logs.
impl fmt::Debug for HooksConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HooksConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<hidden>"))
            .field("max_in_flight", &self.max_in_flight)
            .field("breaker_failures", &self.breaker_failures)
            .field("breaker_open_ms", &self.breaker_open_ms)
            .field("connect", &self.connect)
            .field("subscribe", &self.subscribe)
            .field("publish", &self.publish)
            .finish()
    }
}

/// One hook: where it goes, how long it may take, what happens when the backend cannot answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// `http://host[:port]/path` (plain HTTP/1.1: put the backend on a private network or
    /// behind a local TLS proxy).
    pub url: String,
    #[serde(default = "HookConfig::default_timeout_ms")]
    pub timeout_ms: u64,
    /// What a call gets when the backend cannot answer (timeout, error, breaker open, too many
    /// calls in flight): `allow` (fail open) or `deny` (fail closed).
    #[serde(default)]
    pub fallback: HookFallback,
}

impl HookConfig {
    fn default_timeout_ms() -> u64 {
        1_000
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HookFallback {
    Allow,
    #[default]
    Deny,
}

impl Config {
    fn validate_hooks(&self) -> Result<(), ConfigError> {
        let h = &self.hooks;
        let hooks = [("hooks.connect", &h.connect), ("hooks.subscribe", &h.subscribe), ("hooks.publish", &h.publish)];
        if hooks.iter().all(|(_, hook)| hook.is_none()) {
            return Ok(());
        }
        if h.secret.as_ref().is_none_or(|s| s.len() < 16) {
            return Err(invalid("hooks.secret", "set at least 16 bytes when a hook is configured"));
        }
        if h.max_in_flight == 0 {
            return Err(invalid("hooks.max_in_flight", "must be greater than 0"));
        }
        if h.breaker_failures == 0 {
            return Err(invalid("hooks.breaker_failures", "must be greater than 0"));
        }
        for (key, hook) in hooks {
            let Some(hook) = hook else { continue };
            if let Err(message) = crate::hooks::client::Target::parse(&hook.url) {
                return Err(invalid(format!("{key}.url"), message));
            }
            if !(1..=30_000).contains(&hook.timeout_ms) {
                return Err(invalid(format!("{key}.timeout_ms"), "must be 1-30000"));
            }
        }
        Ok(())
    }
}

/// A configuration error. Every variant says where to look.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    // The cause is part of the message and deliberately not also `source()`, so a report that
    // prints the chain (`{:#}`) names it once.
    #[error("config file {}: {error}", path.display())]
    Io { path: PathBuf, error: std::io::Error },
    /// The file is not valid TOML, or an environment variable name is malformed.
    /// `path` is the file path or `<env>`.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A value has the wrong type, or the key is unknown. `origin` is the file path or the
    /// environment variable that set it.
    #[error("config key `{key}` (from {origin}): {message}")]
    Value { key: String, origin: String, message: String },
    /// A value is well-typed but not acceptable.
    #[error("config key `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    /// The dotted key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Value { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// Refuses the first of `fields` (key, value) that is 0.
fn all_positive<T: Default + PartialEq>(
    fields: impl IntoIterator<Item = (&'static str, T)>,
) -> Result<(), ConfigError> {
    match fields.into_iter().find(|(_, value)| *value == T::default()) {
        Some((key, _)) => Err(invalid(key, "must be greater than 0")),
        None => Ok(()),
    }
}

/// One environment override, kept so errors can name the variable.
struct EnvOverride {
    var: String,
    path: Vec<String>,
    raw: String,
    /// Whether `raw` was parsed as a non-string TOML value (and may be retried as a string).
    typed: bool,
}

impl Config {
    /// Defaults, then the TOML file if given, then environment variables. Every error names the
    /// key. Environment variables are `EDGERELAY_<SECTION>__<KEY>` (case-insensitive);
    /// `EDGERELAY_CONFIG` and `EDGERELAY_LOG` are left to the CLI. The result is validated.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        Config::load_with(file, env, Vec::new())
    }

    /// [`Config::load`] with `overrides` applied last: command-line flags, as
    /// `(origin, dotted key, raw value)`, e.g. `("--udp", "listen.udp", "[::]:4433")`. A raw
    /// value is read like an environment variable's, and errors name `origin`.
    pub fn load_with(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        cli: Vec<(String, String, String)>,
    ) -> Result<Config, ConfigError> {
        let (mut table, origin) = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|error| ConfigError::Io { path: path.to_path_buf(), error })?;
                (parse_table(&text, &path.display().to_string())?, path.display().to_string())
            }
            None => (toml::Table::new(), "<defaults>".to_string()),
        };

        let mut overrides = env_overrides(env)?;
        for (origin, key, raw) in cli {
            let typed = !matches!(env_value(&raw), toml::Value::String(_));
            let path = key.split('.').map(str::to_string).collect();
            overrides.push(EnvOverride { var: origin, path, raw, typed });
        }
        for o in &overrides {
            let value = env_value(&o.raw);
            set_path(&mut table, &o.path, value).map_err(|message| ConfigError::Value {
                key: o.path.join("."),
                origin: o.var.clone(),
                message,
            })?;
        }

        default_dev_keys(&mut table);

        // An env value that parses as TOML (e.g. `12345`) may be meant as a string (an issuer,
        // a kid). Retry such a value as a string when deserialization fails right at its key;
        // bounded by the number of overrides.
        let config = loop {
            match deserialize(table.clone()) {
                Ok(config) => break config,
                Err((key, message)) => {
                    let retry = overrides.iter_mut().find(|o| o.typed && o.path.join(".") == key);
                    if let Some(o) = retry {
                        o.typed = false;
                        set_path(&mut table, &o.path, toml::Value::String(o.raw.clone())).map_err(|message| {
                            ConfigError::Value { key: key.clone(), origin: o.var.clone(), message }
                        })?;
                        continue;
                    }
                    let origin = overrides
                        .iter()
                        .rev()
                        .find(|o| key_related(&key, &o.path))
                        .map(|o| o.var.clone())
                        .unwrap_or_else(|| origin.clone());
                    return Err(ConfigError::Value { key, origin, message });
                }
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document over the defaults (no environment, no validation).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut table = parse_table(text, "<toml>")?;
        default_dev_keys(&mut table);
        deserialize(table).map_err(|(key, message)| ConfigError::Value { key, origin: "<toml>".to_string(), message })
    }

    /// The embedded store's file: `store.path`, or `history.redb` in `data_dir`.
    pub fn history_path(&self) -> PathBuf {
        self.store.path.clone().unwrap_or_else(|| self.data_dir.join("history.redb"))
    }

    /// Where the dev token secret is kept.
    pub fn dev_secret_path(&self) -> PathBuf {
        self.auth.dev_secret_file.clone().unwrap_or_else(|| self.data_dir.join("dev-token-secret"))
    }

    /// Checks values that are well-typed but unusable. Errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if !(MIN_FRAME_BYTES..=MAX_FRAME_BYTES_LIMIT).contains(&l.max_frame_bytes) {
            return Err(invalid(
                "limits.max_frame_bytes",
                format!("must be in {MIN_FRAME_BYTES}..={MAX_FRAME_BYTES_LIMIT}"),
            ));
        }
        let max_payload = l.max_frame_bytes - FRAME_OVERHEAD_BYTES;
        if l.max_payload_bytes == 0 || l.max_payload_bytes > max_payload {
            return Err(invalid(
                "limits.max_payload_bytes",
                format!("must be in 1..={max_payload} (limits.max_frame_bytes - {FRAME_OVERHEAD_BYTES})"),
            ));
        }
        all_positive([
            ("limits.max_rooms_per_connection", l.max_rooms_per_connection),
            ("limits.max_connections_per_user", l.max_connections_per_user),
            ("limits.publish_rate", l.publish_rate),
            ("limits.publish_burst", l.publish_burst),
            ("limits.ping_interval_ms", l.ping_interval_ms),
            ("limits.max_connections", l.max_connections),
        ])?;
        if !(64..=65_535).contains(&l.max_datagram_bytes) {
            return Err(invalid("limits.max_datagram_bytes", "must be in 64..=65535"));
        }
        if l.auth_timeout_ms == 0 {
            return Err(invalid("limits.auth_timeout_ms", "must be greater than 0"));
        }
        if l.outbox_bytes < l.max_frame_bytes as usize {
            return Err(invalid("limits.outbox_bytes", "must be at least limits.max_frame_bytes"));
        }
        self.validate_events()?;
        self.validate_hooks()?;
        self.validate_receipts()?;
        self.validate_notifications()?;
        if !(8..=15).contains(&self.websocket.client_max_window_bits) {
            return Err(invalid("websocket.client_max_window_bits", "must be in 8..=15"));
        }
        if self.websocket.compression_level > 9 {
            return Err(invalid("websocket.compression_level", "must be in 0..=9"));
        }
        let c = &self.connections;
        all_positive([
            ("connections.per_ip_rate", c.per_ip_rate),
            ("connections.per_ip_burst", c.per_ip_burst),
            ("connections.per_ip_max", c.per_ip_max),
        ])?;
        if l.idle_timeout_ms <= l.ping_interval_ms {
            return Err(invalid("limits.idle_timeout_ms", "must be greater than limits.ping_interval_ms"));
        }
        if self.api.key.as_ref().is_some_and(|k| k.len() < MIN_API_KEY_LEN) {
            return Err(invalid("api.key", format!("must be at least {MIN_API_KEY_LEN} characters")));
        }
        let m = &self.media;
        all_positive([
            ("media.max_tracks_per_connection", u64::from(m.max_tracks_per_connection)),
            ("media.max_frame_bytes", u64::from(m.max_frame_bytes)),
            ("media.max_bitrate", u64::from(m.max_bitrate)),
            ("media.queue_bytes", m.queue_bytes as u64),
        ])?;
        if m.queue_bytes < m.max_frame_bytes as usize {
            return Err(invalid("media.queue_bytes", "must be at least media.max_frame_bytes"));
        }
        let p = &self.presence;
        all_positive([
            ("presence.idle_after_ms", p.idle_after_ms),
            ("presence.typing_ttl_ms", p.typing_ttl_ms),
            ("presence.refresh_ms", p.refresh_ms),
            ("presence.rate", u64::from(p.rate)),
            ("presence.burst", u64::from(p.burst)),
        ])?;
        if p.typing_ttl_ms > u64::from(u32::MAX) {
            return Err(invalid("presence.typing_ttl_ms", "must fit in 32 bits"));
        }
        if p.batch_ms >= p.refresh_ms {
            return Err(invalid("presence.batch_ms", "must be below presence.refresh_ms"));
        }
        if let Some(bad) = p.quiet_rooms.iter().find(|p| p.is_empty() || p.contains("{sub}")) {
            return Err(invalid("presence.quiet_rooms", format!("{bad:?} is not a room pattern")));
        }
        if !(0.0..1.0).contains(&p.test_datagram_loss) {
            return Err(invalid("presence.test_datagram_loss", "must be in 0 (default) up to but not including 1"));
        }
        if self.hub.shards == 0 || self.hub.shards > 65_536 {
            return Err(invalid("hub.shards", "must be in 1..=65536"));
        }
        let st = &self.store;
        all_positive([
            ("store.max_messages", st.max_messages),
            ("store.max_age_secs", st.max_age_secs),
            ("store.commit_max_batch", st.commit_max_batch as u64),
        ])?;
        if st.commit_linger_us > 100_000 {
            return Err(invalid("store.commit_linger_us", "must be at most 100000 (100 ms)"));
        }
        if st.commit_interval_us > 100_000 {
            return Err(invalid("store.commit_interval_us", "must be at most 100000 (100 ms)"));
        }
        let r = &self.redis;
        all_positive([
            ("redis.command_timeout_ms", r.command_timeout_ms),
            ("redis.resync_interval_ms", r.resync_interval_ms),
            ("redis.probe_interval_ms", r.probe_interval_ms),
        ])?;
        if r.probe_timeout_ms <= r.probe_interval_ms {
            return Err(invalid("redis.probe_timeout_ms", "must be greater than redis.probe_interval_ms"));
        }
        if r.prefix.is_empty() || r.prefix.contains(['{', '}']) {
            return Err(invalid("redis.prefix", "must be non-empty, without { or }"));
        }
        if st.engine == StoreEngine::Redis && !r.url.starts_with("redis://") {
            return Err(invalid("redis.url", "must be a redis:// URL (TLS to Redis is not built in)"));
        }
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                return Err(invalid("tls.key_file", "required when tls.cert_file is set"));
            }
            (None, Some(_)) => {
                return Err(invalid("tls.cert_file", "required when tls.key_file is set"));
            }
            _ => {}
        }
        self.turn.validate()?;
        self.validate_calls()?;
        self.validate_sessions()?;
        self.validate_auth()
    }

    fn validate_events(&self) -> Result<(), ConfigError> {
        let e = &self.events;
        for (key, list) in [("events.persistent", &e.persistent), ("events.latest", &e.latest)] {
            if let Some(bad) = list.iter().find(|p| crate::events::Pattern::parse(p).is_err()) {
                return Err(invalid(key, format!("{bad:?} is not a topic pattern (docs/events.md)")));
            }
        }
        if let Some(both) = e.latest.iter().find(|p| e.persistent.contains(p)) {
            return Err(invalid("events.latest", format!("{both:?} is also in events.persistent")));
        }
        if e.max_subscriptions == 0 {
            return Err(invalid("events.max_subscriptions", "must be greater than 0"));
        }
        if e.resume_buffer == 0 {
            return Err(invalid("events.resume_buffer", "must be greater than 0"));
        }
        if e.sse_heartbeat_ms < 100 {
            return Err(invalid("events.sse_heartbeat_ms", "must be at least 100"));
        }
        if e.batch_delay_ms > 1_000 {
            return Err(invalid("events.batch_delay_ms", "must be 0 (off) to 1000"));
        }
        if e.batch_bytes == 0 || e.batch_bytes > self.limits.outbox_bytes {
            return Err(invalid("events.batch_bytes", "must be 1 to limits.outbox_bytes"));
        }
        Ok(())
    }

    fn validate_calls(&self) -> Result<(), ConfigError> {
        let c = &self.calls;
        all_positive([
            ("calls.ring_timeout_ms", c.ring_timeout_ms),
            ("calls.reconnect_grace_ms", c.reconnect_grace_ms),
            ("calls.max_signal_bytes", u64::from(c.max_signal_bytes)),
            ("calls.rate", u64::from(c.rate)),
            ("calls.burst", u64::from(c.burst)),
        ])?;
        // A call of one is no group; the history holds at most MAX_PARTICIPANTS per call.
        let max = crate::call::history::MAX_PARTICIPANTS as u32;
        if !(2..=max).contains(&c.group_max_participants) {
            return Err(invalid("calls.group_max_participants", format!("must be in 2..={max}")));
        }
        let h = &self.calls.history;
        if h.max_calls_per_user == 0 {
            return Err(invalid("calls.history.max_calls_per_user", "must be greater than 0"));
        }
        // Ten years: beyond that, a mistake (and past what a Redis expiry time holds exactly).
        if !(1..=10 * 366 * 86_400).contains(&h.max_age_secs) {
            return Err(invalid("calls.history.max_age_secs", "must be in 1..=316224000 (ten years)"));
        }
        match self.calls.quality.problem() {
            Some((key, problem)) => Err(invalid(format!("calls.quality.{key}"), problem)),
            None => Ok(()),
        }
    }

    fn validate_receipts(&self) -> Result<(), ConfigError> {
        let r = &self.receipts;
        if !(10..=60_000).contains(&r.interval_ms) {
            return Err(invalid("receipts.interval_ms", "must be in 10..=60000"));
        }
        if r.commit_interval_ms > 10_000 {
            return Err(invalid("receipts.commit_interval_ms", "must be at most 10000 (10 s)"));
        }
        for (key, value) in [
            ("receipts.max_detailed_members", r.max_detailed_members),
            ("receipts.max_marks", r.max_marks),
            ("receipts.max_mentions", r.max_mentions),
            ("receipts.rate", r.rate),
            ("receipts.burst", r.burst),
        ] {
            if !(1..=10_000).contains(&value) {
                return Err(invalid(key, "must be in 1..=10000"));
            }
        }
        Ok(())
    }

    fn validate_notifications(&self) -> Result<(), ConfigError> {
        let n = &self.notifications;
        all_positive([
            ("notifications.max_feed", u64::from(n.max_feed)),
            ("notifications.max_devices", u64::from(n.max_devices)),
            ("notifications.max_mutes", u64::from(n.max_mutes)),
            ("notifications.rate", u64::from(n.rate)),
            ("notifications.burst", u64::from(n.burst)),
            ("notifications.webhook_timeout_ms", n.webhook_timeout_ms),
            ("notifications.webhook_max_attempts", u64::from(n.webhook_max_attempts)),
            ("notifications.webhook_backoff_ms", n.webhook_backoff_ms),
            ("notifications.webhook_concurrency", u64::from(n.webhook_concurrency)),
            ("notifications.max_dead_letters", u64::from(n.max_dead_letters)),
        ])?;
        for (key, value) in [
            ("notifications.webhook_claim_after_ms", n.webhook_claim_after_ms),
            ("notifications.foreground_ttl_ms", n.foreground_ttl_ms),
        ] {
            if value < 300 {
                return Err(invalid(key, "must be at least 300 (ms)"));
            }
        }
        if n.webhook_max_backoff_ms < n.webhook_backoff_ms {
            return Err(invalid("notifications.webhook_max_backoff_ms", "must be at least webhook_backoff_ms"));
        }
        if let Some(url) = &n.webhook_url {
            if let Err(message) = crate::hooks::client::Target::parse(url) {
                return Err(invalid("notifications.webhook_url", message));
            }
            if n.webhook_secret.as_ref().is_none_or(|s| s.len() < 16) {
                return Err(invalid("notifications.webhook_secret", "set at least 16 bytes with webhook_url"));
            }
        }
        Ok(())
    }

    fn validate_sessions(&self) -> Result<(), ConfigError> {
        let s = &self.sessions;
        all_positive([
            ("sessions.max_document_bytes", u64::from(s.max_document_bytes)),
            ("sessions.max_patch_bytes", u64::from(s.max_patch_bytes)),
            ("sessions.snapshot_every_patches", u64::from(s.snapshot_every_patches)),
            ("sessions.snapshot_every_bytes", u64::from(s.snapshot_every_bytes)),
            ("sessions.expire_after_secs", s.expire_after_secs),
            ("sessions.cursor_rate", u64::from(s.cursor_rate)),
            ("sessions.max_cursor_bytes", u64::from(s.max_cursor_bytes)),
            ("sessions.rate", u64::from(s.rate)),
            ("sessions.burst", u64::from(s.burst)),
        ])?;
        // A `joined` answer carries the document: it must fit in an outbox with room to spare.
        if s.max_document_bytes as usize > self.limits.outbox_bytes / 2 {
            return Err(invalid(
                "sessions.max_document_bytes",
                "must be at most half of limits.outbox_bytes (lower it when lowering the outbox)",
            ));
        }
        if s.cursor_rate > 1000 {
            return Err(invalid("sessions.cursor_rate", "must be at most 1000"));
        }
        Ok(())
    }

    fn validate_auth(&self) -> Result<(), ConfigError> {
        let a = &self.auth;
        if a.issuer.as_deref() == Some("") {
            return Err(invalid("auth.issuer", "must not be empty when set"));
        }
        if a.audience.as_deref() == Some("") {
            return Err(invalid("auth.audience", "must not be empty when set"));
        }
        if !a.dev_keys && a.keys.is_empty() {
            return Err(invalid(
                "auth.keys",
                "no token keys: add [[auth.keys]], or set auth.dev_keys = true (dev keys are off by default when tls.cert_file is set)",
            ));
        }
        let mut kids = HashSet::new();
        for (i, k) in a.keys.iter().enumerate() {
            if k.kid.is_empty() {
                return Err(invalid(format!("auth.keys[{i}].kid"), "must not be empty"));
            }
            let base = k.config_key();
            if !kids.insert(k.kid.as_str()) {
                return Err(invalid(format!("{base}.kid"), "duplicate kid"));
            }
            if a.dev_keys && k.kid == crate::auth::DEV_KID {
                return Err(invalid(
                    format!("{base}.kid"),
                    "kid `dev` is reserved for the dev key while auth.dev_keys = true",
                ));
            }
            // The fields the key's algorithm does not use, and what to use instead.
            let (unused, instead) = match k.alg {
                KeyAlg::HS256 => {
                    match (&k.secret, &k.secret_file) {
                        (None, None) | (Some(_), Some(_)) => {
                            return Err(invalid(
                                format!("{base}.secret"),
                                "HS256 needs exactly one of secret and secret_file",
                            ));
                        }
                        (Some(s), None) if s.is_empty() => {
                            return Err(invalid(format!("{base}.secret"), "must not be empty"));
                        }
                        _ => {}
                    }
                    let unused = [
                        ("public_key_file", k.public_key_file.is_some()),
                        ("private_key_file", k.private_key_file.is_some()),
                    ];
                    (unused, "secret or secret_file")
                }
                KeyAlg::ES256 | KeyAlg::RS256 => {
                    if k.public_key_file.is_none() {
                        return Err(invalid(format!("{base}.public_key_file"), format!("required for {}", k.alg)));
                    }
                    ([("secret", k.secret.is_some()), ("secret_file", k.secret_file.is_some())], "public_key_file")
                }
            };
            if let Some((field, _)) = unused.iter().find(|(_, set)| *set) {
                return Err(invalid(format!("{base}.{field}"), format!("not used by {} (use {instead})", k.alg)));
            }
        }
        Ok(())
    }
}

/// `auth.dev_keys`, when neither the file nor the environment set it: on with the self-signed dev
/// certificate, off once `tls.cert_file` names a real one (a production relay accepts dev
/// tokens only when told to).
fn default_dev_keys(table: &mut toml::Table) {
    let has = |section: &str, key: &str| {
        table.get(section).and_then(toml::Value::as_table).is_some_and(|t| t.contains_key(key))
    };
    if has("tls", "cert_file") && !has("auth", "dev_keys") {
        // A non-table `auth` is reported by deserialization.
        let _ = set_path(table, &["auth".to_string(), "dev_keys".to_string()], toml::Value::Boolean(false));
    }
}

fn parse_table(text: &str, origin: &str) -> Result<toml::Table, ConfigError> {
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Parse { path: origin.to_string(), message: e.to_string().trim_end().to_string() })
}

/// Deserializes a merged table; the error carries the dotted key and the message.
fn deserialize(table: toml::Table) -> Result<Config, (String, String)> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let mut key = e.path().to_string();
        // toml appends "in `section`" on a second line; the key already says where.
        let message = e.inner().to_string();
        let message = message.lines().next().unwrap_or_default().trim_end().to_string();
        // Make sure an unknown field's key names the field itself, not just its parent.
        if let Some(field) = unknown_field(&message)
            && !key.ends_with(field)
        {
            key = if key == "." || key.is_empty() { field.to_string() } else { format!("{key}.{field}") };
        }
        (key, message)
    })
}

/// Extracts `foo` from serde's "unknown field `foo`, expected ...".
fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

/// Whether dotted `key` is `path`, lies below it, or is one of its parents.
fn key_related(key: &str, path: &[String]) -> bool {
    let below = |inner: &str, outer: &str| {
        inner == outer || inner.strip_prefix(outer).is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    let joined = path.join(".");
    below(key, &joined) || below(&joined, key)
}

fn env_overrides(env: impl IntoIterator<Item = (String, String)>) -> Result<Vec<EnvOverride>, ConfigError> {
    // Sorted so the result does not depend on the environment's iteration order.
    let mut sorted = BTreeMap::new();
    for (name, value) in env {
        let Some(prefix) = name.get(..ENV_PREFIX.len()) else {
            continue;
        };
        if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
            continue;
        }
        let rest = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        if ENV_RESERVED.contains(&rest.as_str()) {
            continue;
        }
        sorted.insert(name, (rest, value));
    }
    let mut out = Vec::with_capacity(sorted.len());
    for (var, (rest, raw)) in sorted {
        let path: Vec<String> = rest.split("__").map(str::to_string).collect();
        if path.iter().any(String::is_empty) {
            return Err(ConfigError::Parse {
                path: "<env>".to_string(),
                message: format!("{var}: empty key segment (levels are separated by `__`)"),
            });
        }
        let typed = !matches!(env_value(&raw), toml::Value::String(_));
        out.push(EnvOverride { var, path, raw, typed });
    }
    Ok(out)
}

/// An env value as TOML if it is one (number, bool, array, quoted string), else the raw string.
fn env_value(raw: &str) -> toml::Value {
    raw.parse::<toml::Value>().unwrap_or_else(|_| toml::Value::String(raw.to_string()))
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".to_string());
    };
    let mut cur = table;
    for (i, seg) in parents.iter().enumerate() {
        let entry = cur.entry(seg.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{}` is not a table", parents[..=i].join("."))),
        };
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("edgerelay.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(None, env(&[])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.udp, "[::]:4433".parse().unwrap(), "dual-stack by default");
        assert_eq!(c.listen.tcp, "[::]:8080".parse().unwrap(), "dual-stack by default");
        assert!(c.auth.dev_keys, "dev keys are on with the dev certificate");
        assert_eq!(c.limits.max_frame_bytes, 65_536);
        assert_eq!(c.dev_secret_path(), PathBuf::from("edgerelay-data/dev-token-secret"));
    }

    #[test]
    fn printed_defaults_round_trip() {
        // What `edgerelay config` prints (the effective configuration as TOML) loads back.
        let text = toml::to_string_pretty(&Config::default()).unwrap();
        assert!(text.contains("max_frame_bytes = 65536"), "{text}");
        assert_eq!(Config::from_toml_str(&text).unwrap(), Config::default());
    }

    #[test]
    fn file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            r#"
data_dir = "/var/lib/edgerelay"
[listen]
udp = "127.0.0.1:5000"
[limits]
max_frame_bytes = 8192
max_payload_bytes = 4096
[auth]
dev_keys = false
issuer = "https://auth.example"
[[auth.keys]]
kid = "main"
alg = "ES256"
public_key_file = "/etc/edgerelay/main.pub.pem"
"#,
        );
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/edgerelay"));
        assert_eq!(c.listen.udp, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(c.listen.tcp, ListenConfig::default().tcp);
        assert_eq!(c.limits.max_frame_bytes, 8192);
        assert_eq!(c.limits.publish_rate, 100);
        assert_eq!(c.auth.keys[0].alg, KeyAlg::ES256);
        assert_eq!(c.auth.issuer.as_deref(), Some("https://auth.example"));
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[limits]\nmax_frame_bytes = 8192\nmax_payload_bytes = 4096\n");
        let c = Config::load(
            Some(&path),
            env(&[
                ("EDGERELAY_LIMITS__MAX_FRAME_BYTES", "16384"),
                ("edgerelay_listen__udp", "127.0.0.1:0"),
                ("EDGERELAY_DATA_DIR", "/tmp/x"),
                ("EDGERELAY_AUTH__DEV_KEYS", "true"),
                ("EDGERELAY_AUTH__ISSUER", "12345"), // parses as a number, wanted as a string
                ("EDGERELAY_CONFIG", "/ignored.toml"),
                ("EDGERELAY_LOG", "debug"),
                ("PATH", "/usr/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(c.limits.max_frame_bytes, 16384);
        assert_eq!(c.limits.max_payload_bytes, 4096);
        assert_eq!(c.listen.udp, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.data_dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.auth.issuer.as_deref(), Some("12345"));
    }

    #[test]
    fn dev_keys_default_off_with_a_real_certificate_unless_set() {
        let cert = "[tls]\ncert_file = \"/etc/edgerelay/cert.pem\"\nkey_file = \"/etc/edgerelay/key.pem\"\n";
        let key = "[[auth.keys]]\nkid = \"main\"\nalg = \"HS256\"\nsecret = \"0123456789abcdef\"\n";
        let dir = tempfile::tempdir().unwrap();

        let path = write(&dir, &format!("{cert}{key}"));
        let c = Config::load(Some(&path), env(&[])).unwrap();
        assert!(!c.auth.dev_keys, "tls.cert_file turns the dev keys' default off");

        let err = Config::load(Some(&write(&dir, cert)), env(&[])).unwrap_err();
        assert_eq!(err.key(), Some("auth.keys"), "{err}");
        assert!(err.to_string().contains("tls.cert_file"), "says why dev keys are off: {err}");

        let path = write(&dir, &format!("{cert}[auth]\ndev_keys = true\n"));
        assert!(Config::load(Some(&path), env(&[])).unwrap().auth.dev_keys, "explicit true wins");
        let path = write(&dir, cert);
        let c = Config::load(Some(&path), env(&[("EDGERELAY_AUTH__DEV_KEYS", "true")])).unwrap();
        assert!(c.auth.dev_keys, "explicit true from the environment wins");
        let c = Config::load(
            None,
            env(&[
                ("EDGERELAY_TLS__CERT_FILE", "c.pem"),
                ("EDGERELAY_TLS__KEY_FILE", "k.pem"),
                ("EDGERELAY_AUTH__DEV_KEYS", "maybe"),
            ]),
        );
        assert!(c.is_err(), "a bad value is still an error");

        // What `edgerelay config` prints for it loads back the same.
        let c = Config::load(Some(&write(&dir, &format!("{cert}{key}"))), env(&[])).unwrap();
        let text = toml::to_string_pretty(&c).unwrap();
        assert_eq!(Config::from_toml_str(&text).unwrap(), c);
    }

    #[test]
    fn command_line_overrides_win_and_are_named_in_errors() {
        let flag = |origin: &str, key: &str, raw: &str| (origin.to_string(), key.to_string(), raw.to_string());
        let c = Config::load_with(
            None,
            env(&[("EDGERELAY_LISTEN__UDP", "127.0.0.1:1")]),
            vec![flag("--udp", "listen.udp", "127.0.0.1:2"), flag("--data-dir", "data_dir", "/srv/relay")],
        )
        .unwrap();
        assert_eq!(c.listen.udp, "127.0.0.1:2".parse().unwrap(), "the flag overrides the environment");
        assert_eq!(c.data_dir, PathBuf::from("/srv/relay"));
        let err = Config::load_with(None, env(&[]), vec![flag("--tcp", "listen.tcp", "nowhere")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`listen.tcp`") && text.contains("--tcp"), "{text}");
    }

    #[test]
    fn bad_value_in_file_names_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[limits]\nmax_frame_bytes = \"big\"\n");
        let err = Config::load(Some(&path), env(&[])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`limits.max_frame_bytes`"), "{text}");
        assert!(text.contains("edgerelay.toml"), "{text}");
    }

    #[test]
    fn bad_value_in_env_names_key_and_variable() {
        let err = Config::load(None, env(&[("EDGERELAY_LIMITS__MAX_FRAME_BYTES", "lots")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`limits.max_frame_bytes`"), "{text}");
        assert!(text.contains("EDGERELAY_LIMITS__MAX_FRAME_BYTES"), "{text}");

        let err = Config::load(None, env(&[("EDGERELAY_LISTEN__UDP", "nowhere")])).unwrap_err();
        assert!(err.to_string().contains("`listen.udp`"), "{err}");

        // A variable that nests below a plain value is blamed too.
        let err = Config::load(None, env(&[("EDGERELAY_DATA_DIR__X", "1")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`data_dir`"), "{text}");
        assert!(text.contains("EDGERELAY_DATA_DIR__X"), "{text}");

        // Malformed variable names are reported, not silently dropped.
        let err = Config::load(None, env(&[("EDGERELAY_LIMITS____X", "1")])).unwrap_err();
        assert!(err.to_string().contains("EDGERELAY_LIMITS____X"), "{err}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml_str("[limits]\nmax_frame_byte = 1\n").unwrap_err();
        assert_eq!(err.key(), Some("limits.max_frame_byte"), "{err}");
        let err = Config::from_toml_str("colour = 1\n").unwrap_err();
        assert_eq!(err.key(), Some("colour"), "{err}");
        let err = Config::load(None, env(&[("EDGERELAY_HUB__SHARDZ", "4")])).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`hub.shardz`"), "{text}");
        assert!(text.contains("EDGERELAY_HUB__SHARDZ"), "{text}");
    }

    #[test]
    fn toml_syntax_error_names_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, "[limits\n");
        let err = Config::load(Some(&path), env(&[])).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
        assert!(err.to_string().contains("edgerelay.toml"), "{err}");
    }

    #[test]
    fn missing_file_is_io_error() {
        let err = Config::load(Some(Path::new("/nonexistent/edgerelay.toml")), env(&[]));
        assert!(matches!(err, Err(ConfigError::Io { .. })));
    }

    fn invalid_key(c: &Config) -> String {
        match c.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn call_settings_are_validated_by_key() {
        let mut c = Config::default();
        c.calls.history.max_calls_per_user = 0;
        assert_eq!(invalid_key(&c), "calls.history.max_calls_per_user");
        let mut c = Config::default();
        c.calls.history.max_age_secs = 0;
        assert_eq!(invalid_key(&c), "calls.history.max_age_secs");
        let mut c = Config::default();
        c.calls.quality.high_latency_clear_ms = 500.0;
        assert_eq!(invalid_key(&c), "calls.quality.high_latency_clear_ms");
        let toml = "[calls.history]\nmax_calls_per_user = 5\n[calls.quality]\nwindow = 4\n";
        let c: Config = toml::from_str(toml).unwrap();
        assert_eq!((c.calls.history.max_calls_per_user, c.calls.quality.window), (5, 4));
        assert_eq!(c.calls.history.retention().max_age_ms, 90 * 86_400_000);
    }

    #[test]
    fn validation_names_the_key() {
        let mut c = Config::default();
        c.limits.max_frame_bytes = 512;
        assert_eq!(invalid_key(&c), "limits.max_frame_bytes");

        let mut c = Config::default();
        c.limits.max_payload_bytes = c.limits.max_frame_bytes;
        assert_eq!(invalid_key(&c), "limits.max_payload_bytes");
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("`limits.max_payload_bytes`"), "{err}");

        let mut c = Config::default();
        c.limits.publish_rate = 0;
        assert_eq!(invalid_key(&c), "limits.publish_rate");

        let mut c = Config::default();
        c.api.key = Some("short".into());
        assert_eq!(invalid_key(&c), "api.key");
        assert!(!format!("{c:?}").contains("short"), "the API key never shows in debug output");

        let mut c = Config::default();
        c.tls.cert_file = Some("cert.pem".into());
        assert_eq!(invalid_key(&c), "tls.key_file");

        let hs = |kid: &str| KeyConfig {
            kid: kid.to_string(),
            alg: KeyAlg::HS256,
            secret: Some("s3cret".into()),
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
        };
        let mut c = Config::default();
        c.auth.keys = vec![hs("a"), hs("a")];
        assert_eq!(invalid_key(&c), "auth.keys[kid=a].kid");

        let mut c = Config::default();
        let mut k = hs("a");
        k.secret_file = Some("secret".into());
        c.auth.keys = vec![k];
        assert_eq!(invalid_key(&c), "auth.keys[kid=a].secret");

        let mut c = Config::default();
        let mut k = hs("e");
        k.alg = KeyAlg::ES256;
        c.auth.keys = vec![k];
        assert_eq!(invalid_key(&c), "auth.keys[kid=e].public_key_file");

        let mut c = Config::default();
        c.auth.dev_keys = false;
        assert_eq!(invalid_key(&c), "auth.keys");

        // An unreadable file's cause is in the message once, and not repeated as its source.
        let err = Config::load(Some(Path::new("/nonexistent/edgerelay.toml")), env(&[])).unwrap_err();
        assert!(std::error::Error::source(&err).is_none(), "{err}");

        // Validation runs in load too.
        let err = Config::load(None, env(&[("EDGERELAY_LIMITS__MAX_PAYLOAD_BYTES", "65536")])).unwrap_err();
        assert_eq!(err.key(), Some("limits.max_payload_bytes"));
    }

    #[test]
    fn calls_section_loads_and_validates() {
        let c = Config::from_toml_str("[calls]\nring_timeout_ms = 2000\nbusy_when_in_call = false\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.calls.ring_timeout_ms, 2000);
        assert!(!c.calls.busy_when_in_call);
        assert_eq!(c.calls.reconnect_grace_ms, 15_000, "the rest keeps its defaults");
        let calls = |text: &str| invalid_key(&Config::from_toml_str(&format!("[calls]\n{text}\n")).unwrap());
        assert_eq!(calls("ring_timeout_ms = 0"), "calls.ring_timeout_ms");
        assert_eq!(calls("rate = 0"), "calls.rate");
        assert_eq!(calls("max_signal_bytes = 0"), "calls.max_signal_bytes");
    }

    #[test]
    fn turn_section_loads_and_validates() {
        let c = Config::from_toml_str(
            r#"
[turn]
urls = ["turn:turn1.example.com:3478?transport=udp", "turns:turn2.example.com:5349?transport=tcp"]
stun_urls = ["stun:stun.example.com:3478"]
secret = "coturn-static-auth-secret"
ttl_secs = 3600
"#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.turn.urls.len(), 2);
        assert_eq!(c.turn.ttl_secs, 3600);
        assert!(!format!("{c:?}").contains("coturn-static-auth-secret"), "the secret never shows in debug output");
        assert_eq!(Config::default().turn.ttl_secs, 86_400);
        Config::default().validate().expect("no [turn] is valid: no ICE servers");

        let turn = |text: &str| {
            let c = Config::from_toml_str(&format!("[turn]\n{text}\n")).unwrap();
            invalid_key(&c)
        };
        assert_eq!(turn(r#"urls = ["turn:a"]"#), "turn.secret", "TURN URLs need a secret");
        assert_eq!(turn(r#"secret = "s""#), "turn.urls", "a secret needs TURN URLs");
        assert_eq!(turn("urls = [\"turn:a\", \"stun:b\"]\nsecret = \"s\""), "turn.urls[1]");
        assert_eq!(turn("urls = [\"turn:\"]\nsecret = \"s\""), "turn.urls[0]");
        assert_eq!(turn(r#"stun_urls = ["turn:a"]"#), "turn.stun_urls[0]");
        assert_eq!(turn(r#"stun_urls = ["stun:a b"]"#), "turn.stun_urls[0]");
        assert_eq!(turn("urls = [\"turn:a\"]\nsecret = \"\""), "turn.secret");
        assert_eq!(turn("urls = [\"turn:a\"]\nsecret = \"s\"\nsecret_file = \"/etc/turn-secret\""), "turn.secret");
        assert_eq!(turn("urls = [\"turn:a\"]\nsecret = \"s\"\nttl_secs = 10"), "turn.ttl_secs");
        let err = Config::from_toml_str("[turn]\nurl = []\n").unwrap_err();
        assert_eq!(err.key(), Some("turn.url"), "{err}");
        let c = Config::load(
            None,
            env(&[("EDGERELAY_TURN__URLS", r#"["turn:127.0.0.1:3478"]"#), ("EDGERELAY_TURN__SECRET", "s3cret")]),
        )
        .unwrap();
        assert_eq!(c.turn.urls, vec!["turn:127.0.0.1:3478".to_string()]);
    }

    #[test]
    fn key_config_debug_redacts_secret() {
        let k = KeyConfig {
            kid: "a".into(),
            alg: KeyAlg::HS256,
            secret: Some("hunter2".into()),
            secret_file: None,
            public_key_file: None,
            private_key_file: None,
        };
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}
