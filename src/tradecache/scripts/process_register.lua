-- Register a process: its record, its params and the three liveness indexes, atomically.
-- KEYS[1] record hash  KEYS[2] params hash  KEYS[3] live ZSET  KEYS[4] kind ZSET
-- KEYS[5] component ZSET (all tagged {processes}: one slot)
-- ARGV[1] id  ARGV[2] kind  ARGV[3] component  ARGV[4] status  ARGV[5] '1' when a message
-- follows  ARGV[6] message  ARGV[7] host  ARGV[8] pid  ARGV[9..] param name/value pairs
-- Returns the server time of registration (epoch ms, a string).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.error_reply('EXISTS process ' .. ARGV[1] .. ' is already registered')
end
local now = tc_now_ms()
local fields = {'id', ARGV[1], 'kind', ARGV[2], 'component', ARGV[3], 'status', ARGV[4],
                'started', now, 'updated', now, 'host', ARGV[7], 'pid', ARGV[8]}
if ARGV[5] == '1' then
  fields[#fields + 1] = 'message'
  fields[#fields + 1] = ARGV[6]
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('DEL', KEYS[2])
if #ARGV > 8 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 9))
end
for i = 3, 5 do
  redis.call('ZADD', KEYS[i], now, ARGV[1])
end
return now
