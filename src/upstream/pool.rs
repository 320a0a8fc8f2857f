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
//!
//! A connection that began with a PROXY protocol header (a group with
//! `send_proxy_protocol`) told its backend who the client is, for as long as
//! it lives: it carries a [`Tag`] (the client's address and the address the
//! client reached lbd at) and is only checked out again for a request with
//! the same tag, so a backend never attributes a request to another client.
//! Such connections are reused by the same client (keep-alive, or its next
//! connection from the same address; only the source port of the header
//! may then be an earlier connection's); the others age out, and when a
//! backend's stack is full the oldest gives way. Untagged connections are
//! interchangeable, as before.

use std::time::{Duration, Instant};

use std::net::{IpAddr, SocketAddr};

use nix::errno::Errno;
use nix::sys::socket::{recv, MsgFlags};

use super::BackendId;
use crate::stream::Stream;

struct Idle {
    stream: Stream,
    since: Instant,
    tag: Option<Tag>,
}

/// Whom a connection's PROXY protocol header named.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tag {
    /// The client's address.
    pub(crate) client: IpAddr,
    /// The address the client connected to.
    pub(crate) local: SocketAddr,
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

    /// Makes room for `backends` backends (new ids of a registry snapshot).
    pub(crate) fn grow(&mut self, backends: usize) {
        if self.idle.len() < backends {
            self.idle.resize_with(backends, Vec::new);
        }
    }

    /// Closes every idle connection to `backend` (it left its group).
    pub(crate) fn close(&mut self, backend: BackendId) {
        if let Some(stack) = self.idle.get_mut(backend.index()) {
            *stack = Vec::new();
        }
    }

    /// Takes the most recently used live connection to `backend` with
    /// `tag`, if any. `now` may be the worker's coarse clock: idle timeouts
    /// are coarse.
    pub(crate) fn checkout(
        &mut self,
        backend: BackendId,
        tag: Option<Tag>,
        now: Instant,
    ) -> Option<Stream> {
        let stack = self.idle.get_mut(backend.index())?;
        let mut i = stack.len();
        while i > 0 {
            i -= 1;
            if now.duration_since(stack[i].since) >= self.idle_timeout {
                // Older ones (below) are expired too.
                stack.drain(..=i);
                return None;
            }
            if stack[i].tag != tag {
                continue;
            }
            let c = stack.remove(i);
            if still_open(&c.stream) {
                return Some(c.stream);
            }
        }
        None
    }

    /// Returns a connection whose exchange completed cleanly. A full stack
    /// keeps what it has, unless the connection is tagged: then the oldest
    /// gives way (tagged connections are not interchangeable, and the
    /// oldest is the least likely to be asked for).
    pub(crate) fn checkin(
        &mut self,
        backend: BackendId,
        stream: Stream,
        tag: Option<Tag>,
        now: Instant,
    ) {
        if let Some(stack) = self.idle.get_mut(backend.index()) {
            if stack.len() >= self.cap && tag.is_some() && self.cap > 0 {
                stack.remove(0);
            }
            if stack.len() < self.cap {
                stack.push(Idle {
                    stream,
                    since: now,
                    tag,
                });
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
