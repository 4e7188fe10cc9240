-- Processes from a liveness index, newest heartbeat first, with their records and params.
-- KEYS[1] the index to read (live, kind or component ZSET)
-- ARGV[1] window ms (negative: every entry)  ARGV[2] record key prefix  ARGV[3] params key
-- prefix  ARGV[4] kind filter ('' none)  ARGV[5] component filter ('' none)
-- Records and params are read under names built from the prefixes: their ids are only
-- known here, so they cannot be in KEYS, but they share KEYS[1]'s {processes} hash tag and
-- therefore its slot (Cluster-safe).
-- Returns {now ms, record 1 (flat HGETALL), params 1, record 2, params 2, ...}.
local now = tc_now_ms()
local low = '-inf'
local window = tonumber(ARGV[1])
if window >= 0 then
  low = string.format('%d', tonumber(now) - window)
end
local out = {now}
for _, id in ipairs(redis.call('ZREVRANGEBYSCORE', KEYS[1], '+inf', low)) do
  local record = redis.call('HGETALL', ARGV[2] .. id)
  local keep = #record > 0
  if keep and (ARGV[4] ~= '' or ARGV[5] ~= '') then
    local fields = {}
    for i = 1, #record, 2 do
      fields[record[i]] = record[i + 1]
    end
    keep = (ARGV[4] == '' or fields['kind'] == ARGV[4])
      and (ARGV[5] == '' or fields['component'] == ARGV[5])
  end
  if keep then
    out[#out + 1] = record
    out[#out + 1] = redis.call('HGETALL', ARGV[3] .. id)
  end
end
return out
