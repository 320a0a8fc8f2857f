//! Head rewriting, sans-I/O: the HTTP/1.1 request head lbd sends upstream
//! and the HTTP/1 response head a client gets.
//!
//! Both are written in one pass from a parsed view ([`RequestView`],
//! [`ResponseView`]) into a caller-provided buffer: no allocation per
//! request. Hop-by-hop headers (RFC 9110 §7.6.1) and every header named by
//! `Connection` are dropped both ways; `Connection` cannot strip `Host` or
//! the framing headers, which lbd re-emits itself. Upstream requests are
//! always HTTP/1.1 in origin-form, with `Host` and `X-Forwarded-For` set by
//! lbd. Any downstream protocol that can produce a [`RequestView`] reuses
//! the request side.

use std::net::IpAddr;

use super::request::RequestView;
use super::response::ResponseView;
use super::{
    end_to_end, is_hop_by_hop, named_by_connection, push_header, push_u64, trim_ows, Framing,
};

/// A header lbd adds: name and value.
pub type Header = (Vec<u8>, Vec<u8>);

/// What the upstream head needs besides the request.
#[derive(Debug, Clone, Copy)]
pub struct Forwarding<'a> {
    /// The client's address, appended to `X-Forwarded-For`.
    pub client_ip: IpAddr,
    /// Host to send when the client sent none (HTTP/1.0).
    pub default_host: &'a [u8],
    /// Host to send instead of the client's (a route's `set_host`, else the
    /// group's `host`).
    pub host_override: Option<&'a [u8]>,
    /// Client headers not to forward (lowercase names).
    pub remove: &'a [Vec<u8>],
    /// Headers to add after the client's.
    pub add: &'a [Header],
    /// The `Upgrade` value to forward (with `Connection: upgrade`) when the
    /// request's upgrade is allowed; `None` strips it as a hop-by-hop header.
    pub upgrade: Option<&'a [u8]>,
    /// The forwarding headers lbd writes, and whether the client's are kept.
    pub headers: ForwardHeaders<'a>,
}

impl<'a> Forwarding<'a> {
    /// Forwarding with nothing removed or added, and only `X-Forwarded-For`
    /// appended to the client's ([`ForwardHeaders::APPEND_XFF`]).
    pub fn new(client_ip: IpAddr, default_host: &'a [u8], host_override: Option<&'a [u8]>) -> Self {
        Forwarding {
            client_ip,
            default_host,
            host_override,
            remove: &[],
            add: &[],
            upgrade: None,
            headers: ForwardHeaders::APPEND_XFF,
        }
    }
}

/// The forwarding headers of an upstream head: `X-Forwarded-For`,
/// `X-Forwarded-Proto`, `X-Forwarded-Host`, RFC 7239 `Forwarded`, and the
/// request id.
///
/// From a trusted client (`trusted`), the client's `X-Forwarded-For` and
/// `Forwarded` chains are kept and lbd's element appended; its
/// `X-Forwarded-Proto` and `X-Forwarded-Host` are kept as they are (the
/// first proxy saw the original scheme and host) and lbd writes its own
/// only where the client sent none. From any other client they are all
/// dropped and only lbd's are sent, so a client cannot make the backend
/// believe it came from elsewhere. A forwarding header lbd does not write
/// (`forwarded: rfc7239` leaves the `X-Forwarded-*` ones, say) passes
/// through from a trusted client and is dropped from others. The client's
/// request-id lines are always dropped: lbd writes the one it decided on.
#[derive(Debug, Clone, Copy)]
pub struct ForwardHeaders<'a> {
    /// The client may set forwarding headers (a trusted proxy).
    pub trusted: bool,
    /// Write `X-Forwarded-For`.
    pub xff: bool,
    /// Write `X-Forwarded-Proto` and `X-Forwarded-Host`.
    pub proto_host: bool,
    /// Write RFC 7239 `Forwarded`.
    pub rfc7239: bool,
    /// The client connection is TLS (`https`, else `http`).
    pub https: bool,
    /// The request-id header's name and the id to send, if one.
    pub request_id: Option<(&'a [u8], Option<&'a [u8]>)>,
}

