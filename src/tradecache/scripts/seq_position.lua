-- The latest sequence number of a topic and the server time, for a subscriber's cursor.
-- KEYS[1]: the topic's sequence counter. Returns {seq (0 if never published), time ms}.
-- Both come from the node that publishes the topic, so any envelope published up to
-- that sequence number carries a time <= the returned one.
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
return {redis.call('GET', KEYS[1]) or '0', ms}
