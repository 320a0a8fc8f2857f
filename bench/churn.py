#!/usr/bin/env python3
"""Backend-set churn under load: what 1,000 admin-API updates cost lbd.

  bench/churn.py [--runs 3 | --quick] [--duration 10] [--updates 1000] [--connections 32]
                 [--control 3,4|none] [--threads 2] [--cpus PROXY:LOAD] [--lbd PATH] [--out DIR]

Four examples/origin processes (A, B, C, D; 17-byte body, as bench.py's
`small`) and one lbd with `--threads 2`, group `web` = [A, B] (no health
checks, round robin), admin API on 127.0.0.1. wrk -t1 -c`--connections`
keep-alive load for `--duration` seconds per run, the modes interleaved
(static, churn, static3, static4, static, churn, ...: `--runs` rounds, one
lbd process for all of them):

  static   the backend set stays [A, B]
  churn    a thread performs `--updates` backend-set updates spread evenly
           over the run (update k at (k+1)/(updates+1) of the duration):
           add C, add D, remove C, remove D, add C, ... so the set goes
           2 -> 3 -> 4 -> 3 -> 2 members (3 on average); `POST
           /upstreams/web/backends` must answer 201, `DELETE
           /upstreams/web/backends/127.0.0.1%3AP` 200. Each update is a new
           connection to the admin port (it closes after one request).
           1,000 is a multiple of 4: every churn run ends at [A, B].
  static3  controls (`--control`): the set held at [A, B, C] / [A, B, C, D]
  static4  through the same API before the run (outside the measured
           window), no updates during it. More members means more origin
           processes sharing the load CPU, which changes req/s and lbd's
           CPU per request by itself; churn ÷ static3 (the same 3 members
           on average) is the cost of the updates proper, churn ÷ static
           what the scenario as specified costs.

Per run: wrk's request count and req/s, socket errors and non-2xx
(both must be 0, or the run's verdict is FAIL), updates done / answered
with the expected status, admin round trip (p50/p99/max) and lateness
against the schedule, and lbd's CPU time over the load window:
utime+stime of /proc/PID/stat (all threads: the workers, the admin thread,
everything) read just before wrk starts and just after it exits and the
update thread has finished -> CPU µs per request. The same from
/proc/PID/task/*/schedstat (ns, bench.py's source) as a cross-check, the
per-thread split (workers vs lbd-admin), lbd's RSS after the run, the
share of origin CPU spent in C and D (proof that added backends got
traffic), the update thread's own CPU (it runs on the load CPUs, beside
wrk), the busy % of the proxy and load CPUs (/proc/stat), and "noise %":
busy time on the proxy CPUs that lbd did not use (other work on the box).

Layout (bench.py's convention): lbd alone on the PROXY CPUs (default CPU
1), wrk, the origins and this script (hence the update thread) on the LOAD
CPUs (default CPU 0). lbd pins worker i to the i-th CPU of the set it was
started on, modulo its size: with `--cpus 1:0` both workers share CPU 1,
so the CPU per request is comparable with bench.py's one-worker figures
and the generator never competes with lbd; on a 4-core box `--cpus 2-3:0-1`
gives each worker a core of its own. The placement of every lbd thread
(name, Cpus_allowed_list) is recorded in the JSON.

Writes bench/results/churn-YYYYmmdd-HHMMSS.json, churn-latest.json and
churn-latest.txt (the table). Exit status 1 if any run's verdict is FAIL.
"""
import argparse
import datetime
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (helpers: Server, schedstat_ns, wait_port, cpu_busy_ns, ...)

# Away from bench.py's (18081-18086, 16188-16196) and ws.py's ports.
ORIGIN_PORTS = (18291, 18292, 18293, 18294)
LBD_PORT, ADMIN_PORT = 16390, 16391
HZ = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"[churn {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def lbd_conf(threads):
    static = ", ".join(f'"127.0.0.1:{p}"' for p in ORIGIN_PORTS[:2])
    return f"""threads: {threads}
listeners:
  - address: 127.0.0.1:{LBD_PORT}
upstreams:
  web:
    backends: [{static}]
upstream_keepalive_pool_size: 128
limits:
  keepalive_requests: 100000000
admin:
  address: 127.0.0.1:{ADMIN_PORT}
"""


