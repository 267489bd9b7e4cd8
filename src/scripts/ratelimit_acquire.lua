-- ratelimit_acquire: take n permits from a token bucket, on the server clock.
--
-- KEYS[1]  the bucket: a hash with t (tokens, may be fractional) and u (last update, ms)
-- ARGV[1]  refill: permits per period, as "<permits>/<period ms>" (exact integers)
-- ARGV[2]  capacity (the burst); a new bucket starts full
-- ARGV[3]  permits asked for (1 ≤ n ≤ capacity)
-- ARGV[4]  time to live in milliseconds (long enough to refill completely: expiry = full)
-- ARGV[5]  permits granted locally while Redis was unreachable, charged to the bucket once
--          when the caller switches back (0 otherwise), so the way back grants no double budget
--
-- Returns  {allowed 1|0, tokens left (floor), retry after in ms (0 when allowed)}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local sep = string.find(ARGV[1], '/', 1, true)
local rate = tonumber(string.sub(ARGV[1], 1, sep - 1)) / tonumber(string.sub(ARGV[1], sep + 1))
local cap, n = tonumber(ARGV[2]), tonumber(ARGV[3])
local v = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens = tonumber(v[1]) or cap
local updated = tonumber(v[2]) or now
if now > updated then
  tokens = math.min(cap, tokens + (now - updated) * rate)
end
tokens = tokens - tonumber(ARGV[5])
local allowed, retry = 0, 0
if tokens >= n then
  tokens = tokens - n
  allowed = 1
else
  retry = math.ceil((n - tokens) / rate)
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.3f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {allowed, math.max(0, math.floor(tokens)), retry}
