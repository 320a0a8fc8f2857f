//! HTTP/2 downstream against the real binary with real clients: curl
//! (`--http2-prior-knowledge`, `--http2` over TLS), h2load (100 concurrent
//! streams on one connection across two backends), and a frame-level client
//! (tests/support/h2client.py, Python's `h2`) for protocol errors, drain and
//! floods. Backends are the HTTP/1.1 origins of tests/support.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{assert_body_eq, free_port, http_get, pattern, unique_temp_dir, LbdConf, Origin};

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "30"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("curl (curl with HTTP/2 support is required)")
}

/// `curl ... -w '%{http_version} %{http_code}'` to `url`, body to `out`:
/// (HTTP version, status).
fn curl_to(extra: &[&str], url: &str, out: &Path) -> (String, u16) {
    let o = out.to_str().unwrap();
    let mut args = extra.to_vec();
    args.extend(["-o", o, "-w", "%{http_version} %{http_code}", url]);
    let res = curl(&args);
    assert!(
        res.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&res.stderr)
    );
    let w = String::from_utf8_lossy(&res.stdout).to_string();
    let (v, code) = w.split_once(' ').expect("curl -w output");
    (v.to_string(), code.parse().expect("status"))
}

/// Runs tests/support/h2client.py against `port`; its `key=value` words.
fn h2client(port: u16, args: &[&str]) -> Vec<(String, String)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/h2client.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(port.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("python3 (with the `h2` package) is required");
    assert!(
        out.status.success(),
        "h2client {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn word<'a>(words: &'a [(String, String)], key: &str) -> &'a str {
    words
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key}= in {words:?}"))
}

fn h2c(origins: &[&Origin]) -> LbdConf {
    let ports: Vec<u16> = origins.iter().map(|o| o.port).collect();
    LbdConf::front(&ports).listener_extra("http2: true")
}

fn tmp(tag: &str) -> PathBuf {
    unique_temp_dir(tag)
}

