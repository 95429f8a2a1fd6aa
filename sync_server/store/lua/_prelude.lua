-- Shared helpers, prepended to every script of this folder when it is loaded (store/scripts.py).
--
-- Key layout (see store/keys.py, which owns every name): all keys of one service share the hash tag
-- {IS…}, and ARGV[1] of every script is that service's key prefix "sync:{IS…}:". Keys derived from the
-- prefix at run time therefore live in the same cluster slot as the declared KEYS[1].
--
-- Document hash fields: n unique name ('' when none), d data (compact JSON, opaque: never decoded
-- here, because cjson turns [] into {} and mangles big integers), r revision (integer), c created,
-- u updated, x expires (unix seconds, 0 = never), b created_by, q creation sequence number.
--
-- The principal: the document scripts (doc_create, doc_fetch, doc_write, doc_delete) take who is
-- asking as ARGV[2..4]: ARGV[2] the identity to check the document's permissions for ('' for a
-- system principal, which access control never restricts), ARGV[3] the identity that acts (written
-- into created_by and into events), ARGV[4] its connection (endpoint) id, '' for REST.

local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1])
end

local function service_of(prefix)
  return string.match(prefix, '{(.-)}')
end

local function doc_key(prefix, sid)
  return prefix .. 'doc:' .. sid
end

-- Returns the SID of a live document addressed by SID or unique name, or nil.
-- Redis hides a key whose TTL has passed even before it evicts it, so an expired document is
-- never found here, whatever the sweeper has or has not cleaned yet.
local function resolve(prefix, ident, by_sid)
  local sid = ident
  if by_sid ~= '1' then
    sid = redis.call('HGET', prefix .. 'names', ident)
    if not sid then return nil end
  end
  if redis.call('EXISTS', doc_key(prefix, sid)) == 0 then return nil end
  return sid
end

-- Member of the expiry index: the SID, then the unique name, so the sweeper can free the name even
-- after Redis has evicted the document hash itself.
local function expiry_member(sid, name)
  return sid .. ':' .. name
end

local function json_string_or_null(s)
  if s == nil or s == '' then return 'null' end
  return cjson.encode(s)
end

-- Removes every index entry of a document (the hash itself may already be gone).
local function purge(prefix, sid, name)
  redis.call('DEL', doc_key(prefix, sid), prefix .. 'perm:' .. sid)
  redis.call('ZREM', prefix .. 'docs', sid)
  redis.call('ZREM', prefix .. 'expiry', expiry_member(sid, name))
  if name ~= '' and redis.call('HGET', prefix .. 'names', name) == sid then
    redis.call('HDEL', prefix .. 'names', name)
  end
end

-- Rights are character positions in a permission's "rwm" flags.
local READ, WRITE, MANAGE = 1, 2, 3

-- Whether `identity` may exercise `right` on the document `sid` (nil: the name resolves to nothing).
-- A system principal ('') and any principal of a service without access control always may. With
-- access control on, a missing document is refused like a missing permission, so a client learns
-- nothing about documents it may not read.
local function allowed(svc_key, prefix, sid, identity, right)
  if identity == '' or redis.call('HGET', svc_key, 'acl_enabled') ~= '1' then return true end
  if not sid then return false end
  local flags = redis.call('HGET', prefix .. 'perm:' .. sid, identity)
  return flags and string.sub(flags, right, right) == '1'
end

-- Who wrote: the writer's identity and connection, appended to an event's header ('' = none).
local function origin(writer, endpoint)
  local text = ''
  if writer and writer ~= '' then text = ',"w":' .. cjson.encode(writer) end
  if endpoint and endpoint ~= '' then text = text .. ',"ep":' .. cjson.encode(endpoint) end
  return text
end

local function publish_removed(prefix, sid, name, revision, reason, writer, endpoint)
  local event = '{"e":"removed","s":"' .. service_of(prefix) .. '","sid":"' .. sid .. '","n":'
    .. json_string_or_null(name) .. ',"r":' .. (revision or 'null') .. ',"why":"' .. reason .. '"'
    .. origin(writer, endpoint) .. '}'
  redis.call('PUBLISH', prefix .. 'ch:' .. sid, event)
end

-- A control event: subscribers that are restricted by access control lose their subscription to
-- `sid` if they are `identity` (one identity's read right went away), or, with identity nil (access
-- control was just enabled), unless they are one of `readers`. Published on the document's own
-- channel, so every subscriber sees it before any write that follows the change.
local function publish_revoked(prefix, sid, identity, readers)
  local tail
  if identity then
    tail = ',"i":' .. cjson.encode(identity)
  else
    local quoted = {}
    for n, reader in ipairs(readers) do quoted[n] = cjson.encode(reader) end
    tail = ',"i":null,"keep":[' .. table.concat(quoted, ',') .. ']'
  end
  redis.call('PUBLISH', prefix .. 'ch:' .. sid,
    '{"e":"revoked","s":"' .. service_of(prefix) .. '","sid":"' .. sid .. '"' .. tail .. '}')
end

-- An 'updated' event is a JSON header line, a newline, then the data exactly as stored: readers
-- slice the data off without parsing it (cjson escapes newlines, so the header has none).
local function publish_updated(prefix, sid, f, writer, endpoint)
  local event = '{"e":"updated","s":"' .. service_of(prefix) .. '","sid":"' .. sid .. '","n":'
    .. json_string_or_null(f.n) .. ',"r":' .. f.r .. ',"c":' .. f.c .. ',"u":' .. f.u
    .. ',"x":' .. f.x .. ',"b":' .. cjson.encode(f.b) .. origin(writer, endpoint) .. '}\n' .. f.d
  redis.call('PUBLISH', prefix .. 'ch:' .. sid, event)
end

local DOC_FIELDS = {'n', 'd', 'r', 'c', 'u', 'x', 'b'}

-- The reply shape every document-returning script uses: sid followed by DOC_FIELDS in order.
local function doc_reply(status, sid, f)
  return {status, sid, f.n, f.d, f.r, f.c, f.u, f.x, f.b}
end

local function read_doc(prefix, sid)
  local v = redis.call('HMGET', doc_key(prefix, sid), unpack(DOC_FIELDS))
  return {n = v[1], d = v[2], r = tonumber(v[3]), c = v[4], u = v[5], x = tonumber(v[6]), b = v[7]}
end

-- Applies a TTL argument to a document: '' keeps the current expiry, '0' removes it, n > 0 sets
-- it to now + n. Keeps the expiry index in step with the key's own TTL.
local function apply_ttl(prefix, sid, name, ttl_arg, now, f)
  if ttl_arg == '' then return end
  local ttl = tonumber(ttl_arg)
  local key = doc_key(prefix, sid)
  local member = expiry_member(sid, name)
  if ttl == 0 then f.x = 0 else f.x = now + ttl end
  -- HSET first: out of memory, Redis refuses a script's first memory-growing write only while
  -- the script has written nothing; PERSIST or EXPIREAT first would let the whole change through.
  redis.call('HSET', key, 'x', f.x)
  if ttl == 0 then
    redis.call('PERSIST', key)
    redis.call('ZREM', prefix .. 'expiry', member)
  else
    redis.call('EXPIREAT', key, f.x)
    redis.call('ZADD', prefix .. 'expiry', f.x, member)
  end
end

