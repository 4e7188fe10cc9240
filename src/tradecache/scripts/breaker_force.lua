-- Operator override: force the breaker closed or open (an open period of ARGV[7] ms).
-- ARGV[6] 'closed' | 'open'  ARGV[7] reset timeout ms
-- Reply code: 1 a transition happened, 0 it already was in that state.
local st = tcb_load()
local now = tcb_now()
if st.state == ARGV[6] then
  return tcb_reply(0, st, now, '')
end
local env = tcb_transition(st, ARGV[6], 'forced', now, tonumber(ARGV[7]), '')
return tcb_reply(1, st, now, env)
