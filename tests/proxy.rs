//! Integration tests for `lbd`: each test starts its own origin servers and
//! its own lbd process on fresh ports, so tests can run in parallel.

mod support;

use std::collections::HashSet;
use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use support::*;

const MIB: usize = 1 << 20;

fn origin_name(resp: &Response) -> String {
    resp.header("x-origin")
        .unwrap_or_else(|| panic!("response without X-Origin header: {resp:?}"))
        .to_string()
}

/// Header names (lowercased) and values from a raw request head as the origin
/// received it.
fn parse_head(head: &str) -> (String, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("").to_string();
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap_or((l, ""));
            (n.trim().to_ascii_lowercase(), v.trim().to_string())
        })
        .collect();
    (request_line, headers)
}

// ---------------------------------------------------------------------------
// Basic proxying and balancing
// ---------------------------------------------------------------------------

#[test]
fn basic_get_is_proxied() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    let r = c.get("/hello?x=1");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-origin"), Some("a"), "{r:?}");
    assert_eq!(r.body_str(), "a");
    assert_eq!(a.requests(), 1);
    let head = a.last_head();
    assert!(
        head.starts_with("GET /hello?x=1 HTTP/1.1\r\n"),
        "origin got request head {head:?}"
    );
}

#[test]
fn listener_upstream_is_optional_with_single_group() {
    let a = Origin::start("a");
    let port = free_port();
    let yaml = format!(
        "version: 1\nthreads: 1\nlisteners:\n  - address: 127.0.0.1:{port}\nupstreams:\n  only:\n    backends:\n      - 127.0.0.1:{}\n",
        a.port
    );
    let lbd = Lbd::start(&yaml, port, 1);
    let r = lbd.client().get("/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "a");
}

#[test]
fn round_robin_alternates_between_two_backends() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let lbd = LbdConf::front(&[a.port, b.port]).start();
    let mut seq = Vec::new();
    for _ in 0..10 {
        let mut c = lbd.client();
        let r = c.get("/");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.body_str(), origin_name(&r));
        seq.push(origin_name(&r));
    }
    for w in seq.windows(2) {
        assert_ne!(w[0], w[1], "requests did not alternate: {seq:?}");
    }
    assert_eq!(seq.iter().filter(|n| *n == "a").count(), 5, "{seq:?}");
    assert_eq!(a.requests(), 5);
    assert_eq!(b.requests(), 5);
}

#[test]
fn round_robin_is_per_request_on_one_keepalive_connection() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let lbd = LbdConf::front(&[a.port, b.port]).start();
    let mut c = lbd.client();
    let seq: Vec<String> = (0..10).map(|_| origin_name(&c.get("/"))).collect();
    for w in seq.windows(2) {
        assert_ne!(w[0], w[1], "requests did not alternate: {seq:?}");
    }
}

#[test]
fn smooth_weighted_round_robin_1_to_2() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let lbd = LbdConf::front(&[a.port]).weighted(&[(b.port, 2)]).start();
    let mut seq = Vec::new();
    for _ in 0..30 {
        let r = lbd.client().get("/");
        assert_eq!(r.status, 200, "{r:?}");
        seq.push(origin_name(&r));
    }
    assert_eq!(a.requests(), 10, "sequence {seq:?}");
    assert_eq!(b.requests(), 20, "sequence {seq:?}");
    // Smooth WRR is periodic with period 3, so every window of 3 consecutive
    // requests has exactly one A and two B.
    for (i, w) in seq.windows(3).enumerate() {
        let na = w.iter().filter(|n| *n == "a").count();
        assert_eq!(
            na, 1,
            "window at {i} = {w:?} is not smooth; full sequence {seq:?}"
        );
    }
}

#[test]
fn upstream_connections_are_reused_on_one_client_connection() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    for i in 0..100 {
        let r = c.get(&format!("/n{i}"));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
        assert_eq!(r.body_str(), "a");
    }
    assert_eq!(a.requests(), 100);
    assert!(
        a.connections() <= 2,
        "100 sequential keep-alive requests used {} origin connections (expected <= 2)",
        a.connections()
    );
}

