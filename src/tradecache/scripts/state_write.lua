-- Write a shared state: bump its version, store the envelope, set the TTL and
-- announce the change, atomically. A delete leaves a tombstone (field d=1) so
-- the version keeps increasing for watchers.
-- KEYS[1] state hash (fields: v version, e envelope, d 1 when deleted)
-- ARGV: channel, name, source, payload (JSON), ttl ms (0: none),
--       expected version (-1: any), publish command, mode ('set' or 'delete')
local fields = redis.call('HMGET', KEYS[1], 'v', 'd')
local current = tonumber(fields[1] or '0')
local deleted = fields[1] == false or fields[2] == '1'
if ARGV[8] == 'delete' then
  if deleted then return 0 end
elseif ARGV[6] ~= '-1' and current ~= tonumber(ARGV[6]) then
  return -1
end
local version = current + 1
local kind = 'state'
if ARGV[8] == 'delete' then kind = 'state.delete' end
local envelope = tc_envelope(kind, ARGV[2], version, ARGV[3], ARGV[4])
local d = '0'
if ARGV[8] == 'delete' then d = '1' end
redis.call('HSET', KEYS[1], 'v', version, 'e', envelope, 'd', d)
local ttl = tonumber(ARGV[5])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[1], ttl)
else
  redis.call('PERSIST', KEYS[1])
end
redis.call(ARGV[7], ARGV[1], envelope)
return version
