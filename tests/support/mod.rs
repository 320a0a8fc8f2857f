//! Shared helpers for the `lbd` integration tests: the one conf.yaml builder
//! ([`LbdConf`]), a process guard for the binary, a real HTTP/1.1 origin
//! server, a fault-injecting origin, and a raw-socket HTTP client.
//!
//! Only `std` is used (and `socket2`, for resets).
#![allow(dead_code)]

/// A real dnsmasq for DNS discovery tests (it signals with `nix`).
pub mod dns;

use std::fs;
use std::io::{self, BufRead, BufReader, BufWriter, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Default socket read/write timeout for test clients: a bug fails, it does not hang.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long lbd gets to start accepting connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long lbd gets to exit when it is expected to reject its configuration.
const FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound on heads / bodies the helpers will buffer.
const MAX_HEAD: usize = 1 << 20;
const MAX_BODY: usize = 64 << 20;

// ---------------------------------------------------------------------------
// Misc helpers
// ---------------------------------------------------------------------------

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A fresh, unique directory under the system temp dir.
pub fn unique_temp_dir(tag: &str) -> PathBuf {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = DIR_COUNTER.fetch_add(1, Ordering::SeqCst);
    let dir =
        std::env::temp_dir().join(format!("lbd-test-{tag}-{}-{n}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// Deterministic body content: byte i = (i % 251).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// Compare bodies without dumping megabytes on failure.
pub fn assert_body_eq(actual: &[u8], expected: &[u8], ctx: &str) {
    if actual == expected {
        return;
    }
    let first_diff = actual
        .iter()
        .zip(expected.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    let show = |b: &[u8]| {
        let end = (first_diff + 32).min(b.len());
        let start = first_diff.min(end);
        format!("{:?}", String::from_utf8_lossy(&b[start..end]))
    };
    panic!(
        "{ctx}: body mismatch: got {} bytes, expected {} bytes; first difference at offset {first_diff}: got {} expected {}",
        actual.len(),
        expected.len(),
        show(actual),
        show(expected)
    );
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

// ---------------------------------------------------------------------------
// lbd process guard
// ---------------------------------------------------------------------------

fn lbd_command(config_path: &Path, threads: usize, dir: &Path, stderr_path: &Path) -> Command {
    let stderr = fs::File::create(stderr_path).expect("create stderr log");
    let stdout = fs::File::create(dir.join("stdout.log")).expect("create stdout log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbd"));
    cmd.arg("-c")
        .arg(config_path)
        .arg("--threads")
        .arg(threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(stdout))
        .stderr(Stdio::from(stderr));
    if std::env::var_os("RUST_LOG").is_none() {
        cmd.env("RUST_LOG", "info");
    }
    cmd
}

/// Starts `lbd -c conf --threads N <args>` in the foreground with `env`
/// added and stderr appended to `log` (several processes may share one log,
/// as an old and a new one do around an upgrade). Not killed on drop.
pub fn spawn_lbd(
    conf: &Path,
    threads: usize,
    args: &[&str],
    env: &[(&str, &Path)],
    log: &Path,
) -> Child {
    let f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("log file");
    Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("-c")
        .arg(conf)
        .arg("--threads")
        .arg(threads.to_string())
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(f))
        .spawn()
        .expect("spawn lbd")
}

/// A running lbd process; killed on drop. On a failing test the tail of its
/// stderr is printed (and the temp dir kept).
pub struct Lbd {
    child: Child,
    pub port: u16,
    pub dir: PathBuf,
    pub stderr_path: PathBuf,
}

impl Lbd {
    /// Write `yaml` to a temp dir, spawn `lbd -c conf.yaml --threads N`,
    /// and wait until `port` accepts TCP connections.
    pub fn start(yaml: &str, port: u16, threads: usize) -> Lbd {
        Lbd::start_with_env(yaml, port, threads, &[])
    }

    /// [`Lbd::start`] with extra environment variables for lbd.
    pub fn start_with_env(yaml: &str, port: u16, threads: usize, env: &[(&str, &str)]) -> Lbd {
        let dir = unique_temp_dir("lbd");
        let config_path = dir.join("conf.yaml");
        fs::write(&config_path, yaml).expect("write config");
        let stderr_path = dir.join("stderr.log");
        let child = lbd_command(&config_path, threads, &dir, &stderr_path)
            .envs(env.iter().copied())
            .spawn()
            .expect("spawn lbd");
        let mut lbd = Lbd {
            child,
            port,
            dir,
            stderr_path,
        };
        lbd.wait_ready();
        lbd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                panic!(
                    "lbd exited before becoming ready: {status}\n---- lbd stderr ----\n{}",
                    last_lines(&self.stderr(), 100)
                );
            }
            if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "lbd did not accept connections on {} within {READY_TIMEOUT:?}\n---- lbd stderr ----\n{}",
                    self.addr(),
                    last_lines(&self.stderr(), 100)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn client(&self) -> Client {
        Client::connect(self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit; true if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> bool {
        let t = Instant::now();
        loop {
            if self.child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            if t.elapsed() > limit {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Lbd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "---- lbd stderr (last 100 lines of {}) ----\n{}",
                self.stderr_path.display(),
                last_lines(&self.stderr(), 100)
            );
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// Run lbd with `yaml`, expecting it to refuse to start. Returns its exit
/// status and stderr. Panics if it is still running after 10 s.
pub fn run_lbd_expect_failure(yaml: &str, threads: usize) -> (ExitStatus, String) {
    let dir = unique_temp_dir("lbd-fail");
    let config_path = dir.join("conf.yaml");
    fs::write(&config_path, yaml).expect("write config");
    let stderr_path = dir.join("stderr.log");
    let mut child = lbd_command(&config_path, threads, &dir, &stderr_path)
        .spawn()
        .expect("spawn lbd");
    let deadline = Instant::now() + FAIL_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!(
                "lbd was expected to reject this config and exit, but it was still running after {FAIL_TIMEOUT:?}\n---- config ----\n{yaml}\n---- stderr ----\n{}",
                last_lines(&stderr, 50)
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    let stderr = fs::read_to_string(&stderr_path).unwrap_or_default();
    let _ = fs::remove_dir_all(&dir);
    (status, stderr)
}

// ---------------------------------------------------------------------------
// lbd in front of these origins: the one conf.yaml builder
// ---------------------------------------------------------------------------

/// Builds the conf.yaml text for an lbd in front of some origins: one
/// listener on `127.0.0.1:<port>` sending to one upstream group (`web`
/// unless [`LbdConf::group`] renames it), plus whatever the test adds.
///
/// ```text
/// version: 1
/// threads: N                      # only with .threads(N)
/// admin: {address: 127.0.0.1:A}   # only with .admin(A)
/// <.top(..) lines>
/// listeners:
///   - address: 127.0.0.1:PORT
///     upstream: web               # or routes: [<.routes(..) lines>]
///     <.listener_extra(..) lines>
///   <.listener(..) listeners>
/// upstreams:
///   web:
///     backends: [...]             # weight 1 as a string, others as a map
///     health_check: {...}         # only with .health_check(..)
///     <.group_extra(..) lines>
///   <.upstream(..) groups>
/// limits: {...}                   # only with .limits(..)
/// ```
///
/// Extra YAML is given without the indentation of the place it goes to.
#[derive(Debug, Clone)]
pub struct LbdConf {
    /// The listener's port.
    pub port: u16,
    group: String,
    backends: Vec<(u16, u32)>,
    threads: Option<usize>,
    admin: Option<u16>,
    limits: Vec<(String, u64)>,
    health_check: Vec<(String, String)>,
    top: String,
    listener_extra: String,
    group_extra: String,
    routes: String,
    listeners: String,
    groups: String,
}

impl LbdConf {
    /// One listener on `127.0.0.1:listen_port` for group `web`; no
    /// backends yet, no `threads:` key.
    pub fn new(listen_port: u16) -> LbdConf {
        LbdConf {
            port: listen_port,
            group: "web".to_string(),
            backends: Vec::new(),
            threads: None,
            admin: None,
            limits: Vec::new(),
            health_check: Vec::new(),
            top: String::new(),
            listener_extra: String::new(),
            group_extra: String::new(),
            routes: String::new(),
            listeners: String::new(),
            groups: String::new(),
        }
    }

    /// The usual case: a free port, `threads: 1`, these backends (weight 1).
    pub fn front(backends: &[u16]) -> LbdConf {
        LbdConf::new(free_port()).threads(1).backends(backends)
    }

    /// Adds backends `127.0.0.1:<port>` with weight 1.
    pub fn backends(mut self, ports: &[u16]) -> LbdConf {
        self.backends.extend(ports.iter().map(|&p| (p, 1)));
        self
    }

    /// Adds backends `127.0.0.1:<port>` with a weight each.
    pub fn weighted(mut self, backends: &[(u16, u32)]) -> LbdConf {
        self.backends.extend_from_slice(backends);
        self
    }

    /// Names the upstream group (default `web`).
    pub fn group(mut self, name: &str) -> LbdConf {
        self.group = name.to_string();
        self
    }

    /// `threads: n` in the file; also what [`LbdConf::start`] passes as
    /// `--threads` (1 when unset).
    pub fn threads(mut self, n: usize) -> LbdConf {
        self.threads = Some(n);
        self
    }

    /// An admin endpoint on `127.0.0.1:port`.
    pub fn admin(mut self, port: u16) -> LbdConf {
        self.admin = Some(port);
        self
    }

    /// Adds `key: value` lines to the `limits:` block.
    pub fn limits(mut self, limits: &[(&str, u64)]) -> LbdConf {
        self.limits
            .extend(limits.iter().map(|&(k, v)| (k.to_string(), v)));
        self
    }

    /// Adds `key: value` lines to the group's `health_check:` block.
    pub fn health_check(mut self, options: &[(&str, &str)]) -> LbdConf {
        self.health_check
            .extend(options.iter().map(|&(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// Extra top-level keys (`pid_file: ...`, `access_log:` blocks, ...).
    pub fn top(mut self, yaml: &str) -> LbdConf {
        push_lines(&mut self.top, yaml, 0);
        self
    }

    /// Extra keys in the listener (`tls:` ...).
    pub fn listener_extra(mut self, yaml: &str) -> LbdConf {
        push_lines(&mut self.listener_extra, yaml, 4);
        self
    }

    /// Extra keys in the upstream group (`host:`, `tls:` ...).
    pub fn group_extra(mut self, yaml: &str) -> LbdConf {
        push_lines(&mut self.group_extra, yaml, 4);
        self
    }

    /// A `routes:` list for the listener instead of `upstream: <group>`
    /// (the list items, `- { ... }` lines).
    pub fn routes(mut self, yaml: &str) -> LbdConf {
        push_lines(&mut self.routes, yaml, 6);
        self
    }

    /// Another listener on `127.0.0.1:port` with these keys (`routes:` or
    /// `upstream:`, ...), after the first.
    pub fn listener(mut self, port: u16, yaml: &str) -> LbdConf {
        self.listeners += &format!("  - address: 127.0.0.1:{port}\n");
        push_lines(&mut self.listeners, yaml, 4);
        self
    }

    /// Another upstream group `name` with these keys (`backends:` ...),
    /// after the first.
    pub fn upstream(mut self, name: &str, yaml: &str) -> LbdConf {
        self.groups += &format!("  {name}:\n");
        push_lines(&mut self.groups, yaml, 4);
        self
    }

    /// The conf.yaml text.
    pub fn yaml(&self) -> String {
        let mut y = String::from("version: 1\n");
        if let Some(n) = self.threads {
            y += &format!("threads: {n}\n");
        }
        if let Some(admin) = self.admin {
            y += &format!("admin:\n  address: 127.0.0.1:{admin}\n");
        }
        y += &self.top;
        y += &format!("listeners:\n  - address: 127.0.0.1:{}\n", self.port);
        if self.routes.is_empty() {
            y += &format!("    upstream: {}\n", self.group);
        } else {
            y += "    routes:\n";
            y += &self.routes;
        }
        y += &self.listener_extra;
        y += &self.listeners;
        y += &format!("upstreams:\n  {}:\n", self.group);
        if self.backends.is_empty() {
            y += "    backends: []\n";
        } else {
            y += "    backends:\n";
        }
        for &(port, weight) in &self.backends {
            if weight == 1 {
                y += &format!("      - 127.0.0.1:{port}\n");
            } else {
                y += &format!("      - {{ address: 127.0.0.1:{port}, weight: {weight} }}\n");
            }
        }
        if !self.health_check.is_empty() {
            y += "    health_check:\n";
            for (k, v) in &self.health_check {
                y += &format!("      {k}: {v}\n");
            }
        }
        y += &self.group_extra;
        y += &self.groups;
        if !self.limits.is_empty() {
            y += "limits:\n";
            for (k, v) in &self.limits {
                y += &format!("  {k}: {v}\n");
            }
        }
        y
    }

    /// Writes the text to `dir/conf.yaml` and returns that path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("conf.yaml");
        fs::write(&path, self.yaml()).expect("write config");
        path
    }

    /// `--threads` for the process: the configured count, else 1.
    fn cli_threads(&self) -> usize {
        self.threads.unwrap_or(1)
    }

    /// Starts lbd with this config ([`Lbd::start`]).
    pub fn start(&self) -> Lbd {
        self.start_with_env(&[])
    }

    /// Starts lbd with this config and extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Lbd {
        Lbd::start_with_env(&self.yaml(), self.port, self.cli_threads(), env)
    }

    /// Runs lbd with this config expecting it to refuse to start
    /// ([`run_lbd_expect_failure`]).
    pub fn expect_failure(&self) -> (ExitStatus, String) {
        run_lbd_expect_failure(&self.yaml(), self.cli_threads())
    }
}

/// Appends the lines of `yaml` to `out`, each indented by `indent` spaces.
fn push_lines(out: &mut String, yaml: &str, indent: usize) {
    for line in yaml.lines().filter(|l| !l.trim().is_empty()) {
        out.push_str(&" ".repeat(indent));
        out.push_str(line);
        out.push('\n');
    }
}

// ---------------------------------------------------------------------------
// Shared HTTP/1.1 parsing primitives
// ---------------------------------------------------------------------------

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(ErrorKind::InvalidData, msg.into())
}

/// `GET path` with `Connection: close` on a new connection (the admin
/// endpoint, say); returns the status and the body.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Read one CRLF-terminated line (without the CRLF). EOF before any byte is
/// `UnexpectedEof`; a line not ending in CRLF is `InvalidData`.
pub fn read_crlf_line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_HEAD as u64)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Err(io::Error::new(ErrorKind::UnexpectedEof, "EOF"));
    }
    if !buf.ends_with(b"\n") {
        return Err(io::Error::new(
            ErrorKind::UnexpectedEof,
            format!(
                "EOF in the middle of a line: {:?}",
                String::from_utf8_lossy(&buf)
            ),
        ));
    }
    if !buf.ends_with(b"\r\n") {
        return Err(invalid(format!(
            "line not terminated by CRLF: {:?}",
            String::from_utf8_lossy(&buf)
        )));
    }
    buf.truncate(buf.len() - 2);
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Decode a chunked body (size lines, data, trailers).
pub fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_crlf_line(r)?;
        let size_str = line.split(';').next().unwrap_or("").trim_end();
        if size_str.is_empty() || !size_str.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(invalid(format!("bad chunk size line {line:?}")));
        }
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|e| invalid(format!("bad chunk size {line:?}: {e}")))?;
        if size == 0 {
            loop {
                if read_crlf_line(r)?.is_empty() {
                    return Ok(body);
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(invalid("chunked body too large"));
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        let mut crlf = [0u8; 2];
        r.read_exact(&mut crlf)?;
        if &crlf != b"\r\n" {
            return Err(invalid(format!(
                "chunk data not followed by CRLF: {crlf:?}"
            )));
        }
    }
}

/// Encode `body` as chunked transfer coding with varying chunk sizes.
pub fn encode_chunked(body: &[u8]) -> Vec<u8> {
    const SIZES: [usize; 8] = [1, 13, 256, 1000, 4096, 8191, 16384, 65536];
    let mut out = Vec::with_capacity(body.len() + body.len() / 100 + 64);
    let mut off = 0;
    let mut i = 0;
    while off < body.len() {
        let n = SIZES[i % SIZES.len()].min(body.len() - off);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&body[off..off + n]);
        out.extend_from_slice(b"\r\n");
        off += n;
        i += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// All comma-separated tokens of every header named `name`, lowercased.
fn header_tokens(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

fn parse_header_line(line: &str) -> io::Result<(String, String)> {
    if line.starts_with(' ') || line.starts_with('\t') {
        return Err(invalid(format!("obs-fold line {line:?}")));
    }
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| invalid(format!("header line without colon {line:?}")))?;
    if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
        return Err(invalid(format!("bad header name in {line:?}")));
    }
    Ok((
        name.to_string(),
        value.trim_matches(|c| c == ' ' || c == '\t').to_string(),
    ))
}

// ---------------------------------------------------------------------------
// Raw-socket client
// ---------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body was framed with chunked transfer coding.
    pub chunked: bool,
    /// The body was delimited by connection close.
    pub close_delimited: bool,
}

impl Response {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_value(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Read one full response from `r`. `is_head` means the request was HEAD
/// (no body regardless of headers). 1xx/204/304 never have a body. Leftover
/// bytes stay in the reader, so pipelined responses can be read one by one.
pub fn read_response<R: BufRead>(r: &mut R, is_head: bool) -> io::Result<Response> {
    let status_line = read_crlf_line(r)?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("").to_string();
    let code = parts.next().unwrap_or("");
    let reason = parts.next().unwrap_or("").to_string();
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return Err(invalid(format!("bad status line {status_line:?}")));
    }
    let status: u16 = code
        .parse()
        .map_err(|_| invalid(format!("bad status code in {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let line = read_crlf_line(r)?;
        if line.is_empty() {
            break;
        }
        headers.push(parse_header_line(&line)?);
    }
    let mut resp = Response {
        version,
        status,
        reason,
        headers,
        body: Vec::new(),
        chunked: false,
        close_delimited: false,
    };
    if is_head || status / 100 == 1 || status == 204 || status == 304 {
        return Ok(resp);
    }
    let te = header_tokens(&resp.headers, "transfer-encoding");
    if !te.is_empty() {
        if te.last().map(String::as_str) == Some("chunked") {
            resp.body = read_chunked(r)?;
            resp.chunked = true;
        } else {
            r.read_to_end(&mut resp.body)?;
            resp.close_delimited = true;
        }
    } else if let Some(cl) = resp.header("content-length") {
        let n: usize = cl
            .trim()
            .parse()
            .map_err(|_| invalid(format!("bad Content-Length {cl:?}")))?;
        resp.body = vec![0; n];
        r.read_exact(&mut resp.body)?;
    } else {
        resp.close_delimited = true;
        if let Err(e) = r.read_to_end(&mut resp.body) {
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "response {} has neither Content-Length nor chunked framing (headers {:?}); read {} body bytes, then {e} instead of the connection closing",
                    resp.status,
                    resp.headers,
                    resp.body.len()
                ),
            ));
        }
    }
    Ok(resp)
}

/// A raw-socket client connection to lbd with a buffered reader.
pub struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let s = TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Client {
            reader: BufReader::with_capacity(64 * 1024, s),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream().set_read_timeout(Some(t)).unwrap();
    }

    /// Write all bytes; panics on error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.reader
            .get_mut()
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write to lbd failed: {e}"));
    }

    /// Write all bytes, ignoring errors (the peer may legitimately close
    /// early when rejecting a request).
    pub fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.reader.get_mut().write_all(bytes);
    }

    pub fn read_response(&mut self, is_head: bool) -> io::Result<Response> {
        read_response(&mut self.reader, is_head)
    }

    /// Read a response to a non-HEAD request; panics on error.
    pub fn response(&mut self) -> Response {
        self.read_response(false)
            .unwrap_or_else(|e| panic!("reading response from lbd failed: {e} ({:?})", e.kind()))
    }

    /// Send a GET with a Host header and read the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: lbd.test\r\n\r\n").as_bytes());
        self.response()
    }

    /// Send a POST with a Content-Length body and read the response.
    pub fn post(&mut self, path: &str, body: &[u8]) -> Response {
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: lbd.test\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        self.send(&req);
        self.response()
    }

    /// Ok if the peer has closed the connection (EOF or reset) with no
    /// further bytes; Err describing what happened otherwise. Waits at most
    /// `wait` for the close.
    pub fn check_closed(&mut self, wait: Duration) -> Result<(), String> {
        let buffered = self.reader.buffer();
        if !buffered.is_empty() {
            return Err(format!(
                "expected the connection to be closed, but {} more bytes were already received: {:?}",
                buffered.len(),
                String::from_utf8_lossy(&buffered[..buffered.len().min(200)])
            ));
        }
        self.set_read_timeout(wait);
        let mut buf = [0u8; 1024];
        let res = self.reader.get_mut().read(&mut buf);
        self.set_read_timeout(IO_TIMEOUT);
        match res {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "expected the connection to be closed, got {n} more bytes: {:?}",
                String::from_utf8_lossy(&buf[..n])
            )),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::BrokenPipe
                ) =>
            {
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(format!(
                    "expected the connection to be closed, but it was still open after {wait:?}"
                ))
            }
            Err(e) => Err(format!(
                "unexpected read error while checking for close: {e}"
            )),
        }
    }

    pub fn assert_closed(&mut self, ctx: &str) {
        if let Err(e) = self.check_closed(Duration::from_secs(2)) {
            panic!("{ctx}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// Origin server
// ---------------------------------------------------------------------------

struct OriginState {
    name: String,
    connections: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    knobs: Arc<Knobs>,
    /// Clones of the open connections by accept index, for [`Origin::kill`]
    /// (each removed when its connection ends, so closing still closes).
    open: Mutex<std::collections::HashMap<usize, TcpStream>>,
}

/// What a test can change in a running [`Origin`].
#[derive(Debug)]
pub struct Knobs {
    /// Delay before every response except `/health`, in ms.
    pub delay_ms: AtomicU64,
    /// Status of every response except `/health` (0: as the path says).
    pub status: AtomicU16,
    /// Status of `/health` (default 200).
    pub health: AtomicU16,
    /// `/health` requests answered.
    pub health_hits: AtomicUsize,
}

/// A real HTTP/1.1 origin server on 127.0.0.1 (one thread per connection).
///
/// Endpoints: `/` and unknown paths (200, body = name), `/echo`, `/headers`,
/// `/chunked?size=N`, `/big?size=N`, `/close?size=N`, `/status/NNN`,
/// `/slow?ms=N`, `/health` (status [`Origin::set_health`], body = name).
/// Every response carries `X-Origin: <name>`. [`Origin::set_delay`] and
/// [`Origin::set_status`] change every other response at run time;
/// [`Origin::kill`] stops it like a crash.
pub struct Origin {
    pub name: String,
    pub port: u16,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Accepted TCP connections.
    pub connections: Arc<AtomicUsize>,
    /// Complete requests (head and whole body) received.
    pub requests: Arc<AtomicUsize>,
    /// Every raw request head received (recorded as soon as the head is read).
    pub heads: Arc<Mutex<Vec<String>>>,
    /// Run-time behaviour.
    pub knobs: Arc<Knobs>,
    stop: Arc<AtomicBool>,
    state: Arc<OriginState>,
}

impl Origin {
    pub fn start(name: &str) -> Origin {
        Origin::start_at(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// An origin listening on `addr` (port 0: any free port).
    pub fn start_at(name: &str, addr: SocketAddr) -> Origin {
        let listener = TcpListener::bind(addr).expect("origin bind");
        let addr = listener.local_addr().unwrap();
        let port = addr.port();
        let state = Arc::new(OriginState {
            name: name.to_string(),
            connections: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(AtomicUsize::new(0)),
            heads: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
            knobs: Arc::new(Knobs {
                delay_ms: AtomicU64::new(0),
                status: AtomicU16::new(0),
                health: AtomicU16::new(200),
                health_hits: AtomicUsize::new(0),
            }),
            open: Mutex::new(std::collections::HashMap::new()),
        });
        let origin = Origin {
            name: name.to_string(),
            port,
            addr,
            connections: state.connections.clone(),
            requests: state.requests.clone(),
            heads: state.heads.clone(),
            knobs: state.knobs.clone(),
            stop: state.stop.clone(),
            state: state.clone(),
        };
        thread::Builder::new()
            .name(format!("origin-{name}-accept"))
            .spawn(move || {
                for conn in listener.incoming() {
                    if state.stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let idx = state.connections.fetch_add(1, Ordering::SeqCst);
                    if let Ok(c) = stream.try_clone() {
                        state.open.lock().unwrap().insert(idx, c);
                    }
                    let st = state.clone();
                    let _ = thread::Builder::new()
                        .name(format!("origin-{}-conn", st.name))
                        .spawn(move || {
                            serve_connection(stream, &st);
                            st.open.lock().unwrap().remove(&idx);
                        });
                }
            })
            .expect("spawn origin accept thread");
        origin
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }

    pub fn last_head(&self) -> String {
        self.heads().last().cloned().unwrap_or_default()
    }

    /// Delays every response but `/health` by `ms` from now on.
    pub fn set_delay(&self, ms: u64) {
        self.knobs.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Answers every request but `/health` with `status` (`None`: as the
    /// path says).
    pub fn set_status(&self, status: Option<u16>) {
        self.knobs
            .status
            .store(status.unwrap_or(0), Ordering::SeqCst);
    }

    /// The status `/health` answers with from now on.
    pub fn set_health(&self, status: u16) {
        self.knobs.health.store(status, Ordering::SeqCst);
    }

    /// `/health` requests answered so far.
    pub fn health_hits(&self) -> usize {
        self.knobs.health_hits.load(Ordering::SeqCst)
    }

    /// Stops like a crashed process: the port refuses connections and
    /// every open connection is shut down. Not revivable.
    pub fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        for (_, c) in self.state.open.lock().unwrap().drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "origin {} did not stop",
                self.name
            );
            thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the stop flag.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
    }
}

struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
    raw_head: String,
    body: Vec<u8>,
}

enum ReadOutcome {
    Request(Request),
    Eof,
    Bad(String),
}

/// Read the raw head (request line up to and including the blank line).
/// Ok(None) on a clean EOF before any byte of a request.
fn read_raw_head<R: BufRead>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take((MAX_HEAD - head.len() + 1) as u64)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "EOF inside request head",
            ));
        }
        if head.is_empty() && (line == b"\r\n" || line == b"\n") {
            // RFC 9112 2.2: ignore empty lines before the request line.
            continue;
        }
        head.extend_from_slice(&line);
        if head.len() > MAX_HEAD {
            return Err(invalid("request head too large"));
        }
        if line == b"\r\n" {
            return Ok(Some(head));
        }
        if !line.ends_with(b"\n") {
            return Err(io::Error::new(
                ErrorKind::UnexpectedEof,
                "EOF inside request head",
            ));
        }
    }
}

