-- counter_add: add to a counter, refusing (never wrapping) at the i64 bounds.
--
-- KEYS[1]  the counter key
-- ARGV[1]  'INCRBY' or 'DECRBY'
-- ARGV[2]  the amount, a decimal i64
--
-- Returns  {1, value}          applied; value is the new value as a decimal string
--                              (a string, because Lua numbers are doubles: exact past 2^53)
--          {0, 'range'}        refused: the result would leave the i64 range; value unchanged
--          {0, 'notint'}       refused: the stored value is not an integer; value unchanged
--          {0, 'wrongtype'}    refused: the key holds another type; value unchanged
--
-- Redis checks the bounds before it writes, so a refusal leaves the key as it was. The reason is
-- decided here, on the server, so the client never has to read error text.
local t = redis.call('TYPE', KEYS[1]).ok
if t ~= 'string' and t ~= 'none' then
  return {0, 'wrongtype'}
end
local r = redis.pcall(ARGV[1], KEYS[1], ARGV[2])
if type(r) == 'table' and r.err then
  if t == 'string' then
    local probe = redis.pcall('INCRBY', KEYS[1], '0')
    if type(probe) == 'table' and probe.err then
      return {0, 'notint'}
    end
  end
  return {0, 'range'}
end
return {1, redis.call('GET', KEYS[1])}
