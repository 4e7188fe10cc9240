-- Ask for a trial-call permit: open -> half-open once the open period (server clock) ended,
-- then at most ARGV[8] unexpired permits at a time across every process.
-- ARGV[6] token  ARGV[7] permit lease ms  ARGV[8] max concurrent probes
-- Reply code: 1 permit granted, 2 the breaker is closed (call normally), 0 rejected.
local st = tcb_load()
local now = tcb_now()
if st.state == 'closed' then
  return tcb_reply(2, st, now, '')
end
local env = ''
if st.state == 'open' then
  if now < st.open_until then
    return tcb_reply(0, st, now, '')
  end
  env = tcb_transition(st, 'half_open', 'reset_timeout', now, 0, '')
end
local lease = tonumber(ARGV[7])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) < tonumber(ARGV[8]) then
  redis.call('ZADD', KEYS[3], now + lease, ARGV[6])
  redis.call('PEXPIRE', KEYS[3], lease)
  return tcb_reply(1, st, now, env)
end
return tcb_reply(0, st, now, env)
