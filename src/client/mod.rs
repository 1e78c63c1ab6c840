//! The Rust client: connects over raw QUIC or WebSocket, joins rooms, publishes and awaits acks,
//! and yields what the relay sends as a stream of [`Event`]s. Tests, benches and netsim use it.
//!
//! Requests are matched to answers by `req`. Received messages and connection events go to a
//! bounded channel: an application that stops reading events stops the client reading the
//! network, and the relay eventually closes the connection as a slow consumer, as it should.

pub mod collab;
pub mod media;
mod notify;
pub mod presence;
mod receipts;
pub use notify::FeedPage;
pub mod yjs;
pub use receipts::Unread;
mod quic;
pub use quic::{QuicEndpoint, QuicSessions};
pub mod resilient;
pub mod typing;
mod websocket;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::media::TrackId;
use crate::proto::media::{GroupHeader, LayerInfo, TrackKind};
use crate::proto::{
    CallAction, CallEvent, CallMedia, ClientFrame, Codec, ErrorCode, HistoryEntry, IceServer, PROTOCOL_VERSION,
    Payload, Position, PresenceEntry, RoomCursor, ServerFrame, Status, WireFrame, WireLimits,
};
use presence::RoomPresence;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub enum Target {
    /// Raw QUIC (ALPN `edgerelay/1`).
    Quic { addr: SocketAddr, server_name: String, tls: ServerTrust },
    /// WebTransport (ALPN `h3`) at `path` (the relay serves `/v1/wt`), as browsers connect.
    WebTransport { addr: SocketAddr, server_name: String, tls: ServerTrust, path: String },
    /// WebSocket, e.g. `ws://127.0.0.1:8080/v1/ws`.
    WebSocket { url: String },
}

/// How a QUIC client trusts the relay's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerTrust {
    /// Accept a certificate whose SHA-256 is one of these (dev certificates, as browsers do).
    Pinned(Vec<[u8; 32]>),
    /// Verify against these root certificates (PEM).
    Roots(Vec<u8>),
}

#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub token: String,
    pub codec: Codec,
    /// Free-form client name and version, sent in `hello`.
    pub client_name: String,
    /// Received events buffered before the client stops reading the network.
    pub event_buffer: usize,
    /// How long to wait for an answer to a request.
    pub request_timeout: Duration,
    /// A QUIC endpoint shared with other clients; `None` binds one for this client.
    pub quic_endpoint: Option<QuicEndpoint>,
    /// QUIC (and WebTransport) idle timeout this client offers; the connection uses the smaller
    /// of this and the relay's `limits.idle_timeout_ms` (45 s by default). Sized to outlive the
    /// outages phones have (tunnels, lifts) so the connection resumes where it was instead of
    /// reconnecting; a vanished relay is noticed within it (docs/operations.md).
    pub quic_idle_timeout: Duration,
    /// How long a QUIC connection may stay silent before the client sends a keep-alive packet:
    /// keeps NAT mappings and the idle timer alive. Each one costs the phone a radio wake-up.
    pub quic_keep_alive: Duration,
    /// TLS session tickets for raw QUIC 0-RTT resumption, shared by the options' clones: with
    /// `Some(QuicSessions::new())` a client connecting again (a `Resilient` reconnect) sends
    /// `hello` in its first flight. `None` (the default): every connection does a full
    /// handshake. Off by default because, measured through netsim's emulator, a 0-RTT packet
    /// that overtakes the handshake's first packet is dropped by the relay's QUIC stack and
    /// `hello` then waits for a retransmission (docs/decisions.md, "0-RTT resumption").
    pub quic_sessions: Option<QuicSessions>,
    /// After sending, a QUIC connection that hears nothing from the relay within a few round
    /// trips (an outage the OS did not report) probes the path as after
    /// [`Client::network_changed`], every 500 ms until it answers, instead of waiting for
    /// quinn's doubling probe timeout. Nothing is sent while the client sends nothing.
    pub quic_probe_stalls: bool,
    /// After the relay sent stream data, a QUIC connection expects the path to keep working
    /// for a few seconds: the client sends a heartbeat (an empty datagram, which the relay
    /// acknowledges) 0.5, 1.5, 3.5 and 7.5 s after the last data unless more comes. One left
    /// unanswered means a fade (an outage the OS did not report, or a handover without
    /// [`Client::network_changed`]): the client sends heartbeats on its socket (every 100 ms for
    /// 2 s, then less often) until the relay is heard or `network_changed()` is called. If what
    /// it hears is not the relay resending, it moves to a new socket as `network_changed()` does
    /// and reports [`Event::PathBack`], on which [`Resilient`](resilient::Resilient) catches up
    /// (needs [`quic_probe_stalls`](Self::quic_probe_stalls)). On by default. It costs packets
    /// after each received message (a client receiving one every 10 s exchanges about 84 packets
    /// a minute with the relay instead of 36, all within the radio's active tail); an idle
    /// client sends nothing more after the four that follow its join (docs/decisions.md, "Fades
    /// end in a catch-up").
    pub quic_watch_receiving: bool,
}

impl ClientOptions {
    pub fn new(token: impl Into<String>) -> Self {
        ClientOptions {
            token: token.into(),
            codec: Codec::Postcard,
            client_name: format!("edgerelay-rust/{}", env!("CARGO_PKG_VERSION")),
            event_buffer: 1024,
            request_timeout: Duration::from_secs(10),
            quic_endpoint: None,
            quic_idle_timeout: quic::IDLE_TIMEOUT,
            quic_keep_alive: quic::KEEP_ALIVE,
            quic_sessions: None,
            quic_probe_stalls: true,
            quic_watch_receiving: true,
        }
    }

    /// Connects QUIC and WebTransport through `endpoint`, shared with other clients, instead of
    /// a socket of this client's own.
    pub fn quic_endpoint(mut self, endpoint: QuicEndpoint) -> Self {
        self.quic_endpoint = Some(endpoint);
        self
    }

    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }
}

