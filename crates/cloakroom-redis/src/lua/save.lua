-- Unlocked save of a live record, optionally compare-and-set. Never creates.
-- KEYS[1] record hash; ARGV[1] now ms, ARGV[2] expected version ('' = any),
-- ARGV[3] data, ARGV[4] accessed, ARGV[5] expires, ARGV[6] key expiry,
-- ARGV[7] principal ('' = none), ARGV[8] indexed until ('' = not indexed)
-- -> {'ok', new version, previous principal or ''} | {'gone'}
--    | {'conflict', live version} | {'index'}
local s = stored(KEYS[1], ARGV[1])
if s.live == 0 then
  return {'gone'}
end
if ARGV[2] ~= '' and s.live ~= tonumber(ARGV[2]) then
  return {'conflict', s.live}
end
local indexed = index_for(s, ARGV[7], ARGV[8], ARGV[6])
if not indexed then
  return {'index'}
end
-- %d, because tostring would print a large version as 1e+14.
local version = string.format('%d', s.live + 1)
redis.call('HSET', KEYS[1], 'data', ARGV[3], 'version', version, 'accessed', ARGV[4],
  'expires', ARGV[5])
write_principal(KEYS[1], s, ARGV[7], indexed)
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
return {'ok', s.live + 1, s.principal or ''}
