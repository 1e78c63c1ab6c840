//! Where sessions live in a Redis region (`store.engine = "redis"`): the same four things the
//! embedded store keeps ([`super::store`]), in the region's Redis, plus the owner lease that
//! says which node applies a session's inputs (`super::region`).
//!
//! Keys of a session, all `<prefix>:{s/<tenant>/<id>}:…` (one Redis Cluster hash slot):
//!
//! - `:owner`: the owning node's name, set with a lease (`PX`) the owner renews
//! - `:meta`: the session's [`Meta`] (JSON)
//! - `:patches`: sorted set, score the version, member the applied patch (JSON)
//! - `:snap`: hash `v` (version), `d` (document) — the latest snapshot only
//! - `:ids`: hash user → the user's latest patch ids and versions (dedupe)
//!
//! Why the commit script checks the lease: a node that lost its lease (paused past it, cut off
//! from Redis) and still has the session loaded must not write after the new owner; a write is
//! fenced by the `:owner` key in the same script, so only the owner's writes land.
//!
//! Expiry: the data keys carry a TTL of `expire_after_secs` (plus a minute), set by every commit
//! and every lease renewal, so a session nobody has loaded for that long disappears from Redis
//! by itself; a loaded one is expired by its owner as on one node.

use std::collections::HashMap;

use fred::prelude::{Client, KeysInterface, LuaInterface, Value};

use super::machine::{Meta, Write};
use super::store::{Op, Stored};
use crate::hub::RoomKey;
use crate::proto::{Payload, SessionSnapshot};
use crate::store::StoreError;

/// Claims or extends the lease: `ARGV` node, lease ms. Returns the owner (maybe another node).
const ACQUIRE_LUA: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return cur
"#;

/// Extends the lease if this node holds it, and the data's TTL: `KEYS` owner, meta, patches,
/// snap, ids; `ARGV` node, lease ms, data TTL ms. 1 if held, 0 if not.
const RENEW_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
for i = 2, 5 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
return 1
"#;

/// Gives the lease up if this node holds it.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"#;

/// Commits one session's writes in order, fenced by the lease: `KEYS` owner, meta, patches,
/// snap, ids; `ARGV` node, keep_patches, data TTL ms, then the ops (`m` meta | `p` version patch |
/// `i` user ids | `s` version doc | `d`).
const COMMIT_LUA: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return redis.error_reply('LEASE this node does not own the session') end
local keep = tonumber(ARGV[2])
local i = 4
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'm' then
    redis.call('SET', KEYS[2], ARGV[i + 1]); i = i + 2
  elseif op == 'p' then
    redis.call('ZREMRANGEBYSCORE', KEYS[3], ARGV[i + 1], ARGV[i + 1])
    redis.call('ZADD', KEYS[3], ARGV[i + 1], ARGV[i + 2]); i = i + 3
  elseif op == 'i' then
    redis.call('HSET', KEYS[5], ARGV[i + 1], ARGV[i + 2]); i = i + 3
  elseif op == 's' then
    local v = tonumber(ARGV[i + 1])
    redis.call('HSET', KEYS[4], 'v', ARGV[i + 1], 'd', ARGV[i + 2])
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', v - keep); i = i + 3
  elseif op == 'd' then
    redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5]); i = i + 1
  else
    return redis.error_reply('BADOP ' .. tostring(op))
  end
end
for k = 2, 5 do redis.call('PEXPIRE', KEYS[k], ARGV[3]) end
return 1
"#;

/// The stored session: `{}` if none, else `{meta, snapshot version, snapshot doc, patches, ids}`.
const LOAD_LUA: &str = r#"
local meta = redis.call('GET', KEYS[2])
if not meta then return {} end
local snap = redis.call('HMGET', KEYS[4], 'v', 'd')
return {meta, snap[1] or '', snap[2] or '', redis.call('ZRANGE', KEYS[3], 0, -1), redis.call('HGETALL', KEYS[5])}
"#;

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::backend(e)
}

fn corrupt(table: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt { table, detail: e.to_string() }
}

/// Sessions' store and leases in the region's Redis.
pub struct RedisSessions {
    client: Client,
    prefix: String,
    node: String,
    lease_ms: u64,
    /// The data keys' TTL.
    ttl_ms: u64,
    keep: u64,
}

impl RedisSessions {
    pub fn new(client: Client, prefix: &str, node: &str, lease_ms: u64, expire_after_ms: u64, keep: u64) -> Self {
        RedisSessions {
            client,
            prefix: prefix.to_owned(),
            node: node.to_owned(),
            lease_ms,
            ttl_ms: expire_after_ms.saturating_add(60_000),
            keep,
        }
    }

