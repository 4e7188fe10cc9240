-- A waiter leaves without the lock (timeout, cancellation), or a process got a
-- handoff for a waiter it no longer has: undo what may have been done for it.
-- KEYS[1] lease hash, KEYS[2] fence counter, KEYS[3] waiter queue, KEYS[4] optional index;
-- ARGV[1] token ('' for none), ARGV[2] waiter ('' for none), ARGV[3] channel prefix,
-- ARGV[4] index member.
-- Takes the waiter out of the queue; releases the lease if it was handed to the
-- token; and when the lock is free, hands it to the oldest waiter.
-- Returns 1 when the lock was handed to a waiter, else 0.
if ARGV[2] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[2])
end
local held = redis.call('HGET', KEYS[1], 'token')
if held and held == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if KEYS[4] then
    redis.call('ZREM', KEYS[4], ARGV[4])
  end
  held = false
end
if held then
  return 0
end
return tc_lock_handoff(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], ARGV[3])
