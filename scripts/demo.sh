#!/usr/bin/env bash
# End-to-end demo on loopback: two origins, lbd in front, requests balanced.
#
#   scripts/demo.sh            # build, start everything, show round robin, stop
#
# Needs only cargo and curl; nothing leaves 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

A_PORT=${A_PORT:-18081}
B_PORT=${B_PORT:-18082}
LB_PORT=${LB_PORT:-16188}

echo "==> building lbd and the demo origin (release)"
cargo build --release --quiet --bin lbd --example origin

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

target/release/examples/origin --port "$A_PORT" --name origin-a 2>"$work/a.log" &
pids+=($!)
target/release/examples/origin --port "$B_PORT" --name origin-b 2>"$work/b.log" &
pids+=($!)

# Each origin answers with its name: a port held by another process shows.
wait_origin() { # port name log
    local body
    for _ in $(seq 1 100); do
        if body=$(curl -s "http://127.0.0.1:$1/" 2>/dev/null); then
            [ "$body" = "hello from $2" ] && return 0
            echo "port $1 is taken by another process (it answers: $body); set A_PORT, B_PORT" >&2
            exit 1
        fi
        sleep 0.1
    done
    echo "$2 did not start:" >&2
    cat "$3" >&2
    exit 1
}
wait_origin "$A_PORT" origin-a "$work/a.log"
wait_origin "$B_PORT" origin-b "$work/b.log"

cat > "$work/conf.yaml" <<YAML
version: 1
threads: 1
listeners:
  - address: 127.0.0.1:$LB_PORT
upstreams:
  web:
    backends:
      - 127.0.0.1:$A_PORT
      - { address: "127.0.0.1:$B_PORT", weight: 2 }
YAML
echo "==> config ($work/conf.yaml):"
sed 's/^/    /' "$work/conf.yaml"

target/release/lbd -c "$work/conf.yaml" 2>"$work/lbd.log" &
lbd_pid=$!
pids+=($lbd_pid)

# Wait until lbd listens. A bare connection, not a request: a request would
# take the first turn of the round robin and shift the order shown below.
for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$LB_PORT") 2>/dev/null; then break; fi
    sleep 0.1
done
if ! kill -0 "$lbd_pid" 2>/dev/null; then
    echo "lbd did not start (LB_PORT=$LB_PORT):" >&2
    cat "$work/lbd.log" >&2
    exit 1
fi

echo "==> 9 requests through lbd (weights a:b = 1:2, smooth round robin: b a b, b a b, b a b):"
for i in $(seq 1 9); do
    printf '    request %d -> %s\n' "$i" "$(curl -s "http://127.0.0.1:$LB_PORT/")"
done

echo "==> 6 requests on one keep-alive connection (the same cursor: b a b, b a b):"
urls=()
for _ in $(seq 1 6); do urls+=("http://127.0.0.1:$LB_PORT/"); done
curl -s "${urls[@]}" | sed 's/^/    /'

echo "==> a malformed request (Content-Length and Transfer-Encoding) is refused:"
printf 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n' \
    | curl -s --max-time 2 telnet://127.0.0.1:$LB_PORT 2>/dev/null | head -1 | sed 's/^/    /' || true

echo "==> lbd log:"
sed 's/^/    /' "$work/lbd.log"
echo "==> done"
