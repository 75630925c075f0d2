-- Shared by every session script (prepended at build time). Timestamps travel
-- as the client's decimal strings and are stored unchanged: Lua would print
-- large numbers as 1.7e+12, so only comparisons go through tonumber. Key
-- expiry times (`expires + expired_grace`) are computed by the client too.
--
-- Every redis.call costs a few microseconds of the server's single thread,
-- and the server is what bounds throughput, so the steady-state path (lock,
-- save, unlock with nobody waiting) makes as few calls as it can.
--
-- A hash past its `expires` is kept until `expires + expired_grace` for
-- sweepers; every script treats it as missing.

-- What is stored at `record`, in one call: `live` is the version of the live
-- record or 0 when there is none (missing, or past its `expires` at `now`),
-- `present` whether the hash is there at all (live or not), `principal` and
-- `indexed` its principal and indexed_until fields (false when absent).
local function stored(record, now)
  local f = redis.call('HMGET', record, 'version', 'expires', 'principal', 'indexed_until')
  local live = 0
  if f[1] and f[2] and tonumber(f[2]) > tonumber(now) then
    live = tonumber(f[1])
  end
  return {live = live, present = (f[1] or f[2] or f[3]) ~= false, principal = f[3], indexed = f[4]}
end

-- The indexed_until to store with a write that gives the record `principal`
-- ('' for none) and the key expiry `key_exp`; nil when the principal's set is
-- not known to hold the id that long, and the client must add it first (see
-- principals.rs). `idx` is what the client passed: the time it just kept the
-- set until, after adding the id to it ('' when it did not).
-- Without a client step, the record must already be live with the same
-- principal, and its set kept long enough.
local function index_for(s, principal, idx, key_exp)
  if principal == '' then return '' end
  if idx ~= '' then return idx end
  if s.live > 0 and s.principal == principal and s.indexed
      and tonumber(s.indexed) >= tonumber(key_exp) then
    return s.indexed
  end
  return nil
end

-- The same for a touch, which keeps the stored principal: the client passes
-- the principal it kept a set for (`idx_principal`) with the time (`idx`).
local function index_for_touch(s, idx_principal, idx, key_exp)
  if not s.principal then return '' end
  if idx ~= '' and idx_principal == s.principal then return idx end
  if s.indexed and tonumber(s.indexed) >= tonumber(key_exp) then return s.indexed end
  return nil
end

-- Write the principal fields of a record that `s` described before the
-- write: set both, or drop them for a record without a principal.
local function write_principal(record, s, principal, indexed)
  if principal ~= '' then
    redis.call('HSET', record, 'principal', principal, 'indexed_until', indexed)
  elseif s.principal or s.indexed then
    redis.call('HDEL', record, 'principal', 'indexed_until')
  end
end
