-- Enqueue an order once per client order id (idempotent submit).
-- KEYS[1] queue stream, KEYS[2] idempotency marker (same slot)
-- ARGV[1] fingerprint of the order, ARGV[2] encoded order, ARGV[3] marker ttl ms,
-- ARGV[4] stream cap, ARGV[5] '1' when the caller WAITs for replicas: a repeat then
-- rewrites the marker's TTL, a write after the first one, so WAIT covers the entry too
-- Returns {1, id} when enqueued, {0, id} for a repeat of the same order,
-- {-1, id} when the client order id was used for a different order.
local seen = redis.call('GET', KEYS[2])
if seen then
  local sep = string.find(seen, ' ', 1, true)
  local id = string.sub(seen, sep + 1)
  if string.sub(seen, 1, sep - 1) == ARGV[1] then
    if ARGV[5] == '1' then redis.call('PEXPIRE', KEYS[2], ARGV[3]) end
    return {0, id}
  end
  return {-1, id}
end
local id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[2])
redis.call('SET', KEYS[2], ARGV[1] .. ' ' .. id, 'PX', ARGV[3])
tc_stream_trim(KEYS[1], tonumber(ARGV[4]))
return {1, id}
