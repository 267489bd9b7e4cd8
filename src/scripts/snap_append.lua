-- snap_append: append the next chunk of ids to an open run, in order, by its writer.
--
-- KEYS[1]  the meta hash (see snap_begin.lua)
-- KEYS[2]  the id list
-- ARGV[1]  the writer
-- ARGV[2]  this chunk's index (0, 1, 2, ...)
-- ARGV[3]  1 if this is the last chunk (the run becomes readable), else 0
-- ARGV[4…] the ids
--
-- Returns  {'ok', total} appended (also for a replay of the chunk just appended: same writer,
--          same index, same ids); {'missing'}; {'complete'}; {'concurrent'} another writer
--          began the run since; {'out_of_order', expected index}; {'too_many', max}.
local parts = {}
for i = 4, #ARGV do
  parts[#parts + 1] = #ARGV[i] .. ':' .. ARGV[i]
end
local digest = redis.sha1hex(ARGV[3] .. '|' .. table.concat(parts, ','))
local m = redis.call('HMGET', KEYS[1], 'st', 'n', 'nx', 'w', 'exp', 'max', 'lh')
if not m[1] then
  return {'missing'}
end
if m[4] ~= ARGV[1] then
  return {'concurrent'}
end
local n, nx, idx = tonumber(m[2]), tonumber(m[3]), tonumber(ARGV[2])
if idx == nx - 1 and m[7] == digest then
  -- The same writer re-sent the chunk it just appended (a replayed call): already done.
  return {'ok', n}
end
if m[1] ~= 'open' then
  return {'complete'}
end
if idx ~= nx then
  return {'out_of_order', nx}
end
local count = #ARGV - 3
if n + count > tonumber(m[6]) then
  return {'too_many', tonumber(m[6])}
end
local i = 4
while i <= #ARGV do
  local last = math.min(i + 999, #ARGV)
  redis.call('RPUSH', KEYS[2], unpack(ARGV, i, last))
  i = last + 1
end
n = n + count
redis.call('HSET', KEYS[1], 'n', n, 'nx', nx + 1, 'lh', digest)
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'st', 'done')
end
redis.call('PEXPIREAT', KEYS[1], m[5])
redis.call('PEXPIREAT', KEYS[2], m[5])
return {'ok', n}
