#!/usr/bin/env python3
"""A frame-level HTTP/2 client for tests/http2.rs (Python's `h2` package).

    h2client.py PORT MODE [ARG]

Modes (each prints one line of `key=value` words the test reads):
  get PATH              one GET; status, body length, trailers (name:value,
                        comma-separated), whether GOAWAY came
  conn-header NAME VAL  a GET carrying a connection-specific header;
                        reset=<error code> if the stream was reset
  rapid-reset N         N streams opened and reset at once (CVE-2023-44487)
  continuation N        HEADERS then N CONTINUATION frames (CVE-2024-27316)
  ping-flood N          N PINGs sent at once (a writer thread; the reader
                        only scans for GOAWAY)
  settings-flood N      N SETTINGS frames, likewise
  window-flood N        N WINDOW_UPDATE frames, likewise
  empty-data N          a POST with N empty DATA frames, likewise
  pings-with-data N SIZE  N downloads of SIZE bytes, one at a time, with a
                        PING after each DATA frame (like gRPC's BDP pings)
  post-trailers PATH    a POST of `hello` with no length, then trailers
                        x-checksum: abc
  hpack-bomb N          a 4 KiB header put in the HPACK table by stream 1,
                        then referenced N times (one byte each) by stream 3
  concurrent N PATH     N GETs at once on one connection: ok=<answered>
                        refused=<reset with REFUSED_STREAM>
  stall PATH            a GET with a zero window, never opened: waits for
                        the stream's reset

Every mode ends with goaway=<error code or none> and closed=<bool>.
"""
import select
import socket
import struct
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    cfg = h2.config.H2Configuration(
        client_side=True,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        header_encoding=None,
    )
    c = h2.connection.H2Connection(config=cfg)
    c.initiate_connection()
    s.sendall(c.data_to_send())
    return s, c


def headers(port, path, method="GET", extra=()):
    h = [
        (b":method", method.encode()),
        (b":scheme", b"http"),
        (b":authority", f"127.0.0.1:{port}".encode()),
        (b":path", path.encode()),
    ]
    h.extend((n.encode(), v.encode()) for n, v in extra)
    return h


class Result:
    def __init__(self):
        self.status = None
        self.body = 0
        self.goaway = "none"
        self.reset = "none"
        self.closed = False
        self.ended = False
        self.trailers = "none"
        self.interim = "none"
        self.link = "none"
        # The server's frames, scanned independently of the h2 state
        # machine (which refuses any frame after a GOAWAY).
        self.raw = b""
        self.h2_failed = False

    def scan(self, data):
        self.raw += data
        while len(self.raw) >= 9:
            n = int.from_bytes(self.raw[0:3], "big")
            if len(self.raw) < 9 + n:
                return
            kind, payload = self.raw[3], self.raw[9 : 9 + n]
            if kind == 0x7 and n >= 8:  # GOAWAY
                self.goaway = str(int.from_bytes(payload[4:8], "big"))
            elif kind == 0x3 and n >= 4:  # RST_STREAM
                self.reset = str(int.from_bytes(payload[0:4], "big"))
            elif kind == 0x1:  # HEADERS: note a 431 (a literal :status)
                sid = int.from_bytes(self.raw[5:9], "big") & 0x7FFFFFFF
                if sid == 3 and b"431" in payload:
                    self.status = 431
            self.raw = self.raw[9 + n :]


def reads(s, r, until, limit):
    """Yields what the server sends (scanned into `r` first) until
    `until(r)`, `limit` seconds, or the end of the connection (which sets
    `r.closed`)."""
    end = time.time() + limit
    s.settimeout(0.5)
    while not until(r) and time.time() < end:
        try:
            data = s.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            data = b""
        if not data:
            r.closed = True
            return
        r.scan(data)
        yield data


