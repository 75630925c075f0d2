-- A lock holder's write, then release or keep the lock: one round trip,
-- fenced by the lock token, one script for both ends.
-- KEYS[1] record hash, KEYS[2] lock key, KEYS[3] wake list, KEYS[4] waiting flag
-- ARGV[1] token, ARGV[2] op: save | touch | delete | nothing,
-- ARGV[3] then: release | keep, ARGV[4] now ms,
-- ARGV[5] version loaded under the lock (0 = none), ARGV[6] wake list ttl ms
-- save:  ARGV[7] data, ARGV[8] created, ARGV[9] accessed, ARGV[10] expires
-- touch: ARGV[7] accessed, ARGV[8] expires
-- -> {'lost'} | {'gone'} | {'conflict', live version} | {'ok', version or deleted flag}
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
local live, present = live_version(KEYS[1], ARGV[4])
if op == 'delete' then
  if keep then
    redis.call('DEL', KEYS[1])
  else
    release(KEYS[1])
  end
  if live > 0 then return {'ok', 1} end
  return {'ok', 0}
end
local loaded = tonumber(ARGV[5])
if live ~= loaded then
  release(false)
  if live == 0 then return {'gone'} end
  return {'conflict', live}
end
if op == 'save' then
  local version
  if loaded == 0 then
    -- A new session. A hash still there is expired but not yet reclaimed
    -- by Redis: drop it, so nothing of it survives into the new record.
    if present then redis.call('DEL', KEYS[1]) end
    redis.call('HSET', KEYS[1], 'data', ARGV[7], 'version', '1', 'created', ARGV[8],
      'accessed', ARGV[9], 'expires', ARGV[10])
    version = 1
  else
    -- The check above proved the stored version is `loaded`; %d, because
    -- tostring would print a large version as 1e+14.
    version = loaded + 1
    redis.call('HSET', KEYS[1], 'data', ARGV[7], 'version', string.format('%d', version),
      'accessed', ARGV[9], 'expires', ARGV[10])
  end
  redis.call('PEXPIREAT', KEYS[1], ARGV[10])
  return done({'ok', version})
end
if op == 'touch' then
  if loaded == 0 then
    release(false)
    return {'gone'}
  end
  redis.call('HSET', KEYS[1], 'accessed', ARGV[7], 'expires', ARGV[8])
  redis.call('PEXPIREAT', KEYS[1], ARGV[8])
  return done({'ok', loaded})
end
-- An op this script does not know: release, never keep a lock on an error.
release(false)
return redis.error_reply('cloakroom finish: unknown op ' .. op)
