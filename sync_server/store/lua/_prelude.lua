-- Shared helpers, prepended to every script of this folder when it is loaded (store/scripts.py).
--
-- Key layout (see store/keys.py, which owns every name): a service's documents are spread over 64
-- partitions, each with its own hash tag {T}; every script runs in ONE partition, and every key it
-- touches carries that partition's tag, so on a Redis Cluster a script touches a single slot.
--
-- The document scripts (doc_create, doc_fetch, doc_write, doc_delete, perm) share one header:
-- KEYS[1]  the partition's copy of the service   sync:{T}:s:S   (exists while the service does)
-- KEYS[2]  the service's names hash here         sync:{T}:n:S
-- KEYS[3]  the service's listing index here      sync:{T}:i:S
-- KEYS[4]  the partition's expiry index          sync:{T}:x
-- KEYS[5]  the partition's last creation score   sync:{T}:q
-- KEYS[6]  the partition's alias hash            sync:{T}:alias
-- KEYS[7]  the partition's webhook outbox        sync:{T}:wh      (a stream)
-- KEYS[8]  the document hash                     sync:{T}:d:S:D   (by SID only)
-- KEYS[9]  the document's permissions            sync:{T}:p:S:D   (by SID only)
-- ARGV[1]  the partition's key prefix            sync:{T}:
-- ARGV[2]  the service SID
-- ARGV[3]  the publish command: PUBLISH, or SPUBLISH on a cluster
-- ARGV[4]  '1' to answer {'moved', partition} for a name that an alias sends elsewhere, '0' not to
-- ARGV[5]  the identity access control restricts, '' for a system principal (never restricted)
-- ARGV[6]  the identity that acts (written into created_by and into events)
-- ARGV[7]  its connection (endpoint) id, '' for REST
-- The one exception to "every key in KEYS": addressed by unique name, the document's SID is only
-- known once the names hash is read, so its hash and permission keys are derived here from
-- ARGV[1] (the same tag, hence the same slot as KEYS[1]); by SID they are KEYS[8] and KEYS[9],
-- which are the very same names.
--
-- Document hash fields: n unique name ('' when none), d data (compact JSON, opaque: never decoded
-- here, because cjson turns [] into {} and mangles big integers), r revision (integer), c created,
-- u updated, x expires (unix seconds, 0 = never), b created_by, q creation score (µs, see below).

local PREFIX, PUBLISH = ARGV[1], ARGV[3]

local function now_seconds()
  local t = redis.call('TIME')
  return tonumber(t[1])
end

-- Numbers above 1e14 must be written with %d: Lua turns a number into text with %.14g.
local function int_text(n)
  return string.format('%d', n)
end

local function doc_key(svc, sid)
  return PREFIX .. 'd:' .. svc .. ':' .. sid
end

local function perm_key(svc, sid)
  return PREFIX .. 'p:' .. svc .. ':' .. sid
end

local function channel(sid)
  return PREFIX .. 'c:' .. sid
end

-- Member of the expiry index: service, SID, unique name, so the sweeper knows the document's keys
-- and can free the name even after Redis has evicted the document hash itself.
local function expiry_member(svc, sid, name)
  return svc .. ':' .. sid .. ':' .. name
end

-- SIDs are 34 characters: "IS…:ET…:name".
local function split_member(member)
  return string.sub(member, 1, 34), string.sub(member, 36, 69), string.sub(member, 71)
end

-- Resolves a document addressed by SID or unique name in this partition.
-- Returns sid (nil when no live document) and, for a name an alias sends elsewhere, the partition.
-- Redis hides a key whose TTL has passed even before it evicts it, so an expired document is
-- never found here, whatever the sweeper has or has not cleaned yet.
local function resolve(svc, names, aliases, ident, by_sid, follow)
  local sid = ident
  if by_sid ~= '1' then
    sid = redis.call('HGET', names, ident)
    if not sid then
      if follow == '1' then
        local elsewhere = redis.call('HGET', aliases, svc .. ':' .. ident)
        if elsewhere then return nil, tonumber(elsewhere) end
      end
      return nil
    end
  end
  if redis.call('EXISTS', doc_key(svc, sid)) == 0 then return nil end
  return sid
end

local function json_string_or_null(s)
  if s == nil or s == '' then return 'null' end
  return cjson.encode(s)