#[test]
fn h2c_prior_knowledge_and_http1_on_the_same_port() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o]).start();
    let dir = tmp("h2c");
    let url = format!("http://127.0.0.1:{}/headers", lbd.port);
    let (v, code) = curl_to(&["--http2-prior-knowledge"], &url, &dir.join("body"));
    assert_eq!((v.as_str(), code), ("2", 200));
    // The backend got HTTP/1.1 with Host from :authority.
    let head = fs::read_to_string(dir.join("body")).unwrap();
    assert!(head.starts_with("GET /headers HTTP/1.1\r\n"), "{head}");
    let host = format!("host: 127.0.0.1:{}\r\n", lbd.port);
    assert!(head.to_ascii_lowercase().contains(&host), "{head}");
    // HTTP/1.1 on the same port, on a new connection and with curl.
    let r = lbd.client().get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.body_str(), "a");
    let (v, code) = curl_to(&["--http1.1"], &url, &dir.join("h1"));
    assert_eq!((v.as_str(), code), ("1.1", 200));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn h2c_after_a_proxy_protocol_header() {
    let o = Origin::start("a");
    let lbd = LbdConf::front(&[o.port])
        .listener_extra("http2: true\nproxy_protocol: { trusted: 127.0.0.1 }")
        .start();
    let dir = tmp("h2c-pp");
    let url = format!("http://127.0.0.1:{}/", lbd.port);
    // The preface's first bytes may arrive with the header.
    for v in ["--http2-prior-knowledge", "--http1.1"] {
        let (got, code) = curl_to(&[v, "--haproxy-protocol"], &url, &dir.join("b"));
        assert_eq!(code, 200, "{v}");
        assert_eq!(got, if v == "--http1.1" { "1.1" } else { "2" });
    }
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn h2c_is_off_by_default_on_plain_listeners() {
    let o = Origin::start("a");
    let lbd = LbdConf::front(&[o.port]).start();
    let url = format!("http://127.0.0.1:{}/", lbd.port);
    let res = curl(&["--http2-prior-knowledge", "-o", "/dev/null", &url]);
    assert!(!res.status.success(), "h2c served without http2: true");
    assert_eq!(o.requests(), 0);
    assert_eq!(lbd.client().get("/").status, 200);
}

/// The value of the first sample of metric `name` (with its labels, if
/// given in `name`) at the admin address.
fn metric(admin: u16, name: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn h2load_100_streams_on_one_connection_across_two_backends() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let admin = free_port();
    let dir = tmp("h2-load");
    let log = dir.join("access.log");
    let lbd = h2c(&[&a, &b])
        .admin(admin)
        .top(&format!("access_log:\n  path: {}\n", log.display()))
        .start();
    let url = format!("http://127.0.0.1:{}/", lbd.port);
    let out = Command::new("h2load")
        .args(["-n", "1000", "-c", "1", "-m", "100", &url])
        .stdin(Stdio::null())
        .output()
        .expect("h2load (Debian's nghttp2-client) is required");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "h2load failed: {text}");
    assert!(
        text.contains("1000 total, 1000 started, 1000 done, 1000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 1000 2xx"), "{text}");
    assert_eq!(a.requests() + b.requests(), 1000);
    assert!(
        a.requests() > 100 && b.requests() > 100,
        "unbalanced: a {} b {}",
        a.requests(),
        b.requests()
    );
    // Streams count like HTTP/1 requests, in metrics and the access log.
    assert_eq!(metric(admin, "lbd_http2_connections_total"), 1.0);
    assert_eq!(metric(admin, "lbd_http2_streams_total"), 1000.0);
    assert_eq!(
        metric(admin, "lbd_requests_total{code=\"2xx\",protocol=\"h2\"}"),
        1000.0
    );
    assert_eq!(
        metric(
            admin,
            "lbd_requests_total{code=\"2xx\",protocol=\"http/1.1\"}"
        ),
        0.0
    );
    let t = Instant::now();
    let text = loop {
        let text = fs::read_to_string(&log).unwrap_or_default();
        if text.lines().count() >= 1000 {
            break text;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "only:\n{text}");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(text.lines().count(), 1000);
    assert!(
        text.lines()
            .all(|l| l.contains("\"GET / HTTP/2.0\" 200 1 ")),
        "{}",
        text.lines().next().unwrap_or_default()
    );
    drop(lbd);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn ten_mib_upload_and_download_byte_exact() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o]).start();
    let dir = tmp("h2-big");
    let size = 10 << 20;
    let body = pattern(size);
    let up = dir.join("up");
    fs::write(&up, &body).unwrap();
    let base = format!("http://127.0.0.1:{}", lbd.port);
    let pk = "--http2-prior-knowledge";
    // Upload with a length, echoed back.
    let data = format!("@{}", up.display());
    let (v, code) = curl_to(
        &[
            pk,
            "--data-binary",
            &data,
            "-H",
            "content-type: application/octet-stream",
        ],
        &format!("{base}/echo"),
        &dir.join("echo"),
    );
    assert_eq!((v.as_str(), code), ("2", 200));
    assert_body_eq(&fs::read(dir.join("echo")).unwrap(), &body, "echo (length)");
    // Upload of no stated length (chunked to the backend), echoed back.
    let upload = format!("{}", up.display());
    let (v, code) = curl_to(
        &[pk, "-X", "POST", "-T", &upload, "-H", "content-length:"],
        &format!("{base}/echo"),
        &dir.join("echo2"),
    );
    assert_eq!((v.as_str(), code), ("2", 200));
    assert_body_eq(
        &fs::read(dir.join("echo2")).unwrap(),
        &body,
        "echo (chunked)",
    );
    // Downloads: a length, and chunked from the backend.
    for path in ["big", "chunked"] {
        let url = format!("{base}/{path}?size={size}");
        let (v, code) = curl_to(&[pk], &url, &dir.join(path));
        assert_eq!((v.as_str(), code), ("2", 200));
        assert_body_eq(&fs::read(dir.join(path)).unwrap(), &body, path);
    }
    let _ = fs::remove_dir_all(dir);
}

/// A keep-alive HTTP/1.1 origin whose every response is chunked with a
/// trailer section: `hello` then `X-Checksum: abc` and `X-Count: 5`.
fn trailer_origin() -> u16 {
    canned_origin(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\n0\r\nX-Checksum: abc\r\nX-Count: 5\r\n\r\n",
    )
}

