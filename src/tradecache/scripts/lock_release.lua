-- Release a lease if the caller still owns it, and hand the lock to the oldest waiter.
-- KEYS[1] lease hash, KEYS[2] fence counter, KEYS[3] waiter queue, KEYS[4] optional index;
-- ARGV[1] token, ARGV[2] channel prefix, ARGV[3] index member.
-- The oldest waiter gets the lock in this same step (FIFO, no thundering herd, no
-- retry round trip) and is told on its process's channel. A handoff whose waiter
-- is gone is released again by lock_leave.lua, which hands on to the next waiter;
-- if the waiter's process died, its lease expires like any crashed holder's.
-- Returns 1 when released, 0 when the lease had expired or belongs to someone else.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
if KEYS[4] then
  redis.call('ZREM', KEYS[4], ARGV[3])
end
tc_lock_handoff(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[3], ARGV[2])
return 1
