"""A new TLS connection per request, resuming the session each time (the
client side of bench.py's tls-resume-small scenario; wrk resumes none).

Usage: tls_resume.py PORT SECONDS [PROCESSES]
Each process keeps one session and reuses it for every connection: one GET
per connection, `Connection: close`. Prints
RESULT requests=N duration_us=D p50_us=.. p99_us=.. p99.9_us=.. resumed=R errors=E non2xx=X
"""
import multiprocessing
import socket
import ssl
import sys
import time


def worker(port, seconds, q):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    session = None
    lat, resumed, errors, non2xx = [], 0, 0, 0
    req = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    end = time.time() + seconds
    while time.time() < end:
        t = time.perf_counter()
        try:
            raw = socket.create_connection(("127.0.0.1", port))
            s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
            s.sendall(req)
            data = b""
            while True:
                d = s.recv(65536)
                if not d:
                    break
                data += d
            if s.session_reused:
                resumed += 1
            session = s.session
            s.close()
            if not data.startswith(b"HTTP/1.1 2"):
                non2xx += 1
        except OSError:
            errors += 1
            continue
        lat.append((time.perf_counter() - t) * 1e6)
    q.put((lat, resumed, errors, non2xx))


def main():
    port, seconds = int(sys.argv[1]), float(sys.argv[2])
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 2
    q = multiprocessing.Queue()
    t0 = time.time()
    ps = [multiprocessing.Process(target=worker, args=(port, seconds, q)) for _ in range(n)]
    for p in ps:
        p.start()
    got = [q.get() for _ in ps]
    for p in ps:
        p.join()
    wall = time.time() - t0
    lat = sorted(x for g in got for x in g[0])
    pct = lambda p: lat[min(len(lat) - 1, int(len(lat) * p / 100))] if lat else 0
    print(f"RESULT requests={len(lat)} duration_us={int(wall * 1e6)} p50_us={pct(50):.0f} p99_us={pct(99):.0f} "
          f"p99.9_us={pct(99.9):.0f} resumed={sum(g[1] for g in got)} errors={sum(g[2] for g in got)} "
          f"non2xx={sum(g[3] for g in got)}")


if __name__ == "__main__":
    main()