fn read_request<R: BufRead>(r: &mut R, st: &OriginState) -> io::Result<ReadOutcome> {
    let raw = match read_raw_head(r)? {
        Some(raw) => raw,
        None => return Ok(ReadOutcome::Eof),
    };
    let raw_head = String::from_utf8_lossy(&raw).into_owned();
    st.heads.lock().unwrap().push(raw_head.clone());

    let mut lines = raw_head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let parts: Vec<&str> = request_line.split(' ').collect();
    if parts.len() != 3 || !parts[2].starts_with("HTTP/1.") {
        return Ok(ReadOutcome::Bad(format!(
            "bad request line {request_line:?}"
        )));
    }
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.contains('\r') || line.contains('\n') || line.contains('\0') {
            return Ok(ReadOutcome::Bad(format!("bad header line {line:?}")));
        }
        match parse_header_line(line) {
            Ok(h) => headers.push(h),
            Err(e) => return Ok(ReadOutcome::Bad(e.to_string())),
        }
    }
    let te = header_tokens(&headers, "transfer-encoding");
    let cls: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.as_str())
        .collect();
    let body = if !te.is_empty() {
        if !cls.is_empty() {
            return Ok(ReadOutcome::Bad(
                "both Transfer-Encoding and Content-Length".into(),
            ));
        }
        if te != ["chunked"] {
            return Ok(ReadOutcome::Bad(format!(
                "unsupported Transfer-Encoding {te:?}"
            )));
        }
        match read_chunked(r) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::InvalidData => {
                return Ok(ReadOutcome::Bad(e.to_string()))
            }
            Err(e) => return Err(e),
        }
    } else if !cls.is_empty() {
        if cls.len() != 1 || cls[0].is_empty() || !cls[0].bytes().all(|b| b.is_ascii_digit()) {
            return Ok(ReadOutcome::Bad(format!("bad Content-Length {cls:?}")));
        }
        let n: usize = match cls[0].parse() {
            Ok(n) if n <= MAX_BODY => n,
            _ => return Ok(ReadOutcome::Bad(format!("bad Content-Length {cls:?}"))),
        };
        let mut body = vec![0; n];
        r.read_exact(&mut body)?;
        body
    } else {
        Vec::new()
    };
    st.requests.fetch_add(1, Ordering::SeqCst);
    Ok(ReadOutcome::Request(Request {
        method: parts[0].to_string(),
        target: parts[1].to_string(),
        version: parts[2].to_string(),
        headers,
        raw_head,
        body,
    }))
}

