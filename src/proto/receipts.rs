//! The wire form of read positions, unread counts and receipts (docs/receipts.md): what a
//! `receipts` frame asks (`ReceiptAction`) and what a relay's `receipts` frame tells
//! (`ReceiptEvent`). One frame type per direction with a nested action or event, as sessions do
//! (`super::collab`): this feature grows by appending actions and events here. The rules (marks
//! never move back, who counts as a member, the aggregation interval) are `crate::receipts`'.

use serde::{Deserialize, Serialize};

use super::frame::Position;

/// "This user has read `room` up to `position`" (inclusive), one entry of a `read` action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    pub room: String,
    pub position: Position,
}

/// What a client asks in a `receipts` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptAction {
    /// The unread counts of every room this user follows, answered by `unread` with `full`
    /// true. From then on this connection also gets updates (`req` 0): `unread` whenever a
    /// count changes (a message in a followed room, a read on another device), and `receipts`
    /// of the followed rooms whose members moved.
    Sync {},
    /// Marks rooms read up to the given positions (one entry per room; at most
    /// `receipts.max_marks` entries). A mark below the user's current one is ignored (marks
    /// never move back). Answered by `ok` once durable.
    Read { marks: Vec<ReadMark> },
    /// A room's receipt state now: answered by `receipts` for a joined or followed room.
    Status { room: String },
    /// Whether this user's reads are shown to others. With `share_read` false, other members see
    /// this user's deliveries but never its reads; its own devices still sync. Kept across
    /// connections and restarts. Answered by `ok`.
    Privacy { share_read: bool },
}

/// One room's unread state for this user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomUnread {
    pub room: String,
    /// The user's read mark (offset 0: nothing read in this epoch).
    pub read: Position,
    /// The room's last position known to the relay.
    pub top: Position,
    /// Messages after `read` up to `top`, the user's own excluded.
    pub unread: u64,
    /// Of those, the ones whose publisher named this user in `mentions`.
    pub mentions: u64,
}

/// One member's progress in a room, in a `receipts` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberReceipt {
    pub user: String,
    /// The highest offset one of the member's devices confirmed having (`cursor`), or read.
    pub delivered: u64,
    /// The member's read mark; absent when the member does not share reads.
    pub read: Option<u64>,
}

/// What the relay tells in a `receipts` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptEvent {
    /// The request `req` was done.
    Ok {},
    /// Unread counts: every followed room (`full`, the answer to `sync`; rooms that do not fit
    /// in `limits.max_frame_bytes` follow at once as updates) or the rooms that changed (`req`
    /// 0; each entry replaces the client's one). `total` and `mentions` are the
    /// sums over every followed room, always complete.
    Unread { full: bool, rooms: Vec<RoomUnread>, total: u64, mentions: u64 },
    /// A room's receipts (the answer to `status`, or `req` 0 at most once per
    /// `receipts.interval_ms` per room, to the synced connections of the room's members). Offsets are of
    /// `epoch`. `delivered_all`/`read_all`: every member has received / read up to there (reads:
    /// every member who shares them). `members`: per member progress, only in rooms of at most
    /// `receipts.max_detailed_members` members (in updates, only the members that moved);
    /// `count` is the number of members.
    Receipts { room: String, epoch: u64, delivered_all: u64, read_all: u64, count: u32, members: Vec<MemberReceipt> },
}