/// A keep-alive HTTP/1.1 origin answering every GET with `resp` verbatim.
fn canned_origin(resp: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                use std::io::{BufRead, BufReader, Write};
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    // The head, to its empty line (GETs, no body).
                    loop {
                        line.clear();
                        match r.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => break,
                            Ok(_) => {}
                        }
                    }
                    if w.write_all(resp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn interim_responses_are_relayed_before_the_final_one() {
    let port = canned_origin(
        "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload; as=style\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    );
    let lbd = LbdConf::front(&[port])
        .listener_extra("http2: true")
        .start();
    let w = h2client(lbd.port, &["get", "/"]);
    assert_eq!(word(&w, "interim"), "103", "{w:?}");
    assert_eq!(
        word(&w, "link"),
        "</style.css>;rel=preload;as=style",
        "{w:?}"
    );
    assert_eq!(
        (word(&w, "status"), word(&w, "body")),
        ("200", "5"),
        "{w:?}"
    );
    // curl sees it too, and HTTP/1.1 clients as before.
    let out = curl(&[
        "-sv",
        "--http2-prior-knowledge",
        &format!("http://127.0.0.1:{}/", lbd.port),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("< HTTP/2 103"), "{err}");
    assert!(err.contains("< HTTP/2 200"), "{err}");
    let mut c = lbd.client();
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let early = c.response();
    assert_eq!(early.status, 103);
    let link = early
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("link"));
    assert_eq!(
        link.map(|(_, v)| v.as_str()),
        Some("</style.css>; rel=preload; as=style")
    );
    let r = c.response();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
}

#[test]
fn trailers_of_a_chunked_response_become_http2_trailers() {
    let port = trailer_origin();
    let lbd = LbdConf::front(&[port])
        .listener_extra("http2: true")
        .start();
    for _ in 0..2 {
        let w = h2client(lbd.port, &["get", "/"]);
        assert_eq!(word(&w, "status"), "200", "{w:?}");
        assert_eq!(word(&w, "body"), "5", "{w:?}");
        assert_eq!(word(&w, "trailers"), "x-checksum:abc,x-count:5", "{w:?}");
        assert_eq!(word(&w, "ended"), "True", "{w:?}");
    }
}

#[test]
fn request_trailers_go_upstream_in_the_chunked_body() {
    // A raw origin that records the request bytes up to the end of the
    // chunked body's trailer section, then answers.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let got = seen.clone();
    thread::spawn(move || {
        use std::io::{Read, Write};
        let Ok((mut s, _)) = l.accept() else { return };
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        while !buf.ends_with(b"\r\n0\r\nx-checksum: abc\r\n\r\n") {
            match s.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&b[..n]),
            }
            if buf.len() > 1 << 16 {
                break;
            }
        }
        *got.lock().unwrap() = buf;
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        thread::sleep(Duration::from_millis(500));
    });
    let lbd = LbdConf::front(&[port])
        .listener_extra("http2: true")
        .start();
    let w = h2client(lbd.port, &["post-trailers", "/up"]);
    assert_eq!(word(&w, "status"), "200", "{w:?}");
    let raw = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(raw.starts_with("POST /up HTTP/1.1\r\n"), "{raw}");
    assert!(
        raw.to_ascii_lowercase()
            .contains("transfer-encoding: chunked\r\n"),
        "{raw}"
    );
    assert!(
        raw.ends_with("\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"),
        "{raw}"
    );
}

#[test]
fn connection_specific_headers_reset_the_stream_and_never_reach_a_backend() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o]).start();
    for (name, value) in [
        ("connection", "keep-alive"),
        ("keep-alive", "300"),
        ("proxy-connection", "keep-alive"),
        ("transfer-encoding", "chunked"),
        ("upgrade", "websocket"),
        ("te", "gzip"),
    ] {
        let w = h2client(lbd.port, &["conn-header", name, value]);
        // PROTOCOL_ERROR (1), as a stream reset.
        assert_eq!(word(&w, "reset"), "1", "{name}: {w:?}");
    }
    assert_eq!(o.requests(), 0, "a malformed request reached the backend");
    // `te: trailers` is allowed.
    let w = h2client(lbd.port, &["conn-header", "te", "trailers"]);
    assert_eq!(word(&w, "status"), "200", "{w:?}");
    assert_eq!(o.requests(), 1);
}

#[test]
fn sigterm_sends_goaway_and_an_open_stream_finishes() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o]).start();
    let url = format!("http://127.0.0.1:{}/slow?ms=1500", lbd.port);
    // nghttp -v prints every frame (Python's h2 refuses frames after a
    // GOAWAY, so it cannot see the stream finish).
    let client = thread::spawn(move || {
        Command::new("nghttp")
            .args(["-v", &url])
            .stdin(Stdio::null())
            .output()
            .expect("nghttp (Debian's nghttp2-client) is required")
    });
    // The request is in flight at the backend when the drain begins.
    let t = Instant::now();
    while o.heads().is_empty() {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "request never arrived"
        );
        thread::sleep(Duration::from_millis(10));
    }
    kill(Pid::from_raw(lbd.pid() as i32), Signal::SIGTERM).unwrap();
    let out = client.join().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let goaway = text.find("recv GOAWAY").expect("no GOAWAY received");
    let status = text.find(":status: 200").expect("no response");
    assert!(goaway < status, "GOAWAY only after the response: {text}");
    assert!(text.contains("error_code=NO_ERROR"), "{text}");
    // The body ended the stream.
    assert!(text.contains("recv DATA frame"), "{text}");
    assert!(text[status..].contains("END_STREAM"), "{text}");
}

