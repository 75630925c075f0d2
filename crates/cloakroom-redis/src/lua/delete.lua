-- Delete a record whatever its lock state.
-- KEYS[1] record hash; ARGV[1] now ms
-- -> {'ok', 1 if a live record was deleted else 0, its principal or ''}
local s = stored(KEYS[1], ARGV[1])
if s.present then redis.call('DEL', KEYS[1]) end
if s.live > 0 then return {'ok', 1, s.principal or ''} end
return {'ok', 0, s.principal or ''}
