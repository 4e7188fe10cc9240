-- Stop every process whose last heartbeat is older than a window, atomically.
-- KEYS[1] live ZSET
-- ARGV[1] window ms  ARGV[2] record prefix  ARGV[3] params prefix  ARGV[4] kind-index prefix
-- ARGV[5] component-index prefix  ARGV[6] retention ms  ARGV[7] message
-- Ids are '<kind>:<component>:<token>', so the kind and component indexes are found from the
-- id. Every key built from a prefix shares KEYS[1]'s {processes} hash tag (one slot).
-- Returns the number of processes stopped.
local now = tonumber(tc_now_ms())
local cutoff = string.format('(%d', now - tonumber(ARGV[1]))
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff)
for _, id in ipairs(ids) do
  local kind, component = string.match(id, '^([^:]+):(.+):[^:]+$')
  local record = ARGV[2] .. id
  if redis.call('EXISTS', record) == 1 then
    redis.call('HSET', record, 'status', 'stopped', 'message', ARGV[7])
    redis.call('PEXPIRE', record, ARGV[6])
    redis.call('PEXPIRE', ARGV[3] .. id, ARGV[6])
  end
  redis.call('ZREM', KEYS[1], id)
  if kind then
    redis.call('ZREM', ARGV[4] .. kind, id)
    redis.call('ZREM', ARGV[5] .. component, id)
  end
end
return #ids
