//! The HTTP/2 flood meter: counts frames that make lbd work without moving
//! any request or response forward, and says when a connection has sent too
//! many of them in a row.
//!
//! The `h2` crate bounds rapid reset, CONTINUATION and HPACK floods itself,
//! and answers every PING and SETTINGS under backpressure; what it does not
//! do is end a connection that keeps sending frames that only cost work.
//! This meter does, in the spirit of gRPC's ping strikes and HAProxy's
//! glitch counter: sans-I/O, it sees the plaintext bytes both ways (frame
//! headers only, payloads skipped) and counts each inbound PING or SETTINGS
//! without ACK, PRIORITY, WINDOW_UPDATE, and DATA that is empty and does
//! not end its stream. A request or response making progress (a HEADERS or
//! non-empty DATA frame, either way) clears the count, so a client pinging
//! through a long download, or acknowledging every DATA frame, never
//! trips it; [`MAX_IDLE_FRAMES`] in a row does.

/// Frames of the counted kinds allowed in a row with no request or
/// response progress between them (Envoy's `max_outbound_control_frames`
/// is the same order).
pub(crate) const MAX_IDLE_FRAMES: u32 = 1000;

/// The client connection preface, which precedes the first inbound frame.
const PREFACE_LEN: usize = 24;
/// Frame header length (RFC 9113 §4.1).
const HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const WINDOW_UPDATE: u8 = 0x8;
/// ACK on SETTINGS and PING; END_STREAM on DATA and HEADERS.
const FLAG_ACK_OR_END_STREAM: u8 = 0x1;

/// One frame header as the meter needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FrameHead {
    len: usize,
    kind: u8,
    flags: u8,
}

/// Finds frame headers in a byte stream split anywhere.
#[derive(Debug)]
struct Scanner {
    /// Bytes still to skip: the preface, or the current frame's payload.
    skip: usize,
    head: [u8; HEADER_LEN],
    have: usize,
}

impl Scanner {
    fn new(skip: usize) -> Self {
        Scanner {
            skip,
            head: [0; HEADER_LEN],
            have: 0,
        }
    }

    /// Feeds `bytes`, calling `f` for each frame header completed.
    fn feed(&mut self, mut bytes: &[u8], mut f: impl FnMut(FrameHead)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.have).min(bytes.len());
            self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
            self.have += n;
            bytes = &bytes[n..];
            if self.have == HEADER_LEN {
                self.have = 0;
                let h = &self.head;
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.skip = len;
                f(FrameHead {
                    len,
                    kind: h[3],
                    flags: h[4],
                });
            }
        }
    }
}

/// Whether a frame moves a request or response forward.
fn progress(f: FrameHead) -> bool {
    f.kind == HEADERS || (f.kind == DATA && f.len > 0)
}

/// Whether an inbound frame only costs work.
fn idle(f: FrameHead) -> bool {
    let flagged = f.flags & FLAG_ACK_OR_END_STREAM != 0;
    match f.kind {
        PING | SETTINGS => !flagged,
        PRIORITY | WINDOW_UPDATE => true,
        DATA => f.len == 0 && !flagged,
        _ => false,
    }
}

/// The meter of one connection.
#[derive(Debug)]
pub(crate) struct FloodMeter {
    inbound: Scanner,
    outbound: Scanner,
    idle_in_a_row: u32,
    limit: u32,
}

impl FloodMeter {
    /// A meter for a new connection (its inbound bytes begin with the
    /// client preface), tripping past `limit` idle frames in a row.
    pub(crate) fn new(limit: u32) -> Self {
        FloodMeter {
            inbound: Scanner::new(PREFACE_LEN),
            outbound: Scanner::new(0),
            idle_in_a_row: 0,
            limit,
        }
    }

    /// Bytes read from the client. Returns true once the connection is
    /// flooding (and stays true).
    pub(crate) fn read(&mut self, bytes: &[u8]) -> bool {
        let count = &mut self.idle_in_a_row;
        self.inbound.feed(bytes, |f| {
            if progress(f) {
                *count = 0;
            } else if idle(f) {
                *count = count.saturating_add(1);
            }
        });
        self.tripped()
    }

    /// Bytes written to the client.
    pub(crate) fn wrote(&mut self, bytes: &[u8]) {
        let count = &mut self.idle_in_a_row;
        self.outbound.feed(bytes, |f| {
            if progress(f) {
                *count = 0;
            }
        });
    }

    /// Whether more than the limit of idle frames came in a row.
    pub(crate) fn tripped(&self) -> bool {
        self.idle_in_a_row > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, len: usize) -> Vec<u8> {
        let mut v = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        v.extend_from_slice(&[0, 0, 0, 1]);
        v.extend(std::iter::repeat_n(b'x', len));
        v
    }

    fn preface() -> Vec<u8> {
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec()
    }

    #[test]
    fn a_ping_flood_trips_past_the_limit() {
        let mut m = FloodMeter::new(10);
        let mut bytes = preface();
        // The client's first SETTINGS counts too: nine so far.
        bytes.extend(frame(SETTINGS, 0, 6));
        for _ in 0..8 {
            bytes.extend(frame(PING, 0, 8));
        }
        assert!(!m.read(&bytes));
        assert!(!m.read(&frame(PING, 0, 8)), "ten in a row is the limit");
        assert!(m.read(&frame(PING, 0, 8)));
    }

    #[test]
    fn acks_and_stream_ends_are_not_counted() {
        let mut m = FloodMeter::new(2);
        let mut bytes = preface();
        for _ in 0..100 {
            bytes.extend(frame(PING, FLAG_ACK_OR_END_STREAM, 8));
            bytes.extend(frame(SETTINGS, FLAG_ACK_OR_END_STREAM, 0));
            bytes.extend(frame(DATA, FLAG_ACK_OR_END_STREAM, 0));
            bytes.extend(frame(0x3, 0, 4)); // RST_STREAM: h2's own counter
        }
        assert!(!m.read(&bytes));
    }

    #[test]
    fn progress_either_way_clears_the_count() {
        let mut m = FloodMeter::new(3);
        m.read(&preface());
        for _ in 0..100 {
            for _ in 0..3 {
                assert!(!m.read(&frame(WINDOW_UPDATE, 0, 4)));
            }
            // The response's next DATA frame.
            m.wrote(&frame(DATA, 0, 100));
        }
        for _ in 0..100 {
            for _ in 0..3 {
                assert!(!m.read(&frame(PING, 0, 8)));
            }
            assert!(!m.read(&frame(DATA, 0, 1)));
        }
        // Empty DATA is no progress.
        m.wrote(&frame(DATA, 0, 0));
        for _ in 0..3 {
            assert!(!m.read(&frame(DATA, 0, 0)));
        }
        assert!(m.read(&frame(PRIORITY, 0, 5)));
    }

    #[test]
    fn frames_split_anywhere_are_found() {
        let mut bytes = preface();
        for i in 0..50 {
            bytes.extend(frame(PING, 0, 8));
            bytes.extend(frame(DATA, 0, 1 + i * 37 % 300));
        }
        bytes.extend(frame(PING, 0, 8));
        bytes.extend(frame(PING, 0, 8));
        for step in [1, 2, 5, 9, 13, 64, 1000] {
            let mut m = FloodMeter::new(1);
            let mut tripped = false;
            for chunk in bytes.chunks(step) {
                tripped = m.read(chunk);
            }
            assert!(tripped, "chunks of {step}");
            let mut m = FloodMeter::new(2);
            for chunk in bytes.chunks(step) {
                assert!(!m.read(chunk), "chunks of {step}");
            }
        }
    }
}
