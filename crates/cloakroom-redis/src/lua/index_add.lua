-- Add stored ids to a principal's set and keep the set at least until
-- ARGV[1] (ms since the epoch); never shortens it. Touches only the set.
-- KEYS[1] principal set; ARGV[1] keep until, ARGV[2..] ids -> 1
redis.call('SADD', KEYS[1], unpack(ARGV, 2))
local pttl = redis.call('PTTL', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- -1: the set was just created by this SADD (every set gets an expiry).
if pttl == -1 or now + pttl < tonumber(ARGV[1]) then
  redis.call('PEXPIREAT', KEYS[1], ARGV[1])
end
return 1
