-- Extend a lease, only for the holder of the token.
-- KEYS[1] lock key; ARGV[1] token, ARGV[2] lease ms -> 1 renewed, 0 lost
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
