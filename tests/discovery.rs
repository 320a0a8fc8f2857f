//! DNS discovery on the real binary in front of a real DNS server (dnsmasq on
//! loopback, answering from a hosts file the tests rewrite and reload with
//! SIGHUP, and SRV records from its command line, with a restart): backends
//! follow DNS under load with no failed request, failures and empty answers
//! keep or clear the set as configured, SRV weights and priorities count,
//! and a name that does not resolve at start is a warning (and a `-t`
//! error).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use support::dns::Dnsmasq;
use support::{free_port, http_get, LbdConf, Load, Origin};

/// An origin on `127.0.0.{last}:port`.
fn origin_on(last: u8, port: u16) -> Origin {
    let ip = IpAddr::from([127, 0, 0, last]);
    Origin::start_at(&format!("o{last}"), SocketAddr::new(ip, port))
}

/// A group `web` discovering `name` through `dns`, quick to refresh.
fn discovering(port: u16, dns: &Dnsmasq, key: &str, extra: &str) -> LbdConf {
    LbdConf::new(port).group_extra(&format!(
        "discovery:\n  {key}\n  nameservers: ['{}']\n  \
         min_ttl_ms: 200\n  max_ttl_ms: 400\n  timeout_ms: 300\n{extra}",
        dns.addr
    ))
}

