//! The per-client state machine: hello and authentication, joins, publishes, limits.
//!
//! A session consumes decoded-from-bytes frames tagged with the lane they arrived on and answers
//! by queuing frames in its outbox; it never touches a socket, and time is passed in, so it is
//! tested with plain values. The rule for lanes: answers go to the lane the request came on;
//! a room's messages go to the lane its `join` came on (on QUIC, the room's own stream).

pub mod limits;

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::{Identity, Verifier};
use crate::config::LimitsConfig;
use crate::hub::{Hub, RoomKey, Subscriber};
use crate::outbox::{CONTROL, LaneId, Outbox, PushError};
use crate::proto::{ClientFrame, ErrorCode, PROTOCOL_VERSION, Payload, Position, RoomName, ServerFrame, WireLimits};
use limits::{ConnectionSlot, TokenBucket, UserConnections};

/// Longest client message id, in bytes.
pub const MAX_MESSAGE_ID_LEN: usize = 64;

/// What every session of one relay shares.
pub struct SessionContext {
    pub hub: Arc<Hub>,
    pub verifier: Arc<Verifier>,
    pub limits: LimitsConfig,
    pub users: Arc<UserConnections>,
}

/// An error after which the connection is closed with `code`. The session has already queued
/// the matching `error` frame; the caller closes the outbox (flushing it) and the transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Fatal {
    pub code: ErrorCode,
    pub message: String,
}

enum State {
    AwaitingHello,
    Active { identity: Identity, tenant: Arc<str>, _slot: ConnectionSlot },
}

pub struct Session {
    id: u64,
    ctx: Arc<SessionContext>,
    outbox: Arc<Outbox>,
    state: State,
    rooms: HashMap<RoomName, LaneId>,
    lanes: HashMap<LaneId, RoomName>,
    publish_bucket: TokenBucket,
}

/// A request-level failure: reported on the request's lane, the connection stays open.
struct Reject(ErrorCode, String);

impl Reject {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Reject(code, message.into())
    }
}

impl Session {
    /// `id` is unique within the relay (it identifies the subscriber in rooms).
    pub fn new(id: u64, ctx: Arc<SessionContext>, outbox: Arc<Outbox>, now_ms: u64) -> Session {
        let bucket = TokenBucket::new(ctx.limits.publish_rate, ctx.limits.publish_burst, now_ms);
        Session {
            id,
            ctx,
            outbox,
            state: State::AwaitingHello,
            rooms: HashMap::new(),
            lanes: HashMap::new(),
            publish_bucket: bucket,
        }
    }

    pub fn outbox(&self) -> &Arc<Outbox> {
        &self.outbox
    }

    pub fn identity(&self) -> Option<&Identity> {
        match &self.state {
            State::Active { identity, .. } => Some(identity),
            State::AwaitingHello => None,
        }
    }