fn serve_connection(stream: TcpStream, st: &OriginState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let Ok(write_half) = stream.try_clone() else {
        return;
    };
    let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    loop {
        match read_request(&mut reader, st) {
            Ok(ReadOutcome::Request(req)) => match respond(&mut writer, &req, st) {
                Ok(true) => {}
                _ => return,
            },
            Ok(ReadOutcome::Bad(why)) => {
                let body = format!("origin {}: bad request: {why}\n", st.name);
                let _ = write!(
                    writer,
                    "HTTP/1.1 400 Bad Request\r\nX-Origin: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    st.name,
                    body.len()
                );
                let _ = writer.flush();
                return;
            }
            Ok(ReadOutcome::Eof) | Err(_) => return,
        }
    }
}

fn query_param(query: &str, key: &str) -> Option<usize> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Write the response; returns whether the connection stays open.
fn respond<W: Write>(w: &mut W, req: &Request, st: &OriginState) -> io::Result<bool> {
    let name = st.name.as_str();
    let is_head = req.method == "HEAD";
    let conn = header_tokens(&req.headers, "connection");
    let mut keep_alive = if req.version == "HTTP/1.0" {
        conn.iter().any(|t| t == "keep-alive")
    } else {
        !conn.iter().any(|t| t == "close")
    };
    let (path, query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let size = query_param(query, "size").unwrap_or(0);

    enum Body {
        Fixed(Vec<u8>),
        None,
        Chunked(Vec<u8>),
        CloseDelimited(Vec<u8>),
    }
    let mut status = 200;
    let knobs = &st.knobs;
    if path != "/health" {
        let delay = knobs.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
    }
    let forced = knobs.status.load(Ordering::SeqCst);
    let body = match path {
        "/health" => {
            status = knobs.health.load(Ordering::SeqCst);
            knobs.health_hits.fetch_add(1, Ordering::SeqCst);
            Body::Fixed(name.as_bytes().to_vec())
        }
        _ if forced != 0 => {
            status = forced;
            Body::Fixed(format!("status {status}\n").into_bytes())
        }
        "/echo" => Body::Fixed(req.body.clone()),
        "/headers" => Body::Fixed(req.raw_head.clone().into_bytes()),
        "/chunked" => Body::Chunked(pattern(size)),
        "/big" => Body::Fixed(pattern(size)),
        "/close" => Body::CloseDelimited(pattern(size)),
        "/slow" => {
            thread::sleep(Duration::from_millis(
                query_param(query, "ms").unwrap_or(0) as u64
            ));
            Body::Fixed(name.as_bytes().to_vec())
        }
        p if p.starts_with("/status/") => {
            status = p["/status/".len()..].parse().unwrap_or(500);
            if status == 204 || status == 304 {
                Body::None
            } else {
                Body::Fixed(format!("status {status}\n").into_bytes())
            }
        }
        _ => Body::Fixed(name.as_bytes().to_vec()),
    };

    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nX-Origin: {name}\r\n",
        reason(status)
    );
    match &body {
        Body::Fixed(b) => head += &format!("Content-Length: {}\r\n", b.len()),
        Body::Chunked(_) => head += "Transfer-Encoding: chunked\r\n",
        Body::CloseDelimited(_) => keep_alive = false,
        Body::None => {}
    }
    if !keep_alive {
        head += "Connection: close\r\n";
    }
    head += "\r\n";
    w.write_all(head.as_bytes())?;
    if !is_head {
        match &body {
            Body::Fixed(b) | Body::CloseDelimited(b) => w.write_all(b)?,
            Body::Chunked(b) => w.write_all(&encode_chunked(b))?,
            Body::None => {}
        }
    }
    w.flush()?;
    Ok(keep_alive)
}

