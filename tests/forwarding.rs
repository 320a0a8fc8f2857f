//! Who the client is, and what backends are told of it: PROXY protocol in
//! front of client connections (v1, v2, trusted and untrusted sources, bad
//! and split headers, TLS behind it, parking), PROXY protocol in front of
//! upstream connections and health checks (checked byte for byte at a raw
//! origin, and pooling per client), HAProxy on both sides as the
//! interoperability check, the forwarding headers (`X-Forwarded-*`, RFC 7239
//! `Forwarded`, `trusted_proxies`), request ids, and the config errors.
//!
//! Clients connect from 127.0.0.1 or, to be a different (untrusted)
//! source, from 127.0.0.2 or 127.0.0.3: all of 127/8 is loopback.

mod support;

use std::fs;
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A TCP connection to `port` on 127.0.0.1 from `src` (any port).
fn connect_from(src: [u8; 4], port: u16) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((src, 0)).into())
        .unwrap_or_else(|e| panic!("bind {src:?}: {e}"));
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap_or_else(|e| panic!("connect from {src:?}: {e}"));
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes `bytes`, then reads one response.
fn exchange(r: &mut BufReader<TcpStream>, bytes: &[u8]) -> Response {
    r.get_mut().write_all(bytes).unwrap();
    read_response(r, false).unwrap_or_else(|e| panic!("no response: {e}"))
}

const GET_HEADERS: &[u8] = b"GET /headers HTTP/1.1\r\nHost: app.test\r\n\r\n";

/// Every value of header `name` in a raw head.
fn values(head: &str, name: &str) -> Vec<String> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The one value of header `name` in a raw head.
fn value(head: &str, name: &str) -> String {
    let v = values(head, name);
    assert_eq!(v.len(), 1, "{name} in {head:?}");
    v[0].clone()
}

/// Ok if the peer closed (EOF or reset) within `wait`, with nothing sent.
fn closed(s: &mut TcpStream, wait: Duration) -> Result<(), String> {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut buf = [0u8; 256];
    match s.read(&mut buf) {
        Ok(0) => Ok(()),
        Ok(n) => Err(format!("got {:?}", String::from_utf8_lossy(&buf[..n]))),
        Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe) => Ok(()),
        Err(e) => Err(format!("still open ({e})")),
    }
}

/// A v2 header built here byte by byte (independent of lbd's writer).
fn v2(command: u8, src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut b = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    b.push(0x20 | command);
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            b.extend_from_slice(&[0x11, 0, 12]);
            b.extend_from_slice(&s.ip().octets());
            b.extend_from_slice(&d.ip().octets());
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            b.extend_from_slice(&[0x21, 0, 36]);
            b.extend_from_slice(&s.ip().octets());
            b.extend_from_slice(&d.ip().octets());
        }
        _ => panic!("mixed families"),
    }
    b.extend_from_slice(&src.port().to_be_bytes());
    b.extend_from_slice(&dst.port().to_be_bytes());
    b
}

const V2_LOCAL: &[u8] = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// lbd in front of `origin` accepting PROXY protocol from `trusted`, with an
/// admin endpoint.
fn pp_lbd(origin: &Origin, proxy_protocol: &str) -> (Lbd, u16) {
    let admin = free_port();
    let lbd = LbdConf::front(&[origin.port])
        .admin(admin)
        .listener_extra(&format!("proxy_protocol: {proxy_protocol}"))
        .start();
    (lbd, admin)
}

/// `lbd_proxy_protocol_rejected_total{reason="…"}`.
fn rejected(admin: u16, reason: &str) -> u64 {
    let (status, out) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let prefix = format!("lbd_proxy_protocol_rejected_total{{reason=\"{reason}\"}} ");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix} in /metrics:\n{out}"))
}

/// Sends `bytes` (the PROXY header and a request, say) on a new connection
/// from `src`; returns the response and the X-Forwarded-For the origin saw.
fn via(lbd: &Lbd, origin: &Origin, src: [u8; 4], bytes: &[u8]) -> (Response, String) {
    let before = origin.heads().len();
    let mut r = BufReader::new(connect_from(src, lbd.port));
    let resp = exchange(&mut r, bytes);
    assert_eq!(resp.status, 200, "{resp:?}");
    let heads = origin.heads();
    assert_eq!(heads.len(), before + 1);
    (resp, value(&heads[before], "x-forwarded-for"))
}

