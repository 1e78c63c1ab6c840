//! Read marks, unread counts and receipts in the Rust client (docs/receipts.md): the `receipts`
//! requests and `publish_mentions`. Updates (`req` 0) arrive as [`Event::Receipts`].

use super::{Client, ClientError, Event, Route, unexpected};
use crate::proto::{ClientFrame, Payload, Position, ReadMark, ReceiptAction, ReceiptEvent, RoomUnread, ServerFrame};

/// Unread counts: every followed room (the answer to `sync`) or the rooms that changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unread {
    pub full: bool,
    pub rooms: Vec<RoomUnread>,
    pub total: u64,
    pub mentions: u64,
}

impl Unread {
    /// The entry of `room`, if listed.
    pub fn room(&self, room: &str) -> Option<&RoomUnread> {
        self.rooms.iter().find(|r| r.room == room)
    }
}

impl Client {
    async fn receipts_request(&self, action: ReceiptAction) -> Result<ReceiptEvent, ClientError> {
        match self.request(Route::Control, |req| ClientFrame::Receipts { req, action }).await? {
            ServerFrame::Receipts { event, .. } => Ok(event),
            other => Err(unexpected("receipts", &other)),
        }
    }

    /// The unread counts of every followed room; this connection then gets updates. A user with
    /// more rooms than fit in one frame gets the rest at once as [`Event::Receipts`] updates.
    pub async fn sync_unread(&self) -> Result<Unread, ClientError> {
        match self.receipts_request(ReceiptAction::Sync {}).await? {
            ReceiptEvent::Unread { full, rooms, total, mentions } => Ok(Unread { full, rooms, total, mentions }),
            other => Err(ClientError::Protocol(format!("expected unread, got {other:?}"))),
        }
    }

    /// Marks rooms read up to the given positions; returns once durable.
    pub async fn mark_read(&self, marks: &[(&str, Position)]) -> Result<(), ClientError> {
        let marks = marks.iter().map(|(room, position)| ReadMark { room: (*room).to_owned(), position: *position });
        self.receipts_request(ReceiptAction::Read { marks: marks.collect() }).await.map(drop)
    }

    /// A room's receipts now (a [`ReceiptEvent::Receipts`]).
    pub async fn receipt_status(&self, room: &str) -> Result<ReceiptEvent, ClientError> {
        self.receipts_request(ReceiptAction::Status { room: room.to_owned() }).await
    }

    /// Whether other members see this user's reads.
    pub async fn share_reads(&self, share_read: bool) -> Result<(), ClientError> {
        self.receipts_request(ReceiptAction::Privacy { share_read }).await.map(drop)
    }

    /// Publishes naming the users it mentions; returns the message's position.
    pub async fn publish_mentions(
        &self,
        room: &str,
        id: &str,
        data: impl Into<Payload>,
        mentions: &[&str],
    ) -> Result<Position, ClientError> {
        let (data, mentions) = (data.into(), mentions.iter().map(|m| (*m).to_owned()).collect());
        let frame =
            |req| ClientFrame::PublishMentions { req, room: room.to_owned(), id: id.to_owned(), data, mentions };
        match self.request(Route::Room(room), frame).await? {
            ServerFrame::Ack { position, .. } => Ok(position),
            other => Err(unexpected("ack", &other)),
        }
    }

    /// The next receipts update (`unread` or `receipts`), skipping other events.
    pub async fn next_receipts_event(&mut self) -> Result<ReceiptEvent, ClientError> {
        self.next_of(|event| match event {
            Event::Receipts(e) => Some(e),
            _ => None,
        })
        .await
    }
}
