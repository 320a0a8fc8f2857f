#!/usr/bin/env python3
"""Side-by-side HTTP/1.1 proxy benchmark: lbd vs nginx vs HAProxy vs floor.

Called by bench/run.sh (which installs the tools and builds the binaries);
run that, not this. Standard library only.

Layout (same for every contender): the proxy alone on the proxy CPU (CPU 1
on a 2-core box), the load generator (wrk/oha) and the origins on the load
CPU (CPU 0). One worker per proxy, keep-alive pool to the origins, round
robin over two origins, logging off. All contenders of a body size run at
once, each idle while another is measured, and runs are interleaved (run 1
of every contender, then run 2, ...): this VM has slow and fast phases of
tens of seconds (±25% CPU/request for every process alike), which would
otherwise favour whoever is measured in a fast one.

Contenders:
  direct   wrk/oha straight to one origin (the baseline, no proxy)
  floor    examples/floor.rs: raw io_uring byte forwarder, no HTTP; the
           cheapest possible forwarder, every proxy's CPU/request is also
           reported as a ratio to it
  lbd      target/release/lbd --threads 1
  nginx    1 worker, upstream keepalive 128, proxy_http_version 1.1
  haproxy  nbthread 1, http-reuse always, started under taskset
  caddy    Caddy (Debian's caddy 2.6), GOMAXPROCS=1, reverse_proxy as its
           documentation shows for load balancing (lb_policy round_robin),
           keep-alive upstream transport with 128 idle connections per
           host (its default is 32), admin endpoint off, error logs only
  pingora  optional: bench/pingora-lb, Pingora's load-balancer quick start
           (crate `pingora`, feature `lb`: LoadBalancer<RoundRobin>, threads: 1,
           its default upstream pool of 128, plain HTTP, no health checks,
           RUST_LOG=warn). A standalone Cargo project with its own target dir;
           `bench/run.sh --pingora` builds it when missing (about 5 minutes,
           needs cmake) and adds it to the contenders. A full run includes it
           by default once built; --quick only with --pingora (or
           --contenders ...,pingora), to stay under 60 s. Asked for but not
           built: skipped with a note. (The notes of issue 7 gave about 45k
           req/s at 22 µs/request for Pingora on a quieter day; pingora 0.9.1
           measured ~11-13k req/s at 75-95 µs/request here, ~50 µs of it user
           time, against nginx's ~8.)

Origins: one nginx worker on the load CPU with three pairs of ports, one pair
per body size (small = 17 B, 1 KiB: `return 200 "..."` from memory; 64 KiB:
a file with sendfile, since nginx caps a config string at 4 KiB). Measured
once on the 2-vCPU VM, wrk -t1 -c64 on the same CPU as the origin, 3 s runs:
  examples/origin            60.6k / 75.3k req/s keep-alive, but with
                             "Connection: close" it keeps the connection
                             open (it ignores the header): 54k / 76k
  nginx return 200 (memory)  58.1k req/s, honours Connection: close
  nginx file (try_files)     24.6k req/s (30.7k with sendfile+open_file_cache)
examples/origin is a little faster, but then the close-per-request rows of
direct and floor would silently measure keep-alive, and it serves one body
size per process; nginx `return 200` it is. --origin=rust switches anyway.

Scenarios (per contender):
  ka-small / ka-1k / ka-64k   closed loop, wrk -t1 -c64, keep-alive
  close-small                 wrk -c64 -H "Connection: close" (new client
                              connection per request; upstream keep-alive)
  rate-50/75                  oha -q at 50/75% of lbd's own ka-small max
                              (issue 17's tail goal; the weakest proxy's
                              when lbd is not a contender),
                              --latency-correction
  idle                        N idle keep-alive client connections: proxy
                              RSS growth per connection (bench/idle_rss.py)
Per contender and scenario: req/s, p50/p99/p99.9, errors (socket errors,
non-2xx), proxy CPU µs/request (/proc/PID/task/*/schedstat, all threads),
peak RSS (VmHWM). The median over --runs runs is reported. For lbd, its own
latency histogram of each run (SIGUSR1 dump, request head read to last
response byte written) is kept beside the client's view: a second table, and
dashed lines in the SVG on the same axes.
"""
import argparse
import datetime
import json
import os
import platform
import resource
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")
REL = os.path.join(ROOT, "target", "release")
# LBD_BIN=path compares another build of lbd (e.g. before/after a change).
LBD = os.environ.get("LBD_BIN") or os.path.join(REL, "lbd")
FLOOR = os.path.join(REL, "examples", "floor")
ORIGIN = os.path.join(REL, "examples", "origin")
PINGORA_DIR = os.path.join(BENCH, "pingora-lb")
PINGORA = os.path.join(PINGORA_DIR, "target", "release", "pingora-lb")
LUA = os.path.join(BENCH, "report.lua")

# Ports chosen away from the defaults (6188, 8081, ...) so a bench run does
# not collide with a demo or a developer's lbd on the same box.
ORIGIN_PORTS = {"small": (18081, 18082), "1k": (18083, 18084), "64k": (18085, 18086)}
BODY_BYTES = {"small": 17, "1k": 1024, "64k": 65536}
PROXY_PORT = {"floor": 16191, "lbd": 16188, "nginx": 16189, "haproxy": 16190, "pingora": 16192,
              "lbd-lc": 16193, "lbd-p2c": 16194, "lbd-routes": 16195, "lbd-base": 16196, "caddy": 16197}
# lbd configured otherwise, as contenders of their own (--contenders
# lbd,lbd-lc,lbd-p2c,lbd-routes, or --variants): balance least_conn, balance
# p2c, and ten routes with the request matching the last-resort default.
LBD_VARIANTS = ["lbd-lc", "lbd-p2c", "lbd-routes"]
# LBD_BASE_BIN=path adds contender "lbd-base": that build with lbd's plain
# config, interleaved with the others (before/after a change in one run).
LBD_BASE = os.environ.get("LBD_BASE_BIN")
# Default contenders; a full run appends "pingora" when bench/pingora-lb is
# built, and "caddy" is one when the caddy binary is installed.
CONTENDERS = ["direct", "floor", "lbd", "nginx", "haproxy", "caddy"]
PROXIES = ["floor", "lbd", "nginx", "haproxy", "caddy", "pingora"]


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def wait_port(port, timeout=10.0):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def port_free(port):
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def schedstat_ns(pids):
    total = 0
    for p in pids:
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total