/// The access log at `path` once it has at least `lines` lines.
fn log_lines(path: &std::path::Path, lines: usize) -> String {
    let t = Instant::now();
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= lines {
            return text;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "{text}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn with_get(header: &[u8]) -> Vec<u8> {
    let mut b = header.to_vec();
    b.extend_from_slice(GET_HEADERS);
    b
}

// ---------------------------------------------------------------------------
// PROXY protocol in
// ---------------------------------------------------------------------------

#[test]
fn proxy_protocol_v1_and_v2_set_the_client_address() {
    let origin = Origin::start("o");
    let (lbd, admin) = pp_lbd(&origin, "{ trusted: [127.0.0.1/32] }");
    let me = [127, 0, 0, 1];
    let dst = format!("127.0.0.1 4242 {}", lbd.port);
    let v1 = format!("PROXY TCP4 192.0.2.10 {dst}\r\n");
    assert_eq!(
        via(&lbd, &origin, me, &with_get(v1.as_bytes())).1,
        "192.0.2.10"
    );
    let v1_6 = format!("PROXY TCP6 2001:db8::10 ::1 4242 {}\r\n", lbd.port);
    assert_eq!(
        via(&lbd, &origin, me, &with_get(v1_6.as_bytes())).1,
        "2001:db8::10"
    );
    // v1 UNKNOWN: the real peer.
    assert_eq!(
        via(&lbd, &origin, me, &with_get(b"PROXY UNKNOWN\r\n")).1,
        "127.0.0.1"
    );
    let h = v2(1, sa("198.51.100.7:999"), lbd.addr());
    assert_eq!(via(&lbd, &origin, me, &with_get(&h)).1, "198.51.100.7");
    let h = v2(1, sa("[2001:db8::77]:999"), sa("[::1]:443"));
    assert_eq!(via(&lbd, &origin, me, &with_get(&h)).1, "2001:db8::77");
    // v2 LOCAL (a health check of the proxy in front): the real peer.
    assert_eq!(via(&lbd, &origin, me, &with_get(V2_LOCAL)).1, "127.0.0.1");
    // LOCAL with addresses still means the real peer.
    let h = v2(0, sa("198.51.100.7:999"), lbd.addr());
    assert_eq!(via(&lbd, &origin, me, &with_get(&h)).1, "127.0.0.1");
    for reason in [
        "untrusted",
        "missing",
        "malformed",
        "version",
        "truncated",
        "timeout",
    ] {
        assert_eq!(rejected(admin, reason), 0, "{reason}");
    }
}

#[test]
fn header_bytes_may_come_split_or_with_the_requests() {
    let origin = Origin::start("o");
    let (lbd, _) = pp_lbd(&origin, "{ trusted: [127.0.0.1/32] }");
    // One byte per write, header and request.
    let h1 = format!("PROXY TCP4 192.0.2.21 127.0.0.1 1 {}\r\n", lbd.port);
    for header in [h1.into_bytes(), v2(1, sa("192.0.2.22:5"), lbd.addr())] {
        let mut s = connect_from([127, 0, 0, 1], lbd.port);
        for b in with_get(&header) {
            s.write_all(&[b]).unwrap();
            thread::sleep(Duration::from_millis(2));
        }
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200);
        let xff = value(&origin.last_head(), "x-forwarded-for");
        assert!(xff == "192.0.2.21" || xff == "192.0.2.22", "{xff}");
    }
    // The header and two pipelined requests in one write: nothing after the
    // header is lost.
    let mut bytes = v2(1, sa("192.0.2.23:5"), lbd.addr());
    bytes.extend_from_slice(b"GET /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    bytes.extend_from_slice(GET_HEADERS);
    let mut r = BufReader::new(connect_from([127, 0, 0, 1], lbd.port));
    r.get_mut().write_all(&bytes).unwrap();
    let first = read_response(&mut r, false).unwrap();
    assert_eq!((first.status, first.body_str()), (200, "hello".to_string()));
    let second = read_response(&mut r, false).unwrap();
    assert_eq!(second.status, 200);
    assert_eq!(value(&second.body_str(), "x-forwarded-for"), "192.0.2.23");
}

#[test]
fn refused_headers_are_closed_and_counted() {
    let origin = Origin::start("o");
    let (lbd, admin) = pp_lbd(
        &origin,
        "{ trusted: [127.0.0.1/32], versions: [v1], timeout_ms: 300 }",
    );
    let me = [127, 0, 0, 1];
    let refused = |src: [u8; 4], bytes: &[u8], reason: &str| {
        let before = rejected(admin, reason);
        let mut s = connect_from(src, lbd.port);
        s.write_all(bytes).unwrap();
        if let Err(e) = closed(&mut s, Duration::from_secs(3)) {
            panic!("{reason}: {:?}: {e}", String::from_utf8_lossy(bytes));
        }
        assert_eq!(rejected(admin, reason), before + 1, "{reason}");
    };
    // An untrusted source may not send a header, even a valid one.
    let valid = format!("PROXY TCP4 192.0.2.1 127.0.0.1 1 {}\r\n", lbd.port);
    refused([127, 0, 0, 2], &with_get(valid.as_bytes()), "untrusted");
    refused([127, 0, 0, 2], b"PROXY ", "untrusted");
    // A trusted source must send one.
    refused(me, GET_HEADERS, "missing");
    refused(me, b"garbage\r\n\r\n", "missing");
    refused(
        me,
        b"PROXY TCP4 192.0.2.1 300.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n",
        "malformed",
    );
    refused(me, b"PROXY TCP4 192.0.2.1\r\n", "malformed");
    refused(me, &with_get(V2_LOCAL), "version");
    // Truncated: the client gives up mid-header.
    let before = rejected(admin, "truncated");
    let mut s = connect_from(me, lbd.port);
    s.write_all(b"PROXY TCP4 192.0.2.1 ").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    closed(&mut s, Duration::from_secs(3)).unwrap();
    assert_eq!(rejected(admin, "truncated"), before + 1);
    // Slow: half a header, then nothing; or nothing at all.
    for partial in [&b"PROXY TCP4 "[..], b""] {
        let before = rejected(admin, "timeout");
        let t = Instant::now();
        let mut s = connect_from(me, lbd.port);
        s.write_all(partial).unwrap();
        closed(&mut s, Duration::from_secs(3)).unwrap();
        let waited = t.elapsed();
        assert!(waited >= Duration::from_millis(250), "{waited:?}");
        assert_eq!(rejected(admin, "timeout"), before + 1);
    }
    // A trusted source that connects and leaves (a TCP check) is no refusal.
    let total = |a| {
        [
            "untrusted",
            "missing",
            "malformed",
            "version",
            "truncated",
            "timeout",
        ]
        .iter()
        .map(|r| rejected(a, r))
        .sum::<u64>()
    };
    let before = total(admin);
    drop(connect_from(me, lbd.port));
    thread::sleep(Duration::from_millis(100));
    assert_eq!(total(admin), before);
    // Nothing refused reached the origin; an untrusted source without a
    // header is served as usual, as itself.
    assert_eq!(origin.requests(), 0);
    assert_eq!(
        via(&lbd, &origin, [127, 0, 0, 2], GET_HEADERS).1,
        "127.0.0.2"
    );
    // The log says why, at most once a second per worker.
    let log = lbd.stderr();
    assert!(
        log.contains("PROXY protocol: connection refused (untrusted)"),
        "{log}"
    );
    assert!(
        log.matches("PROXY protocol: connection refused").count() < 10,
        "{log}"
    );
}

#[test]
fn client_address_from_the_header_is_used_everywhere() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let dir = unique_temp_dir("pp-log");
    let log = dir.join("access.log");
    let lbd = LbdConf::front(&[a.port, b.port])
        .listener_extra("proxy_protocol: { trusted: 127.0.0.1 }")
        .group_extra("balance: hash\nhash: { key: client_ip }")
        .top(&format!("access_log: {{ path: {} }}", log.display()))
        .start();
    // client_ip hashing: the header's address decides, consistently.
    let mut seen = std::collections::HashMap::new();
    for _round in 0..2 {
        for i in 1..=16u8 {
            let mut bytes = v2(1, SocketAddr::from(([192, 0, 2, i], 7)), lbd.addr());
            bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
            let mut r = BufReader::new(connect_from([127, 0, 0, 1], lbd.port));
            let name = exchange(&mut r, &bytes).body_str();
            let prev = seen.insert(i, name.clone());
            assert!(prev.is_none_or(|p| p == name), "192.0.2.{i} moved");
        }
    }
    let names: std::collections::HashSet<_> = seen.values().collect();
    assert_eq!(names.len(), 2, "every client on one backend: {seen:?}");
    // The access log names the header's address.
    let text = log_lines(&log, 32);
    assert!(text.lines().all(|l| l.starts_with("192.0.2.")), "{text}");
}

