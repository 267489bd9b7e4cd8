-- snap_begin: open a snapshot run for one writer (replacing any run with the same id).
--
-- KEYS[1]  the run's meta hash: fp (fingerprint), st (open | done), n (ids so far), nx (next
--          chunk index), w (writer), exp (server ms when the run expires), max (id cap)
-- KEYS[2]  the run's id list (same hash slot)
-- ARGV[1]  the fingerprint
-- ARGV[2]  the writer (unique per begin)
-- ARGV[3]  time to live in milliseconds
-- ARGV[4]  the most ids the run may hold
--
-- Returns  the expiry, server ms. Both keys carry it as PEXPIREAT: a run expires whole.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[3])
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'st', 'open', 'n', 0, 'nx', 0, 'w', ARGV[2],
  'exp', exp, 'max', ARGV[4])
redis.call('PEXPIREAT', KEYS[1], exp)
return exp
