//! Joins and catch-ups: the async half of membership, which reads history from the engine.
//!
//! A join with a `since` position replays what the client missed, then hands the member to live
//! fanout; a member that fell behind (outbox too full, or offsets skipped on this node) is fed
//! from history the same way. Replay pushes at the pace the client reads (it waits for room in
//! the outbox) and switches the member to live under the room's lock exactly when it has
//! caught up, so no offset is skipped or sent twice (see `room`). These run as tasks of the
//! member's connection and stop when the member leaves.
//!
//! A history read that fails because the store is unavailable (Redis down) is not a gap: the
//! member stays, still catching up, and the read is tried again until the store answers, so a
//! store outage never closes a connection (docs/operations.md, "When Redis is down"). Every
//! read is checked against the room's epoch: a store that lost the room holds the new epoch's
//! offsets under the same numbers, and they must not go out labelled with the old one.

use std::time::Duration;

use crate::connection::unix_ms;
use crate::engine::{Engine, EngineError};
use crate::outbox::{CloseReason, Reply};
use crate::proto::{ErrorCode, Position, ServerFrame};
use crate::store::StoredMessage;

use super::{Attach, Hub, RoomKey, Subscriber, SubscriberId};

/// Messages read from history per step.
pub const REPLAY_CHUNK: usize = 256;
/// Pause before a catch-up whose history read failed (the store unavailable) reads again.
const STORE_RETRY: Duration = Duration::from_millis(250);

/// A replay stopped before its member was live, the member still catching up: the store could
/// not be read, or it holds another epoch of the room now (it lost the room; the hub moves to
/// the new epoch when its first message arrives here).
struct Interrupted;

/// Up to [`REPLAY_CHUNK`] messages after `after` if the room is still in `epoch` once they are
/// read, `None` if it is in another. A store that lost a room numbers the new epoch's messages
/// from 1 again under the same key, so the read alone cannot tell which epoch it returned; an
/// epoch the hub knew before the read and the store still has after it is the read's.
async fn read_in_epoch(
    engine: &dyn Engine,
    key: &RoomKey,
    epoch: u64,
    after: u64,
) -> Result<Option<Vec<StoredMessage>>, EngineError> {
    let chunk = engine.read_after(key, after, REPLAY_CHUNK).await?;
    let meta = engine.meta(key).await?;
    Ok((meta.epoch == epoch).then_some(chunk))
}

/// Joins `key` for member `id`, replaying from `since` when given and still covered. Returns
/// the position the client is now known to have (its `since` when recovered, else the top at
/// the join), or `None` when the join did not happen.
pub async fn join(
    hub: &Hub,
    engine: &dyn Engine,
    key: RoomKey,
    id: SubscriberId,
    sub: Subscriber,
    mut reply: Reply,
    since: Option<Position>,
) -> Option<Position> {
    // The room may be swept between making it present and attaching: then try again.
    let attached = loop {
        if !hub.has_room(&key) {
            match engine.meta(&key).await {
                Ok(meta) => hub.ensure_room(&key, meta, unix_ms()),
                Err(err) => {
                    refuse(&sub, reply, err.code(), err.to_string());
                    return None;
                }
            }
        }
        match hub.attach(&key, id, sub.clone(), &mut reply, since, unix_ms()) {
            Ok(Some(attached)) => break attached,
            Ok(None) => continue,
            Err(_) => return None,
        }
    };
    let from = match attached {
        Attach::Live { position, recovered } => return Some(since.filter(|_| recovered).unwrap_or(position)),
        Attach::Cancelled => return None,
        Attach::Replay { from } => from,
    };
    let (_, _, epoch) = hub.lagging(&key, id)?;
    let first = match read_in_epoch(engine, &key, epoch, from - 1).await {
        // Another epoch now: not recovered, the member goes live at the top.
        Ok(first) => first.unwrap_or_default(),
        Err(err) => {
            hub.leave(&key, id, unix_ms());
            refuse(&sub, reply, err.code(), err.to_string());
            return None;
        }
    };
    // History covers the gap only if it still starts at `from`.
    let recovered = first.first().is_some_and(|m| m.offset == from);
    let position = hub.confirm(&key, id, &mut reply, recovered).ok().flatten()?;
    drop(reply);
    if !recovered {
        return Some(position);
    }
    if replay(hub, engine, &key, id, &sub, position.epoch, first).await.is_err() {
        tokio::time::sleep(STORE_RETRY).await;
        catch_up(hub, engine, key, id).await;
    }
    since
}

