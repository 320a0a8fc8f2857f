//! Fuzz the chunked decoder.
//!
//! Invariants: `consumed` never exceeds the input; a data range lies inside
//! the consumed bytes; a step on non-empty input before the end makes
//! progress; and feeding the same body all at once, split at an arbitrary
//! point, or one byte at a time gives the same data, the same end position
//! and the same done/error outcome.
#![no_main]

use lbd::http::chunked::{ChunkError, ChunkedDecoder};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    data: Vec<u8>,
    consumed: usize,
    done: bool,
    err: Option<ChunkError>,
}

/// Feeds `parts` in order (each part fully, as a proxy would as bytes
/// arrive), stopping at the end of the body or the first error.
fn decode(parts: &[&[u8]]) -> Outcome {
    let mut d = ChunkedDecoder::new();
    let mut o = Outcome {
        data: Vec::new(),
        consumed: 0,
        done: false,
        err: None,
    };
    'parts: for part in parts {
        let mut pos = 0;
        while pos < part.len() && !d.is_done() {
            let input = &part[pos..];
            match d.step(input) {
                Ok(s) => {
                    assert!(s.consumed <= input.len(), "consumed beyond input");
                    if let Some(r) = &s.data {
                        assert!(
                            r.start <= r.end && r.end <= s.consumed,
                            "data {r:?} outside consumed {}",
                            s.consumed
                        );
                        o.data.extend_from_slice(&input[r.clone()]);
                    }
                    assert!(
                        s.consumed > 0 || d.is_done(),
                        "no progress on {} bytes",
                        input.len()
                    );
                    if s.consumed == 0 {
                        break;
                    }
                    pos += s.consumed;
                    o.consumed += s.consumed;
                }
                Err(e) => {
                    o.err = Some(e);
                    break 'parts;
                }
            }
        }
        if d.is_done() {
            break;
        }
    }
    o.done = d.is_done();
    // Where a failing step stopped depends on how the input was cut; only
    // the error itself is comparable.
    if o.err.is_some() {
        o.consumed = 0;
    }
    // A finished decoder consumes nothing more.
    if o.done {
        let s = d.step(b"0\r\n\r\n").expect("step after done");
        assert_eq!(s.consumed, 0, "consumed after done");
        assert!(s.data.is_none());
    }
    o
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let split = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let body = &data[2..];
    let split = if body.is_empty() {
        0
    } else {
        split % (body.len() + 1)
    };

    let whole = decode(&[body]);
    assert!(whole.consumed <= body.len());
    assert!(!(whole.done && whole.err.is_some()));

    let halves = decode(&[&body[..split], &body[split..]]);
    assert_eq!(whole, halves, "split at {split} differs");

    if body.len() <= 4096 {
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let single = decode(&bytes);
        assert_eq!(whole, single, "byte-at-a-time differs");
    }
});
