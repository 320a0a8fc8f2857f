//! The live status page on the admin address: `GET /` (one self-contained
//! HTML page, inline CSS and script, nothing fetched from elsewhere) and
//! `GET /stats` (the JSON it polls every second).
//!
//! `/stats` is built on the admin thread from plain atomic loads of the
//! workers' counter blocks, the health table and the registry snapshot, the
//! same sources as `GET /upstreams`: no worker is asked anything and none
//! waits. Latency percentiles come from the workers' cumulative histograms
//! (the same scrape `/metrics` uses, answered in each worker's housekeeping
//! tick): [`LatencyWindow`] takes at most one scrape a second however many
//! pages poll, and reports the difference from the previous one, so the
//! percentiles cover the last interval. Rates are computed by the page from
//! two successive polls. Every string from configuration or the API (group
//! and backend names, addresses, route hosts and paths) goes out through
//! [`json_str`], which escapes `<`, `>` and `&`, and the page inserts it
//! with `textContent` only.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::admin::json_str;
use crate::config::Config;
use crate::metrics::{self, BackendCounters, Latency, ScrapeReply, WorkerMetrics};
use crate::shard::Shared;

/// Facts about this process the page shows.
#[derive(Debug, Clone)]
pub(crate) struct Process {
    /// `-c` as given.
    pub(crate) config_path: Option<String>,
    /// When this process started, in seconds since the Unix epoch.
    pub(crate) started_unix: u64,
    /// It took over from a running lbd (`-u`): `started_unix` is then the
    /// last upgrade.
    pub(crate) upgraded: bool,
}

/// The latency percentiles `/stats` reports: the merged histograms of the
/// last interval of at least [`Self::EVERY`].
#[derive(Debug, Default)]
pub(crate) struct LatencyWindow {
    /// When the newest scrape was taken, and its cumulative counts.
    last: Option<(Instant, Latency)>,
    /// What the newest scrape added to the one before, and over how long.
    interval: Option<(Duration, Latency)>,
}

impl LatencyWindow {
    /// The shortest interval: polls in between reuse the last figures.
    const EVERY: Duration = Duration::from_secs(1);

    /// Takes a new scrape when the last is at least [`Self::EVERY`] old.
    pub(crate) fn refresh(&mut self, shared: &Shared, rx: &Receiver<ScrapeReply>, workers: usize) {
        let now = Instant::now();
        if self
            .last
            .as_ref()
            .is_some_and(|(at, _)| now.duration_since(*at) < Self::EVERY)
        {
            return;
        }
        let groups = shared.registry.load().groups().len();
        let epoch = shared.requests.scrape.fetch_add(1, Ordering::AcqRel) + 1;
        // Workers answer within one 50 ms tick; a stuck one costs this
        // poll half a second, not the page its figures.
        let (cumulative, got) =
            metrics::collect_scrape(rx, epoch, workers, groups, Duration::from_millis(500));
        if got < workers {
            return;
        }
        let at = Instant::now();
        self.interval = Some(match self.last.take() {
            Some((then, before)) => (at.duration_since(then), cumulative.since(&before)),
            None => (Duration::ZERO, cumulative.clone()),
        });
        self.last = Some((at, cumulative));
    }
}

/// Everything `/stats` reads.
pub(crate) struct Sources<'a> {
    pub(crate) shared: &'a Shared,
    pub(crate) config: &'a Config,
    pub(crate) workers: &'a [Arc<WorkerMetrics>],
    pub(crate) process: &'a Process,
    pub(crate) latency: &'a LatencyWindow,
}

