#!/usr/bin/env bash
# What 100 open status pages cost the workers: one worker on CPU 1, wrk
# (64 keep-alive connections) and the pollers on CPU 0; three interleaved
# rounds without and with 100 clients fetching GET /stats once a second.
# Prints the workers' CPU µs per request (their threads' schedstat) and
# the admin thread's share of a core.
#
# Usage: bench/status_page.sh   (uses target/release/lbd and examples/origin)
set -euo pipefail
cd "$(dirname "$0")/.."
W=target/release
[ -x $W/lbd ] || cargo build --release --bin lbd >&2
[ -x $W/examples/origin ] || cargo build --release --example origin >&2
work=$(mktemp -d /tmp/lbd-statusbench-XXXX)
cat > "$work/conf.yaml" <<'YAML'
threads: 1
admin:
  address: 127.0.0.1:18190
listeners:
  - address: 127.0.0.1:18180
upstreams:
  web:
    backends: ["127.0.0.1:18181"]
limits:
  keepalive_requests: 100000000
YAML
cat > "$work/poll.py" <<'PY'
import socket, sys, threading, time
def page():
    while True:
        t = time.time()
        try:
            s = socket.create_connection(("127.0.0.1", 18190))
            s.sendall(b"GET /stats HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
            s.close()
        except OSError:
            pass
        time.sleep(max(0, 1 - (time.time() - t)))
for _ in range(100):
    threading.Thread(target=page, daemon=True).start()
time.sleep(float(sys.argv[1]))
PY
taskset -c 0 $W/examples/origin --port 18181 --name a >/dev/null 2>&1 &
origin=$!
taskset -c 1 $W/lbd -c "$work/conf.yaml" >"$work/lbd.log" 2>&1 &
lbd=$!
trap 'kill $lbd $origin 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
cpu() { # thread name prefix -> ns
    local t=0
    for f in /proc/$lbd/task/*; do
        if grep -q "^$1" "$f/comm"; then t=$((t + $(cut -d' ' -f1 "$f/schedstat"))); fi
    done
    echo $t
}
for round in 1 2 3; do
    for mode in none pages100; do
        if [ $mode = pages100 ]; then taskset -c 0 python3 "$work/poll.py" 8 & p=$!; sleep 1; fi
        w0=$(cpu lbd-worker); a0=$(cpu lbd-admin)
        out=$(taskset -c 0 wrk -t1 -c64 -d5s http://127.0.0.1:18180/)
        w1=$(cpu lbd-worker); a1=$(cpu lbd-admin)
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
        python3 -c "print('round $round $mode worker_cpu_us_per_req=%.3f admin_cpu_percent=%.1f rps=%d' % (($w1-$w0)/1000/$reqs, ($a1-$a0)/5e9*100, $reqs/5))"
        if [ $mode = pages100 ]; then wait $p; fi
    done
done
