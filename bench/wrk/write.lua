-- REST write load for wrk: POST Data=<1 KiB JSON> to /v1/Services/default/Documents/<name>.
--   wrk -t1 -c64 -d10s -s write.lua http://127.0.0.1:PORT -- MODE PREFIX COUNT AUTH BODYFILE THREADS [SERVICE]
-- MODE     'set'     unconditional writes, documents in rotation
--          'ifmatch' each write carries If-Match with the revision the last response returned; a
--                    document is never written by two connections at once, so a 412 is an error
-- PREFIX   document unique names are PREFIX followed by a 12-digit number (as redis-benchmark's
--          __rand_int__ makes them), 0 .. COUNT-1; COUNT 1 is the hot-document case
-- AUTH     the Basic credentials, base64
-- BODYFILE the form body (Data=..., already URL-encoded)
-- THREADS  wrk's -t (each thread owns every THREADS-th document)
-- SERVICE  the service's SID (or 'default', the default)
-- done() prints one line: WRK_JSON {...}

local threads = {}

function setup(thread)
  thread:set("thread_id", #threads) -- setup() runs in the main Lua state, before each thread's init()
  table.insert(threads, thread)
end

local function name_of(prefix, n)
  return string.format("%s%012d", prefix, n)
end

function init(args)
  mode, prefix, count, auth = args[1], args[2], tonumber(args[3]), args[4]
  local file = assert(io.open(args[5], "rb"))
  body = file:read("*a")
  file:close()
  headers = {
    ["Content-Type"] = "application/x-www-form-urlencoded",
    ["Authorization"] = "Basic " .. auth,
  }
  paths, order, revisions, ready = {}, {}, {}, {}
  local threads_total = tonumber(args[6] or "1")
  local documents = "/v1/Services/" .. (args[7] or "default") .. "/Documents/"
  for n = 0, count - 1 do
    if count == 1 or n % threads_total == thread_id then
      paths[n] = documents .. name_of(prefix, n)
      order[#order + 1] = n
      revisions[n] = "0"
      ready[#ready + 1] = n
    end
  end
  cursor, bad, starved = 0, 0, 0
  if mode == "ifmatch" then
    response = track_revision
  end
end

function request()
  if mode == "ifmatch" then
    local n = table.remove(ready, 1)
    if n ~= nil then
      headers["If-Match"] = revisions[n]
      return wrk.format("POST", paths[n], headers, body)
    end
    starved = starved + 1 -- every owned document is in flight: write one unconditionally
    headers["If-Match"] = nil
  end
  cursor = cursor % #order + 1
  return wrk.format("POST", paths[order[cursor]], headers, body)
end

function track_revision(status, _, response_body)
  local digits = string.match(response_body, '"unique_name":"' .. prefix .. '(%d+)"')
  local revision = string.match(response_body, '"revision":"(%x+)"')
  if status ~= 200 or digits == nil or revision == nil then
    bad = bad + 1 -- the document is lost from rotation; 'bad' must stay 0
    return
  end
  local n = tonumber(digits)
  revisions[n] = revision
  ready[#ready + 1] = n
end

function done(summary, latency, requests)
  local total_bad, total_starved = 0, 0
  for _, thread in ipairs(threads) do
    total_bad = total_bad + (thread:get("bad") or 0)
    total_starved = total_starved + (thread:get("starved") or 0)
  end
  local errors = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,'
      .. '"non_2xx":%d,"socket_errors":%d,"timeouts":%d,"bad":%d,"starved":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, errors.status,
    errors.connect + errors.read + errors.write, errors.timeout, total_bad, total_starved))
end
