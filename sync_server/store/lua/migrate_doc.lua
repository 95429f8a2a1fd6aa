-- Writes one document migrated from the first layout into its partition (sync-server migrate).
-- KEYS, ARGV[1..3]  the document scripts' header (see the prelude; KEYS[8], KEYS[9] are given)
-- ARGV[4]  the document's SID (kept: its partition is the one its SID names)
-- ARGV[5..11]  its fields n, d, r, c, u, x, b as the first layout stored them
-- ARGV[12] its remaining time to live in milliseconds (PTTL), or -1 for none
-- ARGV[13] its creation score (from its creation date and sequence, see store/migrate.py)
-- ARGV[14…] its permissions: identity, flags pairs
-- Returns  1 when written | 0 when the document is in this layout already (a re-run: left as it is)
-- No event and no webhook: nobody subscribes during a migration (the server refuses to start before
-- it), and the document changes in nothing.
local svc, sid, name, pttl, score = ARGV[2], ARGV[4], ARGV[5], tonumber(ARGV[12]), ARGV[13]
if redis.call('EXISTS', KEYS[8]) == 1 then return 0 end
local expires = ARGV[10]
if pttl <= 0 then expires = '0' end
redis.call('HSET', KEYS[8], 'n', name, 'd', ARGV[6], 'r', ARGV[7], 'c', ARGV[8], 'u', ARGV[9],
  'x', expires, 'b', ARGV[11], 'q', score)
if pttl > 0 then
  redis.call('PEXPIRE', KEYS[8], pttl)
  redis.call('ZADD', KEYS[4], expires, expiry_member(svc, sid, name))
end
if #ARGV >= 14 then redis.call('HSET', KEYS[9], unpack(ARGV, 14)) end
if name ~= '' then redis.call('HSET', KEYS[2], name, sid) end
redis.call('ZADD', KEYS[3], score, sid)
if tonumber(score) > tonumber(redis.call('GET', KEYS[5]) or '0') then redis.call('SET', KEYS[5], score) end
return 1