end

-- Removes every index entry of a document (the hash itself may already be gone).
local function purge(svc, names, index, expiry, sid, name)
  redis.call('DEL', doc_key(svc, sid), perm_key(svc, sid))
  redis.call('ZREM', index, sid)
  redis.call('ZREM', expiry, expiry_member(svc, sid, name))
  if name ~= '' and redis.call('HGET', names, name) == sid then
    redis.call('HDEL', names, name)
  end
end

-- Rights are character positions in a permission's "rwm" flags.
local READ, WRITE, MANAGE = 1, 2, 3

-- Whether `identity` may exercise `right` on the document `sid` (nil: the name resolves to nothing).
-- A system principal ('') and any principal of a service without access control always may. With
-- access control on, a missing document is refused like a missing permission, so a client learns
-- nothing about documents it may not read.
local function allowed(svc_copy, svc, sid, identity, right)
  if identity == '' or redis.call('HGET', svc_copy, 'acl_enabled') ~= '1' then return true end
  if not sid then return false end
  local flags = redis.call('HGET', perm_key(svc, sid), identity)
  return flags and string.sub(flags, right, right) == '1'
end

-- Who wrote: the writer's identity and connection, appended to an event's header ('' = none).
local function origin(writer, endpoint)
  local text = ''
  if writer and writer ~= '' then text = ',"w":' .. cjson.encode(writer) end
  if endpoint and endpoint ~= '' then text = text .. ',"ep":' .. cjson.encode(endpoint) end
  return text
end

local function publish_removed(svc, sid, name, revision, reason, writer, endpoint)
  local event = '{"e":"removed","s":"' .. svc .. '","sid":"' .. sid .. '","n":'
    .. json_string_or_null(name) .. ',"r":' .. (revision or 'null') .. ',"why":"' .. reason .. '"'
    .. origin(writer, endpoint) .. '}'
  redis.call(PUBLISH, channel(sid), event)
end

-- A control event: subscribers that are restricted by access control lose their subscription to
-- `sid` if they are `identity` (one identity's read right went away), or, with identity nil (access
-- control was just enabled), unless they are one of `readers`. Published on the document's own
-- channel, so every subscriber sees it before any write that follows the change.
local function publish_revoked(svc, sid, identity, readers)
  local tail
  if identity then
    tail = ',"i":' .. cjson.encode(identity)
  else
    local quoted = {}
    for n, reader in ipairs(readers) do quoted[n] = cjson.encode(reader) end
    tail = ',"i":null,"keep":[' .. table.concat(quoted, ',') .. ']'
  end
  redis.call(PUBLISH, channel(sid),
    '{"e":"revoked","s":"' .. svc .. '","sid":"' .. sid .. '"' .. tail .. '}')
end

-- An 'updated' event is a JSON header line, a newline, then the data exactly as stored: readers
-- slice the data off without parsing it (cjson escapes newlines, so the header has none).
local function publish_updated(svc, sid, f, writer, endpoint)
  local event = '{"e":"updated","s":"' .. svc .. '","sid":"' .. sid .. '","n":'
    .. json_string_or_null(f.n) .. ',"r":' .. f.r .. ',"c":' .. f.c .. ',"u":' .. f.u
    .. ',"x":' .. f.x .. ',"b":' .. cjson.encode(f.b) .. origin(writer, endpoint) .. '}\n' .. f.d
  redis.call(PUBLISH, channel(sid), event)
end

local DOC_FIELDS = {'n', 'd', 'r', 'c', 'u', 'x', 'b'}

-- The reply shape every document-returning script uses: sid followed by DOC_FIELDS in order.
local function doc_reply(status, sid, f)
  return {status, sid, f.n, f.d, f.r, f.c, f.u, f.x, f.b}
end

local function read_doc(svc, sid)
  local v = redis.call('HMGET', doc_key(svc, sid), unpack(DOC_FIELDS))
  return {n = v[1], d = v[2], r = tonumber(v[3]), c = v[4], u = v[5], x = tonumber(v[6]), b = v[7]}
end

