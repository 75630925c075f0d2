-- Delete the lock of a holder known to have stopped, only if that holder
-- still has it. KEYS[1] lock, ARGV[1] the stopped holder's token.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
