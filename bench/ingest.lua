-- wrk script for the collector's ingest: batches of BENCH_BATCH events (NDJSON) as the filter
-- sends them. Request ids are UUIDv7 like the filter's: the time of the event, then random bits.
-- Each batch's events spread over the current second, as batches from many filters that each
-- flush at least once a second would; ids from different batches interleave within it.
local batch = tonumber(os.getenv("BENCH_BATCH") or "200")
local key = os.getenv("BENCH_KEY")
local template = '{"request_id":"%08x-%04x-7%03x-%04x-%06x%06x","timestamp":"2026-11-24T08:00:00.000Z","provider":"openai","api":"chat_completions","endpoint":"/v1/chat/completions","model_requested":"gpt-4o-mini","model_actual":"gpt-4o-mini-2024-07-18","status":200,"streaming":false,"latency_ms":%d.5,"ttfb_ms":40.0,"input_tokens":1200,"output_tokens":345,"cached_input_tokens":200,"cache_write_tokens":0,"reasoning_tokens":45,"token_source":"exact","cost_usd":0.000372,"error_category":null,"error_source":null,"team":"team-%d","app":"checkout","feature":"feature-%d","task":null,"session_id":null,"user":"user-%d","rule":null,"routed":false}'

function setup(thread)
  thread:set("seed", math.random(1, 1e9))
end

function init()
  math.randomseed(seed)
end

function request()
  local second = os.time() * 1000
  local lines = {}
  for j = 1, batch do
    local ms = second + math.floor((j - 1) * 1000 / batch)
    lines[j] = string.format(template, math.floor(ms / 65536), ms % 65536, math.random(0, 0xfff),
      0x8000 + math.random(0, 0x3fff), math.random(0, 0xffffff), math.random(0, 0xffffff),
      50 + j, j % 8, j % 20, j % 500)
  end
  return wrk.format("POST", "/v1/events", { ["Authorization"] = "Bearer " .. key }, table.concat(lines, "\n"))
end