/// Feeds a member that fell behind from history until it is live again, waiting out a store
/// that cannot be read or that holds a new epoch the hub has not seen yet.
pub async fn catch_up(hub: &Hub, engine: &dyn Engine, key: RoomKey, id: SubscriberId) {
    let mut warned = false;
    loop {
        let Some((sub, next, epoch)) = hub.lagging(&key, id) else { return };
        if sub.membership.is_cancelled() {
            return;
        }
        let interrupted = match read_in_epoch(engine, &key, epoch, next - 1).await {
            Ok(Some(chunk)) if chunk.first().is_some_and(|m| m.offset == next) => {
                replay(hub, engine, &key, id, &sub, epoch, chunk).await.is_err()
            }
            Ok(Some(_)) => return history_gone(hub, &key, id, &sub),
            // The store lost the room: wait until the hub has the new epoch (its first message
            // sends every member to offset 1 of it).
            Ok(None) => true,
            Err(EngineError::ShuttingDown) => return,
            Err(err @ EngineError::Unavailable(_)) => {
                if !warned {
                    tracing::warn!(%err, room = %key.room, "catch-up read failed; trying again");
                    warned = true;
                }
                true
            }
        };
        if !interrupted {
            return;
        }
        tokio::time::sleep(STORE_RETRY).await;
    }
}

/// Pushes `chunk` and the chunks after it until the member is live (or gone); `Err` when it
/// was [`Interrupted`].
async fn replay(
    hub: &Hub,
    engine: &dyn Engine,
    key: &RoomKey,
    id: SubscriberId,
    sub: &Subscriber,
    epoch: u64,
    mut chunk: Vec<StoredMessage>,
) -> Result<(), Interrupted> {
    let codec = sub.outbox.codec();
    let replayed = metrics::counter!(crate::metrics::REPLAYED_TOTAL);
    loop {
        let Some(last) = chunk.last().map(|m| m.offset) else {
            history_gone(hub, key, id, sub);
            return Ok(());
        };
        for m in chunk {
            if sub.membership.is_cancelled() {
                return Ok(());
            }
            let frame = ServerFrame::Message {
                room: key.room.to_string(),
                position: Position { epoch, offset: m.offset },
                from: m.from,
                time: m.time,
                id: m.id,
                data: m.data,
            };
            if sub.outbox.push_waiting(sub.lane, codec.frame(&frame), sub.fanout_limit()).await.is_err() {
                return Ok(());
            }
            replayed.increment(1);
        }
        let Some(next) = hub.replayed(key, id, last) else { return Ok(()) };
        chunk = match read_in_epoch(engine, key, epoch, next - 1).await {
            Ok(Some(chunk)) if chunk.first().is_some_and(|m| m.offset == next) => chunk,
            Ok(None) | Err(EngineError::Unavailable(_)) => return Err(Interrupted),
            _ => {
                history_gone(hub, key, id, sub);
                return Ok(());
            }
        };
    }
}

/// The offsets a member needs are no longer in history (retention passed them while it was
/// behind): it cannot continue without a gap, so its connection is closed with a retryable
/// code; on resume its `joined` says "not recovered".
fn history_gone(hub: &Hub, key: &RoomKey, id: SubscriberId, sub: &Subscriber) {
    hub.leave(key, id, unix_ms());
    let message = format!("history of {} no longer covers this connection's position", key.room);
    let frame = ServerFrame::error(0, ErrorCode::SLOW_CONSUMER, message);
    let _ = sub.outbox.send(crate::outbox::CONTROL, &frame);
    sub.outbox.close(CloseReason::Error(ErrorCode::SLOW_CONSUMER));
}

/// Answers the join with an error (the member was not added) and cancels the membership, so the
/// session forgets the room: the client may join it again.
fn refuse(sub: &Subscriber, mut reply: Reply, code: ErrorCode, message: String) {
    tracing::debug!(%code, %message, "join refused");
    sub.membership.cancel();
    let frame = ServerFrame::error(reply.req(), code, message);
    let _ = reply.send(&frame);
}
