-- Removes the documents of one service whose expiry has passed, and tells their subscribers.
-- Every server process runs this a few times a second; being one atomic script that publishes only
-- for the index entries it removed itself, each expiry yields exactly one 'removed' event however
-- many processes sweep.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the most due documents to remove in one call
-- ARGV[3]  how many entries of the expiry index to audit in one call (see below)
-- Returns  the number of documents removed.
local prefix, limit, audit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
-- A deleted service's documents were published by svc_delete; there is nothing left to sweep.
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local index = prefix .. 'expiry'
local removed = 0

local function remove(member)
  -- SIDs are 34 characters; the unique name follows the ':' after them.
  local sid, name = string.sub(member, 1, 34), string.sub(member, 36)
  -- Redis may or may not have evicted the hash yet; either way the document is gone for readers.
  local revision = redis.call('HGET', doc_key(prefix, sid), 'r')
  purge(prefix, sid, name)
  publish_removed(prefix, sid, name, revision, 'expired')
  removed = removed + 1
end

for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now_seconds(), 'LIMIT', 0, limit)) do
  remove(member)
end

-- The audit: a document hash can vanish before its indexed expiry time (an operator's EXPIRE or
-- PEXPIRE, or maxmemory eviction under a volatile-* policy), and the time-ordered pass above would
-- then leave its index entries, and its subscribers, waiting until that time, possibly a year.
-- A random sample of the index is checked on every call: an index no larger than the sample is
-- checked whole every time, a larger one entry by entry within about size/sample calls, with no
-- state to keep. (Documents without a TTL have no Redis expiry and cannot vanish this way; under
-- an allkeys-* eviction policy any key, index included, can, which this server does not support.)
for _, member in ipairs(redis.call('ZRANDMEMBER', index, audit)) do
  if redis.call('EXISTS', doc_key(prefix, string.sub(member, 1, 34))) == 0 then remove(member) end
end
return removed
