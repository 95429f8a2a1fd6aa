-- Removes the documents of one service whose expiry time has passed, and tells their subscribers.
-- Every server process runs this a few times a second; being one atomic script that publishes only
-- for the index entries it removed itself, each expiry yields exactly one 'removed' event however
-- many processes sweep.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the most documents to remove in one call
-- Returns  the number of documents removed.
local prefix, limit = ARGV[1], tonumber(ARGV[2])
local due = redis.call('ZRANGEBYSCORE', prefix .. 'expiry', '-inf', now_seconds(), 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  -- SIDs are 34 characters; the unique name follows the ':' after them.
  local sid, name = string.sub(member, 1, 34), string.sub(member, 36)
  -- Redis may or may not have evicted the hash yet; either way the document is gone for readers.
  local revision = redis.call('HGET', doc_key(prefix, sid), 'r')
  purge(prefix, sid, name)
  publish_removed(prefix, sid, name, revision, 'expired')
end
return #due
