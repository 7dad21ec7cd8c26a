-- wrk script: POST pre-signed Twilio webhooks, each at most once per run.
--
--   wrk -t2 -c16 -d10s --latency -s bench/twilio_webhooks.lua http://127.0.0.1:PORT/PATH -- FILE NTHREADS
--
-- FILE holds one request per line: "<X-Twilio-Signature>\t<I-Twilio-Idempotency-Token>\t<form body>"
-- (written by bench/signing.py). Thread k of NTHREADS takes lines k, k+N, k+2N, ... so no
-- two threads share a MessageSid. A thread that runs out starts its lines again and
-- counts the wrap (the run then repeated MessageSids: bench/run flags it).
-- response() counts answers by status. done() prints one line "BENCH_JSON {...}".

local threads = {}
local next_id = 1

function setup(thread)
   thread:set("thread_id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local path, nthreads = args[1], tonumber(args[2])
   if not path or not nthreads then
      error("usage: ... -s twilio_webhooks.lua URL -- FILE NTHREADS")
   end
   local url_path = wrk.path
   local host = wrk.headers["Host"]
   reqs = {}
   local i = 0
   for line in io.lines(path) do
      if i % nthreads == thread_id - 1 then
         local t1 = line:find("\t", 1, true)
         local t2 = line:find("\t", t1 + 1, true)
         local headers = {
            ["Host"] = host,
            ["Content-Type"] = "application/x-www-form-urlencoded",
            ["X-Twilio-Signature"] = line:sub(1, t1 - 1),
            ["I-Twilio-Idempotency-Token"] = line:sub(t1 + 1, t2 - 1),
            ["User-Agent"] = "TwilioProxy/1.1",
         }
         reqs[#reqs + 1] = wrk.format("POST", url_path, headers, line:sub(t2 + 1))
      end
      i = i + 1
   end
   if #reqs == 0 then
      error("no requests for thread " .. thread_id .. " in " .. path)
   end
   available = #reqs
   index = 0
   sent = 0
   wraps = 0
   statuses = {}
end

function request()
   index = index + 1
   if index > #reqs then
      index = 1
      wraps = wraps + 1
   end
   sent = sent + 1
   return reqs[index]
end

function response(status, headers, body)
   local key = tostring(status)
   statuses[key] = (statuses[key] or 0) + 1
end

local function encode(value)
   local kind = type(value)
   if kind == "table" then
      local parts = {}
      if #value > 0 then
         for _, v in ipairs(value) do parts[#parts + 1] = encode(v) end
         return "[" .. table.concat(parts, ",") .. "]"
      end
      for k, v in pairs(value) do
         parts[#parts + 1] = string.format("%q", tostring(k)) .. ":" .. encode(v)
      end
      return "{" .. table.concat(parts, ",") .. "}"
   elseif kind == "number" then
      return string.format("%.17g", value)
   elseif kind == "boolean" then
      return value and "true" or "false"
   elseif kind == "nil" then
      return "null"
   end
   return string.format("%q", tostring(value))
end

function done(summary, latency, requests)
   local per_thread = {}
   for _, t in ipairs(threads) do
      per_thread[#per_thread + 1] = {
         id = t:get("thread_id"), available = t:get("available"), sent = t:get("sent"),
         wraps = t:get("wraps"), statuses = t:get("statuses"),
      }
   end
   local out = {
      duration_us = summary.duration,
      requests = summary.requests,
      bytes = summary.bytes,
      errors = summary.errors,
      latency_us = {
         min = latency.min, max = latency.max, mean = latency.mean, stdev = latency.stdev,
         p50 = latency:percentile(50), p90 = latency:percentile(90),
         p99 = latency:percentile(99), p999 = latency:percentile(99.9),
      },
      threads = per_thread,
   }
   io.write("BENCH_JSON " .. encode(out) .. "\n")
end