#[test]
fn upstream_connections_are_pooled_across_client_connections() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    for i in 0..50 {
        let r = lbd.client().get(&format!("/n{i}"));
        assert_eq!(r.status, 200, "request {i}: {r:?}");
    }
    assert_eq!(a.requests(), 50);
    // Loose bound: a pool may race with the next client, but without pooling
    // this would be 50.
    assert!(
        a.connections() <= 10,
        "50 sequential client connections used {} origin connections (expected pooling, <= 10)",
        a.connections()
    );
}

#[test]
fn slow_request_does_not_block_other_clients_on_one_worker() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut slow = lbd.client();
    slow.send(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: lbd.test\r\n\r\n");
    thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    let r = lbd.client().get("/");
    let fast = t.elapsed();
    assert_eq!(r.status, 200);
    assert!(
        fast < Duration::from_millis(1000),
        "a fast request took {fast:?} while a slow one was in flight"
    );
    let r = slow.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "a");
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

#[test]
fn request_body_1mib_content_length_echoed() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let body = pattern(MIB);
    let mut c = lbd.client();
    let r = c.post("/echo", &body);
    assert_eq!(r.status, 200, "{:?} {:?}", r.status, r.headers);
    assert_body_eq(&r.body, &body, "CL request body echo");
    // Connection still usable.
    assert_eq!(c.get("/").body_str(), "a");
}

#[test]
fn request_body_1mib_chunked_echoed() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let body = pattern(MIB);
    let mut req =
        b"POST /echo HTTP/1.1\r\nHost: lbd.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&encode_chunked(&body));
    let mut c = lbd.client();
    c.send(&req);
    let r = c.response();
    assert_eq!(r.status, 200, "{:?} {:?}", r.status, r.headers);
    assert_body_eq(&r.body, &body, "chunked request body echo");
    assert_eq!(c.get("/").body_str(), "a");
}

#[test]
fn response_1mib_chunked_intact() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    let r = c.get(&format!("/chunked?size={MIB}"));
    assert_eq!(r.status, 200);
    assert_body_eq(&r.body, &pattern(MIB), "chunked response");
    assert_eq!(c.get("/").body_str(), "a");
}

#[test]
fn response_1mib_content_length_intact() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    let r = c.get(&format!("/big?size={MIB}"));
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-length"),
        Some("1048576"),
        "{:?}",
        r.headers
    );
    assert_body_eq(&r.body, &pattern(MIB), "Content-Length response");
    assert_eq!(c.get("/").body_str(), "a");
}

#[test]
fn response_1mib_close_delimited_intact() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    let r = c.get(&format!("/close?size={MIB}"));
    assert_eq!(r.status, 200);
    assert_body_eq(&r.body, &pattern(MIB), "close-delimited response");
    // A new request (on a new connection) still works afterwards.
    assert_eq!(lbd.client().get("/").body_str(), "a");
}

#[test]
fn head_has_headers_but_no_body() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    c.send(b"HEAD /big?size=1000 HTTP/1.1\r\nHost: lbd.test\r\n\r\n");
    let r = c.read_response(true).expect("HEAD response");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1000"), "{:?}", r.headers);
    assert_eq!(r.header("x-origin"), Some("a"));
    // HEAD of a chunked resource: lbd must not wait for / send a body.
    c.send(b"HEAD /chunked?size=5000 HTTP/1.1\r\nHost: lbd.test\r\n\r\n");
    let r = c
        .read_response(true)
        .expect("HEAD response (chunked resource)");
    assert_eq!(r.status, 200);
    // If any body bytes leaked after a HEAD response, this parse fails.
    let r = c.get("/");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "a");
    assert!(a.heads()[0].starts_with("HEAD /big?size=1000 HTTP/1.1\r\n"));
}

#[test]
fn status_204_and_304_have_no_body_and_keep_connection_usable() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    for code in [204u16, 304] {
        let r = c.get(&format!("/status/{code}"));
        assert_eq!(r.status, code, "{r:?}");
        assert!(r.body.is_empty());
        if code == 204 {
            assert_eq!(
                r.header("transfer-encoding"),
                None,
                "204 must not carry Transfer-Encoding: {:?}",
                r.headers
            );
        }
        let r = c.get("/");
        assert_eq!(r.status, 200, "request after {code}: {r:?}");
        assert_eq!(r.body_str(), "a");
    }
    let r = c.get("/status/500");
    assert_eq!(r.status, 500);
    assert_eq!(r.body_str(), "status 500\n");
}

