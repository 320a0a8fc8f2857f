//! Response heads from upstreams: parse with the same scrutiny as requests,
//! decide framing and reuse, hand a neutral view on.
//!
//! An upstream response whose framing is ambiguous (Content-Length with
//! Transfer-Encoding, duplicate or malformed Content-Length, a coding other
//! than chunked) is refused with [`ResponseError`]: the client gets 502 and the
//! upstream connection is closed, never reused. A complete head is handed to
//! the caller's closure as a [`ResponseView`] (borrowed from the input), where
//! the downstream writes its own response head ([`super::rewrite`] for
//! HTTP/1 clients).

use std::mem::MaybeUninit;

use super::request::Parsed;
use super::{list_elements, parse_content_length, transfer_coding, Framing, TransferCoding};

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

/// The protocol-neutral parts of an upstream response the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    /// Length of the head in the input.
    pub head_len: usize,
    /// Status code.
    pub status: u16,
    /// An interim (1xx) response: forward it and read the next head.
    pub interim: bool,
    /// Body framing as sent by the upstream ([`Framing::None`] for HEAD,
    /// 204, 304 and a zero length).
    pub framing: Framing,
    /// The upstream connection may be reused after the body (keep-alive, not
    /// close-delimited).
    pub upstream_reusable: bool,
    /// `101 Switching Protocols` to the upgrade the request asked for: the
    /// connection becomes a tunnel after this head.
    pub switched: bool,
}

/// A parsed response head, borrowed from the input.
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    /// The neutral decisions.
    pub head: ResponseHead,
    /// The reason phrase.
    pub reason: &'a str,
    /// Every header line as received.
    pub headers: &'a [httparse::Header<'a>],
    /// `Content-Length` as sent (HEAD and 304 carry the full length).
    pub content_length: Option<u64>,
    /// The `Upgrade` value of a `101` (what the connection switched to).
    pub upgrade: Option<&'a [u8]>,
}

/// Parses an upstream response head; a complete head is handed to `f` as a
/// [`ResponseView`] and `f`'s result returned beside the head. `is_head`:
/// the request was HEAD (no body, whatever the headers say).
pub fn parse_response<R>(
    buf: &[u8],
    is_head: bool,
    f: impl FnOnce(&ResponseView<'_>) -> R,
) -> Result<Parsed<(ResponseHead, R)>, ResponseError> {
    parse_response_to(buf, is_head, None, f)
}

/// [`parse_response`] for a request that asked to upgrade to `upgrade` (a
/// lower-case protocol name): a `101` whose `Upgrade` names that protocol
/// is accepted as the switch; any other `101` is refused (RFC 9110 §7.8: a
/// proxy must not switch on an answer to a question nobody asked).
pub fn parse_response_to<R>(
    buf: &[u8],
    is_head: bool,
    upgrade: Option<&[u8]>,
    f: impl FnOnce(&ResponseView<'_>) -> R,
) -> Result<Parsed<(ResponseHead, R)>, ResponseError> {
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
    let fields = scan_headers(resp.headers, minor)?;
    let switched = code == 101;
    if switched && !switches_to(upgrade, fields.upgrade) {
        return Err(ResponseError::UnexpectedSwitch);
    }
    let interim = (100..200).contains(&code) && !switched;
    let framing = if interim {
        Framing::None
    } else {
        body_framing(headers, &fields, is_head || code == 204 || code == 304)?
    };
    let head = ResponseHead {
        head_len,
        status: code,
        interim,
        framing,
        upstream_reusable: !switched && !fields.upstream_close && framing != Framing::UntilClose,
        switched,
    };
    let view = ResponseView {
        head,
        reason,
        headers,
        content_length: fields.content_length,
        upgrade: fields.upgrade.filter(|_| switched),
    };
    Ok(Parsed::Complete((head, f(&view))))
}

/// What the header scan found.
struct Fields<'a> {
    content_length: Option<u64>,
    has_te: bool,
    upstream_close: bool,
    upgrade: Option<&'a [u8]>,
}

/// True if a `101`'s `Upgrade` value names the protocol that was asked.
fn switches_to(asked: Option<&[u8]>, answered: Option<&[u8]>) -> bool {
    let (Some(asked), Some(answered)) = (asked, answered) else {
        return false;
    };
    super::upgrade_name(answered).eq_ignore_ascii_case(asked)
}

fn scan_headers<'a>(
    headers: &[httparse::Header<'a>],
    minor: u8,
) -> Result<Fields<'a>, ResponseError> {
    let mut f = Fields {
        content_length: None,
        has_te: false,
        upstream_close: minor == 0,
        upgrade: None,
    };
    for h in headers {
        let name = h.name.as_bytes();
        if h.value.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
            return Err(ResponseError::Malformed(
                "control character in header value",
            ));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            if f.content_length.is_some() {
                return Err(ResponseError::Framing("duplicate Content-Length"));
            }
            f.content_length = Some(
                parse_content_length(h.value)
                    .ok_or(ResponseError::Framing("invalid Content-Length"))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            f.has_te = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            f.upgrade = Some(h.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for tok in list_elements(h.value) {
                if tok.eq_ignore_ascii_case(b"close") {
                    f.upstream_close = true;
                } else if minor == 0 && tok.eq_ignore_ascii_case(b"keep-alive") {
                    f.upstream_close = false;
                }
            }
        }
    }
    Ok(f)
}

/// The body framing of a final response (`bodyless`: HEAD, 204, 304).
fn body_framing(
    headers: &[httparse::Header<'_>],
    f: &Fields<'_>,
    bodyless: bool,
) -> Result<Framing, ResponseError> {
    let framing = if f.has_te {
        if f.content_length.is_some() {
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
        match f.content_length {
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    Ok(match framing {
        _ if bodyless => Framing::None,
        Framing::Length(0) => Framing::None,
        f => f,
    })
}
