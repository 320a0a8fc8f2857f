#!/usr/bin/env bash
# Side-by-side benchmark of lbd against nginx, HAProxy, a raw io_uring
# forwarder ("floor") and no proxy at all ("direct"). See bench/bench.py for
# the layout, contenders and scenarios, bench/results/ for the output.
#
# Usage: bench/run.sh [--quick] [--cpus PROXY:LOAD] [--build] [--pingora] [--ws | --churn] [bench.py options]
#   --quick        small bodies, keep-alive + close, 1k idle conns, 1 run (< 60 s)
#   --cpus 1:0     taskset CPU lists: proxy on CPU 1, wrk/oha + origins on CPU 0
#                  (default). On a bigger box e.g. --cpus 4:0-3 keeps the
#                  generator off the proxy's core; every contender still runs
#                  one worker.
#   --build        rebuild lbd, examples/origin and examples/floor even if
#                  they exist (default: build only what is missing)
#   --ws           instead: the WebSocket scenarios (bench/ws.py): echo
#                  messages per second and CPU per message, and RSS per idle
#                  tunnel (2,000 idle WebSockets), lbd vs nginx
#   --churn        instead: 1,000 backend-set updates under load (bench/churn.py):
#                  lbd --threads 2, wrk keep-alive, static vs churn runs
#                  interleaved; CPU µs/request of both and their ratio. Needs
#                  only wrk, lbd and examples/origin (builds what is missing;
#                  other options go to churn.py: --runs, --duration, --cpus ...)
#   --tls          TLS listeners instead (bench.py --tls): lbd, nginx and HAProxy
#                  with one ECDSA P-256 certificate, plain origins; tls-ka-*
#                  and tls-close-small (a full handshake per request); ×nginx
#                  column
#   --h2           HTTP/2 over TLS instead (bench.py --h2): h2load (Debian's
#                  nghttp2-client), 4 connections x 16 streams, lbd vs nginx vs
#                  HAProxy, HTTP/1.1 to the origins
#   --pingora      add Pingora's load balancer (bench/pingora-lb, crate pingora
#                  with the lb feature) to the contenders; builds it first when
#                  missing (about 5 minutes, needs cmake), except in --quick,
#                  which never builds it (then it is skipped with a note). Once
#                  built, a full run includes it without --pingora.
#   other options go to bench.py (--runs, --duration, --idle, --origin, ...)
#
# Fresh Debian box: installs wrk, nginx-light, haproxy, caddy with apt when missing;
# oha (fixed-rate latency scenarios) is built with `cargo install oha --locked`
# into bench/.tools only when missing and not in --quick mode or CI: it takes
# about 9 minutes. --quick without oha skips the fixed-rate scenarios.
#
# When other heavy jobs share the box, wrap the whole run:
#   flock /tmp/lbd-heavy.lock bench/run.sh --quick
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0 build=0 pingora=0 ws=0 churn=0 h2=0 args=()
while (($#)); do
    case $1 in
        --quick) quick=1; args+=(--quick) ;;
        --build) build=1 ;;
        --pingora) pingora=1; args+=(--pingora) ;;
        --ws) ws=1 ;;
        --churn) churn=1 ;;
        --h2) h2=1; args+=(--h2) ;;
        --cpus) args+=(--cpus "$2"); shift ;;
        *) args+=("$1") ;;
    esac
    shift
done

tools=(wrk nginx haproxy caddy taskset)
((churn)) && tools=(wrk taskset)
((h2)) && tools+=(h2load openssl)
missing=()
for t in "${tools[@]}"; do command -v "$t" >/dev/null || missing+=("$t"); done
if ((${#missing[@]})); then
    pkgs=()
    for t in "${missing[@]}"; do
        case $t in nginx) pkgs+=(nginx-light) ;; h2load) pkgs+=(nghttp2-client) ;; taskset) pkgs+=(util-linux) ;; *) pkgs+=("$t") ;; esac
    done
    echo "bench: installing ${pkgs[*]} with apt-get" >&2
    sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
    "${sudo_[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq "${pkgs[@]}" >&2
    # The Debian packages start system services on :80; the bench needs none.
    "${sudo_[@]}" systemctl disable --now nginx haproxy caddy >/dev/null 2>&1 || true
fi

if ((churn)); then
    # The churn scenario needs lbd and examples/origin only: build what is
    # missing (both with --build), nothing else.
    targets=()
    { ((build)) || [ ! -x target/release/lbd ]; } && targets+=(--bin lbd)
    { ((build)) || [ ! -x target/release/examples/origin ]; } && targets+=(--example origin)
    if ((${#targets[@]})); then
        echo "bench: cargo build --release ${targets[*]}" >&2
        cargo build --release "${targets[@]}" >&2
    fi
    ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
    exec python3 bench/churn.py "${args[@]}"
fi

if ! command -v oha >/dev/null && [ ! -x bench/.tools/bin/oha ]; then
    if ((quick)) || [ -n "${CI:-}" ]; then
        echo "bench: oha not installed; fixed-rate latency scenarios skipped (run without --quick to install it)" >&2
    else
        echo "bench: installing oha into bench/.tools (cargo install, about 9 minutes)" >&2
        cargo install oha --locked --root bench/.tools >&2
    fi
fi

if ((build)) || [ ! -x target/release/lbd ] || [ ! -x target/release/examples/origin ] ||
    [ ! -x target/release/examples/floor ]; then
    echo "bench: cargo build --release (LTO: about 1.5 min)" >&2
    cargo build --release --bin lbd --example origin --example floor >&2
fi

pingora_bin=bench/pingora-lb/target/release/pingora-lb
if ((pingora)) && ! ((quick)) && { ((build)) || [ ! -x "$pingora_bin" ]; }; then
    if ! command -v cmake >/dev/null; then  # libz-ng-sys (flate2 in pingora-core) builds zlib-ng with cmake
        echo "bench: installing cmake with apt-get (Pingora's build needs it)" >&2
        sudo_=(); [ "$(id -u)" = 0 ] || sudo_=(sudo)
        "${sudo_[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo_[@]}" apt-get install -y -qq cmake >&2
    fi
    echo "bench: building Pingora's load balancer (bench/pingora-lb, own target dir): takes about 5 minutes" >&2
    cargo build --release --manifest-path bench/pingora-lb/Cargo.toml >&2
fi

# 10k idle connections need 10k fds in the client and 10k-20k in each proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if ((ws)); then
    # WebSocket echo and idle tunnels, lbd vs nginx (bench/ws.py); needs
    # python's websockets.
    python3 -c "import websockets" 2>/dev/null || pip install -q websockets >&2
    exec python3 bench/ws.py
fi
exec python3 bench/bench.py "${args[@]}"
