//! The chunked transfer-coding decoder (RFC 9112 §7.1), sans-I/O.
//!
//! It walks bytes and reports where the data of each chunk lies and when the
//! message ends, without copying. The proxy uses it in two ways: to find the
//! end of a chunked body it forwards verbatim (so an upstream connection is
//! reused only after an unambiguous end), and to strip the framing when the
//! client speaks HTTP/1.0. It is strict where laxness has led to request
//! smuggling: hex digits only (no `+`, `0x`, spaces), at most 16 of them, CRLF
//! line ends only (a bare LF is an error), extensions free of control
//! characters and capped in length, trailers capped in size.

use std::ops::Range;

/// Default cap on one chunk-size line's extensions (`limits.max_chunk_extension_bytes`).
pub const MAX_CHUNK_EXT_LEN: usize = 4096;
/// Largest trailer section accepted.
pub const MAX_TRAILER_LEN: usize = 16 * 1024;

/// Why a chunked body is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// The chunk-size line is not `1*HEXDIG`.
    #[error("invalid chunk size")]
    BadSize,
    /// More than 16 hex digits: the size would overflow.
    #[error("chunk size too large")]
    SizeOverflow,
    /// A line ended with something other than CRLF.
    #[error("chunk line not terminated by CRLF")]
    BadLineEnd,
    /// A control character or stray byte in a chunk extension.
    #[error("invalid chunk extension")]
    BadExtension,
    /// Chunk extension longer than the decoder's cap.
    #[error("chunk extension too long")]
    ExtensionTooLong,
    /// Chunk data not followed by CRLF.
    #[error("chunk data not followed by CRLF")]
    BadDataEnd,
    /// Trailer section malformed or larger than [`MAX_TRAILER_LEN`].
    #[error("invalid or oversized trailer section")]
    BadTrailer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of the size.
    Size,
    /// After the digits: optional whitespace before `;`.
    SizeWs,
    /// Inside an extension, until CR.
    Ext,
    /// Saw CR at the end of the size line, expecting LF.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting CR after data.
    DataCr,
    /// Expecting LF after data.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer line, until CR.
    TrailerLine,
    /// Saw CR ending a trailer line, expecting LF.
    TrailerLf,
    /// Saw CR of the final empty line, expecting LF.
    EndLf,
    /// Body complete.
    Done,
}

/// Incremental chunked decoder. Feed it successive slices of the body.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    digits: u8,
    ext_len: usize,
    ext_limit: usize,
    trailer_len: usize,
    trailer_line_len: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

/// One step of decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Bytes of the input consumed by this step (framing and data).
    pub consumed: usize,
    /// Chunk data found in this step, as a range of the input.
    pub data: Option<Range<usize>>,
}

