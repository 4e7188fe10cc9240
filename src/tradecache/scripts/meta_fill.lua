-- Store a loaded metadata entry, if this caller's fill lock is still in place.
-- A put(), delete() or invalidate() that happened during the load removed the lock: then the
-- loaded (possibly stale) value is not stored.
-- KEYS[1] entry  KEYS[2] fill lock  KEYS[3] member index
-- ARGV[1] token  ARGV[2] value  ARGV[3] TTL ms  ARGV[4] member  ARGV[5] index TTL ms
-- Returns 1 when stored, 0 when the lock was lost.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call('SADD', KEYS[3], ARGV[4])
tcm_keep_index(KEYS[3], ARGV[5])
return 1
