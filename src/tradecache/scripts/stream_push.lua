-- Append entries to a capped stream, optionally registering it in an index set
-- of the same slot.
-- KEYS[1] stream, KEYS[2] (optional) index set
-- ARGV[1] stream cap, ARGV[2] index member, ARGV[3..] encoded entries
-- Returns the id of the last entry added.
local id
for i = 3, #ARGV do
  id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
end
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[2]) end
tc_stream_trim(KEYS[1], tonumber(ARGV[1]))
return id
