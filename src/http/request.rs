//! Request heads: parse strictly, decide framing, hand a neutral view on.
//!
//! [`parse_request`] takes the bytes buffered from a client. It either asks for
//! more, rejects the request with the status the client must get (nothing of a
//! rejected request ever reaches a backend), or hands a [`RequestView`] to the
//! caller's closure: the protocol-neutral decisions ([`RequestHead`]) plus the
//! method, the origin-form path, the authority and the headers, borrowed from
//! the input. The view lives only inside the closure (the header array is on
//! this function's stack), which is where the caller routes the request and
//! writes the upstream head ([`super::rewrite`]): no allocation per request.

use std::mem::MaybeUninit;

use super::{list_elements, parse_content_length, transfer_coding, Framing, TransferCoding};
use crate::config::MAX_HEADERS_CEILING;

/// Why a request is rejected; each maps to the status the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Malformed syntax or ambiguous framing: 400, then close.
    #[error("bad request: {0}")]
    Bad(&'static str),
    /// A transfer coding lbd does not implement: 501.
    #[error("unsupported transfer coding")]
    UnsupportedCoding,
    /// Head larger than `limits.max_head_bytes`: 431.
    #[error("request head too large")]
    HeadTooLarge,
    /// More header lines than `limits.max_headers`: 431.
    #[error("too many request headers")]
    TooManyHeaders,
    /// An `Expect` other than `100-continue`: 417.
    #[error("unsupported expectation")]
    Expectation,
    /// CONNECT: lbd is not a forward proxy. 405.
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl RequestError {
    /// The status code sent to the client.
    pub fn status(self) -> u16 {
        match self {
            RequestError::Bad(_) => 400,
            RequestError::UnsupportedCoding => 501,
            RequestError::HeadTooLarge | RequestError::TooManyHeaders => 431,
            RequestError::Expectation => 417,
            RequestError::MethodNotAllowed => 405,
        }
    }
}

/// The parts of a request the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Length of the head in the input, including the final empty line.
    pub head_len: usize,
    /// Request body framing ([`Framing::UntilClose`] never occurs).
    pub framing: Framing,
    /// HEAD: the response has no body whatever its headers say.
    pub is_head: bool,
    /// RFC 9110 §9.2.2 idempotent method: safe to retry once sent.
    pub idempotent: bool,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// HTTP/1.0 client (responses are de-chunked; connection closed after).
    pub http10: bool,
    /// `Expect: 100-continue` from an HTTP/1.1 client with a body.
    pub expect_continue: bool,
}

/// Parser limits.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// Largest head in bytes.
    pub max_head_bytes: usize,
    /// Most header lines.
    pub max_headers: usize,
}

/// A parsed request head, borrowed from the input: what routing and the
/// upstream head need. HTTP/2 streams build the same view from their decoded
/// headers.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    /// The neutral decisions.
    pub head: RequestHead,
    /// The method.
    pub method: &'a [u8],
    /// The path (and query) to forward: origin-form, or `*`.
    pub path: &'a [u8],
    /// The authority of an absolute-form target (it replaces Host).
    pub authority: Option<&'a [u8]>,
    /// The `Host` header.
    pub host: Option<&'a [u8]>,
    /// Every header line as received.
    pub headers: &'a [httparse::Header<'a>],
    /// The `Content-Length` value, if one was sent.
    pub content_length: Option<u64>,
    /// The `Upgrade` list of an HTTP/1.1 GET that also says `Connection:
    /// upgrade` (RFC 9110 §7.8); `None` otherwise.
    pub upgrade: Option<&'a [u8]>,
}

impl RequestView<'_> {
    /// The first protocol of the `Upgrade` list, if an upgrade was asked
    /// (`websocket`, `h2c`...): lower-case compared by callers.
    pub fn upgrade_protocol(&self) -> Option<&[u8]> {
        let name = super::upgrade_name(self.upgrade?);
        (!name.is_empty()).then_some(name)
    }

    /// The host the request names: the absolute-form authority, else Host.
    pub fn target_host(&self) -> Option<&[u8]> {
        self.authority.or(self.host)
    }
}