// ---------------------------------------------------------------------------
// Connection management
// ---------------------------------------------------------------------------

#[test]
fn http10_request_gets_response_then_close() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    c.send(b"GET /ten HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "a");
    c.assert_closed("HTTP/1.0 response");
    let head = a.last_head();
    assert!(
        head.starts_with("GET /ten HTTP/1.1\r\n"),
        "upstream request must be HTTP/1.1, origin got {head:?}"
    );
}

#[test]
fn connection_close_is_honoured() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    c.send(b"GET / HTTP/1.1\r\nHost: lbd.test\r\nConnection: close\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "a");
    c.assert_closed("after Connection: close");
    let (_, headers) = parse_head(&a.last_head());
    assert!(
        !headers
            .iter()
            .any(|(n, v)| n == "connection" && v.to_ascii_lowercase().contains("close")),
        "client's Connection: close was forwarded upstream: {headers:?}"
    );
}

#[test]
fn pipelined_requests_answered_in_order() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    let mut req = Vec::new();
    req.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: lbd.test\r\nContent-Length: 5\r\n\r\nfirst",
    );
    req.extend_from_slice(b"GET /big?size=7 HTTP/1.1\r\nHost: lbd.test\r\n\r\n");
    req.extend_from_slice(
        b"POST /echo HTTP/1.1\r\nHost: lbd.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nthi\r\n2\r\nrd\r\n0\r\n\r\n",
    );
    c.send(&req);
    let r1 = c.response();
    let r2 = c.response();
    let r3 = c.response();
    assert_eq!((r1.status, r1.body_str()), (200, "first".to_string()));
    assert_eq!((r2.status, r2.body.clone()), (200, pattern(7)));
    assert_eq!((r3.status, r3.body_str()), (200, "third".to_string()));
    assert_eq!(c.get("/").body_str(), "a");
    assert_eq!(a.requests(), 4);
}

#[test]
fn hop_by_hop_headers_stripped_and_x_forwarded_for_appended() {
    let a = Origin::start("a");
    // The client is a trusted proxy: its X-Forwarded-For is appended to
    // (from others it is replaced, see tests/forwarding.rs).
    let lbd = LbdConf::front(&[a.port])
        .top("trusted_proxies: [127.0.0.1/32]")
        .start();
    let mut c = lbd.client();
    c.send(
        b"GET /headers HTTP/1.1\r\nHost: lbd.test\r\nConnection: keep-alive, X-Custom\r\nX-Custom: secret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: example/1\r\nProxy-Connection: keep-alive\r\nX-Kept: yes\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 200, "{r:?}");
    let head = r.body_str();
    let (request_line, headers) = parse_head(&head);
    assert_eq!(request_line, "GET /headers HTTP/1.1", "head: {head:?}");
    for h in [
        "x-custom",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-connection",
    ] {
        assert!(
            !headers.iter().any(|(n, _)| n == h),
            "hop-by-hop header {h} reached the origin:\n{head}"
        );
    }
    for (n, v) in &headers {
        if n == "connection" {
            assert!(
                !v.to_ascii_lowercase().contains("x-custom"),
                "Connection header naming X-Custom reached the origin:\n{head}"
            );
        }
    }
    assert!(
        headers.iter().any(|(n, v)| n == "x-kept" && v == "yes"),
        "end-to-end header X-Kept missing:\n{head}"
    );
    let xff: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "x-forwarded-for")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(xff, vec!["1.2.3.4, 127.0.0.1"], "head:\n{head}");

    // Without an incoming X-Forwarded-For, lbd adds just the client address.
    let r = c.get("/headers");
    let head = r.body_str();
    let (_, headers) = parse_head(&head);
    let xff: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "x-forwarded-for")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(xff, vec!["127.0.0.1"], "head:\n{head}");
}

