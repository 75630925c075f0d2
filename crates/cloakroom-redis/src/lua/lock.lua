-- Lock-and-load in one round trip.
-- KEYS[1] record hash, KEYS[2] lock key
-- ARGV[1] token, ARGV[2] lease ms, ARGV[3] now ms
-- -> {1, data, version, created, accessed, expires} locked, live record
-- -> {1}                                            locked, no live record
-- -> {0, pttl}                                      held by someone else
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if live_version(KEYS[1], ARGV[3]) > 0 then
    local r = redis.call('HMGET', KEYS[1], 'data', 'version', 'created', 'accessed', 'expires')
    return {1, r[1], r[2], r[3], r[4], r[5]}
  end
  return {1}
end
return {0, redis.call('PTTL', KEYS[2])}
