-- One sweep of one or more partitions, for every service at once: removes the documents whose
-- expiry has passed and tells their subscribers, audits a sample of each expiry index, and purges a
-- bounded step of the documents of deleted services.
-- Every server process runs this a few times a second (on standalone Redis over all partitions in
-- one call, on a cluster one call per partition, since a script touches one slot there); being one
-- atomic script that publishes only for the index entries it removed itself, each expiry yields
-- exactly one 'removed' event however many processes sweep, and so does each purged document.
-- KEYS[3i-2]  partition i's expiry index          sync:{T}:x
-- KEYS[3i-1]  partition i's deleted services      sync:{T}:dead
-- KEYS[3i]    partition i's webhook outbox        sync:{T}:wh
-- ARGV[1]  unused ('': each partition's prefix is in ARGV[6+i])
-- ARGV[2]  the partition (1-based, of this call's) to start from: the caller picks it at random
-- ARGV[3]  the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[4]  the most due documents to remove in this call, over all its partitions
-- ARGV[5]  how many entries of each expiry index to audit (see below)
-- ARGV[6]  the most documents of deleted services to purge in this call, over all its partitions
-- ARGV[6+i]  partition i's key prefix                sync:{T}:
-- Returns  {expired documents removed, deleted services' documents purged, 1 if a budget ran out
--          (more is due: the caller sweeps again at once), else 0}
-- The partitions are visited from a random one on (ARGV[2]), so that a budget that runs out on one
-- call does not always leave the same partitions for later.
-- Keys derived here from a partition's prefix (a document's hash, permissions, names hash and
-- index, read from an expiry entry "S:D:name"; a deleted service's renamed index and names hash,
-- read from "S:G" in its dead set; a service's partition copy, for its webhook) carry that
-- partition's own tag, so they share the slot of its KEYS (see the prelude).
-- Webhooks: an expiry puts document_removed into the outbox of a service with a webhook, whatever its
-- webhooks_from_rest_enabled (neither a client nor the backend made that change, so the backend
-- hears of it only this way), with Identity system and no revision (the hash is gone). A deleted
-- service's documents send none: its copies, webhook included, went with it (svc_part.lua), and the
-- backend that deleted it knows.
local limit, audit, step = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local removed, purged, saturated = 0, 0, 0
local expiry, dead, outbox

local function remove(member)
  local svc, sid, name = split_member(member)
  -- Redis may or may not have evicted the hash yet; either way the document is gone for readers.
  -- No revision, whatever the hash still holds: the event's contract (protocol/README.md) is null
  -- after an expiry, and reading it gave a revision now and then (TIME already in the due second
  -- while Redis, whose clock for expiry is the script's start, still showed the key).
  purge(svc, PREFIX .. 'n:' .. svc, PREFIX .. 'i:' .. svc, expiry, sid, name)
  publish_removed(svc, sid, name, nil, 'expired')
  local url = webhook_url(PREFIX .. 's:' .. svc, '', true)
  if url then
    outbox_append(outbox, url, 'document_removed', svc, sid, name, nil, nil, 'system', '')
  end
  removed = removed + 1
end

local function sweep_partition(now)
  if removed < limit then
    local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', now, 'LIMIT', 0, limit - removed)
    for _, member in ipairs(due) do remove(member) end
    if removed >= limit then saturated = 1 end
  end

  -- The audit: a document hash can vanish before its indexed expiry time (an operator's EXPIRE or
  -- PEXPIRE, or maxmemory eviction under a volatile-* policy), and the time-ordered pass above
  -- would then leave its index entries, and its subscribers, waiting until that time, possibly a
  -- year. A random sample of the index is checked on every call: an index no larger than the
  -- sample is checked whole every time, a larger one entry by entry within about size/sample calls,
  -- with no state to keep. (Documents without a TTL have no Redis expiry and cannot vanish this
  -- way; under an allkeys-* eviction policy any key, index included, can, which this server does
  -- not support.)
  for _, member in ipairs(redis.call('ZRANDMEMBER', expiry, audit)) do
    local svc, sid = split_member(member)
    if redis.call('EXISTS', doc_key(svc, sid)) == 0 then remove(member) end
  end

  -- The purge of deleted services: their keys here were renamed away when they were deleted (so a
  -- service created again under the same SID, the default one, starts empty), and at most `step`
  -- of their documents are removed per call, so that no call blocks Redis for long.
  while purged < step do
    local entry = redis.call('SRANDMEMBER', dead)
    if not entry then break end
    local svc, generation = string.sub(entry, 1, 34), string.sub(entry, 36)
    local base = PREFIX .. 'g:' .. svc .. ':' .. generation .. ':'
    local sids = redis.call('ZRANGE', base .. 'i', 0, step - purged - 1)
    for _, sid in ipairs(sids) do
      local f = read_doc(svc, sid)
      -- A document that expired meanwhile is the expiry pass's: it publishes its one 'removed'.
      if f.r then
        redis.call('DEL', doc_key(svc, sid), perm_key(svc, sid))
        redis.call('ZREM', expiry, expiry_member(svc, sid, f.n))
        publish_removed(svc, sid, f.n, f.r, 'service_deleted')
      end
      redis.call('ZREM', base .. 'i', sid)
      purged = purged + 1
    end
    if redis.call('EXISTS', base .. 'i') == 0 then
      redis.call('DEL', base .. 'n')
      redis.call('SREM', dead, entry)
    end
  end
  if purged >= step then saturated = 1 end
end

local count = #KEYS / 3
local now = now_seconds()
local first = tonumber(ARGV[2])
for i = 0, count - 1 do
  local part = (first + i - 1) % count + 1
  expiry, dead, outbox, PREFIX = KEYS[3 * part - 2], KEYS[3 * part - 1], KEYS[3 * part], ARGV[6 + part]
  sweep_partition(now)
end
return {removed, purged, saturated}
