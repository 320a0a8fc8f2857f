//! Client-side faults and resource limits against the real binary: clients
//! that stop reading, disconnect mid-exchange or half-close; connection
//! floods past the per-worker limit; thousands of idle connections; running
//! out of file descriptors.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use support::{read_response, unique_temp_dir, LbdConf, Origin};

fn get_ok(port: u16) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    assert_eq!(read_response(&mut r, false).expect("response").status, 200);
}

/// Reads until EOF or error; returns the bytes read.
fn drain(s: &mut TcpStream, limit: Duration) -> usize {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0;
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return total,
            Ok(n) => total += n,
        }
    }
}

#[test]
fn client_that_stops_reading_is_dropped_after_the_write_timeout() {
    let origin = Origin::start("a");
    let lbd = LbdConf::front(&[origin.port])
        .limits(&[("client_write_timeout_ms", 300)])
        .start();
    let port = lbd.port;
    let size = 64 << 20;
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET /big?size={size} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    // Wait for the body to start flowing (the origin builds it first), then
    // stop reading: lbd's writes stall once the socket buffers are full.
    let mut first = [0u8; 1024];
    assert!(s.read(&mut first).unwrap() > 0);
    thread::sleep(Duration::from_millis(1500));
    // Meanwhile other clients are served.
    get_ok(port);
    let got = drain(&mut s, Duration::from_secs(5));
    assert!(
        got < size,
        "the stalled client got the whole body ({got} bytes)"
    );
    get_ok(port);
    drop(lbd);
}

#[test]
fn connection_flood_past_the_limit_is_refused_cleanly() {
    let origin = Origin::start("a");
    let lbd = LbdConf::front(&[origin.port])
        .limits(&[("max_connections_per_worker", 20)])
        .start();
    let port = lbd.port;
    // 20 connections, each with a completed request: all admitted.
    let mut held: Vec<BufReader<TcpStream>> = (0..20)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
            let mut r = BufReader::new(s);
            assert_eq!(read_response(&mut r, false).unwrap().status, 200);
            r
        })
        .collect();
    // Past the limit: closed at once, without a response.
    for _ in 0..5 {
        let mut extra = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _ = extra.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
        assert_eq!(drain(&mut extra, Duration::from_secs(3)), 0);
    }
    // The admitted ones keep working.
    for r in held.iter_mut() {
        r.get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        assert_eq!(read_response(r, false).unwrap().status, 200);
    }
    // Freeing slots lets new connections in again.
    held.truncate(10);
    thread::sleep(Duration::from_millis(200));
    get_ok(port);
}

#[test]
fn thousands_of_idle_connections_do_not_disturb_service() {
    let origin = Origin::start("a");
    let lbd = LbdConf::front(&[origin.port])
        .limits(&[("header_timeout_ms", 10000)])
        .start();
    let port = lbd.port;
    let idle: Vec<TcpStream> = (0..3000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("idle connect"))
        .collect();
    let t = Instant::now();
    for _ in 0..20 {
        get_ok(port);
    }
    assert!(t.elapsed() < Duration::from_secs(5));
    drop(idle);
    get_ok(port);
}

#[test]
fn half_closed_client_gets_its_response() {
    let origin = Origin::start("a");
    let lbd = LbdConf::front(&[origin.port])
        .limits(&[("header_timeout_ms", 5000)])
        .start();
    let port = lbd.port;
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    (&s).write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).expect("response despite half-close");
    assert_eq!(resp.status, 200);
    // Then lbd closes its side.
    let mut rest = Vec::new();
    assert!(matches!(r.read_to_end(&mut rest), Ok(0)));
}

#[test]
fn client_gone_mid_response_abandons_the_upstream_connection() {
    let origin = Origin::start("a");
    let lbd = LbdConf::front(&[origin.port])
        .limits(&[("header_timeout_ms", 5000)])
        .start();
    let port = lbd.port;
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /big?size=50000000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut first = [0u8; 4096];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(s.read(&mut first).unwrap() > 0);
        // Gone, with most of the body unread.
    }
    thread::sleep(Duration::from_millis(300));
    // The half-sent upstream connection is not reused: a new one is opened.
    get_ok(port);
    assert_eq!(origin.connections(), 2, "upstream connection was reused");
}

#[test]
fn client_gone_mid_request_body_abandons_the_upstream_connection() {
    let origin = Origin::start("a");
    let lbd = LbdConf::front(&[origin.port])
        .limits(&[("header_timeout_ms", 5000)])
        .start();
    let port = lbd.port;
    {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10000000\r\n\r\n")
            .unwrap();
        s.write_all(&vec![b'x'; 100_000]).unwrap();
    }
    thread::sleep(Duration::from_millis(300));
    get_ok(port);
    assert_eq!(
        origin.requests(),
        1,
        "the truncated POST never completed upstream"
    );
    assert_eq!(origin.connections(), 2, "upstream connection was reused");
}

#[test]
fn running_out_of_file_descriptors_is_survived() {
    let origin = Origin::start("a");
    let conf = LbdConf::front(&[origin.port]).limits(&[("header_timeout_ms", 20000)]);
    let port = conf.port;
    let dir = unique_temp_dir("faults-fd");
    let conf_path = conf.write(&dir);
    let log = dir.join("stderr.log");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 48 && exec {} -c {} --threads 1",
            env!("CARGO_BIN_EXE_lbd"),
            conf_path.display()
        ))
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "lbd did not start");
        thread::sleep(Duration::from_millis(20));
    }
    // More connections than descriptors: the kernel queues them, lbd's
    // accepts fail with EMFILE.
    let flood: Vec<TcpStream> = (0..80)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", port)).ok())
        .collect();
    thread::sleep(Duration::from_millis(500));
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
            + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    let before = cpu(child.id());
    thread::sleep(Duration::from_secs(1));
    let used_ticks = cpu(child.id()) - before;
    // Not spinning: well under half a CPU-second in that second.
    assert!(
        used_ticks < 50,
        "lbd burned {used_ticks} ticks while out of fds"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("accept failed"), "{text}");
    // Descriptors come back: service resumes.
    drop(flood);
    let t = Instant::now();
    loop {
        let ok = TcpStream::connect(("127.0.0.1", port))
            .ok()
            .and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").ok()?;
                read_response(&mut BufReader::new(s), false).ok()
            });
        if ok.is_some_and(|r| r.status == 200) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "service did not resume"
        );
        thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}
