//! From a group to a connected backend: checkout or connect, TCP then TLS,
//! and the retry policy across backends.
//!
//! [`acquire`] picks the next eligible backend, reuses a pooled connection to
//! it or opens a new one; a failed connect (nothing was sent, so any method
//! may move on) marks the backend down on this worker and moves to the next.
//! [`reacquire`] decides where a request that was sent but got no response
//! byte goes again (see [`crate::error::Retry`]): a reused pooled connection
//! that died was most likely just stale, so the same backend on a new
//! connection; a fresh one that died means the backend is in trouble, so it
//! is marked down and the next backend is tried. Every attempt of a request
//! counts against `max_retries` ([`Attempts`]). Resource exhaustion on lbd's
//! side (descriptors, ports, memory) is an internal error: the backend is not
//! blamed and the others are not tried.
//!
//! For a group with `send_proxy_protocol`, a new connection starts with the
//! PROXY protocol header for the request's client ([`Affinity::proxy`]),
//! written right after the TCP connect (before any TLS handshake) within the
//! connect timeout, and only a pooled connection opened for the same client
//! is reused (see [`super::pool`]).

use std::cell::RefCell;
use std::io;
use std::time::{Duration, Instant};

use monoio::net::TcpStream;
use monoio::time::timeout;

use super::pool::Tag;
use super::{Affinity, BackendId, Outcome, ProxySource, Upstreams};
use crate::error::{ErrorKind, ProxyError, Side};
use crate::stream::Stream;

/// An upstream connection in use.
pub(crate) struct Upstream<'u> {
    /// The connection.
    pub(crate) stream: Stream,
    /// Where it goes.
    pub(crate) backend: BackendId,
    /// It came from the pool.
    pub(crate) reused: bool,
    /// The client its PROXY protocol header named, if it sent one: it goes
    /// back to the pool with it.
    pub(crate) tag: Option<Tag>,
    /// The request counts as in flight to `backend` while this lives.
    pub(crate) lease: Lease<'u>,
}

/// A request in flight to a backend: counted from [`acquire`] until dropped,
/// when its outcome (failure unless [`Lease::responded`] said otherwise)
/// goes to the balancer's per-backend state.
pub(crate) struct Lease<'u> {
    ups: &'u RefCell<Upstreams>,
    id: BackendId,
    outcome: Outcome,
}

impl<'u> Lease<'u> {
    fn new(ups: &'u RefCell<Upstreams>, id: BackendId) -> Self {
        ups.borrow_mut().start(id);
        Lease {
            ups,
            id,
            outcome: Outcome::Failed,
        }
    }

    /// The backend answered with `status` after `latency`, at `at`.
    pub(crate) fn responded(&mut self, status: u16, latency: Duration, at: Instant) {
        self.outcome = Outcome::Response {
            status,
            latency,
            at,
        };
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        // Never borrowed across an await, so never borrowed here; if it
        // were, losing one count beats a panic.
        if let Ok(mut u) = self.ups.try_borrow_mut() {
            u.finish(self.id, self.outcome);
        }
    }
}

/// A request's connection attempts, across backends and resends.
#[derive(Debug)]
pub(crate) struct Attempts {
    tries: usize,
    max: usize,
}

impl Attempts {
    /// At most `max` attempts (`max_retries`).
    pub(crate) fn new(max: usize) -> Self {
        Attempts { tries: 0, max }
    }

    /// True while another attempt is allowed.
    pub(crate) fn left(&self) -> bool {
        self.tries < self.max
    }

    fn count(&mut self) {
        self.tries += 1;
    }
}

/// Connects to the next eligible backend of `group` (see the module doc).
/// `now` reads the worker's coarse clock (pool idle times).
pub(crate) async fn acquire<'u>(
    ups: &'u RefCell<Upstreams>,
    group: usize,
    aff: &Affinity,
    now: impl Fn() -> Instant,
    attempts: &mut Attempts,
) -> Result<Upstream<'u>, ProxyError> {
    let mut last: Option<ProxyError> = None;
    while attempts.left() {
        let Some(backend) = ups.borrow_mut().select(group, aff, now()) else {
            break;
        };
        attempts.count();
        let lease = Lease::new(ups, backend);
        let lease = match checkout(ups, backend, aff, now(), lease) {
            Ok(up) => return Ok(up),
            Err(lease) => lease,
        };
        let addr = ups.borrow().address(backend);
        log::debug!("upstream peer is {addr}");
        match Box::pin(connect(ups, group, backend, aff.proxy)).await {
            Ok(stream) => return Ok(opened(ups, stream, backend, aff, lease)),
            Err(e) if e.side == Side::Internal => {
                log::error!("cannot connect to upstream {addr}: {}", e.kind);
                return Err(e);
            }
            Err(e) => {
                log::warn!("connect to upstream {addr} failed: {}", e.kind);
                drop(lease);
                let mut u = ups.borrow_mut();
                u.mark_down(backend);
                u.metrics.backend(backend.index()).connect_errors.inc();
                last = Some(e);
            }
        }
    }
    // No eligible backend at all (all down) is 503 at once; otherwise the
    // last failure decides (502 refused, 504 timed out).
    Err(last.unwrap_or_else(|| ProxyError::upstream(ErrorKind::NoUpstream)))
}

