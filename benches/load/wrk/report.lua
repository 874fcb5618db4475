-- Shared by the benchmark's wrk scripts: one machine-readable line at the end of a run.
-- `used` is how many pre-signed headers the run consumed (0 for static requests).
local threads = {}

function setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

function done(summary, latency, requests)
  -- Threads take interleaved lines, so the run consumed up to threads x the furthest thread.
  local furthest = 0
  for _, t in ipairs(threads) do
    furthest = math.max(furthest, t:get("used") or 0)
  end
  local used = furthest * #threads
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,' ..
    '"read_errors":%d,"write_errors":%d,"timeouts":%d,"non_2xx":%d,' ..
    '"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d,"used":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.timeout, e.status, latency:percentile(50), latency:percentile(99), latency.mean,
    latency.max, used))
end
