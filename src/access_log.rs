//! The access log: optional, buffered per worker, written off the request path.
//!
//! When `access_log` is configured, each worker formats one line per request
//! into its own buffer (no lock, no allocation in steady state: the buffer is
//! reused). Every 50 ms, or when the buffer passes 64 KiB, the worker hands the
//! full buffer to the writer thread over a channel and takes an empty one the
//! writer sent back, so the worker never touches the file. SIGHUP makes the
//! writer reopen the file (logrotate).
//!
//! Formats: `combined` (nginx/Apache: `$remote_addr - - [$time_local]
//! "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent"`,
//! then lbd appends the request time in seconds and the upstream address),
//! `common` (the first six fields), and `json` (one object per line).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// NCSA common log format.
    Common,
    /// NCSA combined (common + referer + user agent) + request time + upstream.
    Combined,
    /// JSON lines.
    Json,
}

/// Flush a worker's buffer once it holds this much.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// The parts of a request a log line needs, captured at parse time.
#[derive(Debug, Default)]
pub struct Fields {
    /// `METHOD target HTTP/x.y`.
    pub request_line: Vec<u8>,
    /// `Referer` value.
    pub referer: Vec<u8>,
    /// `User-Agent` value.
    pub user_agent: Vec<u8>,
    /// The request id (empty: the request has none), when `request_id` is
    /// configured ([`Fields::logs_request_id`]).
    pub request_id: Vec<u8>,
    /// `request_id` is configured: the line gets a request-id field.
    pub logs_request_id: bool,
}

impl Fields {
    /// Captures the fields from a complete request head (best effort: the
    /// head already passed the strict parser).
    pub fn capture(&mut self, head: &[u8]) {
        self.request_line.clear();
        self.referer.clear();
        self.user_agent.clear();
        self.request_id.clear();
        self.logs_request_id = false;
        let mut lines = head
            .split(|&b| b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
        // Skip leading empty lines (tolerated by the parser).
        for l in lines.by_ref() {
            if !l.is_empty() {
                self.request_line.extend_from_slice(l);
                break;
            }
        }
        for l in lines {
            let Some(colon) = l.iter().position(|&b| b == b':') else {
                continue;
            };
            let (name, value) = (&l[..colon], crate::http::trim_ows(&l[colon + 1..]));
            if name.eq_ignore_ascii_case(b"referer") {
                self.referer.extend_from_slice(value);
            } else if name.eq_ignore_ascii_case(b"user-agent") {
                self.user_agent.extend_from_slice(value);
            }
        }
    }
}

impl Fields {
    /// Records the request's id (`None`: it has none) for a listener with
    /// `request_id` configured.
    pub fn set_request_id(&mut self, id: Option<&[u8]>) {
        self.logs_request_id = true;
        self.request_id.clear();
        if let Some(id) = id {
            self.request_id.extend_from_slice(id);
        }
    }
}

/// One finished request.
pub struct Entry<'a> {
    /// Client address.
    pub client: IpAddr,
    /// Captured request fields.
    pub fields: &'a Fields,
    /// Status sent.
    pub status: u16,
    /// Response body bytes sent.
    pub body_bytes: u64,
    /// Head read to last byte written.
    pub duration: Duration,
    /// The backend that answered, if any.
    pub upstream: Option<SocketAddr>,
    /// The route that matched, named as in the config (`routes[2]`), on
    /// listeners with `routes:`.
    pub route: Option<&'a str>,
    /// For an upgraded connection, logged when it closed: bytes carried
    /// (client to backend, backend to client).
    pub tunnel: Option<(u64, u64)>,
}

/// Per-worker formatter with a cached timestamp.
pub struct WorkerLog {
    format: Format,
    /// Pending lines.
    pub buf: Vec<u8>,
    cached_sec: u64,
    cached_time: Vec<u8>,
}

impl WorkerLog {
    /// A worker's log buffer.
    pub fn new(format: Format) -> Self {
        WorkerLog {
            format,
            buf: Vec::with_capacity(FLUSH_BYTES + 4096),
            cached_sec: u64::MAX,
            cached_time: Vec::with_capacity(40),
        }
    }

