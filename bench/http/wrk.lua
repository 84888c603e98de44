-- wrk script of the HTTP benchmark (bench/http/run.sh): builds each request of a
-- scenario, counts answers that are not 2xx, and prints one machine-readable result
-- line when wrk is done.
--
--   wrk -t2 -c64 -d10s -s bench/http/wrk.lua http://127.0.0.1:PORT -- MODE BRANDS HOT RUN
--
-- MODE   healthz | record | record-hot | check | summary
-- BRANDS brands `brand-00000` … registered on the service (the many-brands scenarios)
-- HOT    the one brand of `record-hot`
-- RUN    prefix of the idempotency keys, unique per wrk invocation, so no key is ever
--        answered as a replay
--
-- The admin token comes from the environment (LEDGER_BENCH_TOKEN), not from the
-- command line, which every user of the machine can read.

local API = "/api/v1/usage-billing"

-- Every thread, kept by setup() so done() can add up their counters.
local threads = {}
local thread_count = 0

function setup(thread)
   thread_count = thread_count + 1
   thread:set("thread_no", thread_count)
   table.insert(threads, thread)
end

-- Per thread (each wrk thread has its own Lua state): the scenario, the headers, the
-- requests that do not change, and the counters.
local mode, brands, hot, run_id
local headers
local fixed = {}
local sent = 0

local function brand_name(i)
   return string.format("brand-%05d", i)
end

-- A brand picked at random among the registered ones, as `0 .. brands - 1`.
local function random_brand()
   return math.random(0, brands - 1)
end

local function record_body(brand)
   return string.format('{"brandId":"%s","metric":"api_calls","value":1}', brand)
end

local function check_body(brand)
   return string.format('{"brandId":"%s","metric":"api_calls","requestedAmount":1}', brand)
end

function init(args)
   mode, brands, hot, run_id = args[1], tonumber(args[2]), args[3], args[4]
   if not (mode and brands and hot and run_id) then
      error("usage: -- MODE BRANDS HOT RUN")
   end
   local token = os.getenv("LEDGER_BENCH_TOKEN")
   if mode ~= "healthz" and (token == nil or token == "") then
      error("LEDGER_BENCH_TOKEN is not set")
   end
   headers = {
      ["Authorization"] = "Bearer " .. (token or ""),
      ["Content-Type"] = "application/json",
   }
   -- Threads start at the same instant: seed each one differently.
   math.randomseed(os.time() * 1000 + thread_no)
   non2xx = 0
   first_non2xx = nil
   -- Requests without a per-request part are formatted once, one per brand.
   if mode == "healthz" then
      fixed[1] = wrk.format("GET", "/healthz", {})
   elseif mode == "summary" then
      for i = 0, brands - 1 do
         fixed[i + 1] = wrk.format("GET", API .. "/summary/" .. brand_name(i), headers)
      end
   elseif mode == "check" then
      for i = 0, brands - 1 do
         fixed[i + 1] = wrk.format("POST", API .. "/check-quota", headers, check_body(brand_name(i)))
      end
   elseif mode == "check-hot" then
      fixed[1] = wrk.format("POST", API .. "/check-quota", headers, check_body(hot))
   elseif mode ~= "record" and mode ~= "record-hot" then
      error("unknown mode " .. mode)
   end
end

function request()
   sent = sent + 1
   if mode == "healthz" or mode == "check-hot" then
      return fixed[1]
   elseif mode == "summary" or mode == "check" then
      return fixed[random_brand() + 1]
   end
   -- Recording: a fresh idempotency key per request (run, thread, request number).
   local brand = hot
   if mode == "record" then
      brand = brand_name(random_brand())
   end
   headers["Idempotency-Key"] = string.format("%s-%d-%d", run_id, thread_no, sent)
   return wrk.format("POST", API .. "/record", headers, record_body(brand))
end

function response(status, _, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      if first_non2xx == nil then
         first_non2xx = status .. " " .. string.sub(body or "", 1, 300)
      end
   end
end

function done(summary, latency, _)
   local bad, first = 0, nil
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      first = first or thread:get("first_non2xx")
   end
   local e = summary.errors
   io.write(string.format(
      "wrk-result requests=%d duration_us=%d rps=%.1f p50_us=%d p99_us=%d p999_us=%d "
         .. "non2xx=%d socket_errors=%d connect=%d read=%d write=%d timeout=%d\n",
      summary.requests, summary.duration,
      summary.requests / (summary.duration / 1e6),
      latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
      bad, e.connect + e.read + e.write + e.timeout,
      e.connect, e.read, e.write, e.timeout))
   if first then
      io.write("wrk-first-non-2xx " .. string.gsub(first, "\n", " ") .. "\n")
   end
end
