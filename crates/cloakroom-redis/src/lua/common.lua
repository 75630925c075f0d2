-- Shared by every script (prepended at build time). Timestamps travel as the
-- client's decimal strings and are stored unchanged: Lua would print large
-- numbers as 1.7e+12, so only comparisons go through tonumber.
--
-- Every redis.call costs a few microseconds of the server's single thread,
-- and the server is what bounds throughput, so the steady-state path (lock,
-- save, unlock with nobody waiting) makes as few calls as it can.

-- The version of the live record at KEYS[1], or 0 when there is none. A
-- record past its `expires` counts as missing even before Redis reclaims it.
local function live_version(record, now)
  local f = redis.call('HMGET', record, 'version', 'expires')
  if f[1] and f[2] and tonumber(f[2]) > tonumber(now) then
    return tonumber(f[1])
  end
  return 0
end

-- Free the lock and, if a lock attempt failed lately (the client raises the
-- `waiting` flag then), wake exactly one waiter: the wake list holds at most
-- one element, BLPOP hands it to the longest-blocked client, and the short
-- expiry drops a wake-up nobody collected. Without waiters a release is one
-- DEL and one EXISTS.
local function release(lock, wake, waiting, wake_ttl)
  redis.call('DEL', lock)
  if redis.call('EXISTS', waiting) == 1 then
    redis.call('DEL', wake)
    redis.call('RPUSH', wake, '1')
    redis.call('PEXPIRE', wake, wake_ttl)
  end
end
