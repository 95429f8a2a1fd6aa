-- Reads or writes the permissions of one identity (or lists all) on one document.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the document's SID or unique name
-- ARGV[3]  '1' when ARGV[2] is a SID, '0' when it is a unique name
-- ARGV[4]  'get' | 'set' | 'del' | 'list'
-- ARGV[5]  the identity (ignored by 'list')
-- ARGV[6]  for 'set': three characters, '1' or '0' each, for read, write, manage
-- Returns  {'ok', document sid, identity, flags, …} (one pair for get/set, all for list, none for
--          del) | {'nosvc'} | {'nodoc'} | {'noperm'}
local prefix, op, identity = ARGV[1], ARGV[4], ARGV[5]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid = resolve(prefix, ARGV[2], ARGV[3])
if not sid then return {'nodoc'} end
local key = prefix .. 'perm:' .. sid
if op == 'list' then return {'ok', sid, unpack(redis.call('HGETALL', key))} end
if op == 'set' then
  -- Deleted with the document by purge(), on delete and on expiry alike.
  redis.call('HSET', key, identity, ARGV[6])
  return {'ok', sid, identity, ARGV[6]}
end
local flags = redis.call('HGET', key, identity)
if not flags then return {'noperm'} end
if op == 'del' then
  redis.call('HDEL', key, identity)
  return {'ok', sid}
end
return {'ok', sid, identity, flags}
