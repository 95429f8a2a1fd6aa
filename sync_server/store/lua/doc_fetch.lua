-- Reads one document.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the identity access control restricts, '' for a system principal (see the prelude)
-- ARGV[3]  the reader's identity (unused)
-- ARGV[4]  the reader's connection id (unused)
-- ARGV[5]  the document's SID or unique name
-- ARGV[6]  '1' when ARGV[5] is a SID, '0' when it is a unique name
-- Returns  {'ok', sid, n, d, r, c, u, x, b} | {'nosvc'} | {'nodoc'} | {'forbidden'}
local prefix = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid = resolve(prefix, ARGV[5], ARGV[6])
if not allowed(KEYS[1], prefix, sid, ARGV[2], READ) then return {'forbidden'} end
if not sid then return {'nodoc'} end
return doc_reply('ok', sid, read_doc(prefix, sid))
