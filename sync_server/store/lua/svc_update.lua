-- Updates a service's canonical settings (each partition's copy follows: svc_part.lua).
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1…] field, value pairs to set (none is allowed: the update then only touches date_updated)
-- Returns  {'ok', field, value, …} (the stored hash) | {'nosvc'}
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
redis.call('HSET', KEYS[1], 'u', now_seconds(), unpack(ARGV, 1))
return {'ok', unpack(redis.call('HGETALL', KEYS[1]))}
