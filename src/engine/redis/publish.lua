-- Publishes one message to a room, atomically: idempotency check, next offset, append, trim,
-- fanout. Run by edgerelay's Redis engine (src/engine/redis/mod.rs) with EVALSHA.
--
-- KEYS[1]  room meta hash  {epoch, top}
-- KEYS[2]  room stream     entries `<offset>-0` with fields t (unix ms) and m (the message)
-- KEYS[3]  idempotency key of (from, id) -> "<epoch>:<offset>"
-- ARGV[1]  the message, encoded by the node (time, from, id, payload)
-- ARGV[2]  now, unix ms
-- ARGV[3]  dedupe window, ms
-- ARGV[4]  messages kept per room
-- ARGV[5]  message age limit, ms
-- ARGV[6]  an epoch to use if the room has none (new, or its data was lost)
-- ARGV[7]  the room's shard channel
-- ARGV[8]  how long an unused room's meta is kept, ms
-- ARGV[9]  the highest position this node delivered in the room, "<epoch>:<offset>", or ""
--
-- Returns {duplicate (0|1), epoch, offset}.

local meta, stream, idem = KEYS[1], KEYS[2], KEYS[3]
local epoch = redis.call('HGET', meta, 'epoch')

-- A node that already delivered a higher offset of this epoch than the room's top means the
-- room's data went back in time (Redis restarted from an older snapshot, or failed over to a
-- replica that was behind): offsets would be handed out twice. Treat it like lost data.
local known_epoch, known_top = string.match(ARGV[9], '^(%d+):(%d+)$')
if epoch and known_epoch == epoch
    and tonumber(redis.call('HGET', meta, 'top') or '0') < tonumber(known_top) then
  epoch = false
end

local seen = redis.call('GET', idem)
if seen and epoch then
  local e, o = string.match(seen, '^(%d+):(%d+)$')
  if e == epoch then
    return {1, e, tonumber(o)}
  end
end

if not epoch then
  -- A room without meta is new, or Redis lost it (or went back): a new epoch, no stale entries.
  epoch = ARGV[6]
  redis.call('HSET', meta, 'epoch', epoch, 'top', 0)
  redis.call('DEL', stream)
end

-- The append comes before the new top is stored: Redis does not undo a script's writes when a
-- later command fails, and an XADD refused (the stream already holds this offset, e.g. restored
-- from another snapshot than the meta) must not leave the top raised past a missing offset.
local top = tonumber(redis.call('HGET', meta, 'top') or '0') + 1
local now = tonumber(ARGV[2])
redis.call('XADD', stream, 'MAXLEN', ARGV[4], top .. '-0', 't', ARGV[2], 'm', ARGV[1])
redis.call('HSET', meta, 'top', top)

-- Age retention: the oldest entries go first, a few per publish; an idle stream expires whole.
local max_age = tonumber(ARGV[5])
for _ = 1, 8 do
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #head == 0 or tonumber(head[1][2][2]) >= now - max_age then
    break
  end
  redis.call('XDEL', stream, head[1][1])
end
redis.call('PEXPIRE', stream, max_age)
redis.call('PEXPIRE', meta, ARGV[8])

redis.call('SET', idem, epoch .. ':' .. top, 'PX', ARGV[3])
redis.call('SPUBLISH', ARGV[7], epoch .. ':' .. top .. ':' .. ARGV[1])
return {0, epoch, top}
