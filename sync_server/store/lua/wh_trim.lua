-- Trims a partition's outbox behind its deliverer. An entry before all of: the oldest entry any
-- process still holds unacknowledged (the group's pending list), the first entry the group has not
-- handed out yet (after its last-delivered-id), and ARGV[1], was delivered or moved to a backlog
-- list: removing it loses nothing. So the stream stays short while webhooks flow, and an entry
-- nobody delivered is never trimmed here.
-- KEYS[1]  the partition's outbox                sync:{T}:wh
-- ARGV[1]  an entry id: the first one the deliverer has not read
-- Returns  the number of entries removed (exactly those: a tick's worth, cheap, and the stream holds
--          only what is on its way)

local function split(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- Whether stream id a ("ms-seq") comes before b.
local function id_before(a, b)
  local a_ms, a_seq = split(a)
  local b_ms, b_seq = split(b)
  if a_ms ~= b_ms then return a_ms < b_ms end
  return a_seq < b_seq
end

local floor = ARGV[1]
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  for i = 1, #group, 2 do
    if group[i] == 'name' and group[i + 1] ~= OUTBOX_GROUP then break end
    if group[i] == 'last-delivered-id' then
      local ms, seq = split(group[i + 1])
      local unread = int_text(ms) .. '-' .. int_text(seq + 1)
      if id_before(unread, floor) then floor = unread end
    end
  end
end
local summary = redis.call('XPENDING', KEYS[1], OUTBOX_GROUP)
if summary[1] > 0 and id_before(summary[2], floor) then floor = summary[2] end
return redis.call('XTRIM', KEYS[1], 'MINID', floor)
