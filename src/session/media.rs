//! The session's side of calls (docs/media.md): the track requests, checked against the
//! token's capabilities (or, in a group call's media room, the call's membership) and the rooms
//! this connection joined, then handed to the relay-wide
//! [`crate::media::calls::Calls`]. Media itself never passes here: it travels on
//! unidirectional streams that the transport hands to the calls directly.

use super::{Failure, Session, parse_room};
use crate::media::calls::{MediaError, Member};
use crate::outbox::LaneId;
use crate::proto::media::{LayerInfo, TrackKind};
use crate::proto::{ErrorCode, RoomName, ServerFrame};

impl From<MediaError> for Failure {
    fn from(e: MediaError) -> Self {
        Failure::reject(e.code(), e.to_string())
    }
}

/// A track request other than publish.
pub(super) enum TrackRequest {
    Unpublish,
    Subscribe { max_layer: u8, paused: bool },
    Unsubscribe,
    Mute(bool),
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn track_publish(
        &mut self,
        lane: LaneId,
        req: u64,
        room: &str,
        name: &str,
        kind: TrackKind,
        codec: &str,
        layers: Vec<LayerInfo>,
        now_ms: u64,
    ) -> Result<(), Failure> {
        let room_name = parse_room(room)?;
        // Not joined (or its join was refused): `not_joined`, before the capability check.
        let publisher = self.member(&room_name)?;
        let active = self.active()?;
        // In a group call's media room, being in the call is the right (docs/media.md).
        let allowed = match crate::call::group_service::media_room_call(&room_name) {
            Some(call) => self.ctx.group_calls.in_call(&active.user, call),
            None => active.identity.can_publish_media(room_name.as_str()),
        };
        if !allowed {
            return Err(Failure::reject(ErrorCode::PERMISSION_DENIED, format!("token does not allow media in {room}")));
        }
        let key = active.key(&room_name);
        let track = self.ctx.calls.publish(&key, self.id, publisher, name, kind, codec, layers, now_ms)?;
        self.outbox.reply(lane, &ServerFrame::TrackPublished { req, room: room.into(), track })?;
        Ok(())
    }

    /// This connection as a participant of a joined room's call.
    fn member(&self, room: &RoomName) -> Result<Member, Failure> {
        let active = self.active()?;
        let joined = self
            .rooms
            .get(room)
            .filter(|j| !j.membership.is_cancelled())
            .ok_or_else(|| Failure::reject(ErrorCode::NOT_JOINED, format!("{room} is not joined")))?;
        Ok(Member {
            user: active.identity.user.as_str().into(),
            outbox: self.outbox.clone(),
            lane: joined.lane,
            media: self.media.clone(),
        })
    }

    pub(super) fn track_request(
        &mut self,
        lane: LaneId,
        req: u64,
        track: u64,
        request: TrackRequest,
        now_ms: u64,
    ) -> Result<(), Failure> {
        let calls = &self.ctx.calls;
        match request {
            TrackRequest::Unpublish => calls.unpublish(self.id, track, now_ms)?,
            TrackRequest::Subscribe { max_layer, paused } => {
                // Only tracks of a room this connection joined, in its own tenant.
                let active = self.active()?;
                let room = calls
                    .track_room(track)
                    .filter(|key| *key.tenant == *active.tenant)
                    .ok_or(MediaError::UnknownTrack(track))?;
                let member = self.member(&room.room).map_err(|_| MediaError::UnknownTrack(track))?;
                calls.subscribe(self.id, track, member, max_layer, paused, now_ms)?
            }
            TrackRequest::Unsubscribe => calls.unsubscribe(self.id, track)?,
            TrackRequest::Mute(muted) => calls.mute(self.id, track, muted)?,
        }
        self.outbox.reply(lane, &ServerFrame::TrackOk { req, track })?;
        Ok(())
    }
}
