-- idem_fail: give up a claim so a retry can run, if the caller still owns it.
--
-- KEYS[1]  the record (see idem_begin.lua)
-- ARGV[1]  the owner of the claim
--
-- Returns  1 released, 0 not the caller's pending claim (a done record, another owner's claim
--          or nothing is left untouched).
local rec = redis.call('HMGET', KEYS[1], 'st', 'ow')
if rec[1] == 'P' and rec[2] == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
