-- Creates a document in the partition its SID names.
-- KEYS, ARGV[1..7]  the document scripts' header (see the prelude; KEYS[8], KEYS[9] are given)
-- ARGV[8]  the new document's SID (made by the store to name this partition)
-- ARGV[9]  unique name, '' for none (validated by the caller)
-- ARGV[10] data: a compact JSON object (validated and size-checked by the caller)
-- ARGV[11] ttl in seconds, '0' for none
-- ARGV[12] the partition of a name alias the store has found stale (its document is gone), '' if none
-- Returns  {'ok', sid, n, d, r, c, u, x, b} | {'nosvc'} | {'dup'} | {'forbidden'}
--          | {'aliased', partition}: the name may be held by a migrated document living there
-- With access control on, only a system principal creates: a client could hold no permission on a
-- document that does not exist yet, and granting its creator one would open the service to anyone.
-- No event is published: nobody can be subscribed to a document that does not exist yet; a service
-- with a webhook gets its document_created in the outbox (see the prelude).
-- A named document's partition is its name's, so the names hash here decides uniqueness atomically.
local svc, restricted, created_by = ARGV[2], ARGV[5], ARGV[6]
local sid, name, data, ttl, stale = ARGV[8], ARGV[9], ARGV[10], ARGV[11], ARGV[12]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
if not allowed(KEYS[1], svc, nil, restricted, WRITE) then return {'forbidden'} end
if name ~= '' then
  -- A name still indexed for a document that no longer exists (expired, not yet swept) is free.
  local holder = redis.call('HGET', KEYS[2], name)
  if holder and redis.call('EXISTS', doc_key(svc, holder)) == 1 then return {'dup'} end
  local elsewhere = redis.call('HGET', KEYS[6], svc .. ':' .. name)
  if elsewhere then
    if elsewhere ~= stale then return {'aliased', tonumber(elsewhere)} end
    -- Documents never move back into a partition, so a migrated name once gone stays gone.
    redis.call('HDEL', KEYS[6], svc .. ':' .. name)
  end
  redis.call('HSET', KEYS[2], name, sid)
end
local now = now_seconds()
local score = next_score(KEYS[5])
local f = {n = name, d = data, r = 0, c = now, u = now, x = 0, b = created_by}
redis.call('HSET', KEYS[8], 'n', name, 'd', data, 'r', 0, 'c', now, 'u', now, 'x', 0,
  'b', created_by, 'q', int_text(score))
redis.call('ZADD', KEYS[3], int_text(score), sid)
if ttl ~= '0' then apply_ttl(svc, KEYS[4], sid, name, ttl, now, f) end
webhook('document_created', svc, sid, name, 0, data)
return doc_reply('ok', sid, f)
