-- Upsert candles of one series by open time, cap it, publish what changed: one round trip.
-- KEYS[1]: the series (sorted set, score = open time ms)   KEYS[2]: its sequence counter
-- ARGV[1]: channel   ARGV[2]: 'PUBLISH' or 'SPUBLISH'   ARGV[3]: topic   ARGV[4]: source
-- ARGV[5]: max candles kept   ARGV[6..]: open time, candle JSON pairs (distinct times)
-- A candle whose time is stored already replaces the stored one (the member holds the
-- values, so the old member is removed first); an identical candle is left alone. The
-- oldest candles beyond the cap are dropped. Returns the number of stored candles that
-- were added or changed; publishes them (ascending) as one envelope when there are any.
local series = KEYS[1]
local changed = {}
for i = 6, #ARGV, 2 do
  local ts, candle = ARGV[i], ARGV[i + 1]
  local old = redis.call('ZRANGEBYSCORE', series, ts, ts)
  if old[1] ~= candle then
    for _, member in ipairs(old) do
      redis.call('ZREM', series, member)
    end
    redis.call('ZADD', series, ts, candle)
    changed[#changed + 1] = i
  end
end
if #changed == 0 then
  return 0
end
redis.call('ZREMRANGEBYRANK', series, 0, -(tonumber(ARGV[5]) + 1))
local oldest = tonumber(redis.call('ZRANGE', series, 0, 0, 'WITHSCORES')[2])
local kept = {}
for _, i in ipairs(changed) do
  if tonumber(ARGV[i]) >= oldest then
    kept[#kept + 1] = ARGV[i + 1]
  end
end
if #kept == 0 then
  return 0
end
local seq = redis.call('INCR', KEYS[2])
local payload = '[' .. table.concat(kept, ',') .. ']'
redis.call(ARGV[2], ARGV[1], tc_envelope('candles', ARGV[3], seq, ARGV[4], payload))
return #kept
