//! Fuzz the chunked decoder and lbd's body framing over it.
//!
//! Invariants: `consumed` never exceeds the input; a data range lies inside
//! the consumed bytes; a step on non-empty input before the end makes
//! progress; and feeding the same body all at once, split at an arbitrary
//! point, or one byte at a time gives the same data, the same end position
//! and the same done/error outcome.
#![no_main]

use lbd::http::body::Body;
use lbd::http::chunked::{ChunkError, ChunkedDecoder, MAX_CHUNK_EXT_LEN};
use lbd::http::Framing;
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

/// The same parts through lbd's body framing ([`Body`]), as the proxy feeds
/// it: verbatim (what is forwarded must be exactly what was consumed) and
/// de-chunked (the data must match the decoder's).
fn frame(parts: &[&[u8]]) -> Outcome {
    let mut verbatim = Body::new(Framing::Chunked, MAX_CHUNK_EXT_LEN);
    let mut dechunk = Body::new(Framing::Chunked, MAX_CHUNK_EXT_LEN);
    let mut o = Outcome {
        data: Vec::new(),
        consumed: 0,
        done: false,
        err: None,
    };
    for part in parts {
        let mut a = part.to_vec();
        let mut b = part.to_vec();
        match (verbatim.frame(&mut a, false), dechunk.frame(&mut b, true)) {
            (Ok((fwd, used)), Ok((out, used2))) => {
                assert_eq!(fwd, used, "verbatim framing forwards what it consumes");
                assert_eq!(used, used2, "both framings consume alike");
                assert!(used <= part.len() && out <= used);
                assert_eq!(&a[..fwd], &part[..fwd], "verbatim bytes altered");
                o.data.extend_from_slice(&b[..out]);
                o.consumed += used;
            }
            (Err(e), Err(e2)) => {
                assert_eq!(e, e2);
                o.err = Some(e);
                break;
            }
            (x, y) => panic!("framings disagree: {x:?} vs {y:?}"),
        }
        if verbatim.is_done() {
            break;
        }
    }
    o.done = verbatim.is_done();
    if o.err.is_some() {
        o.consumed = 0;
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
    // On an error only the error is comparable: the data a part yielded
    // before its failing step is not forwarded by `Body`.
    let same = |a: &Outcome, b: &Outcome| match a.err {
        Some(e) => b.err == Some(e),
        None => a == b,
    };
    let framed = frame(&[body]);
    assert!(
        same(&whole, &framed),
        "Body framing differs: {whole:?} vs {framed:?}"
    );
    let framed = frame(&[&body[..split], &body[split..]]);
    assert!(
        same(&whole, &framed),
        "Body framing split at {split} differs"
    );

    if body.len() <= 4096 {
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        let single = decode(&bytes);
        assert_eq!(whole, single, "byte-at-a-time differs");
    }
});
