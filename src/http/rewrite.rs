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
use super::{is_hop_by_hop, named_by_connection, push_header, push_u64, trim_ows, Framing};

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
}

impl<'a> Forwarding<'a> {
    /// Forwarding with nothing removed or added.
    pub fn new(client_ip: IpAddr, default_host: &'a [u8], host_override: Option<&'a [u8]>) -> Self {
        Forwarding {
            client_ip,
            default_host,
            host_override,
            remove: &[],
            add: &[],
            upgrade: None,
        }
    }
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
    let mut xff_written = false;
    for h in req.headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name)
            || name.eq_ignore_ascii_case(b"host")
            || name.eq_ignore_ascii_case(b"expect")
        {
            continue;
        }
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            // Merge every XFF line into one, then append the client address;
            // emitted once, after Connection-named stripping is decided below.
            if !xff_written && !named_by_connection(req.headers, name) {
                xff_written = true;
                write_xff(out, req.headers, fwd.client_ip);
            }
            continue;
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
    if !xff_written {
        write_xff(out, &[], fwd.client_ip);
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
    for h in headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("x-forwarded-for"))
    {
        let v = trim_ows(h.value);
        if !v.is_empty() {
            out.extend_from_slice(v);
            out.extend_from_slice(b", ");
        }
    }
    match client {
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
    out.extend_from_slice(b"\r\n");
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
        if !ctx.http10 {
            write_status_line(out, h.status, resp.reason);
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
        if is_hop_by_hop(name) || named_by_connection(resp.headers, name) {
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
        if is_hop_by_hop(name) || named_by_connection(resp.headers, name) {
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
