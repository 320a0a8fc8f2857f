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
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("lbd-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                if let Err(e) = handle(conn, &shared, &workers, &scrapes) {
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
                 \"health\":\"{}\",\"state\":\"active\",\"inflight\":{},\"requests\":{}}}",
                json_str(&b.address.to_string()),
                json_str(&b.name),
                b.weight,
                if shared.health.is_up(i) { "up" } else { "down" },
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
