-- Shared by every script (prepended at build time). Timestamps travel as the
-- client's decimal strings and are stored unchanged: Lua would print large
-- numbers as 1.7e+12, so only comparisons go through tonumber.
--
-- Every redis.call costs a few microseconds of the server's single thread,
-- and the server is what bounds throughput, so the steady-state path (lock,
-- save, unlock with nobody waiting) makes as few calls as it can.

-- The version of the live record at `record`, or 0 when there is none, and
-- whether the hash is there at all (live or not). A record past its
-- `expires` counts as missing even before Redis reclaims it.
local function live_version(record, now)
  local f = redis.call('HMGET', record, 'version', 'expires')
  if f[1] and f[2] and tonumber(f[2]) > tonumber(now) then
    return tonumber(f[1]), true
  end
  return 0, (f[1] or f[2]) ~= false
end
