//! The per-client state machine: hello and authentication, joins, publishes, limits.
//!
//! A session consumes decoded-from-bytes frames tagged with the lane they arrived on and answers
//! by queuing frames in its outbox; it never touches a socket, and time is passed in, so it is
//! tested with plain values. The rule for lanes: answers go to the lane the request came on;
//! a room's messages go to the lane its `join` came on (on QUIC, the room's own stream).

mod events;
mod hooks;
pub mod jobs;
pub mod limits;
mod media;
mod notify;
mod presence;
mod receipts;

use std::collections::HashMap;
use std::sync::Arc;

use crate::mailbox::MailSender;

use crate::auth::{Identity, Verifier};
use crate::config::LimitsConfig;
use crate::control::{Controls, Order, Registration};
use crate::engine::{Done, Engine, Publish};
use crate::hub::awareness::Awareness;
use crate::hub::presence::UserKey;
use crate::hub::{CatchUp, Hub, Membership, RoomKey, Subscriber};
use crate::media::calls::Calls;
use crate::media::out::MediaOut;
use crate::outbox::{CONTROL, DatagramKey, LaneId, Outbox, PushError};
use crate::proto::{
    ClientFrame, ErrorCode, PROTOCOL_VERSION, Payload, Position, RoomName, ServerFrame, SessionAction, WireLimits,
};
use crate::store::Cursor;
pub use jobs::{Job, JoinSettled, Page};
use limits::{ConnectionSlot, TokenBucket, UserConnections};
use media::TrackRequest;

/// Why a JSON frame or payload holding a lone UTF-16 surrogate escape is refused.
const LONE_SURROGATE: &str =
    "a string holds a lone UTF-16 surrogate escape (e.g. \\udc00), which is not Unicode text; fix the string";

/// Longest client message id, in bytes.
pub const MAX_MESSAGE_ID_LEN: usize = 64;

/// Datagram queue key kind of a `pong` answering a datagram `ping` (one key per `req`).
pub const KIND_PONG: u8 = 1;

/// Most messages in one `history` page.
pub const MAX_HISTORY_PAGE: u32 = 100;

/// Most calls in one `call_history` page.
pub const MAX_CALL_HISTORY_PAGE: u32 = 50;

/// Most rooms listed in a `rooms` answer.
pub const MAX_ROOMS_LISTED: usize = 1000;

/// What every session of one relay shares.
pub struct SessionContext {
    /// Topic subscriptions and event fanout (docs/events.md).
    pub events: Arc<crate::events::Events>,
    pub hub: Arc<Hub>,
    pub engine: Arc<dyn Engine>,
    pub verifier: Arc<Verifier>,
    pub limits: LimitsConfig,
    pub users: Arc<UserConnections>,
    /// Presence and typing.
    pub awareness: Arc<Awareness>,
    /// Presence and typing frames per second per connection, and burst.
    pub presence_rate: (u32, u32),
    /// Test knob (`presence.test_datagram_loss`): share of QUIC datagrams dropped on purpose.
    pub test_datagram_loss: f64,
    /// Connections by user for the server API's actions, and the revocations in force.
    pub controls: Arc<Controls>,
    /// The media side of rooms.
    pub calls: Arc<Calls>,
    /// ICE servers and TURN credentials (`ice_servers`, `GET /v1/ice`).
    pub ice: Arc<crate::ice::IceIssuer>,
    /// 1:1 calls (`call` frames).
    pub call_service: Arc<crate::call::CallService>,
    /// Group calls (`call` frames with group actions or a group call's id), and who may be in
    /// their media rooms.
    pub group_calls: Arc<crate::call::GroupService>,
    /// `call` frames per second per connection, and burst.
    pub call_rate: (u32, u32),
    /// The call history (`call_history` frames read the user's own list).
    pub call_history: Arc<dyn crate::call::history::CallHistory>,
    /// Collaborative sessions (`session` frames).
    pub collab: Arc<crate::collab::CollabService>,
    /// `session` frames per second per connection, and burst.
    pub session_rate: (u32, u32),
    /// Backend hooks on connect, subscribe and publish (`session/hooks.rs`).
    pub hooks: Arc<crate::hooks::Hooks>,
    /// Read marks, unread counts and receipts (`receipts` frames).
    pub receipts: Arc<crate::receipts::Receipts>,
    /// In-app notifications, preferences and push devices (`notifications` frames).
    pub notify: Arc<crate::notify::Notifications>,
}

impl SessionContext {
    /// Verifies a user's token as `hello`, `refresh` and `GET /v1/ice` do: signature, claims,
    /// expiry, then the revocations in force. The error is the code and message to answer with.
    pub fn authenticate(&self, token: &str, now_s: u64) -> Result<Identity, (ErrorCode, String)> {
        let identity = self.verifier.verify(token, now_s).map_err(|err| (err.code(), err.to_string()))?;
        if self.controls.is_revoked(&identity, now_s) {
            return Err((ErrorCode::TOKEN_REVOKED, "the token was revoked".into()));
        }
        Ok(identity)
    }
}

