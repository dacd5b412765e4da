-- wrk script for the allocation service benchmarks.
--
--   wrk ... -s bench/lua/load.lua <url> -- <mode> <token> <prefix> <target> <count>
--
-- mode "allocate": POST /allocate {"orderid", "sku", "qty": 1}. Order ids are unique per run:
--   <prefix>-<thread>-<counter>, one counter per wrk thread (each thread has its own Lua state).
--   target is the sku, or with count > 1 the sku prefix: skus <target>0 .. <target><count-1>.
-- mode "read": GET /allocations/<target><n>, n random in 1..count.
-- BENCH_DELAY_MS (environment): pause after each response on a connection, to pace the load.
--
-- done() prints one line "BENCH_JSON {...}": the status codes of every response (summed over
-- threads), 202 answers whose batchref was null (out of stock), and the latency percentiles.

local threads = {}
local pace = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  mode, token, prefix, target = args[1], args[2], args[3], args[4]
  count = tonumber(args[5] or "1")
  counter = 0
  statuses = {}
  out_of_stock = 0
  math.randomseed(tid * 7919 + os.time())
  wrk.headers["Authorization"] = "Token " .. token
  wrk.headers["Accept"] = "application/json"
  if mode == "allocate" then
    wrk.headers["Content-Type"] = "application/json"
  end
end

function request()
  counter = counter + 1
  if mode == "read" then
    return wrk.format("GET", "/allocations/" .. target .. math.random(1, count))
  end
  local sku = target
  if count > 1 then
    sku = target .. ((counter * 7 + tid) % count)
  end
  local body = '{"orderid":"' .. prefix .. "-" .. tid .. "-" .. counter
    .. '","sku":"' .. sku .. '","qty":1}'
  return wrk.format("POST", "/allocate", nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status == 202 and body and body:find("null", 1, true) then
    out_of_stock = out_of_stock + 1
  end
end

if pace > 0 then
  function delay()
    return pace
  end
end

function done(summary, latency, requests)
  local codes, oos, sent = {}, 0, 0
  for _, t in ipairs(threads) do
    local s = t:get("statuses") or {}
    for code, n in pairs(s) do
      codes[code] = (codes[code] or 0) + n
    end
    oos = oos + (t:get("out_of_stock") or 0)
    sent = sent + (t:get("counter") or 0)
  end
  local parts = {}
  for code, n in pairs(codes) do
    table.insert(parts, string.format('"%d":%d', code, n))
  end
  local pcts = {}
  local points = {}
  for p = 1, 99 do
    table.insert(points, p)
  end
  for _, p in ipairs({99.5, 99.9, 99.99, 100}) do
    table.insert(points, p)
  end
  for _, p in ipairs(points) do
    table.insert(pcts, string.format('["%s",%d]', tostring(p), latency:percentile(p)))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"sent":%d,"statuses":{%s},'
      .. '"out_of_stock_202":%d,"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,'
      .. '"timeout":%d},"latency_us":{"min":%d,"max":%d,"mean":%.1f,"stdev":%.1f},'
      .. '"percentiles_us":[%s]}\n',
    summary.requests, summary.duration, summary.bytes, sent, table.concat(parts, ","), oos,
    e.connect, e.read, e.write, e.status, e.timeout, latency.min, latency.max, latency.mean,
    latency.stdev, table.concat(pcts, ",")))
end
