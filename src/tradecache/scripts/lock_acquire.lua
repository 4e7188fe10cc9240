-- Grant a lease if the lock is free: one round trip, atomic.
-- KEYS[1] lease hash (token, fence, owner), KEYS[2] fence counter (no TTL),
-- KEYS[3] waiter queue (sorted set of waiters by arrival, server ms),
-- KEYS[4] optional index (sorted set of members scored by expiry, server ms).
-- ARGV[1] token, ARGV[2] ttl ms, ARGV[3] owner, ARGV[4] index member,
-- ARGV[5] waiter '<hub>:<token>:<ttl ms>:<owner>' ('' when the caller will not wait),
-- ARGV[6] the highest fence of this lock the caller has seen (0: none): a new fence is above.
-- Returns {1, fence} when granted, {0, pttl, owner} when held by someone else.
local held = redis.call('HGET', KEYS[1], 'token')
if held == ARGV[1] then
  -- Ours already: a retried command, or a handoff whose message we have not read.
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, redis.call('HGET', KEYS[1], 'fence')}
end
if held then
  local pttl = redis.call('PTTL', KEYS[1])
  if ARGV[5] ~= '' then
    -- Queue the waiter (keeping its place if it is queued already): the release
    -- hands the lock to the oldest waiter.
    local now = redis.call('TIME')
    redis.call('ZADD', KEYS[3], 'NX', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000), ARGV[5])
    redis.call('PEXPIRE', KEYS[3], math.max(pttl, 0) + 2 * tonumber(ARGV[2]) + 1000)
  end
  return {0, pttl, redis.call('HGET', KEYS[1], 'owner') or false}
end
if ARGV[5] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[5])
end
return {1, tc_lock_grant(KEYS[1], KEYS[2], KEYS[4], ARGV[4], ARGV[1], ARGV[2], ARGV[3], ARGV[6])}
