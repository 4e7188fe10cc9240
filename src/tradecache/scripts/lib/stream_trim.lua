-- Cap a stream at about `maxlen` entries without ever removing an entry that a
-- consumer group still needs: one that is pending (delivered, not acknowledged)
-- or not yet delivered to some group. Trimming stops at the oldest such entry,
-- so while consumers lag the stream may hold more than `maxlen` entries; with
-- no consumer group the plain approximate cap applies.
local function tc_id_less(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams < bms end
  return tonumber(aseq) < tonumber(bseq)
end

local function tc_stream_trim(key, maxlen)
  local len = redis.call('XLEN', key)
  if len <= maxlen then return 0 end
  local groups = redis.call('XINFO', 'GROUPS', key)
  if #groups == 0 then
    return redis.call('XTRIM', key, 'MAXLEN', '~', maxlen)
  end
  local floor = nil
  for _, group in ipairs(groups) do
    local name, last
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1]
      elseif group[i] == 'last-delivered-id' then last = group[i + 1] end
    end
    local summary = redis.call('XPENDING', key, name)
    local need
    if summary[1] > 0 then
      need = summary[2]
    else
      local ms, seq = string.match(last, '^(%d+)-(%d+)$')
      need = ms .. '-' .. string.format('%d', tonumber(seq) + 1)
    end
    if floor == nil or tc_id_less(need, floor) then floor = need end
  end
  return redis.call('XTRIM', key, 'MINID', '~', floor, 'LIMIT', len - maxlen)
end
