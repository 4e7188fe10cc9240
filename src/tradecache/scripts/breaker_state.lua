-- Read a breaker's state (creating it closed if new). No transition happens here.
local st = tcb_load()
return tcb_reply(0, st, tcb_now(), '')