def pump(s, c, r, until, limit=10.0):
    """Reads and handles events until `until(r)` or the connection ends."""
    for data in reads(s, r, until, limit):
        if r.h2_failed:
            continue
        try:
            events = c.receive_data(data)
        except h2.exceptions.ProtocolError:
            r.h2_failed = True
            continue
        for e in events:
            if isinstance(e, h2.events.ResponseReceived):
                for n, v in e.headers:
                    if n == b":status":
                        r.status = int(v)
            elif isinstance(e, h2.events.InformationalResponseReceived):
                for n, v in e.headers:
                    if n == b":status":
                        r.interim = v.decode()
                    elif n == b"link":
                        r.link = v.decode().replace(" ", "")
            elif isinstance(e, h2.events.DataReceived):
                r.body += len(e.data)
                c.acknowledge_received_data(len(e.data), e.stream_id)
            elif isinstance(e, h2.events.TrailersReceived):
                r.trailers = ",".join(f"{n.decode()}:{v.decode()}" for n, v in e.headers)
            elif isinstance(e, h2.events.StreamEnded):
                r.ended = True
        try:
            out = c.data_to_send()
            if out:
                s.sendall(out)
        except (ConnectionResetError, BrokenPipeError):
            r.closed = True
            return


def frame(kind, flags, stream, payload):
    n = len(payload)
    return struct.pack(">BHBBI", n >> 16, n & 0xFFFF, kind, flags, stream) + payload


def send_raw(s, r, data):
    try:
        s.sendall(data)
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        r.closed = True


def flood(s, r, data):
    """Sends `data` from a thread while reading the server's frames."""
    def write():
        try:
            s.sendall(data)
        except OSError:
            pass

    t = threading.Thread(target=write, daemon=True)
    t.start()
    for _ in reads(s, r, lambda r: r.goaway != "none", 15):
        pass


def report(r):
    print(
        f"status={r.status} body={r.body} ended={r.ended} trailers={r.trailers} reset={r.reset} "
        f"goaway={r.goaway} closed={r.closed} interim={r.interim} link={r.link}"
    )


