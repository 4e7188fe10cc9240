-- Fenced write: store a value unless a write with a newer fence already happened.
-- KEYS[1] the resource, a hash (value, fence); ARGV[1] fence, ARGV[2] value,
-- ARGV[3] ttl ms (0: no TTL).
-- Returns {1, fence} when written, {0, stored fence} when rejected as stale.
local stored = redis.call('HGET', KEYS[1], 'fence')
if stored and tonumber(stored) > tonumber(ARGV[1]) then
  return {0, stored}
end
redis.call('HSET', KEYS[1], 'value', ARGV[2], 'fence', ARGV[1])
if tonumber(ARGV[3]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('PERSIST', KEYS[1])
end
return {1, ARGV[1]}
