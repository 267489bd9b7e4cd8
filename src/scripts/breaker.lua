-- breaker: admit a call or record an outcome for one circuit breaker, on the server clock.
--
-- KEYS[1]  the breaker: a hash with ph (closed | open | half_open), ws (window start, ms),
--          s, f (successes, failures in the window), oa (when it opened, or when the current
--          round of half-open trials began, ms), hc (half-open calls
--          admitted), fo (forced: open | closed | absent)
-- ARGV[1]  the action: admit | ok | fail | force_open | force_closed | reset
-- ARGV[2]  failure ratio that opens it (0 < r ≤ 1)
-- ARGV[3]  tumbling window, ms
-- ARGV[4]  minimum calls in the window before the ratio counts
-- ARGV[5]  break duration, ms
-- ARGV[6]  most half-open trial calls, fleet-wide
-- ARGV[7]  time to live of the hash, ms
--
-- Returns  {allowed 1|0, phase, transition ('' | open | half_open | closed), retry_at ms
--          (when open: when a trial may be admitted), now ms}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local act = ARGV[1]
local ratio, win, minc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local brk, hmax = tonumber(ARGV[5]), tonumber(ARGV[6])
local v = redis.call('HMGET', KEYS[1], 'ph', 'ws', 's', 'f', 'oa', 'hc', 'fo')
local ph = v[1] or 'closed'
local ws, s, f = tonumber(v[2]) or now, tonumber(v[3]) or 0, tonumber(v[4]) or 0
local oa, hc, fo = tonumber(v[5]) or 0, tonumber(v[6]) or 0, v[7]
local tr, allowed = '', 0
local function open()
  ph, oa, hc, tr = 'open', now, 0, 'open'
end
local function roll()
  if now - ws >= win then ws, s, f = now, 0, 0 end
end
if act == 'force_open' then fo = 'open'; open()
elseif act == 'force_closed' then fo = 'closed'; ph, ws, s, f, tr = 'closed', now, 0, 0, 'closed'
elseif act == 'reset' then fo = false; ph, ws, s, f, hc, tr = 'closed', now, 0, 0, 0, 'closed'
elseif fo == 'open' then allowed = 0; ph = 'open'
elseif fo == 'closed' then allowed = 1; ph = 'closed'
elseif act == 'admit' then
  if ph == 'open' and now - oa >= brk then ph, hc, oa, tr = 'half_open', 0, now, 'half_open' end
  -- Trials that never reported back (a dropped call, a crashed caller) free their slots
  -- after one more break duration, so the breaker cannot stay half-open for ever.
  if ph == 'half_open' and hc >= hmax and now - oa >= brk then hc, oa = 0, now end
  if ph == 'closed' then allowed = 1
  elseif ph == 'half_open' and hc < hmax then hc = hc + 1; allowed = 1 end
elseif act == 'ok' then
  if ph == 'half_open' then ph, ws, s, f, tr = 'closed', now, 0, 0, 'closed'
  elseif ph == 'closed' then roll(); s = s + 1 end
elseif act == 'fail' then
  if ph == 'half_open' then open()
  elseif ph == 'closed' then
    roll(); f = f + 1
    if s + f >= minc and f / (s + f) >= ratio then open() end
  end
end
redis.call('HSET', KEYS[1], 'ph', ph, 'ws', ws, 's', s, 'f', f, 'oa', oa, 'hc', hc)
if fo then redis.call('HSET', KEYS[1], 'fo', fo) else redis.call('HDEL', KEYS[1], 'fo') end
if fo then redis.call('PERSIST', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
local retry_at = 0
if ph == 'open' and fo ~= 'open' then retry_at = oa + brk end
return {allowed, ph, tr, retry_at, now}
