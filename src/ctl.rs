//! `lbd ctl`: the admin API's command-line client. It finds the admin
//! address (`--admin`, else `admin.address` from `-c conf.yaml`, else
//! `$LBD_ADMIN`) and, for a write command, the bearer token (`--token-file`,
//! else `admin.token_file`, else `$LBD_ADMIN_TOKEN`); sends one HTTP/1.1
//! request (`Connection: close`, 5 s connect and read timeouts); and prints
//! the answer: a table for `upstreams`, one line for a change. Of conf.yaml
//! it reads only the `admin:` block, so a file the daemon would reject for
//! some other key (or whose TLS keys the operator cannot read) still serves.
//! Exit status: 0 done, 1 the API refused (its status, field and message on
//! stderr), 2 a usage, configuration or connection failure.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::cli::{CtlArgs, CtlCommand, Target};

/// Connect, read and write timeout.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Largest reply read.
const MAX_REPLY: u64 = 64 << 20;

/// Why a `lbd ctl` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// No admin address anywhere.
    #[error(
        "no admin API address: give --admin IP:PORT, or -c conf.yaml with admin.address, \
         or set LBD_ADMIN=IP:PORT"
    )]
    NoAddress,
    /// An admin address that is not `IP:port`.
    #[error("{what} `{value}` is not IP:PORT")]
    BadAddress {
        /// Where it came from.
        what: &'static str,
        /// What it was.
        value: String,
    },
    /// A file could not be read.
    #[error("cannot read {what} {}: {}", path.display(), describe(source))]
    Read {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// conf.yaml's `admin:` block does not parse.
    #[error("{}: {message}", path.display())]
    Conf {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A token that cannot go into a header.
    #[error("{0}: must hold one token of visible characters")]
    BadToken(String),
    /// The admin API is not reachable.
    #[error("cannot connect to admin API at {addr}: {}", describe(source))]
    Connect {
        /// The admin address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exchange failed after connecting.
    #[error("admin API at {addr}: {what}: {}", describe(source))]
    Io {
        /// The admin address.
        addr: SocketAddr,
        /// The step.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The reply is not HTTP or not the JSON expected.
    #[error("admin API at {addr}: unexpected reply: {reason}")]
    Reply {
        /// The admin address.
        addr: SocketAddr,
        /// What is wrong with it.
        reason: String,
    },
    /// The API answered with an error status.
    #[error("{status}{}: {message}", field.as_ref().map(|f| format!(" {f}")).unwrap_or_default())]
    Api {
        /// The HTTP status.
        status: u16,
        /// The request field at fault, if the server named one.
        field: Option<String>,
        /// The server's message.
        message: String,
    },
}

impl CtlError {
    /// The exit status: 1 for an API error, 2 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::Api { .. } => 1,
            _ => 2,
        }
    }
}

/// An OS error as a sentence fragment: `connection refused`, not
/// `Connection refused (os error 111)`.
fn describe(e: &std::io::Error) -> String {
    let s = e.to_string();
    let s = match s.find(" (os error ") {
        Some(i) => &s[..i],
        None => &s,
    };
    let mut c = s.chars();
    match c.next() {
        Some(first) => first.to_lowercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Runs `lbd ctl`: prints the result or `lbd ctl: <error>`, returns the exit status.
pub fn run(args: &CtlArgs) -> i32 {
    let mut out = std::io::stdout().lock();
    match execute(args) {
        Ok(text) => {
            // A closed stdout (`| head`) is not lbd ctl's failure.
            let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
            0
        }
        Err(e) => {
            eprintln!("lbd ctl: {e}");
            e.exit_code()
        }
    }
}

fn execute(args: &CtlArgs) -> Result<String, CtlError> {
    let conf = match &args.conf {
        Some(p) => read_conf(p)?,
        None => None,
    };
    let addr = admin_address(args.admin, conf.as_ref(), env("LBD_ADMIN"))?;
    let req = request(&args.command);
    let token = if req.write {
        token(args.token_file.as_deref(), conf.as_ref())?
    } else {
        None
    };
    let reply = exchange(addr, &req, token.as_deref())?;
    if !(200..300).contains(&reply.status) {
        return Err(api_error(reply.status, &reply.body));
    }
    output(&args.command, &reply.body).map_err(|reason| CtlError::Reply { addr, reason })
}

/// An environment variable; a non-UTF-8 value is kept (lossily) so it is
/// reported, not ignored.
fn env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// What ctl reads of conf.yaml: the `admin:` block, nothing else.
#[derive(Debug, Deserialize)]
struct ConfFile {
    #[serde(default)]
    admin: Option<ConfAdmin>,
}

/// `admin:` as ctl reads it.
#[derive(Debug, Deserialize)]
struct ConfAdmin {
    address: String,
    #[serde(default)]
    token_file: Option<PathBuf>,
}

fn read_conf(path: &Path) -> Result<Option<ConfAdmin>, CtlError> {
    let text = std::fs::read_to_string(path).map_err(|source| CtlError::Read {
        what: "the configuration",
        path: path.to_owned(),
        source,
    })?;
    let conf: ConfFile = serde_saphyr::from_str(&text).map_err(|e| CtlError::Conf {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    Ok(conf.admin)
}

/// `--admin`, else `admin.address`, else `$LBD_ADMIN`.
fn admin_address(
    flag: Option<SocketAddr>,
    conf: Option<&ConfAdmin>,
    env: Option<String>,
) -> Result<SocketAddr, CtlError> {
    let parse = |what, value: &str| {
        value.parse().map_err(|_| CtlError::BadAddress {
            what,
            value: value.to_owned(),
        })
    };
    match (flag, conf, env) {
        (Some(a), _, _) => Ok(a),
        (None, Some(c), _) => parse("admin.address", &c.address),
        (None, None, Some(e)) => parse("LBD_ADMIN", &e),
        (None, None, None) => Err(CtlError::NoAddress),
    }
}

/// `--token-file`, else `admin.token_file`, else `$LBD_ADMIN_TOKEN`.
fn token(flag: Option<&Path>, conf: Option<&ConfAdmin>) -> Result<Option<String>, CtlError> {
    let file = flag.or_else(|| conf.and_then(|c| c.token_file.as_deref()));
    let (text, what) = match file {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|source| CtlError::Read {
                what: "the token file",
                path: p.to_owned(),
                source,
            })?;
            (text, format!("token file {}", p.display()))
        }
        None => match env("LBD_ADMIN_TOKEN") {
            Some(t) => (t, "LBD_ADMIN_TOKEN".to_owned()),
            None => return Ok(None),
        },
    };
    // The server's rule for admin.token_file.
    let t = text.trim();
    if t.is_empty() || t.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(CtlError::BadToken(what));
    }
    Ok(Some(t.to_owned()))
}

/// One admin API request.
#[derive(Debug, PartialEq, Eq)]
struct Request {
    method: &'static str,
    path: String,
    body: Option<String>,
    /// Needs the bearer token.
    write: bool,
}

/// The request a command makes.
fn request(cmd: &CtlCommand) -> Request {
    let backend = |t: &Target| {
        format!(
            "/upstreams/{}/backends/{}",
            percent_encode(&t.group),
            percent_encode(&t.address)
        )
    };
    let write = |method, path, body| Request {
        method,
        path,
        body,
        write: true,
    };
    match cmd {
        CtlCommand::Upstreams { .. } => Request {
            method: "GET",
            path: "/upstreams".to_owned(),
            body: None,
            write: false,
        },
        CtlCommand::Drain(t) => write("POST", backend(t) + "/drain", None),
        CtlCommand::Disable(t) => write("POST", backend(t) + "/disable", None),
        CtlCommand::Enable(t) => write("POST", backend(t) + "/enable", None),
        CtlCommand::Remove(t) => write("DELETE", backend(t), None),
        CtlCommand::Add { target, weight } => {
            let mut body = serde_json::json!({ "address": target.address });
            if let Some(w) = weight {
                body["weight"] = (*w).into();
            }
            let path = format!("/upstreams/{}/backends", percent_encode(&target.group));
            write("POST", path, Some(body.to_string()))
        }
    }
}

/// A path segment: every byte but RFC 3986's unreserved ones as `%XX`
/// (`127.0.0.1:8081` is `127.0.0.1%3A8081`, `[::1]:80` is `%5B%3A%3A1%5D%3A80`).
fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// The request's bytes.
fn encode_request(addr: SocketAddr, req: &Request, token: Option<&str>) -> Vec<u8> {
    let mut head = format!(
        "{} {} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lbd-ctl/{}\r\nAccept: application/json\r\n\
         Connection: close\r\n",
        req.method,
        req.path,
        env!("CARGO_PKG_VERSION")
    );
    if let Some(t) = token {
        head += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = req.body.as_deref().unwrap_or("");
    if req.body.is_some() {
        head += "Content-Type: application/json\r\n";
    }
    if req.body.is_some() || req.method != "GET" {
        head += &format!("Content-Length: {}\r\n", body.len());
    }
    head += "\r\n";
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// A reply: status and body.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    body: Vec<u8>,
}

/// Connects, sends, reads until the server closes.
fn exchange(addr: SocketAddr, req: &Request, token: Option<&str>) -> Result<Reply, CtlError> {
    let io = |what| move |source| CtlError::Io { addr, what, source };
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|source| CtlError::Connect { addr, source })?;
    conn.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| conn.set_write_timeout(Some(TIMEOUT)))
        .map_err(io("setting timeouts"))?;
    conn.write_all(&encode_request(addr, req, token))
        .map_err(io("sending the request"))?;
    let mut raw = Vec::new();
    let read = conn.take(MAX_REPLY).read_to_end(&mut raw);
    match (read, parse_reply(&raw)) {
        // A reset after a complete reply loses nothing.
        (_, Ok(reply)) => Ok(reply),
        (Err(e), Err(_)) => Err(io("reading the reply")(e)),
        (Ok(_), Err(reason)) => Err(CtlError::Reply { addr, reason }),
    }
}

/// Parses a complete HTTP/1.1 reply: the body is `Content-Length` bytes,
/// or everything to the close.
fn parse_reply(raw: &[u8]) -> Result<Reply, String> {
    if raw.is_empty() {
        return Err("the connection closed without a reply".to_owned());
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(raw) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err("the reply ends inside its head".to_owned()),
        Err(e) => return Err(format!("not HTTP: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if header("transfer-encoding").is_some() {
        return Err("a Transfer-Encoding reply (expected Content-Length)".to_owned());
    }
    let body = &raw[head_len..];
    let body = match header("content-length") {
        None => body,
        Some(v) => {
            let n = std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or("a Content-Length that is not a number")?;
            body.get(..n)
                .ok_or("the body is shorter than its Content-Length")?
        }
    };
    Ok(Reply {
        status,
        body: body.to_vec(),
    })
}

/// The server's `{"error": …, "field": …}`, or its body as text.
#[derive(Debug, Deserialize)]
struct ApiErrorBody {
    error: String,
    #[serde(default)]
    field: Option<String>,
}

fn api_error(status: u16, body: &[u8]) -> CtlError {
    match serde_json::from_slice::<ApiErrorBody>(body) {
        Ok(e) => CtlError::Api {
            status,
            field: e.field.filter(|f| !f.is_empty()),
            message: e.error,
        },
        Err(_) => CtlError::Api {
            status,
            field: None,
            message: String::from_utf8_lossy(body).trim().to_owned(),
        },
    }
}

/// What a successful command prints.
fn output(cmd: &CtlCommand, body: &[u8]) -> Result<String, String> {
    match cmd {
        CtlCommand::Upstreams { json: true } => {
            let mut s = String::from_utf8_lossy(body).into_owned();
            if !s.ends_with('\n') {
                s.push('\n');
            }
            Ok(s)
        }
        CtlCommand::Upstreams { json: false } => {
            let listing: Listing =
                serde_json::from_slice(body).map_err(|e| format!("GET /upstreams: {e}"))?;
            Ok(table(&listing))
        }
        _ => {
            let change: Change =
                serde_json::from_slice(body).map_err(|e| format!("not the expected JSON: {e}"))?;
            Ok(summary(cmd, &change))
        }
    }
}

/// `GET /upstreams`.
#[derive(Debug, Deserialize)]
struct Listing {
    upstreams: Vec<Group>,
}

/// One group in `GET /upstreams`.
#[derive(Debug, Deserialize)]
struct Group {
    name: String,
    backends: Vec<Backend>,
}

/// One backend in `GET /upstreams`. Fields a server does not send show as
/// empty or 0.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Backend {
    id: u64,
    address: String,
    weight: u64,
    source: String,
    health: String,
    state: String,
    inflight: u64,
    requests: u64,
}

/// The table's columns; numbers align right.
const COLUMNS: [(&str, bool); 9] = [
    ("GROUP", false),
    ("ID", true),
    ("ADDRESS", false),
    ("WEIGHT", true),
    ("SOURCE", false),
    ("HEALTH", false),
    ("STATE", false),
    ("INFLIGHT", true),
    ("REQUESTS", true),
];

/// `lbd ctl upstreams`: one row per backend, columns as wide as their
/// widest cell, two spaces apart, no trailing spaces.
fn table(listing: &Listing) -> String {
    let header = COLUMNS.map(|(name, _)| name.to_owned());
    let mut rows = vec![header];
    for g in &listing.upstreams {
        for b in &g.backends {
            rows.push([
                g.name.clone(),
                b.id.to_string(),
                b.address.clone(),
                b.weight.to_string(),
                b.source.clone(),
                b.health.clone(),
                b.state.clone(),
                b.inflight.to_string(),
                b.requests.to_string(),
            ]);
        }
    }
    let mut widths = [0usize; COLUMNS.len()];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            let w = widths[i];
            if i > 0 {
                line.push_str("  ");
            }
            if COLUMNS[i].1 {
                line += &format!("{cell:>w$}");
            } else {
                line += &format!("{cell:<w$}");
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A write command's answer: `{"group","address","id", …}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Change {
    group: String,
    address: String,
    id: Option<u64>,
    state: Option<String>,
    weight: Option<u64>,
}

/// One line for a change: `web 127.0.0.1:8081 (id 0): draining`.
fn summary(cmd: &CtlCommand, c: &Change) -> String {
    let id = c.id.map(|i| format!(" (id {i})")).unwrap_or_default();
    let what = match cmd {
        CtlCommand::Add { .. } => match c.weight {
            Some(w) => format!("added, weight {w}"),
            None => "added".to_owned(),
        },
        CtlCommand::Remove(_) => "removed".to_owned(),
        _ => c.state.clone().unwrap_or_else(|| "done".to_owned()),
    };
    format!("{} {}{id}: {what}\n", c.group, c.address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(group: &str, address: &str) -> Target {
        Target {
            group: group.to_owned(),
            address: address.to_owned(),
        }
    }

    #[test]
    fn table_aligns_columns() {
        let listing: Listing = serde_json::from_str(
            r#"{"upstreams":[
                {"name":"web","backends":[
                    {"id":0,"address":"127.0.0.1:8081","name":"127.0.0.1:8081","weight":1,
                     "source":"static","health":"up","state":"active","inflight":0,"requests":12},
                    {"id":11,"address":"[::1]:80","weight":20,"source":"api",
                     "health":"down","state":"draining","inflight":3,"requests":4567}]},
                {"name":"api-v2","backends":[]}]}"#,
        )
        .expect("parses");
        let want = "\
GROUP  ID  ADDRESS         WEIGHT  SOURCE  HEALTH  STATE     INFLIGHT  REQUESTS
web     0  127.0.0.1:8081       1  static  up      active           0        12
web    11  [::1]:80            20  api     down    draining         3      4567
";
        assert_eq!(table(&listing), want);
    }

    #[test]
    fn empty_table_is_the_header() {
        let listing = Listing { upstreams: vec![] };
        assert_eq!(
            table(&listing),
            "GROUP  ID  ADDRESS  WEIGHT  SOURCE  HEALTH  STATE  INFLIGHT  REQUESTS\n"
        );
    }

    #[test]
    fn paths_are_percent_encoded() {
        assert_eq!(percent_encode("127.0.0.1:8081"), "127.0.0.1%3A8081");
        assert_eq!(percent_encode("[::1]:80"), "%5B%3A%3A1%5D%3A80");
        assert_eq!(percent_encode("a b/ü"), "a%20b%2F%C3%BC");
        let r = request(&CtlCommand::Drain(target("web", "[::1]:80")));
        assert_eq!(r.path, "/upstreams/web/backends/%5B%3A%3A1%5D%3A80/drain");
        assert!(r.write && r.body.is_none());
        let r = request(&CtlCommand::Remove(target("w b", "1.2.3.4:5")));
        assert_eq!(
            (r.method, r.path.as_str()),
            ("DELETE", "/upstreams/w%20b/backends/1.2.3.4%3A5")
        );
    }

    #[test]
    fn add_sends_address_and_weight_only_if_given() {
        let add = |weight| CtlCommand::Add {
            target: target("web", "127.0.0.1:8083"),
            weight,
        };
        let r = request(&add(Some(2)));
        assert_eq!(
            (r.method, r.path.as_str()),
            ("POST", "/upstreams/web/backends")
        );
        let body: serde_json::Value =
            serde_json::from_str(r.body.as_deref().unwrap_or("")).expect("JSON");
        assert_eq!(
            body,
            serde_json::json!({"address": "127.0.0.1:8083", "weight": 2})
        );
        let r = request(&add(None));
        assert_eq!(r.body.as_deref(), Some(r#"{"address":"127.0.0.1:8083"}"#));
    }

    #[test]
    fn request_bytes() {
        let addr: SocketAddr = "127.0.0.1:6190".parse().expect("addr");
        let r = request(&CtlCommand::Enable(target("web", "127.0.0.1:1")));
        let text = String::from_utf8(encode_request(addr, &r, Some("tok"))).expect("UTF-8");
        assert!(text.starts_with(
            "POST /upstreams/web/backends/127.0.0.1%3A1/enable HTTP/1.1\r\nHost: 127.0.0.1:6190\r\n"
        ));
        assert!(text.contains("\r\nAuthorization: Bearer tok\r\n"));
        assert!(text.ends_with(
            "\r\nConnection: close\r\nAuthorization: Bearer tok\r\nContent-Length: 0\r\n\r\n"
        ));
        let r = request(&CtlCommand::Upstreams { json: false });
        let text = String::from_utf8(encode_request(addr, &r, None)).expect("UTF-8");
        assert!(!text.contains("Content-Length") && !text.contains("Authorization"));
    }

    #[test]
    fn replies() {
        let ok = parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}junk").expect("ok");
        assert_eq!((ok.status, ok.body.as_slice()), (200, &b"{}"[..]));
        let close = parse_reply(b"HTTP/1.1 404 Not Found\r\n\r\nnot found\n").expect("ok");
        assert_eq!(close.body, b"not found\n");
        assert!(parse_reply(b"").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}").is_err());
        assert!(parse_reply(b"HTTP/1.1 200 OK\r\nContent-Le").is_err());
        assert!(parse_reply(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn api_errors_name_status_field_and_message() {
        let e = api_error(
            404,
            br#"{"error":"no backend 1.2.3.4:5 in `web`","field":"address"}"#,
        );
        assert_eq!(e.to_string(), "404 address: no backend 1.2.3.4:5 in `web`");
        assert_eq!(e.exit_code(), 1);
        assert_eq!(
            api_error(405, b"method not allowed\n").to_string(),
            "405: method not allowed"
        );
    }

    #[test]
    fn address_precedence() {
        let conf = ConfAdmin {
            address: "127.0.0.1:2".to_owned(),
            token_file: None,
        };
        let flag: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let env = || Some("127.0.0.1:3".to_owned());
        let got = |f, c, e| admin_address(f, c, e).map(|a| a.port()).ok();
        assert_eq!(got(Some(flag), Some(&conf), env()), Some(1));
        assert_eq!(got(None, Some(&conf), env()), Some(2));
        assert_eq!(got(None, None, env()), Some(3));
        assert!(matches!(
            admin_address(None, None, None),
            Err(CtlError::NoAddress)
        ));
        assert!(matches!(
            admin_address(None, None, Some("localhost:1".to_owned())),
            Err(CtlError::BadAddress {
                what: "LBD_ADMIN",
                ..
            })
        ));
    }

    #[test]
    fn conf_admin_block_alone_is_read() {
        let c: ConfFile = serde_saphyr::from_str(
            "listeners:\n  - address: nonsense\nadmin:\n  address: 127.0.0.1:6190\n  token_file: /x\n",
        )
        .expect("parses");
        let a = c.admin.expect("admin");
        assert_eq!(
            (a.address.as_str(), a.token_file),
            ("127.0.0.1:6190", Some(PathBuf::from("/x")))
        );
    }

    #[test]
    fn summaries() {
        let change: Change = serde_json::from_str(
            r#"{"group":"web","address":"127.0.0.1:8081","id":0,"state":"draining"}"#,
        )
        .expect("parses");
        let drain = CtlCommand::Drain(target("web", "127.0.0.1:8081"));
        assert_eq!(
            summary(&drain, &change),
            "web 127.0.0.1:8081 (id 0): draining\n"
        );
        let added: Change = serde_json::from_str(
            r#"{"group":"web","address":"127.0.0.1:8083","id":5,"weight":2,"source":"api"}"#,
        )
        .expect("parses");
        let add = CtlCommand::Add {
            target: target("web", "127.0.0.1:8083"),
            weight: Some(2),
        };
        assert_eq!(
            summary(&add, &added),
            "web 127.0.0.1:8083 (id 5): added, weight 2\n"
        );
    }

    #[test]
    fn os_errors_read_as_fragments() {
        let e = std::io::Error::from_raw_os_error(111);
        assert_eq!(describe(&e), "connection refused");
    }
}
