//! Helpers for receipts tests (one relay or a region): following `unread` updates until a
//! condition holds, a room's counts, a room's receipts as `status` answers them.
//! Included with `#[path = "common/receipts.rs"] mod receipts_help;` beside `mod common;`.
#![allow(dead_code)]

use edgerelay::client::{Client, Unread};
use edgerelay::proto::{MemberReceipt, ReceiptEvent};

use crate::common::within;

/// Reads `unread` updates until `done` holds for the latest totals and entries seen.
pub async fn unread_until(client: &mut Client, what: &str, done: impl Fn(&Unread) -> bool) -> Unread {
    let mut view = Unread { full: false, rooms: Vec::new(), total: 0, mentions: 0 };
    within(what, async {
        loop {
            if let ReceiptEvent::Unread { rooms, total, mentions, .. } = client.next_receipts_event().await.unwrap() {
                for room in rooms {
                    view.rooms.retain(|r| r.room != room.room);
                    view.rooms.push(room);
                }
                (view.total, view.mentions) = (total, mentions);
                if done(&view) {
                    return view;
                }
            }
        }
    })
    .await
}

/// (unread, mentions) of a room in an `Unread`.
pub fn counts(unread: &Unread, room: &str) -> Option<(u64, u64)> {
    unread.room(room).map(|r| (r.unread, r.mentions))
}

/// A room's receipts as the status answer gives them: (delivered_all, read_all, members).
pub async fn status(client: &Client, room: &str) -> (u64, u64, Vec<MemberReceipt>) {
    match client.receipt_status(room).await.expect("status") {
        ReceiptEvent::Receipts { delivered_all, read_all, mut members, .. } => {
            members.sort_by(|a, b| a.user.cmp(&b.user));
            (delivered_all, read_all, members)
        }
        other => panic!("expected receipts, got {other:?}"),
    }
}

/// Waits for a `receipts` update of `room` for which `done` holds: (delivered_all, read_all,
/// members listed).
pub async fn receipts_until(
    client: &mut Client,
    what: &str,
    done: impl Fn(u64, u64, &[MemberReceipt]) -> bool,
) -> (u64, u64, Vec<MemberReceipt>) {
    within(what, async {
        loop {
            if let ReceiptEvent::Receipts { delivered_all, read_all, members, .. } =
                client.next_receipts_event().await.unwrap()
                && done(delivered_all, read_all, &members)
            {
                return (delivered_all, read_all, members);
            }
        }
    })
    .await
}

/// Times one `sync` until all `rooms` entries arrived (the answer and the pages after it):
/// (milliseconds, frames, encoded bytes in the client's codec). Every room has one unread.
pub async fn timed_sync(client: &mut Client, codec: edgerelay::proto::Codec, rooms: usize) -> (f64, usize, usize) {
    let started = std::time::Instant::now();
    let unread = client.sync_unread().await.unwrap();
    assert_eq!(unread.total, rooms as u64);
    let total = unread.total;
    let encoded = |rooms: Vec<edgerelay::proto::RoomUnread>| {
        let event = ReceiptEvent::Unread { full: true, rooms, total, mentions: 0 };
        codec.encode(&edgerelay::proto::ServerFrame::Receipts { req: 1, event }).len()
    };
    let (mut seen, mut frames, mut bytes) = (unread.rooms.len(), 1, encoded(unread.rooms));
    // Rooms beyond one frame follow as updates.
    while seen < rooms {
        if let ReceiptEvent::Unread { rooms: more, .. } = client.next_receipts_event().await.unwrap() {
            (seen, frames) = (seen + more.len(), frames + 1);
            bytes += encoded(more);
        }
    }
    (started.elapsed().as_secs_f64() * 1000.0, frames, bytes)
}