def main():
    port, mode = int(sys.argv[1]), sys.argv[2]
    args = sys.argv[3:]
    s, c = connect(port)
    r = Result()
    if mode == "get":
        c.send_headers(1, headers(port, args[0]), end_stream=True)
        s.sendall(c.data_to_send())
        pump(s, c, r, lambda r: r.ended or r.reset != "none", limit=15.0)
        # A GOAWAY may follow the response (drain): read a little longer.
        pump(s, c, r, lambda r: r.goaway != "none" or r.closed, limit=3.0)
    elif mode == "conn-header":
        c.send_headers(1, headers(port, "/", extra=[(args[0], args[1])]), end_stream=True)
        s.sendall(c.data_to_send())
        pump(s, c, r, lambda r: r.ended or r.reset != "none" or r.goaway != "none")
    elif mode == "rapid-reset":
        n = int(args[0])
        data = b""
        for i in range(n):
            sid = 1 + 2 * i
            c.send_headers(sid, headers(port, "/slow?ms=200"), end_stream=True)
            c.reset_stream(sid)
            data += c.data_to_send()
        send_raw(s, r, data)
        pump(s, c, r, lambda r: r.goaway != "none" or r.closed)
    elif mode == "continuation":
        n = int(args[0])
        # HEADERS without END_HEADERS, then CONTINUATION frames of a
        # literal header each, never ending the block.
        block = c.encoder.encode(headers(port, "/"))
        send_raw(s, r, frame(0x1, 0x1, 1, block))  # END_STREAM only
        # A literal header field without indexing, `x-a` with a 1000-byte
        # value (length 1000 as an HPACK integer: 127 + 873).
        cont = frame(0x9, 0x0, 1, b"\x00\x03x-a\x7f\xe9\x06" + b"v" * 1000)
        for _ in range(n):
            if r.closed or r.goaway != "none":
                break
            send_raw(s, r, cont)
            # Read what the server said so far (its GOAWAY would be lost
            # to the reset its close sends while we are still writing).
            while select.select([s], [], [], 0)[0]:
                try:
                    data = s.recv(65536)
                except (ConnectionResetError, socket.timeout):
                    r.closed = True
                    break
                if not data:
                    r.closed = True
                    break
                r.scan(data)
        pump(s, c, r, lambda r: r.goaway != "none" or r.closed)
    elif mode == "ping-flood":
        flood(s, r, frame(0x6, 0x0, 0, b"12345678") * int(args[0]))
    elif mode == "settings-flood":
        flood(s, r, frame(0x4, 0x0, 0, struct.pack(">HI", 0x3, 100)) * int(args[0]))
    elif mode == "window-flood":
        flood(s, r, frame(0x8, 0x0, 0, struct.pack(">I", 1)) * int(args[0]))
    elif mode == "pings-with-data":
        n, size = int(args[0]), int(args[1])
        for i in range(n):
            if r.closed:
                break
            sid = 1 + 2 * i
            c.send_headers(sid, headers(port, f"/big?size={size}"), end_stream=True)
            s.sendall(c.data_to_send())
            r.ended = False
            for data in reads(s, r, lambda r: r.ended or r.goaway != "none", 10):
                for e in c.receive_data(data):
                    if isinstance(e, h2.events.DataReceived):
                        r.body += len(e.data)
                        c.acknowledge_received_data(len(e.data), e.stream_id)
                        c.ping(b"bdp-ping")
                    elif isinstance(e, h2.events.StreamEnded):
                        r.ended = True
                s.sendall(c.data_to_send())
    elif mode == "post-trailers":
        c.send_headers(1, headers(port, args[0], method="POST"), end_stream=False)
        c.send_data(1, b"hello", end_stream=False)
        c.send_headers(1, [(b"x-checksum", b"abc")], end_stream=True)
        s.sendall(c.data_to_send())
        pump(s, c, r, lambda r: r.ended or r.reset != "none", limit=15.0)
    elif mode == "hpack-bomb":
        n = int(args[0])
        # :method GET, :scheme http, :path / (static), :authority x.
        pseudo = b"\x82\x86\x84\x01\x01x"
        # x-bomb: 4000 bytes, with incremental indexing (becomes index 62).
        big = b"\x40\x06x-bomb\x7f\xa1\x1e" + b"a" * 4000
        send_raw(s, r, frame(0x1, 0x5, 1, pseudo + big))
        send_raw(s, r, frame(0x1, 0x5, 3, pseudo + b"\xbe" * n))
        pump(s, c, r, lambda r: r.status == 431 or r.reset != "none" or r.goaway != "none")
    elif mode == "concurrent":
        n, path = int(args[0]), args[1]
        for i in range(n):
            c.send_headers(1 + 2 * i, headers(port, path), end_stream=True)
        s.sendall(c.data_to_send())
        done = {}
        end = time.time() + 15
        s.settimeout(0.5)
        while len(done) < n and time.time() < end:
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            if not data:
                break
            for e in c.receive_data(data):
                if isinstance(e, h2.events.StreamEnded):
                    done[e.stream_id] = "ok"
                elif isinstance(e, h2.events.StreamReset):
                    done[e.stream_id] = str(int(e.error_code))
                elif isinstance(e, h2.events.DataReceived):
                    c.acknowledge_received_data(len(e.data), e.stream_id)
            out = c.data_to_send()
            if out:
                s.sendall(out)
        ok = sum(1 for v in done.values() if v == "ok")
        refused = sum(1 for v in done.values() if v == "7")
        print(f"ok={ok} refused={refused}")
        return
    elif mode == "stall":
        c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        c.send_headers(1, headers(port, args[0]), end_stream=True)
        s.sendall(c.data_to_send())
        # Read without ever acknowledging data (no WINDOW_UPDATE).
        for _ in reads(s, r, lambda r: r.reset != "none", 15):
            pass
    elif mode == "empty-data":
        n = int(args[0])
        c.send_headers(1, headers(port, "/echo", method="POST"), end_stream=False)
        flood(s, r, c.data_to_send() + frame(0x0, 0x0, 1, b"") * n)
    else:
        sys.exit(f"unknown mode {mode}")
    report(r)


if __name__ == "__main__":
    main()