/// Where a sent request that got no response byte goes again (see the
/// module doc). `old` is dropped (closed) first.
pub(crate) async fn reacquire<'u>(
    ups: &'u RefCell<Upstreams>,
    group: usize,
    aff: &Affinity,
    old: Upstream<'u>,
    now: impl Fn() -> Instant,
    attempts: &mut Attempts,
) -> Result<Upstream<'u>, ProxyError> {
    let Upstream {
        stream,
        backend,
        reused,
        lease,
        ..
    } = old;
    drop(stream);
    let addr = ups.borrow().address(backend);
    if reused {
        log::debug!("pooled connection to {addr} was closed; resending on a new one");
        attempts.count();
        match Box::pin(connect(ups, group, backend, aff.proxy)).await {
            Ok(stream) => return Ok(opened(ups, stream, backend, aff, lease)),
            Err(e) => log::warn!("connect to upstream {addr} failed: {}", e.kind),
        }
    }
    drop(lease);
    log::warn!(
        "upstream {addr} failed before responding; retrying the idempotent request on the next backend"
    );
    ups.borrow_mut().mark_down(backend);
    acquire(ups, group, aff, now, attempts).await.map_err(|e| {
        // Nothing left to try: report the original failure.
        if matches!(e.kind, ErrorKind::NoUpstream) {
            ProxyError::upstream(ErrorKind::UpstreamClosed)
        } else {
            e
        }
    })
}

/// A pooled connection to `backend` (for the request's client, if the
/// group sends PROXY protocol headers), or the lease back.
fn checkout<'u>(
    ups: &RefCell<Upstreams>,
    backend: BackendId,
    aff: &Affinity,
    now: Instant,
    lease: Lease<'u>,
) -> Result<Upstream<'u>, Lease<'u>> {
    let mut u = ups.borrow_mut();
    let tag = aff.proxy.as_ref().map(ProxySource::tag);
    let Some(stream) = u.checkout(backend, tag, now) else {
        return Err(lease);
    };
    u.metrics.backend(backend.index()).pool_reuse.inc();
    Ok(Upstream {
        stream,
        backend,
        reused: true,
        tag,
        lease,
    })
}

fn opened<'u>(
    ups: &RefCell<Upstreams>,
    stream: Stream,
    backend: BackendId,
    aff: &Affinity,
    lease: Lease<'u>,
) -> Upstream<'u> {
    ups.borrow()
        .metrics
        .backend(backend.index())
        .new_connections
        .inc();
    Upstream {
        stream,
        backend,
        reused: false,
        tag: aff.proxy.as_ref().map(ProxySource::tag),
        lease,
    }
}

/// Opens a new connection to `backend` (callers box the future: its monoio
/// timers would otherwise make every exchange's state larger and
/// 128-byte aligned): TCP within the connect timeout, the
/// PROXY protocol header for `proxy` if the group sends one, then, for a
/// TLS group, the handshake within what is left of it. Any failure here
/// means no request byte was sent.
pub(crate) async fn connect(
    ups: &RefCell<Upstreams>,
    group: usize,
    backend: BackendId,
    proxy: Option<ProxySource>,
) -> Result<Stream, ProxyError> {
    let (limit, addr, tls, pp) = {
        let u = ups.borrow();
        let pp = u.send_proxy_protocol(group);
        (u.connect_timeout, u.address(backend), u.tls(group), pp)
    };
    let started = Instant::now();
    let left = || {
        limit
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1))
    };
    let mut tcp = match timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(t)) => t,
        // Out of descriptors, ports or memory: lbd's problem, not the
        // backend's; do not mark it down or try the others.
        Ok(Err(e)) if is_local_exhaustion(&e) => {
            return Err(ProxyError::internal(ErrorKind::LocalResources(e)))
        }
        Ok(Err(e)) => return Err(ProxyError::upstream(ErrorKind::ConnectFailed(e))),
        Err(_) => return Err(ProxyError::upstream(ErrorKind::ConnectTimeout)),
    };
    if let Some(version) = pp {
        send_proxy_header(&mut tcp, version, proxy, left()).await?;
    }
    let Some((config, name)) = tls else {
        return Ok(Stream::plain(tcp));
    };
    match Stream::connect_tls(tcp, config, name, left()).await {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            Err(ProxyError::upstream(ErrorKind::ConnectTimeout))
        }
        Err(e) => Err(ProxyError::upstream(ErrorKind::TlsHandshake(e))),
    }
}

/// Writes the PROXY protocol header in front of a new connection: the
/// request's client, or `LOCAL` if lbd has none to name.
async fn send_proxy_header(
    tcp: &mut TcpStream,
    version: crate::proxy_protocol::Version,
    proxy: Option<ProxySource>,
    limit: Duration,
) -> Result<(), ProxyError> {
    use monoio::buf::IoBuf;
    use monoio::io::AsyncWriteRentExt;
    let mut buf = crate::buffer::take();
    match proxy {
        Some(p) => crate::proxy_protocol::write(&mut buf, version, p.src, p.dst),
        None => crate::proxy_protocol::write_local(&mut buf, version),
    }
    let len = buf.len();
    let res = match timeout(limit, tcp.write_all(buf.slice(0..len))).await {
        Ok((res, slice)) => {
            crate::buffer::give(slice.into_inner());
            res.map(|_| ())
        }
        Err(_) => return Err(ProxyError::upstream(ErrorKind::ConnectTimeout)),
    };
    res.map_err(|e| ProxyError::upstream(ErrorKind::ConnectFailed(e)))
}

fn is_local_exhaustion(e: &io::Error) -> bool {
    use nix::libc::{EADDRNOTAVAIL, EMFILE, ENFILE, ENOBUFS, ENOMEM};
    matches!(
        e.raw_os_error(),
        Some(EMFILE | ENFILE | ENOBUFS | ENOMEM | EADDRNOTAVAIL)
    )
}
