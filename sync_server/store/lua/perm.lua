-- Reads or writes the permissions of one identity (or lists all) on one document.
-- KEYS, ARGV[1..7]  the document scripts' header (see the prelude; ARGV[5..7] are unused)
-- ARGV[8]  the document's SID or unique name
-- ARGV[9]  '1' when ARGV[8] is a SID, '0' when it is a unique name
-- ARGV[10] 'get' | 'set' | 'del' | 'list'
-- ARGV[11] the identity (ignored by 'list')
-- ARGV[12] for 'set': three characters, '1' or '0' each, for read, write, manage
-- Returns  {'ok', document sid, identity, flags, …} (one pair for get/set, all for list, none for
--          del) | {'nosvc'} | {'nodoc'} | {'noperm'} | {'moved', p}
-- When access control is on and a 'set' or 'del' takes the identity's read right away, a 'revoked'
-- event is published on the document's channel in the same step, so the identity's live
-- subscriptions end before any later write reaches them.
local svc, op, identity = ARGV[2], ARGV[10], ARGV[11]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid, moved = resolve(svc, KEYS[2], KEYS[6], ARGV[8], ARGV[9], ARGV[4])
if moved then return {'moved', moved} end
if not sid then return {'nodoc'} end
local key = perm_key(svc, sid)
if op == 'list' then return {'ok', sid, unpack(redis.call('HGETALL', key))} end
local flags = redis.call('HGET', key, identity)

local function revoke_if_read_lost(new_flags)
  local had_read = flags and string.sub(flags, READ, READ) == '1'
  local keeps_read = new_flags and string.sub(new_flags, READ, READ) == '1'
  if had_read and not keeps_read and redis.call('HGET', KEYS[1], 'acl_enabled') == '1' then
    publish_revoked(svc, sid, identity, nil)
  end
end

if op == 'set' then
  -- Deleted with the document by purge(), on delete and on expiry alike.
  redis.call('HSET', key, identity, ARGV[12])
  revoke_if_read_lost(ARGV[12])
  return {'ok', sid, identity, ARGV[12]}
end
if not flags then return {'noperm'} end
if op == 'del' then
  redis.call('HDEL', key, identity)
  revoke_if_read_lost(nil)
  return {'ok', sid}
end
return {'ok', sid, identity, flags}
