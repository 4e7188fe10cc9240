-- Shared by the read-through metadata scripts (stores/metadata.py).
-- The member index (a SET) must outlive every entry it lists: extend its TTL, never shorten.
local function tcm_keep_index(index, ttl_ms)
  if redis.call('PTTL', index) < tonumber(ttl_ms) then
    redis.call('PEXPIRE', index, ttl_ms)
  end
end
