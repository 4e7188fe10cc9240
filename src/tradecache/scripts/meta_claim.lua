-- Read a metadata entry, or claim the right to load it (single-flight across processes).
-- KEYS[1] entry (a string; for a list, the list SET)  KEYS[2] fill lock  KEYS[3] member index
-- ARGV[1] token  ARGV[2] lock TTL ms  ARGV[3] member ('' for a list: nothing to index)
-- ARGV[4] index TTL ms
-- Returns {1, value} when the entry exists ({1, members} for a list), {2} when this caller now
-- holds the fill lock (the member is indexed, so invalidating the space finds the lock),
-- {3} when another caller holds it.
if ARGV[3] == '' then
  local members = redis.call('SMEMBERS', KEYS[1])
  if #members > 0 then
    return {1, members}
  end
else
  local value = redis.call('GET', KEYS[1])
  if value then
    return {1, value}
  end
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if ARGV[3] ~= '' then
    redis.call('SADD', KEYS[3], ARGV[3])
    tcm_keep_index(KEYS[3], ARGV[4])
  end
  return {2}
end
return {3}
