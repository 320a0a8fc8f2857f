#!/usr/bin/env python3
"""WebSocket scenarios: lbd vs nginx in front of the same echo origin.

  bench/ws.py [--seconds 5] [--conns 32] [--size 64] [--idle 2000] [--runs 3]
              [--cpus PROXY:LOAD] [--lbd PATH]

- echo: `--conns` WebSocket connections through the proxy, each sending a
  `--size`-byte message and waiting for its echo, for `--seconds`; reports
  messages per second and the proxy's CPU µs per message (from
  /proc/PID/task/*/schedstat, the same for both proxies). Runs are
  interleaved (lbd, nginx, lbd, nginx, ...); the median is reported.
- idle: `--idle` WebSocket connections opened through the proxy and left
  idle; reports the proxy's RSS growth per idle tunnel (KiB) after 3 s.

The echo origin and the load both run on the LOAD CPUs (python websockets,
asyncio); the proxy alone on the PROXY CPU, one worker each. nginx is
configured as its documentation says for WebSocket proxying
(proxy_http_version 1.1, Upgrade/Connection headers). Prints one RESULT
line per contender and scenario, and a table.
"""
import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (helpers: Server, schedstat_ns, wait_port, status_kib)

ORIGIN_PORT, LBD_PORT, NGINX_PORT = 18190, 16290, 16291


def lbd_conf(work):
    return f"""threads: 1
listeners:
  - address: 127.0.0.1:{LBD_PORT}
upstreams:
  ws:
    backends: ["127.0.0.1:{ORIGIN_PORT}"]
limits:
  max_connections_per_worker: 30000
"""


def nginx_conf(work, mask):
    return f"""
worker_processes 1;
worker_cpu_affinity {mask};
worker_rlimit_nofile {bench.nofile_limit()};
daemon off;
pid {work}/nginx-ws.pid;
error_log {work}/nginx-ws.err error;
events {{ worker_connections 30000; multi_accept on; }}
http {{
    access_log off;
    tcp_nodelay on;
    client_body_temp_path {work}/ngx-w-body;
    proxy_temp_path {work}/ngx-w-proxy;
    fastcgi_temp_path {work}/ngx-w-fcgi;
    uwsgi_temp_path {work}/ngx-w-uwsgi;
    scgi_temp_path {work}/ngx-w-scgi;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{NGINX_PORT} backlog=4096;
        location / {{
            proxy_pass http://127.0.0.1:{ORIGIN_PORT};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


ORIGIN = r'''
import asyncio, sys, websockets
async def echo(ws):
    try:
        async for m in ws:
            await ws.send(m)
    except websockets.ConnectionClosed:
        pass
async def main():
    async with websockets.serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=None,
                                compression=None, ping_interval=None, max_queue=None):
        await asyncio.Future()
asyncio.run(main())
'''


async def echo_load(port, conns, seconds, size):
    import websockets
    msg = b"x" * size
    count = 0
    stop = time.monotonic() + seconds

    async def one():
        nonlocal count
        async with websockets.connect(f"ws://127.0.0.1:{port}/", compression=None,
                                      ping_interval=None, max_size=None) as ws:
            while time.monotonic() < stop:
                await ws.send(msg)
                await ws.recv()
                count += 1

    await asyncio.gather(*(one() for _ in range(conns)))
    return count


async def idle_open(port, n, hold):
    import websockets
    socks = []
    for _ in range(n):
        socks.append(await websockets.connect(f"ws://127.0.0.1:{port}/", compression=None,
                                              ping_interval=None))
    await asyncio.sleep(hold)
    return socks


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--idle", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cpus", default="1:0")
    ap.add_argument("--lbd", default=bench.LBD)
    a = ap.parse_args()
    proxy_cpus, load_cpus = a.cpus.split(":")
    os.sched_setaffinity(0, bench.cpu_list(load_cpus))
    work = tempfile.mkdtemp(prefix="lbd-ws-")
    origin = subprocess.Popen(["taskset", "-c", load_cpus, sys.executable, "-c", ORIGIN, str(ORIGIN_PORT)])
    bench.wait_port(ORIGIN_PORT)
    with open(os.path.join(work, "lbd.yaml"), "w") as f:
        f.write(lbd_conf(work))
    with open(os.path.join(work, "nginx-ws.conf"), "w") as f:
        f.write(nginx_conf(work, bench.cpu_mask(proxy_cpus)))
    env = dict(os.environ, RUST_LOG="warn")
    servers = {
        "lbd": (bench.Server("lbd", [a.lbd, "-c", f"{work}/lbd.yaml", "--threads", "1"], proxy_cpus, work, env=env), LBD_PORT),
        "nginx": (bench.Server("nginx-ws", ["nginx", "-p", work, "-e", f"{work}/nginx-ws.err", "-c", f"{work}/nginx-ws.conf"],
                               proxy_cpus, work, stop_sig=signal.SIGTERM), NGINX_PORT),
    }
    results = {}
    try:
        for _, port in servers.values():
            bench.wait_port(port)
        for name, (srv, port) in servers.items():  # warm-up
            asyncio.run(echo_load(port, a.conns, 1, a.size))
        runs = {n: [] for n in servers}
        for _ in range(a.runs):
            for name, (srv, port) in servers.items():
                pids = srv.work_pids()
                c0 = bench.schedstat_ns(pids)
                n = asyncio.run(echo_load(port, a.conns, a.seconds, a.size))
                c1 = bench.schedstat_ns(pids)
                runs[name].append((n / a.seconds, (c1 - c0) / 1000 / max(n, 1)))
        for name, rs in runs.items():
            mps = statistics.median(r[0] for r in rs)
            cpu = statistics.median(r[1] for r in rs)
            results[name] = {"msgs_per_s": mps, "cpu_us_per_msg": cpu}
            print(f"RESULT scenario=ws-echo contender={name} msgs_per_s={mps:.0f} cpu_us_per_msg={cpu:.2f}")
        for name, (srv, port) in servers.items():
            pid = srv.work_pids()[0]
            before = bench.status_kib([pid], "VmRSS")
            socks = asyncio.run(idle_open(port, a.idle, 3))
            after = bench.status_kib([pid], "VmRSS")
            per = (after - before) / a.idle
            results[name]["idle_tunnel_kib"] = per
            print(f"RESULT scenario=ws-idle-{a.idle} contender={name} rss_per_idle_tunnel_kib={per:.2f}")
            del socks
    finally:
        for srv, _ in servers.values():
            srv.stop()
        origin.kill()
    print(f"\n{'contender':10s} {'msgs/s':>9s} {'CPU µs/msg':>11s} {'KiB/idle tunnel':>16s}")
    for name, r in results.items():
        print(f"{name:10s} {r['msgs_per_s']:9.0f} {r['cpu_us_per_msg']:11.2f} {r.get('idle_tunnel_kib', 0):16.2f}")
    if "lbd" in results and "nginx" in results:
        l, n = results["lbd"], results["nginx"]
        print(f"lbd ÷ nginx: CPU per message {l['cpu_us_per_msg'] / n['cpu_us_per_msg']:.2f}×, "
              f"RSS per idle tunnel {l.get('idle_tunnel_kib', 0) / max(n.get('idle_tunnel_kib', 1e-9), 1e-9):.2f}×")


if __name__ == "__main__":
    main()
