//! The admin API's backend states on the real binary: `GET /upstreams`,
//! `POST /upstreams/{group}/backends/{address}/drain|disable|enable`, the
//! token, and errors naming the field.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use support::{free_port, http_get, LbdConf, Origin};

/// Sends a raw admin request; returns (status, body).
fn admin(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn drain_lets_an_in_flight_request_finish_while_new_ones_go_elsewhere() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let port = free_port();
    let admin_port = free_port();
    let lbd = LbdConf::new(port)
        .backends(&[a.port, b.port])
        .threads(1)
        .admin(admin_port)
        .start();
    let (status, list) = http_get(admin_port, "/upstreams");
    assert_eq!(status, 200);
    assert!(
        list.contains(&format!("\"address\":\"127.0.0.1:{}\"", a.port)),
        "{list}"
    );
    assert_eq!(list.matches("\"state\":\"active\"").count(), 2, "{list}");
    // A slow request in flight on a.
    let slow = thread::spawn(move || http_get(port, "/slow?ms=1500"));
    thread::sleep(Duration::from_millis(300));
    let (busy, idle) = if a.requests() + a.connections() > 0 {
        (&a, &b)
    } else {
        (&b, &a)
    };
    let addr = format!("127.0.0.1%3A{}", busy.port);
    let (s, body) = admin(
        admin_port,
        "POST",
        &format!("/upstreams/web/backends/{addr}/drain"),
        None,
    );
    assert_eq!(s, 200, "{body}");
    assert!(body.contains("\"state\":\"draining\""), "{body}");
    let before = idle.requests();
    for _ in 0..6 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
    assert_eq!(
        idle.requests(),
        before + 6,
        "new requests avoid the draining backend"
    );
    assert_eq!(
        slow.join().unwrap().0,
        200,
        "the in-flight request finished"
    );
    assert!(http_get(admin_port, "/upstreams")
        .1
        .contains("\"state\":\"draining\""));
    // Enabled again: both get traffic.
    let path = format!("/upstreams/web/backends/127.0.0.1:{}/enable", busy.port);
    assert_eq!(admin(admin_port, "POST", &path, None).0, 200);
    let before = busy.requests();
    for _ in 0..6 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
    assert!(busy.requests() > before);
    // Disable: no new requests either.
    let path = format!("/upstreams/web/backends/127.0.0.1:{}/disable", busy.port);
    assert_eq!(admin(admin_port, "POST", &path, None).0, 200);
    let before = busy.requests();
    for _ in 0..6 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
    assert_eq!(busy.requests(), before);
}

#[test]
fn the_token_is_enforced_and_bad_input_names_the_field() {
    let a = Origin::start("a");
    let dir = support::unique_temp_dir("admin-token");
    let tf = dir.join("token");
    std::fs::write(&tf, "s3cret\n").unwrap();
    let admin_port = free_port();
    let lbd = LbdConf::front(&[a.port])
        .top(&format!(
            "admin:\n  address: 127.0.0.1:{admin_port}\n  token_file: {}\n",
            tf.display()
        ))
        .start();
    let path = format!("/upstreams/web/backends/127.0.0.1:{}/drain", a.port);
    let (s, body) = admin(admin_port, "POST", &path, None);
    assert_eq!(s, 401, "{body}");
    assert!(body.contains("\"field\":\"Authorization\""), "{body}");
    assert_eq!(admin(admin_port, "POST", &path, Some("wrong")).0, 401);
    assert_eq!(admin(admin_port, "POST", &path, Some("s3cret")).0, 200);
    // Reads need no token.
    assert_eq!(http_get(admin_port, "/upstreams").0, 200);
    let t = Some("s3cret");
    let (s, body) = admin(
        admin_port,
        "POST",
        "/upstreams/nope/backends/127.0.0.1:1/drain",
        t,
    );
    assert!(
        s == 404 && body.contains("\"field\":\"group\""),
        "{s} {body}"
    );
    let (s, body) = admin(
        admin_port,
        "POST",
        "/upstreams/web/backends/not-an-address/drain",
        t,
    );
    assert!(
        s == 400 && body.contains("\"field\":\"address\""),
        "{s} {body}"
    );
    let (s, body) = admin(
        admin_port,
        "POST",
        "/upstreams/web/backends/127.0.0.1:1/drain",
        t,
    );
    assert!(
        s == 404 && body.contains("\"field\":\"address\""),
        "{s} {body}"
    );
    let (s, body) = admin(admin_port, "POST", &path.replace("/drain", "/explode"), t);
    assert!(
        s == 404 && body.contains("\"field\":\"action\""),
        "{s} {body}"
    );
    drop(lbd);
    // Off loopback without a token: refused at start, naming the key.
    let (status, err) = LbdConf::front(&[a.port])
        .top(&format!("admin:\n  address: 0.0.0.0:{}\n", free_port()))
        .expect_failure();
    assert!(!status.success());
    assert!(
        err.contains("admin.address") && err.contains("token_file"),
        "{err}"
    );
}
