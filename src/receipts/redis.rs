//! The receipts store of a Redis region: every node reads and writes the same marks, so a user's
//! devices on different nodes share one read position and one count.
//!
//! Keys (under the engine's prefix; a room's beside its messages in one hash slot, a user's in
//! the user's slot, as the engine keeps cursors):
//! - `<prefix>:{<tenant>/<room>}:rm`: hash, member → `<epoch>:<read>:<delivered>`; written by
//!   `mark.lua`, which keeps the highest of each field within an epoch, so two nodes racing can
//!   never move a mark back (the store's half of "never backwards").
//! - `<prefix>:{<tenant>/<user>}:rf`: hash, followed room → empty.
//! - `<prefix>:{<tenant>/<user>}:rn:<room>`: sorted set of the offsets that mention the user.
//! - `<prefix>:{<tenant>/<user>}:rp`: `0` when the user does not share reads.
//!
//! Writes go to Redis in pipelines, in the order queued, from one task; `done` runs when the
//! pipeline answered. Every key is refreshed to live [`KEEP_MS`] on each write, as room metas
//! are.

use std::collections::BTreeMap;

use fred::prelude::{
    Client, ClientLike, Error as FredError, HashesInterface, KeysInterface, SortedSetsInterface, Value,
};
use fred::types::{ClusterHash, CustomCommand};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::store::{DoneFn, Mark, Op, ReceiptStore};
use crate::hub::RoomKey;
use crate::hub::presence::UserKey;
use crate::proto::RoomName;
use crate::store::StoreError;

const MARK_LUA: &str = include_str!("mark.lua");

/// How long receipts keys live without a write (as a room's meta in the engine).
const KEEP_MS: i64 = 30 * 24 * 3600 * 1000;

/// Most queued writes sent in one pipeline.
const MAX_BATCH: usize = 512;

type Queued = (Vec<Op>, Option<DoneFn>);

pub struct RedisReceipts {
    client: Client,
    prefix: String,
    queue: mpsc::UnboundedSender<Queued>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// A Redis error as the stores report it (receipts and notifications).
pub(crate) fn err(e: FredError) -> StoreError {
    StoreError::Backend(format!("redis: {e}"))
}

/// `EVAL script numkeys keys... argv...`, the first key (offset 2) picking the cluster shard.
pub(crate) fn eval(script: &str, keys: Vec<String>, argv: Vec<String>) -> (CustomCommand, Vec<Value>) {
    let mut args: Vec<Value> = vec![script.into(), Value::Integer(keys.len() as i64)];
    args.extend(keys.into_iter().map(Value::from));
    args.extend(argv.into_iter().map(Value::from));
    (CustomCommand::new_static("EVAL", ClusterHash::Offset(2), false), args)
}

fn encode(mark: &Mark) -> String {
    format!("{}:{}:{}", mark.epoch, mark.read, mark.delivered)
}

fn decode(text: &str) -> Option<Mark> {
    let mut parts = text.split(':').map(str::parse::<u64>);
    match (parts.next(), parts.next(), parts.next()) {
        (Some(Ok(epoch)), Some(Ok(read)), Some(Ok(delivered))) => Some(Mark { epoch, read, delivered }),
        _ => None,
    }
}

/// Key names (see the module docs); a user's, also for notifications (`crate::notify::redis`).
#[derive(Clone)]
pub(crate) struct Names {
    pub(crate) prefix: String,
}

impl Names {
    fn marks(&self, room: &RoomKey) -> String {
        format!("{}:{{{}/{}}}:rm", self.prefix, room.tenant, room.room.as_str())
    }

    /// `<prefix>:{<tenant>/<user>}:<what>`: the user's hash slot.
    pub(crate) fn user(&self, tenant: &str, user: &str, what: &str) -> String {
        format!("{}:{{{tenant}/{user}}}:{what}", self.prefix)
    }

    fn follows(&self, tenant: &str, user: &str) -> String {
        self.user(tenant, user, "rf")
    }

    fn mentions(&self, tenant: &str, user: &str, room: &str) -> String {
        self.user(tenant, user, &format!("rn:{room}"))
    }

