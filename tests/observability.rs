//! Observability against the real binary: SIGUSR1 latency dumps in the
//! HdrHistogram percentile format, Prometheus `/metrics`, `/health`.

mod support;

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{free_port, http_get, unique_temp_dir, Lbd, LbdConf, Origin};

/// Two workers, an admin endpoint on `admin`, the histogram file `hist`.
fn observed(admin: u16, backends: &[u16], hist: &Path) -> LbdConf {
    LbdConf::front(backends)
        .threads(2)
        .admin(admin)
        .top(&format!("histogram_file: {}\n", hist.display()))
}

/// Parses a `.hgrm` file: every data row must have exactly 4 columns (3 on
/// the final 100% row); returns the last TotalCount.
fn hgrm_total(text: &str) -> u64 {
    assert!(
        text.contains("Value") && text.contains("1/(1-Percentile)"),
        "{text}"
    );
    let mut total = 0;
    let mut rows = 0;
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || t.starts_with("Value") {
            continue;
        }
        let f: Vec<&str> = t.split_whitespace().collect();
        assert!(f.len() == 4 || f.len() == 3, "bad row: {line}");
        let _: f64 = f[0].parse().expect("value");
        let p: f64 = f[1].parse().expect("percentile");
        assert!((0.0..=1.0).contains(&p));
        total = f[2].parse().expect("count");
        rows += 1;
    }
    let footer_total: u64 = text
        .lines()
        .find(|l| l.starts_with("#[Max"))
        .and_then(|l| l.rsplit('=').next())
        .and_then(|v| v.trim().trim_end_matches(']').trim().parse().ok())
        .expect("footer with total count");
    assert_eq!(footer_total, total);
    if total > 0 {
        assert!(rows > 0);
    }
    total
}

