-- Heartbeat (and stop) of a registered process, atomically, in one round trip.
-- Params are merged field by field (HSET/HDEL), so concurrent heartbeats with different
-- params never lose each other's fields.
-- KEYS[1] record hash  KEYS[2] params hash  KEYS[3] live ZSET  KEYS[4] kind ZSET
-- KEYS[5] component ZSET (all tagged {processes}: one slot)
-- ARGV[1] id  ARGV[2] new status ('' keeps it)  ARGV[3] '1' when ARGV[4] is a new message
-- ARGV[5] retention ms of a stopped record  ARGV[6] n: number of params to set
-- ARGV[7 .. 6+2n] name/value pairs to set, then names of params to remove
-- Returns the server time of the heartbeat (epoch ms), or nil for an unknown process.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local now = tc_now_ms()
local fields = {'updated', now}
if ARGV[2] ~= '' then
  fields[#fields + 1] = 'status'
  fields[#fields + 1] = ARGV[2]
end
if ARGV[3] == '1' then
  fields[#fields + 1] = 'message'
  fields[#fields + 1] = ARGV[4]
end
redis.call('HSET', KEYS[1], unpack(fields))
local n = tonumber(ARGV[6])
if n > 0 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 7, 6 + 2 * n))
end
if #ARGV > 6 + 2 * n then
  redis.call('HDEL', KEYS[2], unpack(ARGV, 7 + 2 * n))
end
if redis.call('HGET', KEYS[1], 'status') == 'stopped' then
  -- A stopped process leaves the liveness indexes; its record is kept for a while.
  for i = 3, 5 do
    redis.call('ZREM', KEYS[i], ARGV[1])
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ARGV[5])
else
  for i = 3, 5 do
    redis.call('ZADD', KEYS[i], now, ARGV[1])
  end
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
return now
