-- Reads one page of a service's documents in creation order.
-- KEYS[1]  the service hash                 sync:{IS…}:svc
-- ARGV[1]  the service's key prefix         sync:{IS…}:
-- ARGV[2]  'after' for the documents created after the cursor, 'before' for those created before it
-- ARGV[3]  the cursor: a creation sequence number, or '' for the first page
-- ARGV[4]  the page size
-- Returns  {'ok', more, then per document: sid, n, d, r, c, u, x, b, q} | {'nosvc'}
--          more is 1 when at least one more live document lies beyond the page in that direction.
-- Documents are read in creation-sequence order from the 'docs' index, so a walk that follows the
-- cursor sees every document that existed for the whole walk exactly once. The work is
-- O(page size) plus the expired entries the sweeper has not removed yet, which are skipped.
local prefix, direction, cursor, size = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local index = prefix .. 'docs'
local out = {'ok', 0}
local found = 0
local bound = cursor == '' and (direction == 'after' and '-inf' or '+inf') or '(' .. cursor
while found <= size do
  local want = size + 1 - found
  local batch
  if direction == 'after' then
    batch = redis.call('ZRANGEBYSCORE', index, bound, '+inf', 'WITHSCORES', 'LIMIT', 0, want)
  else
    batch = redis.call('ZREVRANGEBYSCORE', index, bound, '-inf', 'WITHSCORES', 'LIMIT', 0, want)
  end
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    local sid = batch[i]
    bound = '(' .. batch[i + 1]
    local f = read_doc(prefix, sid)
    if f.r then
      found = found + 1
      if found > size then
        out[2] = 1
        break
      end
      local base = #out
      out[base + 1], out[base + 2], out[base + 3], out[base + 4], out[base + 5] = sid, f.n, f.d, f.r, f.c
      out[base + 6], out[base + 7], out[base + 8], out[base + 9] = f.u, f.x, f.b, batch[i + 1]
    end
  end
end
return out
