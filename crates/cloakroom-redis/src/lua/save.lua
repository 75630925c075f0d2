-- Unlocked save of a live record, optionally compare-and-set. Never creates.
-- KEYS[1] record hash; ARGV[1] now ms, ARGV[2] expected version ('' = any),
-- ARGV[3] data, ARGV[4] accessed, ARGV[5] expires
-- -> {'ok', new version} | {'gone'} | {'conflict', live version}
local live = live_version(KEYS[1], ARGV[1])
if live == 0 then
  return {'gone'}
end
if ARGV[2] ~= '' and live ~= tonumber(ARGV[2]) then
  return {'conflict', live}
end
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'accessed', ARGV[4], 'expires', ARGV[5])
local version = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
return {'ok', version}
