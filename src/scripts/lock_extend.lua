-- lock_extend: renew many leases in one call (the heartbeater's batch, or one manual extend).
--
-- KEYS[1]  the first lock key; KEYS[i] pairs with ARGV[i + 1]. All keys share one node (on a
--          cluster, one hash slot: the caller groups them).
-- ARGV[1]  the lease in milliseconds
-- ARGV[2]  the owner of KEYS[1], and so on
--
-- Returns  one integer per key: 1 renewed, 0 lost (another owner holds it, or it expired).
local out = {}
for i, key in ipairs(KEYS) do
  local cur = redis.call('GET', key)
  local ok = 0
  if cur then
    local sep = string.find(cur, ':', 1, true)
    if sep and string.sub(cur, sep + 1) == ARGV[i + 1] then
      redis.call('PEXPIRE', key, ARGV[1])
      ok = 1
    end
  end
  out[i] = ok
end
return out
