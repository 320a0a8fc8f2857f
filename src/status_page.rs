//! The live status page on the admin address: `GET /` (one self-contained
//! HTML page, inline CSS and script, nothing fetched from elsewhere) and
//! `GET /stats` (the JSON it polls every second).
//!
//! `/stats` is built on the admin thread from plain atomic loads of the
//! workers' counter blocks, the health table and the registry snapshot, the
//! same sources as `GET /upstreams`: no worker is asked anything and none
//! waits (latency percentiles, which need a histogram copy from every
//! worker, stay on `/metrics`). Rates are computed by the page from two
//! successive polls. Every string from configuration or the API (group and
//! backend names, addresses) goes out through [`json_str`], which escapes
//! `<`, `>` and `&`, and the page inserts it with `textContent` only.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::admin::json_str;
use crate::metrics::{BackendCounters, WorkerMetrics};
use crate::shard::Shared;

/// `GET /stats`: process totals, per-worker response counts, and every
/// group with its backends (the fields of `GET /upstreams` plus
/// `connect_errors`, `pool_reuse`, `new_connections`, `check_failures`).
pub(crate) fn stats_json(shared: &Shared, workers: &[Arc<WorkerMetrics>]) -> String {
    let sum = |f: &dyn Fn(&WorkerMetrics) -> u64| -> u64 { workers.iter().map(|w| f(w)).sum() };
    let mut o = String::with_capacity(2048);
    let _ = write!(
        o,
        "{{\"version\":{},\"uptime_seconds\":{},\"workers\":{},\"totals\":{{",
        json_str(env!("CARGO_PKG_VERSION")),
        uptime_seconds().map_or("null".to_owned(), |s| s.to_string()),
        workers.len(),
    );
    let _ = write!(
        o,
        "\"connections_active\":{},\"connections_parked\":{},\"connections_total\":{},\
         \"tunnels_active\":{},\"tunnels_total\":{},\"tunnel_bytes_upstream\":{},\
         \"tunnel_bytes_downstream\":{},\"requests\":{{",
        sum(&|m| m.connections_active.get()),
        sum(&|m| m.connections_parked.get()),
        sum(&|m| m.connections_total.get()),
        sum(&|m| m.tunnels_active.get()),
        sum(&|m| m.tunnels_total.get()),
        sum(&|m| m.tunnel_bytes_upstream.get()),
        sum(&|m| m.tunnel_bytes_downstream.get()),
    );
    for (i, class) in ["other", "1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .enumerate()
    {
        if i > 0 {
            o.push(',');
        }
        let _ = write!(o, "\"{class}\":{}", sum(&|m| m.responses[i].get()));
    }
    o.push_str("}},\"per_worker\":[");
    for (i, w) in workers.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        let n: u64 = w.responses.iter().map(|c| c.get()).sum();
        let _ = write!(
            o,
            "{{\"requests\":{n},\"connections_active\":{}}}",
            w.connections_active.get()
        );
    }
    o.push_str("],\"upstreams\":[");
    let reg = shared.registry.load();
    for (gi, g) in reg.groups().iter().enumerate() {
        if gi > 0 {
            o.push(',');
        }
        let _ = write!(o, "{{\"name\":{},\"backends\":[", json_str(&g.name));
        for (k, &id) in g.members.iter().enumerate() {
            let b = reg.backend(id);
            let i = id.index();
            let total = |f: fn(&BackendCounters) -> u64| -> u64 {
                workers.iter().map(|w| f(w.backend(i))).sum()
            };
            if k > 0 {
                o.push(',');
            }
            let _ = write!(
                o,
                "{{\"id\":{i},\"address\":{},\"name\":{},\"weight\":{},\"source\":\"{}\",\
                 \"health\":\"{}\",\"state\":\"{}\",\"inflight\":{},\"requests\":{},\
                 \"connect_errors\":{},\"pool_reuse\":{},\"new_connections\":{},\
                 \"check_failures\":{}}}",
                json_str(&b.address.to_string()),
                json_str(&b.name),
                b.weight,
                b.source.name(),
                if shared.health.is_up(i) { "up" } else { "down" },
                shared.health.admin_state(i).name(),
                total(|c| c.inflight.get()),
                total(|c| c.requests.get()),
                total(|c| c.connect_errors.get()),
                total(|c| c.pool_reuse.get()),
                total(|c| c.new_connections.get()),
                shared.health.check_failures(i),
            );
        }
        o.push_str("]}");
    }
    o.push_str("]}\n");
    o
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
td.health, td.state { text-align: left; font-weight: 600; }
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
<h2>Workers</h2>
<table id="workers"><thead><tr><th>worker</th><th>requests</th><th>req/s</th><th>connections</th></tr></thead><tbody></tbody></table>
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
  s.per_worker.forEach((w, i) => {
    const pw = prev && prev.per_worker[i];
    const tr = el("tr");
    tr.appendChild(el("td", null, i));
    tr.appendChild(el("td", null, w.requests));
    tr.appendChild(el("td", null, pw ? rate(w.requests, pw.requests, secs) : "…"));
    tr.appendChild(el("td", null, w.connections_active));
    tb.appendChild(tr);
  });
  document.querySelector("#workers tbody").replaceWith(tb);
}