def status_kib(pids, field):
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_busy_ns():
    """Busy time per CPU from /proc/stat (everything but idle and iowait), ns."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("cpu") and line[3].isdigit():
                v = line.split()
                t = [int(x) for x in v[1:9]]
                out[int(v[0][3:])] = (sum(t) - t[3] - t[4]) * 1_000_000_000 // hz
    return out


def cpu_list(spec):
    ids = []
    for part in spec.split(","):
        if "-" in part:
            a, b = part.split("-")
            ids += list(range(int(a), int(b) + 1))
        else:
            ids.append(int(part))
    return ids


def cpus_allowed(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Cpus_allowed_list:"):
                return line.split()[1]
    return "?"


class Server:
    """A started process; `pids` are the ones whose CPU and RSS count."""

    def __init__(self, name, argv, cpus, workdir, env=None, stop_sig=signal.SIGINT):
        self.name = name
        self.stop_sig = stop_sig
        self.logf = open(os.path.join(workdir, f"{name}.log"), "ab")
        full = ["taskset", "-c", cpus] + argv
        self.proc = subprocess.Popen(full, stdout=self.logf, stderr=self.logf,
                                     env=env, stdin=subprocess.DEVNULL)

    def pids(self):
        # nginx: the master only forks; the worker does the work.
        kids = children(self.proc.pid)
        return [self.proc.pid] + kids

    def work_pids(self):
        kids = children(self.proc.pid)
        return kids if self.name.startswith("nginx") and kids else [self.proc.pid]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()

    def alive(self):
        return self.proc.poll() is None


# ---------------------------------------------------------------- .hgrm

def hgrm_rows(text):
    """(value, percentile 0..1, total count) rows of an HdrHistogram
    percentile-distribution file."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 4 and not line.lstrip().startswith("#"):
            try:
                rows.append((float(parts[0]), float(parts[1]), int(parts[2])))
            except ValueError:
                pass  # the column header
    return rows


def hgrm_count(text):
    rows = hgrm_rows(text)
    return rows[-1][2] if rows else 0


def hgrm_percentiles(text, ps=("50", "90", "99", "99.9", "99.99")):
    """Value (µs) at each percentile: the first row at or above it."""
    rows = hgrm_rows(text)
    out = {}
    for p in ps:
        want = float(p) / 100
        v = next((val for val, q, _ in rows if q >= want - 1e-12), rows[-1][0] if rows else None)
        if v is not None:
            out[p] = v
    return out


# ---------------------------------------------------------------- configs

def body(size):
    n = BODY_BYTES[size]
    return "hello from origin"[:n] if n <= 17 else "".join(chr(97 + i % 26) for i in range(n))


def nginx_origin_conf(work, cpu_mask, origin_root):
    # `return 200 "<body>"` from memory: 58k req/s against 25-31k for the same
    # 17 bytes served from a file (try_files; sendfile + open_file_cache), wrk
    # -c64 on the same CPU.
    servers = []
    for size, ports in ORIGIN_PORTS.items():
        if BODY_BYTES[size] <= 2048:
            loc = f'location / {{ return 200 "{body(size)}"; }}'
        else:  # nginx caps a config parameter at 4 KiB: serve the file
            loc = f"location / {{ root {origin_root}; try_files /{size} =404; }}"
        for p in ports:
            servers.append(f"""
    server {{
        listen 127.0.0.1:{p} backlog=4096 reuseport;
        {loc}
    }}""")
    return f"""
worker_processes 1;
worker_cpu_affinity {cpu_mask};
worker_rlimit_nofile {nofile_limit()};
daemon off;
pid {work}/nginx-origin.pid;
error_log {work}/nginx-origin.err error;
events {{ worker_connections 30000; multi_accept on; }}
http {{
    access_log off;
    tcp_nodelay on;
    sendfile on;
    open_file_cache max=16 inactive=3600s;
    open_file_cache_valid 3600s;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type text/plain;
    client_body_temp_path {work}/ngx-o-body;
    proxy_temp_path {work}/ngx-o-proxy;
    fastcgi_temp_path {work}/ngx-o-fcgi;
    uwsgi_temp_path {work}/ngx-o-uwsgi;
    scgi_temp_path {work}/ngx-o-scgi;
    {''.join(servers)}
}}
"""


def nginx_proxy_conf(work, cpu_mask, port, backends, tls=None, h2=False):
    ups = "".join(f"        server 127.0.0.1:{b};\n" for b in backends)
    # TLS as nginx's documentation recommends for a busy server: a shared
    # session cache and tickets (both on), the same ECDSA P-256 certificate.
    ssl = ";" if not tls else f"""ssl{' http2' if h2 else ''};
        ssl_certificate {tls['cert']};
        ssl_certificate_key {tls['key']};
        ssl_session_cache shared:SSL:10m;
        ssl_session_timeout 1h;
        ssl_session_tickets on;"""
    return f"""
worker_processes 1;
worker_cpu_affinity {cpu_mask};
worker_rlimit_nofile {nofile_limit()};
daemon off;
pid {work}/nginx-proxy.pid;
error_log {work}/nginx-proxy.err error;
events {{ worker_connections 30000; multi_accept on; }}
http {{
    access_log off;
    tcp_nodelay on;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {work}/ngx-p-body;
    proxy_temp_path {work}/ngx-p-proxy;
    fastcgi_temp_path {work}/ngx-p-fcgi;
    uwsgi_temp_path {work}/ngx-p-uwsgi;
    scgi_temp_path {work}/ngx-p-scgi;
    upstream web {{
{ups}        keepalive 128;
        keepalive_requests 100000000;
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096 {ssl}
        location / {{
            proxy_pass http://web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # 64 KiB responses stay in memory (default buffers would spill to a temp file)
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""


def nofile_limit():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def haproxy_conf(port, backends, tls=None, h2=False):
    # HAProxy refuses to start when 2 x maxconn does not fit RLIMIT_NOFILE.
    maxconn = min(25000, (nofile_limit() - 200) // 2)
    srv = "".join(f"    server o{i} 127.0.0.1:{b}\n" for i, b in enumerate(backends))
    return f"""
global
    nbthread 1
    maxconn {maxconn}
    # no log line: logging off

defaults
    mode http
    option http-keep-alive
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-keep-alive 300s
    http-reuse always

frontend fe
    bind 127.0.0.1:{port}{" ssl crt " + tls["pem"] if tls else ""}{" alpn h2,http/1.1" if h2 else ""}
    default_backend be

backend be
    balance roundrobin
{srv}"""


def caddy_conf(port, backends, tls=None):
    ups = " ".join(f"127.0.0.1:{b}" for b in backends)
    site = f"https://:{port}" if tls else f"http://:{port}"
    cert = f"\n\ttls {tls['cert']} {tls['key']}" if tls else ""
    return f"""{{
\tadmin off
\tauto_https off
\tlog {{
\t\tlevel ERROR
\t}}
}}
{site} {{
\tbind 127.0.0.1{cert}
\treverse_proxy {ups} {{
\t\tlb_policy round_robin
\t\ttransport http {{
\t\t\tkeepalive 300s
\t\t\tkeepalive_idle_conns 128
\t\t\tkeepalive_idle_conns_per_host 128
\t\t}}
\t}}
}}
"""


def lbd_conf(port, backends, hist, variant="lbd", tls=None):
    b = ", ".join(f"127.0.0.1:{x}" for x in backends)
    balance = {"lbd-lc": "    balance: least_conn\n", "lbd-p2c": "    balance: p2c\n"}.get(variant, "")
    if variant == "lbd-routes":
        # Nine routes wrk's requests (Host: 127.0.0.1:port, path /) do not
        # match, checked before the default: exact hosts, wildcards, and
        # path prefixes of the host-less routes.
        rules = [f"      - {{ host: h{i}.example.com, upstream: web }}" for i in range(3)]
        rules += [f"      - {{ host: '*.w{i}.example.com', upstream: web }}" for i in range(3)]
        rules += [f"      - {{ path_prefix: /p{i}/, upstream: web }}" for i in range(3)]
        rules.append("      - { upstream: web }")
        listener = "    routes:\n" + "\n".join(rules) + "\n"
    else:
        listener = ""
    if tls:
        listener += f"    tls:\n      cert_file: {tls['cert']}\n      key_file: {tls['key']}\n"
    return f"""threads: 1
