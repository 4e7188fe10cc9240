-- Store the outcome of the owner's call: ARGV[2] 'ok' with the result in ARGV[3], or 'err'
-- (a final failure) with the error type in ARGV[3] and its message in ARGV[4].
-- KEYS[1] record  ARGV[1] owner token  ARGV[5] record TTL ms (counted from completion)
-- Reply: 1 stored, 0 the claim is not this owner's any more (nothing written).
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] ~= 'run' or rec[2] ~= ARGV[1] then
  return 0
end
if ARGV[2] == 'ok' then
  redis.call('HSET', KEYS[1], 's', 'ok', 'r', ARGV[3])
else
  redis.call('HSET', KEYS[1], 's', 'err', 'et', ARGV[3], 'em', ARGV[4])
end
redis.call('HDEL', KEYS[1], 'o', 'lu')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