#[test]
fn expect_100_continue() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    c.send(
        b"POST /echo HTTP/1.1\r\nHost: lbd.test\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    c.set_read_timeout(Duration::from_secs(3));
    let interim = c
        .read_response(false)
        .unwrap_or_else(|e| panic!("no interim response before sending the body: {e}"));
    assert_eq!(interim.status, 100, "{interim:?}");
    c.set_read_timeout(IO_TIMEOUT);
    c.send(b"hello world");
    let r = c.response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "hello world");
    assert_eq!(c.get("/").body_str(), "a");
}

// ---------------------------------------------------------------------------
// Strict framing
// ---------------------------------------------------------------------------

fn framing_cases() -> Vec<(&'static str, Vec<u8>, u16)> {
    let post = |hdrs: &str, body: &str| -> Vec<u8> {
        format!("POST /echo HTTP/1.1\r\nHost: lbd.test\r\n{hdrs}\r\n{body}").into_bytes()
    };
    let get = |hdrs: &str| -> Vec<u8> {
        format!("GET / HTTP/1.1\r\nHost: lbd.test\r\n{hdrs}\r\n").into_bytes()
    };
    vec![
        (
            "CL + TE",
            post(
                "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            400,
        ),
        (
            "TE + CL (lowercase, reversed)",
            post(
                "transfer-encoding: chunked\r\ncontent-length: 5\r\n",
                "0\r\n\r\n",
            ),
            400,
        ),
        (
            "two differing CL",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            400,
        ),
        (
            "duplicate identical CL",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            400,
        ),
        ("CL +5", post("Content-Length: +5\r\n", "hello"), 400),
        (
            "CL 0x10",
            post("Content-Length: 0x10\r\n", "0123456789abcdef"),
            400,
        ),
        ("CL empty", post("Content-Length: \r\n", ""), 400),
        ("CL abc", post("Content-Length: abc\r\n", ""), 400),
        (
            "CL huge",
            post("Content-Length: 99999999999999999999999\r\n", "x"),
            400,
        ),
        (
            "TE chunked, chunked",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            400,
        ),
        (
            "TE chunked, gzip",
            post("Transfer-Encoding: chunked, gzip\r\n", "0\r\n\r\n"),
            400,
        ),
        (
            "whitespace before colon",
            post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
            400,
        ),
        ("obs-fold", get("X-Foo: a\r\n  b\r\n"), 400),
        ("NUL in header value", get("X-Foo: a\0b\r\n"), 400),
        ("bare CR in header value", get("X-Foo: a\rb\r\n"), 400),
        (
            "HTTP/1.1 without Host",
            b"GET / HTTP/1.1\r\nX-Foo: bar\r\n\r\n".to_vec(),
            400,
        ),
        (
            "two Host headers",
            b"GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n".to_vec(),
            400,
        ),
        (
            "space in request target",
            b"GET /a b HTTP/1.1\r\nHost: lbd.test\r\n\r\n".to_vec(),
            400,
        ),
        (
            "TE gzip",
            post("Transfer-Encoding: gzip\r\n", "0\r\n\r\n"),
            501,
        ),
        (
            "TE gzip, chunked",
            post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
            501,
        ),
    ]
}

#[test]
fn framing_violations_are_rejected_and_never_reach_origin() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut failures = Vec::new();
    for (name, bytes, expected) in framing_cases() {
        let before_requests = a.requests();
        let before_heads = a.heads().len();
        let mut c = lbd.client();
        c.set_read_timeout(Duration::from_secs(3));
        c.send_lossy(&bytes);
        match c.read_response(false) {
            Ok(r) if r.status == expected => {
                if let Err(e) = c.check_closed(Duration::from_secs(2)) {
                    failures.push(format!("[{name}] status {expected} ok, but {e}"));
                }
            }
            Ok(r) => failures.push(format!(
                "[{name}] expected status {expected}, got {} {} (body {:?})",
                r.status,
                r.reason,
                r.body_str()
            )),
            Err(e) => failures.push(format!(
                "[{name}] expected status {expected}, got no response: {e} ({:?})",
                e.kind()
            )),
        }
        // Give a wrongly forwarded request a moment to arrive.
        thread::sleep(Duration::from_millis(20));
        let new_heads: Vec<String> = a.heads()[before_heads..].to_vec();
        if a.requests() != before_requests || !new_heads.is_empty() {
            failures.push(format!(
                "[{name}] request reached the origin: heads {new_heads:?}"
            ));
        }
    }
    // lbd is still healthy afterwards.
    let r = lbd.client().get("/");
    assert_eq!(r.status, 200);
    assert!(
        failures.is_empty(),
        "{} framing case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_chunk_size_never_delivers_a_complete_request() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    c.set_read_timeout(Duration::from_secs(3));
    c.send_lossy(
        b"POST /echo HTTP/1.1\r\nHost: lbd.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    match c.read_response(false) {
        Ok(r) => {
            assert_eq!(r.status, 400, "expected 400 or close, got {r:?}");
            c.assert_closed("after 400 for invalid chunk size");
        }
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::UnexpectedEof
                    | std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
            ),
            "expected 400 or close, got error {e} ({:?})",
            e.kind()
        ),
    }
    thread::sleep(Duration::from_millis(50));
    assert_eq!(a.requests(), 0, "origin received a complete request");
    // A poisoned upstream connection must not be reused for the next request.
    let r = lbd.client().post("/echo", b"clean");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "clean");
    assert_eq!(a.requests(), 1);
}

