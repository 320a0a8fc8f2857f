//! Message body framing, sans-I/O: where a body stands and which of the
//! bytes that arrived belong to it.
//!
//! A [`Body`] is built from a head's [`Framing`] and fed successive slices
//! of what was read, in place: [`Body::frame`] says how many bytes belong to
//! the body (the rest are the next message, or stray bytes that make a
//! connection unusable) and how many to forward. Chunked bodies are either
//! forwarded verbatim (their end found by the strict [`ChunkedDecoder`], so
//! an upstream connection is reused only after an unambiguous end) or
//! de-chunked in place (HTTP/1.0 clients). The proxy, the property test and
//! the fuzz targets all drive this same code.

use super::chunked::{ChunkError, ChunkedDecoder};
use super::Framing;

/// Where a message body stands.
#[derive(Debug, Clone)]
pub enum Body {
    /// This many bytes are still to come.
    Length(u64),
    /// A chunked body, being decoded.
    Chunked(ChunkedDecoder),
    /// Runs until the sender closes (responses only).
    UntilClose,
    /// Complete (or there never was one).
    Done,
}

impl Body {
    /// A body framed as `framing`; chunk extensions longer than `ext_limit`
    /// are rejected.
    pub fn new(framing: Framing, ext_limit: usize) -> Self {
        match framing {
            Framing::None | Framing::Length(0) => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(ChunkedDecoder::with_extension_limit(ext_limit)),
            Framing::UntilClose => Body::UntilClose,
        }
    }

    /// True once the body is complete.
    pub fn is_done(&self) -> bool {
        matches!(self, Body::Done)
    }

    /// True if the body runs until the sender closes.
    pub fn until_close(&self) -> bool {
        matches!(self, Body::UntilClose)
    }

    /// The sender closed: complete for a close-delimited body, else the body
    /// was truncated (`false`).
    pub fn on_eof(&mut self) -> bool {
        if self.until_close() {
            *self = Body::Done;
        }
        self.is_done()
    }

    /// More than `threshold` bytes (or an unknown amount) remain.
    pub fn is_larger_than(&self, threshold: u64) -> bool {
        match self {
            Body::Done => false,
            Body::Length(n) => *n > threshold,
            Body::Chunked(_) | Body::UntilClose => true,
        }
    }

    /// Frames the bytes at the start of `buf`. Returns (bytes to forward, now
    /// at `buf[..out]`; bytes consumed). With `dechunk`, chunk data is moved
    /// to the front and framing dropped; otherwise the consumed bytes are
    /// forwarded verbatim.
    pub fn frame(&mut self, buf: &mut [u8], dechunk: bool) -> Result<(usize, usize), ChunkError> {
        match self {
            Body::Done => Ok((0, 0)),
            Body::UntilClose => Ok((buf.len(), buf.len())),
            Body::Length(rem) => {
                let n = (*rem).min(buf.len() as u64) as usize;
                *rem -= n as u64;
                if *rem == 0 {
                    *self = Body::Done;
                }
                Ok((n, n))
            }
            Body::Chunked(dec) => {
                let (out, pos) = frame_chunked(dec, buf, dechunk)?;
                if dec.is_done() {
                    *self = Body::Done;
                }
                Ok((out, pos))
            }
        }
    }
}

/// Walks chunked framing over `buf`: (bytes to forward, bytes consumed).
fn frame_chunked(
    dec: &mut ChunkedDecoder,
    buf: &mut [u8],
    dechunk: bool,
) -> Result<(usize, usize), ChunkError> {
    let mut pos = 0;
    let mut out = 0;
    while pos < buf.len() && !dec.is_done() {
        let step = dec.step(&buf[pos..])?;
        if dechunk {
            if let Some(r) = step.data {
                buf.copy_within(pos + r.start..pos + r.end, out);
                out += r.len();
            }
        }
        pos += step.consumed;
        if step.consumed == 0 {
            break;
        }
    }
    Ok((if dechunk { out } else { pos }, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_stops_at_its_end() {
        let mut b = Body::new(Framing::Length(5), 64);
        let mut buf = *b"helloGET";
        assert_eq!(b.frame(&mut buf, false), Ok((5, 5)));
        assert!(b.is_done());
        assert_eq!(b.frame(&mut buf[5..], false), Ok((0, 0)));
    }

    #[test]
    fn chunked_verbatim_and_dechunked() {
        let wire = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\nNEXT";
        let mut b = Body::new(Framing::Chunked, 64);
        let mut buf = *wire;
        let (out, used) = b.frame(&mut buf, false).unwrap();
        assert_eq!((out, used), (wire.len() - 4, wire.len() - 4));
        assert!(b.is_done());
        let mut b = Body::new(Framing::Chunked, 64);
        let mut buf = *wire;
        let (out, used) = b.frame(&mut buf, true).unwrap();
        assert_eq!(&buf[..out], b"abcde");
        assert_eq!(used, wire.len() - 4);
    }

    #[test]
    fn until_close_ends_on_eof_only() {
        let mut b = Body::new(Framing::UntilClose, 64);
        let mut buf = *b"abc";
        assert_eq!(b.frame(&mut buf, false), Ok((3, 3)));
        assert!(!b.is_done() && b.on_eof());
        let mut l = Body::new(Framing::Length(9), 64);
        assert!(!l.on_eof(), "a length body cut short is truncated");
    }

    #[test]
    fn none_and_zero_are_done() {
        assert!(Body::new(Framing::None, 64).is_done());
        assert!(Body::new(Framing::Length(0), 64).is_done());
        assert!(Body::new(Framing::Length(100), 64).is_larger_than(64));
        assert!(!Body::new(Framing::Length(10), 64).is_larger_than(64));
    }
}
