-- Moves a webhook from the outbox stream to its service's backlog in the partition: after a failed
-- delivery, or to wait behind one. Acknowledged in the same step, so it is in exactly one of the two
-- places whatever crashes, and the stream can be trimmed behind it.
-- KEYS[1]  the partition's lease                 sync:{T}:wl
-- KEYS[2]  the partition's outbox                sync:{T}:wh
-- KEYS[3]  the service's backlog here            sync:{T}:wb:S
-- KEYS[4]  the services with a backlog here      sync:{T}:wbs
-- ARGV[1]  the process (it must hold the lease)
-- ARGV[2]  the entry's id in the stream
-- ARGV[3]  the backlog item (webhooks/events.py encodes it)
-- ARGV[4]  the service SID
-- Returns  the backlog's length | -1: another process holds the lease (nothing done)
if not holds_lease(KEYS[1], ARGV[1]) then return -1 end
local length = redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('SADD', KEYS[4], ARGV[4])
redis.call('XACK', KEYS[2], OUTBOX_GROUP, ARGV[2])
return length
