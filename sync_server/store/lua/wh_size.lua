-- How many webhooks wait in a partition (for sync_webhook_backlog): the outbox's entries not yet
-- delivered (read and unacknowledged, or not read yet) and every service's backlog list.
-- KEYS[1]  the partition's outbox                sync:{T}:wh
-- KEYS[2]  the services with a backlog here      sync:{T}:wbs
-- ARGV[1]  the partition's key prefix            sync:{T}:
-- Returns  {waiting in the stream, waiting in backlogs}
-- The backlog lists (ARGV[1] .. 'wb:' .. S) are derived here from the members of KEYS[2]: they carry
-- the partition's tag, hence the slot of KEYS[1] (see the prelude).
local in_stream = 0
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local fields = {}
  for i = 1, #group, 2 do fields[group[i]] = group[i + 1] end
  if fields['name'] == OUTBOX_GROUP then
    local lag = fields['lag']
    -- Unknown after some trims and deletions (Redis says so with nil): count the whole stream then.
    if type(lag) ~= 'number' then lag = redis.call('XLEN', KEYS[1]) end
    in_stream = fields['pending'] + lag
  end
end
local in_backlogs = 0
for _, svc in ipairs(redis.call('SMEMBERS', KEYS[2])) do
  in_backlogs = in_backlogs + redis.call('LLEN', ARGV[1] .. 'wb:' .. svc)
end
return {in_stream, in_backlogs}
