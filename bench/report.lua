-- wrk script: prints one grep-able RESULT line with the run's counts and
-- latency percentiles (µs). `response` is deliberately not defined, so wrk
-- does not hand every response to Lua.
done = function(summary, latency, requests)
  local e = summary.errors
  local out = string.format(
    "RESULT duration_us=%d requests=%d bytes=%d err_connect=%d err_read=%d err_write=%d err_status=%d err_timeout=%d mean_us=%.1f max_us=%d",
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max)
  for _, p in ipairs({ 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99 }) do
    out = out .. string.format(" p%s_us=%d", tostring(p), latency:percentile(p))
  end
  io.write(out .. "\n")
end
