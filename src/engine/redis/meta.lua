-- A room's epoch and bounds, giving it an epoch if it has none. Run by edgerelay's Redis
-- engine (src/engine/redis/mod.rs) with EVALSHA.
--
-- KEYS[1]  room meta hash  {epoch, top}
-- KEYS[2]  room stream
-- ARGV[1]  an epoch to use if the room has none (new, or its data was lost)
-- ARGV[2]  how long an unused room's meta is kept, ms
--
-- Returns {epoch, first, top}; nothing is retained when first == top + 1.

local meta, stream = KEYS[1], KEYS[2]
local epoch = redis.call('HGET', meta, 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('HSET', meta, 'epoch', epoch, 'top', 0)
  redis.call('DEL', stream)
end
redis.call('PEXPIRE', meta, ARGV[2])
local top = tonumber(redis.call('HGET', meta, 'top'))
local first = top + 1
local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
if #head > 0 then
  first = tonumber(string.match(head[1][1], '^(%d+)'))
end
return {epoch, first, top}