fn assert_431(request: &[u8], what: &str) {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).start();
    let mut c = lbd.client();
    c.send_lossy(request);
    let r = c.read_response(false).unwrap_or_else(|e| {
        panic!(
            "{what}: expected 431, got no response: {e} ({:?})",
            e.kind()
        )
    });
    assert_eq!(r.status, 431, "{what}: {r:?}");
    c.assert_closed(what);
    thread::sleep(Duration::from_millis(20));
    assert_eq!(a.requests(), 0, "{what}: request reached origin");
    assert!(a.heads().is_empty(), "{what}: request reached origin");
}

#[test]
fn oversized_request_head_gets_431() {
    let mut req = b"GET / HTTP/1.1\r\nHost: lbd.test\r\nX-Big: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 64 * 1024));
    req.extend_from_slice(b"\r\n\r\n");
    assert_431(&req, "64 KiB header");
}

#[test]
fn too_many_headers_gets_431() {
    let mut req = String::from("GET / HTTP/1.1\r\nHost: lbd.test\r\n");
    for i in 0..200 {
        req += &format!("X-Header-{i}: v\r\n");
    }
    req += "\r\n";
    assert_431(req.as_bytes(), "200 headers");
}

// ---------------------------------------------------------------------------
// Errors, threads, config
// ---------------------------------------------------------------------------

#[test]
fn all_backends_down_gives_502_quickly() {
    let (p1, p2) = (free_port(), free_port());
    let lbd = LbdConf::front(&[p1, p2]).start();
    let mut c = lbd.client();
    let t = Instant::now();
    let r = c.get("/");
    let took = t.elapsed();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(took < Duration::from_secs(2), "502 took {took:?}");
}

fn worker_threads(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for entry in dir.flatten() {
        let p = entry.path();
        let comm = fs::read_to_string(p.join("comm")).unwrap_or_default();
        let comm = comm.trim().to_string();
        if !comm.starts_with("lbd-worker") {
            continue;
        }
        let status = fs::read_to_string(p.join("status")).unwrap_or_default();
        let cpus = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
            .unwrap_or("")
            .trim()
            .to_string();
        out.push((comm, cpus));
    }
    out.sort();
    out
}

#[test]
fn two_threads_are_named_and_pinned_to_distinct_cpus() {
    let a = Origin::start("a");
    let lbd = LbdConf::front(&[a.port]).threads(2).start();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut workers = worker_threads(lbd.pid());
    while workers.len() < 2 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        workers = worker_threads(lbd.pid());
    }
    let names: Vec<&str> = workers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec!["lbd-worker-0", "lbd-worker-1"], "{workers:?}");
    let mut cpus = HashSet::new();
    for (name, list) in &workers {
        assert!(
            !list.is_empty() && list.bytes().all(|b| b.is_ascii_digit()),
            "{name} is not pinned to a single CPU: Cpus_allowed_list = {list:?}"
        );
        cpus.insert(list.clone());
    }
    assert_eq!(cpus.len(), 2, "workers share a CPU: {workers:?}");
    for _ in 0..4 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
}

