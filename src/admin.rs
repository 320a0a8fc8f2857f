//! The admin endpoint: `GET /metrics` (Prometheus text), `GET /health`, and
//! the upstreams API (`GET /upstreams`, adding, removing, draining backends).
//!
//! A small thread of its own with blocking sockets, one connection at a time
//! with short timeouts: it never runs on a worker and never slows the data
//! path. A scrape sums the workers' counter blocks (plain atomic loads) and
//! asks each worker, through an epoch and a channel, for a copy of its
//! cumulative latency histogram.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::health::AdminState;
use crate::membership::{Membership, MembershipError};
use crate::metrics::{self, ScrapeReply, WorkerMetrics};
use crate::shard::Shared;
use crate::status_page::{LatencyWindow, Process};

/// Binds the admin address (on the main thread, so a bad address fails start).
/// SO_REUSEPORT, so that during an upgrade (`upgrade`) the new process can
/// bind the admin address while the old one (still draining) holds it;
/// until the old one exits, the kernel spreads admin connections over
/// both. Outside an upgrade, a probe without SO_REUSEPORT first makes sure
/// no other process holds the address (it would share it silently).
pub fn bind(addr: SocketAddr, upgrade: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    if !upgrade {
        crate::listener::probe(addr)?;
    }
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.bind(&addr.into())?;
    s.listen(128)?;
    Ok(s.into())
}

/// What the admin thread serves from.
pub(crate) struct Ctx<'a> {
    /// Shutdown flag, health, registry, scrape requests.
    pub(crate) shared: &'a Shared,
    /// Where write requests go.
    pub(crate) membership: &'a Membership,
    /// Every worker's counters.
    pub(crate) workers: &'a [Arc<WorkerMetrics>],
    /// Histogram snapshots coming back from workers.
    pub(crate) scrapes: &'a Receiver<ScrapeReply>,
    /// The configuration (listeners and routes for `/stats`).
    pub(crate) config: &'a Config,
    /// Facts about this process for the status page.
    pub(crate) process: &'a Process,
    /// The status page's latency figures (admin thread only).
    pub(crate) latency: &'a RefCell<LatencyWindow>,
    /// `admin.token_file`'s token.
    pub(crate) token: Option<&'a str>,
}

/// One admin request.
struct Request<'a> {
    method: &'a [u8],
    /// Without the query.
    path: &'a [u8],
    head: &'a [u8],
    body: &'a [u8],
}

/// Most bytes of a request body (`POST …/backends`).
const MAX_BODY: usize = 64 * 1024;

/// Serves the admin endpoint forever on its own thread.
pub(crate) fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    membership: Arc<Membership>,
    workers: Vec<Arc<WorkerMetrics>>,
    scrapes: Receiver<ScrapeReply>,
    config: Arc<Config>,
    process: Process,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("lbd-admin".into())
        .spawn(move || {
            let latency = RefCell::new(LatencyWindow::default());
            let ctx = Ctx {
                shared: &shared,
                membership: &membership,
                workers: &workers,
                scrapes: &scrapes,
                token: config.admin_token.as_deref(),
                config: &config,
                process: &process,
                latency: &latency,
            };
            for conn in listener.incoming() {
                let Ok(conn) = conn else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if let Err(e) = handle(conn, &ctx) {
                    log::debug!("admin: {e}");
                }
            }
        })?;
    Ok(())
}

fn handle(mut conn: TcpStream, ctx: &Ctx<'_>) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    let head_end = loop {
        if let Some(i) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if let Some(i) = buf[..len].windows(2).position(|w| w == b"\n\n") {
            break i + 2;
        }
        if len == buf.len() {
            return respond(&mut conn, 431, "text/plain", "request head too large\n");
        }
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    };
    let Some(body_len) = content_length(&buf[..head_end]) else {
        let (s, b) = error_json(400, "Content-Length", "not a number");
        return respond(&mut conn, s, "application/json", &b);
    };
    if body_len > MAX_BODY {
        let (s, b) = error_json(413, "body", "larger than 64 KiB");
        return respond(&mut conn, s, "application/json", &b);
    }
    buf.resize(head_end + body_len.max(len - head_end), 0);
    while len < head_end + body_len {
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let head = &buf[..head_end];
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or(&[]);
    let path = parts.next().unwrap_or(&[]);
    let path = path.split(|&b| b == b'?').next().unwrap_or(&[]);
    let req = Request {
        method,
        path,
        head,
        body: &buf[head_end..head_end + body_len],
    };
    route(&mut conn, ctx, &req)
}

/// The `Content-Length` of a head (0 without one); `None` if unreadable.
fn content_length(head: &[u8]) -> Option<usize> {
    match header(head, "content-length") {
        None => Some(0),
        Some(v) => std::str::from_utf8(v).ok()?.parse().ok(),
    }
}

