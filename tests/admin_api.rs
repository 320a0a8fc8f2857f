//! The admin API's backend states on the real binary: `GET /upstreams`,
//! `POST /upstreams/{group}/backends/{address}/drain|disable|enable`, the
//! token, and errors naming the field.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::Duration;

use support::{free_port, http_get, LbdConf, Load, Origin};

/// Sends a raw admin request; returns (status, body).
fn admin(port: u16, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    admin_with(port, method, path, token, "")
}

/// Sends a raw admin request with a body; returns (status, body).
fn admin_with(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: a\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
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

/// Adds `port` to group web; returns the response.
fn add(admin_port: u16, port: u16, weight: u32) -> (u16, String) {
    let body = format!("{{\"address\": \"127.0.0.1:{port}\", \"weight\": {weight}}}");
    admin_with(admin_port, "POST", "/upstreams/web/backends", None, &body)
}

/// Removes `port` from group web.
fn remove(admin_port: u16, port: u16) -> (u16, String) {
    let path = format!("/upstreams/web/backends/127.0.0.1%3A{port}");
    admin(admin_port, "DELETE", &path, None)
}

/// Waits until `origin` has served more than `n` requests.
fn wait_for_traffic(origin: &Origin, n: usize) {
    let t = std::time::Instant::now();
    while origin.requests() <= n {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{} got no traffic",
            origin.port
        );
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn add_and_remove_under_load_lose_no_request() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let c = Origin::start("c");
    let port = free_port();
    let admin_port = free_port();
    let _lbd = LbdConf::new(port)
        .backends(&[a.port])
        .threads(2)
        .admin(admin_port)
        .start();
    let load = Load::start(port, 4);
    thread::sleep(Duration::from_millis(200));
    for round in 0..3 {
        let (s, body) = add(admin_port, b.port, 2);
        assert_eq!(s, 201, "{body}");
        assert!(body.contains("\"source\":\"api\""), "{body}");
        wait_for_traffic(&b, b.requests());
        let (s, body) = add(admin_port, c.port, 1);
        assert_eq!(s, 201, "{body}");
        wait_for_traffic(&c, c.requests());
        // a leaves: within a tick it gets nothing more.
        let (s, body) = remove(admin_port, a.port);
        assert_eq!(s, 200, "round {round}: {body}");
        thread::sleep(Duration::from_millis(150));
        let before = a.requests();
        thread::sleep(Duration::from_millis(300));
        assert_eq!(
            a.requests(),
            before,
            "a removed backend gets no new request"
        );
        let list = http_get(admin_port, "/upstreams").1;
        assert!(!list.contains(&format!("127.0.0.1:{}", a.port)), "{list}");
        // Back with the same id; b and c leave.
        let (s, body) = add(admin_port, a.port, 1);
        assert_eq!(s, 201, "{body}");
        assert!(body.contains("\"id\":0"), "an address keeps its id: {body}");
        assert_eq!(remove(admin_port, b.port).0, 200);
        assert_eq!(remove(admin_port, c.port).0, 200);
        wait_for_traffic(&a, a.requests());
    }
    load.finish_clean(100);
    // The metrics series of a removed backend go away.
    let metrics = http_get(admin_port, "/metrics").1;
    assert!(metrics.contains(&format!("backend=\"127.0.0.1:{}\"", a.port)));
    assert!(
        !metrics.contains(&format!("backend=\"127.0.0.1:{}\"", b.port)),
        "{metrics}"
    );
}

#[test]
fn a_backend_added_to_a_checked_group_waits_for_its_first_check() {
    let a = Origin::start("a");
    let port = free_port();
    let admin_port = free_port();
    let lbd = LbdConf::new(port)
        .backends(&[a.port])
        .threads(1)
        .admin(admin_port)
        .health_check(&[("interval_ms", "200"), ("rise", "3")])
        .start();
    // Announced but not listening: never gets a request.
    let dead = free_port();
    assert_eq!(add(admin_port, dead, 5).0, 201);
    let list = http_get(admin_port, "/upstreams").1;
    assert!(list.contains("\"health\":\"down\""), "{list}");
    for _ in 0..30 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
    // A live one comes up after one passing check, not `rise` of them.
    let b = Origin::start("b");
    assert_eq!(add(admin_port, b.port, 1).0, 201);
    let t = std::time::Instant::now();
    while b.requests() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "b never got a request"
        );
        assert_eq!(lbd.client().get("/").status, 200);
    }
    let list = http_get(admin_port, "/upstreams").1;
    assert_eq!(list.matches("\"health\":\"up\"").count(), 2, "{list}");
}

