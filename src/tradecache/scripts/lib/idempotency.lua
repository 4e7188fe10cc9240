-- Shared helper of the idempotency scripts (coordination/idempotency.py).
-- A record is one hash: s = 'run' | 'ok' | 'err', o = owner token (while 'run'),
-- fp = payload fingerprint, lu = lease end (server ms, while 'run'), a = attempt number,
-- r = stored result ('ok'), et / em = error type / message ('err').
local function tci_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
