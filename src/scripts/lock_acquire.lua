-- lock_acquire: take a fenced lease if the lock is free.
--
-- KEYS[1]  the lock key: "<token>:<owner>" while held, with the lease as its TTL
-- KEYS[2]  the fence key (same hash slot): the last token handed out
-- ARGV[1]  the owner: unique per acquisition
-- ARGV[2]  the lease in milliseconds
-- ARGV[3]  the fence key's time to live in milliseconds (lease + fence_idle), or 0 (absent)
--          for a fence that never expires
--
-- Returns  {1, token} when taken (also when ARGV[1] already holds it: a replayed acquire gets
--          its own token back), {0, pttl} when another owner holds it.
--
-- The token is max(last token + 1, server TIME in microseconds): strictly increasing across
-- every generation, and still increasing after the server lost the fence key (restart
-- without persistence, failover before replication, or its own expiry) unless the server clock
-- stepped back: an expired fence was last written at least fence_idle ago, so the clock has
-- moved past its token by then.
-- Lua numbers are doubles: exact for integers below 2^53 (microsecond time until year 2255).
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if sep and string.sub(cur, sep + 1) == ARGV[1] then
    return {1, tonumber(string.sub(cur, 1, sep - 1))}
  end
  return {0, redis.call('PTTL', KEYS[1])}
end
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
local token = math.max(last + 1, now_us)
local text = string.format('%.0f', token)
local fence_ttl = tonumber(ARGV[3] or '0') or 0
if fence_ttl > 0 then
  redis.call('SET', KEYS[2], text, 'PX', fence_ttl)
else
  redis.call('SET', KEYS[2], text)
end
redis.call('SET', KEYS[1], text .. ':' .. ARGV[1], 'PX', ARGV[2])
return {1, token}
