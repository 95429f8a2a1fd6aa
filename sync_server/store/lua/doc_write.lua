-- Writes a document: overwrite or shallow merge of its data, and/or a new TTL, with an optional
-- revision check. The permission check, the revision check, the bump, the write and the PUBLISH are
-- one atomic step, so events leave in revision order, no event is ever sent for a write that did
-- not happen, and a permission change cannot race a write through.
-- KEYS, ARGV[1..7]  the document scripts' header (see the prelude)
-- ARGV[8]  the document's SID or unique name
-- ARGV[9]  '1' when ARGV[8] is a SID, '0' when it is a unique name
-- ARGV[10] data: a compact JSON object, or '' to keep the current data
-- ARGV[11] 'set' to replace the data, 'merge' to merge ARGV[10]'s top-level members into it
-- ARGV[12] ttl: '' keeps the current expiry, '0' removes it, n > 0 expires n seconds from now
-- ARGV[13] expected revision (lowercase hex), '' for an unconditional write
-- ARGV[14] the largest data allowed, in bytes (checked here only for merges)
-- Returns  {'ok', sid, n, d, r, c, u, x, b} | {'nosvc'} | {'nodoc'} | {'forbidden'} | {'moved', p}
--          | {'rev', current revision} | {'big', merged size}
-- Publishes an 'updated' event with the new document on the document's channel, except for a
-- TTL-only write (no data): that changes neither the data nor the revision, so it is no update a
-- subscriber would see (the Twilio SDK keeps its own revision after setTtl, and a bump would make
-- the writer take its own change for a remote one). The same holds for the webhook: document_updated
-- goes into the outbox (see the prelude) with the event, for a change of the data only.

-- Index of the closing quote of the JSON string that opens at i.
local function string_end(s, i)
  local j = i + 1
  while true do
    j = string.find(s, '["\\]', j)
    if string.byte(s, j) == 92 then j = j + 2 else return j end
  end
end

-- Index of the last character of the JSON value that starts at i.
local function value_end(s, i)
  local c = string.byte(s, i)
  if c == 34 then return string_end(s, i) end
  if c ~= 123 and c ~= 91 then
    local j = string.find(s, '[,}%]%s]', i)
    return (j or #s + 1) - 1
  end
  local depth, j = 1, i
  while depth > 0 do
    j = string.find(s, '["{}%[%]]', j + 1)
    local b = string.byte(s, j)
    if b == 34 then j = string_end(s, j)
    elseif b == 123 or b == 91 then depth = depth + 1
    else depth = depth - 1 end
  end
  return j
end

-- The top-level members of a JSON object, as exact text: ordered keys and key -> value.
-- Keys compare as text, which is sound because the caller stores and sends canonical compact JSON.
local function split_object(s)
  local keys, values = {}, {}
  local i = 2
  while true do
    i = string.find(s, '[^%s,]', i)
    if not i or string.byte(s, i) == 125 then return keys, values end
    local key_end = string_end(s, i)
    local key = string.sub(s, i, key_end)
    local v = string.find(s, '[^%s:]', key_end + 1)
    local v_end = value_end(s, v)
    if values[key] == nil then keys[#keys + 1] = key end
    values[key] = string.sub(s, v, v_end)
    i = v_end + 1
  end
end

local function merge_objects(base, patch)
  local keys, values = split_object(base)
  local patch_keys, patch_values = split_object(patch)
  for _, k in ipairs(patch_keys) do
    if values[k] == nil then keys[#keys + 1] = k end
    values[k] = patch_values[k]
  end
  local parts = {}
  for n, k in ipairs(keys) do parts[n] = k .. ':' .. values[k] end
  return '{' .. table.concat(parts, ',') .. '}'
end

local svc, data, mode, ttl, if_match = ARGV[2], ARGV[10], ARGV[11], ARGV[12], ARGV[13]
if redis.call('EXISTS', KEYS[1]) == 0 then return {'nosvc'} end
local sid, moved = resolve(svc, KEYS[2], KEYS[6], ARGV[8], ARGV[9], ARGV[4])
if moved then return {'moved', moved} end
if not allowed(KEYS[1], svc, sid, ARGV[5], WRITE) then return {'forbidden'} end
if not sid then return {'nodoc'} end
local key = doc_key(svc, sid)
local f = read_doc(svc, sid)
if if_match ~= '' and if_match ~= string.format('%x', f.r) then
  return {'rev', string.format('%x', f.r)}
end
local now = now_seconds()
if data == '' then
  apply_ttl(svc, KEYS[4], sid, f.n, ttl, now, f)
  return doc_reply('ok', sid, f)
end
if mode == 'merge' then
  data = merge_objects(f.d, data)
  if #data > tonumber(ARGV[14]) then return {'big', #data} end
end
f.d = data
f.r = f.r + 1
f.u = now
redis.call('HSET', key, 'd', f.d, 'r', f.r, 'u', now)
apply_ttl(svc, KEYS[4], sid, f.n, ttl, now, f)
publish_updated(svc, sid, f, ARGV[6], ARGV[7])
webhook('document_updated', svc, sid, f.n, f.r, f.d)
return doc_reply('ok', sid, f)
