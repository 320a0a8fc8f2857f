//! Staged close (RFC 9112 §9.6): when lbd answers with an error and closes
//! while the client is still sending, the client reads the whole response
//! and its connection ends with a FIN, never a reset.
//!
//! Real clients against the real binary: curl uploading a large body that
//! gets rejected, raw sockets sending an oversized head in one write and in
//! pieces, and a chunked upload with a bad chunk in the middle.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::thread;
use std::time::Duration;

use support::{free_port, LbdConf, Origin};

/// Reads until EOF; `Err` if the connection was reset instead.
fn read_to_eof(s: &mut TcpStream) -> Result<Vec<u8>, std::io::Error> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Sends `bytes` (ignoring errors once lbd stopped reading), in `pieces`.
fn send_all(s: &mut TcpStream, bytes: &[u8], pieces: usize) {
    let step = bytes.len().div_ceil(pieces.max(1));
    for chunk in bytes.chunks(step.max(1)) {
        if s.write_all(chunk).is_err() {
            return;
        }
        if pieces > 1 {
            thread::sleep(Duration::from_millis(2));
        }
    }
}

fn assert_full_response(got: &[u8], status: &str) {
    let text = String::from_utf8_lossy(got);
    assert!(text.starts_with(&format!("HTTP/1.1 {status}")), "{text}");
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    assert_eq!(body.len(), len, "the whole body arrives: {text}");
}

#[test]
fn oversized_head_in_one_write_and_in_pieces_gets_the_whole_431() {
    let origin = Origin::start("a");
    let lbd = LbdConf::front(&[origin.port]).start();
    let mut head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 256 * 1024));
    head.extend_from_slice(b"\r\n\r\n");
    for pieces in [1, 64] {
        for _ in 0..5 {
            let mut s = TcpStream::connect(lbd.addr()).unwrap();
            send_all(&mut s, &head, pieces);
            let got = read_to_eof(&mut s)
                .unwrap_or_else(|e| panic!("reset instead of FIN ({pieces} pieces): {e}"));
            assert_full_response(&got, "431");
        }
    }
    assert_eq!(origin.requests(), 0);
}

#[test]
fn bad_chunk_mid_upload_gets_the_whole_400() {
    let origin = Origin::start("a");
    let lbd = LbdConf::front(&[origin.port]).start();
    let mut req = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..64 {
        req.extend_from_slice(b"4000\r\n");
        req.extend(std::iter::repeat_n(b'x', 0x4000));
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"zz\r\n");
    // More body after the bad chunk: the client is still sending.
    req.extend(std::iter::repeat_n(b'y', 4 << 20));
    let req = std::sync::Arc::new(req);
    for _ in 0..3 {
        let mut s = TcpStream::connect(lbd.addr()).unwrap();
        let mut w = s.try_clone().unwrap();
        let req = req.clone();
        let sender = thread::spawn(move || send_all(&mut w, &req, 4));
        let got = read_to_eof(&mut s).expect("FIN, not a reset");
        assert_full_response(&got, "400");
        sender.join().unwrap();
    }
}

#[test]
fn curl_upload_rejected_at_once_sees_the_status() {
    // A group whose only backend is down: 503 before any body byte is read.
    let dead = free_port();
    let lbd = LbdConf::front(&[dead])
        .health_check(&[("kind", "tcp"), ("interval_ms", "200")])
        .start();
    let dir = support::unique_temp_dir("teardown");
    let file = dir.join("upload.bin");
    std::fs::write(&file, vec![7u8; 64 << 20]).unwrap();
    for _ in 0..5 {
        let (code, _, err, ok) = curl_upload(lbd.port, &file, false);
        assert_eq!(code, "503", "{err}");
        assert!(ok, "curl failed (reset?): {err}");
    }
}

/// A backend that answers `413` as soon as it has a request head and then
/// stops reading (the upload stays in flight), counting its connections.
struct EarlyOrigin {
    port: u16,
    connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl EarlyOrigin {
    fn start() -> EarlyOrigin {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let connections = std::sync::Arc::new(AtomicUsize::new(0));
        let count = connections.clone();
        thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                count.fetch_add(1, Ordering::SeqCst);
                thread::spawn(move || {
                    let Some(_head) = support::read_until_head(&mut s) else {
                        return;
                    };
                    let _ = s.write_all(
                        b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 9\r\n\r\ntoo large",
                    );
                    // Read nothing more: lbd's writes back up.
                    thread::sleep(Duration::from_secs(15));
                });
            }
        });
        EarlyOrigin { port, connections }
    }
}

/// curl uploads `file`: (status code, time taken, stderr, exit success).
fn curl_upload(
    port: u16,
    file: &std::path::Path,
    chunked: bool,
) -> (String, Duration, String, bool) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-H",
        "Expect:",
    ]);
    if chunked {
        cmd.args(["-H", "Transfer-Encoding: chunked"]);
    }
    cmd.arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .arg(format!("http://127.0.0.1:{port}/upload"));
    let t = std::time::Instant::now();
    let out = cmd.output().expect("run curl");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        t.elapsed(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

#[test]
fn early_answer_to_a_64_mib_upload_reaches_the_client_at_once() {
    use std::sync::atomic::Ordering;
    let origin = EarlyOrigin::start();
    let lbd = LbdConf::front(&[origin.port]).threads(1).start();
    let dir = support::unique_temp_dir("early");
    let file = dir.join("upload.bin");
    std::fs::write(&file, vec![9u8; 64 << 20]).unwrap();
    for (i, chunked) in [false, true, false].into_iter().enumerate() {
        let (code, took, err, _) = curl_upload(lbd.port, &file, chunked);
        assert_eq!(code, "413", "chunked={chunked}: {err}");
        assert!(
            took < Duration::from_secs(3),
            "answer took {took:?} (chunked={chunked})"
        );
        // The upstream connection that answered early is never reused.
        assert_eq!(origin.connections.load(Ordering::SeqCst), i + 1);
    }
}
