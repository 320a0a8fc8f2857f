//! Metrics: per-worker counters and latency histograms, merged on demand.
//!
//! Each worker owns a [`WorkerMetrics`] block and is its only writer: a counter
//! increment is a relaxed load and store of an atomic no other core writes
//! (no locked instruction, no shared cache line: the block is 64-byte
//! aligned and heap-allocated per worker). Readers (the admin thread) sum the
//! blocks at scrape time. Latency goes into a plain, worker-local
//! `hdrhistogram` (µs, 3 significant digits): no atomic at all.
//!
//! Histograms leave a worker only when asked: the signal thread (SIGUSR1) or
//! the admin thread (scrape) bumps an epoch in [`Requests`]; each worker's
//! 50 ms housekeeping timer notices and sends a copy over a channel. For a
//! SIGUSR1 dump the worker sends its *interval* histogram and starts a new one
//! (HdrHistogram's interval convention: each dump covers the time since the
//! previous one); scrapes get the cumulative histogram, and one cumulative
//! histogram per upstream group (for the status page's percentiles). An idle worker answers
//! within one timer period; a busy one pays one histogram copy.
//!
//! This module also writes HdrHistogram's percentile-distribution (`.hgrm`)
//! text format and the Prometheus text exposition.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::config::Config;
use crate::health::HealthMap;

/// Highest latency recorded (1 hour, in µs); larger values are clamped.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;
/// Significant digits kept.
pub const SIGFIG: u8 = 3;

