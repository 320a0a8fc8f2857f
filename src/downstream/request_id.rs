//! Request ids (`request_id`): the id a request carries to its backend, back
//! to its client and into the access log.
//!
//! A trusted client's id (see `trusted_proxies`) is kept when it is 1 to
//! [`MAX_LEN`] visible ASCII characters; any other client's is replaced.
//! Otherwise, with `generate`, lbd makes one: 32 lowercase hex digits, a
//! per-worker prefix (16 digits: 48 bits from the process id and start time,
//! 16 bits the worker's index) and the worker's own counter (16 digits). No
//! syscall, lock or allocation per id; unique within a process (the worker
//! index), and across restarts and upgrades (pid and start time). The shape
//! is a W3C trace id's.

use std::cell::Cell;

use crate::config::RequestIdConfig;

/// Longest request id kept from a client.
pub(crate) const MAX_LEN: usize = 128;

/// A request id, stored inline (it outlives the request head's buffer).
#[derive(Clone, Copy)]
pub(crate) struct RequestId {
    len: u8,
    buf: [u8; MAX_LEN],
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl RequestId {
    /// The id's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// A client's id, if lbd passes it on: 1 to [`MAX_LEN`] visible ASCII
    /// characters (nothing that could break a log line or a header).
    fn kept(v: &[u8]) -> Option<Self> {
        if v.is_empty() || v.len() > MAX_LEN || !v.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return None;
        }
        let mut id = RequestId {
            len: v.len() as u8,
            buf: [0; MAX_LEN],
        };
        id.buf[..v.len()].copy_from_slice(v);
        Some(id)
    }
}

/// One worker's id source.
pub(crate) struct Generator {
    prefix: [u8; 16],
    next: Cell<u64>,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex16(out: &mut [u8], v: u64) {
    for (i, b) in out.iter_mut().take(16).enumerate() {
        *b = HEX[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// SplitMix64's finaliser: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Generator {
    /// Worker `worker`'s generator (its index is part of every id).
    pub(crate) fn new(worker: usize) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let process = mix(nanos ^ (u64::from(std::process::id()) << 40));
        let mut prefix = [0; 16];
        hex16(&mut prefix, (process << 16) | (worker as u64 & 0xffff));
        Generator {
            prefix,
            next: Cell::new(0),
        }
    }

    /// A fresh id.
    pub(crate) fn next(&self) -> RequestId {
        let n = self.next.get();
        self.next.set(n.wrapping_add(1));
        let mut id = RequestId {
            len: 32,
            buf: [0; MAX_LEN],
        };
        id.buf[..16].copy_from_slice(&self.prefix);
        hex16(&mut id.buf[16..32], n);
        id
    }
}

/// The id of a request with `headers`: a trusted client's own, else a
/// fresh one when `generate` is on.
pub(crate) fn decide(
    cfg: &RequestIdConfig,
    trusted: bool,
    headers: &[httparse::Header<'_>],
    ids: &Generator,
) -> Option<RequestId> {
    let kept = trusted
        .then(|| {
            headers
                .iter()
                .find(|h| h.name.as_bytes().eq_ignore_ascii_case(&cfg.header))
                .and_then(|h| RequestId::kept(h.value))
        })
        .flatten();
    kept.or_else(|| cfg.generate.then(|| ids.next()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_are_unique_hex() {
        let a = Generator::new(0);
        let b = Generator::new(1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            for g in [&a, &b] {
                let id = g.next();
                let s = id.as_bytes();
                assert_eq!(s.len(), 32);
                assert!(s.iter().all(|c| HEX.contains(c)), "{id:?}");
                assert!(seen.insert(s.to_vec()), "duplicate {id:?}");
            }
        }
        assert_eq!(&a.next().as_bytes()[12..16], b"0000");
        assert_eq!(&b.next().as_bytes()[12..16], b"0001");
    }

    #[test]
    fn kept_only_from_trusted_and_only_when_sane() {
        let cfg = RequestIdConfig {
            header: b"X-Request-Id".to_vec(),
            generate: true,
        };
        let g = Generator::new(3);
        let h = |v: &'static [u8]| {
            [httparse::Header {
                name: "x-request-id",
                value: v,
            }]
        };
        let id = |trusted, v| {
            decide(&cfg, trusted, &h(v), &g)
                .unwrap()
                .as_bytes()
                .to_vec()
        };
        assert_eq!(id(true, b"abc-123"), b"abc-123");
        assert_ne!(id(false, b"abc-123"), b"abc-123");
        assert_ne!(id(true, b"has space"), b"has space");
        assert_ne!(id(true, b""), b"");
        let long = [b'a'; MAX_LEN + 1];
        let d = decide(
            &cfg,
            true,
            &[httparse::Header {
                name: "X-Request-Id",
                value: &long,
            }],
            &g,
        );
        assert_eq!(d.unwrap().as_bytes().len(), 32);
        let off = RequestIdConfig {
            generate: false,
            ..cfg.clone()
        };
        assert!(decide(&off, false, &h(b"x"), &g).is_none());
        assert_eq!(decide(&off, true, &h(b"x"), &g).unwrap().as_bytes(), b"x");
    }
}
