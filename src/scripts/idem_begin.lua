-- idem_begin: claim an idempotency record, or say why not.
--
-- KEYS[1]  the record: a hash with st (P pending | D done), ph (payload hash), ow (owner of
--          the claim), lu (pending lease end, server ms), res (the result, once done)
-- ARGV[1]  the payload hash
-- ARGV[2]  the owner of this attempt (unique per claim)
-- ARGV[3]  the pending lease in milliseconds
-- ARGV[4]  the retention in milliseconds
--
-- Returns  {'proceed'} the caller owns a new claim (also when ARGV[2] already owns it: a
--          replayed begin); {'takeover'} the previous claim's lease ran out and the caller
--          owns it now; {'replay', result}; {'mismatch'} another payload used this key
--          (checked before the state); {'busy', ms_left} a live claim of another owner.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function claim()
  redis.call('HSET', KEYS[1], 'st', 'P', 'ph', ARGV[1], 'ow', ARGV[2], 'lu', now + tonumber(ARGV[3]))
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  claim()
  return {'proceed'}
end
local rec = redis.call('HMGET', KEYS[1], 'st', 'ph', 'ow', 'lu', 'res')
if rec[2] ~= ARGV[1] then
  return {'mismatch'}
end
if rec[1] == 'D' then
  return {'replay', rec[5]}
end
if rec[3] == ARGV[2] then
  return {'proceed'}
end
local lease_end = tonumber(rec[4]) or 0
if lease_end <= now then
  claim()
  return {'takeover'}
end
return {'busy', lease_end - now}
