-- Finds the next live documents of one service in one or more partitions, in creation order, for
-- the store's merge over all partitions (RedisStore.list_documents). On a cluster the store passes
-- one partition per call (one slot); on standalone Redis all of them in one call.
-- KEYS[2i-1]  partition i's copy of the service   sync:{T}:s:S
-- KEYS[2i]    the service's listing index there   sync:{T}:i:S
-- ARGV[1]  unused ('')
-- ARGV[2]  the service SID
-- ARGV[3]  'after' for the documents created after the bound, 'before' for those created before it
-- ARGV[3i+1], ARGV[3i+2], ARGV[3i+3]  partition i's key prefix (sync:{T}:), its bound (a score,
--          '(' and a score to exclude it, or '' for the start) and how many to return at most
-- Returns  {'ok', then per partition: count, then per document: sid, score} | {'nosvc'}
-- Index entries only: a page of 50 looks at ~5 entries in each of 64 partitions, and the store then
-- reads the documents of the page alone (doc_pick.lua), 50 rather than all 320.
-- Entries whose document hash is gone (expired, not swept yet) are skipped; the document keys are
-- derived from the partition's prefix (its own tag: see the prelude). The work is O(count) plus
-- the skipped entries, per partition.
local svc, direction = ARGV[2], ARGV[3]
local out = {'ok'}
for part = 1, #KEYS / 2 do
  local copy, index = KEYS[2 * part - 1], KEYS[2 * part]
  local prefix, bound, count = ARGV[3 * part + 1], ARGV[3 * part + 2], tonumber(ARGV[3 * part + 3])
  if redis.call('EXISTS', copy) == 0 then return {'nosvc'} end
  if bound == '' then bound = direction == 'after' and '-inf' or '+inf' end
  local at = #out + 1
  out[at] = 0
  local found = 0
  while found < count do
    local batch
    if direction == 'after' then
      batch = redis.call('ZRANGEBYSCORE', index, bound, '+inf', 'WITHSCORES', 'LIMIT', 0, count - found)
    else
      batch = redis.call('ZREVRANGEBYSCORE', index, bound, '-inf', 'WITHSCORES', 'LIMIT', 0, count - found)
    end
    if #batch == 0 then break end
    for i = 1, #batch, 2 do
      -- Scores are whole numbers below 2^53: tonumber and %d are exact.
      local score = int_text(tonumber(batch[i + 1]))
      bound = '(' .. score
      -- Live: the hash has its revision (what doc_fetch and read_doc rely on as well).
      if redis.call('HEXISTS', prefix .. 'd:' .. svc .. ':' .. batch[i], 'r') == 1 then
        found = found + 1
        local base = #out
        out[base + 1], out[base + 2] = batch[i], score
      end
    end
  end
  out[at] = found
end
return out