    /// The session's keys: owner, meta, patches, snap, ids.
    fn keys(&self, key: &RoomKey) -> Vec<String> {
        let base = format!("{}:{{s/{}/{}}}", self.prefix, key.tenant, key.room.as_str());
        ["owner", "meta", "patches", "snap", "ids"].iter().map(|k| format!("{base}:{k}")).collect()
    }

    /// Takes the session's lease if nobody holds it (or extends this node's); returns the
    /// holder's name.
    pub async fn acquire(&self, key: &RoomKey) -> Result<String, StoreError> {
        let keys = vec![self.keys(key).swap_remove(0)];
        let args = vec![self.node.clone(), self.lease_ms.to_string()];
        let owner: Value = self.client.eval(ACQUIRE_LUA, keys, args).await.map_err(err)?;
        owner.as_string().ok_or_else(|| err("the lease script answered no owner"))
    }

    /// The node holding the session's lease, if any.
    pub async fn owner(&self, key: &RoomKey) -> Result<Option<String>, StoreError> {
        let owner: Option<String> = self.client.get(self.keys(key).swap_remove(0)).await.map_err(err)?;
        Ok(owner)
    }

    /// Extends this node's lease; false if another node holds it now (or nobody).
    pub async fn renew(&self, key: &RoomKey) -> Result<bool, StoreError> {
        let args = vec![self.node.clone(), self.lease_ms.to_string(), self.ttl_ms.to_string()];
        let held: i64 = self.client.eval(RENEW_LUA, self.keys(key), args).await.map_err(err)?;
        Ok(held == 1)
    }

    /// Gives the lease up (the session was unloaded here).
    pub async fn release(&self, key: &RoomKey) -> Result<(), StoreError> {
        let keys = vec![self.keys(key).swap_remove(0)];
        let _: Value = self.client.eval(RELEASE_LUA, keys, vec![self.node.clone()]).await.map_err(err)?;
        Ok(())
    }

    /// Commits the changes, in order per session, each session's in one script fenced by its
    /// lease. Sessions are committed concurrently; any failure fails the batch (the service
    /// then reloads every session involved, as for the embedded store).
    pub async fn commit(&self, batch: &[(RoomKey, Op)]) -> Result<(), StoreError> {
        let mut by_key: Vec<(&RoomKey, Vec<Value>)> = Vec::new();
        for (key, op) in batch {
            let at = match by_key.iter().position(|(k, _)| *k == key) {
                Some(at) => at,
                None => {
                    let head = [self.node.clone(), self.keep.to_string(), self.ttl_ms.to_string()];
                    let head = head.into_iter().map(Value::from).collect();
                    by_key.push((key, head));
                    by_key.len() - 1
                }
            };
            encode(op, &mut by_key[at].1)?;
        }
        let commits = by_key.into_iter().map(|(key, args)| async move {
            let _: Value = self.client.eval(COMMIT_LUA, self.keys(key), args).await.map_err(err)?;
            Ok::<_, StoreError>(())
        });
        for result in futures_util::future::join_all(commits).await {
            result?;
        }
        Ok(())
    }

    /// The stored session, `None` if there is none.
    pub async fn load(&self, key: &RoomKey) -> Result<Option<Stored>, StoreError> {
        let reply: Value = self.client.eval(LOAD_LUA, self.keys(key), Vec::<String>::new()).await.map_err(err)?;
        let mut parts = reply.into_array().into_iter();
        let Some(meta) = parts.next() else { return Ok(None) };
        let bytes = |v: Option<Value>| v.and_then(|v| v.as_bytes().map(<[u8]>::to_vec)).unwrap_or_default();
        let meta: Meta = serde_json::from_slice(&bytes(Some(meta))).map_err(|e| corrupt("session meta", e))?;
        let version = String::from_utf8(bytes(parts.next())).ok().and_then(|v| v.parse().ok());
        let Some(version) = version else { return Err(corrupt("session snapshot", "a session without a snapshot")) };
        let snapshot = SessionSnapshot { version, doc: Payload::from(bytes(parts.next())) };
        let mut earlier = Vec::new();
        let mut after = Vec::new();
        for patch in parts.next().map(Value::into_array).unwrap_or_default() {
            let patch: crate::proto::SessionPatch =
                serde_json::from_slice(&bytes(Some(patch))).map_err(|e| corrupt("session patches", e))?;
            if patch.version <= snapshot.version { earlier.push(patch) } else { after.push(patch) }
        }
        let mut ids = HashMap::new();
        let flat = parts.next().map(Value::into_array).unwrap_or_default();
        for pair in flat.chunks(2) {
            let [user, list] = pair else { continue };
            let user = String::from_utf8_lossy(&bytes(Some(user.clone()))).into_owned();
            let list = serde_json::from_slice(&bytes(Some(list.clone()))).map_err(|e| corrupt("session ids", e))?;
            ids.insert(user, list);
        }
        Ok(Some(Stored { meta, snapshot, earlier, after, ids }))
    }
}

