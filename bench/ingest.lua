-- wrk script: POST a fixed NDJSON body (BODY_FILE) to /track with the write key (KEY).
-- With BODY_COUNT=N, the bodies are BODY_FILE.0 … BODY_FILE.<N-1>, sent in turn (realistic cardinality).
local key = os.getenv("KEY")
local function read_file(path)
  local f = assert(io.open(path, "rb"))
  local text = f:read("*a")
  f:close()
  return text
end
wrk.method = "POST"
wrk.headers["x-api-key"] = key
wrk.headers["Content-Type"] = "application/x-ndjson"
local count = tonumber(os.getenv("BODY_COUNT") or "")
if count then
  local bodies = {}
  for i = 0, count - 1 do bodies[i + 1] = read_file(os.getenv("BODY_FILE") .. "." .. i) end
  local turn = 0
  request = function()
    turn = turn % count + 1
    return wrk.format(nil, nil, nil, bodies[turn])
  end
else
  wrk.body = read_file(os.getenv("BODY_FILE"))
end

-- DELAY_MS (optional): each connection waits this long before its next request, for a fixed
-- offered rate (connections * 1000 / DELAY_MS requests/s); wrk's latency excludes the wait.
local delay_ms = tonumber(os.getenv("DELAY_MS") or "")
if delay_ms then
  delay = function() return delay_ms end
end

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  local parts = {}
  for code, n in pairs(statuses) do table.insert(parts, string.format('"%d": %d', code, n)) end
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "errors_connect": %d, "errors_read": %d, ' ..
    '"errors_timeout": %d, "non_2xx": %d, "latency_p50_ms": %.3f, "latency_p99_ms": %.3f, "status": {%s}}\n',
    summary.requests, summary.duration, summary.errors.connect, summary.errors.read, summary.errors.timeout,
    summary.errors.status, latency:percentile(50) / 1000, latency:percentile(99) / 1000, table.concat(parts, ", ")))
end
