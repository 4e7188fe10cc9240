-- Replace every field of a hash at once (an account's positions or balances).
-- KEYS[1] hash; ARGV field, value pairs (none: the hash is deleted)
-- HSET in chunks: unpack() of thousands of arguments overflows the Lua stack.
redis.call('DEL', KEYS[1])
local chunk = 400
for first = 1, #ARGV, chunk * 2 do
  local last = math.min(first + chunk * 2 - 1, #ARGV)
  redis.call('HSET', KEYS[1], unpack(ARGV, first, last))
end
return #ARGV / 2
