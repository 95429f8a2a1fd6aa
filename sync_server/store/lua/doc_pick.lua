-- Reads listed documents by key: the page that doc_list's entries and the store's merge chose.
-- KEYS[i]  a document hash (sync:{T}:d:S:D); on a cluster all of one partition (one slot per call)
-- ARGV     none
-- Returns  per key, the DOC_FIELDS of the prelude in order (n, d, r, c, u, x, b), all false
--          for a document that is gone since it was listed (deleted, or expired: Redis hides a key
--          past its TTL before evicting it)
local out = {}
for i = 1, #KEYS do
  local v = redis.call('HMGET', KEYS[i], unpack(DOC_FIELDS))
  local base = #out
  for j = 1, 7 do
    if v[3] then out[base + j] = v[j] else out[base + j] = false end
  end
end
return out