/// `GET /stats`: process facts and totals, latency percentiles, per-worker
/// counts, per listener and route the responses by status class, and every
/// group with its backends (the fields of `GET /upstreams` plus counters,
/// slow start and the last health check).
pub(crate) fn stats_json(s: &Sources<'_>) -> String {
    let mut o = String::with_capacity(4096);
    let p = s.process;
    let _ = write!(
        o,
        "{{\"version\":{},\"uptime_seconds\":{},\"workers\":{},\"config_path\":{},\
         \"started_at\":{},\"last_upgrade\":{},",
        json_str(env!("CARGO_PKG_VERSION")),
        uptime_seconds().map_or("null".to_owned(), |s| s.to_string()),
        s.workers.len(),
        p.config_path.as_deref().map_or("null".to_owned(), json_str),
        p.started_unix,
        if p.upgraded {
            p.started_unix.to_string()
        } else {
            "null".to_owned()
        },
    );
    latency_json(&mut o, s.latency);
    totals_json(&mut o, s.workers);
    listeners_json(&mut o, s);
    upstreams_json(&mut o, s);
    o.push_str("}\n");
    o
}

/// `"latency":{"interval_seconds":…,"all":{…}},`; `interval_seconds` is 0
/// when the figures cover everything since start (the first poll).
fn latency_json(o: &mut String, w: &LatencyWindow) {
    match &w.interval {
        Some((d, l)) => {
            let _ = write!(
                o,
                "\"latency\":{{\"interval_seconds\":{:.3},\"all\":",
                d.as_secs_f64()
            );
            percentiles(o, &l.all);
            o.push_str("},");
        }
        None => o.push_str("\"latency\":null,"),
    }
}

/// `{"count":…,"p50_us":…,"p90_us":…,"p99_us":…,"p999_us":…}`, the
/// percentiles `null` when nothing was recorded.
fn percentiles(o: &mut String, h: &Histogram<u64>) {
    let _ = write!(o, "{{\"count\":{}", h.len());
    for (k, q) in [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p999", 0.999)] {
        if h.is_empty() {
            let _ = write!(o, ",\"{k}_us\":null");
        } else {
            let _ = write!(o, ",\"{k}_us\":{}", h.value_at_quantile(q));
        }
    }
    o.push('}');
}

const CLASSES: [&str; 6] = ["other", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Status classes as a JSON object, from `count(class index)`.
fn classes(o: &mut String, count: impl Fn(usize) -> u64) {
    o.push('{');
    for (i, class) in CLASSES.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let _ = write!(o, "\"{class}\":{}", count(i));
    }
    o.push('}');
}

fn totals_json(o: &mut String, workers: &[Arc<WorkerMetrics>]) {
    let sum = |f: &dyn Fn(&WorkerMetrics) -> u64| -> u64 { workers.iter().map(|w| f(w)).sum() };
    let _ = write!(
        o,
        "\"totals\":{{\"connections_active\":{},\"connections_parked\":{},\"connections_total\":{},\
         \"tunnels_active\":{},\"tunnels_total\":{},\"tunnel_bytes_upstream\":{},\
         \"tunnel_bytes_downstream\":{},\"requests\":",
        sum(&|m| m.connections_active.get()),
        sum(&|m| m.connections_parked.get()),
        sum(&|m| m.connections_total.get()),
        sum(&|m| m.tunnels_active.get()),
        sum(&|m| m.tunnels_total.get()),
        sum(&|m| m.tunnel_bytes_upstream.get()),
        sum(&|m| m.tunnel_bytes_downstream.get()),
    );
    classes(o, |i| sum(&|m| m.responses[i].get()));
    o.push_str("},\"per_worker\":[");
    for (i, w) in workers.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let n: u64 = w.responses.iter().map(|c| c.get()).sum();
        let _ = write!(
            o,
            "{{\"requests\":{n},\"connections_active\":{},\"connections_parked\":{}}}",
            w.connections_active.get(),
            w.connections_parked.get()
        );
    }
    o.push_str("],");
}

