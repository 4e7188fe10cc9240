-- Claim an idempotency key before any side effect, atomically.
-- KEYS[1] record  ARGV[1] owner token  ARGV[2] payload fingerprint  ARGV[3] lease ms
-- ARGV[4] record TTL ms
-- Replies: {'claimed', 1} new claim | {'reclaimed', attempt} the previous owner's lease ran
-- out (server clock), this caller now owns it | {'busy', lease ms left} | {'done', result}
-- | {'failed', error type, message} | {'reuse'} same key, another payload.
local rec = redis.call('HMGET', KEYS[1], 's', 'fp', 'lu', 'a', 'r', 'et', 'em')
local now = tci_now()
local lease = tonumber(ARGV[3])
if not rec[1] then
  redis.call('HSET', KEYS[1], 's', 'run', 'o', ARGV[1], 'fp', ARGV[2],
    'lu', string.format('%d', now + lease), 'a', 1)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  return {'claimed', 1}
end
if rec[2] ~= ARGV[2] then
  return {'reuse'}
end
if rec[1] == 'ok' then
  return {'done', rec[5]}
end
if rec[1] == 'err' then
  return {'failed', rec[6], rec[7]}
end
local lease_end = tonumber(rec[3])
if lease_end > now then
  return {'busy', lease_end - now}
end
-- The owner's lease expired: this call takes the record over, exactly once (scripts are atomic).
local attempt = tonumber(rec[4]) + 1
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'lu', string.format('%d', now + lease), 'a', attempt)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {'reclaimed', attempt}
