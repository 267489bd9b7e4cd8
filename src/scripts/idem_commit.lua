-- idem_commit: store the result of a claim, if the caller still owns it.
--
-- KEYS[1]  the record (see idem_begin.lua)
-- ARGV[1]  the owner of the claim
-- ARGV[2]  the result bytes
-- ARGV[3]  the retention in milliseconds, counted again from the commit
--
-- Returns  1 committed (also for a replayed commit by the same owner), 0 the claim is not the
--          caller's any more (taken over after its lease, failed, or expired).
local rec = redis.call('HMGET', KEYS[1], 'st', 'ow')
if rec[2] ~= ARGV[1] then
  return 0
end
if rec[1] == 'D' then
  return 1
end
redis.call('HSET', KEYS[1], 'st', 'D', 'res', ARGV[2])
redis.call('HDEL', KEYS[1], 'lu')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
