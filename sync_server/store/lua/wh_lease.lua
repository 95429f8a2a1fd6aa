-- Takes, renews or gives back a partition's webhook lease. The lease names the one server process
-- that delivers the partition's webhooks (webhooks/deliverer.py): one deliverer per partition keeps
-- the webhooks of each document in revision order, which a consumer group alone would not (it hands
-- entries to any consumer).
-- KEYS[1]  the partition's lease                 sync:{T}:wl
-- ARGV[1]  the process (its consumer name in the outbox's group)
-- ARGV[2]  'hold': take the lease if free, renew it if held | 'release': give it back
-- ARGV[3]  for 'hold': the lease's time to live, in milliseconds
-- Returns  'hold': 2 taken now, 1 renewed, 0 held by another process | 'release': 1, or 0 if not held
local lease, me = KEYS[1], ARGV[1]
if ARGV[2] == 'release' then
  if not holds_lease(lease, me) then return 0 end
  redis.call('DEL', lease)
  return 1
end
if holds_lease(lease, me) then
  redis.call('PEXPIRE', lease, ARGV[3])
  return 1
end
if redis.call('SET', lease, me, 'NX', 'PX', ARGV[3]) then return 2 end
return 0