#[test]
fn parked_connections_keep_the_header_address() {
    let origin = Origin::start("o");
    let (lbd, admin) = pp_lbd(&origin, "{ trusted: [127.0.0.1/32] }");
    let mut r = BufReader::new(connect_from([127, 0, 0, 1], lbd.port));
    let h = format!("PROXY TCP4 203.0.113.5 127.0.0.1 1 {}\r\n", lbd.port);
    let resp = exchange(&mut r, &with_get(h.as_bytes()));
    assert_eq!(value(&resp.body_str(), "x-forwarded-for"), "203.0.113.5");
    // Idle long enough to park (250 ms, then the next sweep).
    let t = Instant::now();
    loop {
        let (_, m) = http_get(admin, "/metrics");
        if m.lines().any(|l| l == "lbd_connections_parked 1") {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "never parked:\n{m}");
        thread::sleep(Duration::from_millis(50));
    }
    let resp = exchange(&mut r, GET_HEADERS);
    assert_eq!(value(&resp.body_str(), "x-forwarded-for"), "203.0.113.5");
}

// ---------------------------------------------------------------------------
// TLS behind a PROXY protocol header
// ---------------------------------------------------------------------------

/// A CA and a leaf for `name` in `dir`; returns (ca, cert, key) files.
fn tls_files(
    dir: &std::path::Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (ca, c, k) = (
        dir.join("ca.pem"),
        dir.join("leaf.pem"),
        dir.join("leaf.key"),
    );
    fs::write(&ca, issuer.pem()).unwrap();
    fs::write(&c, cert.pem()).unwrap();
    fs::write(&k, key.serialize_pem()).unwrap();
    (ca, c, k)
}

fn tls_client(ca: &std::path::Path, name: &str) -> rustls::ClientConnection {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(name.to_string()).unwrap();
    rustls::ClientConnection::new(Arc::new(cfg), name).unwrap()
}