/// An error after which the connection is closed with `code`. The session has already queued
/// the matching `error` frame; the caller closes the outbox (flushing it) and the transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Fatal {
    pub code: ErrorCode,
    pub message: String,
}

/// An authenticated session's identity, its tenant (shared by its room keys) and its slot in
/// the per-user connection count.
struct Active {
    /// Shared with the server API's registry of connections.
    identity: Arc<Identity>,
    tenant: Arc<str>,
    /// The user, tenant-scoped (presence, calls).
    user: UserKey,
    _slot: ConnectionSlot,
    /// Where the server API's actions reach this connection.
    registration: Registration,
}

impl Active {
    fn key(&self, room: &RoomName) -> RoomKey {
        RoomKey { tenant: self.tenant.clone(), room: room.clone() }
    }
}

/// A room this connection joined: the lane its frames go to, and the membership a leave cancels.
struct Joined {
    lane: LaneId,
    membership: Membership,
}

pub struct Session {
    id: u64,
    ctx: Arc<SessionContext>,
    outbox: Arc<Outbox>,
    /// `None` until a valid `hello`.
    active: Option<Active>,
    rooms: HashMap<RoomName, Joined>,
    lanes: HashMap<LaneId, RoomName>,
    publish_bucket: TokenBucket,
    presence_bucket: TokenBucket,
    call_bucket: TokenBucket,
    session_bucket: TokenBucket,
    receipts_bucket: TokenBucket,
    notify_bucket: TokenBucket,
    /// Collaborative sessions this connection joined (it leaves them when it ends).
    collab: std::collections::HashSet<RoomName>,
    /// Where the hub asks for a replay when one of this connection's rooms falls behind.
    catch_up: MailSender<CatchUp>,
    /// Where the server API's actions (disconnect, revoke) reach this connection.
    orders: MailSender<Order>,
    /// Async work the connection runs for this session (joins, history reads).
    jobs: Vec<Job>,
    /// Cursors the client reported, saved when the connection ends.
    cursors: HashMap<RoomName, Position>,
    /// Where this connection's media goes (raw QUIC and WebTransport; `None` on WebSocket).
    media: Option<Arc<MediaOut>>,
    /// `quic`, `webtransport` or `websocket` (the admin view lists it).
    transport: &'static str,
    /// Rooms whose join is in flight (by the join's `req`), with the publishes to them that
    /// arrived meanwhile: they go to the engine once the join settled, so a client that joins
    /// and then publishes receives its own message (the join's position is taken first).
    joining: HashMap<RoomName, (u64, Vec<(Publish, Done)>)>,
    /// Topic subscriptions by pattern.
    subscriptions: HashMap<String, Arc<crate::events::Subscription>>,
    /// This connection as their owner.
    event_owner: crate::events::Owner,
}

/// Why a request failed.
enum Failure {
    /// Reported on the request's lane; the connection stays open.
    Reject(ErrorCode, String),
    /// The connection is closed with this code.
    Fatal(ErrorCode, String),
    /// The outbox refused the answer: the connection is already closing.
    Push(PushError),
}

impl Failure {
    fn reject(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure::Reject(code, message.into())
    }
}

impl From<PushError> for Failure {
    fn from(e: PushError) -> Self {
        Failure::Push(e)
    }
}

fn parse_room(room: &str) -> Result<RoomName, Failure> {
    RoomName::parse(room).map_err(|code| Failure::reject(code, format!("invalid room name {room:?}")))
}

impl Session {
    /// The link's `id` is unique within the relay (it identifies the subscriber in rooms).
    pub fn new(
        link: crate::connection::Link,
        ctx: Arc<SessionContext>,
        catch_up: MailSender<CatchUp>,
        orders: MailSender<Order>,
        now_ms: u64,
    ) -> Session {
        let crate::connection::Link { id, outbox, media, transport } = link;
        let bucket = TokenBucket::new(ctx.limits.publish_rate, ctx.limits.publish_burst, now_ms);
        let (rate, burst) = ctx.presence_rate;
        let presence_bucket = TokenBucket::new(rate, burst, now_ms);
        let (rate, burst) = ctx.call_rate;
        let call_bucket = TokenBucket::new(rate, burst, now_ms);
        let (rate, burst) = ctx.session_rate;
        let session_bucket = TokenBucket::new(rate, burst, now_ms);
        let (rate, burst) = ctx.receipts.rate();
        let receipts_bucket = TokenBucket::new(rate, burst, now_ms);
        let (rate, burst) = ctx.notify.rate();
        let notify_bucket = TokenBucket::new(rate, burst, now_ms);
        Session {
            id,
            ctx,
            outbox,
            active: None,
            rooms: HashMap::new(),
            lanes: HashMap::new(),
            publish_bucket: bucket,
            presence_bucket,
            call_bucket,
            session_bucket,
            receipts_bucket,
            notify_bucket,
            collab: std::collections::HashSet::new(),
            catch_up,
            orders,
            jobs: Vec::new(),
            cursors: HashMap::new(),
            media,
            transport,
            joining: HashMap::new(),
            subscriptions: HashMap::new(),
            event_owner: crate::events::Owner::new(id),
        }
    }

