-- Mark (exchange, symbol) as having a position being opened by a bot, with a TTL.
-- KEYS[1] the mark; ARGV[1] bot id, ARGV[2] ttl ms.
-- Returns {1} when set (or refreshed by the same bot), {0, other bot} otherwise.
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return {1}
