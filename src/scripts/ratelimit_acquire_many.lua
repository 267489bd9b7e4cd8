-- ratelimit_acquire_many: decide several requests on one token bucket, in arrival order, on
-- the server clock: for each request in turn, what ratelimit_acquire decides for one.
--
-- KEYS[1]   the bucket: a hash with t (tokens, may be fractional) and u (last update, ms)
-- ARGV[1]   refill: permits per period, as "<permits>/<period ms>" (exact integers)
-- ARGV[2]   capacity (the burst); a new bucket starts full
-- ARGV[3]   time to live in milliseconds (long enough to refill completely: expiry = full)
-- ARGV[4]   permits granted locally while Redis was unreachable, charged to the bucket once
--           (0 otherwise)
-- ARGV[5..] permits asked for by each request (1 ≤ n ≤ capacity), in arrival order
--
-- Returns   three integers per request, in order: allowed 1|0, tokens left after it
--           (floor), retry after in ms (0 when allowed)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local sep = string.find(ARGV[1], '/', 1, true)
local rate = tonumber(string.sub(ARGV[1], 1, sep - 1)) / tonumber(string.sub(ARGV[1], sep + 1))
local cap = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 't', 'u')
local tokens = tonumber(v[1]) or cap
local updated = tonumber(v[2]) or now
if now > updated then
  tokens = math.min(cap, tokens + (now - updated) * rate)
end
tokens = tokens - tonumber(ARGV[4])
local out = {}
for i = 5, #ARGV do
  local n = tonumber(ARGV[i])
  local allowed, retry = 0, 0
  if tokens >= n then
    tokens = tokens - n
    allowed = 1
  else
    retry = math.ceil((n - tokens) / rate)
  end
  out[#out + 1] = allowed
  out[#out + 1] = math.max(0, math.floor(tokens))
  out[#out + 1] = retry
end
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'u', string.format('%.3f', now))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return out
