//! Fuzz the request head parser: it must never panic, and what it accepts
//! must be consistent.
//!
//! Invariants checked on every input:
//! * `Complete(h)`: `h.head_len` lies within the input and within
//!   `max_head_bytes`; parsing only `input[..head_len]` gives the same head
//!   and the same upstream bytes (trailing bytes never matter); every shorter
//!   prefix is `Partial` (a request split across reads is never rejected or
//!   accepted differently); the rewritten upstream head parses again, whole,
//!   with the same framing.
//! * `Partial`: the input is shorter than `max_head_bytes`.
#![no_main]

use lbd::http::request::{parse_request, HeadLimits, Parsed, RequestError, RequestHead};
use lbd::http::rewrite::{write_upstream_head, Forwarding};
use libfuzzer_sys::fuzz_target;

fn fwd() -> Forwarding<'static> {
    Forwarding::new("192.0.2.7".parse().unwrap(), b"backend:80", None)
}

/// Parses as lbd's HTTP/1 loop does: the head, then the upstream head
/// written from its view (appended to `out`).
fn parse(
    buf: &[u8],
    limits: HeadLimits,
    out: &mut Vec<u8>,
) -> Result<Parsed<RequestHead>, RequestError> {
    parse_request(buf, limits, |v| {
        write_upstream_head(v, &fwd(), out);
        v.head
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte picks small or default limits so both limit paths are hit.
    let (limits, buf) = match data.split_first() {
        Some((&sel, rest)) if sel & 1 == 1 => (
            HeadLimits {
                max_head_bytes: 64 + usize::from(sel) * 4,
                max_headers: 1 + usize::from(sel >> 4),
            },
            rest,
        ),
        Some((_, rest)) => (
            HeadLimits {
                max_head_bytes: 32 * 1024,
                max_headers: 100,
            },
            rest,
        ),
        None => return,
    };
    let mut out = Vec::new();
    let res = parse(buf, limits, &mut out);
    match res {
        Ok(Parsed::Complete(h)) => {
            assert!(h.head_len <= buf.len(), "head_len beyond input");
            assert!(h.head_len <= limits.max_head_bytes, "head over the limit");
            let mut out2 = Vec::new();
            let again = parse(&buf[..h.head_len], limits, &mut out2);
            assert_eq!(
                again,
                Ok(Parsed::Complete(h)),
                "trailing bytes changed the result"
            );
            assert_eq!(out, out2, "trailing bytes changed the upstream head");
            for k in 0..h.head_len {
                let mut o = Vec::new();
                let p = parse(&buf[..k], limits, &mut o);
                assert_eq!(p, Ok(Parsed::Partial), "prefix {k} of a valid head: {p:?}");
            }
            // The upstream head is itself a valid, complete request head.
            let big = HeadLimits {
                max_head_bytes: 1 << 20,
                max_headers: 512,
            };
            let mut out3 = Vec::new();
            match parse(&out, big, &mut out3) {
                Ok(Parsed::Complete(h2)) => {
                    assert_eq!(h2.head_len, out.len(), "upstream head length");
                    assert_eq!(h2.framing, h.framing, "upstream head framing");
                    assert_eq!(h2.is_head, h.is_head);
                }
                other => panic!(
                    "upstream head does not parse: {other:?}\n{:?}",
                    String::from_utf8_lossy(&out)
                ),
            }
        }
        Ok(Parsed::Partial) => {
            assert!(buf.len() < limits.max_head_bytes, "partial at the limit");
        }
        Err(e) => {
            assert!(matches!(e.status(), 400 | 405 | 417 | 431 | 501));
        }
    }
});
