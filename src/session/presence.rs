//! The session's side of presence and typing: per-device rate limit, then the relay-wide
//! [`crate::hub::awareness::Awareness`] service. These frames have no answer (except
//! `presence_sync`), so a frame over the rate limit is dropped and counted, not answered.

use super::{Failure, Session, parse_room};
use crate::proto::{ClientFrame, ErrorCode};

impl Session {
    /// `set_status`, `activity`, `typing` and `privacy`, from a stream or a datagram.
    pub(super) fn presence_frame(&mut self, frame: ClientFrame, now_ms: u64) {
        if !self.presence_bucket.try_take(now_ms) {
            return crate::hub::awareness::rate_limited();
        }
        let awareness = &self.ctx.awareness;
        match frame {
            ClientFrame::SetStatus { status, custom } => awareness.set_status(self.id, status, custom, now_ms),
            ClientFrame::Activity {} => awareness.activity(self.id, now_ms),
            ClientFrame::Typing { room, typing } => {
                // A room this device did not join is ignored by the service, like a bad name.
                if let Ok(room) = parse_room(&room) {
                    awareness.typing(&room, self.id, typing, now_ms);
                }
            }
            ClientFrame::Privacy { hide_presence, hide_typing } => {
                awareness.privacy(self.id, hide_presence, hide_typing, now_ms)
            }
            _ => {}
        }
    }

    /// `presence_sync`: the room's snapshot again.
    /// The snapshot goes on the room's own lane (behind the room's earlier frames), whichever
    /// stream asked; clients match it by `req`.
    pub(super) fn presence_sync(&mut self, req: u64, room: &str, now_ms: u64) -> Result<(), Failure> {
        let name = parse_room(room)?;
        if !self.presence_bucket.try_take(now_ms) {
            return Err(Failure::reject(ErrorCode::RATE_LIMITED, "presence rate limit exceeded"));
        }
        if !self.ctx.awareness.sync(&name, self.id, req)? {
            return Err(Failure::reject(ErrorCode::NOT_JOINED, format!("{room} is not joined")));
        }
        Ok(())
    }
}