// ---------------------------------------------------------------------------
// Fault-injecting origin
// ---------------------------------------------------------------------------

/// One step of a scripted origin connection (see [`FaultOrigin`]).
#[derive(Debug, Clone)]
pub enum Step {
    /// Read one request head (through the blank line) and any
    /// `Content-Length` body, and record the head. If the peer closes
    /// first, the connection's script ends there.
    ReadRequest,
    /// Write these bytes (errors end the script).
    Write(Vec<u8>),
    /// Pause.
    Sleep(Duration),
    /// Close gracefully (FIN).
    Close,
    /// Abort the connection with a TCP reset (SO_LINGER 0, then close).
    Reset,
    /// Keep the connection open without answering, discarding whatever
    /// arrives, until the peer closes it or the origin is dropped.
    Hang,
    /// Wait up to this long for the peer to close the connection (EOF or
    /// reset); if it does, the connection's index is recorded in
    /// [`FaultOrigin::closed_by_peer`]. Bytes received meanwhile are dropped.
    AwaitPeerClose(Duration),
}

/// Shorthand for a [`Step::Write`] of a string.
pub fn write_step(s: &str) -> Step {
    Step::Write(s.as_bytes().to_vec())
}

/// A raw TCP origin that answers each accepted connection with scripted
/// bytes: connection `i` runs `scripts[i]` (the last script repeats for any
/// further connection). It records every request head it read, with the
/// index of the connection it arrived on.
pub struct FaultOrigin {
    pub port: u16,
    connections: Arc<AtomicUsize>,
    heads: Arc<Mutex<Vec<(usize, String)>>>,
    closed_by_peer: Arc<Mutex<Vec<usize>>>,
    stop: Arc<AtomicBool>,
}

