#!/usr/bin/env python3
"""Measures a proxy's RSS per idle keep-alive client connection.

Usage: idle_rss.py PID PORT [N] [SETTLE]
Opens N connections (default 10000) to 127.0.0.1:PORT, sends one keep-alive
GET on each and reads its response, so every connection is an idle keep-alive
connection, waits SETTLE seconds (default 3: idle keep-alive connections are
idle for seconds; lbd parks a connection idle for 250 ms), then reports the proxy's RSS
growth (VmRSS of PID) per connection, and its peak (VmHWM) growth.
"""
import resource, socket, sys, time

def rss_kib(pid, key="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {key}")

BATCH = 100
SETTLE = 3

def main():
    pid, port = int(sys.argv[1]), int(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else SETTLE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    before = rss_kib(pid)
    conns = []
    req = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(req)
        conns.append(s)
        if len(conns) % BATCH == 0:
            for c in conns[-BATCH:]:
                c.settimeout(10)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += c.recv(65536)
    for c in conns[len(conns) - len(conns) % BATCH:]:
        c.settimeout(10)
        c.recv(65536)
    time.sleep(settle)
    after = rss_kib(pid)
    peak = rss_kib(pid, "VmHWM")
    print(f"connections={n} rss_before_kib={before} rss_after_kib={after} "
          f"peak_kib={peak} per_conn_kib={(after - before) / n:.2f}")
    for c in conns:
        c.close()

if __name__ == "__main__":
    main()
