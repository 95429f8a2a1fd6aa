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
-- When access control is on and a 'set' or 'del' takes the identity's read right away, a 'revoked'
-- event is published on the document's channel in the same step, so the identity's live
-- subscriptions end before any later write reaches them.
local prefix, op, identity = ARGV[1], ARGV[4], ARGV[5]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid = resolve(prefix, ARGV[2], ARGV[3])
if not sid then return {'nodoc'} end
local key = prefix .. 'perm:' .. sid
if op == 'list' then return {'ok', sid, unpack(redis.call('HGETALL', key))} end
local flags = redis.call('HGET', key, identity)

local function revoke_if_read_lost(new_flags)
  local had_read = flags and string.sub(flags, READ, READ) == '1'
  local keeps_read = new_flags and string.sub(new_flags, READ, READ) == '1'
  if had_read and not keeps_read and redis.call('HGET', KEYS[1], 'acl_enabled') == '1' then
    publish_revoked(prefix, sid, identity, nil)
  end
end

if op == 'set' then
  -- Deleted with the document by purge(), on delete and on expiry alike.
  redis.call('HSET', key, identity, ARGV[6])
  revoke_if_read_lost(ARGV[6])
  return {'ok', sid, identity, ARGV[6]}
end
if not flags then return {'noperm'} end
if op == 'del' then
  redis.call('HDEL', key, identity)
  revoke_if_read_lost(nil)
  return {'ok', sid}
end
return {'ok', sid, identity, flags}
