-- Creates a service.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  '1' to leave an existing service as it is and return it (used for the default service)
-- ARGV[2…] field, value pairs of the service's settings
-- Returns  {'ok', field, value, …} (the stored hash) | {'exists'}
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[1] == '1' then return {'ok', unpack(redis.call('HGETALL', KEYS[1]))} end
  return {'exists'}
end
local now = now_seconds()
redis.call('HSET', KEYS[1], 'c', now, 'u', now, 'q', 0, unpack(ARGV, 2))
return {'ok', unpack(redis.call('HGETALL', KEYS[1]))}