/// What the relay said in `welcome`.
#[derive(Debug, Clone, PartialEq)]
pub struct Welcome {
    pub session: String,
    pub user: String,
    pub server_time: u64,
    pub limits: WireLimits,
}

/// A page of history, oldest first; `position` is the room's top, `first` the lowest retained
/// offset.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryPage {
    pub position: Position,
    pub first: u64,
    pub messages: Vec<HistoryEntry>,
}

/// A joined room's state at the join.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub position: Position,
    pub recovered: bool,
}

/// A message delivered in a room.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub room: String,
    pub position: Position,
    pub from: String,
    pub time: u64,
    pub id: String,
    pub data: Payload,
}

/// An event of a subscribed topic (docs/events.md).
#[derive(Debug, Clone, PartialEq)]
pub struct TopicEvent {
    pub topic: String,
    /// Its place in a persistent topic's log; `None` for an ephemeral topic.
    pub position: Option<Position>,
    pub time: u64,
    pub id: String,
    pub tags: std::collections::BTreeMap<String, String>,
    pub data: Payload,
}

/// The answer to `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    /// An exact persistent topic's top.
    pub position: Option<Position>,
    pub recovered: bool,
}

/// Something the relay sent that is not the answer to a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Message(Message),
    /// An error about the connection (`req` 0), or for a request nobody waits for.
    Error {
        code: ErrorCode,
        message: String,
    },
    /// The relay is going away; reconnect after the delay.
    GoAway {
        code: ErrorCode,
        reason: String,
        reconnect_after: Duration,
    },
    /// The connection ended; `code` is the relay's close code, if it gave one.
    Closed {
        code: Option<ErrorCode>,
        reason: String,
    },
    /// A call event (docs/media.md): `tracks`, `layer`, `keyframe_request`, `layers_wanted` or
    /// `speakers`, as the relay sent it.
    Call(ServerFrame),
    /// An event of a call (docs/calls.md): 1:1 (its state, ringing, answered elsewhere, the
    /// other side's signaling) or group (its roster, invitations, removal, host mutes).
    CallUpdate(CallUpdate),
    /// The relay took this connection out of a room (`left` with `req` 0: a group call's media
    /// room after the user left the call or was removed).
    Left {
        room: String,
    },
    /// An event of a subscribed topic, or one sent to this user.
    Topic(TopicEvent),
    /// An event of a collaborative session (docs/sessions.md).
    Session(collab::SessionUpdate),
    /// A receipts update (docs/receipts.md): `unread` changes or a room's `receipts`.
    Receipts(crate::proto::ReceiptEvent),
    /// A notifications update (docs/notifications.md): a new notification, a read or a
    /// preference change made on another device.
    Notifications(crate::proto::NotifyEvent),
    /// QUIC or WebTransport: the relay was heard again after an outage the client found out
    /// about itself (no [`Client::network_changed`] call: a fade, see
    /// [`ClientOptions::quic_watch_receiving`]), and it was not resending yet. The connection
    /// moved to a new socket as `network_changed()` does; what the relay sent into the outage
    /// follows. [`Resilient`](resilient::Resilient) asks for it at once, as after
    /// `network_changed()` (docs/protocol.md, "Catching up in one round trip after a network
    /// change").
    PathBack,
}

/// An event of the call `call` (its id), 1:1 or group.
#[derive(Debug, Clone, PartialEq)]
pub struct CallUpdate {
    pub call: String,
    pub event: CallEvent,
}

/// Media events buffered before the readers of group streams wait for the application.
const MEDIA_EVENT_BUFFER: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("connect failed: {0}")]
    Connect(String),
    #[error("relay refused: {code}: {message}")]
    Rejected { code: ErrorCode, message: String },
    #[error("connection closed ({code:?}): {reason}")]
    Closed { code: Option<ErrorCode>, reason: String },
    #[error("unexpected answer from the relay: {0}")]
    Protocol(String),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

type Pending = HashMap<u64, oneshot::Sender<Result<ServerFrame, ClientError>>>;

/// State shared by the client handle and its reader tasks.
struct Shared {
    pending: Mutex<Pending>,
    events: mpsc::Sender<Event>,
    closed: Mutex<Option<(Option<ErrorCode>, String)>>,
    /// Presence and typing views of the joined rooms, kept up to date by the readers.
    presence: Mutex<HashMap<String, RoomPresence>>,
    presence_changed: tokio::sync::Notify,
    /// Rooms whose view disagreed with a refresh, for the sync task to ask a snapshot of.
    syncs: mpsc::UnboundedSender<String>,
    /// Rooms with a `presence_sync` in flight.
    syncing: Mutex<std::collections::HashSet<String>>,
    /// The client's clock for typing expiry.
    started: Instant,
    /// What arrives of forwarded media groups (QUIC and WebTransport).
    media: mpsc::Sender<media::MediaEvent>,
    /// Rooms the relay took this connection out of (`left` with `req` 0), whose stream the next
    /// `join` lets go of first.
    evicted: Mutex<std::collections::HashSet<String>>,
}

/// `req` numbers of the client's own `presence_sync` requests (far above the application's).
const AUTO_REQ_BASE: u64 = 1 << 62;