/// `"listeners":[{"address","tls","routes":[{"name","host","path_prefix",
/// "upstream","requests":{…}}]}],`.
fn listeners_json(o: &mut String, s: &Sources<'_>) {
    let (base, _) = metrics::route_slots(s.config);
    o.push_str("\"listeners\":[");
    for (li, l) in s.config.listeners.iter().enumerate() {
        if li > 0 {
            o.push(',');
        }
        let _ = write!(
            o,
            "{{\"address\":{},\"tls\":{},\"routes\":[",
            json_str(&l.address.to_string()),
            l.tls.is_some()
        );
        for (ri, r) in l.routes.routes.iter().enumerate() {
            if ri > 0 {
                o.push(',');
            }
            let upstream = s
                .config
                .upstreams
                .get(l.routes.table.target(ri))
                .map_or("", |u| u.name.as_str());
            let opt = |v: &Option<String>| v.as_deref().map_or("null".to_owned(), json_str);
            let _ = write!(
                o,
                "{{\"name\":{},\"host\":{},\"path_prefix\":{},\"upstream\":{},\"requests\":",
                json_str(&r.name),
                opt(&r.host),
                opt(&r.path_prefix),
                json_str(upstream),
            );
            let slot = base[li] + ri;
            classes(o, |c| {
                s.workers
                    .iter()
                    .map(|w| w.routes.get(slot).map_or(0, |r| r[c].get()))
                    .sum()
            });
            o.push('}');
        }
        o.push_str("]}");
    }
    o.push_str("],");
}

/// `"upstreams":[{"name","latency","backends":[…]}]`.
fn upstreams_json(o: &mut String, s: &Sources<'_>) {
    o.push_str("\"upstreams\":[");
    let reg = s.shared.registry.load();
    for (gi, g) in reg.groups().iter().enumerate() {
        if gi > 0 {
            o.push(',');
        }
        let _ = write!(o, "{{\"name\":{},\"latency\":", json_str(&g.name));
        match s
            .latency
            .interval
            .as_ref()
            .and_then(|(_, l)| l.groups.get(gi))
        {
            Some(h) => percentiles(o, h),
            None => o.push_str("null"),
        }
        o.push_str(",\"backends\":[");
        let ramp = s
            .config
            .upstreams
            .get(gi)
            .and_then(|u| u.balance.slow_start);
        for (k, &id) in g.members.iter().enumerate() {
            if k > 0 {
                o.push(',');
            }
            backend_json(o, s, &reg, id, ramp);
        }
        o.push_str("]}");
    }
    o.push(']');
}

fn backend_json(
    o: &mut String,
    s: &Sources<'_>,
    reg: &crate::upstream::Registry,
    id: crate::upstream::BackendId,
    ramp: Option<Duration>,
) {
    let health = &s.shared.health;
    let i = id.index();
    let b = reg.backend(id);
    let total =
        |f: fn(&BackendCounters) -> u64| -> u64 { s.workers.iter().map(|w| f(w.backend(i))).sum() };
    let up = health.is_up(i);
    let _ = write!(
        o,
        "{{\"id\":{i},\"address\":{},\"name\":{},\"weight\":{},\"source\":\"{}\",\
         \"health\":\"{}\",\"state\":\"{}\",\"slow_start_ms_left\":{},\"inflight\":{},\
         \"requests\":{},\"connect_errors\":{},\"pool_reuse\":{},\"new_connections\":{},\
         \"check_failures\":{},\"last_check\":",
        json_str(&b.address.to_string()),
        json_str(&b.name),
        b.weight,
        b.source.name(),
        if up { "up" } else { "down" },
        health.admin_state(i).name(),
        slow_start_left(health, i, up, ramp).map_or("null".to_owned(), |ms| ms.to_string()),
        total(|c| c.inflight.get()),
        total(|c| c.requests.get()),
        total(|c| c.connect_errors.get()),
        total(|c| c.pool_reuse.get()),
        total(|c| c.new_connections.get()),
        health.check_failures(i),
    );
    match health.last_check(i) {
        None => o.push_str("null"),
        Some(c) => {
            let _ = write!(
                o,
                "{{\"ago_ms\":{},\"result\":\"{}\",\"reason\":{}}}",
                c.ago.as_millis(),
                if c.failure.is_none() {
                    "passed"
                } else {
                    "failed"
                },
                c.failure.as_deref().map_or("null".to_owned(), json_str),
            );
        }
    }
    o.push('}');
}

/// Milliseconds of slow start left for an up backend whose group ramps.
fn slow_start_left(
    health: &crate::health::HealthMap,
    i: usize,
    up: bool,
    ramp: Option<Duration>,
) -> Option<u64> {
    let window = ramp?.as_micros() as u64;
    let since = health.up_since_us(i).filter(|_| up)?;
    let now = health.micros(Instant::now());
    let left = (since + window).checked_sub(now)?;
    (left > 0).then_some(left.div_ceil(1000))
}

