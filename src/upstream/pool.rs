//! Per-worker pool of idle upstream keep-alive connections.
//!
//! One pool per worker (no sharing, no locks): for each backend a LIFO stack
//! of idle connections, at most `upstream_keepalive_pool_size` deep. LIFO
//! keeps the hottest connections in use and lets the cold ones age out.
//! A connection is checked in only after its response was completely read
//! and framed unambiguously. On checkout, expired connections are dropped and
//! every candidate is probed with a non-blocking `MSG_PEEK`: a peer that has
//! closed (EOF), reset, or sent unsolicited bytes is discarded, never used.
//! A periodic sweep (see `worker`) closes connections idle past
//! `limits.upstream_idle_timeout_ms`. Idle connections hold no buffer.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use super::BackendId;
use crate::stream::Stream;

struct Idle {
    stream: Stream,
    since: Instant,
}

/// Idle connections of one worker, indexed by backend id.
pub(crate) struct Pool {
    idle: Vec<Vec<Idle>>,
    cap: usize,
    idle_timeout: Duration,
}

impl Pool {
    /// A pool for `backends` backends.
    pub(crate) fn new(backends: usize, cap: usize, idle_timeout: Duration) -> Self {
        Pool {
            idle: (0..backends).map(|_| Vec::new()).collect(),
            cap,
            idle_timeout,
        }
    }

    /// Takes the most recently used live connection to `backend`, if any.
    /// `now` may be the worker's coarse clock: idle timeouts are coarse.
    pub(crate) fn checkout(&mut self, backend: BackendId, now: Instant) -> Option<Stream> {
        let stack = self.idle.get_mut(backend.index())?;
        while let Some(c) = stack.pop() {
            if now.duration_since(c.since) >= self.idle_timeout {
                continue;
            }
            if still_open(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Returns a connection whose exchange completed cleanly.
    pub(crate) fn checkin(&mut self, backend: BackendId, stream: Stream, now: Instant) {
        if let Some(stack) = self.idle.get_mut(backend.index()) {
            if stack.len() < self.cap {
                stack.push(Idle { stream, since: now });
            }
        }
    }

    /// Closes every connection idle for longer than the idle timeout.
    pub(crate) fn sweep(&mut self) {
        let now = Instant::now();
        let timeout = self.idle_timeout;
        for stack in &mut self.idle {
            // Oldest first (bottom of the stack).
            let expired = stack
                .iter()
                .take_while(|c| now.duration_since(c.since) >= timeout)
                .count();
            stack.drain(..expired);
        }
    }

    /// Closes every idle connection (drain).
    pub(crate) fn clear(&mut self) {
        for stack in &mut self.idle {
            stack.clear();
        }
    }
}

/// True if the peer has neither closed nor sent anything: a non-blocking
/// one-byte peek returns EAGAIN.
fn still_open(stream: &Stream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        recv(
            stream.raw_fd(),
            &mut byte,
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT
        ),
        Err(Errno::EAGAIN)
    )
}
