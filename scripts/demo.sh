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
pids+=($!)

for _ in $(seq 1 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$LB_PORT/" 2>/dev/null; then break; fi
    sleep 0.1
done

echo "==> 9 requests through lbd (weights 1:2, smooth round robin):"
for i in $(seq 1 9); do
    printf '    request %d -> %s\n' "$i" "$(curl -s "http://127.0.0.1:$LB_PORT/")"
done

echo "==> 6 requests on one keep-alive connection:"
urls=()
for _ in $(seq 1 6); do urls+=("http://127.0.0.1:$LB_PORT/"); done
curl -s "${urls[@]}" | sed 's/^/    /'

echo "==> a malformed request (Content-Length and Transfer-Encoding) is refused:"
printf 'POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n' \
    | curl -s --max-time 2 telnet://127.0.0.1:$LB_PORT 2>/dev/null | head -1 | sed 's/^/    /' || true

echo "==> lbd log:"
sed 's/^/    /' "$work/lbd.log"
echo "==> done"
