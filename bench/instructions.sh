#!/usr/bin/env bash
# Instructions per request, under valgrind's callgrind: deterministic enough
# to see a change's cost without the noise of timing runs.
#
# Usage: bench/instructions.sh [LBD_BIN | floor ...]   (default: target/release/lbd)
#   N=20000 requests on one keep-alive connection (a python client on
#   loopback, so the count is not disturbed by concurrency), to one origin
#   (examples/origin). lbd runs one worker on the epoll driver
#   (MONOIO_FORCE_LEGACY_DRIVER=1: io_uring completions under valgrind are
#   too slow to be useful); the count covers lbd's user space only. Each
#   binary runs twice, with N/10 and N requests, and the difference is
#   divided by 0.9 N, so start-up and shutdown cancel out.
#   `floor` measures examples/floor, the raw io_uring forwarder (on io_uring:
#   it has no epoll path, so its count is for a different driver than
#   lbd's; it never exits on a signal, so it is counted between two
#   callgrind_control marks, zeroed after N/10 requests and dumped after N
#   more).
#   TOP=N also prints lbd's N most expensive functions (self cost, share of
#   all instructions of the larger run, start-up included) from
#   callgrind_annotate.
#   KEEP=path keeps the larger run's callgrind output there (for
#   callgrind_annotate --tree=caller, kcachegrind).
#   Extra configs: CONF=path (a conf.yaml with listener 127.0.0.1:18180 and
#   backend 127.0.0.1:18181) measures another setup (balance, routes).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
command -v valgrind >/dev/null || { echo "instructions: valgrind is not installed" >&2; exit 1; }
[ -x target/release/examples/origin ] || cargo build --release --example origin >&2
bins=("$@")
((${#bins[@]})) || { [ -x target/release/lbd ] || cargo build --release --bin lbd >&2; bins=(target/release/lbd); }
work=$(mktemp -d /tmp/lbd-instr-XXXX)
conf=${CONF:-$work/conf.yaml}
if [ -z "${CONF:-}" ]; then
    cat > "$conf" <<YAML
listeners:
  - address: 127.0.0.1:18180
upstreams:
  web:
    backends: ["127.0.0.1:18181"]
limits:
  keepalive_requests: 100000000
YAML
fi
cat > "$work/client.py" <<'PY'
import socket, sys
n = int(sys.argv[1])
s = socket.create_connection(("127.0.0.1", 18180))
req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
buf = b""
for _ in range(n):
    s.sendall(req)
    while True:
        i = buf.find(b"\r\n\r\n")
        if i >= 0:
            head = buf[:i].decode()
            cl = int([l.split(":")[1] for l in head.split("\r\n") if l.lower().startswith("content-length")][0])
            if len(buf) >= i + 4 + cl:
                assert head.startswith("HTTP/1.1 200"), head
                buf = buf[i + 4 + cl:]
                break
        d = s.recv(65536)
        if not d:
            raise SystemExit("connection closed")
        buf += d
PY
target/release/examples/origin --port 18181 --name a >/dev/null 2>&1 &
origin=$!
trap 'kill $origin 2>/dev/null; rm -rf "$work"' EXIT
run() { # bin requests -> instruction count
    local out="$work/cg.$$.$2"
    MONOIO_FORCE_LEGACY_DRIVER=1 MIMALLOC_ARENA_EAGER_COMMIT=0 MIMALLOC_PURGE_DELAY=10 RUST_LOG=error \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$1" -c "$conf" --threads 1 >/dev/null 2>&1 &
    local vp=$!
    for _ in $(seq 300); do python3 -c "import socket; socket.create_connection(('127.0.0.1', 18180)).close()" 2>/dev/null && break; sleep 0.2; done
    python3 "$work/client.py" "$2"
    kill -INT $vp; wait $vp || true
    callgrind_annotate "$out" > "$out.txt" 2>/dev/null || true
    [ "$2" = "$N" ] && cp "$out.txt" "$work/top.txt"
    [ "$2" = "$N" ] && [ -n "${KEEP:-}" ] && cp "$out" "$KEEP"
    awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}' "$out.txt"
}
floor_count() { # requests -> instructions for that many after a warm-up
    local out="$work/cg.floor"
    [ -x target/release/examples/floor ] || cargo build --release --example floor >&2
    valgrind --tool=callgrind --callgrind-out-file="$out" target/release/examples/floor \
        --listen 127.0.0.1:18180 --backend 127.0.0.1:18181 >/dev/null 2>&1 &
    local vp=$!
    for _ in $(seq 300); do python3 -c "import socket; socket.create_connection(('127.0.0.1', 18180)).close()" 2>/dev/null && break; sleep 0.2; done
    python3 "$work/client.py" $(($1 / 10))
    callgrind_control -z $vp >/dev/null
    python3 "$work/client.py" "$1"
    callgrind_control -d $vp >/dev/null
    kill -9 $vp; wait $vp 2>/dev/null || true
    callgrind_annotate "$out.1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}'
}
for b in "${bins[@]}"; do
    if [ "$b" = floor ]; then
        total=$(floor_count "$N")
        echo "RESULT bin=floor conf=- requests=$N instructions_per_request=$((total / N))"
        continue
    fi
    small=$(run "$b" $((N / 10)))
    large=$(run "$b" "$N")
    per=$(( (large - small) * 10 / (9 * N) ))
    echo "RESULT bin=$b conf=$(basename "$conf") requests=$N instructions_per_request=$per"
    if [ -n "${TOP:-}" ]; then
        echo "top $TOP functions of $b (self instructions, share):"
        awk '/file:function/ {on = 1; next} on && /%\)/' "$work/top.txt" | head -n "$TOP" \
            | sed -E 's/ +\[[^]]*\]$//; s/^ +//'
    fi
done
