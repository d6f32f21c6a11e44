-- wrk script for bench/run.sh: no per-request hooks (they would slow wrk down); at the end,
-- one line "WRKJSON {...}" with the figures as numbers (latencies in microseconds).
-- errors.status counts responses with a status >= 400 (what wrk calls "Non-2xx or 3xx").
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_s":%.3f,"rps":%.1f,"mean_us":%.1f,'
    .. '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,"max_us":%d,'
    .. '"errors_connect":%d,"errors_read":%d,"errors_write":%d,"errors_status":%d,'
    .. '"errors_timeout":%d}\n',
    summary.requests, secs, summary.requests / secs, latency.mean,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
