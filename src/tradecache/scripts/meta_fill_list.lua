-- Store a complete list of metadata entries (a list loader's result, or put_many(complete)).
-- KEYS[1] member index  KEYS[2] list set  KEYS[3] list fill lock  KEYS[4 ..] entries
-- ARGV[1] token ('' for a writer: no lock check)  ARGV[2] TTL ms  ARGV[3] index TTL ms
-- ARGV[4 ..] member, value pairs aligned with KEYS[4 ..]
-- The list set holds the members plus '' (so an empty list is still "cached").
-- Returns 1 when stored, 0 when the fill lock was lost (an invalidation during the load).
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('SADD', KEYS[2], '')
for i = 4, #KEYS do
  local member = ARGV[2 * i - 4]
  redis.call('SET', KEYS[i], ARGV[2 * i - 3], 'PX', ARGV[2])
  redis.call('SADD', KEYS[1], member)
  redis.call('SADD', KEYS[2], member)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
tcm_keep_index(KEYS[1], ARGV[3])
return 1
