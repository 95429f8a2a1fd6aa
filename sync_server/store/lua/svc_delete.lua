-- Deletes a service with all its documents, telling each document's subscribers.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- Returns  {'ok', number of documents removed} | {'nosvc'}
-- The work is O(documents of the service) in one atomic step: a reader never sees half a service.
local prefix = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sids = redis.call('ZRANGE', prefix .. 'docs', 0, -1)
for _, sid in ipairs(sids) do
  local f = read_doc(prefix, sid)
  redis.call('DEL', doc_key(prefix, sid), prefix .. 'perm:' .. sid)
  publish_removed(prefix, sid, f.n, f.r, f.r and 'service_deleted' or 'expired')
end
redis.call('DEL', KEYS[1], prefix .. 'docs', prefix .. 'names', prefix .. 'expiry')
return {'ok', #sids}
