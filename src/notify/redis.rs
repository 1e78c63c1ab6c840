//! Notifications in a Redis region: every node reads and writes the same feeds, preferences,
//! devices, outbox and dead letters, so a user's devices on any node see one feed and one
//! unread badge, and any node may make a webhook call.
//!
//! Keys, per user in the user's hash slot (`<prefix>:{<tenant>/<user>}:…`, as receipts and
//! cursors):
//! - `nf`: the feed, a sorted set by id; members `<id>:<read 0|1>:<notification JSON>`, so
//!   marking read rewrites a flag in Lua without re-encoding the backend's JSON;
//! - `nm`: meta hash (`last` id given, `unread`, `len`); `nk`: idempotency keys (`k:<key>` → id,
//!   `i:<id>` → key). `add.lua` and `read.lua` keep the three consistent in one call each.
//! - `np`: preferences (JSON); `nd`: devices (hash, device id → JSON).
//! - `ng`: foreground connections (hash, node → until unix ms), refreshed by each node.
//!
//! The outbox, for the region (`<prefix>:{notify}:…`, one slot): `outbox`, a stream with the
//! consumer group `webhook` (one consumer per node), entries `s` (the delivery id) and `d` (the
//! delivery's JSON); `seq`, the delivery id counter; `dead` (hash, id → dead letter JSON) and
//! `dead_ids` (sorted set of the ids, for paging and trimming). An entry stays pending with the
//! node that read it until that node acknowledges and deletes it (a 2xx, or dead), or requeues
//! it (a failure: a new entry with the next attempt's time); the holder refreshes its entries'
//! idle time, so a node that stops refreshing (killed) loses them to `XAUTOCLAIM` by another.
//!
//! The feed and the outbox hash to different slots, so adding a pushed notification is two
//! calls: the feed's script, then the outbox's (docs/decisions.md says what that leaves open).

use std::collections::HashMap;

use fred::prelude::{Client, ClientLike, HashesInterface, KeysInterface, LuaInterface, SortedSetsInterface, Value};
use fred::types::{ClusterHash, CustomCommand};
use futures_util::FutureExt;

use super::backend::{Backend, Fut};
use super::store::{Added, DeadLetter, Delivery, Device, MarkError, NewNotification};
use crate::hub::presence::UserKey;
use crate::proto::{Notification, NotifyPrefs};
use crate::receipts::redis::{Names, err, eval};
use crate::store::StoreError;

const ADD_LUA: &str = include_str!("add.lua");
const READ_LUA: &str = include_str!("read.lua");

/// Registers a device unless the user has `ARGV[3]` others.
const DEVICE_LUA: &str = r"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1";

/// Queues a delivery: the next id, and the entry.
const QUEUE_LUA: &str = r"
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], '*', 's', seq, 'd', ARGV[1])
return seq";