impl ForwardHeaders<'_> {
    /// What lbd did before forwarding was configurable: every client's
    /// `X-Forwarded-For` appended to, nothing else written or dropped.
    pub const APPEND_XFF: ForwardHeaders<'static> = ForwardHeaders {
        trusted: true,
        xff: true,
        proto_host: false,
        rfc7239: false,
        https: false,
        request_id: None,
    };

    fn proto(&self) -> &'static [u8] {
        if self.https {
            b"https"
        } else {
            b"http"
        }
    }
}

/// The forwarding headers, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fwd {
    For,
    Proto,
    Host,
    Forwarded,
    RequestId,
}

/// Which forwarding header `name` is, if any (lengths first: most names
/// are none of them).
fn forwarding_header(name: &[u8], request_id: Option<&[u8]>) -> Option<Fwd> {
    let kind = match name.len() {
        9 if name.eq_ignore_ascii_case(b"forwarded") => Some(Fwd::Forwarded),
        15 if name.eq_ignore_ascii_case(b"x-forwarded-for") => Some(Fwd::For),
        16 if name.eq_ignore_ascii_case(b"x-forwarded-host") => Some(Fwd::Host),
        17 if name.eq_ignore_ascii_case(b"x-forwarded-proto") => Some(Fwd::Proto),
        _ => None,
    };
    kind.or_else(|| {
        request_id
            .filter(|r| name.eq_ignore_ascii_case(r))
            .map(|_| Fwd::RequestId)
    })
}

/// Writes the HTTP/1.1 head lbd sends upstream for `req` (appending to
/// `out`).
pub fn write_upstream_head(req: &RequestView<'_>, fwd: &Forwarding<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(req.method);
    out.push(b' ');
    out.extend_from_slice(req.path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host_out = fwd
        .host_override
        .or(req.authority)
        .or(req.host)
        .unwrap_or(fwd.default_host);
    push_header(out, b"Host", host_out);
    let fh = &fwd.headers;
    let rid_name = fh.request_id.map(|(name, _)| name);
    let mut xff_written = false;
    let mut forwarded_written = false;
    // A trusted client's own X-Forwarded-Proto / -Host stand.
    let mut proto_seen = false;
    let mut host_seen = false;
    for h in req.headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect")
        {
            continue;
        }
        match forwarding_header(name, rid_name) {
            None => {}
            Some(Fwd::RequestId) => continue,
            Some(_) if !fh.trusted => continue,
            Some(Fwd::For) if fh.xff => {
                // Merge every XFF line into one, then append the client
                // address; emitted once, unless Connection names it.
                if !xff_written && !named_by_connection(req.headers, name) {
                    xff_written = true;
                    write_xff(out, req.headers, fwd.client_ip);
                }
                continue;
            }
            Some(Fwd::Forwarded) if fh.rfc7239 => {
                if !forwarded_written && !named_by_connection(req.headers, name) {
                    forwarded_written = true;
                    write_forwarded(out, req, fwd);
                }
                continue;
            }
            Some(Fwd::Proto) if fh.proto_host => {
                proto_seen |= !named_by_connection(req.headers, name);
            }
            Some(Fwd::Host) if fh.proto_host => {
                host_seen |= !named_by_connection(req.headers, name);
            }
            // Trusted, and not one lbd writes: passes through.
            Some(_) => {}
        }
        if named_by_connection(req.headers, name)
            || fwd.remove.iter().any(|r| name.eq_ignore_ascii_case(r))
        {
            continue;
        }
        push_header(out, name, h.value);
    }
    for (name, value) in fwd.add {
        push_header(out, name, value);
    }
    if let Some(u) = fwd.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        push_header(out, b"Upgrade", u);
    }
    if fh.xff && !xff_written {
        write_xff(out, &[], fwd.client_ip);
    }
    if fh.proto_host {
        if !proto_seen {
            push_header(out, b"X-Forwarded-Proto", fh.proto());
        }
        if let (false, Some(host)) = (host_seen, req.target_host()) {
            push_header(out, b"X-Forwarded-Host", host);
        }
    }
    if fh.rfc7239 && !forwarded_written {
        write_forwarded(
            out,
            &RequestView {
                headers: &[],
                ..*req
            },
            fwd,
        );
    }
    if let Some((name, Some(id))) = fh.request_id {
        push_header(out, name, id);
    }
    match req.head.framing {
        Framing::Length(n) => write_content_length(out, n),
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::None | Framing::UntilClose => {
            // A body-less request that announced `Content-Length: 0` keeps it:
            // some origins require a length on POST.
            if req.content_length == Some(0) {
                out.extend_from_slice(b"Content-Length: 0\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

fn write_xff(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], client: IpAddr) {
    out.extend_from_slice(b"X-Forwarded-For: ");
    push_chain(out, headers, "x-forwarded-for");
    push_ip(out, client);
    out.extend_from_slice(b"\r\n");
}

/// The values of every `name` line in `headers`, each followed by `, `:
/// a list-valued header's existing elements, merged into one line.
fn push_chain(out: &mut Vec<u8>, headers: &[httparse::Header<'_>], name: &str) {
    for h in headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)) {
        let v = trim_ows(h.value);
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        // The common case without the formatting machinery (it showed in
        // the profile).
        IpAddr::V4(a) => {
            for (i, o) in a.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, u64::from(*o));
            }
        }
        IpAddr::V6(a) => {
            use std::io::Write;
            let _ = write!(out, "{a}");
        }
    }
}

