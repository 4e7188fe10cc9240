-- Give a claim back after a retryable failure, so a retry may run the call again.
-- KEYS[1] record  ARGV[1] owner token.  Reply: 1 released, 0 not this owner's claim.
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] ~= 'run' or rec[2] ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1])
return 1
