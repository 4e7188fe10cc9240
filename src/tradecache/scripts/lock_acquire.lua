-- Grant a lease if the lock is free: one round trip, atomic.
-- KEYS[1] lease hash (token, fence, owner), KEYS[2] fence counter (no TTL),
-- KEYS[3] waiter queue (sorted set of '<hub>:<token>' by arrival, server ms),
-- KEYS[4] optional index (sorted set of members scored by expiry, server ms).
-- ARGV[1] token, ARGV[2] ttl ms, ARGV[3] owner, ARGV[4] index member,
-- ARGV[5] waiter ('' when the caller will not wait).
-- Returns {1, fence} when granted, {0, pttl, owner} when held by someone else.
local held = redis.call('HGET', KEYS[1], 'token')
if held == ARGV[1] then
  -- The same acquisition retried (a reconnect resent the command): idempotent.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, redis.call('HGET', KEYS[1], 'fence')}
end
local now = redis.call('TIME')
local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
if held then
  local pttl = redis.call('PTTL', KEYS[1])
  if ARGV[5] ~= '' then
    -- Queue the waiter (keeping its place if it is queued already): the release
    -- wakes the oldest waiters only, not every process.
    redis.call('ZADD', KEYS[3], 'NX', math.floor(micros / 1000), ARGV[5])
    redis.call('PEXPIRE', KEYS[3], math.max(pttl, 0) + 2 * tonumber(ARGV[2]) + 1000)
  end
  return {0, pttl, redis.call('HGET', KEYS[1], 'owner') or false}
end
-- fence = max(last + 1, server time in µs): strictly increasing while the counter
-- exists, and still above every earlier fence when the counter was lost (eviction,
-- a restart without fsync, a failover to a lagging replica), unless the server
-- clock went back by more than what was lost.
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local fence = string.format('%.0f', math.max(last + 1, micros))
redis.call('SET', KEYS[2], fence)
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'fence', fence, 'owner', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if ARGV[5] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[5])
end
if KEYS[4] then
  redis.call('ZADD', KEYS[4], math.floor(micros / 1000) + tonumber(ARGV[2]), ARGV[4])
end
return {1, fence}