    /// Async work queued by the frames handled so far; the connection runs it.
    pub fn take_jobs(&mut self) -> Vec<Job> {
        std::mem::take(&mut self.jobs)
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn identity(&self) -> Option<&Identity> {
        self.active.as_ref().map(|a| &*a.identity)
    }

    pub fn is_authenticated(&self) -> bool {
        self.active.is_some()
    }

    /// When the token runs out (unix seconds), once authenticated.
    pub fn expires_at(&self) -> Option<u64> {
        self.identity().map(|i| i.expires_at)
    }

    /// The limits announced in `welcome`.
    pub fn wire_limits(limits: &LimitsConfig) -> WireLimits {
        WireLimits {
            max_frame_bytes: limits.max_frame_bytes,
            max_payload_bytes: limits.max_payload_bytes,
            max_rooms: limits.max_rooms_per_connection,
            publish_rate: limits.publish_rate,
            publish_burst: limits.publish_burst,
            ping_interval_ms: limits.ping_interval_ms,
            idle_timeout_ms: limits.idle_timeout_ms,
        }
    }

    /// Handles one frame body that arrived on `lane`.
    pub fn handle(&mut self, lane: LaneId, body: &[u8], now_ms: u64) -> Result<(), Fatal> {
        let frame: ClientFrame = match self.outbox.codec().decode(body) {
            Ok(frame) => frame,
            Err(err) => return self.undecodable(lane, body, err),
        };
        self.handle_frame(lane, frame, now_ms)
    }

    /// A frame that did not decode closes the connection with `bad_frame`, unless it is a JSON
    /// request whose only fault is a lone surrogate escape in a string: then that request alone
    /// is refused with `bad_request` (as a `data` holding one is, see [`Session::publish`]).
    fn undecodable(&self, lane: LaneId, body: &[u8], err: crate::proto::DecodeError) -> Result<(), Fatal> {
        let readable = (self.outbox.codec() == crate::proto::Codec::Json && self.is_authenticated())
            .then(|| crate::proto::codec::replace_lone_surrogates(body))
            .flatten()
            .and_then(|fixed| self.outbox.codec().decode::<ClientFrame>(&fixed).ok());
        match readable {
            Some(frame) if !matches!(frame, ClientFrame::Hello { .. }) => {
                let req = frame.req().unwrap_or(0);
                self.answer(lane, req, Err(Failure::reject(ErrorCode::BAD_REQUEST, LONE_SURROGATE)))
            }
            _ => Err(self.fatal(0, err.code(), err.to_string())),
        }
    }

    /// Handles one datagram body. Datagrams are lossy by nature, so nothing here is fatal: a
    /// datagram that cannot be decoded, arrives before `hello`, or carries a frame type that is
    /// not allowed as a datagram is dropped and counted. Heartbeats never get here: the
    /// transport answers them (`transport::answer`).
    pub fn handle_datagram(&mut self, body: &[u8], now_ms: u64) {
        let frame: ClientFrame = match self.outbox.codec().decode(body) {
            Ok(frame) => frame,
            Err(_) => return crate::metrics::datagram_dropped("undecodable"),
        };
        if !self.is_authenticated() {
            return crate::metrics::datagram_dropped("unauthenticated");
        }
        match frame {
            // A datagram ping measures the datagram path itself, so it is answered by one.
            ClientFrame::Ping { req } => {
                let pong = self.outbox.codec().frame(&ServerFrame::Pong { req, server_time: now_ms });
                let _ = self.outbox.push_datagram(DatagramKey::new(KIND_PONG, format!("{req}")), pong);
            }
            frame @ (ClientFrame::SetStatus { .. } | ClientFrame::Activity {} | ClientFrame::Typing { .. }) => {
                self.presence_frame(frame, now_ms);
            }
            ClientFrame::Session { session, action: SessionAction::Cursor { data }, .. } => {
                if let Some(active) = &self.active
                    && self.session_bucket.try_take(now_ms)
                {
                    self.ctx.collab.cursor(&active.identity, &session, self.id, data, now_ms);
                }
            }
            _ => crate::metrics::datagram_dropped("not_datagram"),
        }
    }

    pub fn handle_frame(&mut self, lane: LaneId, frame: ClientFrame, now_ms: u64) -> Result<(), Fatal> {
        let (req, result) = match frame {
            ClientFrame::Hello { version, token, .. } => {
                if self.is_authenticated() {
                    return Err(self.fatal(0, ErrorCode::HELLO_REQUIRED, "hello was already received"));
                }
                return self.hello(lane, version, &token, now_ms);
            }
            _ if !self.is_authenticated() => {
                return Err(self.fatal(0, ErrorCode::HELLO_REQUIRED, "the first frame must be hello"));
            }
            ClientFrame::Join { req, room, since } => {
                let result = self.join(lane, req, &room, since, now_ms);
                // A room stream whose join failed carries nothing else: finish it after the error.
                if result.is_err() && lane != CONTROL && !self.lanes.contains_key(&lane) {
                    let outcome = self.answer(lane, req, result);
                    self.outbox.close_lane(lane);
                    return outcome;
                }
                (req, result)
            }
            ClientFrame::Leave { req, room } => (req, self.leave(lane, req, &room, now_ms)),
            ClientFrame::Publish { req, room, id, data } => {
                (req, self.publish(lane, req, &room, id, data, Vec::new(), now_ms))
            }
            ClientFrame::PublishMentions { req, room, id, data, mentions } => (
                req,
                self.check_mentions(&mentions)
                    .and_then(|()| self.publish(lane, req, &room, id, data, mentions, now_ms)),
            ),
            ClientFrame::Receipts { req, action } => (req, self.receipts(lane, req, action, now_ms)),
            ClientFrame::Notifications { req, action } => (req, self.notifications(lane, req, action, now_ms)),
            ClientFrame::Ping { req } => {
                (req, self.outbox.reply(lane, &ServerFrame::Pong { req, server_time: now_ms }).map_err(Into::into))
            }
            ClientFrame::Refresh { req, token } => return self.refresh(lane, req, &token, now_ms),
            ClientFrame::PresenceSync { req, room } => (req, self.presence_sync(req, &room, now_ms)),
            frame @ (ClientFrame::SetStatus { .. }
            | ClientFrame::Activity {}
            | ClientFrame::Typing { .. }
            | ClientFrame::Privacy { .. }) => {
                self.presence_frame(frame, now_ms);
                return Ok(());
            }
            ClientFrame::History { req, room, before, limit } => {
                (req, self.history(lane, req, &room, Page::Before(before), limit))
            }
            ClientFrame::HistoryAfter { req, room, after, limit } => {
                (req, self.history(lane, req, &room, Page::After(after), limit))
            }
            ClientFrame::Rooms { req } => (req, self.followed_rooms(lane, req)),
            ClientFrame::Cursor { room, position } => (0, self.cursor(lane, &room, position)),
            ClientFrame::TrackPublish { req, room, name, kind, codec, layers } => {
                (req, self.track_publish(lane, req, &room, &name, kind, &codec, layers, now_ms))
            }
            ClientFrame::TrackUnpublish { req, track } => {
                (req, self.track_request(lane, req, track, TrackRequest::Unpublish, now_ms))
            }
            ClientFrame::TrackSubscribe { req, track, max_layer, paused } => {
                (req, self.track_request(lane, req, track, TrackRequest::Subscribe { max_layer, paused }, now_ms))
            }
            ClientFrame::TrackUnsubscribe { req, track } => {
                (req, self.track_request(lane, req, track, TrackRequest::Unsubscribe, now_ms))
            }
            ClientFrame::TrackMute { req, track, muted } => {
                (req, self.track_request(lane, req, track, TrackRequest::Mute(muted), now_ms))
            }
            ClientFrame::IceServers { req } => (req, self.ice_servers(lane, req, now_ms)),
            ClientFrame::Call { req, call, action } => (req, self.call(lane, req, &call, action, now_ms)),
            ClientFrame::CallHistory { req, before, limit } => (req, self.call_history(lane, req, before, limit)),
            ClientFrame::Session { req, session, action } => (req, self.session(lane, req, &session, action, now_ms)),
            ClientFrame::Subscribe { req, pattern, filter, since } => {
                (req, self.subscribe(lane, req, &pattern, filter, since))
            }
            ClientFrame::Unsubscribe { req, pattern } => (req, self.unsubscribe(lane, req, &pattern)),
        };
        self.answer(lane, req, result)
    }

    /// Turns a request's outcome into the frames the client sees.
    fn answer(&self, lane: LaneId, req: u64, result: Result<(), Failure>) -> Result<(), Fatal> {
        match result {
            Ok(()) => Ok(()),
            Err(Failure::Reject(code, message)) => {
                metrics::counter!(crate::metrics::ERRORS_TOTAL, "code" => code.slug()).increment(1);
                self.outbox.reply(lane, &ServerFrame::error(req, code, message)).map_err(|e| self.push_fatal(e))
            }
            Err(Failure::Fatal(code, message)) => Err(self.fatal(req, code, message)),
            Err(Failure::Push(e)) => Err(self.push_fatal(e)),
        }
    }

    /// The stream behind `lane` ended (QUIC): leave the room it carried.
    pub fn lane_closed(&mut self, lane: LaneId, now_ms: u64) {
        if let Some(room) = self.lanes.remove(&lane)
            && let Some(joined) = self.rooms.remove(&room)
        {
            self.leave_room(&room, &joined, now_ms);
        }
        self.outbox.close_lane(lane);
    }

    /// Leaves every room (the user keeps following them) and saves the cursors the client
    /// reported; called once when the connection ends.
    pub fn close(&mut self, now_ms: u64) {
        self.unsubscribe_all();
        let rooms = std::mem::take(&mut self.rooms);
        self.lanes.clear();
        for (room, joined) in &rooms {
            self.detach(room, joined, now_ms);
        }
        if let Some(active) = &self.active {
            self.ctx.awareness.disconnect(self.id, now_ms);
            self.ctx.group_calls.disconnect(&active.user, self.id, now_ms);
            self.ctx.call_service.disconnect(&active.user, self.id, now_ms);
            let sessions: Vec<RoomName> = self.collab.drain().collect();
            self.ctx.collab.disconnect(&active.tenant, &sessions, self.id, now_ms);
            self.ctx.receipts.disconnect(&active.user, self.id);
            self.ctx.notify.disconnected(&active.user, self.id);
        }
        let cursors: Vec<Cursor> =
            self.cursors.drain().map(|(room, position)| Cursor { room, position, updated: now_ms }).collect();
        if let Some(active) = &self.active
            && !cursors.is_empty()
        {
            self.ctx.engine.save_cursors(&active.identity.tenant, &active.identity.user, cursors);
        }
    }

    /// Takes this connection out of a room's fanout and stops its join or replay task.
    fn detach(&self, room: &RoomName, joined: &Joined, now_ms: u64) {
        joined.membership.cancel();
        if let Some(active) = &self.active {
            let key = active.key(room);
            self.ctx.hub.leave(&key, self.id, now_ms);
            self.ctx.calls.leave(&key, self.id, now_ms);
        }
    }

    /// Leaves a room on this connection: fanout and presence.
    fn leave_room(&self, room: &RoomName, joined: &Joined, now_ms: u64) {
        self.detach(room, joined, now_ms);
        if let Some(active) = &self.active {
            self.ctx.awareness.leave(&active.key(room), self.id, now_ms);
        }
    }

    fn hello(&mut self, lane: LaneId, version: u16, token: &str, now_ms: u64) -> Result<(), Fatal> {
        if lane != CONTROL {
            return Err(self.fatal(0, ErrorCode::WRONG_STREAM, "hello belongs on the control stream"));
        }
        if version != PROTOCOL_VERSION {
            let message = format!("protocol version {version} is not supported; this relay speaks {PROTOCOL_VERSION}");
            return Err(self.fatal(0, ErrorCode::UNSUPPORTED_VERSION, message));
        }
        let identity = match self.ctx.authenticate(token, now_ms / 1000) {
            Ok(identity) => identity,
            Err((code, message)) => return Err(self.fatal(0, code, message)),
        };
        let max = self.ctx.limits.max_connections_per_user;
        let Some(slot) = self.ctx.users.acquire(&identity.tenant, &identity.user, max) else {
            let message = format!("user already holds {max} connections");
            return Err(self.fatal(0, ErrorCode::TOO_MANY_CONNECTIONS, message));
        };
        let welcome = ServerFrame::Welcome {
            version: PROTOCOL_VERSION,
            session: format!("{:016x}", rand::random::<u64>()),
            user: identity.user.clone(),
            server_time: now_ms,
            limits: Self::wire_limits(&self.ctx.limits),
        };
        let tenant: Arc<str> = identity.tenant.as_str().into();
        let user = UserKey { tenant: tenant.clone(), user: identity.user.as_str().into() };
        let identity = Arc::new(identity);
        let registration =
            self.ctx.controls.register(identity.clone(), self.id, self.transport, now_ms, self.orders.clone());
        self.active = Some(Active { identity, tenant, user: user.clone(), _slot: slot, registration });
        self.outbox.send(lane, &welcome).map_err(|e| self.push_fatal(e))?;
        self.ctx.call_service.connect(&user, self.id, self.outbox.clone(), now_ms);
        self.ctx.group_calls.connect(&user, self.id, now_ms);
        self.ctx.notify.connected(&user, self.id, self.outbox.clone());
        self.ctx.awareness.connect(user, self.id, self.outbox.clone(), now_ms);
        Ok(())
    }

    fn refresh(&mut self, lane: LaneId, req: u64, token: &str, now_ms: u64) -> Result<(), Fatal> {
        let fresh = match self.ctx.authenticate(token, now_ms / 1000) {
            Ok(identity) => identity,
            Err((code, message)) => return Err(self.fatal(req, code, message)),
        };
        let Some(active) = &mut self.active else {
            return Err(self.fatal(req, ErrorCode::HELLO_REQUIRED, "refresh before hello"));
        };
        if fresh.user != active.identity.user || fresh.tenant != active.identity.tenant {
            return Err(self.fatal(req, ErrorCode::TOKEN_INVALID, "refresh token is for another user or tenant"));
        }
        let expires_at = fresh.expires_at;
        let fresh = Arc::new(fresh);
        active.registration.refresh(fresh.clone());
        active.identity = fresh;
        self.outbox.reply(lane, &ServerFrame::Refreshed { req, expires_at }).map_err(|e| self.push_fatal(e))
    }

    /// The authenticated state; requests only reach here after `hello`.
    fn active(&self) -> Result<&Active, Failure> {
        self.active.as_ref().ok_or_else(|| Failure::Fatal(ErrorCode::HELLO_REQUIRED, "hello first".into()))
    }

    fn join(
        &mut self,
        lane: LaneId,
        req: u64,
        room: &str,
        since: Option<Position>,
        now_ms: u64,
    ) -> Result<(), Failure> {
        let name = parse_room(room)?;
        self.forget_refused();
        let active = self.active()?;
        // A group call's media room: being in the call is the right, whatever the token says.
        let allowed = match crate::call::group_service::media_room_call(&name) {
            Some(call) => self.ctx.group_calls.in_call(&active.user, call),
            None => active.identity.can_join(name.as_str()),
        };
        if !allowed {
            return Err(Failure::reject(ErrorCode::PERMISSION_DENIED, format!("token does not allow joining {room}")));
        }
        if lane != CONTROL && self.lanes.contains_key(&lane) {
            return Err(Failure::Fatal(ErrorCode::WRONG_STREAM, "a room stream carries exactly one room".into()));
        }
        if self.rooms.contains_key(&name) {
            return Err(Failure::reject(ErrorCode::ALREADY_JOINED, format!("{room} is already joined")));
        }
        let max = self.ctx.limits.max_rooms_per_connection as usize;
        if self.rooms.len() >= max {
            return Err(Failure::reject(ErrorCode::TOO_MANY_ROOMS, format!("at most {max} rooms per connection")));
        }
        let membership = Membership::default();
        let subscriber = Subscriber {
            outbox: self.outbox.clone(),
            lane,
            membership: membership.clone(),
            catch_up: self.catch_up.clone(),
        };
        self.jobs.push(Job::Join {
            key: active.key(&name),
            id: self.id,
            subscriber,
            reply: self.outbox.reserve(lane, req),
            since,
            user: active.identity.user.clone(),
            now_ms,
        });
        if lane != CONTROL {
            self.lanes.insert(lane, name.clone());
        }
        if let Some((_, earlier)) = self.joining.insert(name.clone(), (req, Vec::new())) {
            self.send_publishes(earlier);
        }
        self.rooms.insert(name, Joined { lane, membership });
        Ok(())
    }

    /// A join finished: the publishes to its room that waited for it go to the engine.
    pub fn join_settled(&mut self, settled: JoinSettled) {
        if self.joining.get(&settled.room).is_some_and(|(req, _)| *req == settled.req)
            && let Some((_, waiting)) = self.joining.remove(&settled.room)
        {
            self.send_publishes(waiting);
        }
    }

    fn send_publishes(&self, publishes: Vec<(Publish, Done)>) {
        for (publish, done) in publishes {
            self.ctx.engine.publish(publish, done);
        }
    }

    /// Drops the rooms whose join the engine refused (the join task cancelled their membership),
    /// so they can be joined again and do not count against the room limit.
    fn forget_refused(&mut self) {
        let lanes = &mut self.lanes;
        self.rooms.retain(|_, joined| {
            let refused = joined.membership.is_cancelled();
            if refused {
                lanes.remove(&joined.lane);
            }
            !refused
        });
    }

    fn leave(&mut self, lane: LaneId, req: u64, room: &str, now_ms: u64) -> Result<(), Failure> {
        let name = parse_room(room)?;
        let Some(room_lane) = self.rooms.get(&name).map(|j| j.lane) else {
            return Err(Failure::reject(ErrorCode::NOT_JOINED, format!("{room} is not joined")));
        };
        if lane != CONTROL && lane != room_lane {
            return Err(Failure::Fatal(ErrorCode::WRONG_STREAM, format!("leave for {room} on another room's stream")));
        }
        self.unfollow(lane, req, &name, now_ms)
    }

    /// The relay takes this connection out of a room it may no longer be in (a group call's
    /// media room after the user left the call or was removed): as a `leave`, announced by
    /// `left` with `req` 0. Nothing happens if the room is not joined.
    pub fn evict(&mut self, room: &RoomName, reason: &str, now_ms: u64) {
        let Some(lane) = self.rooms.get(room).map(|j| j.lane) else { return };
        tracing::debug!(conn = self.id, %room, reason, "evicted from a room");
        // The outbox only refuses when the connection is closing anyway.
        let _ = self.unfollow(lane, 0, room, now_ms);
    }

    /// Leaves a joined room for good on `lane`, answering `left {req}`: fanout, presence, media,
    /// the followed cursor, and the room's stream.
    fn unfollow(&mut self, lane: LaneId, req: u64, name: &RoomName, now_ms: u64) -> Result<(), Failure> {
        let Some(joined) = self.rooms.remove(name) else { return Ok(()) };
        let room_lane = joined.lane;
        self.leave_room(name, &joined, now_ms);
        // An explicit leave means the user stops following the room.
        self.cursors.remove(name);
        let active = self.active()?;
        self.ctx.engine.forget_cursor(&active.identity.tenant, &active.identity.user, name.clone());
        self.receipts_unfollow(name);
        self.outbox.reply(lane, &ServerFrame::Left { req, room: name.to_string() })?;
        if room_lane != CONTROL {
            self.lanes.remove(&room_lane);
            self.outbox.close_lane(room_lane);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn publish(
        &mut self,
        lane: LaneId,
        req: u64,
        room: &str,
        id: String,
        data: Payload,
        mentions: Vec<String>,
        now_ms: u64,
    ) -> Result<(), Failure> {
        let name = parse_room(room)?;
        if lane != CONTROL && self.lanes.get(&lane) != Some(&name) {
            return Err(Failure::Fatal(ErrorCode::WRONG_STREAM, format!("publish to {room} on another room's stream")));
        }
        let active = self.active()?;
        if !active.identity.can_publish(name.as_str()) {
            let message = format!("token does not allow publishing to {room}");
            return Err(Failure::reject(ErrorCode::PERMISSION_DENIED, message));
        }
        if id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN {
            let message = format!("message id must be 1-{MAX_MESSAGE_ID_LEN} bytes");
            return Err(Failure::reject(ErrorCode::BAD_REQUEST, message));
        }
        let max = self.ctx.limits.max_payload_bytes as usize;
        if data.len() > max {
            let message = format!("payload of {} bytes exceeds {max}", data.len());
            return Err(Failure::reject(ErrorCode::PAYLOAD_TOO_LARGE, message));
        }
        // JSON text only: other bytes are binary and reach JSON clients as `$binary`.
        if crate::proto::codec::replace_lone_surrogates(&data.0).is_some() && data.as_json().is_some() {
            return Err(Failure::reject(ErrorCode::BAD_REQUEST, LONE_SURROGATE));
        }
        let key = active.key(&name);
        let from = active.identity.user.clone();
        if !self.publish_bucket.try_take(now_ms) {
            return Err(Failure::reject(ErrorCode::RATE_LIMITED, "publish rate limit exceeded"));
        }
        let mut reply = self.outbox.reserve(lane, req);
        let room = name.to_string();
        let ack_id = id.clone();
        let (receipts, receipt_key, user) = (self.ctx.receipts.clone(), key.clone(), from.clone());
        // Answered once the message is durable (or refused); the outbox may be gone by then.
        let done = Done::new(move |outcome| {
            let frame = match outcome {
                Ok(accepted) => {
                    // Sending marks the room read up to the message (docs/receipts.md).
                    receipts.published(&receipt_key, &user, accepted.position, &mentions);
                    if accepted.duplicate {
                        metrics::counter!(crate::metrics::DUPLICATES_TOTAL).increment(1);
                    }
                    ServerFrame::Ack { req, room, id: ack_id, position: accepted.position }
                }
                Err(err) => {
                    metrics::counter!(crate::metrics::ERRORS_TOTAL, "code" => err.code().slug()).increment(1);
                    ServerFrame::error(req, err.code(), err.to_string())
                }
            };
            let _ = reply.send(&frame);
        });
        let publish = Publish { key, from, id, data, now_ms };
        match self.joining.get_mut(&name) {
            Some((_, waiting)) => waiting.push((publish, done)),
            None => self.ctx.engine.publish(publish, done),
        }
        Ok(())
    }

    fn history(&mut self, lane: LaneId, req: u64, room: &str, page: Page, limit: u32) -> Result<(), Failure> {
        let name = parse_room(room)?;
        self.forget_refused();
        let active = self.active()?;
        if !active.identity.can_join(name.as_str()) {
            let message = format!("token does not allow reading {room}");
            return Err(Failure::reject(ErrorCode::PERMISSION_DENIED, message));
        }
        if limit == 0 || limit > MAX_HISTORY_PAGE {
            return Err(Failure::reject(ErrorCode::BAD_REQUEST, format!("limit must be 1-{MAX_HISTORY_PAGE}")));
        }
        let key = active.key(&name);
        let max_bytes = self.ctx.limits.max_frame_bytes as usize;
        self.jobs.push(Job::History { key, reply: self.outbox.reserve(lane, req), page, limit, max_bytes });
        Ok(())
    }

    fn followed_rooms(&mut self, lane: LaneId, req: u64) -> Result<(), Failure> {
        let identity = &self.active()?.identity;
        let (tenant, user) = (identity.tenant.clone(), identity.user.clone());
        self.jobs.push(Job::Rooms { tenant, user, reply: self.outbox.reserve(lane, req) });
        Ok(())
    }

    /// The ICE servers with TURN credentials for this connection's user and tenant.
    fn ice_servers(&self, lane: LaneId, req: u64, now_ms: u64) -> Result<(), Failure> {
        let identity = &self.active()?.identity;
        let (servers, expires_at) = self.ctx.ice.servers(&identity.tenant, &identity.user, now_ms / 1000);
        Ok(self.outbox.reply(lane, &ServerFrame::IceServers { req, servers, expires_at })?)
    }

    /// A call action, 1:1 (`crate::call::service`) or group (`crate::call::group_service`);
    /// answered there, before the events it causes.
    fn call(
        &mut self,
        lane: LaneId,
        req: u64,
        call: &str,
        action: crate::proto::CallAction,
        now_ms: u64,
    ) -> Result<(), Failure> {
        if !self.call_bucket.try_take(now_ms) {
            return Err(Failure::reject(ErrorCode::RATE_LIMITED, "call frames above calls.rate"));
        }
        let active = self.active()?;
        let who = crate::call::Requester {
            identity: &active.identity,
            user: &active.user,
            device: self.id,
            outbox: &self.outbox,
            lane,
            req,
        };
        let group = &self.ctx.group_calls;
        let result = if group.handles(call, &action) {
            group.act(who, call, action, now_ms).map_err(|err| (err.code(), err.to_string()))
        } else {
            self.ctx.call_service.act(who, call, action, now_ms).map_err(|err| (err.code(), err.to_string()))
        };
        result.map_err(|(code, message)| Failure::reject(code, message))
    }

    /// A collaborative session action (`crate::collab::service`); answered there, in order with
    /// the session's events.
    fn session(
        &mut self,
        lane: LaneId,
        req: u64,
        session: &str,
        action: SessionAction,
        now_ms: u64,
    ) -> Result<(), Failure> {
        if !self.session_bucket.try_take(now_ms) {
            return Err(Failure::reject(ErrorCode::RATE_LIMITED, "session frames above sessions.rate"));
        }
        let (joins, leaves) = match &action {
            SessionAction::Create { .. } | SessionAction::CreateYjs { .. } | SessionAction::Join { .. } => {
                (true, false)
            }
            SessionAction::Leave {} => (false, true),
            _ => (false, false),
        };
        let active = self.active()?;
        let who = crate::collab::Requester {
            identity: &active.identity,
            device: self.id,
            outbox: &self.outbox,
            reply: self.outbox.reserve(lane, req),
        };
        self.ctx.collab.act(who, session, action, now_ms).map_err(|(code, message)| Failure::reject(code, message))?;
        if let Ok(name) = RoomName::parse(session) {
            if joins {
                self.collab.insert(name);
            } else if leaves {
                self.collab.remove(&name);
            }
        }
        Ok(())
    }

    /// A page of the user's own call history; read by a job, answered in request order.
    fn call_history(&mut self, lane: LaneId, req: u64, before: Option<String>, limit: u32) -> Result<(), Failure> {
        if limit == 0 || limit > MAX_CALL_HISTORY_PAGE {
            return Err(Failure::reject(ErrorCode::BAD_REQUEST, format!("limit must be 1-{MAX_CALL_HISTORY_PAGE}")));
        }
        let before = before
            .as_deref()
            .map(str::parse::<crate::call::history::HistoryCursor>)
            .transpose()
            .map_err(|err| Failure::reject(ErrorCode::BAD_REQUEST, err.to_string()))?;
        let user = self.active()?.user.clone();
        let max_bytes = self.ctx.limits.max_frame_bytes as usize;
        self.jobs.push(Job::CallHistory { user, reply: self.outbox.reserve(lane, req), before, limit, max_bytes });
        Ok(())
    }

    fn cursor(&mut self, lane: LaneId, room: &str, position: Position) -> Result<(), Failure> {
        let name = parse_room(room)?;
        self.forget_refused();
        let Some(room_lane) = self.rooms.get(&name).map(|j| j.lane) else {
            return Err(Failure::reject(ErrorCode::NOT_JOINED, format!("{room} is not joined")));
        };
        if lane != CONTROL && lane != room_lane {
            return Err(Failure::Fatal(ErrorCode::WRONG_STREAM, format!("cursor for {room} on another room's stream")));
        }
        let entry = self.cursors.entry(name.clone()).or_insert(position);
        // Within an epoch cursors only move forward; a new epoch replaces the old position.
        if entry.epoch != position.epoch || position.offset > entry.offset {
            *entry = position;
        }
        let active = self.active()?;
        self.ctx.receipts.confirmed(&active.key(&name), &active.identity.user, position);
        Ok(())
    }

    /// Fails the connection with `code`: queues the error frame and returns the fatal error.
    pub fn fail(&self, code: ErrorCode, message: impl Into<String>) -> Fatal {
        self.fatal(0, code, message)
    }

    /// Queues the error frame of a fatal error (on the control lane, which every transport
    /// reads) and returns it for the caller to close the connection.
    fn fatal(&self, req: u64, code: ErrorCode, message: impl Into<String>) -> Fatal {
        let message = message.into();
        metrics::counter!(crate::metrics::ERRORS_TOTAL, "code" => code.slug()).increment(1);
        let _ = self.outbox.send(CONTROL, &ServerFrame::error(req, code, message.clone()));
        Fatal { code, message }
    }

    fn push_fatal(&self, err: PushError) -> Fatal {
        let code = match self.outbox.closing() {
            Some(crate::outbox::CloseReason::Error(code)) => code,
            _ => ErrorCode::SLOW_CONSUMER,
        };
        Fatal { code, message: err.to_string() }
    }
}