impl ChunkedDecoder {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        Self::with_extension_limit(MAX_CHUNK_EXT_LEN)
    }

    /// A decoder that rejects chunk extensions longer than `limit` bytes.
    pub fn with_extension_limit(limit: usize) -> Self {
        ChunkedDecoder {
            ext_limit: limit,
            state: State::Size,
            size: 0,
            digits: 0,
            ext_len: 0,
            trailer_len: 0,
            trailer_line_len: 0,
        }
    }

    /// True once the last chunk and trailer section have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Inside chunk data: the next [`ChunkedDecoder::step`] returns a data
    /// range.
    pub fn in_data(&self) -> bool {
        self.state == State::Data
    }

    /// Past the last chunk: the next bytes are the trailer section (or
    /// the final empty line). Fed one byte a step outside data, a consumer
    /// can tell trailer bytes from framing (an HTTP/2 client's trailers).
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart | State::TrailerLine | State::TrailerLf | State::EndLf
        )
    }

    /// Decodes from the start of `input`. Stops after the first data range, at
    /// the end of the body, or at the end of `input`. Bytes after the end of
    /// the body are never consumed.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 16 {
                            return Err(ChunkError::SizeOverflow);
                        }
                        let v = (b as char).to_digit(16).unwrap_or(0) as u64;
                        self.size = (self.size << 4) | v;
                        self.digits += 1;
                        i += 1;
                    }
                    _ if self.digits == 0 => return Err(ChunkError::BadSize),
                    b'\r' => {
                        self.state = State::SizeLf;
                        i += 1;
                    }
                    b';' => {
                        self.state = State::Ext;
                        i += 1;
                    }
                    b' ' | b'\t' => {
                        self.state = State::SizeWs;
                        i += 1;
                    }
                    b'\n' => return Err(ChunkError::BadLineEnd),
                    _ => return Err(ChunkError::BadSize),
                },
                State::SizeWs => match b {
                    b' ' | b'\t' => i += 1,
                    b';' => {
                        self.state = State::Ext;
                        i += 1;
                    }
                    _ => return Err(ChunkError::BadSize),
                },
                State::Ext => {
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkError::BadLineEnd),
                        b'\t' | 0x20..=0x7e | 0x80..=0xff => {}
                        _ => return Err(ChunkError::BadExtension),
                    }
                    self.ext_len += 1;
                    if self.ext_len > self.ext_limit {
                        return Err(ChunkError::ExtensionTooLong);
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    i += 1;
                    self.ext_len = 0;
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = State::TrailerStart;
                    } else {
                        self.state = State::Data;
                    }
                }
                State::Data => {
                    let avail = (input.len() - i) as u64;
                    let take = avail.min(self.size) as usize;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    let range = i..i + take;
                    return Ok(Step {
                        consumed: i + take,
                        data: Some(range),
                    });
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadDataEnd);
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadDataEnd);
                    }
                    self.state = State::Size;
                    self.size = 0;
                    i += 1;
                }
                State::TrailerStart => {
                    match b {
                        b'\r' => self.state = State::EndLf,
                        b'\n' => return Err(ChunkError::BadLineEnd),
                        // A trailer line must start with a field name: no
                        // obs-fold, no control characters.
                        b' ' | b'\t' | 0..=0x1f | 0x7f => return Err(ChunkError::BadTrailer),
                        _ => {
                            self.state = State::TrailerLine;
                            self.trailer_line_len = 1;
                        }
                    }
                    self.bump_trailer()?;
                    i += 1;
                }
                State::TrailerLine => {
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' | 0 => return Err(ChunkError::BadTrailer),
                        _ => self.trailer_line_len += 1,
                    }
                    self.bump_trailer()?;
                    i += 1;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadTrailer);
                    }
                    if !self.trailer_line_has_colon_hint() {
                        return Err(ChunkError::BadTrailer);
                    }
                    self.state = State::TrailerStart;
                    self.bump_trailer()?;
                    i += 1;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnd);
                    }
                    self.state = State::Done;
                    i += 1;
                    break;
                }
            }
        }
        Ok(Step {
            consumed: i,
            data: None,
        })
    }

    fn bump_trailer(&mut self) -> Result<(), ChunkError> {
        self.trailer_len += 1;
        if self.trailer_len > MAX_TRAILER_LEN {
            return Err(ChunkError::BadTrailer);
        }
        Ok(())
    }

    fn trailer_line_has_colon_hint(&self) -> bool {
        // Full field validation of trailers is left to the recipient; we only
        // insist the line is non-trivial. (Trailers are forwarded verbatim.)
        self.trailer_line_len > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes a whole body, returning (data, bytes consumed).
    fn decode_all(input: &[u8]) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while !d.is_done() && pos < input.len() {
            let s = d.step(&input[pos..])?;
            if let Some(r) = s.data {
                out.extend_from_slice(&input[pos + r.start..pos + r.end]);
            }
            pos += s.consumed;
        }
        assert!(d.is_done(), "incomplete");
        Ok((out, pos))
    }

    #[test]
    fn simple_body() {
        let b = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nNEXT";
        let (data, used) = decode_all(b).unwrap();
        assert_eq!(data, b"hello world");
        assert_eq!(&b[used..], b"NEXT");
    }

    #[test]
    fn extensions_and_trailers() {
        let b = b"5;name=val\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (data, used) = decode_all(b).unwrap();
        assert_eq!(data, b"hello");
        assert_eq!(used, b.len());
    }

    #[test]
    fn every_split_gives_same_result() {
        let b = b"a\r\n0123456789\r\n3;x=y\r\nabc\r\n0\r\nT: v\r\n\r\n";
        for split in 0..b.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            for part in [&b[..split], &b[split..]] {
                let mut pos = 0;
                while pos < part.len() {
                    let s = d.step(&part[pos..]).unwrap();
                    if let Some(r) = s.data {
                        out.extend_from_slice(&part[pos + r.start..pos + r.end]);
                    }
                    if s.consumed == 0 {
                        break;
                    }
                    pos += s.consumed;
                }
            }
            assert!(d.is_done(), "split {split}");
            assert_eq!(out, b"0123456789abc", "split {split}");
        }
    }

    #[test]
    fn rejects_bad_sizes() {
        for bad in [
            &b"+5\r\nhello\r\n0\r\n\r\n"[..],
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"\r\nhello\r\n0\r\n\r\n",
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"zz\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"-1\r\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rejects_overflow() {
        assert_eq!(
            decode_all(b"11111111111111111\r\n").unwrap_err(),
            ChunkError::SizeOverflow
        );
        // 16 digits is still a valid (huge) size.
        let mut d = ChunkedDecoder::new();
        assert!(d.step(b"ffffffffffffffff\r\n").is_ok());
    }

    #[test]
    fn rejects_bare_lf() {
        assert_eq!(
            decode_all(b"5\nhello\r\n0\r\n\r\n").unwrap_err(),
            ChunkError::BadLineEnd
        );
        assert_eq!(
            decode_all(b"5\r\nhello\n0\r\n\r\n").unwrap_err(),
            ChunkError::BadDataEnd
        );
        assert_eq!(decode_all(b"0\r\n\n").unwrap_err(), ChunkError::BadLineEnd);
    }

    #[test]
    fn rejects_missing_data_crlf() {
        assert_eq!(
            decode_all(b"5\r\nhelloX\r\n").unwrap_err(),
            ChunkError::BadDataEnd
        );
    }

    #[test]
    fn rejects_ctl_in_extension_and_caps_length() {
        assert_eq!(
            decode_all(b"5;a\x01b\r\nhello\r\n").unwrap_err(),
            ChunkError::BadExtension
        );
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'a', MAX_CHUNK_EXT_LEN + 1));
        long.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert_eq!(decode_all(&long).unwrap_err(), ChunkError::ExtensionTooLong);
    }

    #[test]
    fn rejects_obs_fold_trailer() {
        assert!(decode_all(b"0\r\nA: b\r\n c\r\n\r\n").is_err());
    }
}
