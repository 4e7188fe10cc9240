-- Store and publish ticker updates of one exchange, atomically, in one round trip.
-- KEYS[1]: the exchange's ticker hash   KEYS[2]: its sequence counter
-- ARGV[1]: channel   ARGV[2]: 'PUBLISH' or 'SPUBLISH'   ARGV[3]: topic (the exchange)
-- ARGV[4]: source    ARGV[5..]: symbol, payload (ticker JSON) pairs
-- Each ticker gets the next sequence number of the exchange; the hash keeps the envelope
-- that was published, so a reader (or a watcher backfilling a gap) sees the same bytes and
-- the sequence number they carried. Returns the last sequence number used.
local count = (#ARGV - 4) / 2
local last = redis.call('INCRBY', KEYS[2], count)
local seq = last - count
for i = 5, #ARGV, 2 do
  seq = seq + 1
  local envelope = tc_envelope('ticker', ARGV[3], seq, ARGV[4], ARGV[i + 1])
  redis.call('HSET', KEYS[1], ARGV[i], envelope)
  redis.call(ARGV[2], ARGV[1], envelope)
end
return last
