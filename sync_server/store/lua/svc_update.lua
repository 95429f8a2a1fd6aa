-- Updates a service's settings.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2…] field, value pairs to set (none is allowed: the update then only touches date_updated)
-- Returns  {'ok', field, value, …} (the stored hash) | {'nosvc'}
-- Turning access control on publishes a 'revoked' event on every document's channel, naming the
-- identities that keep their read right, so every other restricted subscriber is dropped before any
-- later write reaches it. The work is O(documents + permissions) in one step (a rare operator call).
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local prefix = ARGV[1]
local was_enabled = redis.call('HGET', KEYS[1], 'acl_enabled') == '1'
redis.call('HSET', KEYS[1], 'u', now_seconds(), unpack(ARGV, 2))
if not was_enabled and redis.call('HGET', KEYS[1], 'acl_enabled') == '1' then
  for _, sid in ipairs(redis.call('ZRANGE', prefix .. 'docs', 0, -1)) do
    local readers = {}
    local perms = redis.call('HGETALL', prefix .. 'perm:' .. sid)
    for i = 1, #perms, 2 do
      if string.sub(perms[i + 1], READ, READ) == '1' then readers[#readers + 1] = perms[i] end
    end
    publish_revoked(prefix, sid, nil, readers)
  end
end
return {'ok', unpack(redis.call('HGETALL', KEYS[1]))}
