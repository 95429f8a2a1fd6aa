-- One sweep of one partition, for every service at once: removes the documents whose expiry has
-- passed and tells their subscribers, audits a sample of the expiry index, and purges one bounded
-- step of the documents of deleted services.
-- Every server process runs this for every partition a few times a second; being one atomic script
-- that publishes only for the index entries it removed itself, each expiry yields exactly one
-- 'removed' event however many processes sweep, and so does each purged document.
-- KEYS[1]  the partition's expiry index          sync:{T}:x
-- KEYS[2]  the partition's deleted services      sync:{T}:dead
-- KEYS[3]  the partition's webhook outbox        sync:{T}:wh
-- ARGV[1]  the partition's key prefix            sync:{T}:
-- ARGV[2]  unused ('')
-- ARGV[3]  the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[4]  the most due documents to remove in one call
-- ARGV[5]  how many entries of the expiry index to audit in one call (see below)
-- ARGV[6]  the most documents of deleted services to purge in one call
-- Returns  {number of expired documents removed, number of deleted services' documents purged}
-- Keys derived here from ARGV[1] (a document's hash, permissions, names hash and index, read from
-- an expiry entry "S:D:name"; a deleted service's renamed index and names hash, read from "S:G" in
-- KEYS[2]; a service's partition copy, for its webhook) carry the partition's own tag, so they share
-- the slot of KEYS[1] (see the prelude).
-- Webhooks: an expiry puts document_removed into the outbox of a service with a webhook, whatever its
-- webhooks_from_rest_enabled (neither a client nor the backend made that change, so the backend
-- hears of it only this way), with Identity system and no revision (the hash is gone). A deleted
-- service's documents send none: its copies, webhook included, went with it (svc_part.lua), and the
-- backend that deleted it knows.
local limit, audit, step = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local removed, purged = 0, 0

local function remove(member)
  local svc, sid, name = split_member(member)
  -- Redis may or may not have evicted the hash yet; either way the document is gone for readers.
  local revision = redis.call('HGET', doc_key(svc, sid), 'r')
  purge(svc, PREFIX .. 'n:' .. svc, PREFIX .. 'i:' .. svc, KEYS[1], sid, name)
  publish_removed(svc, sid, name, revision, 'expired')
  local url = webhook_url(PREFIX .. 's:' .. svc, '', true)
  if url then
    outbox_append(KEYS[3], url, 'document_removed', svc, sid, name, tonumber(revision), nil, 'system', '')
  end
  removed = removed + 1
end

for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_seconds(), 'LIMIT', 0, limit)) do
  remove(member)
end

-- The audit: a document hash can vanish before its indexed expiry time (an operator's EXPIRE or
-- PEXPIRE, or maxmemory eviction under a volatile-* policy), and the time-ordered pass above would
-- then leave its index entries, and its subscribers, waiting until that time, possibly a year.
-- A random sample of the index is checked on every call: an index no larger than the sample is
-- checked whole every time, a larger one entry by entry within about size/sample calls, with no
-- state to keep. (Documents without a TTL have no Redis expiry and cannot vanish this way; under
-- an allkeys-* eviction policy any key, index included, can, which this server does not support.)
for _, member in ipairs(redis.call('ZRANDMEMBER', KEYS[1], audit)) do
  local svc, sid = split_member(member)
  if redis.call('EXISTS', doc_key(svc, sid)) == 0 then remove(member) end
end

-- The purge of deleted services: their keys here were renamed away when they were deleted (so a
-- service created again under the same SID, the default one, starts empty), and at most `step`
-- of their documents are removed per call, so that no call blocks Redis for long.
while purged < step do
  local entry = redis.call('SRANDMEMBER', KEYS[2])
  if not entry then break end
  local svc, generation = string.sub(entry, 1, 34), string.sub(entry, 36)
  local base = PREFIX .. 'g:' .. svc .. ':' .. generation .. ':'
  local sids = redis.call('ZRANGE', base .. 'i', 0, step - purged - 1)
  for _, sid in ipairs(sids) do
    local f = read_doc(svc, sid)
    -- A document that expired meanwhile is the expiry pass's: it publishes its one 'removed'.
    if f.r then
      redis.call('DEL', doc_key(svc, sid), perm_key(svc, sid))
      redis.call('ZREM', KEYS[1], expiry_member(svc, sid, f.n))
      publish_removed(svc, sid, f.n, f.r, 'service_deleted')
    end
    redis.call('ZREM', base .. 'i', sid)
    purged = purged + 1
  end
  if redis.call('EXISTS', base .. 'i') == 0 then
    redis.call('DEL', base .. 'n')
    redis.call('SREM', KEYS[2], entry)
  end
end
return {removed, purged}