/// Acknowledges and deletes an entry; with `ARGV[2]`, queues its next attempt as a new entry.
const SETTLE_LUA: &str = r"
redis.call('XACK', KEYS[1], 'webhook', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if ARGV[2] then
  redis.call('XADD', KEYS[1], '*', 's', ARGV[3], 'd', ARGV[2])
end
return 1";

/// Moves an entry to the dead letters, keeping `ARGV[4]`.
const DEAD_LUA: &str = r"
redis.call('XACK', KEYS[1], 'webhook', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[2])
while redis.call('ZCARD', KEYS[3]) > tonumber(ARGV[4]) do
  local oldest = redis.call('ZPOPMIN', KEYS[3])
  redis.call('HDEL', KEYS[2], oldest[1])
end
return 1";

/// Takes a dead letter out; with `ARGV[2]`, queues it again.
const TAKE_DEAD_LUA: &str = r"
if redis.call('HDEL', KEYS[2], ARGV[1]) == 0 then
  return 0
end
redis.call('ZREM', KEYS[3], ARGV[1])
if ARGV[2] then
  redis.call('XADD', KEYS[1], '*', 's', ARGV[1], 'd', ARGV[2])
end
return 1";

const GROUP: &str = "webhook";
/// Dead letters read per step while paging.
const DEAD_CHUNK: usize = 256;
/// Most commands in one pipeline.
const MAX_BATCH: usize = 512;

fn corrupt(what: &'static str) -> impl Fn(serde_json::Error) -> StoreError {
    move |e| StoreError::Corrupt { table: what, detail: e.to_string() }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(StoreError::backend)
}

/// A feed member: `<id>:<read>:<JSON>`.
fn parse_member(member: &str) -> Result<Notification, StoreError> {
    let bad = || StoreError::Corrupt { table: "notify feed", detail: "bad member".into() };
    let (id, rest) = member.split_once(':').ok_or_else(bad)?;
    let (read, text) = rest.split_once(':').ok_or_else(bad)?;
    let mut notification: Notification = serde_json::from_str(text).map_err(corrupt("notify feed"))?;
    notification.id = id.parse().map_err(|_| bad())?;
    notification.read = read == "1";
    Ok(notification)
}

/// An outbox entry `[id, [field, value, …]]`.
fn parse_entry(entry: Value) -> Option<Delivery> {
    let mut parts = entry.into_array().into_iter();
    let id = parts.next()?.as_string()?;
    let fields = parts.next()?.into_array();
    let (mut seq, mut body) = (None, None);
    for pair in fields.chunks(2) {
        match (pair[0].as_str().as_deref(), pair.get(1)) {
            (Some("s"), Some(v)) => seq = v.as_string().and_then(|s| s.parse::<u64>().ok()),
            (Some("d"), Some(v)) => body = v.as_string(),
            _ => {}
        }
    }
    let mut delivery: Delivery = serde_json::from_str(&body?).ok()?;
    delivery.seq = seq?;
    delivery.entry = Some(id);
    Some(delivery)
}

fn cmd(name: &'static str, key_at: usize) -> CustomCommand {
    CustomCommand::new_static(name, ClusterHash::Offset(key_at), false)
}

pub struct RedisNotify {
    client: Client,
    names: Names,
    /// How long an entry held by a silent node stays its own.
    claim_after_ms: u64,
    /// This node's consumer name.
    node: String,
}

impl RedisNotify {
    /// Uses the engine's client; creates the outbox's consumer group if there is none.
    pub async fn start(
        client: Client,
        prefix: &str,
        node: String,
        claim_after_ms: u64,
    ) -> Result<RedisNotify, StoreError> {
        let notify = RedisNotify { client, names: Names { prefix: prefix.to_owned() }, claim_after_ms, node };
        notify.create_group().await?;
        Ok(notify)
    }

    async fn create_group(&self) -> Result<(), StoreError> {
        let args: Vec<Value> = vec!["CREATE".into(), self.outbox().into(), GROUP.into(), "0".into(), "MKSTREAM".into()];
        match self.client.custom::<Value, _>(cmd("XGROUP", 1), args).await {
            Err(e) if !e.details().contains("BUSYGROUP") => Err(err(e)),
            _ => Ok(()),
        }
    }

    fn user(&self, user: &UserKey, what: &str) -> String {
        self.names.user(&user.tenant, &user.user, what)
    }

    fn region(&self, what: &str) -> String {
        format!("{}:{{notify}}:{what}", self.names.prefix)
    }

    fn outbox(&self) -> String {
        self.region("outbox")
    }

    fn dead_keys(&self) -> Vec<String> {
        vec![self.outbox(), self.region("dead"), self.region("dead_ids")]
    }

    async fn add_all(&self, batch: Vec<(UserKey, NewNotification)>, max_feed: u64) -> Result<Vec<Added>, StoreError> {
        let mut added = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(MAX_BATCH) {
            let pipeline = self.client.pipeline();
            for (user, new) in chunk {
                let keys = vec![self.user(user, "nf"), self.user(user, "nm"), self.user(user, "nk")];
                let push = if new.deliver_at.is_some() { "1" } else { "0" };
                let argv = vec![
                    new.key.clone().unwrap_or_default(),
                    json(&new.notification)?,
                    max_feed.to_string(),
                    push.to_owned(),
                ];
                let (command, args) = eval(ADD_LUA, keys, argv);
                pipeline.custom::<(), _>(command, args).await.map_err(err)?;
            }
            let replies = pipeline.try_all::<Value>().await;
            let mut pushes = Vec::new();
            for ((user, new), reply) in chunk.iter().zip(replies) {
                let mut reply = reply.map_err(err)?.into_array().into_iter();
                let number = |v: Option<Value>| v.and_then(|v| v.as_u64()).unwrap_or(0);
                let duplicate = number(reply.next()) == 1;
                let member = reply.next().and_then(|m| m.as_string()).unwrap_or_default();
                let (unread, pending) = (number(reply.next()), number(reply.next()) == 1);
                let notification = parse_member(&member)?;
                // A duplicate's push that its first node never queued is queued now.
                let push = match new.deliver_at {
                    Some(next_at) if !duplicate || pending => Some(next_at),
                    None if pending => Some(new.notification.time),
                    _ => None,
                };
                if let Some(next_at) = push {
                    pushes.push((added.len(), Delivery::first(0, user, notification.clone(), next_at)));
                }
                added.push(Added { notification, unread, duplicate, delivery: None });
            }
            for (at, delivery) in self.queue(pushes).await? {
                added[at].delivery = Some(delivery);
            }
        }
        Ok(added)
    }

    /// Puts deliveries in the outbox stream (after their feed entries: another slot), then
    /// clears their entries' "push pending" markers; one pipeline each.
    async fn queue(&self, mut pushes: Vec<(usize, Delivery)>) -> Result<Vec<(usize, Delivery)>, StoreError> {
        if pushes.is_empty() {
            return Ok(pushes);
        }
        let pipeline = self.client.pipeline();
        for (_, delivery) in &pushes {
            let keys = vec![self.region("seq"), self.outbox()];
            let (command, args) = eval(QUEUE_LUA, keys, vec![json(delivery)?]);
            pipeline.custom::<(), _>(command, args).await.map_err(err)?;
        }
        for ((_, delivery), seq) in pushes.iter_mut().zip(pipeline.try_all::<Value>().await) {
            delivery.seq = seq.map_err(err)?.as_u64().unwrap_or(0);
        }
        let pipeline = self.client.pipeline();
        for (_, delivery) in &pushes {
            let user = UserKey { tenant: delivery.tenant.as_str().into(), user: delivery.user.as_str().into() };
            let marker = format!("q:{}", delivery.notification.id);
            pipeline.hdel::<(), _, _>(self.user(&user, "nm"), marker).await.map_err(err)?;
        }
        for reply in pipeline.try_all::<Value>().await {
            reply.map_err(err)?;
        }
        Ok(pushes)
    }

    /// The dead letter `seq` if it is of `tenant` (when given).
    async fn dead_letter(&self, seq: u64, tenant: Option<&str>) -> Result<Option<DeadLetter>, StoreError> {
        let text: Option<String> = self.client.hget(self.region("dead"), seq.to_string()).await.map_err(err)?;
        let Some(text) = text else { return Ok(None) };
        let letter: DeadLetter = serde_json::from_str(&text).map_err(corrupt("notify dead letters"))?;
        Ok(tenant.is_none_or(|t| t == letter.delivery.tenant).then_some(letter))
    }

    async fn take_dead(
        &self,
        seq: u64,
        tenant: Option<&str>,
        replay_at: Option<u64>,
    ) -> Result<Option<Delivery>, StoreError> {
        let Some(letter) = self.dead_letter(seq, tenant).await? else { return Ok(None) };
        let mut delivery = letter.delivery;
        let mut argv = vec![seq.to_string()];
        if let Some(now) = replay_at {
            delivery.attempts = 0;
            delivery.next_at = now;
            argv.push(json(&delivery)?);
        }
        let taken: i64 = self.client.eval(TAKE_DEAD_LUA, self.dead_keys(), argv).await.map_err(err)?;
        Ok((taken == 1).then_some(delivery))
    }

    async fn settle(&self, delivery: &Delivery, next: Option<&Delivery>) -> Result<(), StoreError> {
        let Some(entry) = delivery.entry.clone() else { return Ok(()) };
        let mut argv = vec![entry];
        if let Some(next) = next {
            argv.push(json(next)?);
            argv.push(next.seq.to_string());
        }
        let _: Value = self.client.eval(SETTLE_LUA, vec![self.outbox()], argv).await.map_err(err)?;
        Ok(())
    }

    async fn take(&self, held: Vec<String>, claim: bool, max: usize) -> Result<Vec<Delivery>, StoreError> {
        let outbox = self.outbox();
        let mut out = Vec::new();
        if !held.is_empty() {
            // Claiming one's own entries again resets their idle time: still alive.
            let mut args: Vec<Value> = vec![outbox.clone().into(), GROUP.into(), self.node.clone().into(), "0".into()];
            args.extend(held.into_iter().map(Value::from));
            args.push("JUSTID".into());
            let _: Value = self.client.custom(cmd("XCLAIM", 0), args).await.map_err(err)?;
        }
        if claim && max > 0 {
            let args: Vec<Value> = vec![
                outbox.clone().into(),
                GROUP.into(),
                self.node.clone().into(),
                self.claim_after_ms.to_string().into(),
                "0-0".into(),
                "COUNT".into(),
                max.to_string().into(),
            ];
            let reply: Value = self.client.custom(cmd("XAUTOCLAIM", 0), args).await.map_err(err)?;
            let entries = reply.into_array().into_iter().nth(1).map(Value::into_array).unwrap_or_default();
            out.extend(entries.into_iter().filter_map(parse_entry));
        }
        let max = max.saturating_sub(out.len());
        if max > 0 {
            let args: Vec<Value> = vec![
                "GROUP".into(),
                GROUP.into(),
                self.node.clone().into(),
                "COUNT".into(),
                max.to_string().into(),
                "STREAMS".into(),
                outbox.into(),
                ">".into(),
            ];
            let reply = match self.client.custom::<Value, _>(cmd("XREADGROUP", 6), args).await {
                // Redis lost the group (flushed, restarted empty): make it again.
                Err(e) if e.details().contains("NOGROUP") => {
                    self.create_group().await?;
                    Value::Null
                }
                reply => reply.map_err(err)?,
            };
            for stream in reply.into_array() {
                let entries = stream.into_array().into_iter().nth(1).map(Value::into_array).unwrap_or_default();
                out.extend(entries.into_iter().filter_map(parse_entry));
            }
        }
        Ok(out)
    }
}

impl Backend for RedisNotify {
    fn add_many(&self, batch: Vec<(UserKey, NewNotification)>, max_feed: u64) -> Fut<'_, Vec<Added>> {
        self.add_all(batch, max_feed).boxed()
    }

    fn prefs_many(&self, users: Vec<UserKey>) -> Fut<'_, Vec<NotifyPrefs>> {
        async move {
            let mut out = Vec::with_capacity(users.len());
            for chunk in users.chunks(MAX_BATCH) {
                let pipeline = self.client.pipeline();
                for user in chunk {
                    pipeline.get::<(), _>(self.user(user, "np")).await.map_err(err)?;
                }
                for reply in pipeline.try_all::<Option<String>>().await {
                    out.push(match reply.map_err(err)? {
                        Some(text) => serde_json::from_str(&text).map_err(corrupt("notify prefs"))?,
                        None => NotifyPrefs::default(),
                    });
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn page(&self, user: UserKey, before: Option<u64>, limit: usize) -> Fut<'_, (Vec<Notification>, u64)> {
        async move {
            let max = before.map_or("+inf".to_owned(), |b| format!("({b}"));
            let pipeline = self.client.pipeline();
            let range = (0, limit as i64);
            pipeline
                .zrevrangebyscore::<(), _, _, _>(self.user(&user, "nf"), max, "-inf", false, Some(range))
                .await
                .map_err(err)?;
            pipeline.hget::<(), _, _>(self.user(&user, "nm"), "unread").await.map_err(err)?;
            let mut replies = pipeline.try_all::<Value>().await.into_iter();
            let mut next = || replies.next().unwrap_or(Ok(Value::Null)).map_err(err);
            let (members, unread) = (next()?.into_array(), next()?.as_u64().unwrap_or(0));
            let notifications =
                members.iter().map(|m| parse_member(&m.as_str().unwrap_or_default())).collect::<Result<_, _>>()?;
            Ok((notifications, unread))
        }
        .boxed()
    }

    fn mark_read(&self, user: UserKey, id: u64, up_to: bool) -> Fut<'_, u64, MarkError> {
        async move {
            let keys = vec![self.user(&user, "nf"), self.user(&user, "nm")];
            let argv = vec![id.to_string(), if up_to { "1" } else { "0" }.to_owned()];
            let unread: i64 = self.client.eval(READ_LUA, keys, argv).await.map_err(err)?;
            u64::try_from(unread).map_err(|_| MarkError::Unknown(id))
        }
        .boxed()
    }

    fn set_prefs(&self, user: UserKey, prefs: NotifyPrefs) -> Fut<'_, ()> {
        async move {
            let _: Value =
                self.client.set(self.user(&user, "np"), json(&prefs)?, None, None, false).await.map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn register_device(&self, user: UserKey, device: Device, max: usize) -> Fut<'_, bool> {
        async move {
            let argv = vec![device.device.clone(), json(&device)?, max.to_string()];
            let done: i64 = self.client.eval(DEVICE_LUA, vec![self.user(&user, "nd")], argv).await.map_err(err)?;
            Ok(done == 1)
        }
        .boxed()
    }

    fn unregister_device(&self, user: UserKey, device: String) -> Fut<'_, bool> {
        async move {
            let removed: i64 = self.client.hdel(self.user(&user, "nd"), device).await.map_err(err)?;
            Ok(removed == 1)
        }
        .boxed()
    }

    fn devices(&self, user: UserKey) -> Fut<'_, Vec<Device>> {
        async move {
            let all: HashMap<String, String> = self.client.hgetall(self.user(&user, "nd")).await.map_err(err)?;
            let mut devices: Vec<Device> = all
                .values()
                .map(|text| serde_json::from_str(text).map_err(corrupt("notify devices")))
                .collect::<Result<_, _>>()?;
            devices.sort_by(|a, b| a.device.cmp(&b.device));
            Ok(devices)
        }
        .boxed()
    }

    fn dead_letters(&self, tenant: Option<String>, after: u64, limit: usize) -> Fut<'_, Vec<DeadLetter>> {
        async move {
            let (hash, ids) = (self.region("dead"), self.region("dead_ids"));
            let mut out = Vec::new();
            let mut from = after;
            while out.len() < limit {
                let page: Vec<String> = self
                    .client
                    .zrangebyscore(ids.as_str(), format!("({from}"), "+inf", false, Some((0, DEAD_CHUNK as i64)))
                    .await
                    .map_err(err)?;
                let Some(last) = page.last() else { break };
                from =
                    last.parse().map_err(|_| StoreError::Corrupt { table: "notify dead ids", detail: last.clone() })?;
                let texts: Vec<Option<String>> = self.client.hmget(hash.as_str(), page.clone()).await.map_err(err)?;
                for text in texts.into_iter().flatten() {
                    let letter: DeadLetter = serde_json::from_str(&text).map_err(corrupt("notify dead letters"))?;
                    if tenant.as_deref().is_none_or(|t| t == letter.delivery.tenant) && out.len() < limit {
                        out.push(letter);
                    }
                }
                if page.len() < DEAD_CHUNK {
                    break;
                }
            }
            Ok(out)
        }
        .boxed()
    }

    fn delete_dead(&self, seq: u64, tenant: Option<String>) -> Fut<'_, bool> {
        async move { Ok(self.take_dead(seq, tenant.as_deref(), None).await?.is_some()) }.boxed()
    }

    fn replay_dead(&self, seq: u64, tenant: Option<String>, now: u64) -> Fut<'_, Option<Delivery>> {
        async move { self.take_dead(seq, tenant.as_deref(), Some(now)).await }.boxed()
    }

    fn delivered(&self, delivery: Delivery) -> Fut<'_, ()> {
        async move { self.settle(&delivery, None).await }.boxed()
    }

    fn retry(&self, delivery: Delivery) -> Fut<'_, ()> {
        async move { self.settle(&delivery, Some(&delivery)).await }.boxed()
    }

    fn dead(&self, delivery: Delivery, failed_at: u64, max: u64) -> Fut<'_, ()> {
        async move {
            let Some(entry) = delivery.entry.clone() else { return Ok(()) };
            let seq = delivery.seq;
            let letter = json(&DeadLetter { delivery, failed_at })?;
            let argv = vec![entry, seq.to_string(), letter, max.to_string()];
            let _: Value = self.client.eval(DEAD_LUA, self.dead_keys(), argv).await.map_err(err)?;
            Ok(())
        }
        .boxed()
    }

    fn shared(&self) -> bool {
        true
    }

    fn pull(&self, held: Vec<String>, claim: bool, max: usize) -> Fut<'_, Vec<Delivery>> {
        self.take(held, claim, max).boxed()
    }

    fn set_foreground(&self, users: Vec<UserKey>, node: String, until: Option<u64>) -> Fut<'_, ()> {
        async move {
            for chunk in users.chunks(MAX_BATCH) {
                let pipeline = self.client.pipeline();
                for user in chunk {
                    let key = self.user(user, "ng");
                    match until {
                        Some(until) => {
                            pipeline.hset::<(), _, _>(key.as_str(), (node.as_str(), until)).await.map_err(err)?;
                            let keep = until.saturating_sub(crate::connection::unix_ms()) as i64;
                            pipeline.pexpire::<(), _>(key.as_str(), keep.max(1), None).await.map_err(err)?;
                        }
                        None => pipeline.hdel::<(), _, _>(key.as_str(), node.as_str()).await.map_err(err)?,
                    }
                }
                for reply in pipeline.try_all::<Value>().await {
                    reply.map_err(err)?;
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn foreground_elsewhere(&self, users: Vec<UserKey>, node: String, now: u64) -> Fut<'_, Vec<bool>> {
        async move {
            let mut out = Vec::with_capacity(users.len());
            for chunk in users.chunks(MAX_BATCH) {
                let pipeline = self.client.pipeline();
                for user in chunk {
                    pipeline.hgetall::<(), _>(self.user(user, "ng")).await.map_err(err)?;
                }
                for reply in pipeline.try_all::<HashMap<String, u64>>().await {
                    out.push(reply.map_err(err)?.iter().any(|(n, until)| *n != node && *until > now));
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
    use crate::proto::{Payload, Priority};

    #[test]
    fn feed_members_carry_the_id_and_read_flag_outside_the_json() {
        let note = Notification {
            id: 0,
            time: 1,
            kind: "mention".into(),
            priority: Priority::High,
            title: "t:1".into(),
            body: String::new(),
            data: Payload::from(r#"{"n":12345678901234567890}"#),
            room: None,
            read: false,
            silent: false,
        };
        let member = format!("42:1:{}", serde_json::to_string(&note).unwrap());
        let back = parse_member(&member).unwrap();
        assert_eq!((back.id, back.read, back.title.as_str()), (42, true, "t:1"));
        assert_eq!(back.data, note.data, "the backend's JSON verbatim");
        assert!(parse_member("x").is_err());
    }
}
