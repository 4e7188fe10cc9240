-- Shared steps of the lock scripts (lock_acquire, lock_release, lock_leave).

-- The next fence of a lock: max(last + 1, server time in µs, floor + 1). Strictly
-- increasing while the counter exists, and still above every earlier fence when the
-- counter was lost (eviction, a restart without fsync, a failover to a replica that
-- missed the last grants): the server clock is the epoch, unless it went back by more
-- than what was lost; `floor`, the highest fence the caller has seen, covers that case
-- for the caller.
local function tc_lock_fence(fence_key, floor)
  local now = redis.call('TIME')
  local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
  local last = tonumber(redis.call('GET', fence_key) or '0')
  local fence = string.format('%.0f', math.max(last + 1, micros, (tonumber(floor) or 0) + 1))
  redis.call('SET', fence_key, fence)
  return fence, micros
end

-- Grant the lease to `token` for `ttl` ms; keep the optional index in step.
-- `floor` (optional): the new fence is above it.
local function tc_lock_grant(lease, fence_key, index, index_member, token, ttl, owner, floor)
  local fence, micros = tc_lock_fence(fence_key, floor)
  redis.call('HSET', lease, 'token', token, 'fence', fence, 'owner', owner)
  redis.call('PEXPIRE', lease, ttl)
  if index then
    redis.call('ZADD', index, math.floor(micros / 1000) + tonumber(ttl), index_member)
  end
  return fence
end

-- Hand the (free) lock to the oldest waiter and tell it on its process's channel.
-- A waiter is '<hub>:<token>:<ttl ms>:<owner>'; the message is '<token>:<fence>'.
local function tc_lock_handoff(lease, fence_key, queue, index, index_member, prefix)
  local popped = redis.call('ZPOPMIN', queue, 1)
  if #popped == 0 then
    return 0
  end
  local hub, token, ttl, owner = string.match(popped[1], '^([^:]*):([^:]*):([^:]*):(.*)$')
  local fence = tc_lock_grant(lease, fence_key, index, index_member, token, ttl, owner)
  redis.call('PUBLISH', prefix .. ':' .. hub, token .. ':' .. fence)
  return 1
end
