-- Build a tradecache envelope (see tradecache/envelope.py) around a JSON payload.
-- Strings are encoded with cjson so any topic or source is escaped correctly;
-- the payload is spliced in as is (it is JSON already).
local function tc_envelope(kind, topic, seq, source, payload)
  local now = redis.call('TIME')
  local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  return '{"v":1,"type":' .. cjson.encode(kind) .. ',"topic":' .. cjson.encode(topic)
    .. ',"seq":' .. string.format('%d', seq) .. ',"time":' .. string.format('%d', ms)
    .. ',"source":' .. cjson.encode(source) .. ',"payload":' .. payload .. '}'
end