    pub fn is_authenticated(&self) -> bool {
        self.identity().is_some()
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
            Err(err) => return Err(self.fatal(0, err.code(), err.to_string())),
        };
        self.handle_frame(lane, frame, now_ms)
    }

    pub fn handle_frame(&mut self, lane: LaneId, frame: ClientFrame, now_ms: u64) -> Result<(), Fatal> {
        if let ClientFrame::Hello { version, token, .. } = &frame {
            if self.is_authenticated() {
                return Err(self.fatal(0, ErrorCode::HELLO_REQUIRED, "hello was already received"));
            }
            return self.hello(lane, *version, token, now_ms);
        }
        if !self.is_authenticated() {
            return Err(self.fatal(0, ErrorCode::HELLO_REQUIRED, "the first frame must be hello"));
        }
        let (req, result) = match frame {
            ClientFrame::Hello { .. } => return Ok(()),
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
            ClientFrame::Publish { req, room, id, data } => (req, self.publish(lane, req, &room, id, data, now_ms)),
            ClientFrame::Ping { req } => {
                (req, self.send(lane, &ServerFrame::Pong { req, server_time: now_ms }).map_err(Into::into))
            }
            ClientFrame::Refresh { req, token } => return self.refresh(lane, req, &token, now_ms),
        };
        self.answer(lane, req, result)
    }

    /// Turns a request's outcome into the frames the client sees.
    fn answer(&self, lane: LaneId, req: u64, result: Result<(), Outcome>) -> Result<(), Fatal> {
        match result {
            Ok(()) => Ok(()),
            Err(Outcome::Reject(Reject(code, message))) => {
                metrics::counter!(crate::metrics::ERRORS_TOTAL, "code" => code.slug()).increment(1);
                self.send(lane, &ServerFrame::error(req, code, message)).map_err(|e| self.push_fatal(e))
            }
            Err(Outcome::Fatal(code, message)) => Err(self.fatal(req, code, message)),
            Err(Outcome::Push(e)) => Err(self.push_fatal(e)),
        }
    }

    /// The stream behind `lane` ended (QUIC): leave the room it carried.
    pub fn lane_closed(&mut self, lane: LaneId, now_ms: u64) {
        if let Some(room) = self.lanes.remove(&lane) {
            self.rooms.remove(&room);
            if let Some(key) = self.key(&room) {
                self.ctx.hub.leave(&key, self.id, now_ms);
            }
        }
        self.outbox.close_lane(lane);
    }

    /// Leaves every room; called once when the connection ends.
    pub fn close(&mut self, now_ms: u64) {
        for room in std::mem::take(&mut self.rooms).into_keys() {
            if let Some(key) = self.key(&room) {
                self.ctx.hub.leave(&key, self.id, now_ms);
            }
        }
        self.lanes.clear();
    }

    fn hello(&mut self, lane: LaneId, version: u16, token: &str, now_ms: u64) -> Result<(), Fatal> {
        if lane != CONTROL {
            return Err(self.fatal(0, ErrorCode::WRONG_STREAM, "hello belongs on the control stream"));
        }
        if version != PROTOCOL_VERSION {
            let message = format!("protocol version {version} is not supported; this relay speaks {PROTOCOL_VERSION}");
            return Err(self.fatal(0, ErrorCode::UNSUPPORTED_VERSION, message));
        }
        let identity = match self.ctx.verifier.verify(token, now_ms / 1000) {
            Ok(identity) => identity,
            Err(err) => return Err(self.fatal(0, err.code(), err.to_string())),
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
        self.state = State::Active { identity, tenant, _slot: slot };
        self.send(lane, &welcome).map_err(|e| self.push_fatal(e))
    }

    fn refresh(&mut self, lane: LaneId, req: u64, token: &str, now_ms: u64) -> Result<(), Fatal> {
        let fresh = match self.ctx.verifier.verify(token, now_ms / 1000) {
            Ok(identity) => identity,
            Err(err) => return Err(self.fatal(req, err.code(), err.to_string())),
        };
        let State::Active { identity, .. } = &mut self.state else {
            return Err(self.fatal(req, ErrorCode::HELLO_REQUIRED, "refresh before hello"));
        };
        if fresh.user != identity.user || fresh.tenant != identity.tenant {
            return Err(self.fatal(req, ErrorCode::TOKEN_INVALID, "refresh token is for another user or tenant"));
        }
        let expires_at = fresh.expires_at;
        *identity = fresh;
        self.send(lane, &ServerFrame::Refreshed { req, expires_at }).map_err(|e| self.push_fatal(e))
    }

    fn join(
        &mut self,
        lane: LaneId,
        req: u64,
        room: &str,
        since: Option<Position>,
        now_ms: u64,
    ) -> Result<(), Outcome> {
        let name = RoomName::parse(room).map_err(|code| Reject::new(code, format!("invalid room name {room:?}")))?;
        let identity = self.identity().ok_or(Outcome::Fatal(ErrorCode::HELLO_REQUIRED, String::new()))?;
        if !identity.can_join(name.as_str()) {
            return Err(
                Reject::new(ErrorCode::PERMISSION_DENIED, format!("token does not allow joining {room}")).into()
            );
        }
        if lane != CONTROL && self.lanes.contains_key(&lane) {
            return Err(Outcome::Fatal(ErrorCode::WRONG_STREAM, "a room stream carries exactly one room".into()));
        }
        if self.rooms.contains_key(&name) {
            return Err(Reject::new(ErrorCode::ALREADY_JOINED, format!("{room} is already joined")).into());
        }
        let max = self.ctx.limits.max_rooms_per_connection as usize;
        if self.rooms.len() >= max {
            return Err(Reject::new(ErrorCode::TOO_MANY_ROOMS, format!("at most {max} rooms per connection")).into());
        }
        let key = self.key(&name).ok_or(Outcome::Fatal(ErrorCode::HELLO_REQUIRED, String::new()))?;
        let subscriber = Subscriber { outbox: self.outbox.clone(), lane };
        self.ctx.hub.join(&key, self.id, subscriber, req, since, now_ms)?;
        if lane != CONTROL {
            self.lanes.insert(lane, name.clone());
        }
        self.rooms.insert(name, lane);
        Ok(())
    }

    fn leave(&mut self, lane: LaneId, req: u64, room: &str, now_ms: u64) -> Result<(), Outcome> {
        let name = RoomName::parse(room).map_err(|code| Reject::new(code, format!("invalid room name {room:?}")))?;
        let Some(&room_lane) = self.rooms.get(&name) else {
            return Err(Reject::new(ErrorCode::NOT_JOINED, format!("{room} is not joined")).into());
        };
        if lane != CONTROL && lane != room_lane {
            return Err(Outcome::Fatal(ErrorCode::WRONG_STREAM, format!("leave for {room} on another room's stream")));
        }
        if let Some(key) = self.key(&name) {
            self.ctx.hub.leave(&key, self.id, now_ms);
        }
        self.rooms.remove(&name);
        self.send(lane, &ServerFrame::Left { req, room: name.to_string() })?;
        if room_lane != CONTROL {
            self.lanes.remove(&room_lane);
            self.outbox.close_lane(room_lane);
        }
        Ok(())
    }

    fn publish(
        &mut self,
        lane: LaneId,
        req: u64,
        room: &str,
        id: String,
        data: Payload,
        now_ms: u64,
    ) -> Result<(), Outcome> {
        let name = RoomName::parse(room).map_err(|code| Reject::new(code, format!("invalid room name {room:?}")))?;
        if lane != CONTROL && self.lanes.get(&lane) != Some(&name) {
            return Err(Outcome::Fatal(ErrorCode::WRONG_STREAM, format!("publish to {room} on another room's stream")));
        }
        let identity = self.identity().ok_or(Outcome::Fatal(ErrorCode::HELLO_REQUIRED, String::new()))?;
        let from = identity.user.clone();
        if !identity.can_publish(name.as_str()) {
            return Err(Reject::new(
                ErrorCode::PERMISSION_DENIED,
                format!("token does not allow publishing to {room}"),
            )
            .into());
        }
        if id.is_empty() || id.len() > MAX_MESSAGE_ID_LEN {
            return Err(Reject::new(
                ErrorCode::BAD_REQUEST,
                format!("message id must be 1-{MAX_MESSAGE_ID_LEN} bytes"),
            )
            .into());
        }
        let max = self.ctx.limits.max_payload_bytes as usize;
        if data.len() > max {
            return Err(Reject::new(
                ErrorCode::PAYLOAD_TOO_LARGE,
                format!("payload of {} bytes exceeds {max}", data.len()),
            )
            .into());
        }
        if !self.publish_bucket.try_take(now_ms) {
            return Err(Reject::new(ErrorCode::RATE_LIMITED, "publish rate limit exceeded").into());
        }
        let key = self.key(&name).ok_or(Outcome::Fatal(ErrorCode::HELLO_REQUIRED, String::new()))?;
        let published = self.ctx.hub.publish(&key, &from, &id, data, now_ms);
        let ack = ServerFrame::Ack { req, room: name.to_string(), id, position: published.position };
        self.send(lane, &ack)?;
        Ok(())
    }

    fn key(&self, room: &RoomName) -> Option<RoomKey> {
        match &self.state {
            State::Active { tenant, .. } => Some(RoomKey { tenant: tenant.clone(), room: room.clone() }),
            State::AwaitingHello => None,
        }
    }

    fn send(&self, lane: LaneId, frame: &ServerFrame) -> Result<(), PushError> {
        self.outbox.push(lane, self.outbox.codec().frame(frame))
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
        let _ = self.send(CONTROL, &ServerFrame::error(req, code, message.clone()));
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

enum Outcome {
    Reject(Reject),
    Fatal(ErrorCode, String),
    Push(PushError),
}

impl From<Reject> for Outcome {
    fn from(r: Reject) -> Self {
        Outcome::Reject(r)
    }
}

impl From<PushError> for Outcome {
    fn from(e: PushError) -> Self {
        Outcome::Push(e)
    }
}