# ---------------------------------------------------------------- /proc

def stat_ticks(path):
    """utime + stime (clock ticks) of a /proc/.../stat file."""
    with open(path) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # fields 14 and 15 of the whole line


def proc_cpu_s(pid):
    """Process CPU (all threads, live and exited) from /proc/PID/stat, s."""
    return stat_ticks(f"/proc/{pid}/stat") / HZ


def threads(pid):
    """{tid: (comm, cpu s, Cpus_allowed_list)} of every thread of pid."""
    out = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        base = f"/proc/{pid}/task/{t}"
        try:
            with open(f"{base}/comm") as f:
                comm = f.read().strip()
            cpu = stat_ticks(f"{base}/stat") / HZ
            allowed = "?"
            with open(f"{base}/status") as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        allowed = line.split()[1]
            out[int(t)] = (comm, cpu, allowed)
        except OSError:
            pass
    return out


def by_role(before, after):
    """CPU s per thread role over a window: workers, admin, other."""
    roles = {}
    for tid, (comm, cpu, _) in after.items():
        d = cpu - before.get(tid, (comm, 0.0, ""))[1]
        role = "workers" if comm.startswith("lbd-worker") else "admin" if comm == "lbd-admin" else "other"
        roles[role] = roles.get(role, 0.0) + d
    return {k: round(v, 3) for k, v in roles.items()}


# ---------------------------------------------------------------- admin API

def admin(method, path, body=None, timeout=5):
    """One admin request on a fresh connection: (status, body text, seconds)."""
    t = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", ADMIN_PORT, timeout=timeout)
    try:
        hdrs = {"Content-Type": "application/json"} if body is not None else {}
        c.request(method, path, body=body, headers=hdrs)
        r = c.getresponse()
        text = r.read().decode(errors="replace")
        return r.status, text, time.monotonic() - t
    finally:
        c.close()


def update(k):
    """The k-th update of the cycle add C, add D, remove C, remove D:
    (method, path, body, expected status, description)."""
    port = ORIGIN_PORTS[2 + (k % 2)]
    addr = f"127.0.0.1:{port}"
    if k % 4 < 2:
        return ("POST", "/upstreams/web/backends", json.dumps({"address": addr, "weight": 1}), 201, f"add {addr}")
    return ("DELETE", f"/upstreams/web/backends/127.0.0.1%3A{port}", None, 200, f"remove {addr}")


def members():
    s, text, _ = admin("GET", "/upstreams")
    if s != 200:
        raise RuntimeError(f"GET /upstreams answered {s}: {text[:200]}")
    doc = json.loads(text)
    web = next(g for g in doc["upstreams"] if g["name"] == "web")
    return sorted(b["address"] for b in web["backends"])


class Churn(threading.Thread):
    """Performs n updates at t0 + (k+1) * duration / (n+1), k = 0..n-1."""

    def __init__(self, n, duration, t0):
        super().__init__(daemon=True)
        self.n, self.duration, self.t0 = n, duration, t0
        self.done = self.ok = 0
        self.latency = []   # s per update
        self.late = []      # s behind schedule at the start of each update
        self.ends = []      # monotonic end of each update
        self.bad = []       # first few unexpected answers

    def run(self):
        c0 = time.thread_time()
        self.run_updates()
        self.cpu_s = time.thread_time() - c0  # this thread's CPU, on the load CPUs

    def run_updates(self):
        for k in range(self.n):
            at = self.t0 + (k + 1) * self.duration / (self.n + 1)
            now = time.monotonic()
            if at > now:
                time.sleep(at - now)
            self.late.append(max(0.0, time.monotonic() - at))
            method, path, body, want, what = update(k)
            try:
                s, text, dt = admin(method, path, body)
            except OSError as e:
                s, text, dt = None, repr(e), 0.0
            self.done += 1
            self.ends.append(time.monotonic())
            self.latency.append(dt)
            if s == want:
                self.ok += 1
            elif len(self.bad) < 5:
                self.bad.append(f"update {k} ({what}): {s} {text.strip()[:200]}")


