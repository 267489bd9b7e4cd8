-- lock_release: give a lease back if the caller still owns it.
--
-- KEYS[1]  the lock key
-- ARGV[1]  the owner
--
-- Returns  1 when released, 0 when another owner holds it or it is gone (the fence key is
--          never touched, so tokens keep rising).
local cur = redis.call('GET', KEYS[1])
if cur then
  local sep = string.find(cur, ':', 1, true)
  if sep and string.sub(cur, sep + 1) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
  end
end
return 0
