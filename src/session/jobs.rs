//! The async work of a session: what needs the engine's IO (joins that may replay history,
//! history pages, the list of followed rooms). The session queues a [`Job`]; the connection runs
//! it as one of its tasks, so jobs end with the connection.

use std::sync::Arc;

use crate::call::history::{CallPage, HistoryCursor, HistoryError};
use crate::hub::presence::UserKey;
use crate::hub::{CatchUp, RoomKey, Subscriber, SubscriberId, replay};
use crate::outbox::Reply;
use crate::proto::{ErrorCode, HistoryEntry, Position, RoomCursor, RoomName, ServerFrame};
use crate::store::Cursor;

use super::{MAX_ROOMS_LISTED, SessionContext};

pub enum Job {
    /// Join a room, replaying from `since` if asked; records the user as following it.
    Join {
        key: RoomKey,
        id: SubscriberId,
        subscriber: Subscriber,
        /// Where `joined` (or the refusal) goes, in the order of the connection's requests.
        reply: Reply,
        since: Option<Position>,
        user: String,
        now_ms: u64,
    },
    /// Feed a member that fell behind from history.
    CatchUp(CatchUp),
    /// Answer a `history` or `history_after` request.
    History { key: RoomKey, reply: Reply, page: Page, limit: u32, max_bytes: usize },
    /// Answer a `rooms` request.
    Rooms { tenant: String, user: String, reply: Reply },
    /// Replay an exact persistent topic after `since`, then let the subscription go live.
    Resume {
        tenant: Arc<str>,
        sub: Arc<crate::events::Subscription>,
        topic: crate::events::TopicName,
        since: Option<Position>,
        reply: Reply,
    },
    /// The async half of a `receipts` action (docs/receipts.md).
    Receipts(super::receipts::ReceiptsJob),
    /// A `notifications` action (docs/notifications.md).
    Notify { user: UserKey, conn: u64, action: crate::proto::NotifyAction, reply: Reply },
    /// Answer a `call_history` request.
    CallHistory { user: UserKey, reply: Reply, before: Option<HistoryCursor>, limit: u32, max_bytes: usize },
}

/// Which page of a room's history a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages before this offset (the newest of all when `None`): `history`.
    Before(Option<u64>),
    /// The oldest messages after this offset: `history_after`.
    After(u64),
}

/// A join that finished (joined, refused or cancelled): the session may now send the
/// publishes to its room that arrived meanwhile (see `Session::join_settled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinSettled {
    pub room: RoomName,
    pub req: u64,
}

/// Runs a job; a join reports when it settled.
pub async fn run(job: Job, ctx: Arc<SessionContext>) -> Option<JoinSettled> {
    let engine = &*ctx.engine;
    match job {
        Job::Join { key, id, subscriber, reply, since, user, now_ms } => {
            let settled = JoinSettled { room: key.room.clone(), req: reply.req() };
            let (membership, lane) = (subscriber.membership.clone(), subscriber.lane);
            let subscriber_outbox = subscriber.outbox.clone();
            let joined = replay::join(&ctx.hub, engine, key.clone(), id, subscriber, reply, since).await;
            if let Some(joined) = joined.filter(|_| !membership.is_cancelled()) {
                // The presence snapshot follows `joined` (and any replayed messages), then the
                // room's tracks.
                let _ = ctx.awareness.join(&key, id, lane, crate::connection::unix_ms());
                ctx.calls.joined(&key, &subscriber_outbox, lane);
                ctx.receipts.follow(&key, &user, joined).await;
                let cursor = Cursor { room: key.room, position: joined, updated: now_ms };
                engine.save_cursors(&key.tenant, &user, vec![cursor]);
            }
            return Some(settled);
        }
        Job::Receipts(job) => super::receipts::run(&ctx, job).await,
        Job::Notify { user, conn, action, reply } => ctx.notify.handle(user, conn, action, reply).await,
        Job::CatchUp(CatchUp { key, id }) => replay::catch_up(&ctx.hub, engine, key, id).await,
        Job::Resume { tenant, sub, topic, since, reply } => {
            ctx.events.resume(&tenant, &sub, &topic, since, reply).await
        }
        Job::History { key, mut reply, page, limit, max_bytes } => {
            let req = reply.req();
            let frame = match history_page(&ctx, &key, req, page, limit, max_bytes).await {
                Ok(frame) => frame,
                Err(err) => ServerFrame::error(req, err.code(), err.to_string()),
            };
            let _ = reply.send(&frame);
        }
        Job::Rooms { tenant, user, mut reply } => {
            let req = reply.req();
            let frame = match engine.cursors(&tenant, &user, MAX_ROOMS_LISTED).await {
                Ok(cursors) => ServerFrame::Rooms {
                    req,
                    rooms: cursors
                        .into_iter()
                        .map(|c| RoomCursor { room: c.room.to_string(), position: c.position })
                        .collect(),
                },
                Err(err) => ServerFrame::error(req, err.code(), err.to_string()),
            };
            let _ = reply.send(&frame);
        }
        Job::CallHistory { user, mut reply, before, limit, max_bytes } => {
            let req = reply.req();
            let now_ms = crate::connection::unix_ms();
            let frame = match ctx.call_history.list(&user, before, limit as usize, now_ms).await {
                Ok(page) => call_history_page(req, page, max_bytes),
                Err(HistoryError::Invalid(message)) => ServerFrame::error(req, ErrorCode::BAD_REQUEST, message),
                Err(HistoryError::Store(err)) => ServerFrame::error(req, ErrorCode::STORE_UNAVAILABLE, err.to_string()),
            };
            let _ = reply.send(&frame);
        }
    }
    None
}