/// Seconds since this process started (from `/proc/self/stat`), if readable.
fn uptime_seconds() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start at the
    // last `)`; `starttime` is field 22 overall, the 20th after it.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let start_ticks: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    let boot = std::fs::read_to_string("/proc/uptime").ok()?;
    let since_boot: f64 = boot.split_whitespace().next()?.parse().ok()?;
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)?;
    let started = start_ticks as f64 / tick as f64;
    Some((since_boot - started).max(0.0) as u64)
}

/// `GET /`: the page. It polls `/stats` every second and redraws in place
/// (rows are kept and their cells rewritten, so a button stays the same
/// element between polls); actions POST to the write API with the token
/// from the token field, which is kept in the page's memory only.
pub(crate) const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lbd status</title>
<style>
:root { color-scheme: light dark; --line: #8884; --muted: #888; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 1rem 1.5rem; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
h2 { font-size: 1.05rem; margin: 1.2rem 0 .3rem; }
header { display: flex; flex-wrap: wrap; gap: .5rem 2rem; align-items: baseline; }
#status { color: var(--muted); }
#status.error { color: #c33; font-weight: bold; }
table { border-collapse: collapse; margin: .2rem 0 .6rem; }
th, td { padding: .2rem .6rem; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th { font-weight: 600; }
th.address, th.name, th.source, th.health, th.state, td.address, td.name, td.source { text-align: left; }
svg.spark { width: 120px; height: 20px; vertical-align: middle; }
svg.spark polyline { fill: none; stroke: currentColor; stroke-width: 1.5; }
td.actions button + button { margin-left: .3rem; }
td.health, td.state, td.last_check { text-align: left; }
td.health, td.state { font-weight: 600; }
th.last_check { text-align: left; }
td.health.down { color: #c33; } td.health.up { color: #2a2; }
td.state.draining, td.state.disabled { color: #c80; }
.cards { display: flex; flex-wrap: wrap; gap: .6rem; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: .4rem .7rem; min-width: 8rem; }
.card .k { color: var(--muted); font-size: .85rem; }
.card .v { font-size: 1.15rem; font-variant-numeric: tabular-nums; }
.card .r { color: var(--muted); font-size: .85rem; }
td { font-variant-numeric: tabular-nums; }
button { font: inherit; padding: 0 .5rem; }
#msg { min-height: 1.2em; }
#msg.error { color: #c33; }
label { color: var(--muted); }
</style>
</head>
<body>
<header>
<h1>lbd status</h1>
<span id="meta"></span>
<span id="status" role="status">loading…</span>
<label>admin token (kept in this page only) <input id="token" type="password" autocomplete="off" size="16"></label>
</header>
<div id="msg" role="alert"></div>
<h2>Process</h2>
<div class="cards" id="totals"></div>
<h2>Latency</h2>
<p id="latency">…</p>
<h2>Workers</h2>
<table id="workers"><thead><tr><th>worker</th><th>requests</th><th>req/s</th><th>share</th><th>connections</th><th>parked</th></tr></thead><tbody></tbody></table>
<h2>Listeners and routes</h2>
<table id="routes"><thead><tr><th class="address">listener</th><th class="name">route</th><th class="address">host</th><th class="address">path prefix</th><th class="name">upstream</th><th>responses</th><th>req/s</th><th>2xx</th><th>3xx</th><th>4xx</th><th>5xx</th></tr></thead><tbody></tbody></table>
<div id="groups"></div>
<script>
"use strict";
const POLL_MS = 1000;
let prev = null;      // the previous /stats answer
let prevAt = 0;       // when it arrived (ms)
const rows = new Map();  // "group\u0000address" -> row cells
const sections = new Map(); // group name -> {section, tbody}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = String(text);
  return e;
}
function rate(now, before, secs) {
  if (before === undefined || secs <= 0) return "…";
  const r = (now - before) / secs;
  return r < 0 ? "…" : (r >= 100 ? r.toFixed(0) : r.toFixed(1));
}
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
function setMsg(text, error) {
  const m = document.getElementById("msg");
  m.textContent = text;
  m.className = error ? "error" : "";
}

function card(parent, key, value, r) {
  const c = el("div", {class: "card"});
  c.appendChild(el("div", {class: "k"}, key));
  c.appendChild(el("div", {class: "v"}, value));
  if (r !== undefined) c.appendChild(el("div", {class: "r"}, r + "/s"));
  parent.appendChild(c);
}

function renderTotals(s, secs) {
  const t = s.totals, p = prev && prev.totals;
  const box = el("div", {class: "cards", id: "totals"});
  card(box, "connections active", t.connections_active);
  card(box, "of which parked", t.connections_parked);
  card(box, "connections accepted", t.connections_total, p ? rate(t.connections_total, p.connections_total, secs) : "…");
  for (const cls of ["2xx", "3xx", "4xx", "5xx", "1xx", "other"]) {
    card(box, "responses " + cls, t.requests[cls], p ? rate(t.requests[cls], p.requests[cls], secs) : "…");
  }
  card(box, "tunnels active", t.tunnels_active);
  card(box, "tunnels opened", t.tunnels_total);
  card(box, "tunnel bytes up / down", bytes(t.tunnel_bytes_upstream) + " / " + bytes(t.tunnel_bytes_downstream));
  document.getElementById("totals").replaceWith(box);

  const tb = el("tbody");
  const delta = s.per_worker.map((w, i) => prev && prev.per_worker[i] ? w.requests - prev.per_worker[i].requests : 0);
  const all = delta.reduce((a, b) => a + b, 0);
  s.per_worker.forEach((w, i) => {
    const pw = prev && prev.per_worker[i];
    const tr = el("tr");
    tr.appendChild(el("td", null, i));
    tr.appendChild(el("td", null, w.requests));
    tr.appendChild(el("td", null, pw ? rate(w.requests, pw.requests, secs) : "…"));
    tr.appendChild(el("td", null, all > 0 ? (100 * delta[i] / all).toFixed(0) + " %" : "–"));
    tr.appendChild(el("td", null, w.connections_active));
    tr.appendChild(el("td", null, w.connections_parked));
    tb.appendChild(tr);
  });
  document.querySelector("#workers tbody").replaceWith(tb);
  document.getElementById("latency").textContent = latencyText(s.latency && s.latency.all, s.latency);
}

function us(v) {
  if (v === null || v === undefined) return "–";
  return v >= 1000000 ? (v / 1000000).toFixed(2) + " s" : v >= 1000 ? (v / 1000).toFixed(1) + " ms" : v + " µs";
}
// "p50 … · p90 … · p99 … · p99.9 … (N requests in the last T s)"
function latencyText(l, w) {
  if (!l) return "no figures yet";
  const span = w && w.interval_seconds > 0 ? "in the last " + w.interval_seconds.toFixed(1) + " s" : "since start";
  if (!l.count) return "no requests " + span;
  return "p50 " + us(l.p50_us) + " · p90 " + us(l.p90_us) + " · p99 " + us(l.p99_us) +
    " · p99.9 " + us(l.p999_us) + " (" + l.count + " requests " + span + ")";
}

function renderRoutes(s, secs) {
  const tb = el("tbody");
  s.listeners.forEach((l, li) => {
    l.routes.forEach((r, ri) => {
      const pr = prev && prev.listeners[li] && prev.listeners[li].routes[ri];
      const sum = q => Object.values(q).reduce((a, b) => a + b, 0);
      const tr = el("tr", {class: "route"});
      tr.appendChild(el("td", {class: "address"}, l.address + (l.tls ? " (TLS)" : "")));
      tr.appendChild(el("td", {class: "name"}, r.name));
      tr.appendChild(el("td", {class: "address"}, r.host === null ? "any" : r.host));
      tr.appendChild(el("td", {class: "address"}, r.path_prefix === null ? "any" : r.path_prefix));
      tr.appendChild(el("td", {class: "name"}, r.upstream));
      tr.appendChild(el("td", null, sum(r.requests)));
      tr.appendChild(el("td", null, pr ? rate(sum(r.requests), sum(pr.requests), secs) : "…"));
      for (const c of ["2xx", "3xx", "4xx", "5xx"]) tr.appendChild(el("td", null, r.requests[c]));
      tb.appendChild(tr);
    });
  });
  document.querySelector("#routes tbody").replaceWith(tb);
}

const SVG = "http://www.w3.org/2000/svg";
const HISTORY = 60;

// A sparkline: an svg with one polyline, and its history.
function sparkline() {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("role", "img");
  const line = document.createElementNS(SVG, "polyline");
  svg.appendChild(line);
  return {svg, line, history: []};
}
// Draws the last HISTORY values as a polyline scaled to its own maximum.
function spark(r, value, what, fmt) {
  if (value !== null) r.history.push(value);
  if (r.history.length > HISTORY) r.history.shift();
  const max = Math.max(1, ...r.history);
  const pts = r.history.map((v, i) =>
    (120 - (r.history.length - 1 - i) * 2).toFixed(1) + "," + (23 - v / max * 22).toFixed(1));
  r.line.setAttribute("points", pts.join(" "));
  r.svg.setAttribute("aria-label", what + " over the last minute, peak " + fmt(max));
}

const COLS = [["address", "address"], ["name", "name"], ["source", "source"], ["weight", "weight"],
  ["health", "health"], ["state", "state"], ["inflight", "in flight"], ["requests", "requests"],
  ["rps", "req/s"], ["spark", "last 60 s"], ["connect_errors", "connect errors"], ["pool_reuse", "pool reuse"],
  ["check_failures", "failed checks"], ["last_check", "last check"], ["actions", ""]];

function groupSection(name) {
  let g = sections.get(name);
  if (g) return g;
  const section = el("section", {class: "group", "data-group": name});
  section.appendChild(el("h2", null, "upstream " + name));
  const lat = el("p", {class: "latency"});
  const lspark = sparkline();
  const ltext = el("span", {class: "text"});
  lat.appendChild(ltext);
  lat.appendChild(document.createTextNode(" "));
  lat.appendChild(lspark.svg);
  section.appendChild(lat);
  const table = el("table", {class: "backends"});
  const hr = el("tr");
  for (const [k, title] of COLS) hr.appendChild(el("th", {class: k}, title));
  const thead = el("thead");
  thead.appendChild(hr);
  table.appendChild(thead);
  const tbody = el("tbody");
  table.appendChild(tbody);
  section.appendChild(table);
  document.getElementById("groups").appendChild(section);
  g = {section, tbody, ltext, lspark};
  sections.set(name, g);
  return g;
}

function backendRow(group, b, tbody) {
  const key = group + "\u0000" + b.address;
  let r = rows.get(key);
  if (r) return r;
  const tr = el("tr", {class: "backend", "data-group": group, "data-address": b.address});
  const cells = {};
  for (const [k] of COLS) { cells[k] = el("td", {class: k}); tr.appendChild(cells[k]); }
  for (const action of ["drain", "disable", "enable"]) {
    const btn = el("button", {type: "button", class: action}, action[0].toUpperCase() + action.slice(1));
    btn.addEventListener("click", () => act(group, b.address, action));
    cells.actions.appendChild(btn);
    cells[action] = btn;
  }
  const sp = sparkline();
  cells.spark.appendChild(sp.svg);
  tbody.appendChild(tr);
  r = {tr, cells, seen: 0, ...sp};
  rows.set(key, r);
  return r;
}

function renderGroups(s, secs, gen) {
  const before = new Map();
  if (prev) for (const g of prev.upstreams) for (const b of g.backends) before.set(g.name + "\u0000" + b.address, b);
  const groups = new Set();
  for (const g of s.upstreams) {
    groups.add(g.name);
    const gs = groupSection(g.name);
    const tbody = gs.tbody;
    gs.ltext.textContent = "latency " + latencyText(g.latency, s.latency) + ";";
    spark(gs.lspark, g.latency && g.latency.count ? g.latency.p99_us : null, "p99 latency", us);
    for (const b of g.backends) {
      const r = backendRow(g.name, b, tbody);
      r.seen = gen;
      const p = before.get(g.name + "\u0000" + b.address);
      const c = r.cells;
      for (const k of ["address", "name", "source", "weight", "health", "state", "inflight",
                       "requests", "connect_errors", "check_failures"]) {
        c[k].textContent = String(b[k]);
      }
      if (b.health === "up" && b.slow_start_ms_left !== null) {
        c.health.textContent = "up, slow start (" + (b.slow_start_ms_left / 1000).toFixed(1) + " s left)";
      }
      c.health.className = "health " + b.health;
      c.state.className = "state " + b.state;
      const lc = b.last_check;
      c.last_check.textContent = lc === null ? "–" : lc.result + " " + (lc.ago_ms / 1000).toFixed(1) + " s ago";
      c.last_check.title = lc && lc.reason !== null ? lc.reason : "";
      c.rps.textContent = p ? rate(b.requests, p.requests, secs) : "…";
      spark(r, p && secs > 0 ? Math.max(0, (b.requests - p.requests) / secs) : null,
            "requests per second", v => v.toFixed(0));
      const used = b.pool_reuse + b.new_connections;
      c.pool_reuse.textContent = used ? (100 * b.pool_reuse / used).toFixed(1) + " %" : "–";
      c.pool_reuse.title = b.pool_reuse + " reused, " + b.new_connections + " new connections";
      c.drain.hidden = b.state !== "active";
      c.disable.hidden = b.state === "disabled";
      c.enable.hidden = b.state === "active";
    }
  }
  for (const [key, r] of rows) if (r.seen !== gen) { r.tr.remove(); rows.delete(key); }
  for (const [name, g] of sections) if (!groups.has(name)) { g.section.remove(); sections.delete(name); }
}

let gen = 0;
async function poll() {
  try {
    const res = await fetch("/stats", {cache: "no-store"});
    if (!res.ok) throw new Error("HTTP " + res.status);
    const s = await res.json();
    const now = performance.now();
    const secs = prev ? (now - prevAt) / 1000 : 0;
    gen++;
    renderTotals(s, secs);
    renderRoutes(s, secs);
    renderGroups(s, secs, gen);
    const when = t => new Date(t * 1000).toLocaleString();
    document.getElementById("meta").textContent =
      "lbd " + s.version + " · " + s.workers + " workers" +
      (s.uptime_seconds === null ? "" : " · up " + s.uptime_seconds + " s") +
      (s.config_path === null ? "" : " · config " + s.config_path) +
      " · " + (s.last_upgrade === null ? "started " + when(s.started_at) + ", no upgrade since"
                                       : "last upgrade " + when(s.last_upgrade));
    const st = document.getElementById("status");
    st.textContent = "updated " + new Date().toLocaleTimeString();
    st.className = "";
    document.body.dataset.polls = String(gen);
    prev = s; prevAt = now;
  } catch (e) {
    const st = document.getElementById("status");
    st.textContent = "stats unreachable: " + e.message;
    st.className = "error";
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function act(group, address, action) {
  const token = document.getElementById("token").value.trim();
  const headers = token ? {"Authorization": "Bearer " + token} : {};
  const path = "/upstreams/" + encodeURIComponent(group) + "/backends/" +
    encodeURIComponent(address) + "/" + action;
  try {
    const res = await fetch(path, {method: "POST", headers});
    let body = {};
    try { body = await res.json(); } catch (_) {}
    if (res.status === 401) {
      setMsg("this lbd needs the admin token: paste it into the token field and try again", true);
      document.getElementById("token").focus();
    } else if (!res.ok) {
      setMsg(action + " " + address + ": " + (body.error || ("HTTP " + res.status)), true);
    } else {
      setMsg(action + " " + address + " in " + group + ": now " + body.state, false);
    }
  } catch (e) {
    setMsg(action + " " + address + ": " + e.message, true);
  }
}

poll();
</script>
</body>
</html>
"##;
