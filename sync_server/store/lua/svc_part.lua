-- Writes or drops one partition's copy of a service (store.RedisStore keeps the 64 copies in step
-- with the canonical hash sync:{S}:svc).
-- KEYS[1]  the partition's copy of the service   sync:{T}:s:S
-- KEYS[2]  the service's listing index here      sync:{T}:i:S
-- KEYS[3]  the service's names hash here         sync:{T}:n:S
-- KEYS[4]  the partition's deleted services      sync:{T}:dead
-- KEYS[5]  for 'drop': where the index goes      sync:{T}:g:S:G:i
-- KEYS[6]  for 'drop': where the names hash goes sync:{T}:g:S:G:n
-- ARGV[1]  the partition's key prefix            sync:{T}:
-- ARGV[2]  the service SID
-- ARGV[3]  the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[4]  'put': create or update the copy | 'drop': delete the service here
-- ARGV[5]  for 'put': acl_enabled ('1' or '0'); for 'drop': the deletion's generation G
-- ARGV[6]  for 'put': the webhook URL ('' for none)
-- ARGV[7]  for 'put': webhooks_from_rest_enabled ('1' or '0')
-- Returns  1 | 0 ('drop' of a partition where the service did not exist)
-- Turning access control on publishes a 'revoked' event on the channel of each of the service's
-- documents of this partition, naming the identities that keep their read right, so every other
-- restricted subscriber is dropped before any later write reaches it. That work is O(documents +
-- permissions of the partition) in one step (a rare operator call; the permission keys are
-- derived from ARGV[1], the partition's own tag).
-- 'drop' makes the service gone here at once (every document script answers 'nosvc') and hands
-- its documents to the sweep's bounded purge (expire_sweep.lua).
local svc, op = ARGV[2], ARGV[4]
if op == 'put' then
  local was_enabled = redis.call('HGET', KEYS[1], 'acl_enabled') == '1'
  -- What the document scripts check within the slot: access control and the webhook (the prelude).
  redis.call('HSET', KEYS[1], 'acl_enabled', ARGV[5], 'wh', ARGV[6], 'whr', ARGV[7])
  if not was_enabled and ARGV[5] == '1' then
    for _, sid in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
      local readers = {}
      local perms = redis.call('HGETALL', perm_key(svc, sid))
      for i = 1, #perms, 2 do
        if string.sub(perms[i + 1], READ, READ) == '1' then readers[#readers + 1] = perms[i] end
      end
      publish_revoked(svc, sid, nil, readers)
    end
  end
  return 1
end
local existed = redis.call('DEL', KEYS[1])
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('RENAME', KEYS[2], KEYS[5])
  if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('RENAME', KEYS[3], KEYS[6]) end
  redis.call('SADD', KEYS[4], svc .. ':' .. ARGV[5])
else
  redis.call('DEL', KEYS[3])
end
return existed