    fn prefs(&self, tenant: &str, user: &str) -> String {
        self.user(tenant, user, "rp")
    }
}

impl RedisReceipts {
    /// Uses a connected client (the Redis engine's) and starts the writer, which stops when
    /// the store is dropped.
    pub fn start(client: Client, prefix: &str) -> RedisReceipts {
        let (queue, rx) = mpsc::unbounded_channel();
        let (tasks, stop) = (TaskTracker::new(), CancellationToken::new());
        let names = Names { prefix: prefix.to_owned() };
        tasks.spawn(write_loop(client.clone(), names, rx, stop.clone()));
        tasks.close();
        RedisReceipts { client, prefix: prefix.to_owned(), queue, tasks, stop }
    }

    fn names(&self) -> Names {
        Names { prefix: self.prefix.clone() }
    }
}

impl Drop for RedisReceipts {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = &self.tasks;
    }
}

async fn write_loop(client: Client, names: Names, mut rx: mpsc::UnboundedReceiver<Queued>, stop: CancellationToken) {
    while let Some(first) = stop.run_until_cancelled(rx.recv()).await.flatten() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // The callbacks are not `Sync`: apart from the ops before awaiting.
        let (ops, dones): (Vec<Vec<Op>>, Vec<Option<DoneFn>>) = batch.into_iter().unzip();
        let result =
            if ops.iter().all(Vec::is_empty) { Ok(()) } else { commit(&client, &names, ops.iter().flatten()).await };
        if let Err(e) = &result {
            tracing::error!(error = %e, "receipts: redis write failed");
        }
        for done in dones.into_iter().flatten() {
            done(result.as_ref().map(|_| ()).map_err(|e| StoreError::Backend(e.to_string())));
        }
    }
}

async fn commit<'a>(
    client: &Client,
    names: &Names,
    ops: impl Iterator<Item = &'a Op> + Send,
) -> Result<(), StoreError> {
    let pipeline = client.pipeline();
    for op in ops {
        let queued: Result<(), FredError> = async {
            match op {
                Op::Mark { room, user, mark } => {
                    let marks = names.marks(room);
                    let argv = vec![user.to_string(), encode(mark), KEEP_MS.to_string()];
                    let (command, args) = eval(MARK_LUA, vec![marks], argv);
                    pipeline.custom::<(), _>(command, args).await?;
                    let follows = names.follows(&room.tenant, user);
                    pipeline.hset::<(), _, _>(follows.as_str(), (room.room.as_str(), "")).await?;
                    pipeline.pexpire::<(), _>(follows.as_str(), KEEP_MS, None).await?;
                }
                Op::Unfollow { room, user } => {
                    pipeline.hdel::<(), _, _>(names.marks(room), user.as_str()).await?;
                    pipeline.hdel::<(), _, _>(names.follows(&room.tenant, user), room.room.as_str()).await?;
                    pipeline.del::<(), _>(names.mentions(&room.tenant, user, room.room.as_str())).await?;
                }
                Op::Mention { room, user, offset } => {
                    let key = names.mentions(&room.tenant, user, room.room.as_str());
                    pipeline
                        .zadd::<(), _, _>(key.as_str(), None, None, false, false, (*offset as f64, *offset))
                        .await?;
                    pipeline.pexpire::<(), _>(key.as_str(), KEEP_MS, None).await?;
                }
                Op::MentionsRead { room, user, upto } => {
                    let key = names.mentions(&room.tenant, user, room.room.as_str());
                    pipeline.zremrangebyscore::<(), _, _, _>(key, f64::MIN, *upto as f64).await?;
                }
                Op::Prefs { user, share_read } => {
                    let key = names.prefs(&user.tenant, &user.user);
                    pipeline.set::<(), _, _>(key, if *share_read { "1" } else { "0" }, None, None, false).await?;
                }
            }
            Ok(())
        }
        .await;
        queued.map_err(err)?;
    }
    for reply in pipeline.try_all::<Value>().await {
        reply.map_err(err)?;
    }
    Ok(())
}

