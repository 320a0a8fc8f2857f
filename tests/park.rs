//! Idle keep-alive connections parked without a task (src/park.rs): they
//! come back with their state when the client speaks again, close at their
//! keep-alive deadline, and close on SIGTERM after the drain window. The
//! `lbd_connections_parked` gauge says when parking happened.

mod support;

use std::io::{BufReader, Write};
use std::net::Shutdown;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::*;

/// One gauge or counter from the admin endpoint.
fn metric(admin: u16, name: &str) -> u64 {
    let (status, out) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    out.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{out}"))
}

/// Waits until `name` reads `want` (the gauges refresh every 50 ms).
fn wait_metric(admin: u16, name: &str, want: u64, limit: Duration) {
    let t = Instant::now();
    loop {
        let v = metric(admin, name);
        if v == want {
            return;
        }
        assert!(t.elapsed() < limit, "{name} is {v}, wanted {want}");
        thread::sleep(Duration::from_millis(50));
    }
}

/// An origin and lbd in front of it with an admin endpoint (returned too).
fn start(limits: &[(&str, u64)]) -> (Origin, Lbd, u16) {
    start_env(limits, &[])
}

fn start_env(limits: &[(&str, u64)], env: &[(&str, &str)]) -> (Origin, Lbd, u16) {
    let origin = Origin::start("a");
    let admin = free_port();
    let lbd = LbdConf::front(&[origin.port])
        .admin(admin)
        .limits(limits)
        .start_with_env(env);
    (origin, lbd, admin)
}

/// A parked connection comes back where it stopped: its request count
/// carries over (the keepalive_requests-th response says close).
#[test]
fn parked_connection_is_served_again_with_its_request_count() {
    let (origin, lbd, admin) = start(&[("keepalive_requests", 3)]);
    let mut c = lbd.client();
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 200);
    wait_metric(admin, "lbd_connections_parked", 1, Duration::from_secs(5));
    assert_eq!(metric(admin, "lbd_connections_active"), 1);
    let r = c.get("/third");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body_str(), "a");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    c.assert_closed("after keepalive_requests");
    assert_eq!(origin.requests(), 3);
    wait_metric(admin, "lbd_connections_active", 0, Duration::from_secs(3));
    wait_metric(admin, "lbd_connections_parked", 0, Duration::from_secs(3));
}

fn many_parked_connections_come_back(env: &[(&str, &str)]) {
    const N: usize = 300;
    let (origin, lbd, admin) = start_env(&[], env);
    let mut conns: Vec<Client> = (0..N).map(|_| lbd.client()).collect();
    for (i, c) in conns.iter_mut().enumerate() {
        let r = c.get(&format!("/first/{i}"));
        assert_eq!(r.status, 200, "connection {i}: {r:?}");
    }
    wait_metric(
        admin,
        "lbd_connections_parked",
        N as u64,
        Duration::from_secs(6),
    );
    // Every one of them is served again, in an order unrelated to parking.
    for (i, c) in conns.iter_mut().enumerate().rev() {
        let r = c.get(&format!("/second/{i}"));
        assert_eq!(r.status, 200, "connection {i}: {r:?}");
        assert_eq!(r.header("connection"), None, "connection {i}: {r:?}");
    }
    assert_eq!(origin.requests(), 2 * N);
    // A parked client that sends its request and half-closes still gets
    // its response.
    wait_metric(
        admin,
        "lbd_connections_parked",
        N as u64,
        Duration::from_secs(6),
    );
    let last = conns.pop().expect("a connection");
    let s = last.stream().try_clone().unwrap();
    (&s).write_all(b"GET /half HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).expect("response").status, 200);
    // Clients that close while parked are closed and uncounted.
    drop(conns);
    drop(last);
    drop(r);
    wait_metric(admin, "lbd_connections_active", 0, Duration::from_secs(5));
    wait_metric(admin, "lbd_connections_parked", 0, Duration::from_secs(1));
}

#[test]
fn many_parked_connections_come_back_on_io_uring() {
    many_parked_connections_come_back(&[]);
}

/// The same on monoio's epoll driver (the fallback where io_uring is off).
#[test]
fn many_parked_connections_come_back_on_the_epoll_fallback() {
    many_parked_connections_come_back(&[("MONOIO_FORCE_LEGACY_DRIVER", "1")]);
}

/// Parking does not extend the keep-alive timeout, nor cut it short (the
/// coarse clock may bring it forward by up to 100 ms).
#[test]
fn parked_connection_closes_at_its_keepalive_timeout() {
    let (_origin, lbd, admin) = start(&[("keepalive_timeout_ms", 3000)]);
    let mut c = lbd.client();
    assert_eq!(c.get("/").status, 200);
    let idle_since = Instant::now();
    wait_metric(admin, "lbd_connections_parked", 1, Duration::from_secs(3));
    if let Err(e) = c.check_closed(Duration::from_secs(6)) {
        panic!("parked connection: {e}");
    }
    let idle = idle_since.elapsed();
    assert!(
        idle >= Duration::from_millis(2800) && idle < Duration::from_secs(6),
        "closed after {idle:?} idle"
    );
    wait_metric(admin, "lbd_connections_active", 0, Duration::from_secs(1));
}

/// SIGTERM: a parked connection whose request is on its way is served
/// (with Connection: close); the others close; lbd exits promptly.
#[test]
fn sigterm_serves_then_closes_parked_connections() {
    let (_origin, mut lbd, admin) = start(&[]);
    let mut quiet = lbd.client();
    let mut talker = lbd.client();
    assert_eq!(quiet.get("/").status, 200);
    assert_eq!(talker.get("/").status, 200);
    wait_metric(admin, "lbd_connections_parked", 2, Duration::from_secs(5));
    let sent = Instant::now();
    kill(Pid::from_raw(lbd.pid() as i32), Signal::SIGTERM).unwrap();
    thread::sleep(Duration::from_millis(150));
    let r = talker.get("/late");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    talker.assert_closed("served during drain");
    if let Err(e) = quiet.check_closed(Duration::from_secs(5)) {
        panic!("idle parked connection during drain: {e}");
    }
    assert!(lbd.wait_exit(Duration::from_secs(5)), "lbd did not exit");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}