histogram_file: {hist}
listeners:
  - address: 127.0.0.1:{port}
{listener}upstreams:
  web:
    backends: [{b}]
{balance}upstream_keepalive_pool_size: 128
limits:
  keepalive_requests: 100000000
"""


def make_cert(work):
    """An ECDSA P-256 self-signed certificate for every TLS contender:
    cert.pem, key.pem (PKCS#8) and, for HAProxy, both in one file."""
    cert, key, pem = (os.path.join(work, n) for n in ("cert.pem", "key.pem", "haproxy.pem"))
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    with open(pem, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return {"cert": cert, "key": key, "pem": pem}


def cpu_mask(cpus):
    """nginx worker_cpu_affinity bitmask for a taskset-style list like '1' or '2-3'."""
    ids = set()
    for part in cpus.split(","):
        if "-" in part:
            a, b = part.split("-")
            ids.update(range(int(a), int(b) + 1))
        else:
            ids.add(int(part))
    return format(sum(1 << i for i in ids), "b")


# ---------------------------------------------------------------- runners

class Bench:
    def __init__(self, args):
        self.a = args
        self.proxy_cpus, self.load_cpus = args.cpus.split(":")
        self.work = tempfile.mkdtemp(prefix="lbd-bench-")
        os.chmod(self.work, 0o755)  # nginx workers (user nobody) read the origin files
        self.origins = []
        self.results = []  # dicts
        self.notes = []
        self.hist_seq = 0
        self.tls = make_cert(self.work) if args.tls else None
        self.oha = shutil.which("oha") or (
            os.path.join(BENCH, ".tools", "bin", "oha")
            if os.path.exists(os.path.join(BENCH, ".tools", "bin", "oha")) else None)

    # origins ------------------------------------------------------------
    def start_origins(self):
        for ports in ORIGIN_PORTS.values():
            for p in ports:
                if not port_free(p):
                    raise SystemExit(f"port {p} is busy: stop whatever listens there")
        if self.a.origin == "nginx":
            root = self.work
            for size, n in BODY_BYTES.items():
                with open(os.path.join(root, size), "w") as f:
                    f.write(body(size))
            conf = os.path.join(self.work, "nginx-origin.conf")
            with open(conf, "w") as f:
                f.write(nginx_origin_conf(self.work, cpu_mask(self.load_cpus), root))
            self.origins.append(Server("nginx-origin", ["nginx", "-p", self.work, "-e", f"{self.work}/nginx-origin.err", "-c", conf],
                                       self.load_cpus, self.work, stop_sig=signal.SIGTERM))
        else:
            for size, ports in ORIGIN_PORTS.items():
                for i, p in enumerate(ports):
                    self.origins.append(Server(f"origin-{size}-{i}", [ORIGIN, "--port", str(p), "--name", "ab"[i],
                                                                        "--body-size", str(BODY_BYTES[size])],
                                               self.load_cpus, self.work))
        for ports in ORIGIN_PORTS.values():
            for p in ports:
                wait_port(p)

    # contenders ---------------------------------------------------------
    def start(self, name, size):
        """Starts contender `name` in front of the origins of body `size`; returns (server|None, port)."""
        backends = ORIGIN_PORTS[size]
        if name == "direct":
            return None, backends[0]
        port = PROXY_PORT[name]
        # An io_uring process's sockets are released by the kernel's ring
        # teardown work shortly after it exits: give the port a moment.
        for _ in range(50):
            if port_free(port):
                break
            time.sleep(0.1)
        if not port_free(port):
            raise SystemExit(f"port {port} is busy: stop whatever listens there")
        if name == "floor":
            s = Server("floor", [FLOOR, "--listen", f"127.0.0.1:{port}"] +
                       [x for b in backends for x in ("--backend", f"127.0.0.1:{b}")], self.proxy_cpus, self.work)
        elif name == "lbd" or name in LBD_VARIANTS or name == "lbd-base":
            conf = os.path.join(self.work, f"{name}.yaml")
            hist = "lbd-latency.hgrm" if name == "lbd" else f"{name}-latency.hgrm"
            with open(conf, "w") as f:
                f.write(lbd_conf(port, backends, os.path.join(self.work, hist), name, self.tls))
            env = dict(os.environ, RUST_LOG="warn")
            binary = LBD_BASE if name == "lbd-base" else LBD
            if not binary:
                raise SystemExit("lbd-base needs LBD_BASE_BIN=path")
            s = Server(name, [binary, "-c", conf, "--threads", "1"], self.proxy_cpus, self.work, env=env)
        elif name == "nginx":
            conf = os.path.join(self.work, "nginx-proxy.conf")
            with open(conf, "w") as f:
                f.write(nginx_proxy_conf(self.work, cpu_mask(self.proxy_cpus), port, backends, self.tls, self.a.h2))
            s = Server("nginx-proxy", ["nginx", "-p", self.work, "-e", f"{self.work}/nginx-proxy.err", "-c", conf],
                       self.proxy_cpus, self.work, stop_sig=signal.SIGTERM)
        elif name == "haproxy":
            conf = os.path.join(self.work, "haproxy.cfg")
            with open(conf, "w") as f:
                f.write(haproxy_conf(port, backends, self.tls, self.a.h2))
            s = Server("haproxy", ["haproxy", "-db", "-f", conf], self.proxy_cpus, self.work, stop_sig=signal.SIGTERM)
        elif name == "caddy":
            conf = os.path.join(self.work, "Caddyfile")
            with open(conf, "w") as f:
                f.write(caddy_conf(port, backends, self.tls))
            # One Go scheduler thread, as the others get one worker; HOME
            # and XDG dirs in the work dir (Caddy writes its storage there).
            env = dict(os.environ, GOMAXPROCS="1", HOME=self.work, XDG_DATA_HOME=self.work,
                       XDG_CONFIG_HOME=self.work)
            s = Server("caddy", ["caddy", "run", "--config", conf, "--adapter", "caddyfile"],
                       self.proxy_cpus, self.work, env=env, stop_sig=signal.SIGTERM)
        elif name == "pingora":
            # SIGINT: Pingora's fast shutdown (SIGTERM waits out a grace period).
            env = dict(os.environ, RUST_LOG="warn")
            s = Server("pingora", [PINGORA, f"127.0.0.1:{port}"] + [f"127.0.0.1:{b}" for b in backends],
                       self.proxy_cpus, self.work, env=env)
        else:
            raise ValueError(name)
        wait_port(port)
        time.sleep(0.2)
        for p in s.work_pids():
            allowed = cpus_allowed(p)
            if allowed != self.proxy_cpus:
                self.note(f"{name}: pid {p} may run on CPUs {allowed}, expected {self.proxy_cpus}")
        return s, port

    def note(self, msg):
        log("NOTE: " + msg)
        self.notes.append(msg)

    # load generators ----------------------------------------------------
    def wrk(self, port, duration, extra=()):
        cmd = ["taskset", "-c", self.load_cpus, "wrk", "-t1", "-c", str(self.a.connections), "-d", f"{duration}s",
               "--timeout", "2s", "-s", LUA] + list(extra) + [f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30).stdout
        m = re.search(r"^RESULT (.*)$", out, re.M)
        if not m:
            raise RuntimeError(f"wrk printed no RESULT line:\n{out}")
        kv = dict(x.split("=") for x in m.group(1).split())
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        r = {
            "requests": int(kv["requests"]),
            "rps": int(kv["requests"]) / (int(kv["duration_us"]) / 1e6),
            "p50_us": float(kv["p50_us"]), "p99_us": float(kv["p99_us"]), "p99.9_us": float(kv["p99.9_us"]),
            "percentiles_us": {p: float(kv[f"p{p}_us"]) for p in ("10", "25", "50", "75", "90", "95", "99", "99.9", "99.99")},
            "errors": sum(int(kv[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout")),
            "non2xx": int(non2xx.group(1)) if non2xx else int(kv["err_status"]),
        }
        return r

    def h2load_run(self, port, duration):
        """h2load over TLS (ALPN h2): 4 connections with 16 concurrent
        streams each, 64 requests in flight as with wrk's 64 connections."""
        cmd = ["taskset", "-c", self.load_cpus, "h2load", "-c", "4", "-m", "16", "-t", "1",
               "-D", str(duration), f"https://127.0.0.1:{port}/"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", out)
        t = re.search(r"finished in ([\d.]+)s", out)
        proto = re.search(r"Application protocol: (\S+)", out)
        if not m or not t:
            raise RuntimeError(f"h2load printed no summary:\n{out[-800:]}")
        if not proto or proto.group(1) != "h2":
            self.note(f"h2load on port {port} negotiated {proto.group(1) if proto else 'nothing'}, not h2")
        done, ok = int(m.group(3)), int(m.group(4))
        codes = re.search(r"status codes: (\d+) 2xx", out)
        mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
        scale = {"us": 1, "ms": 1e3, "s": 1e6}
        return {"requests": done, "rps": done / float(t.group(1)),
                "errors": int(m.group(5)) + int(m.group(6)) + int(m.group(7)),
                "non2xx": ok - (int(codes.group(1)) if codes else 0),
                "mean_us": float(mean.group(1)) * scale[mean.group(2)] if mean else None}

    def resume_run(self, port, duration):
        """A new TLS connection per request, each resuming the first
        connection's session: two `openssl s_time -reuse` clients (wrk
        resumes none). s_time prints one mark per connection, `r` when it
        was resumed."""
        cmd = ["taskset", "-c", self.load_cpus, "openssl", "s_time", "-connect", f"127.0.0.1:{port}",
               "-www", "/", "-reuse", "-time", str(duration)]
        t0 = time.time()
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
        outs = [p.communicate(timeout=duration + 60)[0] for p in procs]
        wall = time.time() - t0
        n = sum(int(m.group(1)) for o in outs for m in [re.search(r"(\d+) connections in [\d.]+s", o)] if m)
        marks = "".join(o.split("starting", 1)[-1] for o in outs)
        resumed = marks.count("r")
        if n == 0:
            raise RuntimeError(f"openssl s_time made no connection:\n{outs[0][-500:]}")
        if resumed < 0.95 * n:
            self.note(f"tls-resume on port {port}: only {resumed} of {n} connections resumed")
        return {"requests": n, "rps": n / wall, "errors": 0, "non2xx": 0, "resumed": resumed}

    def oha_run(self, port, duration, rate):
        cmd = ["taskset", "-c", self.load_cpus, self.oha, "-z", f"{duration}s", "-c", str(self.a.connections),
               "-q", str(rate), "--latency-correction", "--no-tui", "--output-format", "json",
               f"http://127.0.0.1:{port}/"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60).stdout
        j = json.loads(out)
        lp = j.get("latencyPercentiles", {})
        codes = j.get("statusCodeDistribution", {})
        errs = j.get("errorDistribution", {})
        ok = sum(v for k, v in codes.items() if k.startswith("2"))
        # In-flight requests cut by the deadline are not errors of the proxy.
        real_errs = sum(v for k, v in errs.items() if "deadline" not in k)
        return {
            "requests": sum(codes.values()),
            "rps": j["summary"]["requestsPerSec"],
            "p50_us": (lp.get("p50") or 0) * 1e6, "p99_us": (lp.get("p99") or 0) * 1e6,
            "p99.9_us": (lp.get("p99.9") or 0) * 1e6,
            "percentiles_us": {k[1:]: (v or 0) * 1e6 for k, v in lp.items()},
            "errors": real_errs, "error_kinds": errs,
            "non2xx": sum(codes.values()) - ok,
            "offered_rps": rate,
        }

    def measured(self, srv, fn):
        """Runs fn() and adds the proxy's CPU µs/request and peak RSS."""
        pids = srv.pids() if srv else []
        a = schedstat_ns(pids)
        ca, t0 = cpu_busy_ns(), time.time()
        r = fn()
        b = schedstat_ns(pids)
        cb, wall = cpu_busy_ns(), (time.time() - t0) * 1e9
        busy = lambda cpus: sum(cb.get(c, 0) - ca.get(c, 0) for c in cpus) / wall / len(cpus) * 100
        r["load_cpu_busy_pct"] = round(busy(cpu_list(self.load_cpus)), 1)
        r["proxy_cpu_busy_pct"] = round(busy(cpu_list(self.proxy_cpus)), 1)
        # Busy time on the proxy CPU that the proxy did not use: other work
        # (builds, tests) sharing the box. Above ~10% the run is noisy.
        r["proxy_cpu_foreign_pct"] = round(r["proxy_cpu_busy_pct"] - (b - a) / wall / len(cpu_list(self.proxy_cpus)) * 100, 1)
        if srv:
            r["cpu_us_per_req"] = (b - a) / 1000 / max(r["requests"], 1)
            r["peak_rss_kib"] = status_kib(pids, "VmHWM")
            if not srv.alive():
                self.note(f"{srv.name} died during a run (see {srv.logf.name})")
        return r

    def collect_lbd_histogram(self, srv, tag):
        """SIGUSR1 to lbd (never broadcast: HAProxy soft-stops on USR1); lbd
        writes the latency histogram of the interval since its previous dump
        to histogram_file. Called after the warmup (discarded) and after each
        measured run, so each dump covers exactly one run. Returns
        {"count", "percentiles_us", "file"} or None."""
        if not srv or srv.name != "lbd" or not srv.alive():
            return None
        path = os.path.join(self.work, "lbd-latency.hgrm")
        before = os.stat(path).st_mtime_ns if os.path.exists(path) else 0
        os.kill(srv.proc.pid, signal.SIGUSR1)
        t = time.time()
        while time.time() - t < 3:
            if os.path.exists(path) and os.stat(path).st_mtime_ns != before:
                break
            time.sleep(0.02)
        else:
            self.note(f"lbd wrote no histogram on SIGUSR1 ({tag})")
            return None
        with open(path) as f:
            text = f.read()
        self.hist_seq += 1
        keep = os.path.join(self.work, f"lbd-{self.hist_seq:03d}-{tag}.hgrm")
        with open(keep, "w") as f:
            f.write(text)
        return {"count": hgrm_count(text), "percentiles_us": hgrm_percentiles(text), "file": os.path.basename(keep)}

    # scenarios ----------------------------------------------------------
    def record(self, contender, scenario, runs, extra=None):
        med = {}
        for k in ("rps", "p50_us", "p99_us", "p99.9_us", "cpu_us_per_req", "peak_rss_kib",
                  "load_cpu_busy_pct", "proxy_cpu_busy_pct", "proxy_cpu_foreign_pct"):
            vals = [r[k] for r in runs if r.get(k) is not None]
            if vals:
                med[k] = statistics.median(vals)
                med[k + "_range"] = [min(vals), max(vals)]
        med["errors"] = sum(r.get("errors", 0) for r in runs)
        med["non2xx"] = sum(r.get("non2xx", 0) for r in runs)
        best = sorted(runs, key=lambda r: r.get("p99_us", 0))[len(runs) // 2] if runs else {}
        row = {"contender": contender, "scenario": scenario, "median": med, "runs": runs,
               "percentiles_us": best.get("percentiles_us", {})}
        if best.get("lbd_hist"):
            # lbd's own view of the same run (head read -> last byte written).
            row["lbd_hist"] = best["lbd_hist"]
        if extra:
            row.update(extra)
        self.results.append(row)
        m = med
        log(f"{scenario:12s} {contender:8s} rps={m.get('rps', 0):9.0f} p99={m.get('p99_us', 0):8.0f}us "
            f"cpu={m.get('cpu_us_per_req', 0):6.2f}us err={m['errors']} non2xx={m['non2xx']} "
            f"busy load/proxy/foreign={m.get('load_cpu_busy_pct')}/{m.get('proxy_cpu_busy_pct')}/"
            f"{m.get('proxy_cpu_foreign_pct')}%")
        return row

    def start_all(self, size):
        """Starts every contender for body `size` at once (each on its own
        port, idle while another is measured): runs are interleaved across
        contenders, so a slow phase of the VM (they come and go for tens of
        seconds here) hits every contender alike instead of one of them."""
        started = []
        try:
            for name in self.a.contenders:
                srv, port = self.start(name, size)
                started.append((name, srv, port))
        except BaseException:
            self.stop_all(started)
            raise
        return started

    def stop_all(self, started):
        for _, srv, _ in started:
            if srv:
                srv.stop()
                self.check_log(srv)

    def interleaved(self, started, scenario, run_fn, warmup_fn=None, extra=None):
        """Warms every contender up, then takes run i of every contender
        before run i+1 of any; records one row per contender."""
        for name, srv, port in started:
            if warmup_fn:
                warmup_fn(port)
            self.collect_lbd_histogram(srv, "warmup")
        runs = {name: [] for name, _, _ in started}
        for _ in range(self.a.runs):
            for name, srv, port in started:
                r = self.measured(srv, lambda: run_fn(port))
                r["lbd_hist"] = self.collect_lbd_histogram(srv, scenario)
                runs[name].append(r)
        for name, _, _ in started:
            self.record(name, scenario, runs[name], extra)

    def run(self):
        a = self.a
        self.start_origins()
        sizes = a.sizes.split(",") if a.sizes else ["small"] if a.quick else ["small", "1k", "64k"]
        sizes = [x for x in sizes if x != "none"]
        d = a.duration
        pre = "tls-" if self.tls else ""
        if a.h2:
            try:
                started = self.start_all("small")
                try:
                    self.interleaved(started, "h2-ka-small", lambda port: self.h2load_run(port, d),
                                     lambda port: self.h2load_run(port, a.warmup))
                finally:
                    self.stop_all(started)
            finally:
                for o in self.origins:
                    o.stop()
            return
        try:
            for size in sizes:
                started = self.start_all(size)
                try:
                    self.interleaved(started, f"{pre}ka-{size}", lambda port: self.wrk(port, d),
                                     lambda port: self.wrk(port, a.warmup))
                    if size == "small":
                        close = ["-H", "Connection: close"]
                        cd = 2 if a.quick else d
                        # quick: the keep-alive runs just warmed the servers up
                        self.interleaved(started, f"{pre}close-small", lambda port: self.wrk(port, cd, close),
                                         None if a.quick else (lambda port: self.wrk(port, a.warmup, close)))
                        if self.tls:
                            self.interleaved(started, "tls-resume-small", lambda port: self.resume_run(port, cd),
                                             lambda port: self.resume_run(port, 1))
                        if a.idle and not self.tls:
                            for name, srv, port in started:
                                self.idle(name, srv, port)
                finally:
                    self.stop_all(started)
            if not a.no_rate and not self.tls:
                self.rate_scenarios()
        finally:
            for o in self.origins:
                o.stop()

    def idle(self, name, srv, port):
        if srv is None:
            return
        pid = srv.work_pids()[0]
        out = subprocess.run(["taskset", "-c", self.load_cpus, sys.executable, os.path.join(BENCH, "idle_rss.py"),
                              str(pid), str(port), str(self.a.idle), "2" if self.a.quick else "3"],
                             capture_output=True, text=True, timeout=300)
        m = re.search(r"per_conn_kib=([-\d.]+)", out.stdout)
        if not m:
            self.note(f"idle_rss for {name} failed: {out.stdout.strip()} {out.stderr.strip()[-300:]}")
            return
        kv = dict(x.split("=") for x in out.stdout.split())
        row = {"contender": name, "scenario": f"idle-{self.a.idle}",
               "median": {"rss_per_conn_kib": float(m.group(1)), "peak_rss_kib": status_kib(srv.pids(), "VmHWM"),
                          "errors": 0, "non2xx": 0},
               "raw": kv, "runs": []}
        self.results.append(row)
        log(f"idle-{self.a.idle} {name:8s} per_conn={m.group(1)} KiB")

    def rate_scenarios(self):
        if not self.oha:
            self.note("oha not installed: fixed-rate latency scenarios skipped "
                      "(full mode installs it into bench/.tools; ~9 min)")
            return
        # Pingora is far slower than the others here: rates based on its max
        # would tell nothing about the rest, so it runs at theirs (and may
        # fall behind: see the '!' mark).
        # Issue 17's tail goal: 50% and 75% of lbd's own ka-small maximum
        # (the weakest proxy's when lbd is not a contender).
        ka = {r["contender"]: r["median"]["rps"] for r in self.results
              if r["scenario"] == "ka-small" and r["contender"] in PROXIES and r["contender"] in self.a.contenders
              and r["contender"] != "pingora"}
        base = ka.get("lbd") or (min(ka.values()) if ka else None)
        if self.a.rates:  # absolute rates given: scenario names say so
            plan = [(f"rate-{r}", r) for r in self.a.rates]
        elif base:
            plan = [(f"rate-{p}", int(round(base * p / 100, -2))) for p in ([50] if self.a.quick else [50, 75])]
        else:
            return
        started = self.start_all("small")
        try:
            d = 2 if self.a.quick else self.a.duration
            warm = None if self.a.quick else (lambda port: self.oha_run(port, 1, 1000))
            for i, (scenario, rate) in enumerate(plan):
                self.interleaved(started, scenario, lambda port: self.oha_run(port, d, rate),
                                 warm if i == 0 else None, {"offered_rps": rate})
        finally:
            self.stop_all(started)

    def check_log(self, srv):
        """Anything a contender logged (lbd runs with RUST_LOG=warn) is worth a look."""
        try:
            with open(srv.logf.name, errors="replace") as f:
                lines = [l.rstrip() for l in f if l.strip() and "listening on" not in l]
            open(srv.logf.name, "w").close()
        except OSError:
            return
        if lines:
            self.note(f"{srv.name} logged {len(lines)} line(s), first: " + " | ".join(lines[:3])[:400])


# ---------------------------------------------------------------- output

def fmt(v, nd=0):
    if v is None:
        return "-"
    return f"{v:,.{nd}f}"


def own_table(results):
    """lbd's SIGUSR1 histogram of the run reported in the table, beside the
    client's view of the same run: lbd counts from the request head read to
    the last response byte written, so the difference is the time in the
    kernel, the generator and the queue in front of lbd."""
    rows = [r for r in results if (r.get("lbd_hist") or {}).get("percentiles_us")]
    if not rows:
        return ""
    out = ["", "lbd's own latency histogram (SIGUSR1 dump of the same run) vs the client's, µs:",
           f"{'scenario':20s} {'requests':>9s} {'own p50':>8s} {'own p99':>8s} {'own p99.9':>9s}"
           f" {'client p50':>10s} {'client p99':>10s}"]
    for r in rows:
        h, m = r["lbd_hist"], r["median"]
        p = h["percentiles_us"]
        best = r.get("percentiles_us", {})
        out.append(f"{r['scenario']:20s} {h['count']:9d} {p.get('50', 0):8.0f} {p.get('99', 0):8.0f}"
                   f" {p.get('99.9', 0):9.0f} {best.get('50', m.get('p50_us', 0)):10.0f}"
                   f" {best.get('99', m.get('p99_us', 0)):10.0f}")
    return "\n".join(out)


def table(results):
    # floor opens a backend connection per client connection: in close-*
    # scenarios it does more work than a pooling proxy, so no ratio there.
    floor = {r["scenario"]: r["median"].get("cpu_us_per_req") for r in results
             if r["contender"] == "floor" and not r["scenario"].startswith("close")}
    nginx = {r["scenario"]: r["median"].get("cpu_us_per_req") for r in results if r["contender"] == "nginx"}
    hdr = ["scenario", "contender", "req/s", "p50 µs", "p99 µs", "p99.9 µs", "err", "non2xx", "CPU µs/req", "×floor",
           "×nginx", "peak RSS MiB", "RSS/idle conn KiB", "load CPU %", "noise %"]
    rows = []
    for r in results:
        m = r["median"]
        cpu = m.get("cpu_us_per_req")
        fl = floor.get(r["scenario"])
        ratio = cpu / fl if cpu and fl else None
        ng = nginx.get(r["scenario"])
        to_nginx = cpu / ng if cpu and ng else None
        rss = m.get("peak_rss_kib")
        label = r["scenario"] + (f" ({r['offered_rps']}/s)" if r.get("offered_rps") else "")
        if r.get("offered_rps") and m.get("rps", 0) < 0.97 * r["offered_rps"]:
            label += " !"  # the offered rate was not reached
        rows.append([label, r["contender"],
                     fmt(m.get("rps")), fmt(m.get("p50_us")), fmt(m.get("p99_us")), fmt(m.get("p99.9_us")),
                     str(m.get("errors", 0)), str(m.get("non2xx", 0)), fmt(cpu, 2), fmt(ratio, 2),
                     fmt(to_nginx, 2), fmt(rss / 1024 if rss else None, 1), fmt(m.get("rss_per_conn_kib"), 2),
                     fmt(m.get("load_cpu_busy_pct")), fmt(m.get("proxy_cpu_foreign_pct"))])
        r["median"]["cpu_ratio_to_floor"] = ratio
        r["median"]["cpu_ratio_to_nginx"] = to_nginx
    w = [max(len(str(x[i])) for x in rows + [hdr]) for i in range(len(hdr))]
    lines = ["  ".join(str(h).ljust(w[i]) if i < 2 else str(h).rjust(w[i]) for i, h in enumerate(hdr))]
    lines.append("  ".join("-" * x for x in w))
    for row in rows:
        lines.append("  ".join(str(c).ljust(w[i]) if i < 2 else str(c).rjust(w[i]) for i, c in enumerate(row)))
    return "\n".join(lines)


# Issue 17's goals: (label, scenario, contender over reference, field, at most).
GOALS = [
    ("1 small keep-alive vs floor", "ka-small", "floor", "cpu_us_per_req", 1.10),
    ("1 small keep-alive vs nginx", "ka-small", "nginx", "cpu_us_per_req", 0.85),
    ("2 tail at 50% of lbd's max vs HAProxy (client p99)", "rate-50", "haproxy", "p99_us", 1.0),
    ("2 tail at 75% of lbd's max vs HAProxy (client p99)", "rate-75", "haproxy", "p99_us", 1.0),
    ("3 new connection per request vs nginx", "close-small", "nginx", "cpu_us_per_req", 0.85),
    ("4 TLS keep-alive vs nginx", "tls-ka-small", "nginx", "cpu_us_per_req", 1.0),
    ("4 TLS full handshake per request vs nginx", "tls-close-small", "nginx", "cpu_us_per_req", 1.0),
    ("4 TLS resumed per request vs nginx", "tls-resume-small", "nginx", "cpu_us_per_req", 1.0),
    ("5 64 KiB responses vs HAProxy", "ka-64k", "haproxy", "cpu_us_per_req", 0.80),
    ("6 small keep-alive vs Caddy", "ka-small", "caddy", "cpu_us_per_req", None),
    ("   HTTP/2 over TLS vs nginx", "h2-ka-small", "nginx", "cpu_us_per_req", 1.0),
]


def goals_table(results):
    """lbd's ratio to the reference of each of issue 17's goals present in
    `results` (medians of the interleaved runs), and whether it is met."""
    by = {(r["scenario"].split(" ")[0], r["contender"]): r["median"] for r in results}
    out = []
    for label, scenario, ref, field, most in GOALS:
        a, b = by.get((scenario, "lbd"), {}).get(field), by.get((scenario, ref), {}).get(field)
        if not a or not b:
            continue
        ratio = a / b
        verdict = "-" if most is None else "met" if ratio <= most else "not met"
        goal = "" if most is None else f"≤ {most:.2f}"
        out.append(f"{label:52s} {scenario:17s} {field:15s} {a:10.2f} {b:10.2f} {ratio:6.2f} {goal:>6s} {verdict}")
    if not out:
        return ""
    head = (f"{'goal (issue 17)':52s} {'scenario':17s} {'field':15s} {'lbd':>10s} {'reference':>10s} "
            f"{'ratio':>6s} {'goal':>6s} verdict")
    return "\n".join(["", head, "-" * len(head)] + out)


COLORS = {"direct": "#888888", "floor": "#2ca02c", "lbd": "#d62728", "nginx": "#1f77b4", "haproxy": "#ff7f0e",
          "pingora": "#9467bd", "caddy": "#17becf"}


def svg_plot(results, path):
    """Latency by percentile, one line per contender, one panel per scenario.
    x = percentile on the 1/(1-p) log scale (HdrHistogram style), y = µs (log)."""
    import math
    scen = []
    for r in results:
        if r.get("percentiles_us") and r["scenario"] not in scen:
            scen.append(r["scenario"])
    W, H, ML, MR, MT, MB = 520, 330, 70, 110, 40, 50
    cols = 2
    rows = (len(scen) + cols - 1) // cols
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W * cols}" height="{H * rows}" '
           f'font-family="sans-serif" font-size="11">', f'<rect width="100%" height="100%" fill="white"/>']
    xs = [("50", 50), ("90", 90), ("99", 99), ("99.9", 99.9), ("99.99", 99.99)]
    def xv(p):
        return math.log10(1 / (1 - min(p, 99.999) / 100))
    xmax = xv(99.99)
    for i, sc in enumerate(scen):
        ox, oy = (i % cols) * W, (i // cols) * H
        rs = [r for r in results if r["scenario"] == sc and r.get("percentiles_us")]
        vals = [v for r in rs for v in r["percentiles_us"].values() if v and v > 0]
        if not vals:
            continue
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = 10 ** math.ceil(math.log10(max(vals)))
        pw, ph = W - ML - MR, H - MT - MB
        def X(p):
            return ox + ML + pw * xv(p) / xmax
        def Y(v):
            return oy + MT + ph * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
        title = sc + (f" (offered {rs[0]['offered_rps']}/s, oha)" if rs[0].get("offered_rps") else " (wrk -c64, closed loop)")
        out.append(f'<text x="{ox + W / 2}" y="{oy + 20}" text-anchor="middle" font-size="13">{title}</text>')
        out.append(f'<rect x="{ox + ML}" y="{oy + MT}" width="{pw}" height="{ph}" fill="none" stroke="#000"/>')
        d = lo
        while d <= hi * 1.0001:
            y = Y(d)
            out.append(f'<line x1="{ox + ML}" x2="{ox + ML + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
            lab = f"{d / 1000:g} ms" if d >= 1000 else f"{d:g} µs"
            out.append(f'<text x="{ox + ML - 5}" y="{y + 4:.1f}" text-anchor="end">{lab}</text>')
            d *= 10
        for lab, p in xs:
            x = X(p)
            out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{oy + MT}" y2="{oy + MT + ph}" stroke="#ddd"/>')
            out.append(f'<text x="{x:.1f}" y="{oy + MT + ph + 15}" text-anchor="middle">p{lab}</text>')
        out.append(f'<text x="{ox + ML + pw / 2}" y="{oy + H - 10}" text-anchor="middle">percentile</text>')
        for j, r in enumerate(rs):
            pts = sorted((float(k), v) for k, v in r["percentiles_us"].items() if v and v > 0 and float(k) >= 50)
            c = COLORS.get(r["contender"], "#000")
            poly = " ".join(f"{X(p):.1f},{Y(v):.1f}" for p, v in pts)
            out.append(f'<polyline points="{poly}" fill="none" stroke="{c}" stroke-width="2"/>')
            for p, v in pts:
                out.append(f'<circle cx="{X(p):.1f}" cy="{Y(v):.1f}" r="2.5" fill="{c}"/>')
            ly = oy + MT + 12 + 16 * j
            out.append(f'<line x1="{ox + W - MR + 10}" x2="{ox + W - MR + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{c}" stroke-width="2"/>')
            out.append(f'<text x="{ox + W - MR + 34}" y="{ly}">{r["contender"]}</text>')
        # lbd's own SIGUSR1 histogram of the same run, dashed, same axes.
        own = [r for r in rs if (r.get("lbd_hist") or {}).get("percentiles_us")]
        for r in own:
            pts = sorted((float(k), v) for k, v in r["lbd_hist"]["percentiles_us"].items()
                         if v and v > 0 and float(k) >= 50)
            pts = [(p, min(max(v, lo), hi)) for p, v in pts]
            c = COLORS.get(r["contender"], "#000")
            poly = " ".join(f"{X(p):.1f},{Y(v):.1f}" for p, v in pts)
            out.append(f'<polyline points="{poly}" fill="none" stroke="{c}" stroke-width="1.5" stroke-dasharray="5,3"/>')
            ly = oy + MT + 12 + 16 * len(rs)
            out.append(f'<line x1="{ox + W - MR + 10}" x2="{ox + W - MR + 30}" y1="{ly - 4}" y2="{ly - 4}" stroke="{c}" stroke-width="1.5" stroke-dasharray="5,3"/>')
            out.append(f'<text x="{ox + W - MR + 34}" y="{ly}">lbd (own)</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def pingora_version():
    """The pingora crate version bench/pingora-lb is locked to."""
    try:
        with open(os.path.join(PINGORA_DIR, "Cargo.lock")) as f:
            m = re.search(r'name = "pingora"\nversion = "([^"]+)"', f.read())
        return m.group(1) if m else None
    except OSError:
        return None


def machine():
    def cmd(c):
        try:
            p = subprocess.run(c, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except Exception:
            return None
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    oha = shutil.which("oha") or os.path.join(BENCH, ".tools", "bin", "oha")
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "nginx": cmd(["nginx", "-v"]), "haproxy": cmd(["haproxy", "-v"]), "wrk": cmd(["wrk", "-v"]),
            "oha": cmd([oha, "--version"]) if os.path.exists(oha) else None,
            "pingora": pingora_version() if os.path.exists(PINGORA) else None,
            "lbd_commit": cmd(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"]),
            "lbd_dirty": bool(cmd(["git", "-C", ROOT, "status", "--porcelain", "src", "Cargo.toml"]))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="ka-small, close-small, 1k idle conns, 1 run: < 60 s")
    ap.add_argument("--cpus", default="1:0", help="PROXY_CPUS:LOAD_CPUS, taskset lists (default 1:0)")
    ap.add_argument("--runs", type=int)
    ap.add_argument("--variants", action="store_true",
                    help="add lbd's balancing and routing variants (" + ",".join(LBD_VARIANTS) + ") as contenders")
    ap.add_argument("--duration", type=int, help="seconds per measured run")
    ap.add_argument("--warmup", type=int)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--idle", type=int, help="idle keep-alive connections (0 = skip)")
    ap.add_argument("--origin", choices=["nginx", "rust"], default="nginx")
    ap.add_argument("--contenders", help="comma-separated (default: " + ",".join(CONTENDERS) +
                    ", plus pingora in a full run when bench/pingora-lb is built)")
    ap.add_argument("--pingora", action="store_true",
                    help="add pingora to the contenders, also in --quick (bench/run.sh --pingora builds it)")
    ap.add_argument("--no-rate", action="store_true", help="skip the oha fixed-rate scenarios")
    ap.add_argument("--h2", action="store_true",
                    help="HTTP/2 over TLS instead (implies --tls): h2load, 4 connections x 16 streams, lbd, nginx "
                         "(listen ... ssl http2) and haproxy (alpn h2,http/1.1), HTTP/1.1 to the origins: h2-ka-small")
    ap.add_argument("--tls", action="store_true",
                    help="TLS listeners (one ECDSA P-256 certificate for all; lbd, nginx, haproxy; plain origins): "
                         "tls-ka-* and tls-close-small (a full handshake per request: wrk resumes no session)")
    ap.add_argument("--rates", type=lambda v: [int(x) for x in v.split(",")],
                    help="absolute oha rates (req/s), instead of 50/75%% of lbd's ka-small max")
    ap.add_argument("--sizes", help="body sizes, comma-separated (default small in --quick, else small,1k,64k)")
    ap.add_argument("--out", default=os.path.join(BENCH, "results"))
    ap.add_argument("--render", metavar="JSON", help="only print the table and redraw the SVG of a results file")
    a = ap.parse_args()
    if a.h2:
        a.tls = True
    if a.render:
        with open(a.render) as f:
            doc = json.load(f)
        print(table(doc["results"]))
        if own_table(doc["results"]):
            print(own_table(doc["results"]))
        if goals_table(doc["results"]):
            print(goals_table(doc["results"]))
        for n in doc.get("notes", []):
            print("note:", n)
        svg_plot(doc["results"], os.path.splitext(a.render)[0] + ".svg")
        return
    pingora_built = os.access(PINGORA, os.X_OK)
    if a.contenders:
        a.contenders = a.contenders.split(",")
    elif a.tls:
        a.contenders = ["lbd", "nginx", "haproxy", "caddy"]
    else:
        a.contenders = list(CONTENDERS)
        if pingora_built and not a.quick:
            a.contenders.append("pingora")
        elif not a.quick and not a.pingora:
            log("pingora not built, so not a contender (bench/run.sh --pingora builds bench/pingora-lb, about 5 minutes)")
    if a.pingora and "pingora" not in a.contenders:
        a.contenders.append("pingora")
    if a.variants:
        a.contenders += [v for v in LBD_VARIANTS if v not in a.contenders]
    unknown = [c for c in a.contenders if c != "direct" and c not in PROXY_PORT]
    if unknown:
        ap.error(f"unknown contender(s) {','.join(unknown)}; known: direct,{','.join(PROXY_PORT)}")
    if "caddy" in a.contenders and not shutil.which("caddy"):
        a.contenders.remove("caddy")
        log("caddy not installed, so not a contender (Debian: apt-get install caddy)")
    skipped = []
    if "pingora" in a.contenders and not pingora_built:
        a.contenders.remove("pingora")
        skipped.append(f"pingora skipped: {os.path.relpath(PINGORA, ROOT)} is not built "
                       "(bench/run.sh --pingora builds it, about 5 minutes)")
    if a.quick:
        a.runs, a.duration, a.warmup = a.runs or 1, a.duration or 3, a.warmup or 1
        a.idle = 1000 if a.idle is None else a.idle
    else:
        a.runs, a.duration, a.warmup = a.runs or 3, a.duration or 5, a.warmup or 2
        # 10k idle connections need 2 fds each in floor (client + backend).
        a.idle = min(10000, (nofile_limit() - 2000) // 2) if a.idle is None else a.idle
    t0 = time.time()
    b = Bench(a)
    for n in skipped:
        b.note(n)
    log(f"workdir {b.work}; proxy on CPU {b.proxy_cpus}, load+origins on CPU {b.load_cpus}")
    b.run()
    t = table(b.results)
    print(t)
    own = own_table(b.results)
    if own:
        print(own)
    goals = goals_table(b.results)
    if goals:
        print(goals)
    print("load CPU % = busy time of the generator+origin CPU; noise % = busy time on the proxy CPU not used by\n"
          "the proxy (other work on the box; above ~10% the row is disturbed). ×floor = CPU/request over floor's in\n"
          "the same scenario (none for close-small: floor opens a backend connection per client, so it is no floor there).\n"
          "'!' after a rate: fewer than 97% of the offered requests/s were served (on 2 vCPUs usually because oha and\n"
          "the origins saturate the load CPU: see load CPU %); its latencies are queueing, not the proxy.")
    for n in b.notes:
        print("note:", n)
    os.makedirs(a.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    mode = ("h2-" if a.h2 else "tls-" if a.tls else "") + ("quick" if a.quick else "full")
    doc = {"when": stamp, "mode": mode, "elapsed_s": round(time.time() - t0, 1), "machine": machine(),
           "settings": {k: v for k, v in vars(a).items() if k != "out"}, "notes": b.notes, "results": b.results}
    # latest.json is the latest full run (what bench/results/ is committed
    # with); a quick run writes latest-quick.json and does not replace it.
    for name in (f"{stamp}-{mode}.json", f"latest-{mode}.json") + (("latest.json",) if mode == "full" else ()):
        with open(os.path.join(a.out, name), "w") as f:
            json.dump(doc, f, indent=1)
    svg = os.path.join(a.out, f"latency-{mode}.svg" if a.tls else "latency-quick.svg" if a.quick else "latency.svg")
    svg_plot(b.results, svg)
    with open(os.path.join(a.out, f"latest-{mode}.txt" if a.tls else "latest-quick.txt" if a.quick else "latest.txt"), "w") as f:
        f.write(t + "\n" + (own + "\n" if own else "") + (goals + "\n" if goals else "")
                + "".join(f"note: {n}\n" for n in b.notes))
    log(f"done in {time.time() - t0:.0f}s; wrote {a.out}/{stamp}-{mode}.json and {svg}")
    shutil.rmtree(b.work, ignore_errors=True)


if __name__ == "__main__":
    main()
