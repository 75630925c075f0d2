-- A lock holder's write, then release or keep the lock: one round trip,
-- fenced by the lock token, one script for both ends.
-- KEYS[1] record hash, KEYS[2] lock key, KEYS[3] wake list, KEYS[4] waiting flag,
-- KEYS[5] (rotate only) the new id's record hash
-- ARGV[1] token, ARGV[2] op: save | touch | delete | rotate | nothing,
-- ARGV[3] then: release | keep, ARGV[4] now ms,
-- ARGV[5] version loaded under the lock (0 = none), ARGV[6] wake list ttl ms
-- save, rotate: ARGV[7] data, ARGV[8] created, ARGV[9] accessed, ARGV[10] expires,
--   ARGV[11] key expiry (expires + grace), ARGV[12] principal ('' = none),
--   ARGV[13] indexed until ('' = the client did not add the id to the set)
-- touch: ARGV[7] accessed, ARGV[8] expires, ARGV[9] key expiry,
--   ARGV[10] principal the client kept a set for ('' = none), ARGV[11] until when
-- -> {'lost'} | {'gone'} | {'conflict', live version}
--    | {'ok', version or deleted flag, previous principal, replaced target's principal}
--    | {'index', principal} (nothing written, lock untouched: the client adds
--      the id to the principal's set and runs the script again)
--    | {'taken', live version of the rotation's target}
--
-- `keep` leaves the lock key exactly as it is (same token, same PTTL: the
-- lease deadline does not move) after a successful write, and pushes no
-- wake-up, since nothing was freed. A failed check releases either way.
--
-- Calls, fewest first: the token and the `waiting` flag are read by one
-- MGET (the flag is only acted on when releasing, and nothing in this script
-- changes it); a release is one DEL (with the record's, for a delete), plus
-- DEL/RPUSH/PEXPIRE of the wake list when somebody waits.

local held = redis.call('MGET', KEYS[2], KEYS[4])
if held[1] ~= ARGV[1] then
  -- The lease ran out (and maybe someone else holds the lock now): change
  -- nothing, and leave the other holder's lock alone.
  return {'lost'}
end
local keep = ARGV[3] == 'keep'

-- Free the lock (and delete `record` with it, if given) and, if a lock
-- attempt failed lately (the client raises the `waiting` flag then), wake
-- exactly one waiter: the wake list holds at most one element, BLPOP hands
-- it to the longest-blocked client, and the short expiry drops a wake-up
-- nobody collected.
local function release(record)
  if record then
    redis.call('DEL', record, KEYS[2])
  else
    redis.call('DEL', KEYS[2])
  end
  if held[2] then
    redis.call('DEL', KEYS[3])
    redis.call('RPUSH', KEYS[3], '1')
    redis.call('PEXPIRE', KEYS[3], ARGV[6])
  end
end

-- A successful write: release unless the holder keeps the lock.
local function done(reply)
  if not keep then release(false) end
  return reply
end

local op = ARGV[2]
if op == 'nothing' then
  return done({'ok', 0})
end
local s = stored(KEYS[1], ARGV[4])
local live = s.live
if op == 'delete' then
  if keep then
    if s.present then redis.call('DEL', KEYS[1]) end
  else
    release(KEYS[1])
  end
  if live > 0 then return {'ok', 1, s.principal or ''} end
  return {'ok', 0, s.principal or ''}
end
local loaded = tonumber(ARGV[5])
if live ~= loaded then
  release(false)
  if live == 0 then return {'gone'} end
  return {'conflict', live}
end
if op == 'save' then
  local indexed = index_for(s, ARGV[12], ARGV[13], ARGV[11])
  if not indexed then return {'index'} end
  local version
  if loaded == 0 then
    -- A new session. A hash still there is expired (kept for sweepers, or
    -- not yet reclaimed): drop it, so nothing of it survives into the new
    -- record.
    if s.present then redis.call('DEL', KEYS[1]) end
    redis.call('HSET', KEYS[1], 'data', ARGV[7], 'version', '1', 'created', ARGV[8],
      'accessed', ARGV[9], 'expires', ARGV[10])
    if ARGV[12] ~= '' then
      redis.call('HSET', KEYS[1], 'principal', ARGV[12], 'indexed_until', indexed)
    end
    version = 1
  else
    -- The check above proved the stored version is `loaded`; %d, because
    -- tostring would print a large version as 1e+14.
    version = loaded + 1
    redis.call('HSET', KEYS[1], 'data', ARGV[7], 'version', string.format('%d', version),
      'accessed', ARGV[9], 'expires', ARGV[10])
    write_principal(KEYS[1], s, ARGV[12], indexed)
  end
  redis.call('PEXPIREAT', KEYS[1], ARGV[11])
  return done({'ok', version, s.principal or ''})
end
if op == 'touch' then
  if loaded == 0 then
    release(false)
    return {'gone'}
  end
  local indexed = index_for_touch(s, ARGV[10], ARGV[11], ARGV[9])
  if not indexed then return {'index', s.principal} end
  if indexed ~= '' and indexed ~= s.indexed then
    redis.call('HSET', KEYS[1], 'accessed', ARGV[7], 'expires', ARGV[8], 'indexed_until', indexed)
  else
    redis.call('HSET', KEYS[1], 'accessed', ARGV[7], 'expires', ARGV[8])
  end
  redis.call('PEXPIREAT', KEYS[1], ARGV[9])
  return done({'ok', loaded})
end
if op == 'rotate' then
  -- Single node only: KEYS[5] is in another slot.
  if loaded == 0 then
    release(false)
    return {'gone'}
  end
  local target = stored(KEYS[5], ARGV[4])
  if target.live > 0 then
    release(false)
    return {'taken', target.live}
  end
  -- The new id is new: its set must have been added to by the client.
  local indexed = index_for(target, ARGV[12], ARGV[13], ARGV[11])
  if not indexed then return {'index'} end
  if target.present then redis.call('DEL', KEYS[5]) end
  redis.call('HSET', KEYS[5], 'data', ARGV[7], 'version', '1', 'created', ARGV[8],
    'accessed', ARGV[9], 'expires', ARGV[10])
  if ARGV[12] ~= '' then
    redis.call('HSET', KEYS[5], 'principal', ARGV[12], 'indexed_until', indexed)
  end
  redis.call('PEXPIREAT', KEYS[5], ARGV[11])
  if keep then
    redis.call('DEL', KEYS[1])
  else
    release(KEYS[1])
  end
  return {'ok', 1, s.principal or '', target.principal or ''}
end
-- An op this script does not know: release, never keep a lock on an error.
release(false)
return redis.error_reply('cloakroom finish: unknown op ' .. op)
