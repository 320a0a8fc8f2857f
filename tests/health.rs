//! Health checks and failover against real origins that the tests kill and
//! revive: the checker thread, passive marking, retries, 502/503/504.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use support::{free_port, read_response, LbdConf};

/// A minimal keep-alive origin that can be killed (listener and every open
/// connection closed at once, like a crashed process) and revived on the same
/// port. `/health` answers with a settable status.
struct Killable {
    port: u16,
    name: &'static str,
    requests: Arc<AtomicUsize>,
    health_status: Arc<AtomicUsize>,
    alive: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Killable {
    fn start(name: &'static str) -> Killable {
        let k = Killable {
            port: free_port(),
            name,
            requests: Arc::new(AtomicUsize::new(0)),
            health_status: Arc::new(AtomicUsize::new(200)),
            alive: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        k.revive();
        k
    }

    fn revive(&self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).expect("origin bind");
        listener.set_nonblocking(true).expect("nonblocking");
        self.alive.store(true, Ordering::SeqCst);
        let (alive, conns, requests, health, name) = (
            self.alive.clone(),
            self.conns.clone(),
            self.requests.clone(),
            self.health_status.clone(),
            self.name,
        );
        thread::spawn(move || {
            while alive.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nonblocking(false);
                        if let Ok(c) = s.try_clone() {
                            conns.lock().unwrap().push(c);
                        }
                        let (requests, health) = (requests.clone(), health.clone());
                        thread::spawn(move || serve(s, name, &requests, &health));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            // Dropping the listener closes the port.
        });
    }

    /// Closes the listener and resets every open connection.
    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
        // Wait until the port refuses connections.
        let deadline = Instant::now() + Duration::from_secs(2);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "origin did not stop");
            thread::sleep(Duration::from_millis(5));
        }
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn serve(s: TcpStream, name: &str, requests: &AtomicUsize, health: &AtomicUsize) {
    let mut r = BufReader::new(match s.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut w = s;
    loop {
        let mut head = Vec::new();
        loop {
            let mut byte = [0u8; 1];
            match r.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
            if head.ends_with(b"\r\n\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head);
        let path = text.split(' ').nth(1).unwrap_or("/").to_string();
        let (status, body) = if path == "/health" {
            (health.load(Ordering::SeqCst), "health".to_string())
        } else {
            requests.fetch_add(1, Ordering::SeqCst);
            (200, name.to_string())
        };
        let resp = format!(
            "HTTP/1.1 {status} X\r\nX-Origin: {name}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if w.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

/// Active TCP checks every 200 ms with a 200 ms timeout.
const TCP_CHECK: &[(&str, &str)] = &[
    ("kind", "tcp"),
    ("interval_ms", "200"),
    ("timeout_ms", "200"),
];

/// Active `GET /health` checks every 200 ms with a 500 ms timeout.
const HTTP_CHECK: &[(&str, &str)] = &[
    ("kind", "http"),
    ("path", "/health"),
    ("interval_ms", "200"),
    ("timeout_ms", "500"),
];

/// One GET on a fresh connection: (status, X-Origin).
fn get(port: u16) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect lbd");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).expect("response");
    (
        resp.status,
        resp.header("X-Origin").unwrap_or("").to_string(),
    )
}

#[test]
fn dead_backend_at_start_never_sees_traffic_and_no_request_fails() {
    let a = Killable::start("a");
    let b = Killable::start("b");
    let dead = free_port(); // nothing listens there
    let lbd = LbdConf::front(&[a.port, dead, b.port])
        .health_check(TCP_CHECK)
        .start();
    let port = lbd.port;
    for _ in 0..30 {
        let (status, _) = get(port);
        assert_eq!(status, 200);
    }
    assert_eq!(a.requests() + b.requests(), 30);
    let log = lbd.stderr();
    assert!(
        log.contains(&format!(
            "127.0.0.1:{dead} is unhealthy: connection refused"
        )),
        "{log}"
    );
    // No request ever tried the dead backend: the first round ran before
    // accepting, so no passive connect failure was logged for it.
    assert!(!log.contains("connect to upstream"), "{log}");
}

#[test]
fn killed_backend_under_load_loses_no_get_and_gets_no_traffic_after_interval() {
    let a = Killable::start("a");
    let b = Killable::start("b");
    let lbd = LbdConf::front(&[a.port, b.port])
        .health_check(TCP_CHECK)
        .start();
    let port = lbd.port;
    // Steady load on keep-alive connections from 4 clients.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (stop, failures, ok) = (stop.clone(), failures.clone(), ok.clone());
        clients.push(thread::spawn(move || {
            let mut conn: Option<BufReader<TcpStream>> = None;
            while !stop.load(Ordering::SeqCst) {
                let r = conn.get_or_insert_with(|| {
                    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                    BufReader::new(s)
                });
                if r.get_mut()
                    .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                    .is_err()
                {
                    failures.fetch_add(1, Ordering::SeqCst);
                    conn = None;
                    continue;
                }
                match read_response(r, false) {
                    Ok(resp) if resp.status == 200 => {
                        ok.fetch_add(1, Ordering::SeqCst);
                        // lbd closes after `keepalive_requests` (1000).
                        if resp.header("Connection") == Some("close") {
                            conn = None;
                        }
                    }
                    other => {
                        eprintln!("GET failed: {:?}", other.map(|r| r.status));
                        failures.fetch_add(1, Ordering::SeqCst);
                        conn = None;
                    }
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(300));
    a.kill();
    // A head the origin had already read when it was killed may still be
    // counted by its handler thread: let those settle first.
    thread::sleep(Duration::from_millis(50));
    let killed_at_requests = a.requests();
    // After the check interval (plus slack for a loaded machine), a must see
    // no traffic at all.
    thread::sleep(Duration::from_millis(800));
    let after_interval = a.requests();
    thread::sleep(Duration::from_millis(400));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "failed GETs");
    assert!(
        ok.load(Ordering::SeqCst) > 100,
        "load too light to mean anything"
    );
    assert_eq!(
        a.requests(),
        killed_at_requests,
        "a is dead: it cannot count"
    );
    assert_eq!(after_interval, killed_at_requests);
    let log = lbd.stderr();
    assert_eq!(
        log.matches(&format!("127.0.0.1:{} is unhealthy", a.port))
            .count(),
        1,
        "transition logged exactly once:\n{log}"
    );
}

#[test]
fn revived_backend_gets_traffic_again_within_interval_times_rise() {
    let a = Killable::start("a");
    let b = Killable::start("b");
    let lbd = LbdConf::front(&[a.port, b.port])
        .health_check(TCP_CHECK)
        .health_check(&[("rise", "2")])
        .start();
    let port = lbd.port;
    a.kill();
    thread::sleep(Duration::from_millis(500));
    let before = a.requests();
    for _ in 0..10 {
        assert_eq!(get(port), (200, "b".to_string()));
    }
    a.revive();
    let revived = Instant::now();
    // interval × rise = 400 ms, plus one interval of slack.
    loop {
        if get(port).1 == "a" {
            break;
        }
        assert!(
            revived.elapsed() < Duration::from_millis(1000),
            "a did not get traffic back in time:\n{}",
            lbd.stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert!(a.requests() > before);
    let log = lbd.stderr();
    assert_eq!(
        log.matches(&format!("127.0.0.1:{} is healthy again", a.port))
            .count(),
        1,
        "{log}"
    );
}

#[test]
fn all_backends_down_gives_fast_503() {
    let a = Killable::start("a");
    let lbd = LbdConf::front(&[a.port]).health_check(TCP_CHECK).start();
    let port = lbd.port;
    a.kill();
    thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let (status, _) = get(port);
    assert_eq!(status, 503, "{}", lbd.stderr());
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "503 must be immediate"
    );
}

#[test]
fn http_check_marks_backend_answering_500_down() {
    let a = Killable::start("a");
    let b = Killable::start("b");
    let lbd = LbdConf::front(&[a.port, b.port])
        .health_check(HTTP_CHECK)
        .start();
    let port = lbd.port;
    a.health_status.store(500, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(500));
    for _ in 0..10 {
        assert_eq!(get(port), (200, "b".to_string()), "{}", lbd.stderr());
    }
    let log = lbd.stderr();
    assert!(
        log.contains(&format!(
            "127.0.0.1:{} is unhealthy: HTTP status 500",
            a.port
        )),
        "{log}"
    );
    a.health_status.store(200, Ordering::SeqCst);
    thread::sleep(Duration::from_millis(500));
    let origins: Vec<String> = (0..4).map(|_| get(port).1).collect();
    assert!(origins.iter().any(|o| o == "a"), "{origins:?}");
}

#[test]
fn without_checks_a_dead_backend_is_skipped_by_retry_then_passively() {
    let a = Killable::start("a");
    let dead = free_port();
    let lbd = LbdConf::front(&[dead, a.port]).start();
    let port = lbd.port;
    for _ in 0..20 {
        assert_eq!(get(port), (200, "a".to_string()));
    }
    // Marked down passively after the first refusal: far fewer than 20 tries.
    let refusals = lbd.stderr().matches("connect to upstream").count();
    assert!((1..=5).contains(&refusals), "refusals logged: {refusals}");
}

#[test]
fn response_head_timeout_gives_504() {
    // An origin that accepts and reads but never answers.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            held.push(s);
        }
    });
    let lbd = LbdConf::front(&[silent])
        .limits(&[("upstream_response_timeout_ms", 300)])
        .start();
    let port = lbd.port;
    let t = Instant::now();
    assert_eq!(get(port).0, 504);
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert!(t.elapsed() < Duration::from_secs(3));
}
