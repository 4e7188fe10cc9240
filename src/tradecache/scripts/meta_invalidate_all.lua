-- Drop every cached entry, fill lock and the list of one metadata space, atomically.
-- KEYS[1] member index  KEYS[2] list set  KEYS[3] list fill lock
-- ARGV[1] entry key prefix  ARGV[2] lock key prefix
-- Entries and locks are named from the prefixes: the members are only known here, so they
-- cannot be in KEYS, but they share KEYS[1]'s hash tag and therefore its slot.
-- Removing the locks makes loads in flight drop their (now stale) results.
-- Returns the number of entries removed.
local removed = 0
for _, member in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  removed = removed + redis.call('DEL', ARGV[1] .. member)
  redis.call('DEL', ARGV[2] .. member)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return removed