#[test]
fn add_and_remove_errors_name_the_field() {
    let a = Origin::start("a");
    let admin_port = free_port();
    let lbd = LbdConf::front(&[a.port]).admin(admin_port).start();
    let post = |body: &str| admin_with(admin_port, "POST", "/upstreams/web/backends", None, body);
    let cases = [
        ("{", 400, "body"),
        ("{}", 400, "address"),
        ("{\"address\": \"nope\"}", 400, "address"),
        ("{\"address\": \"127.0.0.1:0\"}", 400, "address"),
        ("{\"address\": 8080}", 400, "address"),
        (
            "{\"address\": \"127.0.0.1:9\", \"weight\": 0}",
            400,
            "weight",
        ),
        (
            "{\"address\": \"127.0.0.1:9\", \"weight\": \"2\"}",
            400,
            "weight",
        ),
        ("{\"address\": \"127.0.0.1:9\", \"colour\": 1}", 400, "body"),
    ];
    for (body, status, field) in cases {
        let (s, out) = post(body);
        assert_eq!(s, status, "{body}: {out}");
        assert!(
            out.contains(&format!("\"field\":\"{field}\"")),
            "{body}: {out}"
        );
    }
    let dup = format!("{{\"address\": \"127.0.0.1:{}\"}}", a.port);
    let (s, out) = post(&dup);
    assert!(
        s == 409 && out.contains("\"field\":\"address\""),
        "{s} {out}"
    );
    let (s, out) = admin_with(admin_port, "POST", "/upstreams/nope/backends", None, &dup);
    assert!(s == 404 && out.contains("\"field\":\"group\""), "{s} {out}");
    let (s, out) = admin(
        admin_port,
        "DELETE",
        "/upstreams/web/backends/127.0.0.1:1",
        None,
    );
    assert!(
        s == 404 && out.contains("\"field\":\"address\""),
        "{s} {out}"
    );
    // The last backend may go: the group is empty and answers 503.
    assert_eq!(remove(admin_port, a.port).0, 200);
    thread::sleep(Duration::from_millis(150));
    let (status, _) = http_get(lbd.port, "/");
    assert_eq!(status, 503);
}

#[test]
fn api_changes_survive_a_sigquit_upgrade() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let (a, b, c) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let dir = support::unique_temp_dir("admin-upgrade");
    let port = free_port();
    let admin_port = free_port();
    let conf = LbdConf::new(port)
        .backends(&[a.port, c.port])
        .admin(admin_port)
        .top(&format!(
            "upgrade_sock: {}\n",
            dir.join("upgrade.sock").display()
        ))
        .write(&dir);
    let log = dir.join("log");
    let mut old = support::spawn_lbd(&conf, 1, &[], &[], &log);
    let t = std::time::Instant::now();
    while TcpStream::connect(("127.0.0.1", admin_port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(5), "lbd did not start");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(add(admin_port, b.port, 3).0, 201);
    assert_eq!(remove(admin_port, a.port).0, 200);
    let drain = format!("/upstreams/web/backends/127.0.0.1:{}/drain", c.port);
    assert_eq!(admin(admin_port, "POST", &drain, None).0, 200);
    let mut new = support::spawn_lbd(&conf, 1, &["-u"], &[], &log);
    thread::sleep(Duration::from_millis(200));
    kill(Pid::from_raw(old.id() as i32), Signal::SIGQUIT).unwrap();
    let t = std::time::Instant::now();
    while old.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the old process did not exit"
        );
        thread::sleep(Duration::from_millis(20));
    }
    let list = http_get(admin_port, "/upstreams").1;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("replayed"), "{text}");
    assert!(
        !list.contains(&format!("127.0.0.1:{}", a.port)),
        "a stays removed: {list}"
    );
    assert!(
        list.contains(&format!("\"address\":\"127.0.0.1:{}\",\"name\":\"127.0.0.1:{}\",\"weight\":3,\"source\":\"api\"", b.port, b.port)),
        "b stays added: {list}"
    );
    assert!(
        list.contains("\"state\":\"draining\""),
        "c stays draining: {list}"
    );
    let before = (a.requests(), c.requests());
    for _ in 0..10 {
        assert_eq!(http_get(port, "/").0, 200);
    }
    assert_eq!((a.requests(), c.requests()), before, "only b serves");
    let _ = kill(Pid::from_raw(new.id() as i32), Signal::SIGTERM);
    let _ = new.wait();
}

#[test]
fn lbd_ctl_drives_the_real_api() {
    let (a, b) = (Origin::start("a"), Origin::start("b"));
    let admin_port = free_port();
    let lbd = LbdConf::front(&[a.port]).admin(admin_port).start();
    let ctl = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbd"))
            .arg("ctl")
            .args(["--admin", &format!("127.0.0.1:{admin_port}")])
            .args(args)
            .output()
            .expect("run lbd ctl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let b_addr = format!("127.0.0.1:{}", b.port);
    let (code, out) = ctl(&["add", "web", &b_addr, "--weight", "2"]);
    assert_eq!(code, Some(0), "{out}");
    let (code, table) = ctl(&["upstreams"]);
    assert_eq!(code, Some(0), "{table}");
    let row = table
        .lines()
        .find(|l| l.contains(&b_addr))
        .unwrap_or_default();
    assert!(row.contains("api") && row.contains(" 2 "), "{table}");
    assert_eq!(ctl(&["drain", "web", &b_addr]).0, Some(0));
    assert!(http_get(admin_port, "/upstreams")
        .1
        .contains("\"state\":\"draining\""));
    assert_eq!(ctl(&["remove", "web", &b_addr]).0, Some(0));
    thread::sleep(Duration::from_millis(150));
    for _ in 0..5 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
    assert_eq!(b.requests(), 0);
    let (code, err) = ctl(&["drain", "nope", &b_addr]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("group") && err.contains("nope"), "{err}");
}