const SVG = "http://www.w3.org/2000/svg";
const HISTORY = 60;

// Draws the last HISTORY rates as a polyline scaled to its own maximum.
function spark(r, value) {
  if (value !== null) r.history.push(value);
  if (r.history.length > HISTORY) r.history.shift();
  const max = Math.max(1, ...r.history);
  const pts = r.history.map((v, i) =>
    (120 - (r.history.length - 1 - i) * 2).toFixed(1) + "," + (23 - v / max * 22).toFixed(1));
  r.line.setAttribute("points", pts.join(" "));
  r.svg.setAttribute("aria-label", "requests per second over the last minute, peak " + max.toFixed(0));
}

const COLS = [["address", "address"], ["name", "name"], ["source", "source"], ["weight", "weight"],
  ["health", "health"], ["state", "state"], ["inflight", "in flight"], ["requests", "requests"],
  ["rps", "req/s"], ["spark", "last 60 s"], ["connect_errors", "connect errors"], ["pool_reuse", "pool reuse"],
  ["check_failures", "failed checks"], ["actions", ""]];

function groupSection(name) {
  let g = sections.get(name);
  if (g) return g;
  const section = el("section", {class: "group", "data-group": name});
  section.appendChild(el("h2", null, "upstream " + name));
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
  g = {section, tbody};
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
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("role", "img");
  const line = document.createElementNS(SVG, "polyline");
  svg.appendChild(line);
  cells.spark.appendChild(svg);
  tbody.appendChild(tr);
  r = {tr, cells, seen: 0, history: [], line, svg};
  rows.set(key, r);
  return r;
}

function renderGroups(s, secs, gen) {
  const before = new Map();
  if (prev) for (const g of prev.upstreams) for (const b of g.backends) before.set(g.name + "\u0000" + b.address, b);
  const groups = new Set();
  for (const g of s.upstreams) {
    groups.add(g.name);
    const {tbody} = groupSection(g.name);
    for (const b of g.backends) {
      const r = backendRow(g.name, b, tbody);
      r.seen = gen;
      const p = before.get(g.name + "\u0000" + b.address);
      const c = r.cells;
      for (const k of ["address", "name", "source", "weight", "health", "state", "inflight",
                       "requests", "connect_errors", "check_failures"]) {
        c[k].textContent = String(b[k]);
      }
      c.health.className = "health " + b.health;
      c.state.className = "state " + b.state;
      c.rps.textContent = p ? rate(b.requests, p.requests, secs) : "…";
      spark(r, p && secs > 0 ? Math.max(0, (b.requests - p.requests) / secs) : null);
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
    renderGroups(s, secs, gen);
    document.getElementById("meta").textContent =
      "lbd " + s.version + " · " + s.workers + " workers" +
      (s.uptime_seconds === null ? "" : " · up " + s.uptime_seconds + " s");
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
