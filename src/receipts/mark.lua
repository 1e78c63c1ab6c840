-- A member's read mark in a room, never moving back within an epoch. Run by edgerelay's
-- receipts store on Redis (src/receipts/redis.rs) with EVAL.
--
-- KEYS[1]  the room's marks hash (member -> "<epoch>:<read>:<delivered>")
-- ARGV[1]  the member
-- ARGV[2]  the new mark, "<epoch>:<read>:<delivered>"
-- ARGV[3]  how long the hash is kept without a write, ms
--
-- Another epoch replaces the stored mark; the same epoch keeps the highest read and delivered.
-- Offsets are compared as decimal strings (no leading zeros): exact beyond 2^53.

local function higher(a, b)
  if #a ~= #b then
    if #a > #b then return a end
    return b
  end
  if a > b then return a end
  return b
end

local epoch, read, delivered = string.match(ARGV[2], '^(%d+):(%d+):(%d+)$')
if not epoch then
  return redis.error_reply('bad mark')
end
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local e, r, d = string.match(old, '^(%d+):(%d+):(%d+)$')
  if e == epoch then
    read = higher(read, r)
    delivered = higher(delivered, d)
  end
end
redis.call('HSET', KEYS[1], ARGV[1], epoch .. ':' .. read .. ':' .. delivered)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
