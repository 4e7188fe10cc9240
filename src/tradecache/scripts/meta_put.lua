-- Write metadata entries (a writer's put), atomically.
-- KEYS[1] member index  KEYS[2] list set  KEYS[3 ..] entry, lock, entry, lock ...
-- ARGV[1] TTL ms  ARGV[2] index TTL ms  ARGV[3 ..] member, value pairs (one per entry/lock)
-- Each entry's fill lock is removed, so a load in flight does not overwrite the put value.
-- A cached complete list (KEYS[2]) gains the members. Returns the number of entries written.
local listed = redis.call('EXISTS', KEYS[2]) == 1
local n = 0
for i = 3, #KEYS, 2 do
  local member = ARGV[i]
  redis.call('SET', KEYS[i], ARGV[i + 1], 'PX', ARGV[1])
  redis.call('DEL', KEYS[i + 1])
  redis.call('SADD', KEYS[1], member)
  if listed then
    redis.call('SADD', KEYS[2], member)
  end
  n = n + 1
end
tcm_keep_index(KEYS[1], ARGV[2])
return n
