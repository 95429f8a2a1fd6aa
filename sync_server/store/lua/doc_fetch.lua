-- Reads one document.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  the document's SID or unique name
-- ARGV[3]  '1' when ARGV[2] is a SID, '0' when it is a unique name
-- Returns  {'ok', sid, n, d, r, c, u, x, b} | {'nosvc'} | {'nodoc'}
local prefix = ARGV[1]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid = resolve(prefix, ARGV[2], ARGV[3])
if not sid then return {'nodoc'} end
return doc_reply('ok', sid, read_doc(prefix, sid))