impl Shared {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn views(&self) -> std::sync::MutexGuard<'_, HashMap<String, RoomPresence>> {
        self.presence.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies presence and typing frames to the room views. Returns the frame back when it is
    /// something else (or a snapshot someone waits for).
    fn presence_frame(&self, frame: ServerFrame) -> Option<ServerFrame> {
        // Each arm takes the views' lock itself: messages, acks and the rest pass without it.
        match frame {
            ServerFrame::Presence { room, entry } => {
                if let Some(view) = self.views().get_mut(&room) {
                    view.apply(entry);
                }
            }
            ServerFrame::PresenceBatch { room, entries } => {
                if let Some(view) = self.views().get_mut(&room) {
                    for entry in entries {
                        view.apply(entry);
                    }
                }
            }
            ServerFrame::PresenceSnapshot { req, room, users } => {
                if let Some(view) = self.views().get_mut(&room) {
                    view.apply_snapshot(users.clone());
                }
                self.syncing.lock().unwrap_or_else(|e| e.into_inner()).remove(&room);
                if req != 0 && req < AUTO_REQ_BASE {
                    return Some(ServerFrame::PresenceSnapshot { req, room, users });
                }
            }
            ServerFrame::PresenceRefresh { room, count, digest } => {
                let stale = self.views().get_mut(&room).is_some_and(|v| v.apply_refresh(count, digest));
                if stale && self.syncing.lock().unwrap_or_else(|e| e.into_inner()).insert(room.clone()) {
                    let _ = self.syncs.send(room);
                }
            }
            ServerFrame::Typing { room, users, others, version, ttl_ms } => {
                let now_ms = self.now_ms();
                if let Some(view) = self.views().get_mut(&room) {
                    view.apply_typing(users, others, version, ttl_ms, now_ms);
                }
            }
            other => return Some(other),
        }
        self.presence_changed.notify_waiters();
        None
    }

    /// Routes one frame from the relay: presence to the room views, answers to their request,
    /// the rest to events.
    async fn dispatch(&self, frame: ServerFrame) {
        let Some(frame) = self.presence_frame(frame) else { return };
        let req = frame.req().unwrap_or(0);
        if req != 0 {
            let waiter = self.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&req);
            if let Some(waiter) = waiter {
                let answer = match frame {
                    ServerFrame::Error { code, message, .. } => Err(ClientError::Rejected { code, message }),
                    other => Ok(other),
                };
                let _ = waiter.send(answer);
                return;
            }
        }
        let event = match frame {
            ServerFrame::Message { room, position, from, time, id, data } => {
                Event::Message(Message { room, position, from, time, id, data })
            }
            ServerFrame::Error { code, message, .. } => Event::Error { code, message },
            ServerFrame::GoAway { code, reason, reconnect_after_ms } => {
                Event::GoAway { code, reason, reconnect_after: Duration::from_millis(u64::from(reconnect_after_ms)) }
            }
            frame @ (ServerFrame::Tracks { .. }
            | ServerFrame::Layer { .. }
            | ServerFrame::KeyframeRequest { .. }
            | ServerFrame::LayersWanted { .. }
            | ServerFrame::Speakers { .. }) => Event::Call(frame),
            ServerFrame::Call { call, event, .. } => Event::CallUpdate(CallUpdate { call, event }),
            ServerFrame::Event { topic, position, time, id, tags, data } => {
                Event::Topic(TopicEvent { topic, position, time, id, tags, data })
            }
            ServerFrame::Session { session, event, .. } => Event::Session(collab::SessionUpdate { session, event }),
            ServerFrame::Receipts { event, .. } => Event::Receipts(event),
            ServerFrame::Notifications { event, .. } => Event::Notifications(event),
            ServerFrame::Left { room, .. } => {
                self.views().remove(&room);
                self.evicted.lock().unwrap_or_else(|e| e.into_inner()).insert(room.clone());
                Event::Left { room }
            }
            _ => return,
        };
        // The permit is taken at once while the application keeps up; waiting for it is what
        // makes a slow reader stop reading the network.
        if let Err(mpsc::error::TrySendError::Full(event)) = self.events.try_send(event) {
            let _ = self.events.send(event).await;
        }
    }

    /// Marks the connection closed: fails every waiting request and reports the close once.
    async fn closed(&self, code: Option<ErrorCode>, reason: String) {
        {
            let mut closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            if closed.is_some() {
                return;
            }
            *closed = Some((code, reason.clone()));
        }
        let pending = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (_, waiter) in pending {
            let _ = waiter.send(Err(ClientError::Closed { code, reason: reason.clone() }));
        }
        let _ = self.events.send(Event::Closed { code, reason }).await;
    }

    /// Reports [`Event::PathBack`]; dropped when the application is behind on its events.
    fn path_back(&self) {
        let _ = self.events.try_send(Event::PathBack);
    }

    fn closed_error(&self) -> Option<ClientError> {
        let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
        closed.as_ref().map(|(code, reason)| ClientError::Closed { code: *code, reason: reason.clone() })
    }
}

/// The transport half of a client: how frames leave.
enum Link {
    Quic(Box<quic::QuicLink>),
    WebSocket(websocket::WsLink),
}

impl Link {
    /// On QUIC the room's stream (the control stream when the room has none); on WebSocket the
    /// socket.
    async fn send_for_room(&self, room: &str, frame: WireFrame) -> Result<(), ClientError> {
        match self {
            Link::Quic(link) => link.send_for_room(room, frame).await,
            Link::WebSocket(link) => link.send(frame),
        }
    }

    async fn send_control(&self, frame: WireFrame) -> Result<(), ClientError> {
        match self {
            Link::Quic(link) => link.send_control(frame).await,
            Link::WebSocket(link) => link.send(frame),
        }
    }

    async fn send_datagram(&self, frame: WireFrame) -> Result<(), ClientError> {
        match self {
            Link::Quic(link) => link.send_datagram(frame).await,
            Link::WebSocket(link) => link.send(frame),
        }
    }

    fn close(&self) {
        match self {
            Link::Quic(link) => link.close(),
            Link::WebSocket(link) => link.close(),
        }
    }
}

/// Which [`Link`] method a request leaves by.
#[derive(Clone, Copy)]
enum Route<'a> {
    Control,
    Room(&'a str),
    Datagram,
}

/// A `history` answer (to `history` or `history_after`) as a page.
fn history_page(answer: ServerFrame) -> Result<HistoryPage, ClientError> {
    match answer {
        ServerFrame::History { position, first, messages, .. } => Ok(HistoryPage { position, first, messages }),
        other => Err(unexpected("history", &other)),
    }
}

