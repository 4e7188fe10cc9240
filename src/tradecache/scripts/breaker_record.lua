-- Record outcomes of calls made while the breaker was closed and apply the policy.
-- ARGV[6] failures  ARGV[7] calls (failures + successes)  ARGV[8] failure threshold
-- ARGV[9] bucket ms  ARGV[10] buckets per window  ARGV[11] failure rate in ppm (-1: count policy)
-- ARGV[12] minimum calls  ARGV[13] reset timeout ms
-- Reply code: 1 counted, 0 ignored (the breaker is not closed any more).
local st = tcb_load()
local now = tcb_now()
if st.state ~= 'closed' then
  return tcb_reply(0, st, now, '')
end
local failures, calls = tonumber(ARGV[6]), tonumber(ARGV[7])
local bucket_ms, buckets = tonumber(ARGV[9]), tonumber(ARGV[10])
local index = math.floor(now / bucket_ms)
if failures > 0 then
  redis.call('HINCRBY', KEYS[2], 'f' .. index, failures)
end
if calls > 0 then
  redis.call('HINCRBY', KEYS[2], 'n' .. index, calls)
end
-- Sum the live buckets, drop the ones that slid out of the window.
local fields = redis.call('HGETALL', KEYS[2])
local total_failures, total_calls, stale = 0, 0, {}
for i = 1, #fields, 2 do
  local field = fields[i]
  if tonumber(string.sub(field, 2)) <= index - buckets then
    stale[#stale + 1] = field
  elseif string.sub(field, 1, 1) == 'f' then
    total_failures = total_failures + tonumber(fields[i + 1])
  else
    total_calls = total_calls + tonumber(fields[i + 1])
  end
end
if #stale > 0 then
  redis.call('HDEL', KEYS[2], unpack(stale))
end
redis.call('PEXPIRE', KEYS[2], bucket_ms * (buckets + 1))
local rate_ppm, trip, reason = tonumber(ARGV[11]), false, 'failure_threshold'
if rate_ppm < 0 then
  trip = failures > 0 and total_failures >= tonumber(ARGV[8])
else
  reason = 'failure_rate'
  trip = total_failures > 0 and total_calls >= tonumber(ARGV[12])
    and total_failures * 1000000 >= rate_ppm * total_calls
end
local env = ''
if trip then
  env = tcb_transition(st, 'open', reason, now, tonumber(ARGV[13]),
    ',"failures":' .. string.format('%d', total_failures)
    .. ',"calls":' .. string.format('%d', total_calls))
end
return tcb_reply(1, st, now, env)
