-- Server time in epoch milliseconds, as an integer string (never "1.7e+12").
local function tc_now_ms()
  local now = redis.call('TIME')
  return string.format('%d', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000))
end
