-- Move a live record's access and expiry times; data, version and principal
-- untouched.
-- KEYS[1] record hash; ARGV[1] now ms, ARGV[2] accessed, ARGV[3] expires,
-- ARGV[4] key expiry, ARGV[5] principal the client kept a set for ('' = none),
-- ARGV[6] until when ('' = none)
-- -> {'ok'} | {'gone'} | {'index', stored principal}
local s = stored(KEYS[1], ARGV[1])
if s.live == 0 then
  return {'gone'}
end
local indexed = index_for_touch(s, ARGV[5], ARGV[6], ARGV[4])
if not indexed then
  return {'index', s.principal}
end
if indexed ~= '' and indexed ~= s.indexed then
  redis.call('HSET', KEYS[1], 'accessed', ARGV[2], 'expires', ARGV[3], 'indexed_until', indexed)
else
  redis.call('HSET', KEYS[1], 'accessed', ARGV[2], 'expires', ARGV[3])
end
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return {'ok'}
