-- Merge fields into an order's status record (a hash, one field per order field),
-- atomically: concurrent merges of different fields never lose each other.
-- KEYS[1] order hash, KEYS[2] the exchange's order index (ZSET, same slot)
-- ARGV[1] 'save' (create or merge) or 'update' (merge into an existing order)
-- ARGV[2] order id (index member)
-- ARGV[3] '1' the new status is terminal, '0' it is live, '' status unchanged
-- ARGV[4] lifetime of a terminal order, ms
-- ARGV[5..] field, value pairs (JSON values); an empty value deletes the field
-- The creation time ('timestamp') is written once and never overwritten; a
-- terminal order expires ARGV[4] ms after it first became terminal, on its own
-- key only. Index scores are expiry times (server ms, +inf while live), so
-- expired orders are pruned from the index by score.
-- Returns false for an update of a missing order, the merged hash for an
-- update, 1 for a save.
local key, index = KEYS[1], KEYS[2]
if ARGV[1] == 'update' and redis.call('EXISTS', key) == 0 then return false end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local stamped = false
for i = 5, #ARGV, 2 do
  local field, value = ARGV[i], ARGV[i + 1]
  if field == 'timestamp' then
    redis.call('HSETNX', key, field, value)
  elseif value == '' then
    redis.call('HDEL', key, field)
  else
    if field == 'lastUpdateTimestamp' then stamped = true end
    redis.call('HSET', key, field, value)
  end
end
redis.call('HSETNX', key, 'timestamp', string.format('%d', now))
if not stamped then
  redis.call('HSET', key, 'lastUpdateTimestamp', string.format('%d', now))
end
if ARGV[3] == '1' then
  if redis.call('PTTL', key) < 0 then
    local ttl = tonumber(ARGV[4])
    redis.call('PEXPIRE', key, ttl)
    redis.call('ZADD', index, string.format('%d', now + ttl), ARGV[2])
  end
elseif ARGV[3] == '0' then
  redis.call('PERSIST', key)
  redis.call('ZADD', index, '+inf', ARGV[2])
end
redis.call('ZREMRANGEBYSCORE', index, '-inf', string.format('%d', now))
if ARGV[1] == 'update' then return redis.call('HGETALL', key) end
return 1
