//! Per-worker I/O buffer free list.
//!
//! A connection holds a read buffer only while a request is in progress: an
//! idle keep-alive connection waits for readability with no buffer at all and
//! takes one from this list when bytes arrive. Buffers go back after the
//! exchange, so steady-state traffic allocates nothing and 10,000 idle
//! connections pin no buffer memory. The list is thread-local: each worker
//! thread has its own, untouched by other cores.

use std::cell::RefCell;

/// Size of every pooled buffer. Large enough for a typical request head plus
/// the first body bytes, and for efficient body streaming.
pub const BUF_SIZE: usize = 16 * 1024;

/// Size of the buffers used to stream large bodies: fewer, larger reads and
/// writes once a body is known to exceed [`BUF_SIZE`].
pub const LARGE_BUF_SIZE: usize = 64 * 1024;

/// At most this many free buffers are kept per worker (1 MiB); more are freed,
/// so a burst of concurrency does not leave memory pinned afterwards.
const MAX_FREE: usize = 64;
/// At most this many free large buffers (1 MiB).
const MAX_FREE_LARGE: usize = 16;

thread_local! {
    static FREE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static FREE_LARGE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Takes an empty buffer with capacity [`LARGE_BUF_SIZE`].
pub fn take_large() -> Vec<u8> {
    FREE_LARGE
        .with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(LARGE_BUF_SIZE))
}

/// Takes an empty buffer with capacity [`BUF_SIZE`].
pub fn take() -> Vec<u8> {
    FREE.with(|f| f.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

/// Returns a buffer to the free list (buffers grown past [`BUF_SIZE`] are freed,
/// so one large head does not keep a large buffer alive).
pub fn give(mut buf: Vec<u8>) {
    let (list, max) = match buf.capacity() {
        BUF_SIZE => (&FREE, MAX_FREE),
        LARGE_BUF_SIZE => (&FREE_LARGE, MAX_FREE_LARGE),
        _ => return,
    };
    buf.clear();
    list.with(|f| {
        let mut f = f.borrow_mut();
        if f.len() < max {
            f.push(buf);
        }
    });
}

/// Bytes read from a socket, with a consumed prefix.
pub struct InBuf {
    /// The bytes (consumed prefix included).
    pub v: Vec<u8>,
    /// Start of the unconsumed bytes.
    pub pos: usize,
}

impl Default for InBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl InBuf {
    /// A buffer from the free list.
    pub fn new() -> Self {
        InBuf { v: take(), pos: 0 }
    }

    /// A buffer over `v` (cleared).
    pub fn from_vec(mut v: Vec<u8>) -> Self {
        v.clear();
        InBuf { v, pos: 0 }
    }

    /// The unconsumed bytes.
    pub fn data(&self) -> &[u8] {
        &self.v[self.pos..]
    }

    /// True when everything was consumed.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.v.len()
    }

    /// Marks `n` bytes consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos >= self.v.len() {
            self.v.clear();
            self.pos = 0;
        }
    }

    /// Makes room for at least one more byte, growing up to `limit` bytes.
    /// Returns false if the buffer is full at `limit`.
    pub fn make_room(&mut self, limit: usize) -> bool {
        if self.pos > 0 {
            self.v.drain(..self.pos);
            self.pos = 0;
        }
        if self.v.len() < self.v.capacity() {
            return true;
        }
        if self.v.len() >= limit {
            return false;
        }
        let want = (self.v.capacity() * 2).clamp(BUF_SIZE, limit) - self.v.len();
        self.v.reserve_exact(want);
        true
    }

    /// Switches to a large buffer (keeping unconsumed bytes) for streaming a
    /// big body.
    pub fn upsize(&mut self) {
        if self.v.capacity() >= LARGE_BUF_SIZE {
            return;
        }
        let mut big = take_large();
        big.extend_from_slice(&self.v[self.pos..]);
        give(std::mem::replace(&mut self.v, big));
        self.pos = 0;
    }

    /// Returns the storage to the free list.
    pub fn release(self) {
        give(self.v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused() {
        let mut b = take();
        b.extend_from_slice(b"abc");
        let ptr = b.as_ptr();
        give(b);
        let b2 = take();
        assert!(b2.is_empty());
        assert_eq!(b2.as_ptr(), ptr);
        assert_eq!(b2.capacity(), BUF_SIZE);
    }

    #[test]
    fn grown_buffers_are_freed() {
        let free = || FREE.with(|f| f.borrow().len());
        let mut b = take();
        b.reserve(BUF_SIZE * 2);
        let before = free();
        give(b);
        assert_eq!(free(), before, "a grown buffer must not be kept");
        give(Vec::with_capacity(BUF_SIZE));
        assert_eq!(free(), before + 1);
    }
}
