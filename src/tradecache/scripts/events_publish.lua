-- Publish one event: next sequence number of the topic, append to its capped
-- backlog stream, publish. Atomic, so seq order = backlog order = publish order.
-- KEYS[1] backlog stream of the topic (entry id "<seq>-0", field "e" = envelope)
-- ARGV: channel, type, topic, source, payload (JSON), cap, publish command
local seq = 1
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then
  seq = tonumber(string.match(last[1][1], '^%d+')) + 1
else
  -- An empty stream that still exists (emptied by XTRIM/XDEL) remembers its last id.
  local exists = redis.call('EXISTS', KEYS[1])
  if exists == 1 then
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' then
        seq = tonumber(string.match(info[i + 1], '^%d+')) + 1
      end
    end
  end
end
local envelope = tc_envelope(ARGV[2], ARGV[3], seq, ARGV[4], ARGV[5])
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[6], string.format('%d-0', seq), 'e', envelope)
redis.call(ARGV[7], ARGV[1], envelope)
return seq