    /// Refreshes the cached timestamp text (once per second).
    fn refresh_time(&mut self, now: SystemTime) {
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.cached_sec {
            self.cached_sec = secs;
            self.cached_time.clear();
            let (y, mo, d, h, mi, s) = civil(secs);
            let text = match self.format {
                Format::Json => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z"),
                _ => {
                    const MONTHS: [&str; 12] = [
                        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct",
                        "Nov", "Dec",
                    ];
                    let m = MONTHS[(mo as usize).saturating_sub(1).min(11)];
                    format!("{d:02}/{m}/{y:04}:{h:02}:{mi:02}:{s:02} +0000")
                }
            };
            self.cached_time.extend_from_slice(text.as_bytes());
        }
    }

    /// Appends one line.
    pub fn push(&mut self, e: &Entry<'_>, now: SystemTime) {
        let format = self.format;
        self.refresh_time(now);
        let time = &self.cached_time;
        let b = &mut self.buf;
        match format {
            Format::Common | Format::Combined => {
                let _ = write!(b, "{}", e.client);
                b.extend_from_slice(b" - - [");
                b.extend_from_slice(time);
                b.extend_from_slice(b"] \"");
                escape_into(b, &e.fields.request_line, false);
                let _ = write!(b, "\" {} {}", e.status, e.body_bytes);
                if format == Format::Combined {
                    b.extend_from_slice(b" \"");
                    escape_or_dash(b, &e.fields.referer);
                    b.extend_from_slice(b"\" \"");
                    escape_or_dash(b, &e.fields.user_agent);
                    let _ = write!(b, "\" {:.6}", e.duration.as_secs_f64());
                    match e.upstream {
                        Some(u) => {
                            let _ = write!(b, " {u}");
                        }
                        None => b.extend_from_slice(b" -"),
                    }
                    if let Some(r) = e.route {
                        let _ = write!(b, " route={r}");
                    }
                    if let Some((up, down)) = e.tunnel {
                        let _ = write!(b, " tunnel_bytes={up}/{down}");
                    }
                    if e.fields.logs_request_id {
                        b.extend_from_slice(b" request_id=");
                        escape_or_dash(b, &e.fields.request_id);
                    }
                }
            }
            Format::Json => {
                b.extend_from_slice(b"{\"time\":\"");
                b.extend_from_slice(time);
                let _ = write!(b, "\",\"client\":\"{}\",\"request\":\"", e.client);
                escape_into(b, &e.fields.request_line, true);
                let _ = write!(
                    b,
                    "\",\"status\":{},\"body_bytes\":{},\"duration_s\":{:.6},\"referer\":\"",
                    e.status,
                    e.body_bytes,
                    e.duration.as_secs_f64()
                );
                escape_into(b, &e.fields.referer, true);
                b.extend_from_slice(b"\",\"user_agent\":\"");
                escape_into(b, &e.fields.user_agent, true);
                b.extend_from_slice(b"\",\"upstream\":");
                match e.upstream {
                    Some(u) => {
                        let _ = write!(b, "\"{u}\"");
                    }
                    None => b.extend_from_slice(b"null"),
                }
                if let Some(r) = e.route {
                    let _ = write!(b, ",\"route\":\"{r}\"");
                }
                if let Some((up, down)) = e.tunnel {
                    let _ = write!(b, ",\"tunnel_bytes_up\":{up},\"tunnel_bytes_down\":{down}");
                }
                if e.fields.logs_request_id {
                    b.extend_from_slice(b",\"request_id\":");
                    if e.fields.request_id.is_empty() {
                        b.extend_from_slice(b"null");
                    } else {
                        b.push(b'"');
                        escape_into(b, &e.fields.request_id, true);
                        b.push(b'"');
                    }
                }
                b.push(b'}');
            }
        }
        b.push(b'\n');
    }
}

fn escape_or_dash(b: &mut Vec<u8>, v: &[u8]) {
    if v.is_empty() {
        b.push(b'-');
    } else {
        escape_into(b, v, false);
    }
}

/// Escapes `"`, `\` and non-printable bytes (`\xHH`, or `\u00HH` for JSON) so a
/// client cannot forge log lines.
fn escape_into(b: &mut Vec<u8>, v: &[u8], json: bool) {
    for &c in v {
        match c {
            b'"' => b.extend_from_slice(b"\\\""),
            b'\\' => b.extend_from_slice(b"\\\\"),
            0x20..=0x7e => b.push(c),
            _ if json => {
                let _ = write!(b, "\\u{c:04x}");
            }
            _ => {
                let _ = write!(b, "\\x{c:02x}");
            }
        }
    }
}

