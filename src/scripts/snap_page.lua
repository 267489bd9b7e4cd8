-- snap_page: one page of a complete run, in one round trip.
--
-- KEYS[1]  the meta hash (see snap_begin.lua)
-- KEYS[2]  the id list
-- ARGV[1]  offset (0-based)
-- ARGV[2]  limit (at least 1)
-- ARGV[3]  '=' followed by the expected fingerprint (which may be empty), or '' to accept any
-- ARGV[4]  keep-alive in milliseconds: push the run's expiry to at least now + this (0: off)
--
-- Returns  {'none'} when the run is missing, incomplete or has another fingerprint;
--          {'ok', id, id, ...} otherwise ({'ok'} alone past the end).
local m = redis.call('HMGET', KEYS[1], 'st', 'n', 'fp', 'exp')
if m[1] ~= 'done' then
  return {'none'}
end
if ARGV[3] ~= '' and m[3] ~= string.sub(ARGV[3], 2) then
  return {'none'}
end
local keep = tonumber(ARGV[4])
if keep > 0 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now + keep > tonumber(m[4]) then
    redis.call('HSET', KEYS[1], 'exp', now + keep)
    redis.call('PEXPIREAT', KEYS[1], now + keep)
    redis.call('PEXPIREAT', KEYS[2], now + keep)
  end
end
local offset, limit, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(m[2])
local out = {'ok'}
if offset >= n then
  return out
end
local ids = redis.call('LRANGE', KEYS[2], offset, offset + limit - 1)
for _, id in ipairs(ids) do
  out[#out + 1] = id
end
return out