/// Result of feeding buffered bytes to the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed<T> {
    /// A complete head.
    Complete(T),
    /// Need more bytes.
    Partial,
}

/// Parses the request head at the start of `buf`; a complete head is handed
/// to `f` as a [`RequestView`], and `f`'s result returned.
pub fn parse_request<R>(
    buf: &[u8],
    limits: HeadLimits,
    f: impl FnOnce(&RequestView<'_>) -> R,
) -> Result<Parsed<R>, RequestError> {
    let mut storage =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS_CEILING];
    let max_headers = limits.max_headers.min(MAX_HEADERS_CEILING);
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut storage[..max_headers]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= limits.max_head_bytes {
                Err(RequestError::HeadTooLarge)
            } else {
                Ok(Parsed::Partial)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooManyHeaders),
        Err(e) => return Err(RequestError::Bad(httparse_reason(e))),
    };
    if head_len > limits.max_head_bytes {
        return Err(RequestError::HeadTooLarge);
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Bad("incomplete request line"));
    };
    let headers: &[httparse::Header<'_>] = req.headers;
    let http10 = minor == 0;
    let method = method.as_bytes();
    let target = target.as_bytes();

    if method == b"CONNECT" {
        return Err(RequestError::MethodNotAllowed);
    }

    // Request target: origin-form, absolute-form (authority replaces Host,
    // RFC 9112 §3.2.2), or `*` for OPTIONS.
    let (path, authority) = split_target(method, target)?;

    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut host: Option<&[u8]> = None;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut upgrade_token = false;
    let mut upgrade: Option<&[u8]> = None;
    let mut expect_continue = false;
    for h in headers {
        let name = h.name.as_bytes();
        let value = h.value;
        if value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(RequestError::Bad("control character in header value"));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(RequestError::Bad("duplicate Content-Length"));
            }
            content_length = Some(
                parse_content_length(value).ok_or(RequestError::Bad("invalid Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            if host.is_some() {
                return Err(RequestError::Bad("duplicate Host"));
            }
            if !valid_host(value) {
                return Err(RequestError::Bad("invalid Host"));
            }
            host = Some(value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for tok in list_elements(value) {
                if tok.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive_token = true;
                } else if tok.eq_ignore_ascii_case(b"upgrade") {
                    upgrade_token = true;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            if upgrade.is_some() {
                return Err(RequestError::Bad("duplicate Upgrade"));
            }
            upgrade = Some(value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            if value.eq_ignore_ascii_case(b"100-continue") {
                // RFC 9110 §10.1.1: ignore Expect from HTTP/1.0 clients.
                expect_continue = !http10;
            } else {
                return Err(RequestError::Expectation);
            }
        }
    }
    let _ = keep_alive_token; // HTTP/1.0 keep-alive is not honoured (RFC 9112 §9.3).

    let framing = if has_te {
        if http10 {
            return Err(RequestError::Bad(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if content_length.is_some() {
            return Err(RequestError::Bad(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let values = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value);
        match transfer_coding(values) {
            TransferCoding::Chunked => Framing::Chunked,
            TransferCoding::Invalid => return Err(RequestError::Bad("invalid Transfer-Encoding")),
            TransferCoding::Unsupported => return Err(RequestError::UnsupportedCoding),
        }
    } else {
        match content_length {
            Some(0) | None => Framing::None,
            Some(n) => Framing::Length(n),
        }
    };

    if !http10 && host.is_none() {
        return Err(RequestError::Bad("missing Host"));
    }

    let is_head = method == b"HEAD";
    let head = RequestHead {
        head_len,
        framing,
        is_head,
        idempotent: matches!(
            method,
            b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
        ),
        keep_alive: !http10 && !close,
        http10,
        expect_continue: expect_continue && framing != Framing::None,
    };
    // RFC 9110 §7.8: an upgrade is asked with `Connection: upgrade` and an
    // `Upgrade` list; lbd tunnels only a GET from an HTTP/1.1 client (a body
    // or HTTP/1.0 upgrade is forwarded as an ordinary request).
    let upgrade = upgrade.filter(|_| upgrade_token && !http10 && method == b"GET");
    Ok(Parsed::Complete(f(&RequestView {
        head,
        method,
        path,
        authority,
        host,
        headers,
        content_length,
        upgrade,
    })))
}

/// Splits a request target into (path to forward, authority if absolute-form).
fn split_target<'a>(
    method: &[u8],
    target: &'a [u8],
) -> Result<(&'a [u8], Option<&'a [u8]>), RequestError> {
    match target.first() {
        Some(b'/') => Ok((target, None)),
        Some(b'*') if target.len() == 1 && method == b"OPTIONS" => Ok((target, None)),
        _ => {
            let rest = strip_prefix_ci(target, b"http://")
                .or_else(|| strip_prefix_ci(target, b"https://"))
                .ok_or(RequestError::Bad("invalid request target"))?;
            let end = rest
                .iter()
                .position(|&b| b == b'/' || b == b'?')
                .unwrap_or(rest.len());
            let authority = &rest[..end];
            if authority.is_empty() || !valid_host(authority) || authority.contains(&b'@') {
                return Err(RequestError::Bad("invalid authority in request target"));
            }
            let path = &rest[end..];
            let path: &[u8] = if path.is_empty() {
                b"/"
            } else if path[0] == b'?' {
                // `http://h?q` has an empty path; forward as `/?q` is not
                // representable without allocating, so refuse it.
                return Err(RequestError::Bad("absolute-form target without path"));
            } else {
                path
            };
            Ok((path, Some(authority)))
        }
    }
}

fn strip_prefix_ci<'a>(s: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if s.len() >= prefix.len() && s[..prefix.len()].eq_ignore_ascii_case(prefix) {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Host: reg-name / IP literal and optional port; no whitespace, no path or
/// userinfo delimiters, no controls.
fn valid_host(v: &[u8]) -> bool {
    v.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'.' | b'-'
                    | b'_'
                    | b':'
                    | b'['
                    | b']'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            )
    })
}

fn httparse_reason(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::super::rewrite::{write_upstream_head, Forwarding};
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_head_bytes: 32 * 1024,
        max_headers: 100,
    };

    fn fwd() -> Forwarding<'static> {
        Forwarding::new("10.0.0.9".parse().unwrap(), b"backend:80", None)
    }

    fn parse(input: &[u8]) -> Result<(RequestHead, String), RequestError> {
        let mut out = Vec::new();
        let parsed = parse_request(input, LIMITS, |v| {
            write_upstream_head(v, &fwd(), &mut out);
            v.head
        })?;
        match parsed {
            Parsed::Complete(h) => Ok((h, String::from_utf8(out).unwrap())),
            Parsed::Partial => panic!("partial"),
        }
    }

    fn status(input: &[u8]) -> u16 {
        parse(input).map(|_| 200).unwrap_or_else(|e| e.status())
    }

    #[test]
    fn simple_get() {
        let (h, out) = parse(b"GET /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::None);
        assert!(h.keep_alive && h.idempotent && !h.http10);
        assert_eq!(
            out,
            "GET /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Forwarded-For: 10.0.0.9\r\n\r\n"
        );
    }

    #[test]
    fn partial_until_complete() {
        let full = b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        for i in 0..full.len() - 5 {
            assert_eq!(
                parse_request(&full[..i], LIMITS, |v| v.head).unwrap(),
                Parsed::Partial,
                "{i}"
            );
        }
        let (h, _) = parse(full).unwrap();
        assert_eq!(h.head_len, full.len() - 5);
        assert_eq!(h.framing, Framing::Length(5));
    }

    #[test]
    fn hop_by_hop_stripped_and_xff_appended() {
        let (_, out) = parse(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Custom\r\nX-Custom: 1\r\n\
              Keep-Alive: 5\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Connection: x\r\n\
              X-Forwarded-For: 1.2.3.4\r\nX-Keep: yes\r\n\r\n",
        )
        .unwrap();
        for gone in [
            "Connection",
            "X-Custom",
            "Keep-Alive",
            "TE:",
            "Upgrade",
            "Proxy-Connection",
        ] {
            assert!(!out.contains(gone), "{gone} in {out}");
        }
        assert!(
            out.contains("X-Forwarded-For: 1.2.3.4, 10.0.0.9\r\n"),
            "{out}"
        );
        assert!(out.contains("X-Keep: yes\r\n"));
    }

    #[test]
    fn connection_cannot_strip_host_or_framing() {
        let (h, out) = parse(
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Host, Content-Length, X-Forwarded-For\r\n\
              Content-Length: 3\r\n\r\n",
        )
        .unwrap();
        assert_eq!(h.framing, Framing::Length(3));
        assert!(out.contains("Host: x\r\n") && out.contains("Content-Length: 3\r\n"));
        assert!(out.contains("X-Forwarded-For: 10.0.0.9\r\n"), "{out}");
    }

    #[test]
    fn host_override_replaces_client_host() {
        let mut out = Vec::new();
        let f = Forwarding {
            host_override: Some(b"one.one.one.one"),
            ..fwd()
        };
        let r = parse_request(b"GET / HTTP/1.1\r\nHost: lb.local\r\n\r\n", LIMITS, |v| {
            write_upstream_head(v, &f, &mut out)
        });
        assert!(matches!(r, Ok(Parsed::Complete(_))));
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("Host: one.one.one.one\r\n") && !out.contains("lb.local"),
            "{out}"
        );
    }

    #[test]
    fn http10() {
        let (h, out) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(h.http10 && !h.keep_alive);
        assert!(
            out.starts_with("GET / HTTP/1.1\r\nHost: backend:80\r\n"),
            "{out}"
        );
        let (h, _) = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn connection_close() {
        let (h, _) = parse(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn chunked_request() {
        let (h, out) =
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        assert!(out.contains("Transfer-Encoding: chunked\r\n"));
    }

    #[test]
    fn absolute_form_uses_authority() {
        let (_, out) = parse(b"GET http://a.example:81/p?q HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
        assert!(
            out.starts_with("GET /p?q HTTP/1.1\r\nHost: a.example:81\r\n"),
            "{out}"
        );
        assert!(!out.contains("Host: b"));
    }

    #[test]
    fn bare_lf_accepted_and_reemitted_crlf() {
        let (_, out) = parse(b"GET / HTTP/1.1\nHost: x\nA: b\n\n").unwrap();
        assert!(out.contains("A: b\r\n"));
    }

    #[test]
    fn expect_continue() {
        let (h, out) = parse(
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        )
        .unwrap();
        assert!(h.expect_continue);
        assert!(!out.contains("Expect"));
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n"),
            417
        );
    }

    #[test]
    fn rejection_matrix() {
        let cases: &[(&[u8], u16)] = &[
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ,chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\n\x01Bad: y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\x00c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\rc\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
            (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /a\x01 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: y\r\n\r\n", 400),
            (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        ];
        for (input, want) in cases {
            assert_eq!(status(input), *want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn limits() {
        let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nA: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 40 * 1024));
        assert_eq!(
            parse_request(&big, LIMITS, |v| v.head),
            Err(RequestError::HeadTooLarge)
        );
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..150 {
            many.extend_from_slice(format!("H{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
    }

    #[test]
    fn underscore_names_are_opaque() {
        let (h, out) =
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer_Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(h.framing, Framing::None);
        assert!(out.contains("Transfer_Encoding: chunked\r\n"));
    }
}