fn unexpected(expected: &str, got: &ServerFrame) -> ClientError {
    ClientError::Protocol(format!("expected {expected}, got {got:?}"))
}

/// A connected client.
pub struct Client {
    link: Arc<Link>,
    shared: Arc<Shared>,
    events: mpsc::Receiver<Event>,
    media: mpsc::Receiver<media::MediaEvent>,
    welcome: Welcome,
    codec: Codec,
    next_req: AtomicU64,
    timeout: Duration,
    tasks: TaskTracker,
    cancel: CancellationToken,
}

impl Client {
    /// Connects, sends `hello` and waits for `welcome`.
    pub async fn connect(target: Target, options: ClientOptions) -> Result<Client, ClientError> {
        let (events_tx, events) = mpsc::channel(options.event_buffer.max(1));
        let (syncs, sync_rx) = mpsc::unbounded_channel();
        let (media_tx, media_rx) = mpsc::channel(MEDIA_EVENT_BUFFER);
        let shared = Arc::new(Shared {
            pending: Mutex::new(HashMap::new()),
            events: events_tx,
            closed: Mutex::new(None),
            presence: Mutex::new(HashMap::new()),
            presence_changed: tokio::sync::Notify::new(),
            syncs,
            syncing: Mutex::new(Default::default()),
            started: Instant::now(),
            media: media_tx,
            evicted: Mutex::new(Default::default()),
        });
        let tasks = TaskTracker::new();
        let cancel = CancellationToken::new();
        let hello = ClientFrame::Hello {
            version: PROTOCOL_VERSION,
            token: options.token.clone(),
            client: options.client_name.clone(),
        };
        let hello = options.codec.frame(&hello);
        let connecting = async {
            let (addr, server_name, tls, wt_path) = match &target {
                Target::Quic { addr, server_name, tls } => (addr, server_name, tls, None),
                Target::WebTransport { addr, server_name, tls, path } => (addr, server_name, tls, Some(path.as_str())),
                Target::WebSocket { url } => {
                    return websocket::connect(url, options.codec, hello, shared.clone(), &tasks, &cancel)
                        .await
                        .map(|(link, welcome)| (Link::WebSocket(link), welcome));
                }
            };
            quic::connect(*addr, server_name, tls, wt_path, &options, hello, shared.clone(), &tasks, &cancel)
                .await
                .map(|(link, welcome)| (Link::Quic(Box::new(link)), welcome))
        };
        let (link, welcome) = match tokio::time::timeout(options.request_timeout, connecting).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(err)) => {
                cancel.cancel();
                return Err(err);
            }
            Err(_) => {
                cancel.cancel();
                return Err(ClientError::Timeout(options.request_timeout));
            }
        };
        let welcome = match welcome {
            ServerFrame::Welcome { session, user, server_time, limits, .. } => {
                Welcome { session, user, server_time, limits }
            }
            ServerFrame::Error { code, message, .. } => return Err(ClientError::Rejected { code, message }),
            other => return Err(unexpected("welcome", &other)),
        };
        let link = Arc::new(link);
        tasks.spawn(sync_presence(link.clone(), options.codec, sync_rx, cancel.clone()));
        Ok(Client {
            link,
            shared,
            events,
            media: media_rx,
            welcome,
            codec: options.codec,
            next_req: AtomicU64::new(1),
            timeout: options.request_timeout,
            tasks,
            cancel,
        })
    }

    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    /// Joins a room. On QUIC the room gets its own stream.
    pub async fn join(&self, room: &str) -> Result<Joined, ClientError> {
        self.join_since(room, None).await
    }

    /// Joins a room, telling the relay the last position this client saw.
    pub async fn join_since(&self, room: &str, since: Option<Position>) -> Result<Joined, ClientError> {
        let evicted = self.shared.evicted.lock().unwrap_or_else(|e| e.into_inner()).remove(room);
        if let (true, Link::Quic(link)) = (evicted, &*self.link) {
            link.forget_room(room).await;
        }
        if let Link::Quic(link) = &*self.link
            && !link.claim_room(room)
        {
            let message = format!("{room} is already joined, or being joined, on this connection");
            return Err(ClientError::Rejected { code: ErrorCode::ALREADY_JOINED, message });
        }
        let req = self.req();
        let frame = ClientFrame::Join { req, room: room.to_owned(), since };
        let rx = self.expect(req);
        // The view exists before the relay's snapshot (which follows `joined`) can arrive.
        self.shared.views().entry(room.to_owned()).or_default();
        let new_stream = match &*self.link {
            Link::Quic(link) => {
                link.open_room(room, self.codec.frame(&frame), &self.tasks, &self.cancel).await?;
                true
            }
            Link::WebSocket(link) => {
                link.send(self.codec.frame(&frame))?;
                false
            }
        };
        let result = match self.answer(req, rx).await {
            Ok(ServerFrame::Joined { position, recovered, .. }) => Ok(Joined { position, recovered }),
            Ok(other) => Err(unexpected("joined", &other)),
            Err(err) => Err(err),
        };
        if matches!(&result, Err(ClientError::Rejected { code, .. }) if *code != ErrorCode::ALREADY_JOINED) {
            self.shared.views().remove(room);
        }
        if let (Err(_), Link::Quic(link), true) = (&result, &*self.link, new_stream) {
            link.forget_room(room).await;
        }
        result
    }

    pub async fn leave(&self, room: &str) -> Result<(), ClientError> {
        match self.request(Route::Room(room), |req| ClientFrame::Leave { req, room: room.to_owned() }).await? {
            ServerFrame::Left { .. } => {
                self.shared.views().remove(room);
                if let Link::Quic(link) = &*self.link {
                    link.forget_room(room).await;
                }
                Ok(())
            }
            other => Err(unexpected("left", &other)),
        }
    }

    /// Publishes and waits for the ack; returns the message's position in the room.
    pub async fn publish(&self, room: &str, id: &str, data: impl Into<Payload>) -> Result<Position, ClientError> {
        let data = data.into();
        let publish = |req| ClientFrame::Publish { req, room: room.to_owned(), id: id.to_owned(), data };
        match self.request(Route::Room(room), publish).await? {
            ServerFrame::Ack { position, .. } => Ok(position),
            other => Err(unexpected("ack", &other)),
        }
    }

    /// Subscribes to the topics `pattern` matches, with an optional tag filter
    /// (docs/events.md). Events arrive as [`Event::Topic`] ([`Client::next_topic_event`]).
    pub async fn subscribe(&self, pattern: &str, filter: Option<&str>) -> Result<Subscribed, ClientError> {
        self.subscribe_since(pattern, filter, None).await
    }

    /// [`Client::subscribe`], resuming an exact persistent topic after `since`.
    pub async fn subscribe_since(
        &self,
        pattern: &str,
        filter: Option<&str>,
        since: Option<Position>,
    ) -> Result<Subscribed, ClientError> {
        let frame =
            |req| ClientFrame::Subscribe { req, pattern: pattern.to_owned(), filter: filter.map(str::to_owned), since };
        match self.request(Route::Control, frame).await? {
            ServerFrame::Subscribed { position, recovered, .. } => Ok(Subscribed { position, recovered }),
            other => Err(unexpected("subscribed", &other)),
        }
    }

    /// Ends the subscription made with `pattern`.
    pub async fn unsubscribe(&self, pattern: &str) -> Result<(), ClientError> {
        match self.request(Route::Control, |req| ClientFrame::Unsubscribe { req, pattern: pattern.to_owned() }).await? {
            ServerFrame::Unsubscribed { .. } => Ok(()),
            other => Err(unexpected("unsubscribed", &other)),
        }
    }

    /// The next topic event, skipping other events; `Err` when the connection closed.
    pub async fn next_topic_event(&mut self) -> Result<TopicEvent, ClientError> {
        self.next_of(|event| match event {
            Event::Topic(e) => Some(e),
            _ => None,
        })
        .await
    }

    /// Round trip to the relay.
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        self.ping_via(Route::Control).await
    }

    /// Round trip over the datagram path: on QUIC the `ping` goes as a datagram and the relay
    /// answers with a `pong` datagram (either may be lost: then this times out); on WebSocket
    /// it is an ordinary ping.
    pub async fn ping_datagram(&self) -> Result<Duration, ClientError> {
        self.ping_via(Route::Datagram).await
    }

    async fn ping_via(&self, route: Route<'_>) -> Result<Duration, ClientError> {
        let started = Instant::now();
        match self.request(route, |req| ClientFrame::Ping { req }).await? {
            ServerFrame::Pong { .. } => Ok(started.elapsed()),
            other => Err(unexpected("pong", &other)),
        }
    }

    /// Sends a latest-wins frame: one QUIC datagram when it fits the path (lossy), the control
    /// stream otherwise; on WebSocket, the socket.
    pub async fn send_datagram(&self, frame: &ClientFrame) -> Result<(), ClientError> {
        self.link.send_datagram(self.codec.frame(frame)).await
    }

    /// Largest datagram the connection carries now; `None` on WebSocket or when datagrams are off.
    pub fn max_datagram_size(&self) -> Option<usize> {
        match &*self.link {
            Link::Quic(link) => link.max_datagram_size(),
            Link::WebSocket(_) => None,
        }
    }

    /// Sets the user's status (all their devices) and custom text. Sent reliably on the control
    /// stream: a user's choice must arrive, unlike typing, which is repeated anyway.
    pub async fn set_status(&self, status: Status, custom: Option<&str>) -> Result<(), ClientError> {
        let frame = ClientFrame::SetStatus { status, custom: custom.map(str::to_owned) };
        self.link.send_control(self.codec.frame(&frame)).await
    }

    /// Tells the relay this device is in use (it is no longer idle); as a datagram on QUIC.
    pub async fn activity(&self) -> Result<(), ClientError> {
        self.send_datagram(&ClientFrame::Activity {}).await
    }

    /// This device types (repeat every few seconds: see [`typing::TypingDebounce`]) or stopped
    /// typing in a joined room; as a datagram on QUIC.
    pub async fn typing(&self, room: &str, typing: bool) -> Result<(), ClientError> {
        self.send_datagram(&ClientFrame::Typing { room: room.to_owned(), typing }).await
    }

    /// Sets the user's privacy (kept by the relay across connections), reliably.
    pub async fn privacy(&self, hide_presence: bool, hide_typing: bool) -> Result<(), ClientError> {
        self.link.send_control(self.codec.frame(&ClientFrame::Privacy { hide_presence, hide_typing })).await
    }

    /// Asks for a joined room's presence snapshot and waits for it; the view is replaced too.
    pub async fn presence_sync(&self, room: &str) -> Result<Vec<PresenceEntry>, ClientError> {
        match self.request(Route::Room(room), |req| ClientFrame::PresenceSync { req, room: room.to_owned() }).await? {
            ServerFrame::PresenceSnapshot { users, .. } => Ok(users),
            other => Err(unexpected("presence_snapshot", &other)),
        }
    }

    /// The present members of a joined room, as this client sees them now.
    pub fn presence(&self, room: &str) -> Vec<PresenceEntry> {
        self.shared.views().get(room).map(RoomPresence::entries).unwrap_or_default()
    }

    /// How many members a joined room has as this client knows it: the latest
    /// `presence_refresh` count, or the members it lists (quiet rooms list nobody).
    pub fn presence_count(&self, room: &str) -> u32 {
        self.shared.views().get(room).map_or(0, RoomPresence::count)
    }

    /// "Alice and Bob are typing…" for a joined room, leaving this user out; empty if nobody.
    pub fn typing_text(&self, room: &str) -> String {
        let now_ms = self.shared.now_ms();
        let views = self.shared.views();
        views.get(room).map(|v| v.typing_text(&self.welcome.user, now_ms)).unwrap_or_default()
    }

    /// Waits until `check` holds for the room's view, or `timeout` passes; returns whether it
    /// held. Rechecked whenever a presence or typing frame arrives, and at least every 100 ms
    /// (typing views expire with time).
    pub async fn wait_presence(
        &self,
        room: &str,
        timeout: Duration,
        check: impl Fn(&RoomPresence, u64) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.presence_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let now_ms = self.shared.now_ms();
            if self.shared.views().get(room).is_some_and(|v| check(v, now_ms)) {
                return true;
            }
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_millis(100));
            tokio::select! {
                _ = changed => {}
                _ = tokio::time::sleep_until(wake) => {
                    if tokio::time::Instant::now() >= deadline {
                        return false;
                    }
                }
            }
        }
    }

    /// Replaces the connection's token; returns the new expiry (unix seconds).
    pub async fn refresh(&self, token: &str) -> Result<u64, ClientError> {
        match self.request(Route::Control, |req| ClientFrame::Refresh { req, token: token.to_owned() }).await? {
            ServerFrame::Refreshed { expires_at, .. } => Ok(expires_at),
            other => Err(unexpected("refreshed", &other)),
        }
    }

    /// A page of a room's history: up to `limit` messages before offset `before` (the newest
    /// when `None`), oldest first.
    pub async fn history(&self, room: &str, before: Option<u64>, limit: u32) -> Result<HistoryPage, ClientError> {
        history_page(
            self.request(Route::Control, |req| ClientFrame::History { req, room: room.to_owned(), before, limit })
                .await?,
        )
    }

    /// A page of a room's history forward: up to `limit` messages after offset `after`,
    /// oldest first (cut short, keeping the oldest, when the frame would be too large). On QUIC
    /// and WebTransport it goes on a stream of its own, so a room's stream still waiting for
    /// QUIC to resend what an outage lost does not hold it back.
    pub async fn history_after(&self, room: &str, after: u64, limit: u32) -> Result<HistoryPage, ClientError> {
        let mut pages = self.histories_after(&[(room, after)], limit).await;
        pages.pop().unwrap_or_else(|| Err(ClientError::Protocol("no answer".into())))
    }

    /// [`Self::history_after`] for several rooms at once, on one stream of their own: one
    /// answer per room, in the order asked.
    pub async fn histories_after(&self, rooms: &[(&str, u64)], limit: u32) -> Vec<Result<HistoryPage, ClientError>> {
        let build = |&(room, after): &(&str, u64)| {
            let req = self.req();
            (req, self.expect(req), ClientFrame::HistoryAfter { req, room: room.to_owned(), after, limit })
        };
        let asked: Vec<_> = rooms.iter().map(build).collect();
        let frames: Vec<WireFrame> = asked.iter().map(|(_, _, frame)| self.codec.frame(frame)).collect();
        let alone = match &*self.link {
            Link::Quic(link) => link.send_alone(&frames, &self.tasks, &self.cancel).await,
            Link::WebSocket(link) => frames.into_iter().try_for_each(|frame| link.send(frame)).map(|()| None),
        };
        let mut pages = Vec::with_capacity(asked.len());
        for (req, rx, _) in asked {
            let page = match &alone {
                Err(err) => Err(err.clone()),
                Ok(_) => self.answer(req, rx).await.and_then(history_page),
            };
            pages.push(page);
        }
        if let Ok(Some(mut send)) = alone {
            let _ = send.finish();
        }
        pages
    }

    /// The STUN and TURN servers for WebRTC with fresh TURN credentials, and when those
    /// expire (unix seconds).
    pub async fn ice_servers(&self) -> Result<(Vec<IceServer>, u64), ClientError> {
        match self.request(Route::Control, |req| ClientFrame::IceServers { req }).await? {
            ServerFrame::IceServers { servers, expires_at, .. } => Ok((servers, expires_at)),
            other => Err(unexpected("ice_servers", &other)),
        }
    }

    /// Places a 1:1 call to `callee` (a user of this tenant); returns the call's id. Its events
    /// arrive as [`Event::CallUpdate`].
    pub async fn call_initiate(&self, callee: &str, media: CallMedia) -> Result<String, ClientError> {
        self.call_action("", CallAction::Initiate { callee: callee.to_owned(), media }).await
    }

    /// Sends one action on the call `call` (on the control stream, where its events come) and
    /// waits for the `ok`; returns the call's id.
    pub async fn call_action(&self, call: &str, action: CallAction) -> Result<String, ClientError> {
        match self.request(Route::Control, |req| ClientFrame::Call { req, call: call.to_owned(), action }).await? {
            ServerFrame::Call { call, event: CallEvent::Ok {}, .. } => Ok(call),
            other => Err(unexpected("call ok", &other)),
        }
    }

    pub async fn call_answer(&self, call: &str) -> Result<(), ClientError> {
        self.call_action(call, CallAction::Answer {}).await.map(drop)
    }

    pub async fn call_reject(&self, call: &str) -> Result<(), ClientError> {
        self.call_action(call, CallAction::Reject {}).await.map(drop)
    }

    pub async fn call_cancel(&self, call: &str) -> Result<(), ClientError> {
        self.call_action(call, CallAction::Cancel {}).await.map(drop)
    }

    pub async fn call_hang_up(&self, call: &str) -> Result<(), ClientError> {
        self.call_action(call, CallAction::HangUp {}).await.map(drop)
    }

    pub async fn call_rejoin(&self, call: &str) -> Result<(), ClientError> {
        self.call_action(call, CallAction::Rejoin {}).await.map(drop)
    }

    /// Reports this device's measurements in the connected 1:1 call `call` (docs/calls.md,
    /// "Quality"); flag changes arrive as [`Event::CallUpdate`] with `quality_flag`.
    pub async fn call_quality(&self, call: &str, report: crate::call::quality::Report) -> Result<(), ClientError> {
        let crate::call::quality::Report { rtt_ms, loss, jitter_ms, send_kbps, recv_kbps } = report;
        self.call_action(call, CallAction::Quality { rtt_ms, loss, jitter_ms, send_kbps, recv_kbps }).await.map(drop)
    }

    /// A page of this user's call history, newest first: at most `limit` (1-50) calls that
    /// started before `before` (a previous page's `next`); returns the calls and the next page's
    /// `before` (`None` at the end).
    pub async fn call_history(
        &self,
        before: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<crate::call::history::CallRecord>, Option<String>), ClientError> {
        let before = before.map(str::to_owned);
        match self.request(Route::Control, |req| ClientFrame::CallHistory { req, before, limit }).await? {
            ServerFrame::CallHistory { calls, next, .. } => Ok((calls, next)),
            other => Err(unexpected("call_history", &other)),
        }
    }

    /// Sends WebRTC signaling (an SDP or ICE candidate, as text) to the other side's device.
    pub async fn call_signal(&self, call: &str, data: &str) -> Result<(), ClientError> {
        self.call_action(call, CallAction::Signal { data: data.to_owned() }).await.map(drop)
    }

    /// The next 1:1 call event, skipping other events; `Err` when the connection closed.
    pub async fn next_call_update(&mut self) -> Result<CallUpdate, ClientError> {
        self.next_of(|event| match event {
            Event::CallUpdate(update) => Some(update),
            _ => None,
        })
        .await
    }

    /// An event already received, without waiting.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// The rooms this user follows, with the last position the relay knows they have.
    pub async fn followed_rooms(&self) -> Result<Vec<RoomCursor>, ClientError> {
        match self.request(Route::Control, |req| ClientFrame::Rooms { req }).await? {
            ServerFrame::Rooms { rooms, .. } => Ok(rooms),
            other => Err(unexpected("rooms", &other)),
        }
    }

    /// Tells the relay this client has every message of `room` up to `position` (no answer).
    pub async fn cursor(&self, room: &str, position: Position) -> Result<(), ClientError> {
        self.link.send_control(self.codec.frame(&ClientFrame::Cursor { room: room.to_owned(), position })).await
    }

    /// Moves the event stream out, so requests can share the client (`Arc<Client>`) while one
    /// owner reads events; `next_event` then returns `None`.
    pub fn take_events(&mut self) -> mpsc::Receiver<Event> {
        std::mem::replace(&mut self.events, mpsc::channel(1).1)
    }

    /// The next event of the media groups the relay forwards to this client.
    pub async fn next_media(&mut self) -> Option<media::MediaEvent> {
        self.media.recv().await
    }

    /// Publishes a media track in a joined room; returns its id.
    pub async fn publish_track(
        &self,
        room: &str,
        name: &str,
        kind: TrackKind,
        codec: &str,
        layers: Vec<LayerInfo>,
    ) -> Result<TrackId, ClientError> {
        let frame = |req| ClientFrame::TrackPublish {
            req,
            room: room.to_owned(),
            name: name.to_owned(),
            kind,
            codec: codec.to_owned(),
            layers,
        };
        match self.request(Route::Room(room), frame).await? {
            ServerFrame::TrackPublished { track, .. } => Ok(track),
            other => Err(unexpected("track_published", &other)),
        }
    }

    /// Starts a group of an own track on `layer` (video groups start with a keyframe): its
    /// frames follow with [`media::GroupWriter::frame`]. QUIC and WebTransport only.
    pub async fn open_group(&self, header: GroupHeader, kind: TrackKind) -> Result<media::GroupWriter, ClientError> {
        let Link::Quic(link) = &*self.link else {
            let message = "media needs raw QUIC or WebTransport".to_owned();
            return Err(ClientError::Rejected { code: ErrorCode::MEDIA_UNSUPPORTED, message });
        };
        media::GroupWriter::open(link.session(), header, crate::media::priority(kind, header.layer)).await
    }

    /// Receives a track (or changes the request: highest layer, paused).
    pub async fn subscribe_track(&self, track: TrackId, max_layer: u8, paused: bool) -> Result<(), ClientError> {
        self.track_request(|req| ClientFrame::TrackSubscribe { req, track, max_layer, paused }).await
    }

    pub async fn unsubscribe_track(&self, track: TrackId) -> Result<(), ClientError> {
        self.track_request(|req| ClientFrame::TrackUnsubscribe { req, track }).await
    }

    pub async fn unpublish_track(&self, track: TrackId) -> Result<(), ClientError> {
        self.track_request(|req| ClientFrame::TrackUnpublish { req, track }).await
    }

    pub async fn mute_track(&self, track: TrackId, muted: bool) -> Result<(), ClientError> {
        self.track_request(|req| ClientFrame::TrackMute { req, track, muted }).await
    }

    async fn track_request(&self, build: impl FnOnce(u64) -> ClientFrame) -> Result<(), ClientError> {
        match self.request(Route::Control, build).await? {
            ServerFrame::TrackOk { .. } => Ok(()),
            other => Err(unexpected("track_ok", &other)),
        }
    }

    /// Tells the client its network changed (a new Wi-Fi or cellular path, the network back
    /// after an outage): the hook a mobile app calls from the OS's path monitor. On QUIC and
    /// WebTransport the endpoint moves to a new UDP socket (a new local address) and pings at
    /// once, so the relay validates the new path and migrates the connection, and both sides
    /// resend what is outstanding now instead of at their next, backed-off probe timeout. Two
    /// padded heartbeats (about 1,100 bytes each) follow the ping, so the relay may send up to
    /// about 7 KB to the new address before it has validated it (docs/protocol.md, "Catching up
    /// in one round trip after a network change"). On
    /// WebSocket nothing can move: [`Self::ping`] shows whether the connection still works.
    pub fn network_changed(&self) -> Result<(), ClientError> {
        match &*self.link {
            Link::Quic(link) => link.network_changed(),
            Link::WebSocket(_) => Ok(()),
        }
    }

    /// After [`Self::network_changed`]: shows whether the connection works on the new network,
    /// within `within`. On QUIC and WebTransport the connection moves to a new socket again,
    /// every three round trips (at least 500 ms; the first of them counted from the move
    /// [`Self::network_changed`] made), until the relay has validated the new path
    /// (its packets stop carrying `PATH_CHALLENGE`); until the relay answers a new socket, an
    /// empty datagram goes from it every round trip (at least 100 ms), so one lost `PING` costs a
    /// round trip, not a move. Nothing else is queued meanwhile: a `PING` lost on the way back
    /// no longer leaves the connection to its backed-off probe timeout, and no frame waits for a congestion window the outage shrank
    /// (which would hold back the client's ACKs too). On WebSocket it pings and waits for the
    /// `pong`. [`ClientError::Timeout`] when nothing came back in time.
    pub async fn probe_path(&self, within: Duration) -> Result<(), ClientError> {
        match &*self.link {
            Link::Quic(link) => {
                if link.probe_path(within).await {
                    Ok(())
                } else {
                    Err(ClientError::Timeout(within))
                }
            }
            Link::WebSocket(_) => match tokio::time::timeout(within, self.ping()).await {
                Ok(pinged) => pinged.map(drop),
                Err(_) => Err(ClientError::Timeout(within)),
            },
        }
    }

    /// Whether this connection resumed with 0-RTT: its `hello` went in the first flight and the
    /// relay accepted it (QUIC and WebTransport with a ticket from an earlier connection in
    /// [`ClientOptions::quic_sessions`]).
    pub fn resumed_0rtt(&self) -> bool {
        match &*self.link {
            Link::Quic(link) => link.early(),
            Link::WebSocket(_) => false,
        }
    }

    /// Whether the connection is a WebSocket (which a network change cannot carry over).
    pub fn is_websocket(&self) -> bool {
        matches!(&*self.link, Link::WebSocket(_))
    }

    /// Closes the connection without waiting for the client's tasks (see `close`).
    pub fn abort(&self) {
        self.link.close();
        self.cancel.cancel();
    }

    /// The next event, or `None` once the connection is gone and every event was read.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next delivered message, skipping other events; `Err` when the connection closed.
    pub async fn next_message(&mut self) -> Result<Message, ClientError> {
        self.next_of(|event| match event {
            Event::Message(m) => Some(m),
            _ => None,
        })
        .await
    }

    /// The next event `pick` takes, skipping the others; `Err` when the connection closed.
    async fn next_of<T>(&mut self, pick: impl Fn(Event) -> Option<T>) -> Result<T, ClientError> {
        loop {
            match self.events.recv().await {
                Some(Event::Closed { code, reason }) => return Err(ClientError::Closed { code, reason }),
                Some(event) => {
                    if let Some(picked) = pick(event) {
                        return Ok(picked);
                    }
                }
                None => return Err(ClientError::Closed { code: None, reason: "client dropped".into() }),
            }
        }
    }

    /// Events as a stream.
    pub fn events(&mut self) -> impl Stream<Item = Event> + '_ {
        futures_util::stream::poll_fn(move |cx| self.events.poll_recv(cx))
    }

    /// Closes the connection normally and waits for the client's tasks.
    pub async fn close(self) {
        self.link.close();
        self.shared.closed(None, "closed by client".into()).await;
        self.cancel.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.tasks.wait()).await;
    }

    fn req(&self) -> u64 {
        self.next_req.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends the frame `build` makes for a fresh `req` the way `route` says and waits for the
    /// answer to that `req` (an `error` answer is [`ClientError::Rejected`]).
    async fn request(
        &self,
        route: Route<'_>,
        build: impl FnOnce(u64) -> ClientFrame,
    ) -> Result<ServerFrame, ClientError> {
        let req = self.req();
        let rx = self.expect(req);
        let frame = self.codec.frame(&build(req));
        match route {
            Route::Control => self.link.send_control(frame).await?,
            Route::Room(room) => self.link.send_for_room(room, frame).await?,
            Route::Datagram => self.link.send_datagram(frame).await?,
        }
        self.answer(req, rx).await
    }

    fn expect(&self, req: u64) -> oneshot::Receiver<Result<ServerFrame, ClientError>> {
        let (tx, rx) = oneshot::channel();
        self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).insert(req, tx);
        rx
    }

    async fn answer(
        &self,
        req: u64,
        rx: oneshot::Receiver<Result<ServerFrame, ClientError>>,
    ) -> Result<ServerFrame, ClientError> {
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(self
                .shared
                .closed_error()
                .unwrap_or(ClientError::Closed { code: None, reason: "connection lost".into() })),
            Err(_) => {
                self.shared.pending.lock().unwrap_or_else(|e| e.into_inner()).remove(&req);
                Err(ClientError::Timeout(self.timeout))
            }
        }
    }
}

/// Asks for the snapshot of each room whose view disagreed with a `presence_refresh`.
async fn sync_presence(
    link: Arc<Link>,
    codec: Codec,
    mut rooms: mpsc::UnboundedReceiver<String>,
    cancel: CancellationToken,
) {
    let mut next = AUTO_REQ_BASE;
    loop {
        let room = tokio::select! {
            _ = cancel.cancelled() => return,
            room = rooms.recv() => match room {
                Some(room) => room,
                None => return,
            },
        };
        next += 1;
        let frame = codec.frame(&ClientFrame::PresenceSync { req: next, room: room.clone() });
        if link.send_for_room(&room, frame).await.is_err() {
            return;
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
