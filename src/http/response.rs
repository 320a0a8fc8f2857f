//! Response heads from upstreams: parse with the same scrutiny as requests,
//! decide framing and reuse, write the head the client gets.
//!
//! An upstream response whose framing is ambiguous (Content-Length with
//! Transfer-Encoding, duplicate or malformed Content-Length, a coding other
//! than chunked) is refused with [`ResponseError`]: the client gets 502 and the
//! upstream connection is closed, never reused.

use std::mem::MaybeUninit;

use super::{
    is_hop_by_hop, list_elements, named_by_connection, parse_content_length, push_header,
    transfer_coding, Framing, TransferCoding,
};

/// Most header lines accepted in an upstream response.
pub const MAX_RESPONSE_HEADERS: usize = 128;
/// Largest upstream response head.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// Why an upstream response is refused (the client gets 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    /// Syntax error in the status line or headers.
    #[error("invalid response head: {0}")]
    Malformed(&'static str),
    /// Ambiguous or invalid framing.
    #[error("invalid response framing: {0}")]
    Framing(&'static str),
    /// Head larger than [`MAX_RESPONSE_HEAD_BYTES`] or too many headers.
    #[error("response head too large")]
    TooLarge,
    /// `101 Switching Protocols` although lbd never forwards Upgrade.
    #[error("unexpected 101 Switching Protocols")]
    UnexpectedSwitch,
}

/// What the client side needs from the request to frame the response.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext {
    /// The request was HEAD.
    pub is_head: bool,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// lbd will close the client connection after this response.
    pub close_client: bool,
}

/// The parts of an upstream response the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Length of the head in the input.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// An interim (1xx) response: forward it and read the next head.
    pub interim: bool,
    /// Body framing as sent by the upstream.
    pub framing: Framing,
    /// The upstream connection may be reused after the body (keep-alive, not
    /// close-delimited).
    pub upstream_reusable: bool,
    /// The chunked body must be de-chunked for an HTTP/1.0 client.
    pub dechunk: bool,
    /// The client connection must be closed after this response.
    pub close_client: bool,
}

/// Parses an upstream response head; on success writes the client head into
/// `out` (appending). For interim responses `out` receives the 1xx head only
/// when the client is HTTP/1.1.
pub fn parse_response(
    buf: &[u8],
    ctx: RequestContext,
    out: &mut Vec<u8>,
) -> Result<super::request::Parsed<ResponseHead>, ResponseError> {
    use super::request::Parsed;
    let mut storage =
        [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let mut cfg = httparse::ParserConfig::default();
    // Strict: no obs-fold, no space before colon, no invalid headers skipped.
    cfg.allow_obsolete_multiline_headers_in_responses(false);
    cfg.allow_spaces_after_header_name_in_responses(false);
    let head_len = match cfg.parse_response_with_uninit_headers(&mut resp, buf, &mut storage) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_RESPONSE_HEAD_BYTES {
                Err(ResponseError::TooLarge)
            } else {
                Ok(Parsed::Partial)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooLarge),
        Err(_) => return Err(ResponseError::Malformed("syntax")),
    };
    let (Some(code), Some(minor)) = (resp.code, resp.version) else {
        return Err(ResponseError::Malformed("status line"));
    };
    if !(100..=599).contains(&code) {
        return Err(ResponseError::Malformed("status code out of range"));
    }
    let headers: &[httparse::Header<'_>] = resp.headers;
    let reason = resp.reason.unwrap_or("");

    if code == 101 {
        return Err(ResponseError::UnexpectedSwitch);
    }
    let interim = (100..200).contains(&code);

    let mut content_length: Option<u64> = None;
    let mut has_te = false;
    let mut upstream_close = minor == 0;
    for h in headers {
        let name = h.name.as_bytes();
        if h.value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(ResponseError::Malformed(
                "control character in header value",
            ));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(ResponseError::Framing("duplicate Content-Length"));
            }
            content_length = Some(
                parse_content_length(h.value)
                    .ok_or(ResponseError::Framing("invalid Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            has_te = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for tok in list_elements(h.value) {
                if tok.eq_ignore_ascii_case(b"close") {
                    upstream_close = true;
                } else if minor == 0 && tok.eq_ignore_ascii_case(b"keep-alive") {
                    upstream_close = false;
                }
            }
        }
    }

    if interim {
        // 1xx: no body, relay to HTTP/1.1 clients only (RFC 9110 §15.2).
        if !ctx.http10 {
            write_status_line(out, code, reason);
            out.extend_from_slice(b"\r\n");
        }
        return Ok(Parsed::Complete(ResponseHead {
            head_len,
            status: code,
            interim: true,
            framing: Framing::None,
            upstream_reusable: !upstream_close,
            dechunk: false,
            close_client: ctx.close_client,
        }));
    }

    let bodyless = ctx.is_head || code == 204 || code == 304;
    let framing = if has_te {
        if content_length.is_some() {
            return Err(ResponseError::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        let values = headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
            .map(|h| h.value);
        match transfer_coding(values) {
            TransferCoding::Chunked => Framing::Chunked,
            TransferCoding::Invalid => {
                return Err(ResponseError::Framing("invalid Transfer-Encoding"))
            }
            TransferCoding::Unsupported => {
                return Err(ResponseError::Framing("unsupported Transfer-Encoding"))
            }
        }
    } else {
        match content_length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    let body_framing = if bodyless {
        Framing::None
    } else {
        match framing {
            Framing::Length(0) => Framing::None,
            f => f,
        }
    };

    let dechunk = body_framing == Framing::Chunked && ctx.http10;
    let close_client = ctx.close_client || ctx.http10 || body_framing == Framing::UntilClose;
    let upstream_reusable = !upstream_close && body_framing != Framing::UntilClose;

    write_status_line(out, code, reason);
    for h in headers {
        let name = h.name.as_bytes();
        if is_hop_by_hop(name) || named_by_connection(headers, name) {
            continue;
        }
        push_header(out, name, h.value);
    }
    match (body_framing, framing) {
        (Framing::Chunked, _) if !dechunk => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        (Framing::Length(n), _) => {
            out.extend_from_slice(b"Content-Length: ");
            super::push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        // HEAD and 304 carry the length the full response would have had.
        (Framing::None, Framing::Length(n)) if code != 204 => {
            out.extend_from_slice(b"Content-Length: ");
            super::push_u64(out, n);
            out.extend_from_slice(b"\r\n");
        }
        _ => {}
    }
    if close_client {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");

    Ok(Parsed::Complete(ResponseHead {
        head_len,
        status: code,
        interim: false,
        framing: body_framing,
        upstream_reusable,
        dechunk,
        close_client,
    }))
}

fn write_status_line(out: &mut Vec<u8>, code: u16, reason: &str) {
    out.extend_from_slice(b"HTTP/1.1 ");
    super::push_u64(out, u64::from(code));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::super::request::Parsed;
    use super::*;

    const CTX: RequestContext = RequestContext {
        is_head: false,
        http10: false,
        close_client: false,
    };

    fn parse(input: &[u8], ctx: RequestContext) -> Result<(ResponseHead, String), ResponseError> {
        let mut out = Vec::new();
        match parse_response(input, ctx, &mut out)? {
            Parsed::Complete(h) => Ok((h, String::from_utf8(out).unwrap())),
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
}
