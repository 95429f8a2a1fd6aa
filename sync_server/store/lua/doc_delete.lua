-- Deletes one document and tells its subscribers.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the document's SID or unique name
-- ARGV[3]  '1' when ARGV[2] is a SID, '0' when it is a unique name
-- Returns  {'ok', sid, n, d, r, c, u, x, b} (the document as it was) | {'nosvc'} | {'nodoc'}
-- Publishes a 'removed' event (why = deleted) on the document's channel.
local prefix = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid = resolve(prefix, ARGV[2], ARGV[3])
if not sid then return {'nodoc'} end
local f = read_doc(prefix, sid)
purge(prefix, sid, f.n)
publish_removed(prefix, sid, f.n, f.r, 'deleted')
return doc_reply('ok', sid, f)