/// One op as commit-script arguments (documents are bytes: a Yjs snapshot is binary).
fn encode(op: &Op, args: &mut Vec<Value>) -> Result<(), StoreError> {
    fn json(v: &impl serde::Serialize) -> Result<Value, StoreError> {
        Ok(Value::from(serde_json::to_string(v).map_err(err)?))
    }
    match op {
        Op::Write(Write::Meta(m)) => args.extend([Value::from("m"), json(m)?]),
        Op::Write(Write::Patch(p)) => args.extend([Value::from("p"), Value::from(p.version.to_string()), json(p)?]),
        Op::Write(Write::Ids { user, ids }) => args.extend([Value::from("i"), Value::from(user.as_str()), json(ids)?]),
        Op::Write(Write::Snapshot(s)) => args.extend([
            Value::from("s"),
            Value::from(s.version.to_string()),
            Value::Bytes(bytes::Bytes::copy_from_slice(&s.doc.0)),
        ]),
        Op::Delete => args.push(Value::from("d")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fred::prelude::{Builder, ClientLike, Config};

    use super::*;
    use crate::collab::store::tests::meta;
    use crate::proto::{RoomName, SessionPatch};
    use crate::testing::RedisServer;

    async fn store(server: &RedisServer, node: &str) -> RedisSessions {
        let client = Builder::from_config(Config::from_url(&server.url()).unwrap()).build().unwrap();
        client.init().await.unwrap();
        RedisSessions::new(client, "t", node, 60_000, 600_000, 2)
    }

    fn patch(version: u64) -> Op {
        let patch =
            SessionPatch { version, user: "bob".into(), id: format!("p{version}"), patch: "[]".into(), time: 0 };
        Op::Write(Write::Patch(patch))
    }

    #[tokio::test]
    async fn only_the_lease_holder_writes_and_any_node_loads_what_it_wrote() {
        let server = RedisServer::start().expect("start redis-server");
        let (a, b) = (store(&server, "a").await, store(&server, "b").await);
        let key = RoomKey { tenant: "acme".into(), room: RoomName::parse("doc:x").unwrap() };
        assert_eq!(a.acquire(&key).await.unwrap(), "a");
        assert_eq!(b.acquire(&key).await.unwrap(), "a", "held by a");
        assert_eq!(b.load(&key).await.unwrap(), None);
        // A binary (Yjs) snapshot, patches before and after it, ids.
        let binary = Payload::from(vec![0u8, 0xff, 1, 2]);
        let mut batch = vec![(key.clone(), Op::Write(Write::Meta(meta(0))))];
        batch.extend((1..=5).map(|v| (key.clone(), patch(v))));
        batch.push((key.clone(), Op::Write(Write::Snapshot(SessionSnapshot { version: 4, doc: binary.clone() }))));
        let ids = vec![("p5".to_string(), 5)];
        batch.push((key.clone(), Op::Write(Write::Ids { user: "bob".into(), ids: ids.clone() })));
        a.commit(&batch).await.unwrap();
        let stored = b.load(&key).await.unwrap().unwrap();
        assert_eq!(stored.meta, meta(0));
        assert_eq!(stored.snapshot, SessionSnapshot { version: 4, doc: binary });
        let versions = |ps: &[SessionPatch]| ps.iter().map(|p| p.version).collect::<Vec<_>>();
        assert_eq!((versions(&stored.earlier), versions(&stored.after)), (vec![3, 4], vec![5]), "keep 2 before");
        assert_eq!(stored.ids, [("bob".to_string(), ids)].into());

        // b cannot write while a holds the lease; once a gives it up, b takes it and writes.
        assert!(b.commit(&[(key.clone(), patch(6))]).await.is_err(), "fenced by the lease");
        assert!(!b.renew(&key).await.unwrap());
        assert!(a.renew(&key).await.unwrap());
        a.release(&key).await.unwrap();
        assert_eq!(b.owner(&key).await.unwrap(), None);
        assert_eq!(b.acquire(&key).await.unwrap(), "b");
        assert!(a.commit(&[(key.clone(), patch(6))]).await.is_err(), "a lost it");
        b.commit(&[(key.clone(), patch(6))]).await.unwrap();
        assert_eq!(versions(&a.load(&key).await.unwrap().unwrap().after), vec![5, 6]);
        b.commit(&[(key.clone(), Op::Delete)]).await.unwrap();
        assert_eq!(a.load(&key).await.unwrap(), None);
    }
}
