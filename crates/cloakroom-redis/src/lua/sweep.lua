-- Delete one expired record, if it is still expired and its lock is not
-- held, and hand it back: the check and the delete are one step, so a
-- record renewed or locked meanwhile is never deleted.
-- KEYS[1] record hash, KEYS[2] its lock; ARGV[1] the sweep's now ms
-- -> {data, version, created, accessed, expires, principal} | nil
local f = redis.call('HMGET', KEYS[1], 'data', 'version', 'created', 'accessed', 'expires',
  'principal')
if not f[2] or not f[5] or tonumber(f[5]) > tonumber(ARGV[1]) then
  return false
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
redis.call('DEL', KEYS[1])
return f
