-- wrk script for `make bench`: POSTs one of several (path, headers, body) requests in turn.
-- BENCH_REQUESTS names a file of requests, one per line: path<TAB>header:value|header:value<TAB>body-file
local requests = {}
local i = 0

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function init(args)
  for line in io.lines(os.getenv("BENCH_REQUESTS")) do
    local path, hdrs, body = line:match("^([^\t]*)\t([^\t]*)\t(.*)$")
    local headers = { ["Content-Type"] = "application/json" }
    for kv in hdrs:gmatch("[^|]+") do
      local k, v = kv:match("^([^:]+):(.*)$")
      headers[k] = v
    end
    table.insert(requests, wrk.format("POST", path, headers, read(body)))
  end
end

function request()
  i = i + 1
  return requests[(i % #requests) + 1]
end
