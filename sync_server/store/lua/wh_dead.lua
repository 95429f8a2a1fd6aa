-- An operator's action on one dead letter (sync-server webhooks dead-letters): replay it (it leaves
-- the dead letters and is appended to the outbox as a new entry, keeping its idempotency token, and
-- is delivered like any other) or purge it.
-- KEYS[1]  the partition's dead letters          sync:{T}:wd
-- KEYS[2]  the partition's outbox                sync:{T}:wh
-- ARGV[1]  the dead letter, exactly as listed
-- ARGV[2]  'replay' | 'purge'
-- ARGV[3…] for 'replay': the new entry's field, value pairs
-- Returns  1 | 0: no such dead letter (replayed or purged meanwhile)
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
if ARGV[2] == 'replay' then redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3)) end
return 1