/// After a flood, lbd still serves new connections, HTTP/2 and HTTP/1.
fn still_serves(port: u16, lbd: &support::Lbd) {
    let w = h2client(port, &["get", "/"]);
    assert_eq!(word(&w, "status"), "200", "after the flood: {w:?}");
    assert_eq!(lbd.client().get("/").status, 200);
}

#[test]
fn rapid_reset_ends_in_goaway() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o]).start();
    let w = h2client(lbd.port, &["rapid-reset", "2000"]);
    // ENHANCE_YOUR_CALM (11), or the connection closed on the flood.
    assert!(
        word(&w, "goaway") == "11" || word(&w, "closed") == "True",
        "{w:?}"
    );
    assert!(o.requests() < 2000, "every reset stream was served");
    still_serves(lbd.port, &lbd);
}

#[test]
fn continuation_flood_ends_in_goaway() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o]).start();
    let w = h2client(lbd.port, &["continuation", "10000"]);
    assert!(
        word(&w, "goaway") != "none" || word(&w, "closed") == "True",
        "{w:?}"
    );
    assert_eq!(o.requests(), 0);
    still_serves(lbd.port, &lbd);
}

#[test]
fn an_hpack_bomb_is_refused_at_the_header_list_size() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o]).start();
    // 10,000 one-byte references to a 4 KiB entry: 40 MB decoded.
    let w = h2client(lbd.port, &["hpack-bomb", "10000"]);
    assert!(
        word(&w, "status") == "431" || word(&w, "reset") != "none" || word(&w, "goaway") != "none",
        "{w:?}"
    );
    // Only the stream that filled the table reached the backend.
    assert!(o.requests() <= 1, "{}", o.requests());
    still_serves(lbd.port, &lbd);
}

#[test]
fn ping_settings_window_and_empty_data_floods_end_in_goaway_enhance_your_calm() {
    let o = Origin::start("a");
    let admin = free_port();
    let lbd = h2c(&[&o]).admin(admin).start();
    // Empty DATA frames are counted by the h2 crate too (its own
    // `too_many_data_frames` GOAWAY, also ENHANCE_YOUR_CALM), whichever
    // trips first.
    let modes = [
        ("ping-flood", true),
        ("settings-flood", true),
        ("window-flood", true),
        ("empty-data", false),
    ];
    let mut metered = 0.0;
    for (mode, ours) in modes {
        let t = Instant::now();
        let w = h2client(lbd.port, &[mode, "100000"]);
        // ENHANCE_YOUR_CALM (11), well before the flood was all read.
        assert_eq!(word(&w, "goaway"), "11", "{mode}: {w:?}");
        assert!(t.elapsed() < Duration::from_secs(10), "{mode}: {w:?}");
        let floods = metric(admin, "lbd_http2_floods_total");
        if ours {
            metered += 1.0;
            assert_eq!(floods, metered, "{mode}");
        }
        still_serves(lbd.port, &lbd);
    }
}

#[test]
fn pings_and_window_updates_between_response_data_are_no_flood() {
    let o = Origin::start("a");
    let admin = free_port();
    let lbd = h2c(&[&o]).admin(admin).start();
    // A 15 MB download and 100 of 100 kB, a PING and a WINDOW_UPDATE after
    // each DATA frame: some 2,000 control frames in each, with the
    // response's DATA between them.
    for (n, size, total) in [("1", "15000000", "15000000"), ("100", "100000", "10000000")] {
        let w = h2client(lbd.port, &["pings-with-data", n, size]);
        assert_eq!(word(&w, "goaway"), "none", "{w:?}");
        assert_eq!(word(&w, "body"), total, "{w:?}");
    }
    assert_eq!(metric(admin, "lbd_http2_floods_total"), 0.0);
}

#[test]
fn a_zero_window_stall_resets_the_stream_after_client_write_timeout() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o])
        .limits(&[("client_write_timeout_ms", 1000)])
        .start();
    let t = Instant::now();
    let w = h2client(lbd.port, &["stall", "/big?size=1000000"]);
    // INTERNAL_ERROR (2) on the stream, about a second in.
    assert_eq!(word(&w, "reset"), "2", "{w:?}");
    assert!(t.elapsed() < Duration::from_secs(10), "{w:?}");
    still_serves(lbd.port, &lbd);
}