impl FaultOrigin {
    pub fn start(scripts: Vec<Vec<Step>>) -> FaultOrigin {
        assert!(!scripts.is_empty(), "FaultOrigin needs at least one script");
        let listener = TcpListener::bind("127.0.0.1:0").expect("fault origin bind");
        let port = listener.local_addr().unwrap().port();
        let origin = FaultOrigin {
            port,
            connections: Arc::new(AtomicUsize::new(0)),
            heads: Arc::new(Mutex::new(Vec::new())),
            closed_by_peer: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (conns, heads, closed, stop) = (
            origin.connections.clone(),
            origin.heads.clone(),
            origin.closed_by_peer.clone(),
            origin.stop.clone(),
        );
        thread::Builder::new()
            .name("fault-origin-accept".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(stream) = conn else { continue };
                    let idx = conns.fetch_add(1, Ordering::SeqCst);
                    let script = scripts[idx.min(scripts.len() - 1)].clone();
                    let (heads, closed, stop) = (heads.clone(), closed.clone(), stop.clone());
                    let _ = thread::Builder::new()
                        .name(format!("fault-origin-conn-{idx}"))
                        .spawn(move || run_script(idx, stream, &script, &heads, &closed, &stop));
                }
            })
            .expect("spawn fault origin accept thread");
        origin
    }

    /// Accepted TCP connections.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// (connection index, raw head) of every request head read so far.
    pub fn heads(&self) -> Vec<(usize, String)> {
        self.heads.lock().unwrap().clone()
    }

    /// Indexes of connections the peer (lbd) closed during `AwaitPeerClose`.
    pub fn closed_by_peer(&self) -> Vec<usize> {
        self.closed_by_peer.lock().unwrap().clone()
    }

    /// Poll `cond` every 10 ms for up to `wait`; true if it became true.
    pub fn wait_for(&self, wait: Duration, cond: impl Fn(&FaultOrigin) -> bool) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FaultOrigin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_millis(200),
        );
    }
}