# ---------------------------------------------------------------- load

def wrk_cmd(load_cpus, conns, duration):
    return ["taskset", "-c", load_cpus, "wrk", "-t1", "-c", str(conns), "-d", f"{duration}s",
            "--timeout", "2s", "-s", bench.LUA, f"http://127.0.0.1:{LBD_PORT}/"]


def parse_wrk(out):
    m = re.search(r"^RESULT (.*)$", out, re.M)
    if not m:
        raise RuntimeError(f"wrk printed no RESULT line:\n{out}")
    kv = dict(x.split("=") for x in m.group(1).split())
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "requests": int(kv["requests"]),
        "rps": int(kv["requests"]) / (int(kv["duration_us"]) / 1e6),
        "p50_us": float(kv["p50_us"]), "p99_us": float(kv["p99_us"]), "p99.9_us": float(kv["p99.9_us"]),
        "errors": sum(int(kv[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout")),
        "error_kinds": {k[4:]: int(kv[k]) for k in ("err_connect", "err_read", "err_write", "err_timeout")},
        "non2xx": int(non2xx.group(1)) if non2xx else int(kv["err_status"]),
    }


def pct(xs, p):
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


class Rig:
    def __init__(self, a):
        self.a = a
        self.proxy_cpus, self.load_cpus = a.cpus.split(":")
        self.work = tempfile.mkdtemp(prefix="lbd-churn-")
        self.origins = []
        self.lbd = None
        self.notes = []

    def note(self, msg):
        log("NOTE: " + msg)
        self.notes.append(msg)

    def start(self):
        for p in ORIGIN_PORTS + (LBD_PORT, ADMIN_PORT):
            if not bench.port_free(p):
                raise SystemExit(f"port {p} is busy: stop whatever listens there")
        for i, p in enumerate(ORIGIN_PORTS):
            self.origins.append(bench.Server(f"origin-{'abcd'[i]}", [bench.ORIGIN, "--port", str(p), "--name", "abcd"[i],
                                                                    "--body-size", str(bench.BODY_BYTES["small"])],
                                             self.load_cpus, self.work))
        for p in ORIGIN_PORTS:
            bench.wait_port(p)
        conf = os.path.join(self.work, "lbd.yaml")
        with open(conf, "w") as f:
            f.write(lbd_conf(self.a.threads))
        env = dict(os.environ, RUST_LOG="warn")
        self.lbd = bench.Server("lbd", [self.a.lbd, "-c", conf, "--threads", str(self.a.threads)],
                                self.proxy_cpus, self.work, env=env)
        bench.wait_port(LBD_PORT)
        bench.wait_port(ADMIN_PORT)
        time.sleep(0.2)
        self.pid = self.lbd.proc.pid
        self.placement = [{"tid": t, "name": c, "cpus_allowed": al} for t, (c, _, al) in sorted(threads(self.pid).items())]
        workers = [p for p in self.placement if p["name"].startswith("lbd-worker")]
        if len(workers) != self.a.threads:
            self.note(f"lbd runs {len(workers)} worker threads, expected {self.a.threads}")
        for p in self.placement:
            if not set(bench.cpu_list(p["cpus_allowed"])) <= set(bench.cpu_list(self.proxy_cpus)):
                self.note(f"lbd thread {p['name']} may run on CPUs {p['cpus_allowed']}, expected within {self.proxy_cpus}")
        log("lbd threads: " + ", ".join(f"{p['name']}@{p['cpus_allowed']}" for p in self.placement))
        want = [f"127.0.0.1:{p}" for p in ORIGIN_PORTS[:2]]
        if members() != want:
            raise SystemExit(f"GET /upstreams: web is {members()}, expected {want}")

    def stop(self):
        if self.lbd:
            self.lbd.stop()
            try:
                with open(self.lbd.logf.name, errors="replace") as f:
                    lines = [l.rstrip() for l in f if l.strip() and "listening on" not in l]
                if lines:
                    self.note(f"lbd logged {len(lines)} line(s), first: " + " | ".join(lines[:3])[:400])
            except OSError:
                pass
        for o in self.origins:
            o.stop()

    def set_static(self, n):
        """Holds web at its first n origins (outside any load window)."""
        want = [f"127.0.0.1:{p}" for p in ORIGIN_PORTS[:n]]
        have = members()
        for p in ORIGIN_PORTS:
            addr = f"127.0.0.1:{p}"
            if addr in want and addr not in have:
                s, text, _ = admin("POST", "/upstreams/web/backends", json.dumps({"address": addr, "weight": 1}))
            elif addr not in want and addr in have:
                s, text, _ = admin("DELETE", f"/upstreams/web/backends/127.0.0.1%3A{p}")
            else:
                continue
            if s not in (200, 201):
                raise RuntimeError(f"admin answered {s} setting web to {want}: {text[:200]}")
        if members() != want:
            raise RuntimeError(f"web is {members()}, expected {want}")
        time.sleep(0.2)  # every worker takes the set up within a 50 ms tick

    def run_once(self, mode, duration, updates):
        """One load window; returns the run's record."""
        self.set_static(int(mode[6:] or 2) if mode.startswith("static") else 2)
        opids = [o.proc.pid for o in self.origins]
        o0 = [proc_cpu_s(p) for p in opids]
        th0 = threads(self.pid)
        c0, s0 = proc_cpu_s(self.pid), bench.schedstat_ns([self.pid])
        b0, w0 = bench.cpu_busy_ns(), time.monotonic()
        wrk = subprocess.Popen(wrk_cmd(self.load_cpus, self.a.connections, duration),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        churn = None
        if mode == "churn":
            churn = Churn(updates, duration, time.monotonic())
            churn.start()
        out, err = wrk.communicate(timeout=duration + 30)
        wrk_end = time.monotonic()
        if churn:
            churn.join(timeout=60)
        c1, s1 = proc_cpu_s(self.pid), bench.schedstat_ns([self.pid])
        b1, wall = bench.cpu_busy_ns(), time.monotonic() - w0
        th1 = threads(self.pid)
        o1 = [proc_cpu_s(p) for p in opids]
        r = parse_wrk(out)
        if err.strip():
            r["wrk_stderr"] = err.strip()[-400:]
        cpu = c1 - c0
        r["mode"] = mode
        r["lbd_cpu_s"] = round(cpu, 3)
        r["cpu_us_per_req"] = cpu * 1e6 / max(r["requests"], 1)
        r["cpu_us_per_req_schedstat"] = (s1 - s0) / 1000 / max(r["requests"], 1)
        r["lbd_cpu_by_thread_s"] = by_role(th0, th1)
        r["lbd_rss_kib"] = bench.status_kib([self.pid], "VmRSS")
        od = [b - a for a, b in zip(o0, o1)]
        r["origin_cpu_s"] = {"abcd"[i]: round(d, 3) for i, d in enumerate(od)}
        r["churned_origins_cpu_pct"] = round(100 * sum(od[2:]) / max(sum(od), 1e-9), 1)
        proxy = bench.cpu_list(self.proxy_cpus)
        busy = sum(b1.get(c, 0) - b0.get(c, 0) for c in proxy) / 1e9
        r["proxy_cpu_busy_pct"] = round(100 * busy / wall / len(proxy), 1)
        r["noise_pct"] = round(100 * (busy - (s1 - s0) / 1e9) / wall / len(proxy), 1)
        load = bench.cpu_list(self.load_cpus)
        r["load_cpu_busy_pct"] = round(100 * sum(b1.get(c, 0) - b0.get(c, 0) for c in load) / 1e9 / wall / len(load), 1)
        problems = []
        if r["errors"]:
            problems.append(f"{r['errors']} socket errors {r['error_kinds']}")
        if r["non2xx"]:
            problems.append(f"{r['non2xx']} non-2xx responses")
        if not self.lbd.alive():
            problems.append("lbd died")
        if churn:
            r["updates"] = churn.done
            r["updates_ok"] = churn.ok
            r["updates_in_window"] = sum(1 for t in churn.ends if t <= wrk_end)
            r["updates_per_s"] = churn.done / duration
            r["updater_cpu_s"] = round(churn.cpu_s, 3)
            r["admin_ms"] = {"p50": round(pct(churn.latency, 50) * 1e3, 2), "p99": round(pct(churn.latency, 99) * 1e3, 2),
                             "max": round(max(churn.latency) * 1e3, 2)} if churn.latency else {}
            r["late_ms_max"] = round(max(churn.late) * 1e3, 2) if churn.late else None
            if churn.bad:
                r["bad_updates"] = churn.bad
            if churn.done != updates or churn.ok != updates:
                problems.append(f"{churn.ok}/{updates} updates answered as expected ({churn.done} done): "
                                + "; ".join(churn.bad[:2]))
            if r["updates_in_window"] < updates:
                problems.append(f"only {r['updates_in_window']}/{updates} updates finished within the load window")
            final = members()
            r["members_after"] = final
            if final != [f"127.0.0.1:{p}" for p in ORIGIN_PORTS[:2]]:
                problems.append(f"web is {final} after the run, expected the two static backends")
            if r["churned_origins_cpu_pct"] < 1:
                problems.append("origins C and D got (almost) no traffic: were the updates taken up?")
        r["verdict"] = "FAIL: " + "; ".join(problems) if problems else "ok"
        return r


def summary(runs, mode):
    rs = [r for r in runs if r["mode"] == mode]
    med = lambda k: statistics.median(r[k] for r in rs) if rs else None
    s = {"runs": len(rs), "rps": med("rps"), "cpu_us_per_req": med("cpu_us_per_req"),
         "cpu_us_per_req_schedstat": med("cpu_us_per_req_schedstat"),
         "errors": sum(r["errors"] for r in rs), "non2xx": sum(r["non2xx"] for r in rs),
         "failed_runs": sum(1 for r in rs if r["verdict"] != "ok")}
    if mode == "churn" and rs:
        s["updates"] = sum(r["updates"] for r in rs)
        s["updates_ok"] = sum(r["updates_ok"] for r in rs)
        s["updates_per_s"] = med("updates_per_s")
        s["admin_cpu_s"] = statistics.median(r["lbd_cpu_by_thread_s"].get("admin", 0) for r in rs)
    return s


def table(runs, summ, ratio, modes):
    hdr = ["run", "mode", "requests", "req/s", "p99 µs", "err", "non2xx", "updates ok", "upd/s", "admin p50/p99 ms",
           "lbd CPU s", "workers/admin s", "CPU µs/req", "schedstat", "C+D origin %", "RSS MiB", "proxy/load CPU %", "noise %", "verdict"]
    rows = []
    for i, r in enumerate(runs):
        th = r["lbd_cpu_by_thread_s"]
        rows.append([str(i // len(modes) + 1), r["mode"], f"{r['requests']:,}", f"{r['rps']:,.0f}", f"{r['p99_us']:,.0f}",
                     str(r["errors"]), str(r["non2xx"]),
                     f"{r['updates_ok']}/{r['updates']}" if "updates" in r else "-",
                     f"{r['updates_per_s']:.0f}" if "updates" in r else "-",
                     f"{r['admin_ms'].get('p50', 0):.2f}/{r['admin_ms'].get('p99', 0):.2f}" if r.get("admin_ms") else "-",
                     f"{r['lbd_cpu_s']:.2f}", f"{th.get('workers', 0):.2f}/{th.get('admin', 0):.2f}",
                     f"{r['cpu_us_per_req']:.2f}", f"{r['cpu_us_per_req_schedstat']:.2f}",
                     f"{r['churned_origins_cpu_pct']:.1f}", f"{r['lbd_rss_kib'] / 1024:.1f}",
                     f"{r['proxy_cpu_busy_pct']:.0f}/{r['load_cpu_busy_pct']:.0f}", f"{r['noise_pct']:.1f}",
                     r["verdict"]])
    for mode in modes:
        s = summ[mode]
        rows.append(["median", mode, "", f"{s['rps']:,.0f}", "", str(s["errors"]), str(s["non2xx"]),
                     f"{s['updates_ok']}/{s['updates']}" if "updates" in s else "-",
                     f"{s['updates_per_s']:.0f}" if "updates" in s else "-", "", "", "",
                     f"{s['cpu_us_per_req']:.2f}", f"{s['cpu_us_per_req_schedstat']:.2f}", "", "", "", "",
                     "ok" if not s["failed_runs"] else f"{s['failed_runs']} FAILED"])
    w = [max(len(x[i]) for x in rows + [hdr]) for i in range(len(hdr))]
    left = {0, 1, len(hdr) - 1}
    fmt = lambda row: "  ".join(c.ljust(w[i]) if i in left else c.rjust(w[i]) for i, c in enumerate(row)).rstrip()
    lines = [fmt(hdr), "  ".join("-" * x for x in w)] + [fmt(r) for r in rows]
    lines.append("")
    for base, q in ratio.items():
        lines.append(f"churn ÷ {base} (medians): CPU per request {q['cpu_per_req']:.3f}×, "
                     f"req/s {q['rps']:.3f}×; pairwise (run i churn ÷ run i {base}, median): "
                     f"CPU per request {q['cpu_per_req_pairwise']:.3f}×, req/s {q['rps_pairwise']:.3f}×")
    errs = sum(summ[m]["errors"] + summ[m]["non2xx"] for m in modes)
    lines.append("ERRORS: none (0 socket errors, 0 non-2xx in every run)" if not errs else
                 f"ERRORS: {errs} socket errors + non-2xx responses — see the verdict column")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, help="runs of each mode, interleaved (default 3; 2 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2 runs of each mode instead of 3")
    ap.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of warm-up load, with 8 updates (default 2)")
    ap.add_argument("--updates", type=int, default=1000, help="backend-set updates per churn run (default 1000)")
    ap.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--threads", type=int, default=2, help="lbd workers (default 2)")
    ap.add_argument("--cpus", default="1:0", help="PROXY_CPUS:LOAD_CPUS, taskset lists (default 1:0)")
    ap.add_argument("--control", default="3,4",
                    help="control modes static<N>, interleaved with the others: web held at its first N members "
                         "(A..D) with no updates during the run, to tell the cost of the updates from that of a "
                         "bigger set; comma-separated N of 3, 4 (default 3,4; 'none' = only static and churn)")
    ap.add_argument("--lbd", default=bench.LBD)
    ap.add_argument("--out", default=os.path.join(bench.BENCH, "results"))
    a = ap.parse_args()
    a.runs = a.runs or (2 if a.quick else 3)
    if a.runs < 1 or a.updates < 0 or a.updates % 4:
        ap.error("--runs >= 1 and --updates a multiple of 4 (so each churn run ends at the static set)")
    if a.updates and a.updates / a.duration > 400:
        log(f"NOTE: {a.updates / a.duration:.0f} updates/s asked for; admin connections alone may not keep up")
    for tool in (a.lbd, bench.ORIGIN):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing: bench/run.sh --churn builds it")
    controls = [] if a.control in ("", "none", "0") else a.control.split(",")
    if any(c not in ("3", "4") for c in controls):
        ap.error("--control: a comma-separated list of 3 and 4, or none")
    modes = ["static", "churn"] + [f"static{c}" for c in controls]
    t0 = time.time()
    rig = Rig(a)
    _, load_cpus = a.cpus.split(":")
    os.sched_setaffinity(0, bench.cpu_list(load_cpus))  # this script and its update thread: load CPUs
    runs = []
    try:
        rig.start()
        log(f"workdir {rig.work}; lbd --threads {a.threads} on CPU {rig.proxy_cpus}, wrk + origins + updates on "
            f"CPU {rig.load_cpus}; {a.runs} × ({', '.join(modes)}) of {a.duration} s, {a.updates} updates per churn run")
        w = rig.run_once("churn", a.warmup, 8 if a.updates else 0)  # warm-up: load and admin path, discarded
        if w["verdict"] != "ok":
            rig.note(f"warm-up: {w['verdict']}")
        for i in range(a.runs):
            for mode in modes:
                r = rig.run_once(mode, a.duration, a.updates)
                runs.append(r)
                log(f"run {i + 1} {mode:6s} rps={r['rps']:8.0f} cpu={r['cpu_us_per_req']:6.2f}us/req "
                    f"(schedstat {r['cpu_us_per_req_schedstat']:.2f}) err={r['errors']} non2xx={r['non2xx']} "
                    + (f"updates={r['updates_ok']}/{r['updates']} admin p99={r['admin_ms'].get('p99')}ms "
                       if mode == "churn" else "")
                    + f"noise={r['noise_pct']}% {r['verdict']}")
    finally:
        rig.stop()
    summ = {m: summary(runs, m) for m in modes}
    ch = summ["churn"]
    ratio = {}
    for base in [m for m in modes if m != "churn"]:
        st = summ[base]
        pairs = [(next(r for r in rnd if r["mode"] == base), next(r for r in rnd if r["mode"] == "churn"))
                 for rnd in (runs[i:i + len(modes)] for i in range(0, len(runs), len(modes)))]
        ratio[base] = {
            "cpu_per_req": ch["cpu_us_per_req"] / st["cpu_us_per_req"], "rps": ch["rps"] / st["rps"],
            "cpu_per_req_pairwise": statistics.median(c["cpu_us_per_req"] / s["cpu_us_per_req"] for s, c in pairs),
            "rps_pairwise": statistics.median(c["rps"] / s["rps"] for s, c in pairs)}
    ok = all(r["verdict"] == "ok" for r in runs)
    t = table(runs, summ, ratio, modes)
    print(t)
    for n in rig.notes:
        print("note:", n)
    print("VERDICT:", "ok" if ok else "FAIL")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    doc = {"when": stamp, "scenario": "churn", "elapsed_s": round(time.time() - t0, 1), "machine": bench.machine(),
           "settings": {k: v for k, v in vars(a).items() if k != "out"},
           "layout": {"proxy_cpus": rig.proxy_cpus, "load_cpus": rig.load_cpus, "lbd_threads": rig.placement,
                      "origins": {"abcd"[i]: f"127.0.0.1:{p}" for i, p in enumerate(ORIGIN_PORTS)},
                      "static": ["a", "b"], "churned": ["c", "d"]},
           "how": "CPU = utime+stime of /proc/<lbd>/stat (all threads) before wrk starts and after it exits and the "
                  "update thread finished; cpu_us_per_req_schedstat = same window from /proc/<lbd>/task/*/schedstat",
           "modes": modes, "verdict": "ok" if ok else "FAIL", "summary": summ, "ratio_churn_over": ratio,
           "notes": rig.notes, "warmup": w if runs else None, "runs": runs}
    os.makedirs(a.out, exist_ok=True)
    for name in (f"churn-{stamp}.json", "churn-latest.json"):
        with open(os.path.join(a.out, name), "w") as f:
            json.dump(doc, f, indent=1)
    with open(os.path.join(a.out, "churn-latest.txt"), "w") as f:
        f.write(t + "\n" + "".join(f"note: {n}\n" for n in rig.notes) + f"VERDICT: {'ok' if ok else 'FAIL'}\n")
    log(f"done in {time.time() - t0:.0f}s; wrote {a.out}/churn-{stamp}.json, churn-latest.json, churn-latest.txt")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
