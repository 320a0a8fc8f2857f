#!/usr/bin/env bash
# Usage: bench/cpu_per_req.sh PIDS URL [wrk args...]
# Runs wrk (pinned to CPU 0) against URL and prints requests/s and the CPU
# time the given processes (comma-separated pids, all their threads) spent
# per request, from /proc/PID/task/*/schedstat.
set -euo pipefail
pids=$1; url=$2; shift 2
cpu_ns() { local t=0; for p in ${pids//,/ }; do for f in /proc/$p/task/*/schedstat; do t=$((t + $(cut -d' ' -f1 "$f"))); done; done; echo $t; }
a=$(cpu_ns)
out=$(taskset -c 0 wrk -t1 -c64 -d5s "$@" "$url")
b=$(cpu_ns)
reqs=$(echo "$out" | awk '/requests in/ {print $1}')
rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
errs=$(echo "$out" | grep -E "Socket errors|Non-2xx" | tr '\n' ' ' || true)
python3 -c "print(f'rps={float($rps):.0f} requests=$reqs cpu_us_per_req={($b-$a)/1000/$reqs:.2f} cpu_util={($b-$a)/5e9*100:.0f}% $errs')"