/// A fresh latency histogram.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds that `new_with_bounds` always accepts (low ≥ 1,
    // high ≥ 2 × low, sigfig ≤ 5): no input or environment can fail this.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// A counter with exactly one writing thread.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one. Only the owning worker calls this: a plain load and store,
    /// no read-modify-write.
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` (owning worker only).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }

    /// Sets the value (owning worker only; gauges).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Reads the value (any thread).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Per-backend counters of one worker.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Requests sent to the backend.
    pub requests: Counter,
    /// Failed connects (refused, timed out).
    pub connect_errors: Counter,
    /// Requests that reused a pooled connection.
    pub pool_reuse: Counter,
    /// New upstream connections opened.
    pub new_connections: Counter,
    /// Requests in flight to the backend (gauge, published every tick).
    pub inflight: Counter,
}

/// One worker's counters. Written by that worker only.
#[derive(Debug)]
#[repr(align(64))]
pub struct WorkerMetrics {
    /// Responses sent to clients by status class: index 1..=5 for 1xx..5xx.
    pub responses: [Counter; 6],
    /// Of those, the responses to HTTP/2 streams (the rest were HTTP/1).
    pub responses_h2: [Counter; 6],
    /// Client connections open now (gauge).
    pub connections_active: Counter,
    /// Client connections accepted.
    pub connections_total: Counter,
    /// Idle client connections parked without a task (gauge, part of
    /// `connections_active`).
    pub connections_parked: Counter,
    /// Upgraded connections (tunnels) open now (gauge).
    pub tunnels_active: Counter,
    /// Tunnels opened.
    pub tunnels_total: Counter,
    /// HTTP/2 client connections accepted (h2c or ALPN `h2`).
    pub http2_connections_total: Counter,
    /// HTTP/2 streams served (each also counts in `responses`).
    pub http2_streams_total: Counter,
    /// HTTP/2 connections ended with GOAWAY ENHANCE_YOUR_CALM by the flood
    /// meter (too many control or empty frames in a row).
    pub http2_floods_total: Counter,
    /// Bytes tunnels carried from clients to backends.
    pub tunnel_bytes_upstream: Counter,
    /// Bytes tunnels carried from backends to clients.
    pub tunnel_bytes_downstream: Counter,
    /// Connections refused by the PROXY protocol reader, by reason (see
    /// `downstream::proxy_protocol::Refusal`).
    pub proxy_protocol_rejected: [Counter; 6],
    /// By global backend id.
    pub backends: Box<[BackendCounters]>,
    /// By route (every listener's routes in order, see [`route_slots`]):
    /// responses by status class, as in `responses`.
    pub routes: Box<[[Counter; 6]]>,
}

/// Where each listener's routes start in [`WorkerMetrics::routes`], and how
/// many slots there are in all.
pub fn route_slots(config: &Config) -> (Vec<usize>, usize) {
    let mut base = Vec::with_capacity(config.listeners.len());
    let mut n = 0;
    for l in &config.listeners {
        base.push(n);
        n += l.routes.routes.len();
    }
    (base, n)
}

/// A status code's class index: 1..=5 for 1xx..5xx, 0 for anything else.
#[inline]
fn class_of(status: u16) -> usize {
    let class = (status / 100) as usize;
    if (1..=5).contains(&class) {
        class
    } else {
        0
    }
}

impl WorkerMetrics {
    /// Counters for `backends` backends and `routes` routes.
    pub fn new(backends: usize, routes: usize) -> Self {
        WorkerMetrics {
            responses: Default::default(),
            responses_h2: Default::default(),
            connections_active: Counter::default(),
            connections_total: Counter::default(),
            connections_parked: Counter::default(),
            tunnels_active: Counter::default(),
            tunnels_total: Counter::default(),
            http2_connections_total: Counter::default(),
            http2_streams_total: Counter::default(),
            http2_floods_total: Counter::default(),
            tunnel_bytes_upstream: Counter::default(),
            tunnel_bytes_downstream: Counter::default(),
            proxy_protocol_rejected: Default::default(),
            backends: (0..backends).map(|_| BackendCounters::default()).collect(),
            routes: (0..routes).map(|_| Default::default()).collect(),
        }
    }

    /// Counts one response with `status`.
    #[inline]
    pub fn response(&self, status: u16) {
        self.responses[class_of(status)].inc();
    }

    /// Counts one response with `status` to an HTTP/2 stream (in the
    /// totals too).
    #[inline]
    pub fn response_h2(&self, status: u16) {
        self.responses[class_of(status)].inc();
        self.responses_h2[class_of(status)].inc();
    }

    /// Counts one response with `status` for route slot `slot`.
    #[inline]
    pub fn route_response(&self, slot: usize, status: u16) {
        if let Some(r) = self.routes.get(slot) {
            r[class_of(status)].inc();
        }
    }

    /// Counters of backend `id` (a dummy for an out-of-range id).
    #[inline]
    pub fn backend(&self, id: usize) -> &BackendCounters {
        static NONE: BackendCounters = BackendCounters {
            requests: Counter(AtomicU64::new(0)),
            connect_errors: Counter(AtomicU64::new(0)),
            pool_reuse: Counter(AtomicU64::new(0)),
            new_connections: Counter(AtomicU64::new(0)),
            inflight: Counter(AtomicU64::new(0)),
        };
        self.backends.get(id).unwrap_or(&NONE)
    }
}

/// Epochs other threads bump to ask workers for histograms.
#[derive(Debug, Default)]
pub struct Requests {
    /// SIGUSR1 dumps requested so far.
    pub dump: AtomicU64,
    /// Scrapes requested so far.
    pub scrape: AtomicU64,
}

/// A worker's reply to a dump: which epoch it answers, and the histogram.
pub type Reply = (u64, Histogram<u64>);

/// Cumulative latency: every exchange, and per upstream group (by group
/// index) the exchanges routed to it.
#[derive(Debug, Clone)]
pub struct Latency {
    /// Every exchange.
    pub all: Histogram<u64>,
    /// By upstream group index.
    pub groups: Vec<Histogram<u64>>,
}

impl Latency {
    /// Empty histograms for `groups` groups.
    pub fn new(groups: usize) -> Self {
        Latency {
            all: new_histogram(),
            groups: (0..groups).map(|_| new_histogram()).collect(),
        }
    }

    /// Adds `other`'s counts (groups beyond ours are dropped).
    pub fn add(&mut self, other: &Latency) {
        let _ = self.all.add(&other.all);
        for (mine, theirs) in self.groups.iter_mut().zip(&other.groups) {
            let _ = mine.add(theirs);
        }
    }

    /// What was recorded since `earlier` (a previous snapshot of the same
    /// cumulative counts).
    pub fn since(&self, earlier: &Latency) -> Latency {
        let mut d = self.clone();
        let _ = d.all.subtract(&earlier.all);
        for (mine, then) in d.groups.iter_mut().zip(&earlier.groups) {
            let _ = mine.subtract(then);
        }
        d
    }
}

/// A worker's reply to a scrape: the epoch, and its cumulative latency.
pub type ScrapeReply = (u64, Latency);

/// The worker side: its histograms and reply channels.
pub struct WorkerHistograms {
    /// Since the last dump.
    pub interval: Histogram<u64>,
    /// Since start, excluding `interval`.
    total: Histogram<u64>,
    /// Since start, by upstream group (never reset). Empty with a single
    /// group, whose histogram is then the whole one (every recorded
    /// exchange was routed to it): one record per request, not two.
    groups: Vec<Histogram<u64>>,
    /// There is exactly one group.
    single: bool,
    seen_dump: u64,
    seen_scrape: u64,
    dump_tx: Sender<Reply>,
    scrape_tx: Sender<ScrapeReply>,
}

impl WorkerHistograms {
    /// A worker's histograms for `groups` upstream groups, replying on
    /// these channels.
    pub fn new(dump_tx: Sender<Reply>, scrape_tx: Sender<ScrapeReply>, groups: usize) -> Self {
        WorkerHistograms {
            interval: new_histogram(),
            total: new_histogram(),
            groups: match groups {
                0 | 1 => Vec::new(),
                n => (0..n).map(|_| new_histogram()).collect(),
            },
            single: groups == 1,
            seen_dump: 0,
            seen_scrape: 0,
            dump_tx,
            scrape_tx,
        }
    }

    /// Records one request's latency, and in `group`'s histogram when it
    /// was routed to one.
    #[inline]
    pub fn record(&mut self, d: Duration, group: Option<usize>) {
        let us = (d.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.interval.saturating_record(us);
        if let Some(h) = group.and_then(|g| self.groups.get_mut(g)) {
            h.saturating_record(us);
        }
    }

    /// Answers pending dump and scrape requests (called from the worker's
    /// housekeeping timer).
    pub fn answer(&mut self, req: &Requests) {
        let dump = req.dump.load(Ordering::Acquire);
        if dump != self.seen_dump {
            self.seen_dump = dump;
            let fresh = Histogram::new_from(&self.interval);
            let done = std::mem::replace(&mut self.interval, fresh);
            let _ = self.total.add(&done);
            let _ = self.dump_tx.send((dump, done));
        }
        let scrape = req.scrape.load(Ordering::Acquire);
        if scrape != self.seen_scrape {
            self.seen_scrape = scrape;
            let mut all = self.total.clone();
            let _ = all.add(&self.interval);
            let groups = match self.single {
                true => vec![all.clone()],
                false => self.groups.clone(),
            };
            let _ = self.scrape_tx.send((scrape, Latency { all, groups }));
        }
    }
}

/// Collects one reply per worker for `epoch`, waiting at most `limit`.
/// Returns the merged histogram and how many workers answered.
pub fn collect(
    rx: &Receiver<Reply>,
    epoch: u64,
    workers: usize,
    limit: Duration,
) -> (Histogram<u64>, usize) {
    let deadline = std::time::Instant::now() + limit;
    let mut merged = new_histogram();
    let mut got = 0;
    while got < workers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            break;
        }
        match rx.recv_timeout(left) {
            Ok((e, h)) if e == epoch => {
                let _ = merged.add(&h);
                got += 1;
            }
            Ok(_) => {} // a late answer to an earlier request
            Err(_) => break,
        }
    }
    (merged, got)
}

/// Collects one scrape reply per worker for `epoch`, waiting at most
/// `limit`: the merged cumulative latency of `groups` groups, and how many
/// workers answered.
pub fn collect_scrape(
    rx: &Receiver<ScrapeReply>,
    epoch: u64,
    workers: usize,
    groups: usize,
    limit: Duration,
) -> (Latency, usize) {
    let deadline = std::time::Instant::now() + limit;
    let mut merged = Latency::new(groups);
    let mut got = 0;
    while got < workers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Ok((e, l)) = rx.recv_timeout(left) else {
            break;
        };
        if e == epoch {
            merged.add(&l);
            got += 1;
        }
    }
    (merged, got)
}

/// Writes `h` in HdrHistogram's percentile-distribution format (values in
/// µs), with a comment line naming the interval.
pub fn hgrm(h: &Histogram<u64>, start: SystemTime, end: SystemTime) -> String {
    let mut out = String::new();
    let ms = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let _ = writeln!(
        out,
        "#[Interval start: {} ms since epoch, end: {} ms since epoch; values in microseconds]",
        ms(start),
        ms(end)
    );
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let sig = SIGFIG as usize;
    let mut cumulative = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            cumulative += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64;
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.sig$} {q:2.12} {cumulative:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.sig$} {q:2.12} {cumulative:10}");
            }
        }
    }
    let mean = if !h.is_empty() { h.mean() } else { 0.0 };
    let stdev = if !h.is_empty() { h.stdev() } else { 0.0 };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:12.sig$}, StdDeviation   = {stdev:12.sig$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.sig$}, Total count    = {:12}]",
        h.max() as f64,
        h.len()
    );
    let sub_buckets = (2 * 10u64.pow(SIGFIG as u32)).next_power_of_two();
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

/// One-line summary for the log.
pub fn summary(h: &Histogram<u64>) -> String {
    format!(
        "count={} p50={}us p90={}us p99={}us p99.9={}us max={}us",
        h.len(),
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.9),
        h.value_at_quantile(0.99),
        h.value_at_quantile(0.999),
        h.max()
    )
}

/// Where SIGUSR1 dumps go: `histogram_file`, else `lbd-latency.hgrm` beside
/// `error_log`, else in the working directory.
pub fn histogram_path(config: &Config) -> PathBuf {
    if let Some(p) = &config.histogram_file {
        return p.clone();
    }
    let name = "lbd-latency.hgrm";
    match config.error_log.as_ref().and_then(|p| p.parent()) {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// A backend's labels: (id index, group name, backend name).
pub(crate) type BackendLabels<'a> = (usize, &'a str, &'a str);

/// Everything a scrape reads.
pub(crate) struct Scrape<'a> {
    /// Every backend, by id, with its labels.
    pub(crate) backends: &'a [BackendLabels<'a>],
    /// Every worker's counters.
    pub workers: &'a [std::sync::Arc<WorkerMetrics>],
    /// Health bits and check failure counts.
    pub health: &'a HealthMap,
    /// Cumulative latency, merged across workers.
    pub latency: &'a Histogram<u64>,
}

/// A per-backend metric family: name, type, help, getter.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&BackendCounters) -> u64,
);

fn sum(workers: &[std::sync::Arc<WorkerMetrics>], f: impl Fn(&WorkerMetrics) -> u64) -> u64 {
    workers.iter().map(|w| f(w)).sum()
}

/// One unlabelled metric: HELP, TYPE and its sample.
fn scalar(o: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
    let _ = writeln!(o, "{name} {value}");
}

/// Renders the Prometheus text exposition (format 0.0.4).
pub fn prometheus(s: &Scrape<'_>) -> String {
    let mut o = String::with_capacity(4096);
    client_families(&mut o, s.workers);
    tunnel_families(&mut o, s.workers);
    backend_families(&mut o, s);
    latency_family(&mut o, s.latency);
    o
}

/// Responses and client connections.
fn client_families(o: &mut String, w: &[std::sync::Arc<WorkerMetrics>]) {
    let _ = writeln!(
        o,
        "# HELP lbd_requests_total Responses sent to clients, by status class and client protocol."
    );
    let _ = writeln!(o, "# TYPE lbd_requests_total counter");
    // The `h2` series appear once an HTTP/2 stream was answered, so a
    // process that serves only HTTP/1 keeps one series per class.
    let h2_seen = w.iter().any(|m| m.responses_h2.iter().any(|c| c.get() > 0));
    for (i, class) in ["other", "1xx", "2xx", "3xx", "4xx", "5xx"]
        .iter()
        .enumerate()
    {
        let all = sum(w, |m| m.responses[i].get());
        let h2 = sum(w, |m| m.responses_h2[i].get());
        let _ = writeln!(
            o,
            "lbd_requests_total{{code=\"{class}\",protocol=\"http/1.1\"}} {}",
            all.saturating_sub(h2)
        );
        if h2_seen {
            let _ = writeln!(
                o,
                "lbd_requests_total{{code=\"{class}\",protocol=\"h2\"}} {h2}"
            );
        }
    }
    scalar(
        o,
        "lbd_connections_active",
        "gauge",
        "Client connections open now.",
        sum(w, |m| m.connections_active.get()),
    );
    scalar(
        o,
        "lbd_connections_parked",
        "gauge",
        "Idle keep-alive client connections parked without a task (included in lbd_connections_active).",
        sum(w, |m| m.connections_parked.get()),
    );
    scalar(
        o,
        "lbd_connections_total",
        "counter",
        "Client connections accepted.",
        sum(w, |m| m.connections_total.get()),
    );
    let _ = writeln!(
        o,
        "# HELP lbd_proxy_protocol_rejected_total Client connections refused by the PROXY protocol reader, by reason."
    );
    let _ = writeln!(o, "# TYPE lbd_proxy_protocol_rejected_total counter");
    for r in crate::downstream::proxy_protocol::Refusal::ALL {
        let _ = writeln!(
            o,
            "lbd_proxy_protocol_rejected_total{{reason=\"{}\"}} {}",
            r.label(),
            sum(w, |m| m.proxy_protocol_rejected[r.index()].get())
        );
    }
}

/// Upgraded connections.
fn tunnel_families(o: &mut String, w: &[std::sync::Arc<WorkerMetrics>]) {
    scalar(
        o,
        "lbd_tunnels_active",
        "gauge",
        "Upgraded connections (WebSocket tunnels) open now.",
        sum(w, |m| m.tunnels_active.get()),
    );
    scalar(
        o,
        "lbd_tunnels_total",
        "counter",
        "Upgraded connections (WebSocket tunnels) opened.",
        sum(w, |m| m.tunnels_total.get()),
    );
    scalar(
        o,
        "lbd_http2_connections_total",
        "counter",
        "HTTP/2 client connections accepted (h2c or ALPN h2).",
        sum(w, |m| m.http2_connections_total.get()),
    );
    scalar(
        o,
        "lbd_http2_streams_total",
        "counter",
        "HTTP/2 streams accepted (each one request in lbd_requests_total once answered).",
        sum(w, |m| m.http2_streams_total.get()),
    );
    scalar(
        o,
        "lbd_http2_floods_total",
        "counter",
        "HTTP/2 connections closed with GOAWAY ENHANCE_YOUR_CALM for sending control or empty frames without progress.",
        sum(w, |m| m.http2_floods_total.get()),
    );
    let _ = writeln!(
        o,
        "# HELP lbd_tunnel_bytes_total Bytes carried by tunnels, by direction.\n# TYPE lbd_tunnel_bytes_total counter"
    );
    for (dir, v) in [
        ("upstream", sum(w, |m| m.tunnel_bytes_upstream.get())),
        ("downstream", sum(w, |m| m.tunnel_bytes_downstream.get())),
    ] {
        let _ = writeln!(o, "lbd_tunnel_bytes_total{{direction=\"{dir}\"}} {v}");
    }
}

/// Per-backend counters and health.
fn backend_families(o: &mut String, s: &Scrape<'_>) {
    let w = s.workers;
    let families: [Family; 5] = [
        (
            "lbd_upstream_requests_total",
            "counter",
            "Requests sent to each backend.",
            |b| b.requests.get(),
        ),
        (
            "lbd_upstream_connect_errors_total",
            "counter",
            "Failed connects to each backend (refused or timed out).",
            |b| b.connect_errors.get(),
        ),
        (
            "lbd_upstream_pool_reuse_total",
            "counter",
            "Requests sent on a reused pooled upstream connection.",
            |b| b.pool_reuse.get(),
        ),
        (
            "lbd_upstream_connections_new_total",
            "counter",
            "New upstream connections opened.",
            |b| b.new_connections.get(),
        ),
        (
            "lbd_upstream_inflight",
            "gauge",
            "Requests in flight to each backend (summed over workers, updated every 50 ms).",
            |b| b.inflight.get(),
        ),
    ];
    let backends = s.backends;
    for (name, kind, help, get) in families {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
        for &(id, group, backend) in backends {
            let _ = writeln!(
                o,
                "{name}{{upstream=\"{}\",backend=\"{}\"}} {}",
                escape(group),
                escape(backend),
                sum(w, |m| get(m.backend(id)))
            );
        }
    }
    let _ = writeln!(
        o,
        "# HELP lbd_backend_up 1 if the backend is eligible per health checks."
    );
    let _ = writeln!(o, "# TYPE lbd_backend_up gauge");
    for &(id, group, backend) in backends {
        let _ = writeln!(
            o,
            "lbd_backend_up{{upstream=\"{}\",backend=\"{}\"}} {}",
            escape(group),
            escape(backend),
            u8::from(s.health.is_up(id))
        );
    }
    let _ = writeln!(
        o,
        "# HELP lbd_health_check_failures_total Failed active health checks."
    );
    let _ = writeln!(o, "# TYPE lbd_health_check_failures_total counter");
    for &(id, group, backend) in backends {
        let _ = writeln!(
            o,
            "lbd_health_check_failures_total{{upstream=\"{}\",backend=\"{}\"}} {}",
            escape(group),
            escape(backend),
            s.health.check_failures(id)
        );
    }
}

/// The latency summary from the merged cumulative histograms.
fn latency_family(o: &mut String, h: &Histogram<u64>) {
    let _ = writeln!(
        o,
        "# HELP lbd_request_duration_seconds Request latency, head read to last response byte written."
    );
    let _ = writeln!(o, "# TYPE lbd_request_duration_seconds summary");
    for q in [0.5, 0.9, 0.99, 0.999] {
        let v = if !h.is_empty() {
            h.value_at_quantile(q)
        } else {
            0
        };
        let _ = writeln!(
            o,
            "lbd_request_duration_seconds{{quantile=\"{q}\"}} {}",
            v as f64 / 1e6
        );
    }
    let total_us = if !h.is_empty() {
        h.mean() * h.len() as f64
    } else {
        0.0
    };
    let _ = writeln!(o, "lbd_request_duration_seconds_sum {}", total_us / 1e6);
    let _ = writeln!(o, "lbd_request_duration_seconds_count {}", h.len());
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_format_has_four_columns_and_footer() {
        let mut h = new_histogram();
        for v in 1..=1000u64 {
            h.saturating_record(v);
        }
        let t = SystemTime::now();
        let text = hgrm(&h, t, t);
        let mut rows = 0;
        let mut last_count = 0;
        for line in text.lines() {
            if line.starts_with('#')
                || line.trim().is_empty()
                || line.trim_start().starts_with("Value")
            {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() == 4 || f.len() == 3, "{line}");
            last_count = f[2].parse::<u64>().unwrap();
            rows += 1;
        }
        assert!(rows > 10);
        assert_eq!(last_count, 1000);
        assert!(text.contains("#[Mean    ="));
        assert!(text.contains("Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }

    #[test]
    fn counters_and_classes() {
        let m = WorkerMetrics::new(2, 1);
        m.response(200);
        m.response(204);
        m.response(502);
        m.response(99);
        assert_eq!(m.responses[2].get(), 2);
        assert_eq!(m.responses[5].get(), 1);
        assert_eq!(m.responses[0].get(), 1);
        m.route_response(0, 404);
        m.route_response(3, 200); // out of range: ignored
        assert_eq!(m.routes[0][4].get(), 1);
        m.backend(1).requests.inc();
        m.backend(7).requests.inc(); // out of range: ignored
        assert_eq!(m.backend(1).requests.get(), 1);
    }

    #[test]
    fn interval_dumps_reset_but_scrapes_accumulate() {
        let (dtx, drx) = std::sync::mpsc::channel();
        let (stx, srx) = std::sync::mpsc::channel();
        let mut w = WorkerHistograms::new(dtx, stx, 2);
        let req = Requests::default();
        for _ in 0..5 {
            w.record(Duration::from_micros(100), Some(1));
        }
        req.dump.store(1, Ordering::Release);
        w.answer(&req);
        let (h, n) = collect(&drx, 1, 1, Duration::from_secs(1));
        assert_eq!((h.len(), n), (5, 1));
        for _ in 0..3 {
            w.record(Duration::from_micros(100), None);
        }
        req.dump.store(2, Ordering::Release);
        req.scrape.store(1, Ordering::Release);
        w.answer(&req);
        assert_eq!(collect(&drx, 2, 1, Duration::from_secs(1)).0.len(), 3);
        let (l, n) = collect_scrape(&srx, 1, 1, 2, Duration::from_secs(1));
        assert_eq!(
            (l.all.len(), l.groups[0].len(), l.groups[1].len(), n),
            (8, 0, 5, 1)
        );
    }

    #[test]
    fn a_single_group_reports_the_whole_histogram_as_its_own() {
        let (dtx, _drx) = std::sync::mpsc::channel();
        let (stx, srx) = std::sync::mpsc::channel();
        let mut w = WorkerHistograms::new(dtx, stx, 1);
        w.record(Duration::from_micros(100), Some(0));
        w.record(Duration::from_micros(300), Some(0));
        let req = Requests::default();
        req.scrape.store(1, Ordering::Release);
        w.answer(&req);
        let (l, _) = collect_scrape(&srx, 1, 1, 1, Duration::from_secs(1));
        assert_eq!((l.all.len(), l.groups[0].len()), (2, 2));
        assert_eq!(l.groups[0].max(), l.all.max());
    }

    #[test]
    fn latency_since_an_earlier_snapshot_is_the_difference() {
        let mut before = Latency::new(1);
        before.all.saturating_record(10);
        before.groups[0].saturating_record(10);
        let mut now = before.clone();
        now.all.saturating_record(500);
        now.groups[0].saturating_record(500);
        let d = now.since(&before);
        assert_eq!((d.all.len(), d.groups[0].len()), (1, 1));
        assert_eq!(d.all.value_at_quantile(0.5), d.all.highest_equivalent(500));
    }
}
