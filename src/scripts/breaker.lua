-- breaker: admit a call or record an outcome for one circuit breaker, on the server clock.
--
-- KEYS[1]  the state: a hash with ph (closed | open | half_open), oa (when it opened, or when
--          the current round of half-open trials began, ms), hc (half-open calls admitted),
--          fo (forced: open | closed | absent). Written only when one of these changes, so
--          replicas tracking this key hear of phase changes, not of every call.
-- KEYS[2]  the counts, same hash slot, another prefix: ws (window start, ms), s, f
--          (successes and failures in the window). Written by every recorded outcome.
-- ARGV[1]  the action: admit | ok | fail | force_open | force_closed | reset
-- ARGV[2]  failure ratio that opens it (0 < r ≤ 1)
-- ARGV[3]  tumbling window, ms
-- ARGV[4]  minimum calls in the window before the ratio counts
-- ARGV[5]  break duration, ms
-- ARGV[6]  most half-open trial calls, fleet-wide
-- ARGV[7]  time to live of both hashes, ms (forced states persist)
--
-- Returns  {allowed 1|0, phase, transition ('' | open | half_open | closed), retry_at ms
--          (when open and not forced, or refused while half-open: when a call may be
--          admitted), now ms}
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local act = ARGV[1]
local ratio, win, minc = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local brk, hmax = tonumber(ARGV[5]), tonumber(ARGV[6])
local st = redis.call('HMGET', KEYS[1], 'ph', 'oa', 'hc', 'fo')
local ph, oa, hc, fo = st[1] or 'closed', tonumber(st[2]) or 0, tonumber(st[3]) or 0, st[4]
-- The counts matter to recorded outcomes only: an admission never reads them.
local ws, s, f = now, 0, 0
if act == 'ok' or act == 'fail' then
  local ct = redis.call('HMGET', KEYS[2], 'ws', 's', 'f')
  ws, s, f = tonumber(ct[1]) or now, tonumber(ct[2]) or 0, tonumber(ct[3]) or 0
end
local ph0, oa0, hc0, fo0 = ph, oa, hc, fo
local counted = false
local tr, allowed = '', 0
local function open()
  ph, oa, hc, tr = 'open', now, 0, 'open'
end
local function zero()
  ws, s, f, counted = now, 0, 0, true
end
local function roll()
  if now - ws >= win then zero() end
end
if act == 'force_open' then fo = 'open'; open()
elseif act == 'force_closed' then fo = 'closed'; ph, hc, tr = 'closed', 0, 'closed'; zero()
elseif act == 'reset' then fo = false; ph, hc, tr = 'closed', 0, 'closed'; zero()
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
  if ph == 'half_open' then ph, hc, tr = 'closed', 0, 'closed'; zero()
  elseif ph == 'closed' then roll(); s = s + 1; counted = true end
elseif act == 'fail' then
  if ph == 'half_open' then open()
  elseif ph == 'closed' then
    roll(); f = f + 1; counted = true
    if s + f >= minc and f / (s + f) >= ratio then open(); zero() end
  end
end
if ph ~= ph0 or oa ~= oa0 or hc ~= hc0 or fo ~= fo0 then
  redis.call('HSET', KEYS[1], 'ph', ph, 'oa', oa, 'hc', hc)
  if fo then redis.call('HSET', KEYS[1], 'fo', fo) else redis.call('HDEL', KEYS[1], 'fo') end
  if fo then redis.call('PERSIST', KEYS[1]) else redis.call('PEXPIRE', KEYS[1], ARGV[7]) end
end
if counted then
  redis.call('HSET', KEYS[2], 'ws', ws, 's', s, 'f', f)
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
end
-- A transition is a change of phase: forcing or resetting to the phase it already has is none.
if ph == ph0 then tr = '' end
local retry_at = 0
if ph == 'open' and fo ~= 'open' then retry_at = oa + brk end
-- Refused while half-open: the trial slots free up one break duration after this round began.
if ph == 'half_open' and allowed == 0 then retry_at = oa + brk end
return {allowed, ph, tr, retry_at, now}
