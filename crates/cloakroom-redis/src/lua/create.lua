-- Insert a new record at version 1 unless a live one exists.
-- KEYS[1] record hash; ARGV[1] now ms, ARGV[2] data, ARGV[3] created,
-- ARGV[4] accessed, ARGV[5] expires, ARGV[6] key expiry (expires + grace),
-- ARGV[7] principal ('' = none), ARGV[8] indexed until ('' = not indexed)
-- -> {'ok', 1, principal of the expired hash replaced or ''}
--    | {'conflict', live version} | {'index'}
local s = stored(KEYS[1], ARGV[1])
if s.live > 0 then
  return {'conflict', s.live}
end
local indexed = index_for(s, ARGV[7], ARGV[8], ARGV[6])
if not indexed then
  return {'index'}
end
if s.present then redis.call('DEL', KEYS[1]) end
if ARGV[7] ~= '' then
  redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', '1', 'created', ARGV[3],
    'accessed', ARGV[4], 'expires', ARGV[5], 'principal', ARGV[7], 'indexed_until', indexed)
else
  redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', '1', 'created', ARGV[3],
    'accessed', ARGV[4], 'expires', ARGV[5])
end
redis.call('PEXPIREAT', KEYS[1], ARGV[6])
return {'ok', 1, s.principal or ''}