/// lbd with a TLS listener for `lb.test` (and `extra` listener keys) in
/// front of `origin`; returns it and the CA file to trust.
fn tls_lbd(origin: &Origin, extra: &str) -> (Lbd, std::path::PathBuf) {
    let dir = unique_temp_dir("fwd-tls");
    let (ca, cert, key) = tls_files(&dir, "lb.test");
    let lbd = LbdConf::front(&[origin.port])
        .listener_extra(&format!(
            "tls: {{ cert_file: {}, key_file: {} }}\n{extra}",
            cert.display(),
            key.display()
        ))
        .start();
    (lbd, ca)
}

#[test]
fn tls_listener_reads_the_header_before_the_handshake() {
    let origin = Origin::start("o");
    let (lbd, ca) = tls_lbd(&origin, "proxy_protocol: { trusted: [127.0.0.1/32] }");
    for together in [false, true] {
        let mut conn = tls_client(&ca, "lb.test");
        let mut s = connect_from([127, 0, 0, 1], lbd.port);
        let mut bytes = v2(1, sa("192.0.2.44:1234"), lbd.addr());
        if together {
            // The ClientHello in the same write as the header.
            conn.write_tls(&mut bytes).unwrap();
        }
        s.write_all(&bytes).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        tls.write_all(GET_HEADERS).unwrap();
        let mut r = BufReader::new(tls);
        let resp = read_response(&mut r, false).unwrap();
        assert_eq!(resp.status, 200, "{resp:?}");
        let head = resp.body_str();
        assert_eq!(value(&head, "x-forwarded-for"), "192.0.2.44");
        assert_eq!(value(&head, "x-forwarded-proto"), "https");
    }
}

// ---------------------------------------------------------------------------
// PROXY protocol out
// ---------------------------------------------------------------------------

/// A raw TCP origin: records every byte of every connection, and answers
/// each request head after an optional PROXY protocol header with a
/// 2-byte 200.
struct RawOrigin {
    port: u16,
    conns: Recorded,
}

/// The bytes of each connection, in accept order.
type Recorded = Arc<Mutex<Vec<Arc<Mutex<Vec<u8>>>>>>;

/// Where what follows a PROXY protocol header at the start of `b` begins.
fn after_proxy_header(b: &[u8]) -> Option<usize> {
    if b.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
        let len = b.get(14..16)?;
        let n = 16 + usize::from(u16::from_be_bytes([len[0], len[1]]));
        (b.len() >= n).then_some(n)
    } else if b.starts_with(b"PROXY ") {
        b.windows(2).position(|w| w == b"\r\n").map(|i| i + 2)
    } else {
        Some(0)
    }
}

