-- The server processes that deliver webhooks, so that each takes its fair share of the partitions'
-- leases (webhooks/deliverer.py). A process that stops renewing lapses by itself.
-- KEYS[1]  the members                           sync:{webhooks}:members (process scored by lapse, ms)
-- ARGV[1]  the process
-- ARGV[2]  'join': announce it (again) for ARGV[3] milliseconds | 'leave'
-- Returns  'join': the number of live processes, this one included | 'leave': 0
if ARGV[2] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], int_text(now + tonumber(ARGV[3])), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int_text(now))
return redis.call('ZCARD', KEYS[1])
