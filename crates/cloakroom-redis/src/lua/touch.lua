-- Move a live record's access and expiry times; data and version untouched.
-- KEYS[1] record hash; ARGV[1] now ms, ARGV[2] accessed, ARGV[3] expires
-- -> 1 touched, 0 no live record
if live_version(KEYS[1], ARGV[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'accessed', ARGV[2], 'expires', ARGV[3])
redis.call('PEXPIREAT', KEYS[1], ARGV[3])
return 1
