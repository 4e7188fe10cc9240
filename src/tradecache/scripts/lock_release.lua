-- Release a lease if the caller still owns it, and wake the two oldest waiters.
-- KEYS[1] lease hash, KEYS[2] waiter queue, KEYS[3] optional index;
-- ARGV[1] token, ARGV[2] channel prefix, ARGV[3] index member.
-- A waiter '<hub>:<token>' is woken on channel '<prefix>:<hub>' with its token.
-- Two, not one: if the oldest waiter died, the next one still wakes at once.
-- Returns 1 when released, 0 when the lease had expired or belongs to someone else.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if KEYS[3] then
  redis.call('ZREM', KEYS[3], ARGV[3])
end
local woken = redis.call('ZPOPMIN', KEYS[2], 2)
for i = 1, #woken, 2 do
  local waiter = woken[i]
  local sep = string.find(waiter, ':', 1, true)
  redis.call('PUBLISH', ARGV[2] .. ':' .. string.sub(waiter, 1, sep - 1), string.sub(waiter, sep + 1))
end
return 1
