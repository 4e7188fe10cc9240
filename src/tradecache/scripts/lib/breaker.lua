-- Shared helpers of the circuit-breaker scripts (coordination/breaker.py).
-- Every breaker script gets the same KEYS and leading ARGV:
--   KEYS[1] state hash {state, seq, until, epoch, hs}   KEYS[2] window hash (bucketed counters)
--   KEYS[3] probe permits ZSET (token -> lease end)     KEYS[4] transition log (capped list)
--   ARGV[1] channel  ARGV[2] source  ARGV[3] epoch for a new breaker  ARGV[4] breaker name
--   ARGV[5] 'PUBLISH' or 'SPUBLISH' (sharded pub/sub on a Cluster of Redis 7+; the channel
--   carries the breaker's hash tag, so it lives in the same slot as the keys)
-- All times are the server's clock (TIME), in milliseconds: a client's clock never decides.
local TCB_LOG_MAX = 64

local function tcb_now()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function tcb_load()
  local v = redis.call('HMGET', KEYS[1], 'state', 'seq', 'until', 'epoch', 'hs')
  if not v[1] then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'seq', 0, 'until', 0, 'epoch', ARGV[3], 'hs', 0)
    return {state = 'closed', seq = 0, open_until = 0, epoch = ARGV[3], hs = 0}
  end
  return {state = v[1], seq = tonumber(v[2]), open_until = tonumber(v[3]), epoch = v[4],
          hs = tonumber(v[5])}
end

-- Move to state `to`, bump seq, log and publish the transition envelope; return it.
local function tcb_transition(st, to, reason, now, reset_ms, extra)
  local previous = st.state
  st.seq = st.seq + 1
  st.state = to
  st.hs = 0
  local open_ms = 0
  st.open_until = 0
  if to == 'open' then
    open_ms = reset_ms
    st.open_until = now + reset_ms
  end
  redis.call('HSET', KEYS[1], 'state', to, 'seq', st.seq, 'until', st.open_until, 'hs', 0)
  redis.call('DEL', KEYS[2], KEYS[3])
  local payload = '{"state":' .. cjson.encode(to) .. ',"previous":' .. cjson.encode(previous)
    .. ',"reason":' .. cjson.encode(reason) .. ',"open_ms":' .. string.format('%d', open_ms)
    .. ',"epoch":' .. cjson.encode(st.epoch) .. extra .. '}'
  local env = tc_envelope('breaker', ARGV[4], st.seq, ARGV[2], payload)
  redis.call('RPUSH', KEYS[4], env)
  redis.call('LTRIM', KEYS[4], -TCB_LOG_MAX, -1)
  redis.call(ARGV[5], ARGV[1], env)
  return env
end

-- {code, state, seq, remaining ms, epoch, transition envelope or ''}
-- remaining: until a probe may go (open), or until the oldest probe lease ends (half-open).
local function tcb_reply(code, st, now, env)
  local remaining = 0
  if st.state == 'open' then
    remaining = math.max(0, st.open_until - now)
  elseif st.state == 'half_open' then
    local first = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
    if first[2] then
      remaining = math.max(0, tonumber(first[2]) - now)
    end
  end
  return {code, st.state, st.seq, remaining, st.epoch, env}
end
