//! Protocol v1: frames, codecs and stream framing, without IO.
//!
//! Golden byte vectors in `tests/golden/` pin the wire format of both codecs (see
//! `tests/golden.rs`), so clients in other languages can be written against `docs/protocol.md`.

pub mod call;
pub mod codec;
pub mod codes;
pub mod collab;
pub mod frame;
pub mod media;
pub mod notify;
pub mod payload;
pub mod presence;
pub mod receipts;
pub mod room;

pub use call::{
    CallAction, CallEndReason, CallEvent, CallMedia, CallSide, CallState, GroupEndReason, GroupParticipant, GroupRole,
    GroupStatus, InviteOverReason, MuteKind, QualityFlag,
};
pub use codec::{Codec, DecodeError, EncodeOnce, FrameReader, WireFrame};
pub use codes::ErrorCode;
pub use collab::{
    SessionAction, SessionEnd, SessionEvent, SessionMember, SessionPatch, SessionRole, SessionSnapshot, SessionStatus,
};
pub use frame::{
    ClientFrame, HistoryEntry, IceServer, PROTOCOL_VERSION, Position, RoomCursor, ServerFrame, WireLimits,
};
pub use notify::{Mute, Notification, NotifyAction, NotifyEvent, NotifyPrefs, Priority, PushPlatform, QuietHours};
pub use payload::Payload;
pub use presence::{PresenceEntry, Status};
pub use receipts::{MemberReceipt, ReadMark, ReceiptAction, ReceiptEvent, RoomUnread};
pub use room::RoomName;

/// Whether a received datagram is a heartbeat: empty, or zero bytes only (a padded one, or the
/// relay's one byte). QUIC acknowledges it; it carries no frame (docs/protocol.md, "QUIC
/// datagrams"). The relay's transport answers a client's; clients count the relay's.
pub fn is_heartbeat(datagram: &[u8]) -> bool {
    datagram.iter().all(|b| *b == 0)
}
