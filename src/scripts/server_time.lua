-- server_time: the server's clock, read by the pool actor's health probe.
--
-- KEYS[1]  none: the script is keyless (on a cluster the caller pins the node)
-- ARGV[1]  none
--
-- Returns  {seconds, microseconds}, as TIME does
return redis.call('TIME')
