//! `contrib/grafana/lbd.json` names only metrics lbd exports: every `lbd_…`
//! name in the dashboard's queries (panel targets and template variables)
//! is a sample name in a live `GET /metrics` scrape of the real binary.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::{free_port, http_get, LbdConf, Origin};

/// Every query string in the dashboard.
fn queries(dashboard: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(e) = t["expr"].as_str() {
                out.push(e.to_owned());
            }
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push(q.to_owned());
        }
    }
    out
}

/// The `lbd_…` identifiers in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i..].starts_with(b"lbd_")
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if starts {
            let end = b[i..]
                .iter()
                .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                .map_or(b.len(), |n| i + n);
            names.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn every_metric_the_dashboard_queries_is_exported() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/grafana/lbd.json");
    let text = std::fs::read_to_string(path).expect("read contrib/grafana/lbd.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let queries = queries(&dashboard);
    assert!(queries.len() >= 10, "{queries:?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        let names = metric_names(q);
        assert!(!names.is_empty(), "a query naming no lbd metric: {q}");
        used.extend(names);
    }

    let a = Origin::start("a");
    let admin_port = free_port();
    let lbd = LbdConf::front(&[a.port]).admin(admin_port).start();
    assert_eq!(lbd.client().get("/").status, 200);
    let (status, scrape) = http_get(admin_port, "/metrics");
    assert_eq!(status, 200);
    let exported: BTreeSet<&str> = scrape
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|n| !exported.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics lbd does not export: {missing:?}\nexported: {exported:?}"
    );
}
