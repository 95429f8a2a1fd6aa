-- Reads one document.
-- KEYS, ARGV[1..7]  the document scripts' header (see the prelude)
-- ARGV[8]  the document's SID or unique name
-- ARGV[9]  '1' when ARGV[8] is a SID, '0' when it is a unique name
-- Returns  {'ok', sid, n, d, r, c, u, x, b} | {'nosvc'} | {'nodoc'} | {'forbidden'} | {'moved', p}
local svc = ARGV[2]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid, moved = resolve(svc, KEYS[2], KEYS[6], ARGV[8], ARGV[9], ARGV[4])
if moved then return {'moved', moved} end
if not allowed(KEYS[1], svc, sid, ARGV[5], READ) then return {'forbidden'} end
if not sid then return {'nodoc'} end
return doc_reply('ok', sid, read_doc(svc, sid))
