-- Release a fill lock if it is still ours (the loader failed).
-- KEYS[1] fill lock  ARGV[1] token. Returns 1 when released.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
