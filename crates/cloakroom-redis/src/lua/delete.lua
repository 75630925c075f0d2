-- Delete a record whatever its lock state.
-- KEYS[1] record hash; ARGV[1] now ms -> 1 if a live record was deleted
local live = live_version(KEYS[1], ARGV[1])
redis.call('DEL', KEYS[1])
if live > 0 then return 1 end
return 0
