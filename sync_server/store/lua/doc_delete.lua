-- Deletes one document and tells its subscribers.
-- KEYS, ARGV[1..7]  the document scripts' header (see the prelude)
-- ARGV[8]  the document's SID or unique name
-- ARGV[9]  '1' when ARGV[8] is a SID, '0' when it is a unique name
-- Returns  {'ok', sid, n, d, r, c, u, x, b} (the document as it was) | {'nosvc'} | {'nodoc'}
--          | {'forbidden'} | {'moved', p}
-- Publishes a 'removed' event (why = deleted) on the document's channel, and puts document_removed
-- into the webhook outbox (see the prelude).
local svc = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid, moved = resolve(svc, KEYS[2], KEYS[6], ARGV[8], ARGV[9], ARGV[4])
if moved then return {'moved', moved} end
if not allowed(KEYS[1], svc, sid, ARGV[5], MANAGE) then return {'forbidden'} end
if not sid then return {'nodoc'} end
local f = read_doc(svc, sid)
purge(svc, KEYS[2], KEYS[3], KEYS[4], sid, f.n)
publish_removed(svc, sid, f.n, f.r, 'deleted', ARGV[6], ARGV[7])
webhook('document_removed', svc, sid, f.n, f.r, nil)
return doc_reply('ok', sid, f)
