-- Adds a notification to a user's feed. Run by edgerelay's notifications on Redis
-- (src/notify/redis.rs) with EVAL; every key is in the user's hash slot.
--
-- KEYS[1]  the feed: sorted set, score = id, member = "<id>:<read 0|1>:<notification JSON>"
-- KEYS[2]  the meta hash: last (the last id given), unread, len; "q:<id>" while the push of
--          notification <id> is not yet in the outbox (another hash slot: queued after this)
-- KEYS[3]  idempotency keys: hash, "k:<key>" -> id and "i:<id>" -> key
-- ARGV[1]  the backend's idempotency key, or ''
-- ARGV[2]  the notification's JSON (its id and read fields are the member's)
-- ARGV[3]  notifications kept (notifications.max_feed)
-- ARGV[4]  '1' when the notification is to be pushed
--
-- Returns {duplicate (0 or 1), member, unread, push pending (0 or 1)}. Ids grow by one per
-- user with no gap; the oldest entries beyond the length are dropped in the same call, with
-- their keys and markers. A duplicate whose push is still pending (the node that added it
-- stopped before queueing it) says so, and the retry's node queues it.

local key = ARGV[1]
if key ~= '' then
  local known = redis.call('HGET', KEYS[3], 'k:' .. key)
  if known then
    local old = redis.call('ZRANGEBYSCORE', KEYS[1], known, known)
    if old[1] then
      local pending = redis.call('HEXISTS', KEYS[2], 'q:' .. known)
      return {1, old[1], tonumber(redis.call('HGET', KEYS[2], 'unread') or '0'), pending}
    end
  end
end
local id = redis.call('HINCRBY', KEYS[2], 'last', 1)
local member = id .. ':0:' .. ARGV[2]
redis.call('ZADD', KEYS[1], id, member)
local unread = redis.call('HINCRBY', KEYS[2], 'unread', 1)
local len = redis.call('HINCRBY', KEYS[2], 'len', 1)
if key ~= '' then
  redis.call('HSET', KEYS[3], 'k:' .. key, id, 'i:' .. id, key)
end
if ARGV[4] == '1' then
  redis.call('HSET', KEYS[2], 'q:' .. id, '1')
end
local max = tonumber(ARGV[3])
while len > max do
  local oldest = redis.call('ZPOPMIN', KEYS[1])
  if not oldest[1] then
    break
  end
  local old_id, flag = string.match(oldest[1], '^(%d+):(%d):')
  len = redis.call('HINCRBY', KEYS[2], 'len', -1)
  redis.call('HDEL', KEYS[2], 'q:' .. old_id)
  if flag == '0' then
    unread = redis.call('HINCRBY', KEYS[2], 'unread', -1)
  end
  local old_key = redis.call('HGET', KEYS[3], 'i:' .. old_id)
  if old_key then
    redis.call('HDEL', KEYS[3], 'k:' .. old_key, 'i:' .. old_id)
  end
end
return {0, member, unread, 0}
