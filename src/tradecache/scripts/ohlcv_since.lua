-- Candles of one series from an open time on, with the server time: a watcher's backfill.
-- KEYS[1]: the series   ARGV[1]: lowest open time (ms). Returns {time ms, candle, ...}.
local now = redis.call('TIME')
local out = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[1], '+inf')
table.insert(out, 1, tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
return out