-- Applies a TTL argument to a document: '' keeps the current expiry, '0' removes it, n > 0 sets
-- it to now + n. Keeps the expiry index in step with the key's own TTL.
local function apply_ttl(svc, expiry, sid, name, ttl_arg, now, f)
  if ttl_arg == '' then return end
  local ttl = tonumber(ttl_arg)
  local key = doc_key(svc, sid)
  local member = expiry_member(svc, sid, name)
  if ttl == 0 then f.x = 0 else f.x = now + ttl end
  -- HSET first: out of memory, Redis refuses a script's first memory-growing write only while
  -- the script has written nothing; PERSIST or EXPIREAT first would let the whole change through.
  redis.call('HSET', key, 'x', f.x)
  if ttl == 0 then
    redis.call('PERSIST', key)
    redis.call('ZREM', expiry, member)
  else
    redis.call('EXPIREAT', key, f.x)
    redis.call('ZADD', expiry, f.x, member)
  end
end

-- Creation scores: microseconds of the server clock, strictly increasing within the partition
-- even if the clock steps back (the partition's last score is kept in `last_key`). Below 2^53, so
-- exact as a double and as a sorted-set score.
local function next_score(last_key)
  local t = redis.call('TIME')
  local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', last_key) or '0')
  if score <= last then score = last + 1 end
  redis.call('SET', last_key, int_text(score))
  return score
end

-- The webhook outbox. A service's partition copy (KEYS[1] of the document scripts) holds its webhook:
-- 'wh' the URL ('' or absent: none), 'whr' '1' when changes made through REST are sent too. A change
-- that is to be sent appends one entry to the partition's stream in the very script that makes the
-- change, so no crash can separate the two; the server processes deliver the entries through the
-- consumer group OUTBOX_GROUP (webhooks/). Entry fields: e event type, s service, sid document,
-- n unique name ('' none), r revision ('' unknown), d data (not on document_removed), w identity,
-- ep endpoint ('' for REST and the server's own changes), u the URL.
local OUTBOX_GROUP = 'webhooks'
-- The bound on a partition's stream, for when no process delivers at all: reaching it, the oldest
-- tenth is trimmed and a {lost = n} entry appended in its place, which the deliverer counts and logs
-- (sync_webhook_deliveries_total{outcome="dropped"}). Delivering processes keep streams far below
-- it: delivered entries are trimmed behind them (wh_trim.lua), failing ones move to a backlog list.
local OUTBOX_MAX, OUTBOX_TRIM_TO = 100000, 90000

-- The URL a change of the service made through `endpoint` is to be sent to, or nil. A service
-- without a webhook pays one HGET. `always`: sent whoever made the change (the expiry sweep).
local function webhook_url(svc_copy, endpoint, always)
  local url = redis.call('HGET', svc_copy, 'wh')
  if not url or url == '' then return nil end
  if endpoint == '' and not always and redis.call('HGET', svc_copy, 'whr') ~= '1' then return nil end
  return url
end

local function outbox_append(outbox, url, event_type, svc, sid, name, revision, data, writer, endpoint)
  if redis.call('XLEN', outbox) >= OUTBOX_MAX then
    local lost = redis.call('XTRIM', outbox, 'MAXLEN', OUTBOX_TRIM_TO)
    redis.call('XADD', outbox, '*', 'lost', lost)
  end
  local revision_text = ''
  if revision then revision_text = int_text(revision) end
  if data then
    redis.call('XADD', outbox, '*', 'e', event_type, 's', svc, 'sid', sid, 'n', name or '',
      'r', revision_text, 'w', writer, 'ep', endpoint or '', 'u', url, 'd', data)
  else
    redis.call('XADD', outbox, '*', 'e', event_type, 's', svc, 'sid', sid, 'n', name or '',
      'r', revision_text, 'w', writer, 'ep', endpoint or '', 'u', url)
  end
end

-- Appends the webhook of a change made by a document script (KEYS and ARGV[6], ARGV[7] of the header).
local function webhook(event_type, svc, sid, name, revision, data)
  local url = webhook_url(KEYS[1], ARGV[7])
  if url then outbox_append(KEYS[7], url, event_type, svc, sid, name, revision, data, ARGV[6], ARGV[7]) end
end

-- Webhook lease: whether `consumer` holds the partition's lease (KEYS[1] of the wh_* scripts).
local function holds_lease(lease, consumer)
  return redis.call('GET', lease) == consumer
end
