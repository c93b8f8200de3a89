-- wrk script for bench/ingest.py: POST pre-signed, unique webhook bodies.
--
-- Usage: wrk -t T -s bench/ingest.lua URL -- BODIES_FILE OFFSET T
-- BODIES_FILE holds one "signature<TAB>body" per line. Thread t of T sends lines
-- OFFSET+t, OFFSET+t+T, ... so no body is sent twice; done() prints a JSON summary line with
-- how many lines each thread used, for the exactly-once check.

local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local path = args[1]
  local offset = tonumber(args[2] or "0")
  step = tonumber(args[3] or "1")
  sigs, bodies = {}, {}
  local i = 0
  for line in io.lines(path) do
    local tab = string.find(line, "\t", 1, true)
    sigs[i] = string.sub(line, 1, tab - 1)
    bodies[i] = string.sub(line, tab + 1)
    i = i + 1
  end
  total = i
  start = offset + tid
  sent = 0
end

function request()
  local idx = start + sent * step
  if idx >= total then
    idx = idx % total  -- out of unique bodies: a redelivery, which ingest.py accounts for
  end
  sent = sent + 1
  return wrk.format("POST", nil, {
    ["Content-Type"] = "application/json",
    ["X-Hub-Signature-256"] = sigs[idx],
  }, bodies[idx])
end

function done(summary, latency, requests)
  local parts = {}
  for _, thread in ipairs(threads) do
    table.insert(parts, string.format("[%d,%d]", thread:get("tid"), thread:get("sent")))
  end
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"non2xx":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,' ..
    '"p99_us":%d,"max_us":%d,"sent":[%s]}\n',
    summary.requests, summary.duration, summary.errors.status, summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    table.concat(parts, ",")))
end