fn route(conn: &mut TcpStream, ctx: &Ctx<'_>, req: &Request<'_>) -> std::io::Result<()> {
    let shared = ctx.shared;
    if req.path.starts_with(b"/upstreams/") && req.method != b"GET" {
        let (status, body) = write_request(ctx, req);
        return respond(conn, status, "application/json", &body);
    }
    if req.method != b"GET" && req.method != b"HEAD" {
        return respond(conn, 405, "text/plain", "method not allowed\n");
    }
    match req.path {
        b"/" => respond(
            conn,
            200,
            "text/html; charset=utf-8",
            crate::status_page::PAGE,
        ),
        b"/stats" => {
            let mut window = ctx.latency.borrow_mut();
            window.refresh(shared, ctx.scrapes, ctx.workers.len());
            let body = crate::status_page::stats_json(&crate::status_page::Sources {
                shared,
                config: ctx.config,
                workers: ctx.workers,
                process: ctx.process,
                latency: &window,
            });
            respond(conn, 200, "application/json", &body)
        }
        b"/upstreams" => respond(
            conn,
            200,
            "application/json",
            &upstreams_json(shared, ctx.workers),
        ),
        b"/metrics" => {
            let epoch = shared.requests.scrape.fetch_add(1, Ordering::AcqRel) + 1;
            let live = ctx.workers.len();
            let groups = shared.registry.load().groups().len();
            let (latency, _) =
                metrics::collect_scrape(ctx.scrapes, epoch, live, groups, Duration::from_secs(1));
            let reg = shared.registry.load();
            let labels: Vec<metrics::BackendLabels<'_>> = reg
                .members()
                .map(|(g, b)| (b.id.index(), g.name.as_str(), b.name.as_str()))
                .collect();
            let body = metrics::prometheus(&metrics::Scrape {
                backends: &labels,
                workers: ctx.workers,
                health: &shared.health,
                latency: &latency.all,
            });
            respond(conn, 200, "text/plain; version=0.0.4; charset=utf-8", &body)
        }
        b"/health" => {
            if shared.shutdown.load(Ordering::Relaxed) {
                respond(conn, 503, "text/plain", "draining\n")
            } else {
                respond(conn, 200, "text/plain", "ok\n")
            }
        }
        _ => respond(conn, 404, "text/plain", "not found\n"),
    }
}

fn respond(conn: &mut TcpStream, status: u16, ctype: &str, body: &str) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(128);
    crate::http::write_head(&mut head, status, ctype, body.len() as u64, true);
    conn.write_all(&head)?;
    conn.write_all(body.as_bytes())
}

/// `GET /upstreams`: every group and backend, with its stable id, address,
/// weight, where it came from, health, in-flight and request counts
/// (summed over workers).
fn upstreams_json(shared: &Shared, workers: &[Arc<WorkerMetrics>]) -> String {
    use std::fmt::Write as _;
    let reg = shared.registry.load();
    let mut o = String::from("{\"upstreams\":[");
    for (gi, g) in reg.groups().iter().enumerate() {
        if gi > 0 {
            o.push(',');
        }
        let _ = write!(o, "{{\"name\":{},\"backends\":[", json_str(&g.name));
        for (k, &id) in g.members.iter().enumerate() {
            let b = reg.backend(id);
            let i = id.index();
            let sum = |f: fn(&metrics::BackendCounters) -> u64| -> u64 {
                workers.iter().map(|w| f(w.backend(i))).sum()
            };
            if k > 0 {
                o.push(',');
            }
            let _ = write!(
                o,
                "{{\"id\":{i},\"address\":{},\"name\":{},\"weight\":{},\"source\":\"{}\",\
                 \"health\":\"{}\",\"state\":\"{}\",\"inflight\":{},\"requests\":{}}}",
                json_str(&b.address.to_string()),
                json_str(&b.name),
                b.weight,
                b.source.name(),
                if shared.health.is_up(i) { "up" } else { "down" },
                shared.health.admin_state(i).name(),
                sum(|c| c.inflight.get()),
                sum(|c| c.requests.get()),
            );
        }
        o.push_str("]}");
    }
    o.push_str("]}\n");
    o
}

/// `s` as a JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 || c == '<' || c == '>' || c == '&' => {
                use std::fmt::Write as _;
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// A JSON error naming the field at fault.
fn error_json(status: u16, field: &str, message: &str) -> (u16, String) {
    (
        status,
        format!(
            "{{\"error\":{},\"field\":{}}}\n",
            json_str(message),
            json_str(field)
        ),
    )
}

/// The value of header `name` in a raw request head.
fn header<'h>(head: &'h [u8], name: &str) -> Option<&'h [u8]> {
    head.split(|&b| b == b'\n').skip(1).find_map(|l| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        let colon = l.iter().position(|&b| b == b':')?;
        l[..colon]
            .eq_ignore_ascii_case(name.as_bytes())
            .then(|| crate::http::trim_ows(&l[colon + 1..]))
    })
}

