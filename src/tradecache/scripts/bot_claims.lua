-- List live claims from the claim index, pruning entries whose lease is gone.
-- KEYS[1] the index (members 'exchange:symbol' scored by expiry, server ms);
-- ARGV[1] the claim key prefix (prefix .. member is the lease hash, same slot).
-- Returns {{member, owner, fence, pttl ms}, ...}.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ms)
local out = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[1] .. member
  local lease = redis.call('HMGET', key, 'owner', 'fence')
  local pttl = redis.call('PTTL', key)
  if lease[1] and pttl > 0 then
    out[#out + 1] = {member, lease[1], lease[2], pttl}
  else
    redis.call('ZREM', KEYS[1], member)
  end
end
return out
