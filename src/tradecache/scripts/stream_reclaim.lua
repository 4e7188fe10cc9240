-- Claim the entries of a stream's group idle for at least min_idle ms (XAUTOCLAIM),
-- returning the entries and, separately, the ids of pending entries that no
-- longer exist (deleted or trimmed behind the group's back). Those are
-- acknowledged here, so they never come back; the caller reports them.
-- Redis 6.2 returns deleted entries as nil and keeps them pending, 7.0 drops them
-- and lists their ids: JUSTID plus XRANGE behaves the same on both.
-- KEYS[1] stream; ARGV: group, consumer, min_idle_ms, start id, count
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  'COUNT', ARGV[5], 'JUSTID')
local entries, missing = {}, {}
for _, id in ipairs(claimed[2]) do
  local found = redis.call('XRANGE', KEYS[1], id, id)
  if #found == 0 then
    redis.call('XACK', KEYS[1], ARGV[1], id)
    missing[#missing + 1] = id
  else
    entries[#entries + 1] = found[1]
  end
end
if claimed[3] then
  for _, id in ipairs(claimed[3]) do missing[#missing + 1] = id end
end
return {claimed[1], entries, missing}