impl RawOrigin {
    fn start() -> RawOrigin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let conns: Recorded = Arc::default();
        let all = conns.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                let rec = Arc::new(Mutex::new(Vec::new()));
                all.lock().unwrap().push(rec.clone());
                thread::spawn(move || {
                    let mut answered = 0;
                    let mut buf = [0u8; 4096];
                    loop {
                        let n = match s.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        let mut r = rec.lock().unwrap();
                        r.extend_from_slice(&buf[..n]);
                        let Some(start) = after_proxy_header(&r) else {
                            continue;
                        };
                        let heads = r[start..].windows(4).filter(|w| w == b"\r\n\r\n").count();
                        drop(r);
                        while answered < heads {
                            answered += 1;
                            let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                            if s.write_all(resp).is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        RawOrigin { port, conns }
    }

    /// The bytes of every connection so far.
    fn connections(&self) -> Vec<Vec<u8>> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

/// GET `path` on a new connection from `src`, expecting the raw origin's 200.
fn get_from(src: [u8; 4], port: u16) -> (BufReader<TcpStream>, u16) {
    let s = connect_from(src, port);
    let local = s.local_addr().unwrap().port();
    let mut r = BufReader::new(s);
    let resp = exchange(&mut r, b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!((resp.status, resp.body_str()), (200, "ok".to_string()));
    (r, local)
}

#[test]
fn upstream_connections_start_with_the_clients_header() {
    for version in ["v1", "v2"] {
        let o = RawOrigin::start();
        let lbd = LbdConf::front(&[o.port])
            .group_extra(&format!("send_proxy_protocol: {version}"))
            .start();
        let (_c, client_port) = get_from([127, 0, 0, 1], lbd.port);
        let conns = o.connections();
        assert_eq!(conns.len(), 1);
        let mut want = Vec::new();
        if version == "v1" {
            want.extend_from_slice(
                format!(
                    "PROXY TCP4 127.0.0.1 127.0.0.1 {client_port} {}\r\n",
                    lbd.port
                )
                .as_bytes(),
            );
        } else {
            want = v2(
                1,
                SocketAddr::from(([127, 0, 0, 1], client_port)),
                lbd.addr(),
            );
        }
        want.extend_from_slice(b"GET /a HTTP/1.1\r\nHost: h\r\n");
        assert!(
            conns[0].starts_with(&want),
            "{version}: {:?}\nwanted {:?}",
            String::from_utf8_lossy(&conns[0]),
            String::from_utf8_lossy(&want)
        );
        // Exactly one header: the rest is the request.
        let rest = &conns[0][want.len()..];
        assert!(!rest.windows(6).any(|w| w == b"PROXY "), "{version}");
    }
}

#[test]
fn pooled_connections_with_a_header_serve_only_their_client() {
    let o = RawOrigin::start();
    let lbd = LbdConf::front(&[o.port])
        .group_extra("send_proxy_protocol: v1")
        .start();
    // Keep-alive from one client: one upstream connection.
    let (mut a, a_port) = get_from([127, 0, 0, 1], lbd.port);
    let resp = exchange(&mut a, b"GET /b HTTP/1.1\r\nHost: h\r\n\r\n");
    assert_eq!(resp.status, 200);
    assert_eq!(o.connections().len(), 1);
    // Another client address: its own connection, with its own header.
    let (_b, b_port) = get_from([127, 0, 0, 2], lbd.port);
    let conns = o.connections();
    assert_eq!(conns.len(), 2, "the first client's connection was reused");
    let want = format!("PROXY TCP4 127.0.0.2 127.0.0.1 {b_port} {}\r\n", lbd.port);
    assert!(
        conns[1].starts_with(want.as_bytes()),
        "{:?}",
        String::from_utf8_lossy(&conns[1])
    );
    // The first client's address again, on a new connection: its pooled
    // upstream connection is reused.
    drop(a);
    let (_c, _) = get_from([127, 0, 0, 1], lbd.port);
    let conns = o.connections();
    assert_eq!(conns.len(), 2, "{conns:?}");
    let first = String::from_utf8_lossy(&conns[0]).into_owned();
    let want = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {a_port} {}\r\n", lbd.port);
    assert!(first.starts_with(&want), "{first:?}");
    assert_eq!(first.matches("GET /").count(), 3, "{first:?}");
    assert_eq!(first.matches("PROXY ").count(), 1, "{first:?}");
}

#[test]
fn health_checks_send_an_address_less_header() {
    for (version, kind, header) in [
        ("v2", "http", V2_LOCAL.to_vec()),
        ("v1", "tcp", b"PROXY UNKNOWN\r\n".to_vec()),
    ] {
        let o = RawOrigin::start();
        let lbd = LbdConf::front(&[o.port])
            .health_check(&[("kind", kind), ("interval_ms", "100")])
            .group_extra(&format!("send_proxy_protocol: {version}"))
            .start();
        // The first round ran before lbd served, and the backend passed;
        // its bytes may still be arriving when the port first accepts (the
        // listener is bound before that round), and later checks come
        // every 100 ms: wait for one whole check, and every connection so
        // far must be what a check sends, or the start of it.
        let mut expected = header.clone();
        if kind == "http" {
            expected.extend_from_slice(b"GET / HTTP/1.1\r\n");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let conns = loop {
            let conns = o.connections();
            if conns.iter().any(|c| c.len() >= expected.len()) {
                break conns;
            }
            assert!(
                Instant::now() < deadline,
                "{version}: no whole check: {conns:?}"
            );
            thread::sleep(Duration::from_millis(10));
        };
        for c in &conns {
            let n = c.len().min(expected.len());
            assert_eq!(
                &c[..n],
                &expected[..n],
                "{version}: {:?}",
                String::from_utf8_lossy(c)
            );
            if kind != "http" {
                assert!(c.len() <= header.len(), "{version}: {c:?}");
            }
        }
        let (_c, _) = get_from([127, 0, 0, 1], lbd.port);
    }
}

// ---------------------------------------------------------------------------
// HAProxy on both sides
// ---------------------------------------------------------------------------

const HAPROXY: &str = "/usr/sbin/haproxy";

/// HAProxy running `cfg` in the foreground; killed on drop.
struct Haproxy(Child, std::path::PathBuf);

impl Haproxy {
    /// `None` (with a message) when HAProxy is not installed.
    fn start(cfg: &str, ports: &[u16]) -> Option<Haproxy> {
        if !std::path::Path::new(HAPROXY).exists() {
            eprintln!("SKIPPED: {HAPROXY} is not installed (apt-get install haproxy); no interoperability check");
            return None;
        }
        let dir = unique_temp_dir("haproxy");
        let path = dir.join("haproxy.cfg");
        fs::write(&path, cfg).unwrap();
        let child = Command::new(HAPROXY)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(dir.join("stderr")).unwrap()))
            .spawn()
            .expect("run haproxy");
        let mut h = Haproxy(child, dir);
        let t = Instant::now();
        for &p in ports {
            while TcpStream::connect(("127.0.0.1", p)).is_err() {
                if let Ok(Some(status)) = h.0.try_wait() {
                    panic!("haproxy exited ({status}): {}", h.stderr());
                }
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "haproxy: {}",
                    h.stderr()
                );
                thread::sleep(Duration::from_millis(20));
            }
        }
        Some(h)
    }

    fn stderr(&self) -> String {
        fs::read_to_string(self.1.join("stderr")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn haproxy_in_front_and_behind() {
    let origin = Origin::start("o");
    let (h_v2, h_v1, h_in) = (free_port(), free_port(), free_port());
    let lbd_in = free_port();
    // Behind lbd: HAProxy accepts lbd's PROXY header and tells the origin
    // what it said.
    let behind = LbdConf::front(&[h_in])
        .group_extra("send_proxy_protocol: v2")
        .start();
    let cfg = format!(
        "global\n  maxconn 100\n\
         defaults\n  timeout connect 2s\n  timeout client 10s\n  timeout server 10s\n\
         frontend v2\n  mode tcp\n  bind 127.0.0.1:{h_v2}\n  default_backend lbd_v2\n\
         backend lbd_v2\n  mode tcp\n  server lbd 127.0.0.1:{lbd_in} send-proxy-v2\n\
         frontend v1\n  mode tcp\n  bind 127.0.0.1:{h_v1}\n  default_backend lbd_v1\n\
         backend lbd_v1\n  mode tcp\n  server lbd 127.0.0.1:{lbd_in} send-proxy\n\
         frontend from_lbd\n  mode http\n  bind 127.0.0.1:{h_in} accept-proxy\n\
         \x20 http-request set-header X-PP-Src %[src]\n\
         \x20 http-request set-header X-PP-Dst %[dst]:%[dst_port]\n\
         \x20 default_backend origin\n\
         backend origin\n  mode http\n  server o 127.0.0.1:{}\n",
        origin.port
    );
    let Some(h) = Haproxy::start(&cfg, &[h_v2, h_v1, h_in]) else {
        return;
    };
    // In front of lbd: HAProxy's PROXY header (v2, v1) names the client.
    let front = LbdConf::new(lbd_in)
        .threads(1)
        .backends(&[origin.port])
        .listener_extra("proxy_protocol: { trusted: [127.0.0.1/32] }")
        .start();
    for (port, src) in [(h_v2, [127, 0, 0, 3]), (h_v1, [127, 0, 0, 4])] {
        let mut r = BufReader::new(connect_from(src, port));
        let resp = exchange(&mut r, GET_HEADERS);
        assert_eq!(resp.status, 200, "{resp:?} {}", h.stderr());
        let ip = Ipv4Addr::from(src).to_string();
        assert_eq!(value(&resp.body_str(), "x-forwarded-for"), ip);
    }
    drop(front);
    // Behind lbd: HAProxy read lbd's header.
    let s = connect_from([127, 0, 0, 5], behind.port);
    let mut r = BufReader::new(s);
    let resp = exchange(&mut r, GET_HEADERS);
    assert_eq!(resp.status, 200, "{resp:?} {}", h.stderr());
    let head = resp.body_str();
    assert_eq!(value(&head, "x-pp-src"), "127.0.0.5", "{head}");
    assert_eq!(
        value(&head, "x-pp-dst"),
        format!("127.0.0.1:{}", behind.port)
    );
}

// ---------------------------------------------------------------------------
// Forwarding headers
// ---------------------------------------------------------------------------

const SPOOFED: &[u8] = b"GET /headers HTTP/1.1\r\nHost: app.test:8080\r\n\
    X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n\
    Forwarded: for=6.6.6.6;proto=https\r\n\r\n";

/// The head the origin got for `req` sent from `src`.
fn head_from(lbd: &Lbd, src: [u8; 4], req: &[u8]) -> String {
    let mut r = BufReader::new(connect_from(src, lbd.port));
    let resp = exchange(&mut r, req);
    assert_eq!(resp.status, 200, "{resp:?}");
    resp.body_str()
}

#[test]
fn spoofed_forwarding_headers_are_replaced_unless_trusted() {
    let origin = Origin::start("o");
    // Default `forwarded: x-forwarded`; 127.0.0.1 trusted at the top level.
    let lbd = LbdConf::front(&[origin.port])
        .top("trusted_proxies: [127.0.0.1/32]")
        .start();
    let head = head_from(&lbd, [127, 0, 0, 2], SPOOFED);
    assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.2"], "{head}");
    assert_eq!(values(&head, "x-forwarded-proto"), ["http"], "{head}");
    assert_eq!(
        values(&head, "x-forwarded-host"),
        ["app.test:8080"],
        "{head}"
    );
    assert!(values(&head, "forwarded").is_empty(), "{head}");
    let head = head_from(&lbd, [127, 0, 0, 1], SPOOFED);
    assert_eq!(
        values(&head, "x-forwarded-for"),
        ["6.6.6.6, 127.0.0.1"],
        "{head}"
    );
    assert_eq!(values(&head, "x-forwarded-proto"), ["https"], "{head}");
    assert_eq!(values(&head, "x-forwarded-host"), ["evil.test"], "{head}");
    // Not written by lbd here, so a trusted client's passes through.
    assert_eq!(
        values(&head, "forwarded"),
        ["for=6.6.6.6;proto=https"],
        "{head}"
    );
    // Without any trusted_proxies nobody is trusted, 127.0.0.1 included.
    let lbd = LbdConf::front(&[origin.port]).start();
    let head = head_from(&lbd, [127, 0, 0, 1], SPOOFED);
    assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    assert_eq!(
        values(&head, "x-forwarded-host"),
        ["app.test:8080"],
        "{head}"
    );
    // A listener's own list wins over the top-level one.
    let lbd = LbdConf::front(&[origin.port])
        .top("trusted_proxies: [127.0.0.1/32]")
        .listener_extra("trusted_proxies: [127.0.0.2/32]")
        .start();
    let head = head_from(&lbd, [127, 0, 0, 1], SPOOFED);
    assert_eq!(values(&head, "x-forwarded-for"), ["127.0.0.1"], "{head}");
    let head = head_from(&lbd, [127, 0, 0, 2], SPOOFED);
    assert_eq!(
        values(&head, "x-forwarded-for"),
        ["6.6.6.6, 127.0.0.2"],
        "{head}"
    );
}

#[test]
fn x_forwarded_proto_is_https_on_tls_listeners() {
    let origin = Origin::start("o");
    let (lbd, ca) = tls_lbd(&origin, "forwarded: both");
    let s = connect_from([127, 0, 0, 1], lbd.port);
    let mut tls = rustls::StreamOwned::new(tls_client(&ca, "lb.test"), s);
    tls.write_all(GET_HEADERS).unwrap();
    let resp = read_response(&mut BufReader::new(tls), false).unwrap();
    let head = resp.body_str();
    assert_eq!(values(&head, "x-forwarded-proto"), ["https"], "{head}");
    assert_eq!(values(&head, "x-forwarded-host"), ["app.test"], "{head}");
    assert_eq!(
        values(&head, "forwarded"),
        ["for=127.0.0.1;host=app.test;proto=https"],
        "{head}"
    );
}

#[test]
fn rfc7239_and_both_formats() {
    let origin = Origin::start("o");
    let lbd = LbdConf::front(&[origin.port])
        .top("trusted_proxies: [127.0.0.1/32]")
        .listener_extra("forwarded: rfc7239\nproxy_protocol: { trusted: [127.0.0.1/32] }")
        .start();
    // An IPv6 client (via a PROXY header) is bracketed and quoted.
    let h = format!("PROXY TCP6 2001:db8::1 ::1 5 {}\r\n", lbd.port);
    let mut r = BufReader::new(connect_from([127, 0, 0, 1], lbd.port));
    let head = exchange(&mut r, &with_get(h.as_bytes())).body_str();
    assert_eq!(
        values(&head, "forwarded"),
        ["for=\"[2001:db8::1]\";host=app.test;proto=http"],
        "{head}"
    );
    assert!(values(&head, "x-forwarded-for").is_empty(), "{head}");
    assert!(values(&head, "x-forwarded-proto").is_empty(), "{head}");
    // The client (PROXY source 2001:db8::1) is not trusted: its own
    // Forwarded and X-Forwarded-* are dropped.
    let mut spoof = h.into_bytes();
    spoof.extend_from_slice(SPOOFED);
    let mut r = BufReader::new(connect_from([127, 0, 0, 1], lbd.port));
    let head = exchange(&mut r, &spoof).body_str();
    assert_eq!(
        values(&head, "forwarded"),
        ["for=\"[2001:db8::1]\";host=\"app.test:8080\";proto=http"],
        "{head}"
    );
    assert!(!head.to_ascii_lowercase().contains("x-forwarded"), "{head}");

    // both, trusted: the chains are appended to.
    let lbd = LbdConf::front(&[origin.port])
        .top("trusted_proxies: [127.0.0.1/32]")
        .listener_extra("forwarded: both")
        .start();
    let head = head_from(&lbd, [127, 0, 0, 1], SPOOFED);
    assert_eq!(
        values(&head, "forwarded"),
        ["for=6.6.6.6;proto=https, for=127.0.0.1;host=\"app.test:8080\";proto=http"],
        "{head}"
    );
    assert_eq!(
        values(&head, "x-forwarded-for"),
        ["6.6.6.6, 127.0.0.1"],
        "{head}"
    );
    // none: lbd writes nothing; untrusted clients' are still dropped.
    let lbd = LbdConf::front(&[origin.port])
        .listener_extra("forwarded: none")
        .start();
    let head = head_from(&lbd, [127, 0, 0, 1], SPOOFED);
    assert!(!head.to_ascii_lowercase().contains("forwarded"), "{head}");
}

// ---------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------

#[test]
fn request_ids_are_unique_echoed_and_logged() {
    let origin = Origin::start("o");
    let dir = unique_temp_dir("rid");
    let log = dir.join("access.log");
    let lbd = LbdConf::front(&[origin.port])
        .threads(2)
        .top(&format!(
            "request_id: {{ header: X-Request-Id, generate: true }}\naccess_log: {{ path: {} }}",
            log.display()
        ))
        .start();
    let mut ids = std::collections::HashSet::new();
    let mut prefixes = std::collections::HashSet::new();
    for _ in 0..40 {
        // New connections, so both workers get some.
        let mut r = BufReader::new(connect_from([127, 0, 0, 1], lbd.port));
        for _ in 0..2 {
            let resp = exchange(
                &mut r,
                b"GET /headers HTTP/1.1\r\nHost: a\r\nX-Request-Id: mine\r\n\r\n",
            );
            let echoed = resp.header("x-request-id").expect("echoed").to_string();
            let sent = value(&resp.body_str(), "x-request-id");
            assert_eq!(echoed, sent);
            assert_eq!(sent.len(), 32, "{sent}");
            assert!(sent.bytes().all(|b| b.is_ascii_hexdigit()), "{sent}");
            prefixes.insert(sent[..16].to_string());
            assert!(ids.insert(sent.clone()), "duplicate id {sent}");
        }
    }
    assert_eq!(ids.len(), 80);
    assert_eq!(prefixes.len(), 2, "ids from both workers: {prefixes:?}");
    // Logged at the end of the combined line.
    let text = log_lines(&log, 80);
    let logged: std::collections::HashSet<String> = text
        .lines()
        .filter_map(|l| l.rsplit_once(" request_id=").map(|(_, id)| id.to_string()))
        .collect();
    assert_eq!(logged, ids);
}

#[test]
fn request_ids_kept_from_trusted_clients_only() {
    let origin = Origin::start("o");
    let dir = unique_temp_dir("rid-json");
    let log = dir.join("access.log");
    let lbd = LbdConf::front(&[origin.port])
        .top(&format!(
            "trusted_proxies: [127.0.0.1/32]\naccess_log: {{ path: {}, format: json }}",
            log.display()
        ))
        .listener_extra("request_id: { header: X-Trace-Id }")
        .start();
    let req = b"GET /headers HTTP/1.1\r\nHost: a\r\nX-Trace-Id: keep-me-1\r\n\r\n";
    let mut r = BufReader::new(connect_from([127, 0, 0, 1], lbd.port));
    let resp = exchange(&mut r, req);
    assert_eq!(resp.header("x-trace-id"), Some("keep-me-1"));
    assert_eq!(values(&resp.body_str(), "x-trace-id"), ["keep-me-1"]);
    let mut r = BufReader::new(connect_from([127, 0, 0, 2], lbd.port));
    let resp = exchange(&mut r, req);
    let id = resp.header("x-trace-id").unwrap().to_string();
    assert_ne!(id, "keep-me-1");
    assert_eq!(values(&resp.body_str(), "x-trace-id"), [id.as_str()]);
    let text = log_lines(&log, 2);
    assert!(text.contains("\"request_id\":\"keep-me-1\""), "{text}");
    assert!(text.contains(&format!("\"request_id\":\"{id}\"")), "{text}");
    // Without `request_id` configured, the header is an ordinary one and
    // the log line has no such field.
    let lbd = LbdConf::front(&[origin.port])
        .top(&format!(
            "access_log: {{ path: {} }}",
            dir.join("plain.log").display()
        ))
        .start();
    let mut r = BufReader::new(connect_from([127, 0, 0, 2], lbd.port));
    let resp = exchange(&mut r, req);
    assert_eq!(resp.header("x-trace-id"), None);
    assert_eq!(values(&resp.body_str(), "x-trace-id"), ["keep-me-1"]);
    thread::sleep(Duration::from_millis(200));
    let plain = fs::read_to_string(dir.join("plain.log")).unwrap();
    assert!(!plain.contains("request_id"), "{plain}");
}

// ---------------------------------------------------------------------------
// Config errors
// ---------------------------------------------------------------------------

#[test]
fn config_errors_name_key_and_value() {
    // (where the YAML goes: top, listener or group; the YAML; key; value)
    for (place, yaml, key, value) in [
        (
            'l',
            "proxy_protocol: { trusted: [10.0.0.0/8, 10.0.0.0/40] }",
            "listeners[0].proxy_protocol.trusted[1]",
            "10.0.0.0/40",
        ),
        (
            'l',
            "proxy_protocol: { trusted: [not-an-ip] }",
            "listeners[0].proxy_protocol.trusted[0]",
            "not-an-ip",
        ),
        (
            'l',
            "proxy_protocol: { trusted: [] }",
            "listeners[0].proxy_protocol.trusted",
            "[]",
        ),
        (
            'l',
            "proxy_protocol: { trusted: [127.0.0.1], versions: [v1, v9] }",
            "listeners[0].proxy_protocol.versions[1]",
            "v9",
        ),
        (
            'g',
            "send_proxy_protocol: v3",
            "upstreams.web.send_proxy_protocol",
            "v3",
        ),
        (
            'l',
            "forwarded: x-forwarded-for",
            "listeners[0].forwarded",
            "x-forwarded-for",
        ),
        (
            't',
            "trusted_proxies: [192.168.1.1/16]",
            "trusted_proxies[0]",
            "192.168.1.1/16",
        ),
        (
            't',
            "request_id: { header: Content-Length }",
            "request_id.header",
            "Content-Length",
        ),
    ] {
        let conf = LbdConf::front(&[1]);
        let conf = match place {
            't' => conf.top(yaml),
            'l' => conf.listener_extra(yaml),
            _ => conf.group_extra(yaml),
        };
        let (status, stderr) = conf.expect_failure();
        assert!(!status.success());
        assert!(
            stderr.contains(&format!("`{key}`")) && stderr.contains(&format!("`{value}`")),
            "{key} / {value}: {stderr}"
        );
    }
}