fn assert_config_rejected(yaml: &str, must_mention: &[&str]) {
    let (status, stderr) = run_lbd_expect_failure(yaml, 1);
    assert!(
        !status.success(),
        "lbd exited successfully with a bad config:\n{yaml}\nstderr:\n{stderr}"
    );
    assert!(
        status.code().is_some(),
        "lbd was killed by a signal ({status}) instead of exiting with an error:\n{stderr}"
    );
    assert!(
        !stderr.contains("panicked at"),
        "lbd panicked instead of reporting a config error:\n{stderr}"
    );
    for m in must_mention {
        assert!(
            stderr.contains(m),
            "stderr does not mention {m:?}:\n---- stderr ----\n{stderr}\n---- config ----\n{yaml}"
        );
    }
}

#[test]
fn config_unknown_key_is_rejected() {
    let (port, be) = (free_port(), free_port());
    let yaml = format!(
        "version: 1\nthreads: 1\nlistners:\n  - address: 127.0.0.1:{port}\n    upstream: web\nupstreams:\n  web:\n    backends:\n      - 127.0.0.1:{be}\n"
    );
    assert_config_rejected(&yaml, &["listners"]);
}

#[test]
fn config_zero_weight_is_rejected() {
    let (port, be) = (free_port(), free_port());
    let yaml = LbdConf::new(port).threads(1).weighted(&[(be, 0)]).yaml();
    assert_config_rejected(&yaml, &["weight"]);
}

#[test]
fn config_bad_backend_address_is_rejected() {
    let port = free_port();
    let yaml = format!(
        "version: 1\nthreads: 1\nlisteners:\n  - address: 127.0.0.1:{port}\n    upstream: web\nupstreams:\n  web:\n    backends:\n      - 127.0.0.1:99999\n"
    );
    assert_config_rejected(&yaml, &["127.0.0.1:99999"]);
}

#[test]
fn config_bad_listener_address_is_rejected() {
    let be = free_port();
    let yaml = format!(
        "version: 1\nthreads: 1\nlisteners:\n  - address: 127.0.0.1:99999\n    upstream: web\nupstreams:\n  web:\n    backends:\n      - 127.0.0.1:{be}\n"
    );
    assert_config_rejected(&yaml, &["127.0.0.1:99999"]);
}

#[test]
fn config_empty_backends_is_rejected() {
    let port = free_port();
    let yaml = format!(
        "version: 1\nthreads: 1\nlisteners:\n  - address: 127.0.0.1:{port}\n    upstream: web\nupstreams:\n  web:\n    backends: []\n"
    );
    assert_config_rejected(&yaml, &["backends"]);
}

// ---------------------------------------------------------------------------
// Harness self-test: talks to the origin directly (no lbd involved), so a
// failure here is a bug in tests/support, not in lbd.
// ---------------------------------------------------------------------------

#[test]
fn harness_origin_selftest() {
    let o = Origin::start("self");
    let mut c = Client::connect(o.port);
    assert_eq!(c.get("/").body_str(), "self");
    assert_eq!(c.post("/echo", b"abc").body_str(), "abc");
    let r = c.get(&format!("/chunked?size={}", 100_000));
    assert!(r.chunked);
    assert_body_eq(&r.body, &pattern(100_000), "selftest chunked");
    assert_eq!(c.get("/big?size=300").body, pattern(300));
    assert!(c.get("/status/204").body.is_empty());
    assert!(c.get("/status/304").body.is_empty());
    c.send(b"HEAD /big?size=10 HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.header("content-length"), Some("10"));
    let mut req = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(&encode_chunked(&pattern(70_000)));
    req.extend_from_slice(b"GET /headers HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n");
    c.send(&req);
    assert_eq!(c.response().body, pattern(70_000));
    assert_eq!(
        c.response().body_str(),
        "GET /headers HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n"
    );
    let r = c.get("/close?size=5000");
    assert!(r.close_delimited);
    assert_eq!(r.body, pattern(5000));
    c.assert_closed("selftest close-delimited");
    assert_eq!(o.connections(), 1);
    assert_eq!(o.requests(), 10);
    assert_eq!(o.heads().len(), 10);
}
