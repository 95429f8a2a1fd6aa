-- Creates a document.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the new document's SID
-- ARGV[3]  unique name, '' for none (validated by the caller)
-- ARGV[4]  data: a compact JSON object (validated and size-checked by the caller)
-- ARGV[5]  ttl in seconds, '0' for none
-- ARGV[6]  created_by (an identity, or 'system')
-- Returns  {'ok', sid, n, d, r, c, u, x, b} | {'nosvc'} | {'dup'}
-- No event is published: nobody can be subscribed to a document that does not exist yet.
local prefix, sid, name, data, ttl, created_by = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
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