/// Days since 1970-01-01 → (year, month, day, hour, minute, second), UTC
/// (Howard Hinnant's civil-from-days).
fn civil(secs: u64) -> (i64, u32, u32, u64, u64, u64) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = if m <= 2 { y + 1 } else { y };
    (y, m, d, rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// The channels a worker uses to hand over full buffers.
pub struct WorkerLink {
    id: usize,
    tx: Sender<(usize, Vec<u8>)>,
    empties: Receiver<Vec<u8>>,
}

impl WorkerLink {
    /// Hands a full buffer to the writer; returns an empty one to reuse (an
    /// earlier buffer coming back, or a new one).
    pub fn swap(&self, full: Vec<u8>) -> Vec<u8> {
        let _ = self.tx.send((self.id, full));
        self.empties
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(FLUSH_BYTES + 4096))
    }
}

/// Bumped on SIGHUP; the writer reopens when it changes.
pub static REOPEN: AtomicU64 = AtomicU64::new(0);

/// Starts the writer thread for `path`; returns one link per worker.
pub fn start(path: PathBuf, workers: usize) -> std::io::Result<Vec<WorkerLink>> {
    let open = |p: &PathBuf| OpenOptions::new().create(true).append(true).open(p);
    let mut file: File = open(&path)?;
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Vec<u8>)>();
    let mut links = Vec::with_capacity(workers);
    let mut returns = Vec::with_capacity(workers);
    for id in 0..workers {
        let (etx, erx) = std::sync::mpsc::channel::<Vec<u8>>();
        returns.push(etx);
        links.push(WorkerLink {
            id,
            tx: tx.clone(),
            empties: erx,
        });
    }
    drop(tx);
    std::thread::Builder::new()
        .name("lbd-access-log".into())
        .spawn(move || {
            let mut seen = REOPEN.load(Ordering::Relaxed);
            for (id, mut buf) in rx {
                let now = REOPEN.load(Ordering::Relaxed);
                if now != seen {
                    seen = now;
                    match open(&path) {
                        Ok(f) => file = f,
                        Err(e) => log::error!("cannot reopen access_log {}: {e}", path.display()),
                    }
                }
                if let Err(e) = file.write_all(&buf) {
                    log::error!("access_log write failed: {e}");
                }
                buf.clear();
                if let Some(r) = returns.get(id) {
                    let _ = r.send(buf);
                }
            }
        })?;
    Ok(links)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_795_787_746), (2026, 11, 27, 13, 55, 46));
    }

    fn entry(fields: &Fields) -> Entry<'_> {
        Entry {
            client: "10.1.2.3".parse().unwrap(),
            fields,
            status: 200,
            body_bytes: 42,
            duration: Duration::from_micros(1500),
            upstream: Some("127.0.0.1:8081".parse().unwrap()),
            route: None,
            tunnel: None,
        }
    }

    #[test]
    fn combined_line() {
        let mut f = Fields::default();
        f.capture(b"GET /a?b HTTP/1.1\r\nHost: x\r\nUser-Agent: curl/8 \"q\"\r\nReferer: http://r/\r\n\r\n");
        let mut w = WorkerLog::new(Format::Combined);
        w.push(&entry(&f), UNIX_EPOCH + Duration::from_secs(1_795_787_746));
        let line = String::from_utf8(w.buf).unwrap();
        assert_eq!(
            line,
            "10.1.2.3 - - [27/Nov/2026:13:55:46 +0000] \"GET /a?b HTTP/1.1\" 200 42 \"http://r/\" \"curl/8 \\\"q\\\"\" 0.001500 127.0.0.1:8081\n"
        );
    }

    #[test]
    fn json_line_and_escaping() {
        let mut f = Fields::default();
        f.capture(b"GET /\x01 HTTP/1.1\r\n\r\n");
        let mut w = WorkerLog::new(Format::Json);
        w.push(&entry(&f), UNIX_EPOCH);
        w.push(&entry(&f), UNIX_EPOCH);
        let text = String::from_utf8(w.buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[1].starts_with("{\"time\":\"1970-01-01T00:00:00Z\",\"client\":\"10.1.2.3\""),
            "{}",
            lines[1]
        );
        assert!(
            lines[0].contains("\"request\":\"GET /\\u0001 HTTP/1.1\""),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("\"referer\":\"\""));
    }
}
