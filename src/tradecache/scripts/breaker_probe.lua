-- Record the outcome of a trial call. Only a permit that is still held (not expired, breaker
-- still half-open) counts: a late or stale probe changes nothing.
-- ARGV[6] token  ARGV[7] 'success' | 'failure' | 'release'  ARGV[8] success threshold
-- ARGV[9] reset timeout ms
-- Reply code: 1 counted, 0 ignored.
local st = tcb_load()
local now = tcb_now()
local lease_end = redis.call('ZSCORE', KEYS[3], ARGV[6])
redis.call('ZREM', KEYS[3], ARGV[6])
if st.state ~= 'half_open' or not lease_end or tonumber(lease_end) <= now then
  return tcb_reply(0, st, now, '')
end
local env = ''
if ARGV[7] == 'success' then
  st.hs = redis.call('HINCRBY', KEYS[1], 'hs', 1)
  if st.hs >= tonumber(ARGV[8]) then
    env = tcb_transition(st, 'closed', 'probe_success', now, 0,
      ',"successes":' .. string.format('%d', st.hs))
  end
elseif ARGV[7] == 'failure' then
  env = tcb_transition(st, 'open', 'probe_failure', now, tonumber(ARGV[9]), '')
end
return tcb_reply(1, st, now, env)
