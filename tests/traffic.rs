//! Traffic management against the real binary and real origins on loopback:
//! host and path routes (with path normalisation and rewrites), the balancing
//! algorithms (`least_conn`, `p2c`, `hash` compared with a real nginx,
//! bounded load), sticky cookies, slow start, panic mode and the in-flight
//! gauge. Each test starts its own origins and lbd on fresh ports.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Tests that measure latency run alone ([`alone`]); the others share the
/// machine ([`shared`]). On two cores a neighbour's burst can stall a 1 ms
/// response past 50 ms, and PeakEWMA then remembers it for seconds.
static MACHINE: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|e| e.into_inner())
}

fn alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|e| e.into_inner())
}

/// One request on a fresh connection: `GET target` with `Host: host` (none
/// when empty) and `headers`.
fn get(port: u16, host: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut c = Client::connect(port);
    get_on(&mut c, host, target, headers)
}

/// [`get`] on an existing keep-alive connection.
fn get_on(c: &mut Client, host: &str, target: &str, headers: &[(&str, &str)]) -> Response {
    let mut req = format!("GET {target} HTTP/1.1\r\n");
    if !host.is_empty() {
        req += &format!("Host: {host}\r\n");
    }
    for (n, v) in headers {
        req += &format!("{n}: {v}\r\n");
    }
    req += "\r\n";
    c.send(req.as_bytes());
    c.read_response(false)
        .unwrap_or_else(|e| panic!("GET {target} (Host {host:?}): {e}"))
}

/// Sequential requests on a keep-alive connection to `port`, reconnecting
/// when lbd closes it (`keepalive_requests`).
struct Session {
    port: u16,
    client: Option<Client>,
}

impl Session {
    fn new(port: u16) -> Self {
        Session { port, client: None }
    }

    fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> Response {
        let port = self.port;
        let c = self.client.get_or_insert_with(|| Client::connect(port));
        let r = get_on(c, "lbd.test", target, headers);
        if r.header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            self.client = None;
        }
        r
    }
}

/// The `X-Origin` of a response, `-` when lbd answered itself.
fn origin_of(r: &Response) -> String {
    r.header("x-origin").unwrap_or("-").to_string()
}

/// The request target of a raw request head.
fn target_of(head: &str) -> &str {
    head.split(' ').nth(1).unwrap_or("")
}

/// A header of a raw request head (case-insensitive name).
fn head_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n").skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Requests received by all of `origins`.
fn total(origins: &[&Origin]) -> usize {
    origins.iter().map(|o| o.requests()).sum()
}

/// Heads an origin received whose target contains `needle`.
fn heads_with(o: &Origin, needle: &str) -> usize {
    o.heads()
        .iter()
        .filter(|h| target_of(h).contains(needle))
        .count()
}

