-- Takes the oldest webhook off a service's backlog in the partition: delivered, or given up on (then it
-- joins the partition's dead letters in the same step).
-- KEYS[1]  the partition's lease                 sync:{T}:wl
-- KEYS[2]  the service's backlog here            sync:{T}:wb:S
-- KEYS[3]  the services with a backlog here      sync:{T}:wbs
-- KEYS[4]  the partition's dead letters          sync:{T}:wd
-- ARGV[1]  the process (it must hold the lease)
-- ARGV[2]  the backlog's head, as it was read
-- ARGV[3]  the service SID
-- ARGV[4]  the dead letter to append, or '' when the webhook was delivered
-- Returns  the backlog's remaining length | -1: another process holds the lease | -2: the head is not
--          ARGV[2] (nothing done)
if not holds_lease(KEYS[1], ARGV[1]) then return -1 end
if redis.call('LINDEX', KEYS[2], 0) ~= ARGV[2] then return -2 end
redis.call('LPOP', KEYS[2])
if ARGV[4] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[4]) end
local left = redis.call('LLEN', KEYS[2])
if left == 0 then redis.call('SREM', KEYS[3], ARGV[3]) end
return left
