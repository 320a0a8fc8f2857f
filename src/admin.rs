//! The admin endpoint: `GET /metrics` (Prometheus text) and `GET /health`.
//!
//! A small thread of its own with blocking sockets, one connection at a time
//! with short timeouts: it never runs on a worker and never slows the data
//! path. A scrape sums the workers' counter blocks (plain atomic loads) and
//! asks each worker, through an epoch and a channel, for a copy of its
//! cumulative latency histogram.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use crate::health::AdminState;
use crate::metrics::{self, Reply, WorkerMetrics};
use crate::shard::Shared;

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

/// Serves the admin endpoint forever on its own thread.
pub fn spawn(
    listener: TcpListener,
    shared: Arc<Shared>,
    workers: Vec<Arc<WorkerMetrics>>,
    scrapes: Receiver<Reply>,
    token: Option<String>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("lbd-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if let Err(e) = handle(conn, &shared, &workers, &scrapes, token.as_deref()) {
                    log::debug!("admin: {e}");
                }
            }
        })?;
    Ok(())
}

fn handle(
    mut conn: TcpStream,
    shared: &Shared,
    workers: &[Arc<WorkerMetrics>],
    scrapes: &Receiver<Reply>,
    token: Option<&str>,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    conn.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut len = 0;
    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n")
        && !buf[..len].windows(2).any(|w| w == b"\n\n")
    {
        if len == buf.len() {
            return respond(&mut conn, 431, "text/plain", "request head too large\n");
        }
        let n = conn.read(&mut buf[len..])?;
        if n == 0 {
            return Ok(());
        }
        len += n;
    }
    let line = buf[..len].split(|&b| b == b'\n').next().unwrap_or(&[]);
    let mut parts = line.split(|&b| b == b' ');
    let method = parts.next().unwrap_or(&[]);
    let path = parts.next().unwrap_or(&[]);
    let path = path.split(|&b| b == b'?').next().unwrap_or(&[]);
    if path.starts_with(b"/upstreams/") && method != b"GET" {
        let head = &buf[..len];
        let (status, body) = write_request(shared, method, path, head, token);
        return respond(&mut conn, status, "application/json", &body);
    }
    if method != b"GET" && method != b"HEAD" {
        return respond(&mut conn, 405, "text/plain", "method not allowed\n");
    }
    match path {
        b"/upstreams" => respond(
            &mut conn,
            200,
            "application/json",
            &upstreams_json(shared, workers),
        ),
        b"/metrics" => {
            let epoch = shared.requests.scrape.fetch_add(1, Ordering::AcqRel) + 1;
            let live = workers.len();
            let (latency, _) = metrics::collect(scrapes, epoch, live, Duration::from_secs(1));
            let labels: Vec<metrics::BackendLabels<'_>> = shared
                .registry
                .backends()
                .iter()
                .map(|b| {
                    let group = &shared.registry.groups()[b.group].name;
                    (b.id.index(), group.as_str(), b.name.as_str())
                })
                .collect();
            let body = metrics::prometheus(&metrics::Scrape {
                backends: &labels,
                workers,
                health: &shared.health,
                latency: &latency,
            });
            respond(
                &mut conn,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
            )
        }
        b"/health" => {
            if shared.shutdown.load(Ordering::Relaxed) {
                respond(&mut conn, 503, "text/plain", "draining\n")
            } else {
                respond(&mut conn, 200, "text/plain", "ok\n")
            }
        }
        _ => respond(&mut conn, 404, "text/plain", "not found\n"),
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
    let reg = &shared.registry;
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
                "{{\"id\":{i},\"address\":{},\"name\":{},\"weight\":{},\"source\":\"static\",\
                 \"health\":\"{}\",\"state\":\"{}\",\"inflight\":{},\"requests\":{}}}",
                json_str(&b.address.to_string()),
                json_str(&b.name),
                b.weight,
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
fn json_str(s: &str) -> String {
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

/// The write API: `POST /upstreams/{group}/backends/{address}/drain|disable|enable`.
/// Adding and removing backends at run time (`POST /upstreams/{group}/backends`,
/// `DELETE …/{address}`) needs the run-time registry and answers 501.
fn write_request(
    shared: &Shared,
    method: &[u8],
    path: &[u8],
    head: &[u8],
    token: Option<&str>,
) -> (u16, String) {
    if let Some(t) = token {
        let want = format!("Bearer {t}");
        if header(head, "authorization") != Some(want.as_bytes()) {
            return error_json(
                401,
                "Authorization",
                "a valid `Authorization: Bearer <token>` is required",
            );
        }
    }
    let parts: Vec<&[u8]> = path.split(|&b| b == b'/').skip(2).collect();
    let (group, address, action) = match (method, parts.as_slice()) {
        (b"POST", [g, b"backends", a, action]) => (*g, *a, *action),
        (b"POST", [_, b"backends"]) | (b"DELETE", [_, b"backends", _]) => {
            return error_json(
                501,
                "path",
                "adding and removing backends at run time is not available yet",
            );
        }
        (b"POST" | b"DELETE", _) => return error_json(404, "path", "no such endpoint"),
        _ => return error_json(405, "method", "use POST"),
    };
    let state = match action {
        b"drain" => AdminState::Draining,
        b"disable" => AdminState::Disabled,
        b"enable" => AdminState::Active,
        _ => return error_json(404, "action", "must be drain, disable or enable"),
    };
    let reg = &shared.registry;
    let Some(name) = percent_decode(group) else {
        return error_json(400, "group", "not valid percent-encoded UTF-8");
    };
    let Some(g) = reg.groups().iter().find(|g| g.name == name) else {
        return error_json(404, "group", &format!("no upstream group `{name}`"));
    };
    let Some(addr) = percent_decode(address) else {
        return error_json(400, "address", "not valid percent-encoded UTF-8");
    };
    let parsed: Option<SocketAddr> = addr.parse().ok();
    let found = g.members.iter().copied().find(|&id| {
        let b = reg.backend(id);
        b.name == addr || Some(b.address) == parsed
    });
    let Some(id) = found else {
        if parsed.is_none() {
            return error_json(400, "address", &format!("`{addr}` is not IP:port"));
        }
        return error_json(404, "address", &format!("no backend {addr} in `{name}`"));
    };
    shared.health.set_admin_state(id.index(), state);
    log::info!("admin: {addr} in {name} is now {}", state.name());
    (
        200,
        format!(
            "{{\"group\":{},\"address\":{},\"id\":{},\"state\":\"{}\"}}\n",
            json_str(&name),
            json_str(&addr),
            id.index(),
            state.name()
        ),
    )
}