/// Polls `cond` every 5 ms for up to `limit`; true once it holds.
fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Waits up to 3 s for the access log at `path` to satisfy `cond` (lines
/// are written by the workers in batches).
fn await_log(path: &std::path::Path, cond: impl Fn(&str) -> bool) {
    let mut text = String::new();
    let found = wait_until(Duration::from_secs(3), || {
        text = fs::read_to_string(path).unwrap_or_default();
        cond(&text)
    });
    assert!(
        found,
        "the access log at {} lacks lines:\n{text}",
        path.display()
    );
}

/// `backends: [127.0.0.1:P]` for a one-backend group.
fn one_backend(o: &Origin) -> String {
    format!("backends: [127.0.0.1:{}]", o.port)
}

/// An HTTP health check of `/health` every 50 ms.
const FAST_CHECK: &[(&str, &str)] = &[
    ("kind", "http"),
    ("path", "/health"),
    ("interval_ms", "50"),
    ("timeout_ms", "500"),
];

/// A long request (`/slow?ms=…`) on its own connection, in a thread.
struct Held(thread::JoinHandle<std::io::Result<Response>>);

impl Held {
    fn start(port: u16, target: String, headers: &[(&str, &str)]) -> Held {
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: lbd.test\r\n");
        for (n, v) in headers {
            req += &format!("{n}: {v}\r\n");
        }
        req += "\r\n";
        Held(thread::spawn(move || {
            let mut c = Client::connect(port);
            c.send(req.as_bytes());
            c.read_response(false)
        }))
    }

    /// Its response, asserting a 200; the origin that served it.
    fn ok(self) -> String {
        let r = self.0.join().expect("thread").expect("long request");
        assert_eq!(r.status, 200, "{r:?}");
        origin_of(&r)
    }
}

/// `lbd_upstream_inflight` by backend address, from the admin endpoint.
fn inflight(admin: u16) -> BTreeMap<String, u64> {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter_map(|l| l.strip_prefix("lbd_upstream_inflight{"))
        .filter_map(|l| {
            let (labels, value) = l.split_once("} ")?;
            let backend = labels.split("backend=\"").nth(1)?.split('"').next()?;
            Some((backend.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Routes
// ---------------------------------------------------------------------------

/// Origins of the routing tests, one per upstream group.
struct RouteOrigins {
    api_v1: Origin,
    api: Origin,
    stat: Origin,
    web: Origin,
    admin: Origin,
}

impl RouteOrigins {
    fn start() -> Self {
        RouteOrigins {
            api_v1: Origin::start("api_v1"),
            api: Origin::start("api"),
            stat: Origin::start("static"),
            web: Origin::start("web"),
            admin: Origin::start("admin"),
        }
    }

    fn all(&self) -> [&Origin; 5] {
        [&self.api_v1, &self.api, &self.stat, &self.web, &self.admin]
    }

    fn by_name(&self, name: &str) -> &Origin {
        self.all()
            .into_iter()
            .find(|o| o.name == name)
            .unwrap_or_else(|| panic!("no origin {name:?}"))
    }

    fn total(&self) -> usize {
        total(&self.all())
    }
}

/// The first listener's routes (`routes[i]` as in the access log).
const ROUTES: &str = r#"
- host: api.example.com
  path_prefix: /v1/
  upstream: api_v1
  strip_prefix: true
  set_host: v1.internal
  add_request_headers: { X-Route: v1, X-Env: " test " }
  remove_request_headers: [X-Secret, cookie]
  add_response_headers: { X-Served-By: lbd-v1 }
- { host: api.example.com, upstream: api }
- { host: "*.static.example.com", upstream: static }
- { host: "*.example.com", path_prefix: /w/, upstream: admin }
- { host: strip.test, path_prefix: /app/, strip_prefix: /app, upstream: api }
- { path_prefix: /assets/, upstream: static }
- { path_prefix: /assets/img/, upstream: api }
- { path_prefix: /admin, upstream: admin }
- { upstream: web }
"#;

/// Which origin the host-less routes above send an (already normal) path to.
fn hostless_origin(path: &str) -> &'static str {
    if path.starts_with("/assets/img/") {
        "api"
    } else if path.starts_with("/assets/") {
        "static"
    } else if path.starts_with("/admin") {
        "admin"
    } else {
        "web"
    }
}

/// lbd with [`ROUTES`] on its first listener; on `more[0]` routes without
/// a default; on `more[1]` a `routes:` list of one default route.
fn route_conf(o: &RouteOrigins, more: [u16; 2], log: &std::path::Path, format: &str) -> LbdConf {
    LbdConf::new(free_port())
        .threads(2)
        .backends(&[o.web.port])
        .routes(ROUTES)
        .listener(
            more[0],
            "routes:\n  - { host: api.example.com, upstream: api }\n  - { path_prefix: /assets/, upstream: static }",
        )
        .listener(more[1], "routes: [{ upstream: api }]")
        .upstream("api_v1", &one_backend(&o.api_v1))
        .upstream("api", &one_backend(&o.api))
        .upstream("static", &one_backend(&o.stat))
        .upstream("admin", &one_backend(&o.admin))
        .top(&format!(
            "access_log:\n  path: {}\n  format: {format}\n",
            log.display()
        ))
}

#[test]
fn routes_pick_by_host_then_longest_prefix_and_rewrite() {
    let _machine = shared();
    let o = RouteOrigins::start();
    let dir = unique_temp_dir("traffic-routes");
    let log = dir.join("access.log");
    let (port2, port3) = (free_port(), free_port());
    let lbd = route_conf(&o, [port2, port3], &log, "combined").start();
    let port = lbd.port;

    // (Host, target, origin, target the origin receives)
    let cases: &[(&str, &str, &str, &str)] = &[
        // Exact host, longest prefix, case and :port ignored.
        ("api.example.com", "/v1/users?x=1", "api_v1", "/users?x=1"),
        ("API.Example.COM:8080", "/v1/x", "api_v1", "/x"),
        ("api.example.com", "/v1/", "api_v1", "/"),
        ("api.example.com", "/v1", "api", "/v1"),
        ("api.example.com", "/v10/x", "api", "/v10/x"),
        ("api.example.com.", "/other", "api", "/other"),
        // Exact host beats the `*.example.com` wildcard and host-less routes.
        ("api.example.com", "/w/x", "api", "/w/x"),
        ("api.example.com", "/assets/x", "api", "/assets/x"),
        // The longest wildcard wins, at any depth.
        ("a.static.example.com", "/x", "static", "/x"),
        ("a.b.static.example.com", "/x", "static", "/x"),
        ("A.Static.Example.Com:443", "/w/x", "static", "/w/x"),
        ("static.example.com", "/w/x", "admin", "/w/x"),
        ("deep.x.example.com", "/w/", "admin", "/w/"),
        // `*.example.com` is not `example.com`: host-less routes.
        ("example.com", "/x", "web", "/x"),
        ("example.com", "/w/x", "web", "/w/x"),
        ("example.com", "/assets/a.css", "static", "/assets/a.css"),
        // Host-less: longest prefix, else the default.
        ("lbd.test", "/assets/img/a.png", "api", "/assets/img/a.png"),
        ("lbd.test", "/assets/", "static", "/assets/"),
        ("lbd.test", "/assets", "web", "/assets"),
        ("lbd.test", "/", "web", "/"),
        ("lbd.test", "/admin/panel", "admin", "/admin/panel"),
        ("", "/x", "web", "/x"),
        // strip_prefix with an explicit prefix.
        ("strip.test", "/app/x?q=1", "api", "/x?q=1"),
        ("strip.test", "/app/", "api", "/"),
    ];
    for &(host, target, want, received) in cases {
        let before = o.by_name(want).requests();
        let r = if host.is_empty() {
            // HTTP/1.0 without Host: host-less routes only.
            let mut c = Client::connect(port);
            c.send(format!("GET {target} HTTP/1.0\r\n\r\n").as_bytes());
            c.response()
        } else {
            get(port, host, target, &[])
        };
        assert_eq!(r.status, 200, "{host} {target}: {r:?}");
        assert_eq!(origin_of(&r), want, "{host} {target}");
        assert_eq!(o.by_name(want).requests(), before + 1, "{host} {target}");
        let head = o.by_name(want).last_head();
        assert_eq!(target_of(&head), received, "{host} {target}: {head}");
    }

    // A host that matched but whose prefixes did not: 404 from lbd, never
    // the host-less routes or the default. Likewise on the second listener,
    // which has no default route at all.
    let before = o.total();
    for (p, host, target) in [
        (port, "static.example.com", "/x"),
        (port, "x.example.com", "/assets/a.css"),
        (port, "x.example.com", "/w"),
        (port, "strip.test", "/app"),
        (port, "strip.test", "/assets/a.css"),
        (port2, "other.test", "/x"),
        (port2, "other.test", "/"),
        (port2, "Other.Test", "/assetsx"),
    ] {
        let r = get(p, host, target, &[]);
        assert_eq!(r.status, 404, "{host} {target} on :{p}: {r:?}");
        assert_eq!(r.header("x-origin"), None, "{host} {target}: {r:?}");
    }
    assert_eq!(o.total(), before, "a 404 reached an origin");
    let r = get(port2, "api.example.com:1", "/anything", &[]);
    assert_eq!(origin_of(&r), "api");
    let r = get(port2, "other.test", "/assets/x", &[]);
    assert_eq!(origin_of(&r), "static");
    let r = get(port3, "any.test", "/single-route", &[]);
    assert_eq!(origin_of(&r), "api");

    // Absolute-form: the authority is the host that routes (and is sent).
    let mut c = Client::connect(port);
    c.send(b"GET http://api.example.com/v1/abs?q HTTP/1.1\r\nHost: api.example.com\r\n\r\n");
    let r = c.response();
    assert_eq!((r.status, origin_of(&r).as_str()), (200, "api_v1"), "{r:?}");
    assert_eq!(target_of(&o.api_v1.last_head()), "/abs?q");
    let mut c = Client::connect(port);
    c.send(b"GET http://a.static.example.com/abs HTTP/1.1\r\nHost: lbd.test\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(origin_of(&r), "static", "authority, not Host, routes");
    let head = o.stat.last_head();
    assert_eq!(target_of(&head), "/abs", "{head}");
    assert_eq!(head_header(&head, "host"), Some("a.static.example.com"));

    // Route rewrites, both directions.
    let r = get(
        port,
        "api.example.com",
        "/v1/rewrite",
        &[
            ("X-Secret", "s3cret"),
            ("Cookie", "session=1"),
            ("X-Keep", "kept"),
        ],
    );
    assert_eq!(origin_of(&r), "api_v1");
    assert_eq!(r.header("x-served-by"), Some("lbd-v1"), "{r:?}");
    let head = o.api_v1.last_head();
    assert!(head.starts_with("GET /rewrite HTTP/1.1\r\n"), "{head}");
    assert_eq!(head_header(&head, "host"), Some("v1.internal"), "{head}");
    assert_eq!(head_header(&head, "x-route"), Some("v1"), "{head}");
    assert_eq!(head_header(&head, "x-env"), Some("test"), "{head}");
    assert_eq!(head_header(&head, "x-keep"), Some("kept"), "{head}");
    assert_eq!(head_header(&head, "x-secret"), None, "{head}");
    assert_eq!(head_header(&head, "cookie"), None, "{head}");
    // Other routes leave requests and responses alone.
    let r = get(port, "api.example.com", "/plain", &[("X-Secret", "s")]);
    assert_eq!(r.header("x-served-by"), None, "{r:?}");
    let head = o.api.last_head();
    assert_eq!(
        head_header(&head, "host"),
        Some("api.example.com"),
        "{head}"
    );
    assert_eq!(head_header(&head, "x-secret"), Some("s"), "{head}");
    assert_eq!(head_header(&head, "x-route"), None, "{head}");

    // The access log names the route.
    let want = [
        ("\"GET /v1/users?x=1 HTTP/1.1\" 200 ", " route=routes[0]"),
        ("\"GET /plain HTTP/1.1\" 200 ", " route=routes[1]"),
        (
            "\"GET /assets/img/a.png HTTP/1.1\" 200 ",
            " route=routes[6]",
        ),
        ("\"GET / HTTP/1.1\" 200 ", " route=routes[8]"),
        // A `routes:` list of one default route is still named.
        ("\"GET /single-route HTTP/1.1\" 200 ", " route=routes[0]"),
    ];
    await_log(&log, |text| {
        want.iter()
            .all(|(req, route)| text.lines().any(|l| l.contains(req) && l.ends_with(route)))
    });
    drop(lbd);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn path_bypass_attempts_are_rejected_or_routed_as_forwarded() {
    let _machine = shared();
    let o = RouteOrigins::start();
    let dir = unique_temp_dir("traffic-bypass");
    let log = dir.join("access.log");
    let lbd = route_conf(&o, [free_port(), free_port()], &log, "json").start();
    // (target, Some(origin target) if forwarded, None if 400)
    let cases: &[(&str, Option<&str>)] = &[
        ("//admin", Some("/admin")),
        ("/./admin", Some("/admin")),
        ("/x/../admin", Some("/admin")),
        ("/assets/../admin", Some("/admin")),
        ("/assets//../admin/", Some("/admin/")),
        ("/admin/../assets/x", Some("/assets/x")),
        ("/assets/./img/../img/b.png", Some("/assets/img/b.png")),
        (
            "//assets//img//c.png?a=//b/../c",
            Some("/assets/img/c.png?a=//b/../c"),
        ),
        ("/file%2etxt", Some("/file%2etxt")),
        ("/%61dmin", Some("/%61dmin")),
        ("/%2e%2e/admin", None),
        ("/%2E%2E/admin", None),
        ("/%2Fadmin", None),
        ("/%2fadmin", None),
        ("/assets/..%2fadmin", None),
        ("/assets/..%2Fadmin", None),
        ("/assets/%2e%2e/admin", None),
        ("/assets/.%2e/admin", None),
        ("/assets/%2e/admin", None),
        ("/..", None),
        ("/../admin", None),
        ("/assets/../../admin", None),
        ("/assets\\..\\admin", None),
        ("/assets/%5c../admin", None),
        ("/assets/%5C..%5Cadmin", None),
        ("/assets/%zz", None),
    ];
    for &(target, expect) in cases {
        let before = o.total();
        let r = get(lbd.port, "lbd.test", target, &[]);
        if r.status == 400 {
            assert_eq!(r.header("x-origin"), None, "{target}: {r:?}");
            assert_eq!(
                o.total(),
                before,
                "{target}: answered 400 but reached an origin"
            );
        } else {
            assert_eq!(r.status, 200, "{target}: {r:?}");
            let served = origin_of(&r);
            let head = o.by_name(&served).last_head();
            let received = target_of(&head);
            let path = received.split('?').next().unwrap_or("");
            assert_eq!(
                served,
                hostless_origin(path),
                "{target}: the origin got {received:?}, which routes elsewhere"
            );
        }
        match expect {
            None => assert_eq!(r.status, 400, "{target} should be refused: {r:?}"),
            Some(want) => {
                assert_eq!(r.status, 200, "{target}: {r:?}");
                let head = o.by_name(&origin_of(&r)).last_head();
                assert_eq!(target_of(&head), want, "{target}");
            }
        }
    }
    // The JSON access log names the route too (`//admin` → routes[7]).
    await_log(&log, |text| {
        text.lines().any(|l| {
            l.contains("\"GET //admin HTTP/1.1\"") && l.contains("\"route\":\"routes[7]\"")
        })
    });
    drop(lbd);
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn route_and_balance_config_errors_name_the_key() {
    let _machine = shared();
    let routes = |yaml: &str| LbdConf::new(free_port()).backends(&[9]).routes(yaml);
    let group = |yaml: &str| LbdConf::new(free_port()).backends(&[9]).group_extra(yaml);
    let cases: Vec<(LbdConf, &str)> = vec![
        (
            routes("- { upstream: web }\n- { host: \"bad host\", upstream: web }"),
            "listeners[0].routes[1].host",
        ),
        (
            routes("- { upstream: web }\n- { host: \"a.*.com\", upstream: web }"),
            "listeners[0].routes[1].host",
        ),
        (
            routes("- { host: a.com, upstream: web }\n- { host: \"a.com:80\", upstream: web }"),
            "listeners[0].routes[1].host",
        ),
        (routes("[]"), "listeners[0].routes"),
        (
            routes("- { upstream: web }\n- { upstream: web }"),
            "listeners[0].routes[1]",
        ),
        (
            routes("- { upstream: nope }"),
            "listeners[0].routes[0].upstream",
        ),
        (
            routes("- { upstream: web }\n- { path_prefix: /a, upstream: web }\n- { path_prefix: v1, upstream: web }"),
            "listeners[0].routes[2].path_prefix",
        ),
        (
            routes("- { host: A.com, upstream: web }\n- { host: a.COM, upstream: web }"),
            "listeners[0].routes[1]",
        ),
        (
            routes("- { upstream: web, strip_prefix: true }"),
            "listeners[0].routes[0].strip_prefix",
        ),
        (
            routes("- { upstream: web, set_host: \"a b\" }"),
            "listeners[0].routes[0].set_host",
        ),
        (
            routes("- { upstream: web, add_request_headers: { Host: x } }"),
            "listeners[0].routes[0].add_request_headers.Host",
        ),
        (
            routes("- { upstream: web, remove_request_headers: [ok, \"b d\"] }"),
            "listeners[0].routes[0].remove_request_headers[1]",
        ),
        (
            routes("- { upstream: web, bogus: 1 }"),
            "bogus",
        ),
        (
            routes("- { upstream: web }").listener_extra("upstream: web"),
            "listeners[0].upstream",
        ),
        (group("balance: fastest"), "upstreams.web.balance"),
        (group("balance: hash"), "upstreams.web.hash"),
        (
            group("balance: hash\nhash: { key: \"header:\" }"),
            "upstreams.web.hash.key",
        ),
        (
            group("balance: round_robin\nhash: { key: uri }"),
            "upstreams.web.hash",
        ),
        (
            group("balance: hash\nhash: { key: uri }\nhash_balance_factor: 50"),
            "upstreams.web.hash_balance_factor",
        ),
        (
            group("hash_balance_factor: 150"),
            "upstreams.web.hash_balance_factor",
        ),
        (
            group("panic_threshold_percent: 0"),
            "upstreams.web.panic_threshold_percent",
        ),
        (group("slow_start_ms: 0"), "upstreams.web.slow_start_ms"),
        (
            group("sticky: { cookie: \"a b\" }"),
            "upstreams.web.sticky.cookie",
        ),
        (group("sticky: { ttl_s: 0 }"), "upstreams.web.sticky.ttl_s"),
    ];
    thread::scope(|s| {
        let runs: Vec<_> = cases
            .iter()
            .map(|(conf, key)| (conf, key, s.spawn(|| conf.expect_failure())))
            .collect();
        for (conf, key, run) in runs {
            let (status, stderr) = run.join().expect("lbd run");
            assert!(!status.success(), "accepted:\n{}", conf.yaml());
            assert!(
                stderr.contains(*key),
                "error should name {key}:\n{stderr}\n---- config ----\n{}",
                conf.yaml()
            );
        }
    });
    // `upstream` with `routes` says why.
    let (_, stderr) = routes("- { upstream: web }")
        .listener_extra("upstream: web")
        .expect_failure();
    assert!(stderr.contains("routes"), "{stderr}");
}

// ---------------------------------------------------------------------------
// 2. least_conn, 9. lbd_upstream_inflight
// ---------------------------------------------------------------------------

#[test]
fn least_conn_avoids_the_backend_holding_long_requests() {
    let _machine = shared();
    let a = Origin::start("a");
    let b = Origin::start("b");
    // B fails its health check at start, so the long requests can only go
    // to A; then it recovers.
    b.set_health(503);
    let lbd = LbdConf::front(&[a.port, b.port])
        .health_check(FAST_CHECK)
        .group_extra("balance: least_conn")
        .start();
    let held_at = Instant::now();
    let held: Vec<_> = (0..3)
        .map(|i| Held::start(lbd.port, format!("/slow?ms=1500&i={i}"), &[]))
        .collect();
    assert!(
        wait_until(Duration::from_secs(2), || heads_with(&a, "/slow") == 3),
        "the long requests did not all reach a: a {}, b {}",
        heads_with(&a, "/slow"),
        heads_with(&b, "/slow")
    );
    b.set_health(200);
    // Probe until B is back; A is busy, so the first request after that
    // goes to B.
    let mut c = Session::new(lbd.port);
    let mut probes = 0;
    let back = wait_until(Duration::from_secs(2), || {
        probes += 1;
        origin_of(&c.get("/probe", &[])) == "b"
    });
    assert!(
        back,
        "b never got traffic after recovering ({probes} probes)"
    );
    let short: Vec<String> = (0..10).map(|_| origin_of(&c.get("/short", &[]))).collect();
    assert!(
        held_at.elapsed() < Duration::from_millis(1400),
        "too slow to test while the long requests were held ({:?})",
        held_at.elapsed()
    );
    assert!(
        short.iter().all(|o| o == "b"),
        "with 3 requests in flight on a, short requests went to {short:?}"
    );
    for h in held {
        assert_eq!(h.ok(), "a");
    }
    // Idle again: both get traffic.
    let after: Vec<String> = (0..10).map(|_| origin_of(&c.get("/after", &[]))).collect();
    let on_a = after.iter().filter(|o| *o == "a").count();
    assert!(
        (3..=7).contains(&on_a),
        "idle least_conn should alternate: {after:?}"
    );
}

#[test]
fn inflight_gauge_shows_held_requests_per_backend() {
    let _machine = shared();
    let a = Origin::start("a");
    let b = Origin::start("b");
    let admin = free_port();
    let lbd = LbdConf::new(free_port())
        .threads(2)
        .admin(admin)
        .backends(&[a.port, b.port])
        .start();
    let (ka, kb) = (
        format!("127.0.0.1:{}", a.port),
        format!("127.0.0.1:{}", b.port),
    );
    let idle = inflight(admin);
    assert_eq!(idle.get(&ka), Some(&0), "{idle:?}");
    assert_eq!(idle.get(&kb), Some(&0), "{idle:?}");
    let held: Vec<_> = (0..5)
        .map(|i| Held::start(lbd.port, format!("/slow?ms=1500&i={i}"), &[]))
        .collect();
    assert!(wait_until(Duration::from_secs(2), || {
        heads_with(&a, "/slow") + heads_with(&b, "/slow") == 5
    }));
    let want = (
        heads_with(&a, "/slow") as u64,
        heads_with(&b, "/slow") as u64,
    );
    let mut seen = BTreeMap::new();
    let shown = wait_until(Duration::from_secs(1), || {
        seen = inflight(admin);
        (seen.get(&ka).copied(), seen.get(&kb).copied()) == (Some(want.0), Some(want.1))
    });
    assert!(shown, "held (a, b) = {want:?}, gauge {seen:?}");
    for h in held {
        h.ok();
    }
    let drained = wait_until(Duration::from_secs(1), || {
        seen = inflight(admin);
        seen.get(&ka) == Some(&0) && seen.get(&kb) == Some(&0)
    });
    assert!(drained, "gauge after the requests ended: {seen:?}");
}

// ---------------------------------------------------------------------------
// 3. p2c
// ---------------------------------------------------------------------------

/// Sends `n` sequential requests on `c`; returns how many each origin served.
fn tally(c: &mut Session, n: usize, headers: &[(&str, &str)]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let r = c.get("/", headers);
        *counts.entry(origin_of(&r)).or_insert(0) += 1;
    }
    counts
}

fn count(m: &HashMap<String, usize>, k: &str) -> usize {
    m.get(k).copied().unwrap_or(0)
}

/// lbd with `balance: p2c` over `ports`, two workers.
fn p2c_front(ports: &[u16]) -> Lbd {
    LbdConf::new(free_port())
        .threads(2)
        .backends(ports)
        .group_extra("balance: p2c")
        .start()
}

#[test]
fn p2c_prefers_the_fast_backend_and_follows_a_change() {
    let _machine = alone();
    let fast = Origin::start("fast");
    let slow = Origin::start("slow");
    let lbd = p2c_front(&[fast.port, slow.port]);
    let mut c = Session::new(lbd.port);
    // Warm up (connections to both, origin threads) while both are fast.
    let t = tally(&mut c, 20, &[]);
    assert_eq!(count(&t, "fast") + count(&t, "slow"), 20, "{t:?}");
    fast.set_delay(1);
    slow.set_delay(50);
    let t = tally(&mut c, 300, &[]);
    assert!(count(&t, "fast") >= 270, "300 requests: {t:?}");

    // The slow one becomes fast and the fast one slow: traffic follows
    // within a bounded number of requests.
    fast.set_delay(50);
    slow.set_delay(1);
    let mut recent = Vec::new();
    let switched_after = (0..200).find(|_| {
        recent.push(origin_of(&c.get("/", &[])));
        recent.len() >= 20 && recent[recent.len() - 20..].iter().all(|o| o == "slow")
    });
    assert!(switched_after.is_some(), "traffic did not move: {recent:?}");
    let t = tally(&mut c, 100, &[]);
    assert!(count(&t, "slow") >= 90, "after the swap: {t:?}");
}

#[test]
fn p2c_does_not_send_traffic_to_a_fast_failing_backend() {
    let _machine = shared();
    let ok = Origin::start("ok");
    let bad = Origin::start("bad");
    bad.set_status(Some(503));
    let lbd = p2c_front(&[ok.port, bad.port]);
    let mut c = Session::new(lbd.port);
    let t = tally(&mut c, 200, &[]);
    assert!(
        count(&t, "bad") <= 10,
        "a backend answering 503 at once drew {t:?}"
    );
    assert_eq!(count(&t, "ok") + count(&t, "bad"), 200, "{t:?}");
}

// ---------------------------------------------------------------------------
// 4. hash, compared with nginx
// ---------------------------------------------------------------------------

/// nginx as a plain foreground process in a temp dir; killed on drop.
struct Nginx {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Nginx {
    /// nginx with `upstream u { hash $http_x_user consistent; server … }`
    /// in front of `servers` (port, weight), or why it could not start.
    fn start(servers: &[(u16, u32)]) -> Result<Nginx, String> {
        let bin = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        let dir = unique_temp_dir("nginx");
        let port = free_port();
        let d = dir.display();
        let mut ups = String::new();
        for &(p, w) in servers {
            if w == 1 {
                ups += &format!("    server 127.0.0.1:{p};\n");
            } else {
                ups += &format!("    server 127.0.0.1:{p} weight={w};\n");
            }
        }
        let conf = format!(
            "master_process off;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             upstream u {{\n    hash $http_x_user consistent;\n{ups}  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    keepalive_requests 100000;\n\
             location / {{ proxy_pass http://u; }}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf_path)
            .arg("-g")
            .arg("daemon off;")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {bin}: {e}"))?;
        let mut n = Nginx { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = n.child.try_wait() {
                let log = fs::read_to_string(n.dir.join("error.log")).unwrap_or_default();
                return Err(format!("{bin} exited with {status}: {log}"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(n);
            }
            if Instant::now() > deadline {
                return Err(format!("{bin} did not listen on {port} within 5 s"));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Which origin each `user-i` key lands on through the proxy on `port`.
fn key_map(port: u16, keys: usize) -> Vec<String> {
    let mut c = Session::new(port);
    (0..keys)
        .map(|i| {
            let user = format!("user-{i}");
            let r = c.get("/k", &[("X-User", &user)]);
            assert_eq!(r.status, 200, "{user} via :{port}: {r:?}");
            origin_of(&r)
        })
        .collect()
}

#[test]
fn hash_matches_nginx_consistent_hash_and_moves_only_the_removed_backends_keys() {
    let _machine = shared();
    const KEYS: usize = 1000;
    let origins: Vec<Origin> = (0..4).map(|i| Origin::start(&format!("h{i}"))).collect();
    let weights = [1, 2, 1, 3];
    let servers: Vec<(u16, u32)> = origins
        .iter()
        .zip(weights)
        .map(|(o, w)| (o.port, w))
        .collect();
    let run = |servers: &[(u16, u32)]| -> Option<(Vec<String>, Vec<String>)> {
        let nginx = match Nginx::start(servers) {
            Ok(n) => n,
            Err(why) => {
                // Straight to the terminal, past the test harness's capture.
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED hash_matches_nginx_consistent_hash: nginx could not be started: {why}"
                );
                return None;
            }
        };
        let lbd = LbdConf::new(free_port())
            .threads(2)
            .weighted(servers)
            .group_extra("balance: hash\nhash: { key: \"header:X-User\" }")
            .start();
        Some((key_map(nginx.port, KEYS), key_map(lbd.port, KEYS)))
    };
    let Some((nginx4, lbd4)) = run(&servers) else {
        return;
    };
    let differ: Vec<usize> = (0..KEYS).filter(|&i| nginx4[i] != lbd4[i]).collect();
    assert!(
        differ.is_empty(),
        "{} of {KEYS} keys land elsewhere than with nginx, e.g. user-{}: nginx {} lbd {}",
        differ.len(),
        differ[0],
        nginx4[differ[0]],
        lbd4[differ[0]]
    );
    // Every backend gets keys, roughly by weight.
    for (o, w) in origins.iter().zip(weights) {
        let n = lbd4.iter().filter(|x| **x == o.name).count();
        assert!(n > 40 * w as usize, "{} (weight {w}) got {n} keys", o.name);
    }

    // Remove h1 from both.
    let three: Vec<(u16, u32)> = servers
        .iter()
        .copied()
        .filter(|&(p, _)| p != origins[1].port)
        .collect();
    let Some((nginx3, lbd3)) = run(&three) else {
        return;
    };
    for (name, before, after) in [("nginx", &nginx4, &nginx3), ("lbd", &lbd4, &lbd3)] {
        for i in 0..KEYS {
            if before[i] == "h1" {
                assert_ne!(
                    after[i], "h1",
                    "{name}: user-{i} still on the removed backend"
                );
            } else {
                assert_eq!(
                    before[i], after[i],
                    "{name}: user-{i} moved from {} to {} though its backend stayed",
                    before[i], after[i]
                );
            }
        }
    }
    assert_eq!(nginx3, lbd3, "after the removal lbd and nginx disagree");
}

// ---------------------------------------------------------------------------
// 5. Bounded load
// ---------------------------------------------------------------------------

#[test]
fn bounded_load_spills_a_hot_key_to_other_backends() {
    let _machine = shared();
    let origins: Vec<Origin> = (0..4).map(|i| Origin::start(&format!("b{i}"))).collect();
    let ports: Vec<u16> = origins.iter().map(|o| o.port).collect();
    let conf = |extra: &str| {
        LbdConf::front(&ports)
            .group_extra(&format!(
                "balance: hash\nhash: {{ key: \"header:X-User\" }}\n{extra}"
            ))
            .start()
    };
    let plain = conf("");
    let bounded = conf("hash_balance_factor: 125");
    let hot = [("X-User", "hot")];
    let home = origin_of(&get(plain.port, "lbd.test", "/", &hot));
    assert_eq!(origin_of(&get(bounded.port, "lbd.test", "/", &hot)), home);

    // Six concurrent long requests for the hot key on each, one at a time so
    // that each pick sees the previous ones in flight.
    let held_by = |via: &str| -> Vec<usize> {
        origins
            .iter()
            .map(|o| heads_with(o, &format!("via={via}")))
            .collect()
    };
    let mut held = Vec::new();
    for i in 0..6 {
        for (lbd, via) in [(&plain, "plain"), (&bounded, "bounded")] {
            let target = format!("/slow?ms=1500&via={via}&i={i}");
            held.push(Held::start(lbd.port, target, &hot));
            assert!(
                wait_until(Duration::from_secs(2), || held_by(via)
                    .iter()
                    .sum::<usize>()
                    == i + 1),
                "{via}: request {i} did not arrive: {:?}",
                held_by(via)
            );
        }
    }
    let home_i = origins.iter().position(|o| o.name == home).expect("home");
    let p = held_by("plain");
    assert_eq!(
        p[home_i], 6,
        "without a bound the hot key stays home: {p:?}"
    );
    let b = held_by("bounded");
    assert!(
        b.iter().all(|&n| n <= 2),
        "factor 125 caps each backend at ceil(1.25 x 6 / 4) = 2: {b:?} (home {home})"
    );
    assert!(b[home_i] >= 1, "{b:?}");
    // A short hot request on the unbounded one still goes home.
    assert_eq!(origin_of(&get(plain.port, "lbd.test", "/", &hot)), home);
    for h in held {
        h.ok();
    }
    // Load gone: home again.
    assert_eq!(origin_of(&get(bounded.port, "lbd.test", "/", &hot)), home);
}

// ---------------------------------------------------------------------------
// 6. Sticky cookies
// ---------------------------------------------------------------------------

/// The `lbd_srv` value a response sets, checking its form and attributes.
fn sticky_id(r: &Response) -> Option<String> {
    let v = r.header("set-cookie")?;
    let rest = v
        .strip_prefix("lbd_srv=")
        .unwrap_or_else(|| panic!("unexpected cookie {v:?}"));
    let (id, attrs) = rest.split_once(';').unwrap_or((rest, ""));
    assert!(
        id.len() == 16
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "cookie value is not 16 hex digits: {v:?}"
    );
    assert!(attrs.contains("Path=/"), "{v:?}");
    assert!(attrs.contains("Max-Age=3600"), "{v:?}");
    Some(id.to_string())
}

/// Origin → sticky id, from requests without a cookie.
fn sticky_ids(port: u16, n: usize) -> BTreeMap<String, String> {
    let mut ids = BTreeMap::new();
    for _ in 0..n {
        let r = get(port, "lbd.test", "/", &[]);
        let id = sticky_id(&r).unwrap_or_else(|| panic!("no cookie set: {r:?}"));
        if let Some(old) = ids.insert(origin_of(&r), id.clone()) {
            assert_eq!(old, id, "{} got two ids", origin_of(&r));
        }
    }
    ids
}

#[test]
fn sticky_cookie_pins_the_backend_and_restamps_on_failover() {
    let _machine = shared();
    let origins: Vec<Origin> = (0..3).map(|i| Origin::start(&format!("s{i}"))).collect();
    let ports: Vec<u16> = origins.iter().map(|o| o.port).collect();
    let sticky = "sticky: { cookie: lbd_srv, ttl_s: 3600 }";
    let lbd1 = LbdConf::new(free_port())
        .threads(2)
        .backends(&ports)
        .group_extra(sticky)
        .start();
    let lbd2 = LbdConf::front(&ports).group_extra(sticky).start();

    let ids1 = sticky_ids(lbd1.port, 12);
    assert_eq!(
        ids1.len(),
        3,
        "round robin should visit every backend: {ids1:?}"
    );
    let mut distinct: Vec<&String> = ids1.values().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{ids1:?}");
    // The same backends give the same ids in another instance.
    assert_eq!(
        sticky_ids(lbd2.port, 6),
        ids1,
        "ids differ between instances"
    );

    let (pinned, id) = ids1
        .iter()
        .next()
        .map(|(o, i)| (o.clone(), i.clone()))
        .unwrap();
    let cookie = format!("a=1; lbd_srv={id}; b=2");
    for port in [lbd1.port, lbd2.port] {
        let mut c = Session::new(port);
        for _ in 0..9 {
            let r = c.get("/", &[("Cookie", &cookie)]);
            assert_eq!(origin_of(&r), pinned, "{r:?}");
            assert_eq!(
                r.header("set-cookie"),
                None,
                "re-stamped a valid cookie: {r:?}"
            );
        }
    }
    // A cookie naming no backend is ignored, and replaced.
    let r = get(
        lbd1.port,
        "lbd.test",
        "/",
        &[("Cookie", "lbd_srv=0123456789abcdef")],
    );
    assert_eq!(sticky_id(&r).as_ref(), ids1.get(&origin_of(&r)), "{r:?}");

    // Kill the pinned backend: the request goes elsewhere, with a new cookie.
    origins.iter().find(|o| o.name == pinned).unwrap().kill();
    for port in [lbd1.port, lbd2.port] {
        let r = get(port, "lbd.test", "/", &[("Cookie", &cookie)]);
        assert_eq!(r.status, 200, "{r:?}");
        let now = origin_of(&r);
        assert_ne!(now, pinned, "{r:?}");
        assert_eq!(
            sticky_id(&r).as_ref(),
            ids1.get(&now),
            "not re-stamped: {r:?}"
        );
        let new_cookie = format!("lbd_srv={}", ids1[&now]);
        for _ in 0..5 {
            let r = get(port, "lbd.test", "/", &[("Cookie", &new_cookie)]);
            assert_eq!(origin_of(&r), now, "{r:?}");
            assert_eq!(r.header("set-cookie"), None, "{r:?}");
        }
    }
}

// ---------------------------------------------------------------------------
// 7. Slow start
// ---------------------------------------------------------------------------

#[test]
fn slow_start_ramps_a_recovered_backend_up() {
    let _machine = shared();
    const WINDOW_MS: u64 = 2000;
    let a = Origin::start("a");
    let b = Origin::start("b");
    b.set_health(503);
    let lbd = LbdConf::new(free_port())
        .threads(2)
        .backends(&[a.port, b.port])
        .health_check(FAST_CHECK)
        .group_extra(&format!("slow_start_ms: {WINDOW_MS}"))
        .start();
    let mut c = Session::new(lbd.port);
    let t = tally(&mut c, 20, &[]);
    assert_eq!(count(&t, "a"), 20, "b is down: {t:?}");

    let hits = b.health_hits();
    b.set_health(200);
    assert!(
        wait_until(Duration::from_secs(2), || b.health_hits() > hits),
        "b was not checked again"
    );
    let up = Instant::now();
    let window = Duration::from_millis(WINDOW_MS);
    // (ms since b came up, served by b)
    let mut samples = Vec::new();
    while up.elapsed() < window + window / 4 && samples.len() < 50_000 {
        let r = c.get("/", &[]);
        samples.push((up.elapsed().as_millis() as u64, origin_of(&r) == "b"));
        // About a thousand samples are plenty; leave the CPU to others.
        thread::sleep(Duration::from_millis(1));
    }
    let share = |from: u64, to: u64| {
        let s: Vec<bool> = samples
            .iter()
            .filter(|(t, _)| (from..to).contains(t))
            .map(|&(_, b)| b)
            .collect();
        assert!(
            s.len() >= 20,
            "only {} requests in {from}..{to} ms",
            s.len()
        );
        s.iter().filter(|&&b| b).count() as f64 / s.len() as f64
    };
    let early = share(0, WINDOW_MS / 5);
    let late = share(WINDOW_MS * 3 / 5, WINDOW_MS);
    let after = share(WINDOW_MS + 50, u64::MAX);
    assert!(
        early < 0.3,
        "b's share in the first 20% of the ramp: {early:.2}"
    );
    assert!(
        late > early + 0.1,
        "b's share should grow: {early:.2} then {late:.2}"
    );
    assert!((0.4..=0.6).contains(&after), "after the ramp: {after:.2}");
}

// ---------------------------------------------------------------------------
// 8. Panic mode
// ---------------------------------------------------------------------------

#[test]
fn panic_mode_spreads_over_all_backends_when_too_few_are_healthy() {
    let _machine = shared();
    let origins: Vec<Origin> = (0..4).map(|i| Origin::start(&format!("p{i}"))).collect();
    for o in &origins[1..] {
        o.set_health(503);
    }
    let ports: Vec<u16> = origins.iter().map(|o| o.port).collect();
    let conf = || LbdConf::front(&ports).health_check(FAST_CHECK);
    let normal = conf().start();
    let panicky = conf().group_extra("panic_threshold_percent: 50").start();

    let t = tally(&mut Session::new(normal.port), 40, &[]);
    assert_eq!(count(&t, "p0"), 40, "only p0 is healthy: {t:?}");
    let t = tally(&mut Session::new(panicky.port), 40, &[]);
    for o in &origins {
        assert!(
            count(&t, &o.name) >= 5,
            "1 of 4 healthy is below 50%: {t:?}"
        );
    }

    // Two of four healthy is not below 50%: only those two.
    origins[1].set_health(200);
    let mut c = Session::new(panicky.port);
    let mut last = Vec::new();
    let calm = wait_until(Duration::from_secs(2), || {
        last.push(origin_of(&c.get("/", &[])));
        last.len() >= 8
            && last[last.len() - 8..]
                .iter()
                .all(|o| o == "p0" || o == "p1")
    });
    assert!(calm, "still panicking with 2 of 4 healthy: {last:?}");
    let t = tally(&mut c, 20, &[]);
    assert_eq!(count(&t, "p0") + count(&t, "p1"), 20, "{t:?}");
    assert!(count(&t, "p0") >= 5 && count(&t, "p1") >= 5, "{t:?}");
    let t = tally(&mut Session::new(normal.port), 20, &[]);
    assert_eq!(count(&t, "p0") + count(&t, "p1"), 20, "{t:?}");
}
