-- wrk request script for the coupon service: every request gets its own user,
-- and its own code where the endpoint needs one.
--
-- wrk -t2 -c64 -d10s -s bench/wrk/requests.lua URL -- MODE TOKEN BOOK PAIRS TAG MARKERS
--   MODE     healthz | assign | assign_code | lock | redeem | list
--   TOKEN    bearer token (coupons:write or admin)
--   BOOK     book id (assign); several, comma-separated, are taken in turn.
--            lock and redeem send it as the code's couponBookId ("-": none)
--   PAIRS    file of "code user" lines (assign_code, lock, redeem, list); "-" for none
--   TAG      prefix of the user ids made up for random assigns (unique per run)
--   MARKERS  directory where thread N writes "sent-N" once it has sent its share
--            of PAIRS and "done-N" once every answer is in, so the runner can end
--            wrk early ("-" for none)
--
-- Thread N of T takes the lines N, N+T, N+2T, ... of PAIRS. assign_code, lock
-- and redeem use each line once: when a thread's share is used up it stops
-- (thread:stop) and, while its last answers arrive, sends /healthz, which is
-- not counted. list reuses lines (it changes nothing).
-- done() prints one line "BENCH-JSON {...}" with the counts by status and the
-- latency percentiles of the whole run.

local threads = {}
local next_id = 0

function setup(thread)
  thread:set("id", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

local function split(s)
  local out = {}
  for word in string.gmatch(s, "%S+") do out[#out + 1] = word end
  return out
end

local mode, tag, markers
local books = {}
local codes, users = {}, {}
local i, n_pairs = 0, 0
local once = {assign_code = true, lock = true, redeem = true}
local filler
local json_headers

function init(args)
  mode, tag, markers = args[1], args[5], args[6]
  for id_ in string.gmatch(args[3], "[^,]+") do books[#books + 1] = id_ end
  -- wrk.format uses the headers it is given instead of wrk.headers (Host aside)
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  json_headers = {["Authorization"] = "Bearer " .. args[2],
                  ["Content-Type"] = "application/json"}
  statuses = {}
  counted = 0
  share = -1
  local threads_total = tonumber(os.getenv("BENCH_WRK_THREADS") or "1")
  if args[4] ~= "-" then
    local line_no = 0
    for line in io.lines(args[4]) do
      if line_no % threads_total == id then
        local f = split(line)
        n_pairs = n_pairs + 1
        codes[n_pairs], users[n_pairs] = f[1], f[2]
      end
      line_no = line_no + 1
    end
    if once[mode] then share = n_pairs end
  end
  filler = wrk.format("GET", "/healthz")
  -- wrk calls request() once on the first thread before the run, to check the
  -- script, and never sends that request: it must not use up a pair.
  checking = (id == 0)
end

local function body_user(user)
  return '{"userId":"' .. user .. '"}'
end

-- A checkout that kept the assign's answer names the code's book: the
-- service then need not look the code up first.
local function body_user_book(user)
  if books[1] == nil or books[1] == "-" then return body_user(user) end
  return '{"userId":"' .. user .. '","couponBookId":"' .. books[1] .. '"}'
end

function request()
  if checking then
    checking = false
    return filler
  end
  if mode == "healthz" then
    return wrk.format("GET", "/healthz")
  end
  if mode == "assign" then
    i = i + 1
    local book = books[(i % #books) + 1]
    return wrk.format("POST", "/coupons/assign", json_headers,
      '{"couponBookId":"' .. book .. '","userId":"' .. tag .. id .. "-" .. i .. '"}')
  end
  if share >= 0 and i >= share then
    if not sent_all then  -- an answer that never comes (socket error) must not hang us
      sent_all = true
      mark("sent")
    end
    return filler
  end
  i = i + 1
  local k = ((i - 1) % n_pairs) + 1
  local code, user = codes[k], users[k]
  if mode == "list" then
    return wrk.format("GET", "/users/" .. user .. "/coupons")
  elseif mode == "assign_code" then
    return wrk.format("POST", "/coupons/assign/" .. code, json_headers, body_user(user))
  elseif mode == "lock" then
    return wrk.format("POST", "/coupons/lock/" .. code, json_headers, body_user_book(user))
  elseif mode == "redeem" then
    return wrk.format("POST", "/coupons/redeem/" .. code, json_headers,
      body_user_book(user))
  end
  error("unknown mode " .. tostring(mode))
end

function mark(what)
  if markers ~= "-" then
    local f = io.open(markers .. "/" .. what .. "-" .. id, "w")
    if f then f:write(counted); f:close() end
  end
end

function response(status, headers, body)
  if mode ~= "healthz" and body == '{"status":"ok"}' then return end  -- a filler
  local key = tostring(status)
  statuses[key] = (statuses[key] or 0) + 1
  counted = counted + 1
  if share >= 0 and counted >= share then
    mark("done")
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  local parts = {}
  local total = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses") or {}
    for k, v in pairs(s) do total[k] = (total[k] or 0) + v end
  end
  for k, v in pairs(total) do parts[#parts + 1] = string.format('"%s":%d', k, v) end
  local e = summary.errors
  print(string.format(
    'BENCH-JSON {"duration_us":%d,"requests":%d,"statuses":{%s},' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"mean":%.1f,"max":%d,"p50":%d,"p90":%d,"p99":%d,"p99.9":%d}}',
    summary.duration, summary.requests, table.concat(parts, ","),
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9)))
end
