-- Remove an opening mark, only if the given bot set it.
-- KEYS[1] the mark; ARGV[1] bot id.
-- Returns {1} when removed, {0} when there was no mark, {0, other bot} otherwise.
local current = redis.call('GET', KEYS[1])
if not current then
  return {0}
end
if current ~= ARGV[1] then
  return {0, current}
end
redis.call('DEL', KEYS[1])
return {1}