fn run_script(
    idx: usize,
    stream: TcpStream,
    script: &[Step],
    heads: &Mutex<Vec<(usize, String)>>,
    closed: &Mutex<Vec<usize>>,
    stop: &AtomicBool,
) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut write_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    for step in script {
        match step {
            Step::ReadRequest => match read_raw_head(&mut reader) {
                Ok(Some(raw)) => {
                    let head = String::from_utf8_lossy(&raw).into_owned();
                    let cl = head
                        .split("\r\n")
                        .filter_map(|l| l.split_once(':'))
                        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
                        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                        .unwrap_or(0);
                    heads.lock().unwrap().push((idx, head));
                    if io::copy(&mut reader.by_ref().take(cl), &mut io::sink()).is_err() {
                        return;
                    }
                }
                _ => return,
            },
            Step::Write(b) => {
                if write_half
                    .write_all(b)
                    .and_then(|_| write_half.flush())
                    .is_err()
                {
                    return;
                }
            }
            Step::Sleep(d) => thread::sleep(*d),
            Step::Close => {
                let _ = write_half.shutdown(std::net::Shutdown::Both);
                return;
            }
            Step::Reset => {
                let _ = socket2::SockRef::from(&write_half).set_linger(Some(Duration::ZERO));
                return;
            }
            Step::Hang => {
                let _ = reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_millis(100)));
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    match reader.read(&mut buf) {
                        Ok(0) => return,
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => return,
                    }
                }
                return;
            }
            Step::AwaitPeerClose(wait) => {
                let deadline = Instant::now() + *wait;
                let _ = reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_millis(50)));
                let mut buf = [0u8; 4096];
                while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                    match reader.read(&mut buf) {
                        Ok(0) => {
                            closed.lock().unwrap().push(idx);
                            return;
                        }
                        Ok(_) => {}
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(_) => {
                            closed.lock().unwrap().push(idx);
                            return;
                        }
                    }
                }
                let _ = reader
                    .get_ref()
                    .set_read_timeout(Some(Duration::from_secs(30)));
            }
        }
    }
}

