-- Deletes one document and tells its subscribers.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the identity access control restricts, '' for a system principal (see the prelude)
-- ARGV[3]  the identity that deletes (into the event)
-- ARGV[4]  its connection id, '' for REST (into the event)
-- ARGV[5]  the document's SID or unique name
-- ARGV[6]  '1' when ARGV[5] is a SID, '0' when it is a unique name
-- Returns  {'ok', sid, n, d, r, c, u, x, b} (the document as it was) | {'nosvc'} | {'nodoc'}
--          | {'forbidden'}
-- Publishes a 'removed' event (why = deleted) on the document's channel.
local prefix = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid = resolve(prefix, ARGV[5], ARGV[6])
if not allowed(KEYS[1], prefix, sid, ARGV[2], MANAGE) then return {'forbidden'} end
if not sid then return {'nodoc'} end
local f = read_doc(prefix, sid)
purge(prefix, sid, f.n)
publish_removed(prefix, sid, f.n, f.r, 'deleted', ARGV[3], ARGV[4])
return doc_reply('ok', sid, f)
