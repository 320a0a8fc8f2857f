//! `lbd ctl` against a fake admin API: a one-connection blocking HTTP
//! server on loopback that records the request and sends a canned reply.
//! About the client alone (its table, its exit codes and messages, its
//! request line and headers); lbd's own admin API is tested elsewhere.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Output};
use std::thread::JoinHandle;

const LBD: &str = env!("CARGO_BIN_EXE_lbd");

/// Serves one connection: reads the request (head and `Content-Length`
/// body), answers `status` with `body`, returns the request as text.
fn fake_admin(status: &str, body: &str) -> (SocketAddr, JoinHandle<String>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let t = std::thread::spawn(move || {
        let (mut c, _) = l.accept().expect("accept");
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while !complete(&req) {
            let n = c.read(&mut buf).expect("read");
            assert!(n > 0, "client closed early");
            req.extend_from_slice(&buf[..n]);
        }
        c.write_all(reply.as_bytes()).expect("write");
        String::from_utf8(req).expect("UTF-8 request")
    });
    (addr, t)
}

/// A head and as much body as its Content-Length says.
fn complete(req: &[u8]) -> bool {
    let text = String::from_utf8_lossy(req);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= len
}

fn ctl(args: &[&str]) -> Output {
    Command::new(LBD)
        .arg("ctl")
        .args(args)
        .env_remove("LBD_ADMIN")
        .env_remove("LBD_ADMIN_TOKEN")
        .output()
        .expect("run lbd ctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn upstreams_prints_an_aligned_table() {
    let (addr, req) = fake_admin(
        "200 OK",
        r#"{"upstreams":[{"name":"web","backends":[
            {"id":0,"address":"127.0.0.1:8081","name":"127.0.0.1:8081","weight":1,"source":"static","health":"up","state":"active","inflight":0,"requests":12},
            {"id":1,"address":"127.0.0.1:8082","name":"127.0.0.1:8082","weight":2,"source":"static","health":"down","state":"draining","inflight":1,"requests":3456}]}]}"#,
    );
    let out = ctl(&["--admin", &addr.to_string(), "upstreams"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "\
GROUP  ID  ADDRESS         WEIGHT  SOURCE  HEALTH  STATE     INFLIGHT  REQUESTS
web     0  127.0.0.1:8081       1  static  up      active           0        12
web     1  127.0.0.1:8082       2  static  down    draining         1      3456
"
    );
    let req = req.join().expect("server");
    assert!(req.starts_with("GET /upstreams HTTP/1.1\r\n"), "{req}");
    assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
}

#[test]
fn api_error_exits_1_with_status_field_and_message() {
    let (addr, req) = fake_admin(
        "404 Not Found",
        r#"{"error":"no backend [::1]:9 in `web`","field":"address"}"#,
    );
    let out = ctl(&["drain", "web", "[::1]:9", "--admin", &addr.to_string()]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "lbd ctl: 404 address: no backend [::1]:9 in `web`\n"
    );
    assert!(out.stdout.is_empty());
    let req = req.join().expect("server");
    assert!(
        req.starts_with("POST /upstreams/web/backends/%5B%3A%3A1%5D%3A9/drain HTTP/1.1\r\n"),
        "{req}"
    );
}

#[test]
fn connection_refused_exits_2_naming_the_address() {
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let out = ctl(&["--admin", &addr.to_string(), "upstreams"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        text(&out.stderr),
        format!("lbd ctl: cannot connect to admin API at {addr}: connection refused\n")
    );
    let out = ctl(&["upstreams"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--admin"), "says how to give it");
}

#[test]
fn conf_gives_address_and_token_sent_as_bearer() {
    let (addr, req) = fake_admin(
        "201 Created",
        r#"{"group":"web","address":"127.0.0.1:8083","id":5,"weight":2,"source":"api"}"#,
    );
    let dir = std::env::temp_dir().join(format!("lbd-test-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let token = dir.join("token");
    std::fs::write(&token, "s3cret\n").expect("token");
    // ctl reads the admin block only: the rest need not be valid.
    let conf = dir.join("conf.yaml");
    let yaml = format!(
        "listeners:\n  - address: not-an-address\nadmin:\n  address: {addr}\n  token_file: {}\n",
        token.display()
    );
    std::fs::write(&conf, yaml).expect("conf");
    let conf = conf.to_string_lossy().into_owned();
    let out = ctl(&["-c", &conf, "add", "web", "127.0.0.1:8083", "--weight", "2"]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "web 127.0.0.1:8083 (id 5): added, weight 2\n"
    );
    let req = req.join().expect("server");
    assert!(
        req.starts_with("POST /upstreams/web/backends HTTP/1.1\r\n"),
        "{req}"
    );
    assert!(
        req.contains("\r\nAuthorization: Bearer s3cret\r\n"),
        "{req}"
    );
    assert!(
        req.ends_with(r#"{"address":"127.0.0.1:8083","weight":2}"#),
        "{req}"
    );
}