/// How many of the items whose encoded `sizes` come in this order fit a frame of `max_bytes`
/// (with room for the frame's other fields); at least one, so a page is never empty only
/// because its first item is large.
fn fitting(sizes: impl Iterator<Item = usize>, max_bytes: usize) -> usize {
    let mut budget = max_bytes.saturating_sub(256);
    let mut keep = 0;
    for size in sizes {
        if keep > 0 && size > budget {
            break;
        }
        budget = budget.saturating_sub(size);
        keep += 1;
    }
    keep
}

/// A `call_history` answer; the page is cut short (keeping the newest calls, with `next` after
/// the last one kept) so the frame stays within `max_bytes`.
fn call_history_page(req: u64, page: CallPage, max_bytes: usize) -> ServerFrame {
    // JSON is the larger encoding.
    let keep = fitting(page.calls.iter().map(|call| crate::call::history::encode(call).len()), max_bytes);
    let CallPage { mut calls, next } = page;
    let next = if keep < calls.len() {
        calls.truncate(keep);
        calls.last().map(|c| c.cursor())
    } else {
        next
    };
    ServerFrame::CallHistory { req, calls, next: next.map(|c| c.to_string()) }
}

/// Reads one page; the page is cut short so the frame stays within `max_bytes`, keeping the
/// messages next to the page's anchor: the newest of a `before` page, the oldest of an `after`
/// page (so a client catching up gets an unbroken run after what it holds).
async fn history_page(
    ctx: &SessionContext,
    key: &RoomKey,
    req: u64,
    page: Page,
    limit: u32,
    max_bytes: usize,
) -> Result<ServerFrame, crate::engine::EngineError> {
    let meta = ctx.engine.meta(key).await?;
    let mut messages = match page {
        Page::Before(before) => ctx.engine.read_before(key, before.unwrap_or(u64::MAX), limit as usize).await?,
        Page::After(after) => ctx.engine.read_after(key, after, limit as usize).await?,
    };
    let size = |m: &crate::store::StoredMessage| m.data.len() * 4 / 3 + m.from.len() + m.id.len() + 64;
    match page {
        Page::Before(_) => {
            let keep = fitting(messages.iter().rev().map(size), max_bytes);
            messages = messages.split_off(messages.len() - keep);
        }
        Page::After(_) => messages.truncate(fitting(messages.iter().map(size), max_bytes)),
    }
    Ok(ServerFrame::History {
        req,
        room: key.room.to_string(),
        position: meta.position(),
        first: meta.first,
        messages: messages
            .into_iter()
            .map(|m| HistoryEntry { offset: m.offset, from: m.from, time: m.time, id: m.id, data: m.data })
            .collect(),
    })
}
