-- Insert a new record at version 1 unless a live one exists.
-- KEYS[1] record hash; ARGV[1] now ms, ARGV[2] data, ARGV[3] created,
-- ARGV[4] accessed, ARGV[5] expires -> {'ok'} | {'conflict', live version}
local live = live_version(KEYS[1], ARGV[1])
if live > 0 then
  return {'conflict', live}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'version', '1', 'created', ARGV[3],
  'accessed', ARGV[4], 'expires', ARGV[5])
redis.call('PEXPIREAT', KEYS[1], ARGV[5])
return {'ok'}
