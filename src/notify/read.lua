-- Marks a notification (or every one up to it) read in a user's feed. Run by edgerelay's
-- notifications on Redis (src/notify/redis.rs) with EVAL.
--
-- KEYS[1]  the feed (see add.lua)
-- KEYS[2]  the meta hash
-- ARGV[1]  the id
-- ARGV[2]  '1': every notification up to the id; '0': that one only
--
-- Returns the unread count after, or -1 when the id is not in the feed (never given, or, for
-- one notification, dropped).

local id = tonumber(ARGV[1])
local last = tonumber(redis.call('HGET', KEYS[2], 'last') or '0')
if id == nil or id < 1 or id > last then
  return -1
end
local from = id
if ARGV[2] == '1' then
  from = 0
end
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], from, id)
if ARGV[2] ~= '1' and not entries[1] then
  return -1
end
local changed = 0
for _, member in ipairs(entries) do
  local head, rest = string.match(member, '^(%d+:)0(:.*)$')
  if head then
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZADD', KEYS[1], tonumber(string.sub(head, 1, -2)), head .. '1' .. rest)
    changed = changed + 1
  end
end
local unread = redis.call('HINCRBY', KEYS[2], 'unread', -changed)
if unread < 0 then
  redis.call('HSET', KEYS[2], 'unread', 0)
  unread = 0
end
return unread
