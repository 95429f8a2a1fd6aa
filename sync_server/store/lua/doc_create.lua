-- Creates a document.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the identity access control restricts, '' for a system principal (see the prelude)
-- ARGV[3]  the creator's identity (created_by)
-- ARGV[4]  the creator's connection id, '' for REST (unused: no event is published)
-- ARGV[5]  the new document's SID
-- ARGV[6]  unique name, '' for none (validated by the caller)
-- ARGV[7]  data: a compact JSON object (validated and size-checked by the caller)
-- ARGV[8]  ttl in seconds, '0' for none
-- Returns  {'ok', sid, n, d, r, c, u, x, b} | {'nosvc'} | {'dup'} | {'forbidden'}
-- With access control on, only a system principal creates: a client could hold no permission on a
-- document that does not exist yet, and granting its creator one would open the service to anyone.
-- No event is published: nobody can be subscribed to a document that does not exist yet.
local prefix, restricted, created_by = ARGV[1], ARGV[2], ARGV[3]
local sid, name, data, ttl = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
if not allowed(KEYS[1], prefix, nil, restricted, WRITE) then return {'forbidden'} end
if name ~= '' then
  -- A name still indexed for a document that no longer exists (expired, not yet swept) is free.
  local holder = redis.call('HGET', prefix .. 'names', name)
  if holder and redis.call('EXISTS', doc_key(prefix, holder)) == 1 then return {'dup'} end
  redis.call('HSET', prefix .. 'names', name, sid)
end
local now = now_seconds()
local seq = redis.call('HINCRBY', KEYS[1], 'q', 1)
local f = {n = name, d = data, r = 0, c = now, u = now, x = 0, b = created_by}
redis.call('HSET', doc_key(prefix, sid), 'n', name, 'd', data, 'r', 0, 'c', now, 'u', now, 'x', 0,
  'b', created_by, 'q', seq)
redis.call('ZADD', prefix .. 'docs', seq, sid)
if ttl ~= '0' then apply_ttl(prefix, sid, name, ttl, now, f) end
return doc_reply('ok', sid, f)