fn dump(lbd: &Lbd, hist: &Path) -> String {
    let before = fs::metadata(hist).and_then(|m| m.modified()).ok();
    kill(Pid::from_raw(lbd.pid() as i32), Signal::SIGUSR1).unwrap();
    let t = Instant::now();
    loop {
        if let Ok(m) = fs::metadata(hist).and_then(|m| m.modified()) {
            if Some(m) != before && lbd.stderr().matches("SIGUSR1: latency").count() > 0 {
                let text = fs::read_to_string(hist).unwrap();
                if text.contains("#[Buckets") {
                    return text;
                }
            }
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no dump written");
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigusr1_dumps_interval_histograms_with_exact_counts() {
    let a = Origin::start("a");
    let dir = unique_temp_dir("obs-h");
    let hist = dir.join("latency.hgrm");
    let lbd = observed(free_port(), &[a.port], &hist).start();
    // N requests over several connections (so both workers take some).
    let n = 57;
    for i in 0..n {
        let mut c = lbd.client();
        let r = c.get(if i % 5 == 0 { "/slow?ms=2" } else { "/" });
        assert_eq!(r.status, 200);
    }
    let first = dump(&lbd, &hist);
    assert_eq!(hgrm_total(&first), n as u64, "{first}");
    assert!(first.starts_with("#[Interval start:"), "{first}");
    // The slow requests took at least 2 ms: the max says so.
    let log = lbd.stderr();
    assert!(log.contains(&format!("count={n} ")), "{log}");

    // A second dump counts only what came after the first.
    for _ in 0..9 {
        assert_eq!(lbd.client().get("/").status, 200);
    }
    thread::sleep(Duration::from_millis(50));
    let second = dump(&lbd, &hist);
    assert_eq!(hgrm_total(&second), 9, "{second}");
    // Nothing after: an empty interval is still a valid file.
    thread::sleep(Duration::from_millis(50));
    let third = dump(&lbd, &hist);
    assert_eq!(hgrm_total(&third), 0);
}

fn scrape(admin: u16) -> Vec<prometheus_parse::Sample> {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines)
        .expect("valid Prometheus text")
        .samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let s = samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match s.value {
        prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
        prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("unexpected type for {name}"),
    }
}

#[test]
fn prometheus_metrics_count_what_was_sent() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let dead = free_port();
    let dir = unique_temp_dir("obs-m");
    let admin = free_port();
    let lbd = observed(admin, &[a.port, b.port, dead], &dir.join("h.hgrm")).start();
    assert_eq!(http_get(admin, "/health"), (200, "ok\n".to_string()));
    // 20 keep-alive requests on one connection: reuse after the first.
    let mut c = lbd.client();
    for _ in 0..20 {
        assert_eq!(c.get("/").status, 200);
    }
    assert_eq!(c.get("/status/404").status, 404);
    drop(c);
    let s = scrape(admin);
    assert_eq!(value(&s, "lbd_requests_total", &[("code", "2xx")]), 20.0);
    assert_eq!(value(&s, "lbd_requests_total", &[("code", "4xx")]), 1.0);
    let a_name = format!("127.0.0.1:{}", a.port);
    let b_name = format!("127.0.0.1:{}", b.port);
    let dead_name = format!("127.0.0.1:{dead}");
    let sent_a = value(&s, "lbd_upstream_requests_total", &[("backend", &a_name)]);
    let sent_b = value(&s, "lbd_upstream_requests_total", &[("backend", &b_name)]);
    assert_eq!(sent_a + sent_b, 21.0);
    assert_eq!(sent_a as usize, a.requests());
    assert_eq!(sent_b as usize, b.requests());
    // The dead backend: refused at least once, marked down passively.
    assert!(
        value(
            &s,
            "lbd_upstream_connect_errors_total",
            &[("backend", &dead_name)]
        ) >= 1.0
    );
    let reuse: f64 = [&a_name, &b_name]
        .iter()
        .map(|n| value(&s, "lbd_upstream_pool_reuse_total", &[("backend", n)]))
        .sum();
    let new: f64 = [&a_name, &b_name]
        .iter()
        .map(|n| value(&s, "lbd_upstream_connections_new_total", &[("backend", n)]))
        .sum();
    assert_eq!(reuse + new, 21.0);
    assert!(reuse >= 18.0, "reuse {reuse} new {new}");
    assert_eq!(new as usize, a.connections() + b.connections());
    assert_eq!(value(&s, "lbd_backend_up", &[("backend", &a_name)]), 1.0);
    assert_eq!(value(&s, "lbd_request_duration_seconds_count", &[]), 21.0);
    let quantiles = s
        .iter()
        .find_map(|x| match (&x.metric[..], &x.value) {
            ("lbd_request_duration_seconds", prometheus_parse::Value::Summary(q)) => Some(q),
            _ => None,
        })
        .expect("latency summary");
    let p99 = quantiles.iter().find(|q| q.quantile == 0.99).expect("p99");
    assert!(p99.count > 0.0 && p99.count < 5.0, "p99 {} s", p99.count);
    assert_eq!(http_get(admin, "/nope").0, 404);
}

#[test]
fn access_log_lines_match_requests() {
    let a = Origin::start("a");
    let dir = unique_temp_dir("obs-a");
    let path = dir.join("access.log");
    let lbd = observed(free_port(), &[a.port], &dir.join("h.hgrm"))
        .top(&format!(
            "access_log:\n  path: {}\n  format: combined\n",
            path.display()
        ))
        .start();
    let mut c = lbd.client();
    for i in 0..10 {
        assert_eq!(c.get(&format!("/item/{i}")).status, 200);
    }
    assert_eq!(c.get("/status/503").status, 503);
    // A request rejected by lbd itself is logged too.
    let mut bad = lbd.client();
    bad.send(b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(bad.response().status, 400);
    let t = Instant::now();
    let text = loop {
        let text = fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 12 {
            break text;
        }
        assert!(t.elapsed() < Duration::from_secs(3), "only:\n{text}");
        thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "{text}");
    for i in 0..10 {
        let want = format!("\"GET /item/{i} HTTP/1.1\" 200 1 ");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("127.0.0.1 - - [") && l.contains(&want)),
            "{want} in\n{text}"
        );
    }
    assert!(lines
        .iter()
        .any(|l| l.contains("\"GET /status/503 HTTP/1.1\" 503 ")));
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"GET / HTTP/1.1\" 400 0 ")),
        "{text}"
    );
    let upstream = format!(" 127.0.0.1:{}", a.port);
    assert_eq!(lines.iter().filter(|l| l.ends_with(&upstream)).count(), 11);
}