impl ReceiptStore for RedisReceipts {
    fn write(&self, ops: Vec<Op>, done: Option<DoneFn>) {
        if let Err(mpsc::error::SendError((_, Some(done)))) = self.queue.send((ops, done)) {
            done(Err(StoreError::Backend("the receipts writer stopped".into())));
        }
    }

    fn room(&self, room: &RoomKey) -> BoxFuture<'_, Result<BTreeMap<String, Mark>, StoreError>> {
        let key = self.names().marks(room);
        async move {
            let all: BTreeMap<String, String> = self.client.hgetall(key).await.map_err(err)?;
            Ok(all.into_iter().filter_map(|(user, mark)| Some((user, decode(&mark)?))).collect())
        }
        .boxed()
    }

    fn marks(&self, user: &UserKey, rooms: &[RoomName]) -> BoxFuture<'_, Result<Vec<Option<Mark>>, StoreError>> {
        let names = self.names();
        let keys: Vec<String> = rooms
            .iter()
            .map(|room| names.marks(&RoomKey { tenant: user.tenant.clone(), room: room.clone() }))
            .collect();
        let user = user.user.to_string();
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(MAX_BATCH) {
                let pipeline = self.client.pipeline();
                for key in chunk {
                    pipeline.hget::<(), _, _>(key.as_str(), user.as_str()).await.map_err(err)?;
                }
                for reply in pipeline.try_all::<Option<String>>().await {
                    out.push(reply.map_err(err)?.as_deref().and_then(decode));
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn follows(&self, user: &UserKey) -> BoxFuture<'_, Result<Vec<RoomName>, StoreError>> {
        let key = self.names().follows(&user.tenant, &user.user);
        async move {
            let rooms: Vec<String> = self.client.hkeys(key).await.map_err(err)?;
            let mut rooms: Vec<RoomName> = rooms.iter().filter_map(|room| RoomName::parse(room).ok()).collect();
            rooms.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            Ok(rooms)
        }
        .boxed()
    }

    fn mentions(&self, user: &UserKey, rooms: &[(RoomName, u64)]) -> BoxFuture<'_, Result<Vec<Vec<u64>>, StoreError>> {
        let names = self.names();
        let keys: Vec<(String, u64)> = rooms
            .iter()
            .map(|(room, after)| (names.mentions(&user.tenant, &user.user, room.as_str()), *after))
            .collect();
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(MAX_BATCH) {
                let pipeline = self.client.pipeline();
                for (key, after) in chunk {
                    let min = format!("({after}");
                    pipeline.zrangebyscore::<(), _, _, _>(key.as_str(), min, "+inf", false, None).await.map_err(err)?;
                }
                for reply in pipeline.try_all::<Vec<String>>().await {
                    out.push(reply.map_err(err)?.iter().filter_map(|o| o.parse().ok()).collect());
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn share_read(&self, users: &[UserKey]) -> BoxFuture<'_, Result<Vec<bool>, StoreError>> {
        let names = self.names();
        let keys: Vec<String> = users.iter().map(|u| names.prefs(&u.tenant, &u.user)).collect();
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(MAX_BATCH) {
                let pipeline = self.client.pipeline();
                for key in chunk {
                    pipeline.get::<(), _>(key.as_str()).await.map_err(err)?;
                }
                for reply in pipeline.try_all::<Option<String>>().await {
                    out.push(reply.map_err(err)?.is_none_or(|v| v != "0"));
                }
            }
            Ok(out)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_keys_share_their_owner_slot() {
        let mark = Mark { epoch: 9, read: 4, delivered: 6 };
        assert_eq!(decode(&encode(&mark)), Some(mark));
        assert_eq!(decode("9:x:1"), None);
        let names = Names { prefix: "er".into() };
        let room = RoomKey { tenant: "acme".into(), room: RoomName::parse("chat:a").unwrap() };
        assert_eq!(names.marks(&room), "er:{acme/chat:a}:rm", "the engine's room tag");
        assert_eq!(names.mentions("acme", "bob", "chat:a"), "er:{acme/bob}:rn:chat:a");
    }
}