/// Waits until `pred` holds, sending requests through `port` meanwhile
/// when `poke`.
fn eventually(what: &str, limit: Duration, port: Option<u16>, pred: impl Fn() -> bool) {
    let t = Instant::now();
    while !pred() {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        if let Some(p) = port {
            let _ = http_get(p, "/");
        } else {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Requests `o` serves from now on, over `d`.
fn served_during(o: &Origin, d: Duration) -> usize {
    let before = o.requests();
    thread::sleep(d);
    o.requests() - before
}

#[test]
fn backends_follow_dns_under_load_without_a_failed_request() {
    let port = free_port();
    let [a, b, c] = [2, 3, 4].map(|i| origin_on(i, port.wrapping_add(1)));
    let dns = Dnsmasq::start("127.0.0.2 web.test\n127.0.0.3 web.test\n", &[]);
    let listen = free_port();
    let admin = free_port();
    let key = format!("dns: web.test:{}", a.port);
    let lbd = discovering(listen, &dns, &key, "health_check:\n  interval_ms: 200\n")
        .threads(2)
        .admin(admin)
        .start();
    let load = Load::start(listen, 4);
    let tick = Duration::from_millis(400 + 50 + 100);
    eventually("a and b serve", Duration::from_secs(3), None, || {
        a.requests() > 0 && b.requests() > 0
    });
    // c and an announced but not listening address join.
    dns.set_hosts(
        "127.0.0.2 web.test\n127.0.0.3 web.test\n127.0.0.4 web.test\n127.0.0.9 web.test\n",
    );
    eventually("c serves", tick * 3, None, || c.requests() > 0);
    let list = http_get(admin, "/upstreams").1;
    assert_eq!(list.matches("\"source\":\"dns\"").count(), 4, "{list}");
    assert!(
        list.contains(&format!("\"address\":\"127.0.0.9:{}\"", a.port)),
        "{list}"
    );
    // a leaves DNS: within max_ttl plus a tick it gets nothing new.
    dns.set_hosts("127.0.0.3 web.test\n127.0.0.4 web.test\n127.0.0.9 web.test\n");
    thread::sleep(tick);
    assert_eq!(
        served_during(&a, Duration::from_millis(500)),
        0,
        "a still gets traffic"
    );
    assert!(served_during(&b, Duration::from_millis(300)) > 0);
    // And comes back.
    dns.set_hosts("127.0.0.2 web.test\n127.0.0.3 web.test\n");
    eventually("a serves again", tick * 3, None, || {
        served_during(&a, Duration::from_millis(100)) > 0
    });
    thread::sleep(tick);
    assert_eq!(served_during(&c, Duration::from_millis(500)), 0, "c left");
    load.finish_clean(200);
    // The dead address was never tried: it waited for a passing check.
    let metrics = http_get(admin, "/metrics").1;
    assert!(
        !metrics.contains("127.0.0.9"),
        "its series left with it:\n{metrics}"
    );
    assert!(!lbd.stderr().contains("127.0.0.9:") || !lbd.stderr().contains("connect to 127.0.0.9"));
    assert!(lbd
        .stderr()
        .contains(&format!("127.0.0.9:{} failed its first check", a.port)));
}

/// A DNSSEC trust anchor for `name` (a made-up key digest): with it, a
/// validating dnsmasq checks answers for that domain even from a
/// domain-specific `--server`, and an unsigned answer cannot pass.
fn trust_anchor(name: &str) -> String {
    format!(
        "--trust-anchor={name},20326,8,2,\
         E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D"
    )
}

#[test]
fn failures_keep_the_last_set_and_empty_answers_follow_on_empty() {
    let a = Origin::start("a");
    let dns = Dnsmasq::start("127.0.0.1 keep.test\n127.0.0.1 clear.test\n", &[]);
    let (keep_port, clear_port) = (free_port(), free_port());
    let group = |name: &str, on_empty: &str| {
        format!(
            "discovery:\n  dns: {name}.test:{}\n  nameservers: ['{}']\n  \
             min_ttl_ms: 200\n  max_ttl_ms: 300\n  timeout_ms: 300\n  on_empty: {on_empty}\n",
            a.port, dns.addr
        )
    };
    let lbd = LbdConf::new(keep_port)
        .group_extra(&group("keep", "keep"))
        .listener(clear_port, "upstream: clear\n")
        .upstream("clear", &group("clear", "clear"))
        .threads(1)
        .start();
    assert_eq!(http_get(keep_port, "/").0, 200);
    assert_eq!(http_get(clear_port, "/").0, 200);
    let settle = Duration::from_millis(300 + 50 + 200);
    // NXDOMAIN (a name under the local domain no longer in the file).
    dns.set_hosts("");
    thread::sleep(settle);
    assert_eq!(http_get(keep_port, "/").0, 200, "on_empty: keep");
    eventually("clear empties", Duration::from_secs(2), None, || {
        http_get(clear_port, "/").0 == 503
    });
    dns.set_hosts("127.0.0.1 keep.test\n127.0.0.1 clear.test\n");
    eventually("clear refills", Duration::from_secs(2), None, || {
        http_get(clear_port, "/").0 == 200
    });
    // SERVFAIL: dnsmasq validates DNSSEC and forwards both names to an
    // unsigned dnsmasq, so it can prove nothing and answers SERVFAIL.
    let mut dns = dns;
    let unsigned = Dnsmasq::start("127.0.0.9 keep.test\n127.0.0.9 clear.test\n", &[]);
    dns.set_hosts("");
    let via = |n: &str| {
        format!(
            "--server=/{n}.test/{}#{}",
            unsigned.addr.ip(),
            unsigned.addr.port()
        )
    };
    let (keep, clear) = (via("keep"), via("clear"));
    let anchors = [".", "keep.test", "clear.test"].map(trust_anchor);
    dns.restart(&[
        "--dnssec",
        &anchors[0],
        &anchors[1],
        &anchors[2],
        &keep,
        &clear,
    ]);
    for name in ["keep.test", "clear.test"] {
        let reply = support::dns::query(dns.addr, name, support::dns::A).expect("an answer");
        assert_eq!(reply.rcode, 2, "{name}: SERVFAIL expected:\n{}", dns.log());
    }
    thread::sleep(settle * 2);
    assert_eq!(http_get(keep_port, "/").0, 200, "SERVFAIL keeps the set");
    assert_eq!(
        http_get(clear_port, "/").0,
        200,
        "SERVFAIL keeps the set even with on_empty: clear"
    );
    drop(unsigned);
    // No answer: dnsmasq forwards both names to a server that is not there
    // (the resolver's own tests also cover REFUSED answers).
    let dead = format!("127.0.0.1#{}", free_port());
    let forward = |n: &str| format!("--server=/{n}.test/{dead}");
    dns.restart(&[&forward("keep"), &forward("clear")]);
    thread::sleep(settle * 2);
    assert_eq!(http_get(keep_port, "/").0, 200, "a failure keeps the set");
    assert_eq!(
        http_get(clear_port, "/").0,
        200,
        "even with on_empty: clear"
    );
    // A dead nameserver.
    dns.stop();
    thread::sleep(settle * 2);
    assert_eq!(http_get(keep_port, "/").0, 200);
    assert_eq!(http_get(clear_port, "/").0, 200);
    let log = lbd.stderr();
    assert!(
        log.contains("upstreams.web.discovery.dns: keep.test"),
        "{log}"
    );
    assert!(log.contains("SERVFAIL"), "the SERVFAIL is logged:\n{log}");
    assert!(
        log.matches("keeping the last set, retrying").count() <= 4,
        "a failure streak is logged once per group, not per attempt:\n{log}"
    );
}

#[test]
fn srv_records_give_ports_and_weights_and_the_best_priority_wins() {
    let (a, b, c) = (Origin::start("a"), Origin::start("b"), Origin::start("c"));
    let srv = |t: &str, o: &Origin, prio: u8, w: u16| {
        format!(
            "--srv-host=_http._tcp.web.test,{t}.test,{},{prio},{w}",
            o.port
        )
    };
    let hosts = "127.0.0.1 a.test\n127.0.0.1 b.test\n127.0.0.1 c.test\n";
    let mut dns = Dnsmasq::start(
        hosts,
        &[
            &srv("a", &a, 0, 3),
            &srv("b", &b, 0, 1),
            &srv("c", &c, 1, 5),
        ],
    );
    let port = free_port();
    let admin = free_port();
    let lbd = discovering(port, &dns, "srv: _http._tcp.web.test", "")
        .threads(1)
        .admin(admin)
        .start();
    for _ in 0..400 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
    assert_eq!(
        (a.requests(), b.requests(), c.requests()),
        (300, 100, 0),
        "weights 3:1, priority 1 unused"
    );
    let list = http_get(admin, "/upstreams").1;
    assert!(
        list.contains("\"weight\":3") && list.contains("\"source\":\"dns\""),
        "{list}"
    );
    // The best priority goes away: the backup takes over.
    dns.restart(&[&srv("c", &c, 1, 5)]);
    eventually("c takes over", Duration::from_secs(3), Some(port), || {
        c.requests() > 0
    });
    let before = (a.requests(), b.requests());
    for _ in 0..20 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
    assert_eq!((a.requests(), b.requests()), before);
}

#[test]
fn a_name_that_does_not_resolve_at_start_is_a_warning_and_a_test_error() {
    let a = Origin::start("a");
    let b = origin_on(5, 0);
    let dns = Dnsmasq::start("", &[]);
    let port = free_port();
    let conf = discovering(port, &dns, &format!("dns: late.test:{}", b.port), "")
        .backends(&[a.port])
        .threads(1);
    // `-t` fails, naming the key.
    let dir = support::unique_temp_dir("disc-t");
    let path = conf.write(&dir);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbd"))
        .args(["-t", "-c"])
        .arg(&path)
        .output()
        .expect("run lbd -t");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("upstreams.web.discovery.dns") && err.contains("late.test"),
        "{err}"
    );
    // A start warns, serves the static backend, and picks the name up later.
    let lbd = conf.start();
    assert_eq!(lbd.client().get("/").status, 200);
    assert!(lbd.stderr().contains("late.test"), "{}", lbd.stderr());
    dns.set_hosts("127.0.0.5 late.test\n");
    eventually(
        "the late name joins",
        Duration::from_secs(3),
        Some(port),
        || b.requests() > 0,
    );
    assert!(lbd.stderr().contains("resolves again"), "{}", lbd.stderr());
}
