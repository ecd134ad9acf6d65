-- wrk script: POST /v1/payments with automatic capture, a fresh Luhn-valid card
-- and customer per request (as `paystream bench http` does), so the velocity
-- rules see distinct cards. Usage (docs/performance.md, "HTTP with wrk"):
--   PAYSTREAM_WRK_KEY=<merchant API key> wrk -t2 -c64 -d30s --latency \
--     -s api/bench/wrk-payments.lua http://127.0.0.1:8080
-- A summary at the end counts answers other than 201.

local key = os.getenv("PAYSTREAM_WRK_KEY") or error("set PAYSTREAM_WRK_KEY to a merchant API key")
local counter = 0
local thread_id = 0
local threads = {}

function setup(thread)
  thread:set("thread_id", #threads + 1)
  table.insert(threads, thread)
end

local function luhn_card(n)
  local body = string.format("42%013d", n % 10000000000000)
  local sum = 0
  local i = 0
  for pos = #body, 1, -1 do
    local d = tonumber(body:sub(pos, pos))
    if i % 2 == 0 then
      d = d * 2
      if d > 9 then d = d - 9 end
    end
    sum = sum + d
    i = i + 1
  end
  return body .. tostring((10 - sum % 10) % 10)
end

local failures = 0

function request()
  counter = counter + 1
  local n = thread_id * 1000000000 + counter + 500000000000
  local body = string.format(
    '{"amount":%d,"currency":"USD","capture":"automatic",'
      .. '"method":{"type":"card","card":{"number":"%s","exp_month":12,"exp_year":2030,"cvc":"123"}},'
      .. '"customer":{"id":"cus_wrk_%d_%d","ip":"198.51.100.7","country":"US"}}',
    1000 + counter % 500, luhn_card(n), thread_id, counter)
  return wrk.format("POST", "/v1/payments", {
    ["Authorization"] = "Bearer " .. key,
    ["Content-Type"] = "application/json",
  }, body)
end

function response(status, headers, body)
  if status ~= 201 then
    failures = failures + 1
  end
end

function done(summary, latency, requests)
  local failed = 0
  for _, thread in ipairs(threads) do
    failed = failed + (thread:get("failures") or 0)
  end
  io.write(string.format("answers other than 201: %d of %d\n", failed, summary.requests))
end
