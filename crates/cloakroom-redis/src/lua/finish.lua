-- Save/touch/delete and unlock in one round trip, fenced by the lock token.
-- KEYS[1] record hash, KEYS[2] lock key, KEYS[3] wake list, KEYS[4] waiting flag
-- ARGV[1] token, ARGV[2] op: save | touch | delete | unlock, ARGV[3] now ms,
-- ARGV[4] version loaded under the lock (0 = none), ARGV[5] wake list ttl ms
-- save:  ARGV[6] data, ARGV[7] created, ARGV[8] accessed, ARGV[9] expires
-- touch: ARGV[6] accessed, ARGV[7] expires
-- -> {'lost'} | {'gone'} | {'conflict', live version} | {'ok', version or deleted flag}
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  -- The lease ran out (and maybe someone else holds the lock now): change
  -- nothing, and leave the other holder's lock alone.
  return {'lost'}
end
local op = ARGV[2]
if op == 'unlock' then
  release(KEYS[2], KEYS[3], KEYS[4], ARGV[5])
  return {'ok', 0}
end
local live = live_version(KEYS[1], ARGV[3])
if op == 'delete' then
  redis.call('DEL', KEYS[1])
  release(KEYS[2], KEYS[3], KEYS[4], ARGV[5])
  if live > 0 then return {'ok', 1} end
  return {'ok', 0}
end
local loaded = tonumber(ARGV[4])
if live ~= loaded then
  release(KEYS[2], KEYS[3], KEYS[4], ARGV[5])
  if live == 0 then return {'gone'} end
  return {'conflict', live}
end
if op == 'save' then
  local version
  if loaded == 0 then
    -- A new session (or one whose expired hash Redis has not reclaimed yet).
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], 'data', ARGV[6], 'version', '1', 'created', ARGV[7],
      'accessed', ARGV[8], 'expires', ARGV[9])
    version = 1
  else
    -- The check above proved the stored version is `loaded`; %d, because
    -- tostring would print a large version as 1e+14.
    version = loaded + 1
    redis.call('HSET', KEYS[1], 'data', ARGV[6], 'version', string.format('%d', version),
      'accessed', ARGV[8], 'expires', ARGV[9])
  end
  redis.call('PEXPIREAT', KEYS[1], ARGV[9])
  release(KEYS[2], KEYS[3], KEYS[4], ARGV[5])
  return {'ok', version}
end
-- touch
if loaded == 0 then
  release(KEYS[2], KEYS[3], KEYS[4], ARGV[5])
  return {'gone'}
end
redis.call('HSET', KEYS[1], 'accessed', ARGV[6], 'expires', ARGV[7])
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
release(KEYS[2], KEYS[3], KEYS[4], ARGV[5])
return {'ok', loaded}
