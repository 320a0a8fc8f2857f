//! Fuzz the upstream response head parser: it must never panic, and what it
//! accepts must be consistent.
//!
//! Invariants: `head_len` within the input; the result does not depend on
//! bytes after the head; every shorter prefix is `Partial`; the head written
//! for the client parses again, whole, with the same status (and the same
//! framing unless lbd de-chunks for an HTTP/1.0 client).
#![no_main]

use lbd::http::request::Parsed;
use lbd::http::response::{
    parse_response, ResponseError, ResponseHead, MAX_RESPONSE_HEADERS, MAX_RESPONSE_HEAD_BYTES,
};
use lbd::http::rewrite::{write_client_head, ClientContext, ClientHead, ResponseExtras};
use libfuzzer_sys::fuzz_target;

/// Parses as the proxy does: the neutral head, then the HTTP/1 client head
/// written from its view (appended to `out`).
fn parse(
    buf: &[u8],
    is_head: bool,
    ctx: ClientContext,
    out: &mut Vec<u8>,
) -> Result<Parsed<(ResponseHead, ClientHead)>, ResponseError> {
    parse_response(buf, is_head, |v| write_client_head(v, ctx, &ResponseExtras::default(), out))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let is_head = sel & 1 != 0;
    let ctx = ClientContext {
        http10: sel & 2 != 0,
        close_client: sel & 4 != 0,
    };
    let mut out = Vec::new();
    match parse(buf, is_head, ctx, &mut out) {
        Ok(Parsed::Complete((h, c))) => {
            assert!(h.head_len <= buf.len(), "head_len beyond input");
            assert!((100..=599).contains(&h.status));
            let mut out2 = Vec::new();
            let again = parse(&buf[..h.head_len], is_head, ctx, &mut out2);
            assert_eq!(
                again,
                Ok(Parsed::Complete((h, c))),
                "trailing bytes changed the result"
            );
            assert_eq!(out, out2, "trailing bytes changed the client head");
            for k in 0..h.head_len {
                let mut o = Vec::new();
                let p = parse(&buf[..k], is_head, ctx, &mut o);
                assert_eq!(p, Ok(Parsed::Partial), "prefix {k} of a valid head: {p:?}");
            }
            if h.interim && ctx.http10 {
                assert!(out.is_empty(), "1xx relayed to an HTTP/1.0 client");
                return;
            }
            let mut out3 = Vec::new();
            match parse(&out, is_head, ctx, &mut out3) {
                Ok(Parsed::Complete((h2, _))) => {
                    assert_eq!(h2.head_len, out.len(), "client head length");
                    assert_eq!(h2.status, h.status);
                    if !c.dechunk {
                        assert_eq!(h2.framing, h.framing, "client head framing");
                    }
                }
                // lbd adds its own framing / `Connection: close` lines, so a
                // head at the upstream header limit may exceed it when parsed
                // again; that is not a defect.
                Err(ResponseError::TooLarge)
                    if out.iter().filter(|&&b| b == b'\n').count() - 2 > MAX_RESPONSE_HEADERS => {}
                other => panic!(
                    "client head does not parse: {other:?}\n{:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        Ok(Parsed::Partial) => {
            assert!(buf.len() < MAX_RESPONSE_HEAD_BYTES, "partial at the limit");
        }
        Err(_) => {}
    }
});
