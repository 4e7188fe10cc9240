-- Delete every ticker of one exchange; return how many there were.
-- KEYS[1]: the exchange's ticker hash. Its sequence counter is kept: sequence numbers of a
-- topic never go back, or a watcher would take new updates for duplicates.
local count = redis.call('HLEN', KEYS[1])
redis.call('UNLINK', KEYS[1])
return count
