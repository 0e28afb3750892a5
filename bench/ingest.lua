-- wrk script for the collector's ingest: batches of BENCH_BATCH events (NDJSON), every
-- request_id unique across threads and requests, as the filter sends them.
local batch = tonumber(os.getenv("BENCH_BATCH") or "200")
local key = os.getenv("BENCH_KEY")
local template = '{"request_id":"%s","timestamp":"2026-11-24T08:00:00.000Z","provider":"openai","api":"chat_completions","endpoint":"/v1/chat/completions","model_requested":"gpt-4o-mini","model_actual":"gpt-4o-mini-2024-07-18","status":200,"streaming":false,"latency_ms":%d.5,"ttfb_ms":40.0,"input_tokens":1200,"output_tokens":345,"cached_input_tokens":200,"cache_write_tokens":0,"reasoning_tokens":45,"token_source":"exact","cost_usd":0.000372,"error_category":null,"error_source":null,"team":"team-%d","app":"checkout","feature":"feature-%d","task":null,"session_id":null,"user":"user-%d","rule":null,"routed":false}'
local counter = 0

function setup(thread)
  thread:set("tag", tostring(math.random(1, 1e9)))
end

function request()
  counter = counter + 1
  local lines = {}
  for j = 1, batch do
    lines[j] = string.format(template, tag .. "-" .. counter .. "-" .. j, 50 + j, j % 8, j % 20, j % 500)
  end
  return wrk.format("POST", "/v1/events", { ["Authorization"] = "Bearer " .. key }, table.concat(lines, "\n"))
end