/// `Forwarded: <the client's elements, >for=…;host=…;proto=…` (RFC 7239):
/// the client's lines (those of `req.headers`) joined first.
fn write_forwarded(out: &mut Vec<u8>, req: &RequestView<'_>, fwd: &Forwarding<'_>) {
    out.extend_from_slice(b"Forwarded: ");
    push_chain(out, req.headers, "forwarded");
    out.extend_from_slice(b"for=");
    match fwd.client_ip {
        // §6: an IPv6 node is bracketed, and so quoted.
        IpAddr::V6(_) => {
            out.extend_from_slice(b"\"[");
            push_ip(out, fwd.client_ip);
            out.extend_from_slice(b"]\"");
        }
        IpAddr::V4(_) => push_ip(out, fwd.client_ip),
    }
    if let Some(host) = req.target_host() {
        out.extend_from_slice(b";host=");
        push_token_or_quoted(out, host);
    }
    out.extend_from_slice(b";proto=");
    out.extend_from_slice(fwd.headers.proto());
    out.extend_from_slice(b"\r\n");
}

/// A value as an RFC 9110 token if it is one, else a quoted string.
fn push_token_or_quoted(out: &mut Vec<u8>, v: &[u8]) {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !v.is_empty() && v.iter().all(|&b| tchar(b)) {
        out.extend_from_slice(v);
        return;
    }
    out.push(b'"');
    for &b in v {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out.push(b'"');
}

/// What an HTTP/1 client's side of the exchange needs to frame a response.
#[derive(Debug, Clone, Copy)]
pub struct ClientContext {
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// lbd will close the client connection after this response.
    pub close_client: bool,
}

/// How the client's response is framed, decided while writing its head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientHead {
    /// The chunked body must be de-chunked (HTTP/1.0 client).
    pub dechunk: bool,
    /// The client connection closes after this response.
    pub close_client: bool,
}

/// A `Set-Cookie` for sticky sessions.
#[derive(Debug, Clone, Copy)]
pub struct SetCookie<'a> {
    /// Cookie name.
    pub name: &'a [u8],
    /// Its value (a stable backend id).
    pub value: [u8; 16],
    /// `Max-Age` in seconds; `None` for a session cookie.
    pub max_age: Option<u64>,
}

/// What lbd adds to a final response head.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResponseExtras<'a> {
    /// A route's `add_response_headers`.
    pub headers: &'a [Header],
    /// The sticky cookie to set, if any.
    pub set_cookie: Option<SetCookie<'a>>,
    /// The request id echoed to the client: header name and value.
    pub request_id: Option<(&'a [u8], &'a [u8])>,
}

