-- Extend a lease if the caller still owns it.
-- KEYS[1] lease hash, KEYS[2] optional index; ARGV[1] token, ARGV[2] ttl ms, ARGV[3] member.
-- Returns 1 when renewed, 0 when the lease expired or belongs to someone else.
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then
  return 0
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if KEYS[2] then
  local now = redis.call('TIME')
  redis.call('ZADD', KEYS[2], tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
    + tonumber(ARGV[2]), ARGV[3])
end
return 1