/// Reads from `s` until a whole request head (CRLF CRLF) arrived; returns
/// every byte read so far (the head and whatever followed it), or `None`
/// if the peer closed first.
pub fn read_until_head<R: Read>(s: &mut R) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut b = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&b[..n]),
        }
    }
    Some(head)
}

/// Clients on keep-alive connections sending GETs in a loop; every failure
/// (connect error, reset, timeout, non-2xx) is counted.
/// `finish` stops them and returns (successes, failures).
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Load {
    pub fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                thread::spawn(move || {
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::SeqCst) {
                        if conn.is_none() {
                            match TcpStream::connect(("127.0.0.1", port)) {
                                Ok(s) => {
                                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                                    conn = Some(BufReader::new(s));
                                }
                                Err(e) => {
                                    failures.lock().unwrap().push(format!("connect: {e}"));
                                    thread::sleep(Duration::from_millis(5));
                                    continue;
                                }
                            }
                        }
                        let r = conn.as_mut().unwrap();
                        let res = r
                            .get_mut()
                            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
                            .map_err(|e| format!("write: {e}"))
                            .and_then(|_| {
                                read_response(r, false).map_err(|e| format!("read: {e}"))
                            });
                        match res {
                            Ok(resp) if (200..300).contains(&resp.status) => {
                                ok.fetch_add(1, Ordering::SeqCst);
                                if resp.header("Connection") == Some("close") {
                                    conn = None;
                                }
                            }
                            Ok(resp) => {
                                failures
                                    .lock()
                                    .unwrap()
                                    .push(format!("status {}", resp.status));
                                conn = None;
                            }
                            Err(e) => {
                                failures.lock().unwrap().push(e);
                                conn = None;
                            }
                        }
                        thread::sleep(Duration::from_millis(1));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failures,
            threads,
        }
    }

    pub fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let f = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::SeqCst), f)
    }

    /// Stops the clients and asserts that none failed and more than
    /// `at_least` succeeded; returns the successes.
    pub fn finish_clean(self, at_least: usize) -> usize {
        let (ok, failures) = self.finish();
        assert!(
            failures.is_empty(),
            "{} failed: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(ok > at_least, "load too light: {ok}");
        ok
    }
}