#[test]
fn past_the_worker_stream_cap_streams_are_refused() {
    let o = Origin::start("a");
    let lbd = h2c(&[&o])
        .limits(&[("max_http2_streams_per_worker", 3)])
        .start();
    let w = h2client(lbd.port, &["concurrent", "8", "/slow?ms=500"]);
    // 3 served, the other 5 refused (REFUSED_STREAM: safe to retry).
    assert_eq!((word(&w, "ok"), word(&w, "refused")), ("3", "5"), "{w:?}");
    assert_eq!(o.requests(), 3);
    // The count drops as streams end.
    let w = h2client(lbd.port, &["concurrent", "3", "/"]);
    assert_eq!(word(&w, "ok"), "3", "{w:?}");
}

/// A self-signed certificate for `localhost` in `dir`: (cert, key).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    fs::write(&cert, c.cert.pem()).unwrap();
    fs::write(&key, c.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

fn tls_conf(o: &Origin, dir: &Path, extra: &str) -> LbdConf {
    let (cert, key) = self_signed(dir);
    LbdConf::front(&[o.port]).listener_extra(&format!(
        "tls: {{ cert_file: {}, key_file: {} }}\n{extra}",
        cert.display(),
        key.display()
    ))
}

#[test]
fn tls_alpn_h2_by_default_and_http1_alongside() {
    let o = Origin::start("a");
    let dir = tmp("h2-tls");
    let lbd = tls_conf(&o, &dir, "").start();
    let url = format!("https://127.0.0.1:{}/headers", lbd.port);
    let (v, code) = curl_to(&["--http2", "-k"], &url, &dir.join("b"));
    assert_eq!((v.as_str(), code), ("2", 200));
    let head = fs::read_to_string(dir.join("b")).unwrap();
    assert!(head.starts_with("GET /headers HTTP/1.1\r\n"), "{head}");
    let (v, code) = curl_to(&["--http1.1", "-k"], &url, &dir.join("c"));
    assert_eq!((v.as_str(), code), ("1.1", 200));
    // A large body both ways over TLS.
    let size = 4 << 20;
    fs::write(dir.join("up"), pattern(size)).unwrap();
    let data = format!("@{}", dir.join("up").display());
    let echo = format!("https://127.0.0.1:{}/echo", lbd.port);
    let (v, code) = curl_to(
        &["--http2", "-k", "--data-binary", &data],
        &echo,
        &dir.join("e"),
    );
    assert_eq!((v.as_str(), code), ("2", 200));
    assert_body_eq(
        &fs::read(dir.join("e")).unwrap(),
        &pattern(size),
        "tls echo",
    );
    let big = format!("https://127.0.0.1:{}/chunked?size={size}", lbd.port);
    let (v, code) = curl_to(&["--http2", "-k"], &big, &dir.join("d"));
    assert_eq!((v.as_str(), code), ("2", 200));
    assert_body_eq(
        &fs::read(dir.join("d")).unwrap(),
        &pattern(size),
        "tls download",
    );
    drop(lbd);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn tls_http2_false_offers_only_http1() {
    let o = Origin::start("a");
    let dir = tmp("h2-tls-off");
    let lbd = tls_conf(&o, &dir, "http2: false").start();
    let url = format!("https://127.0.0.1:{}/", lbd.port);
    let (v, code) = curl_to(&["--http2", "-k"], &url, &dir.join("b"));
    assert_eq!((v.as_str(), code), ("1.1", 200));
    drop(lbd);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn h2load_over_tls() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let dir = tmp("h2-tls-load");
    let (cert, key) = self_signed(&dir);
    let lbd = LbdConf::front(&[a.port, b.port])
        .listener_extra(&format!(
            "tls: {{ cert_file: {}, key_file: {} }}",
            cert.display(),
            key.display()
        ))
        .start();
    let url = format!("https://127.0.0.1:{}/", lbd.port);
    let out = Command::new("h2load")
        .args(["-n", "500", "-c", "2", "-m", "50", &url])
        .stdin(Stdio::null())
        .output()
        .expect("h2load");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("500 succeeded, 0 failed"), "{text}");
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert_eq!(a.requests() + b.requests(), 500);
    drop(lbd);
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn bad_http2_keys_are_refused_naming_key_and_value() {
    let (status, err) = LbdConf::front(&[1])
        .listener_extra("http2: true\nhttp2_max_concurrent_streams: 0")
        .expect_failure();
    assert!(!status.success());
    assert!(
        err.contains("listeners[0].http2_max_concurrent_streams") && err.contains('0'),
        "{err}"
    );
}
