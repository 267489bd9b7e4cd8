-- cache_set_versioned: write a versioned cache entry unless a newer version is stored.
--
-- KEYS[1]  the entry key
-- ARGV[1]  the encoded entry (marker, flags, 20-digit version, payload; see cache/codec.rs)
-- ARGV[2]  the new version as 20 zero-padded digits
-- ARGV[3]  time to live in milliseconds
--
-- Returns  1 when written (also when the same version is re-written), 0 when a newer
--          version is stored and the write was skipped. Re-running it is harmless.
--
-- A stored value counts as versioned exactly when the decoder reads a version from it (flags
-- 1 or 3, then 20 digits no greater than the largest u64). Anything else is corrupt or foreign,
-- a miss to every reader, and is replaced: a value the decoder refuses never blocks writes.
local cur = redis.call('GET', KEYS[1])
if cur and string.byte(cur, 1) == 193 then
  local flags = string.byte(cur, 2)
  if flags == 1 or flags == 3 then
    local stored = string.sub(cur, 3, 22)
    if #stored == 20 and string.find(stored, '^%d+$') and stored <= '18446744073709551615'
        and stored > ARGV[2] then
      return 0
    end
  end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
return 1
