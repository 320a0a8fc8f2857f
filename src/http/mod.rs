//! The HTTP/1.1 codec, sans-I/O: bytes in, decisions and rewritten bytes out.
//!
//! Nothing here touches a socket or a runtime, so every rule is unit-tested and
//! fuzzable on its own. [`request`] parses a client's request head (httparse
//! for the syntax, then RFC 9112 framing rules, strictly) into a neutral view;
//! [`response`] does the same for an upstream's response head; [`rewrite`]
//! writes the head lbd sends upstream and the head an HTTP/1 client gets;
//! [`body`] frames message bodies and [`chunked`] decodes chunked ones. Heads
//! are rewritten in one pass into a caller-provided buffer: no allocation per
//! request.

pub mod body;
pub mod chunked;
pub mod request;
pub mod response;
pub mod rewrite;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body at all.
    None,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Response body runs until the upstream closes (no length, no chunking).
    UntilClose,
}

/// Headers a proxy never forwards (RFC 9110 §7.6.1), plus the framing headers
/// lbd re-emits itself. Compared case-insensitively.
const HOP_BY_HOP: &[&[u8]] = &[
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
    b"transfer-encoding",
    b"content-length",
];

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Iterates the comma-separated elements of a list-valued header, trimmed of
/// optional whitespace. Empty elements are yielded as empty slices.
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim_ows)
}

pub(crate) fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// The protocol name of the first element of an `Upgrade` list, without a
/// version (`websocket/13` is `websocket`).
fn upgrade_name(value: &[u8]) -> &[u8] {
    let first = list_elements(value).next().unwrap_or_default();
    first.split(|&b| b == b'/').next().unwrap_or(first)
}

/// True if `name` is listed in any `Connection` header of `headers`.
fn named_by_connection(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| list_elements(h.value))
        .any(|tok| tok.eq_ignore_ascii_case(name))
}

/// Whether header `name` of `headers` goes on to the next hop: neither
/// hop-by-hop nor named by one of their `Connection` fields.
fn end_to_end(headers: &[httparse::Header<'_>], name: &[u8]) -> bool {
    !is_hop_by_hop(name) && !named_by_connection(headers, name)
}

/// Strict `Content-Length` value: 1 to 19 ASCII digits, nothing else.
fn parse_content_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// What a `Transfer-Encoding` field list says about framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransferCoding {
    /// Exactly `chunked` (possibly split over several fields).
    Chunked,
    /// Malformed: empty element, repeated chunked, chunked not last.
    Invalid,
    /// A coding lbd does not implement (gzip, …).
    Unsupported,
}

fn transfer_coding<'a>(values: impl Iterator<Item = &'a [u8]>) -> TransferCoding {
    let mut chunked_seen = false;
    let mut unsupported = false;
    let mut any = false;
    for v in values {
        for el in list_elements(v) {
            any = true;
            if el.is_empty() || chunked_seen {
                // An empty element, or anything after `chunked` (including a
                // second `chunked`): chunked must be the final coding, once.
                return TransferCoding::Invalid;
            }
            if el.eq_ignore_ascii_case(b"chunked") {
                chunked_seen = true;
            } else {
                unsupported = true;
            }
        }
    }
    if !any {
        TransferCoding::Invalid
    } else if unsupported {
        TransferCoding::Unsupported
    } else {
        TransferCoding::Chunked
    }
}

/// Appends the decimal form of `n`.
pub fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the head of a response lbd generates itself: status line (with
/// [`reason_phrase`]), `Content-Type`, `Content-Length` and, with `close`,
/// `Connection: close`.
pub fn write_head(out: &mut Vec<u8>, status: u16, content_type: &str, len: u64, close: bool) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(content_type.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_u64(out, len);
    if close {
        out.extend_from_slice(b"\r\nConnection: close");
    }
    out.extend_from_slice(b"\r\n\r\n");
}

/// Writes a complete short response lbd generates itself (errors): its
/// reason phrase is the body.
pub fn write_simple_response(out: &mut Vec<u8>, status: u16, close: bool) {
    let reason = reason_phrase(status);
    write_head(out, status, "text/plain", reason.len() as u64 + 1, close);
    out.extend_from_slice(reason.as_bytes());
    out.push(b'\n');
}

/// The reason phrase lbd uses for a status it generates.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_strict() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"1234"), Some(1234));
        assert_eq!(parse_content_length(b"18446744073709551615"), None); // 20 digits
        assert_eq!(
            parse_content_length(b"9999999999999999999"),
            Some(9_999_999_999_999_999_999)
        );
        for bad in [
            &b""[..],
            b"+5",
            b"-1",
            b"0x10",
            b"1 2",
            b" 5",
            b"5,5",
            b"abc",
        ] {
            assert_eq!(parse_content_length(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn transfer_coding_rules() {
        let tc = |v: &[&[u8]]| transfer_coding(v.iter().copied());
        assert_eq!(tc(&[b"chunked"]), TransferCoding::Chunked);
        assert_eq!(tc(&[b"Chunked"]), TransferCoding::Chunked);
        assert_eq!(tc(&[b"chunked, chunked"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b"chunked", b"chunked"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b"chunked, gzip"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b",chunked"]), TransferCoding::Invalid);
        assert_eq!(tc(&[b""]), TransferCoding::Invalid);
        assert_eq!(tc(&[b"gzip"]), TransferCoding::Unsupported);
        assert_eq!(tc(&[b"gzip, chunked"]), TransferCoding::Unsupported);
        assert_eq!(tc(&[b"xchunked"]), TransferCoding::Unsupported);
    }

    #[test]
    fn push_u64_formats() {
        let mut v = Vec::new();
        push_u64(&mut v, 0);
        v.push(b' ');
        push_u64(&mut v, u64::MAX);
        assert_eq!(v, b"0 18446744073709551615");
    }
}
