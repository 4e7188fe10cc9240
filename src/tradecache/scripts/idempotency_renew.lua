-- Extend the owner's lease. KEYS[1] record  ARGV[1] owner token  ARGV[2] lease ms
-- Reply: 1 renewed, 0 the claim is not this owner's any more.
local rec = redis.call('HMGET', KEYS[1], 's', 'o')
if rec[1] ~= 'run' or rec[2] ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'lu', string.format('%d', tci_now() + tonumber(ARGV[2])))
return 1