/// Percent-decodes a path segment (`127.0.0.1%3A8081` is `127.0.0.1:8081`).
fn percent_decode(s: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let hex = std::str::from_utf8(s.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The write API: `POST /upstreams/{group}/backends` (add),
/// `DELETE /upstreams/{group}/backends/{address}` (remove),
/// `POST /upstreams/{group}/backends/{address}/drain|disable|enable`.
fn write_request(ctx: &Ctx<'_>, req: &Request<'_>) -> (u16, String) {
    if let Some(t) = ctx.token {
        let want = format!("Bearer {t}");
        if header(req.head, "authorization") != Some(want.as_bytes()) {
            return error_json(
                401,
                "Authorization",
                "a valid `Authorization: Bearer <token>` is required",
            );
        }
    }
    let parts: Vec<&[u8]> = req.path.split(|&b| b == b'/').skip(2).collect();
    let (group, address, action) = match (req.method, parts.as_slice()) {
        (b"POST", [g, b"backends"]) => return add_backend(ctx, g, req.body),
        (b"POST", [g, b"backends", a, action]) => (*g, *a, Some(*action)),
        (b"DELETE", [g, b"backends", a]) => (*g, *a, None),
        (b"POST" | b"DELETE", _) => return error_json(404, "path", "no such endpoint"),
        _ => return error_json(405, "method", "use POST or DELETE"),
    };
    let state = match action {
        None => None,
        Some(b"drain") => Some(AdminState::Draining),
        Some(b"disable") => Some(AdminState::Disabled),
        Some(b"enable") => Some(AdminState::Active),
        Some(_) => return error_json(404, "action", "must be drain, disable or enable"),
    };
    let Some(name) = percent_decode(group) else {
        return error_json(400, "group", "not valid percent-encoded UTF-8");
    };
    let Some(addr) = percent_decode(address) else {
        return error_json(400, "address", "not valid percent-encoded UTF-8");
    };
    let result = match state {
        Some(s) => ctx.membership.set_state(&name, &addr, s),
        None => ctx.membership.remove(&name, &addr),
    };
    let id = match result {
        Ok(id) => id,
        Err(MembershipError::NoBackend { .. }) if addr.parse::<SocketAddr>().is_err() => {
            return error_json(400, "address", &format!("`{addr}` is not IP:port"));
        }
        Err(e) => return error_json(e.status(), e.field(), &e.to_string()),
    };
    let done = match state {
        Some(s) => format!("\"state\":\"{}\"", s.name()),
        None => "\"removed\":true".to_owned(),
    };
    log::info!("admin: {addr} in {name}: {done}");
    (
        200,
        format!(
            "{{\"group\":{},\"address\":{},\"id\":{},{done}}}\n",
            json_str(&name),
            json_str(&addr),
            id.index(),
        ),
    )
}

/// `POST /upstreams/{group}/backends` with `{"address": "IP:port", "weight": N}`.
fn add_backend(ctx: &Ctx<'_>, group: &[u8], body: &[u8]) -> (u16, String) {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Add {
        address: serde_json::Value,
        #[serde(default)]
        weight: Option<serde_json::Value>,
    }
    let Some(name) = percent_decode(group) else {
        return error_json(400, "group", "not valid percent-encoded UTF-8");
    };
    let add: Add = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => {
            let field = if e.to_string().contains("missing field `address`") {
                "address"
            } else {
                "body"
            };
            return error_json(
                400,
                field,
                &format!("expected {{\"address\": \"IP:port\", \"weight\": N}}: {e}"),
            );
        }
    };
    let address = match add.address.as_str().map(str::parse::<SocketAddr>) {
        Some(Ok(a)) if a.port() != 0 => a,
        _ => {
            return error_json(
                400,
                "address",
                &format!("{} is not \"IP:port\"", add.address),
            )
        }
    };
    let weight = match &add.weight {
        None => 1,
        Some(w) => match w.as_u64() {
            Some(n @ 1..=1000) => n as u32,
            _ => {
                return error_json(
                    400,
                    "weight",
                    &format!("{w} is not a whole number from 1 to 1000"),
                )
            }
        },
    };
    match ctx.membership.add(&name, address, weight) {
        Ok(id) => {
            log::info!("admin: {address} added to {name} (weight {weight})");
            (
                201,
                format!(
                    "{{\"group\":{},\"address\":\"{address}\",\"id\":{},\"weight\":{weight},\"source\":\"api\"}}\n",
                    json_str(&name),
                    id.index()
                ),
            )
        }
        Err(e) => error_json(e.status(), e.field(), &e.to_string()),
    }
}