/// Writes the HTTP/1 response head a client gets for `resp` (appending to
/// `out`), with `extras` on a final response. An interim (1xx) head goes to
/// HTTP/1.1 clients only (RFC 9110 §15.2): for HTTP/1.0 nothing is written.
pub fn write_client_head(
    resp: &ResponseView<'_>,
    ctx: ClientContext,
    extras: &ResponseExtras<'_>,
    out: &mut Vec<u8>,
) -> ClientHead {
    let h = &resp.head;
    if h.interim {
        // Relayed with its headers (103 Early Hints' `Link`), without the
        // hop-by-hop ones; an HTTP/1.0 client gets none (RFC 9110 §15.2).
        if !ctx.http10 {
            write_status_line(out, h.status, resp.reason);
            for hd in resp.headers {
                let name = hd.name.as_bytes();
                if end_to_end(resp.headers, name) {
                    push_header(out, name, hd.value);
                }
            }
            out.extend_from_slice(b"\r\n");
        }
        return ClientHead {
            dechunk: false,
            close_client: ctx.close_client,
        };
    }
    if h.switched {
        return write_switch_head(resp, extras, out);
    }
    let dechunk = h.framing == Framing::Chunked && ctx.http10;
    let close_client = ctx.close_client || ctx.http10 || h.framing == Framing::UntilClose;
    write_status_line(out, h.status, resp.reason);
    for hd in resp.headers {
        let name = hd.name.as_bytes();
        if !end_to_end(resp.headers, name)
            // The backend's echo of the request id: lbd writes its own.
            || extras
                .request_id
                .is_some_and(|(n, _)| name.eq_ignore_ascii_case(n))
        {
            continue;
        }
        push_header(out, name, hd.value);
    }
    write_extras(out, extras);
    match h.framing {
        Framing::Chunked if !dechunk => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Length(n) => write_content_length(out, n),
        // HEAD and 304 carry the length the full response would have had.
        Framing::None if h.status != 204 => {
            if let Some(n) = resp.content_length {
                write_content_length(out, n);
            }
        }
        _ => {}
    }
    if close_client {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ClientHead {
        dechunk,
        close_client,
    }
}

/// The `101` a client gets: the backend's headers without hop-by-hop ones,
/// then `Connection: upgrade` and the `Upgrade` the backend switched to; no
/// framing (the connection is a tunnel from here on).
fn write_switch_head(
    resp: &ResponseView<'_>,
    extras: &ResponseExtras<'_>,
    out: &mut Vec<u8>,
) -> ClientHead {
    write_status_line(out, resp.head.status, resp.reason);
    for hd in resp.headers {
        let name = hd.name.as_bytes();
        if !end_to_end(resp.headers, name) {
            continue;
        }
        push_header(out, name, hd.value);
    }
    write_extras(out, extras);
    out.extend_from_slice(b"Connection: upgrade\r\n");
    push_header(out, b"Upgrade", resp.upgrade.unwrap_or_default());
    out.extend_from_slice(b"\r\n");
    ClientHead {
        dechunk: false,
        close_client: false,
    }
}

fn write_extras(out: &mut Vec<u8>, extras: &ResponseExtras<'_>) {
    for (name, value) in extras.headers {
        push_header(out, name, value);
    }
    if let Some((name, value)) = extras.request_id {
        push_header(out, name, value);
    }
    if let Some(c) = &extras.set_cookie {
        out.extend_from_slice(b"Set-Cookie: ");
        out.extend_from_slice(c.name);
        out.push(b'=');
        out.extend_from_slice(&c.value);
        out.extend_from_slice(b"; Path=/; HttpOnly");
        if let Some(age) = c.max_age {
            out.extend_from_slice(b"; Max-Age=");
            push_u64(out, age);
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn write_content_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    push_u64(out, n);
    out.extend_from_slice(b"\r\n");
}

fn write_status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::super::request::Parsed;
    use super::super::response::{parse_response, ResponseError};
    use super::*;

    /// The request side of a test exchange.
    #[derive(Clone, Copy)]
    struct RequestContext {
        is_head: bool,
        http10: bool,
        close_client: bool,
    }

    /// The neutral head and the client's framing, side by side.
    #[derive(Debug)]
    struct Head {
        framing: Framing,
        upstream_reusable: bool,
        interim: bool,
        dechunk: bool,
        close_client: bool,
    }

    const CTX: RequestContext = RequestContext {
        is_head: false,
        http10: false,
        close_client: false,
    };

    fn parse(input: &[u8], ctx: RequestContext) -> Result<(Head, String), ResponseError> {
        let mut out = Vec::new();
        let cctx = ClientContext {
            http10: ctx.http10,
            close_client: ctx.close_client,
        };
        match parse_response(input, ctx.is_head, |v| {
            write_client_head(v, cctx, &ResponseExtras::default(), &mut out)
        })? {
            Parsed::Complete((h, c)) => Ok((
                Head {
                    framing: h.framing,
                    upstream_reusable: h.upstream_reusable,
                    interim: h.interim,
                    dechunk: c.dechunk,
                    close_client: c.close_client,
                },
                String::from_utf8(out).unwrap(),
            )),
            Parsed::Partial => panic!("partial"),
        }
    }

    #[test]
    fn content_length_response() {
        let (h, out) = parse(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello",
            CTX,
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.upstream_reusable && !h.close_client);
        assert_eq!(out, "HTTP/1.1 200 OK\r\nX: y\r\nContent-Length: 5\r\n\r\n");
    }

    #[test]
    fn chunked_passthrough_and_dechunk_for_http10() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let (h, out) = parse(r, CTX).unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(!h.dechunk && out.contains("Transfer-Encoding: chunked"));
        let ctx10 = RequestContext {
            http10: true,
            close_client: true,
            ..CTX
        };
        let (h, out) = parse(r, ctx10).unwrap();
        assert!(h.dechunk && h.close_client && !out.contains("Transfer-Encoding"));
        assert!(out.contains("Connection: close"));
    }

    #[test]
    fn close_delimited() {
        let (h, out) = parse(b"HTTP/1.1 200 OK\r\n\r\n", CTX).unwrap();
        assert_eq!(h.framing, Framing::UntilClose);
        assert!(!h.upstream_reusable && h.close_client);
        assert!(out.contains("Connection: close"));
    }

    #[test]
    fn bodyless_responses() {
        let head = RequestContext {
            is_head: true,
            ..CTX
        };
        let (h, out) = parse(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", head).unwrap();
        assert_eq!(h.framing, Framing::None);
        assert!(out.contains("Content-Length: 99"));
        let (h, _) = parse(b"HTTP/1.1 204 No Content\r\n\r\n", CTX).unwrap();
        assert_eq!(h.framing, Framing::None);
        assert!(h.upstream_reusable);
        let (h, _) = parse(b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", CTX).unwrap();
        assert_eq!(h.framing, Framing::None);
    }

    #[test]
    fn interim() {
        let (h, out) = parse(b"HTTP/1.1 100 Continue\r\n\r\n", CTX).unwrap();
        assert!(h.interim);
        assert_eq!(out, "HTTP/1.1 100 Continue\r\n\r\n");
        let (h, out) = parse(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: x\r\nX: 1\r\n\r\n",
            CTX,
        )
        .unwrap();
        assert!(h.interim);
        assert_eq!(
            out,
            "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
        );
        assert_eq!(
            parse(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", CTX).unwrap_err(),
            ResponseError::UnexpectedSwitch
        );
    }

    #[test]
    fn upstream_close_and_http10() {
        let (h, _) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
            CTX,
        )
        .unwrap();
        assert!(!h.upstream_reusable && !h.close_client);
        let (h, _) = parse(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", CTX).unwrap();
        assert!(!h.upstream_reusable);
    }

    #[test]
    fn hop_by_hop_stripped() {
        let (_, out) = parse(
            b"HTTP/1.1 200 OK\r\nConnection: X-A\r\nX-A: 1\r\nKeep-Alive: t=5\r\nContent-Length: 0\r\n\r\n",
            CTX,
        )
        .unwrap();
        assert!(!out.contains("X-A") && !out.contains("Keep-Alive"), "{out}");
    }

    #[test]
    fn bad_framing_refused() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nA : b\r\n\r\n",
            b"HTTP/1.1 99 Odd\r\n\r\n",
            b"HTTP/1.1 2000 Odd\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(
                parse(bad, CTX).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
    /// The upstream head for `req` from `client` with `fh`.
    fn upstream(req: &[u8], client: &str, fh: ForwardHeaders<'_>) -> String {
        use super::super::request::{parse_request, HeadLimits};
        let limits = HeadLimits {
            max_head_bytes: 8192,
            max_headers: 64,
        };
        let mut out = Vec::new();
        let fwd = Forwarding {
            headers: fh,
            ..Forwarding::new(client.parse().unwrap(), b"backend:80", None)
        };
        match parse_request(req, limits, |v| write_upstream_head(v, &fwd, &mut out)) {
            Ok(Parsed::Complete(())) => String::from_utf8(out).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    const STD: ForwardHeaders<'static> = ForwardHeaders {
        trusted: false,
        xff: true,
        proto_host: true,
        rfc7239: false,
        https: false,
        request_id: None,
    };

    const SPOOF: &[u8] = b"GET / HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6\r\n\
        X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\n\
        X-Request-Id: spoof\r\nX-Other: o\r\n\r\n";

    #[test]
    fn untrusted_forwarding_headers_replaced() {
        let out = upstream(SPOOF, "192.0.2.9", STD);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: app.example\r\nX-Request-Id: spoof\r\nX-Other: o\r\n\
             X-Forwarded-For: 192.0.2.9\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: app.example\r\n\r\n"
        );
        let both = ForwardHeaders {
            rfc7239: true,
            https: true,
            request_id: Some((b"X-Request-Id", Some(b"abc"))),
            ..STD
        };
        let out = upstream(SPOOF, "2001:db8::1", both);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: app.example\r\nX-Other: o\r\n\
             X-Forwarded-For: 2001:db8::1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: app.example\r\n\
             Forwarded: for=\"[2001:db8::1]\";host=app.example;proto=https\r\nX-Request-Id: abc\r\n\r\n"
        );
        // rfc7239 only: the X-Forwarded-* of an untrusted client are dropped.
        let rfc = ForwardHeaders {
            xff: false,
            proto_host: false,
            rfc7239: true,
            ..STD
        };
        let out = upstream(SPOOF, "192.0.2.9", rfc);
        assert!(!out.contains("X-Forwarded"), "{out}");
        assert!(out.contains("\r\nForwarded: for=192.0.2.9;host=app.example;proto=http\r\n"));
        // none: nothing written, nothing of the client's kept.
        let none = ForwardHeaders {
            rfc7239: false,
            ..rfc
        };
        let out = upstream(SPOOF, "192.0.2.9", none);
        assert!(!out.contains("orwarded"), "{out}");
    }

    #[test]
    fn trusted_forwarding_headers_kept_and_appended() {
        let trusted = ForwardHeaders {
            trusted: true,
            rfc7239: true,
            request_id: Some((b"X-Request-Id", Some(b"spoof"))),
            ..STD
        };
        let out = upstream(SPOOF, "10.0.0.1", trusted);
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: app.example\r\nX-Forwarded-For: 6.6.6.6, 10.0.0.1\r\n\
             X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\
             Forwarded: for=6.6.6.6, for=10.0.0.1;host=app.example;proto=http\r\nX-Other: o\r\n\
             X-Request-Id: spoof\r\n\r\n"
        );
        // What lbd does not write passes through from a trusted client.
        let rfc = ForwardHeaders {
            xff: false,
            proto_host: false,
            ..trusted
        };
        let out = upstream(SPOOF, "10.0.0.1", rfc);
        assert!(out.contains("\r\nX-Forwarded-For: 6.6.6.6\r\n"), "{out}");
        assert!(out.contains("\r\nX-Forwarded-Host: evil\r\n"), "{out}");
        // A header Connection names counts as absent.
        let out = upstream(
            b"GET / HTTP/1.1\r\nHost: h:8080\r\nConnection: X-Forwarded-Proto\r\nX-Forwarded-Proto: https\r\n\r\n",
            "10.0.0.1",
            trusted,
        );
        assert!(out.contains("\r\nX-Forwarded-Proto: http\r\n"), "{out}");
        assert!(!out.contains("https"), "{out}");
        assert!(out.contains(";host=\"h:8080\";"), "{out}");
    }

    #[test]
    fn request_id_echoed_once() {
        let extras = ResponseExtras {
            request_id: Some((b"X-Request-Id", b"r1")),
            ..ResponseExtras::default()
        };
        let mut out = Vec::new();
        let input = b"HTTP/1.1 200 OK\r\nx-request-id: theirs\r\nContent-Length: 0\r\n\r\n";
        let cctx = ClientContext {
            http10: false,
            close_client: false,
        };
        let r = parse_response(input, false, |v| {
            write_client_head(v, cctx, &extras, &mut out)
        });
        assert!(matches!(r, Ok(Parsed::Complete(_))));
        let out = String::from_utf8(out).unwrap();
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nX-Request-Id: r1\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn xff_formats_v4_and_v6() {
        let mut out = Vec::new();
        write_xff(&mut out, &[], "192.0.2.255".parse().unwrap());
        write_xff(&mut out, &[], "0.0.0.0".parse().unwrap());
        write_xff(&mut out, &[], "2001:db8::1".parse().unwrap());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-Forwarded-For: 192.0.2.255\r\nX-Forwarded-For: 0.0.0.0\r\nX-Forwarded-For: 2001:db8::1\r\n"
        );
    }
}
