//! One HTTP/1 client connection: its request loop, from bytes on the socket
//! to a response written back.
//!
//! The loop waits for the client to become readable *before* taking a buffer
//! (an idle keep-alive connection holds none, and after [`PARK_AFTER`] it
//! leaves its task for the worker's parking lot), reads and parses the
//! request head with the sans-I/O codec, routes it, writes the upstream head,
//! and hands the exchange to [`crate::proxy::forward`], implementing
//! [`Downstream`] for it: the body bytes that came with the head, the rest of
//! the body per its framing, `100 Continue`, and the HTTP/1 response head.
//! On a listener with `http2`, a new connection first goes to
//! [`super::h2::detect`] (ALPN, or the h2c preface) and, if it speaks
//! HTTP/2, to [`super::h2::serve`], whose streams come back through
//! [`prepare`]. Every read and write has a deadline. Errors map to one
//! status via [`ProxyError::status`]; once response bytes reached the
//! client, an error can only close the connection.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::Instant;

use super::request_id::{self, RequestId};
use super::{End, DRAIN_IDLE_WINDOW};
use crate::buffer::{self, InBuf};
use crate::config::HeaderPair;
use crate::deadline;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::body::Body;
use crate::http::request::{
    parse_request, HeadLimits, Parsed, RequestError, RequestHead, RequestView,
};
use crate::http::response::ResponseView;
use crate::http::rewrite::{
    write_client_head, write_upstream_head, ClientContext, ClientHead, ForwardHeaders, Forwarding,
    ResponseExtras, SetCookie,
};
use crate::http::{self, Framing};
use crate::park::{ConnInfo, PARK_AFTER};
use crate::proxy::{self, BodyEnd, Downstream, Failure, Request};
use crate::route::Route;
use crate::shard::{Finished, Shard};
use crate::stream::{Stream, Watch, Watched};
use crate::tunnel::{self, Carried, TunnelLimits};
use crate::upstream::{Affinity, ProxySource};

/// Serves one client connection until it closes, errs, times out or parks.
/// `info.served` is 0 for a new connection, or the count of a connection
/// coming back from the parking lot.
pub(crate) async fn serve(shard: Rc<Shard>, tcp: TcpStream, mut info: ConnInfo) -> End {
    let limits = &shard.config.limits;
    let listener = shard.config.listeners.get(info.listener);
    // A parked connection is plain TCP (TLS ones never park), past any
    // PROXY protocol header.
    let fresh = info.served == 0;
    let tls = fresh.then(|| shard.listener_tls(info.listener)).flatten();
    let pp = listener
        .filter(|_| fresh)
        .and_then(|l| l.forwarding.proxy_protocol.as_ref());
    // `early`: what came after a PROXY protocol header on a plain
    // connection, the first request's first bytes.
    // `head_from`: when the first request's head deadline starts.
    let (mut client, early, head_from) = if tls.is_none() && pp.is_none() {
        (Stream::plain(tcp), None, Instant::now())
    } else {
        // Boxed: the header's and the handshake's state is only needed
        // until they are done, so it must not widen every connection's
        // future.
        match Box::pin(start(&shard, tcp, &mut info, pp, tls)).await {
            Some(started) => started,
            None => return End::Closed,
        }
    };
    let local = shard
        .sends_proxy_protocol
        .then(|| local_address(&client, listener.map(|l| l.address)));
    let sni_cert = shard.config.listeners.get(info.listener).and_then(|l| {
        let (m, _) = l.tls.as_ref()?;
        crate::tls::has_sni_certificates(m)
            .then(|| crate::tls::certificate_for(m, client.server_name().map(str::as_bytes)))
    });
    let trusted = listener.is_some_and(|l| l.forwarding.trusted_proxies.contains(info.peer.ip()));
    let mut conn = Conn {
        sni_cert,
        trusted,
        local,
        info,
        // The first request's head must be complete within `header_timeout`
        // of the connection being accepted (idle wait and PROXY protocol
        // header included) or its TLS handshake done; later requests' heads
        // within `header_timeout` of their first byte.
        first_deadline: head_from + limits.header_timeout,
    };
    let mut cbuf: Option<InBuf> = early;
    // A connection back from the parking lot is readable already: no wait.
    let mut resumed = info.served > 0;
    if fresh && listener.is_some_and(|l| l.http2.is_some()) {
        // Boxed: HTTP/2's state never widens an HTTP/1 connection's future.
        match Box::pin(super::h2::detect(&shard, client, &conn, cbuf.take())).await {
            super::h2::Detected::Http1(c, b) => {
                client = c;
                resumed = b.is_some();
                cbuf = b;
            }
            super::h2::Detected::Http2(io) => {
                Box::pin(super::h2::serve(shard.clone(), io, conn)).await;
                return End::Closed;
            }
            super::h2::Detected::Closed => return End::Closed,
        }
    }
    loop {
        if !std::mem::take(&mut resumed) && cbuf.as_ref().is_none_or(InBuf::is_empty) {
            if let Some(b) = cbuf.take() {
                b.release();
            }
            match wait_idle(&shard, &mut client, &conn.info).await {
                Idle::Readable => {}
                Idle::Closed => return End::Closed,
                Idle::Parked => return End::Parked,
            }
        }
        // After the idle wait: bytes are there, take a buffer for them.
        let mut cb = cbuf.take().unwrap_or_default();
        // The exchange's state (a few KiB of futures) lives in its own
        // allocation only while a request is in progress, so an idle
        // keep-alive connection costs a few hundred bytes, not kilobytes.
        let next = Box::pin(exchange(&shard, &mut client, &mut conn, &mut cb)).await;
        conn.info.served += 1;
        match next {
            Next::Keep => cbuf = Some(cb),
            Next::Close => {
                cb.release();
                if client.is_tls() {
                    // Boxed, like `linger`: the connection's future stays
                    // small, and only closing TLS connections pay.
                    let limit = shard.config.limits.client_write_timeout.min(LINGER_TIMEOUT);
                    Box::pin(client.close_notify(limit)).await;
                }
                return End::Closed;
            }
            Next::Linger => {
                cb.release();
                // Boxed: only a closing connection needs this state.
                Box::pin(linger(&shard, &mut client)).await;
                return End::Closed;
            }
        }
    }
}

/// What happens to a connection after an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    /// Keep it for the next request.
    Keep,
    /// Close it now (nothing more will come, or the client is gone).
    Close,
    /// Close it in stages: the client may still be sending.
    Linger,
}

/// Staged close (RFC 9112 §9.6, nginx's `lingering_close`): the longest a
/// connection lingers, the longest pause between the client's bytes, and
/// the most bytes discarded (enough for an upload of tens of MiB in flight).
const LINGER_TIME: Duration = Duration::from_secs(30);
const LINGER_TIMEOUT: Duration = Duration::from_secs(5);
const LINGER_BYTES: u64 = 64 << 20;

/// Closes a connection that lbd may not have read to the end without
/// losing the response it just sent: closing with unread bytes makes the
/// kernel send RST, and a client that had not read the response yet would
/// see "connection reset". So: half-close (FIN after the response), read
/// and discard until the client closes, within [`LINGER_TIME`],
/// [`LINGER_TIMEOUT`] between reads and [`LINGER_BYTES`] (one second while
/// draining), then close. The connection stays counted against the
/// worker's connection cap meanwhile.
async fn linger(shard: &Shard, client: &mut Stream) {
    let write_limit = shard.config.limits.client_write_timeout.min(LINGER_TIMEOUT);
    if client.shutdown_write(write_limit).await.is_err() {
        return;
    }
    let total = if shard.shutting_down() {
        DRAIN_IDLE_WINDOW
    } else {
        LINGER_TIME
    };
    let end = Instant::now() + total;
    let mut buf = InBuf::from_vec(buffer::take_large());
    let mut discarded = 0u64;
    while discarded < LINGER_BYTES {
        let deadline = end.min(Instant::now() + LINGER_TIMEOUT);
        buf.v.clear();
        buf.pos = 0;
        match client
            .fill(&mut buf, buffer::LARGE_BUF_SIZE, deadline)
            .await
        {
            Ok(n) if n > 0 => discarded += n as u64,
            _ => break,
        }
    }
    buf.release();
}

/// What the request loop knows of its connection.
pub(super) struct Conn {
    pub(super) info: ConnInfo,
    pub(super) first_deadline: Instant,
    /// On a TLS listener with SNI certificates: the certificate the
    /// handshake chose (see [`crate::tls::certificate_for`]).
    pub(super) sni_cert: Option<usize>,
    /// The client is in `trusted_proxies`: its forwarding headers and
    /// request id are kept.
    pub(super) trusted: bool,
    /// The address the client reached lbd at, when some group sends PROXY
    /// protocol headers (their destination).
    pub(super) local: Option<SocketAddr>,
}

/// A new connection's start: its PROXY protocol header (`pp`, which sets
/// `info.peer`), then its TLS handshake (`tls`). Returns the stream, on a
/// plain connection the bytes that came after the header, and when the
/// first request's head deadline starts (accept, or the handshake's end);
/// `None` if the connection is done.
async fn start(
    shard: &Shard,
    mut tcp: TcpStream,
    info: &mut ConnInfo,
    pp: Option<&crate::config::ProxyProtocolConfig>,
    tls: Option<(std::sync::Arc<rustls::ServerConfig>, Duration)>,
) -> Option<(Stream, Option<InBuf>, Instant)> {
    let accepted = Instant::now();
    let mut early = None;
    if let Some(pp) = pp {
        early = super::proxy_protocol::accept(shard, &mut tcp, pp, info)
            .await
            .ok()?;
    }
    let Some((config, limit)) = tls else {
        return Some((Stream::plain(tcp), early, accepted));
    };
    // The handshake's first bytes may have come with the header.
    let first = early.as_ref().map_or(&[][..], InBuf::data);
    let res = Stream::accept_tls(tcp, config, limit, first).await;
    if let Some(b) = early {
        b.release();
    }
    match res {
        Ok(s) => Some((s, None, Instant::now())),
        Err(e) => {
            log::debug!("{}: TLS handshake failed: {e}", info.peer);
            None
        }
    }
}

/// The address a client connection reached lbd at: the listener's own when
/// it names one, else the socket's (a wildcard listener).
fn local_address(client: &Stream, listener: Option<SocketAddr>) -> SocketAddr {
    use nix::sys::socket::{getsockname, SockaddrLike, SockaddrStorage};
    if let Some(a) = listener.filter(|a| !a.ip().is_unspecified() && a.port() != 0) {
        return a;
    }
    let own = getsockname::<SockaddrStorage>(client.raw_fd())
        .ok()
        .and_then(|s| match s.family() {
            Some(nix::sys::socket::AddressFamily::Inet) => {
                s.as_sockaddr_in().map(|a| SocketAddr::V4((*a).into()))
            }
            Some(nix::sys::socket::AddressFamily::Inet6) => {
                s.as_sockaddr_in6().map(|a| SocketAddr::V6((*a).into()))
            }
            _ => None,
        });
    own.or(listener)
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// How an idle wait ended.
pub(super) enum Idle {
    /// Bytes (or EOF) are waiting.
    Readable,
    /// Timed out, failed or drained: close.
    Closed,
    /// Moved to the parking lot.
    Parked,
}

/// Waits, without a buffer, for the next request's first bytes, within the
/// keep-alive timeout (or the first request's head timeout). A keep-alive
/// connection idle for [`PARK_AFTER`] leaves for the parking lot (see
/// `park`). While draining, an idle connection gets one short window for a
/// request already on its way (served with Connection: close), then closes:
/// closing at once would race with such a request.
pub(super) async fn wait_idle(shard: &Shard, client: &mut Stream, info: &ConnInfo) -> Idle {
    let limits = &shard.config.limits;
    let idle_limit = if info.served == 0 {
        limits.header_timeout
    } else {
        limits.keepalive_timeout
    };
    let mut may_park = info.served > 0
        && idle_limit > PARK_AFTER
        && matches!(client, Stream::Plain(_))
        && shard.lot.enabled();
    let mut left = idle_limit;
    let mut drain_window_used = false;
    loop {
        let parking = may_park && !shard.shutting_down();
        let wait = if shard.shutting_down() {
            drain_window_used = true;
            left.min(DRAIN_IDLE_WINDOW)
        } else if parking {
            PARK_AFTER
        } else {
            left
        };
        let woke = {
            let readable = std::pin::pin!(client.readable());
            shard.idle.within(shard.coarse_now() + wait, readable).await
        };
        match woke {
            Some(Ok(())) => return Idle::Readable,
            Some(Err(_)) => return Idle::Closed,
            None if shard.shutting_down() && !drain_window_used => continue,
            None if parking && !shard.shutting_down() => {
                left = left.saturating_sub(PARK_AFTER);
                let Stream::Plain(tcp) = &*client else {
                    return Idle::Closed;
                };
                // The rest of the keep-alive timeout, as coarse as the sweep.
                match shard.lot.park(tcp, *info, shard.coarse_now() + left) {
                    Ok(()) => return Idle::Parked,
                    // Out of descriptors, say: wait here instead.
                    Err(e) => {
                        log::debug!("{}: cannot park idle connection: {e}", info.peer);
                        may_park = false;
                    }
                }
            }
            None => return Idle::Closed,
        }
    }
}

/// A request whose head was read, parsed and routed.
struct Prepared {
    req: Request,
    /// Index of its route in the listener's routes.
    route: usize,
    /// The upstream head.
    obuf: Vec<u8>,
    /// Its access-log fields, if logging.
    fields: Option<crate::access_log::Fields>,
    /// When its head was complete.
    started: std::time::Instant,
    /// Its request id (`request_id`), if it has one.
    request_id: Option<RequestId>,
}

/// One request/response exchange. `Ok(true)`: keep the connection.
async fn exchange(shard: &Shard, client: &mut Stream, conn: &mut Conn, cb: &mut InBuf) -> Next {
    let limits = &shard.config.limits;
    let peer = conn.info.peer;
    let head_deadline = if conn.info.served == 0 {
        conn.first_deadline
    } else {
        Instant::from_std(shard.coarse_now()) + limits.header_timeout
    };
    let p = match read_head(shard, client, conn, cb, head_deadline).await {
        Ok(p) => p,
        Err(next) => return next,
    };
    let http10 = p.req.head.http10;
    let routes = &shard.routes[conn.info.listener];
    let rid_header = shard.config.listeners[conn.info.listener]
        .forwarding
        .request_id
        .as_ref();
    let mut down = H1Exchange {
        shard,
        client: &mut *client,
        cb,
        http10,
        add_response_headers: &routes.config(p.route).add_response_headers,
        body_done: p.req.head.framing == Framing::None,
        upgrade: p.req.upgrade.is_some(),
        request_id: rid_header
            .zip(p.request_id.as_ref())
            .map(|(c, id)| (c.header.as_slice(), id.as_bytes())),
    };
    let result = proxy::forward(shard, &mut down, &p.req, p.obuf).await;
    // Request bytes may still be on their way: close in stages.
    let unread = !down.body_done;
    let elapsed = p.started.elapsed();
    match result {
        Ok(done) => {
            let upstream = p
                .fields
                .is_some()
                .then(|| shard.upstreams.borrow().address(done.backend));
            let finished = Finished {
                peer,
                fields: p.fields,
                status: done.status,
                body_bytes: done.body_bytes,
                elapsed,
                upstream,
                route: Some((conn.info.listener, p.route)),
                tunnel: done.tunnel.map(|t| (t.upstream, t.downstream)),
            };
            shard.finish(finished, true);
            if done.tunnel.is_some() {
                return Next::Close;
            }
            match done.close_client {
                false => Next::Keep,
                true if unread || !cb.is_empty() => Next::Linger,
                true => Next::Close,
            }
        }
        Err(Failure::Respond(err, buf)) => {
            match err.side {
                Side::Downstream => log::debug!("{peer}: {err}"),
                _ => log::warn!("{peer}: {err}"),
            }
            respond_error(shard, client, &err, buf).await;
            let elapsed = p.started.elapsed();
            let fields = err.status().and(p.fields);
            let status = err.status().unwrap_or(0);
            let finished = Finished {
                peer,
                fields,
                status,
                body_bytes: 0,
                elapsed,
                upstream: None,
                route: Some((conn.info.listener, p.route)),
                tunnel: None,
            };
            shard.finish(finished, true);
            if unread || !cb.is_empty() {
                Next::Linger
            } else {
                Next::Close
            }
        }
        Err(Failure::Close(err)) => {
            log::debug!("{peer}: closing: {err}");
            if let Some(f) = p.fields {
                shard.give_fields(f);
            }
            Next::Close
        }
    }
}

/// Reads the request head under one deadline that trickled bytes do not
/// move; parses, routes and writes the upstream head. A rejected request is
/// answered (and logged) here; `Err` says how the connection closes.
async fn read_head(
    shard: &Shard,
    client: &mut Stream,
    conn: &Conn,
    cb: &mut InBuf,
    deadline: Instant,
) -> Result<Prepared, Next> {
    let limits = &shard.config.limits;
    let info = &conn.info;
    let mut obuf = buffer::take();
    loop {
        if !cb.is_empty() {
            obuf.clear();
            match prepare(shard, conn, cb.data(), &mut obuf) {
                Ok(Parsed::Complete(Routed {
                    head,
                    route,
                    affinity,
                    upgrade,
                    request_id,
                })) => {
                    let started = std::time::Instant::now();
                    let mut fields = shard.access_fields(&cb.data()[..head.head_len]);
                    if let Some(f) = &mut fields {
                        let forwarding = &shard.config.listeners[info.listener].forwarding;
                        if forwarding.request_id.is_some() {
                            f.set_request_id(request_id.as_ref().map(RequestId::as_bytes));
                        }
                    }
                    cb.consume(head.head_len);
                    let close_client = !head.keep_alive
                        || info.served + 1 >= limits.keepalive_requests
                        || shard.shutting_down();
                    let req = Request {
                        group: route.group,
                        affinity,
                        head,
                        close_client,
                        upgrade,
                    };
                    return Ok(Prepared {
                        req,
                        route: route.index,
                        obuf,
                        fields,
                        started,
                        request_id,
                    });
                }
                Ok(Parsed::Partial) => {}
                Err(err) => {
                    log::debug!("{}: request rejected: {err}", info.peer);
                    reject(shard, client, info, cb, err, obuf, Duration::ZERO).await;
                    // The rest of an oversized or bad head may be on its way.
                    return Err(Next::Linger);
                }
            }
        }
        // Whether part of a head is buffered, decided before the read: a
        // read cancelled by the deadline keeps the buffer.
        let partial = !cb.is_empty();
        match client.fill(cb, limits.max_head_bytes, deadline).await {
            Ok(0) => {
                buffer::give(obuf);
                return Err(Next::Close); // EOF: the client is done (or gave up mid-head).
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if partial {
                    let err = ProxyError::downstream(ErrorKind::ClientTimeout);
                    let waited = limits.header_timeout;
                    reject(shard, client, info, cb, err, Vec::new(), waited).await;
                    return Err(Next::Linger);
                }
                return Err(Next::Close);
            }
            Err(_) => {
                buffer::give(obuf);
                return Err(Next::Close);
            }
        }
    }
}

/// A parsed, routed request: its head, route, affinity and request id.
pub(super) struct Routed {
    pub(super) head: RequestHead,
    pub(super) route: Route,
    pub(super) affinity: Affinity,
    /// An allowed upgrade (index into the group's `upgrade_protocols`).
    pub(super) upgrade: Option<usize>,
    pub(super) request_id: Option<RequestId>,
}

/// Parses the head at the start of `buf`, routes it and writes the upstream
/// head (with the route's path and header rewrites) into `obuf`. HTTP/2
/// streams come here too, their head rebuilt as HTTP/1.1 ([`super::h2`]).
pub(super) fn prepare(
    shard: &Shard,
    conn: &Conn,
    buf: &[u8],
    obuf: &mut Vec<u8>,
) -> Result<Parsed<Routed>, ProxyError> {
    let info = &conn.info;
    let limits = &shard.config.limits;
    let hl = HeadLimits {
        max_head_bytes: limits.max_head_bytes,
        max_headers: limits.max_headers,
    };
    let routes = &shard.routes[info.listener];
    let listener = &shard.config.listeners[info.listener];
    let lf = &listener.forwarding;
    let mut scratch = shard.scratch.borrow_mut();
    let parsed = parse_request(buf, hl, |v| {
        if misdirected(shard, conn, v) {
            return Err(Reject::Misdirected);
        }
        let Some((route, path)) = routes.select(v, &mut scratch)? else {
            return Err(Reject::NoRoute);
        };
        let rc = routes.config(route.index);
        let ups = shard.upstreams.borrow();
        let upgrade = v
            .upgrade_protocol()
            .and_then(|p| ups.upgrade_allowed(route.group, p));
        if upgrade.is_some() && shard.tunnels.get() >= shard.config.limits.max_tunnels_per_worker {
            return Err(Reject::TunnelLimit);
        }
        let request_id = lf
            .request_id
            .as_ref()
            .and_then(|c| request_id::decide(c, conn.trusted, v.headers, &shard.request_ids));
        let fwd = Forwarding {
            client_ip: info.peer.ip(),
            default_host: ups.default_host(route.group),
            host_override: rc.set_host.as_deref().or(ups.host_override(route.group)),
            remove: &rc.remove_request_headers,
            add: &rc.add_request_headers,
            upgrade: upgrade.and(v.upgrade),
            headers: ForwardHeaders {
                trusted: conn.trusted,
                xff: lf.forwarded.x_forwarded(),
                proto_host: lf.forwarded.x_forwarded(),
                rfc7239: lf.forwarded.rfc7239(),
                https: listener.tls.is_some(),
                request_id: lf.request_id.as_ref().map(|c| {
                    (
                        c.header.as_slice(),
                        request_id.as_ref().map(RequestId::as_bytes),
                    )
                }),
            },
        };
        write_upstream_head(&RequestView { path, ..*v }, &fwd, obuf);
        let mut affinity = ups.affinity(route.group, info.peer.ip(), v);
        if let (Some(dst), true) = (conn.local, ups.sends_proxy_protocol(route.group)) {
            affinity.proxy = Some(ProxySource {
                src: info.peer,
                dst,
            });
        }
        Ok(Routed {
            head: v.head,
            route,
            affinity,
            upgrade,
            request_id,
        })
    });
    let bad = |e| ProxyError::downstream(ErrorKind::BadRequest(e));
    match parsed.map_err(bad)? {
        Parsed::Partial => Ok(Parsed::Partial),
        Parsed::Complete(Ok(r)) => Ok(Parsed::Complete(r)),
        Parsed::Complete(Err(Reject::Bad(e))) => Err(bad(e)),
        Parsed::Complete(Err(Reject::NoRoute)) => Err(ProxyError::downstream(ErrorKind::NoRoute)),
        Parsed::Complete(Err(Reject::Misdirected)) => {
            Err(ProxyError::downstream(ErrorKind::Misdirected))
        }
        Parsed::Complete(Err(Reject::TunnelLimit)) => {
            Err(ProxyError::internal(ErrorKind::TunnelLimit))
        }
    }
}

/// Why a parsed request is refused before any backend sees it.
enum Reject {
    Bad(RequestError),
    NoRoute,
    Misdirected,
    TunnelLimit,
}

impl From<RequestError> for Reject {
    fn from(e: RequestError) -> Self {
        Reject::Bad(e)
    }
}

/// True when, on a TLS listener with SNI certificates, the request's host
/// names another certificate than the connection's (RFC 9110 §15.5.20:
/// 421, so a client does not reuse a connection for a name it does not
/// cover).
fn misdirected(shard: &Shard, conn: &Conn, v: &RequestView<'_>) -> bool {
    let (Some(sni), Some(host)) = (conn.sni_cert, v.target_host()) else {
        return false;
    };
    let Some((m, _)) = shard
        .config
        .listeners
        .get(conn.info.listener)
        .and_then(|l| l.tls.as_ref())
    else {
        return false;
    };
    let host = crate::route::table::request_host(host);
    crate::tls::certificate_for(m, Some(host)) != sni
}

/// Answers a request lbd rejects itself, and logs it with the bytes of its
/// (first) line.
async fn reject(
    shard: &Shard,
    client: &mut Stream,
    info: &ConnInfo,
    cb: &InBuf,
    err: ProxyError,
    buf: Vec<u8>,
    waited: Duration,
) {
    let finished = Finished {
        peer: info.peer,
        fields: shard.access_fields(cb.data()),
        status: err.status().unwrap_or(0),
        body_bytes: 0,
        elapsed: waited,
        upstream: None,
        route: None,
        tunnel: None,
    };
    shard.finish(finished, false);
    respond_error(shard, client, &err, buf).await;
}

/// Sends the short response for `err`, if it has a status.
async fn respond_error(shard: &Shard, client: &mut Stream, err: &ProxyError, mut buf: Vec<u8>) {
    let Some(status) = err.status() else { return };
    shard.metrics.response(status);
    buf.clear();
    http::write_simple_response(&mut buf, status, true);
    let len = buf.len();
    let limit = shard.config.limits.client_write_timeout;
    let (_, buf) = client.write_range(buf, 0, len, limit).await;
    buffer::give(buf);
}

/// The HTTP/1 client's side of one exchange.
struct H1Exchange<'a> {
    shard: &'a Shard,
    client: &'a mut Stream,
    /// What the client sent after the request head.
    cb: &'a mut InBuf,
    http10: bool,
    /// The route's `add_response_headers`.
    add_response_headers: &'a [HeaderPair],
    /// The whole request body was read.
    body_done: bool,
    /// The request asked for an upgrade lbd forwarded.
    upgrade: bool,
    /// The request id echoed in the response: header name and value.
    request_id: Option<(&'a [u8], &'a [u8])>,
}

fn client_io(e: io::Error) -> ProxyError {
    ProxyError::downstream(ErrorKind::ClientIo(e))
}

impl H1Exchange<'_> {
    /// Waits until the client sent more body bytes (`false`) or the backend
    /// began to answer (`true`), before `deadline`. Readiness only: nothing
    /// read is lost when the other side wins.
    async fn client_or_answer(
        &mut self,
        up: &mut Stream,
        w: &mut Watch,
        deadline: Instant,
    ) -> Result<bool, ProxyError> {
        loop {
            let woke = {
                let either = std::pin::pin!(async {
                    monoio::select! {
                        r = self.client.readable() => (Side::Downstream, r),
                        r = w.readable() => (Side::Upstream, r),
                    }
                });
                deadline::within(deadline.into_std(), either).await
            };
            let Some(woke) = woke else {
                return Err(ProxyError::downstream(ErrorKind::ClientTimeout));
            };
            match woke {
                (Side::Downstream, Ok(())) => return Ok(false),
                (Side::Downstream, Err(e)) => return Err(client_io(e)),
                (_, Err(e)) => return Err(ProxyError::upstream(ErrorKind::UpstreamIo(e))),
                (_, Ok(())) => {
                    let spoke = up.spoke(w).await;
                    if spoke.map_err(|e| ProxyError::upstream(ErrorKind::UpstreamIo(e)))? {
                        return Ok(true);
                    }
                }
            }
        }
    }
}

impl Downstream for H1Exchange<'_> {
    async fn upstream_ready(&mut self, head: &RequestHead) -> Result<(), ProxyError> {
        if !(head.expect_continue && self.cb.is_empty()) {
            return Ok(());
        }
        let mut cont = buffer::take();
        cont.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        let len = cont.len();
        let (res, cont) = self.write(cont, 0, len).await;
        buffer::give(cont);
        res
    }

    fn buffered_body(&mut self, body: &mut Body, out: &mut Vec<u8>) -> Result<(), ProxyError> {
        let cb = &mut *self.cb;
        let start = cb.pos;
        let (n, used) = body
            .frame(&mut cb.v[start..], false)
            .map_err(|e| ProxyError::downstream(ErrorKind::BadRequestBody(e)))?;
        out.extend_from_slice(&cb.v[start..start + n]);
        cb.consume(used);
        self.body_done = body.is_done();
        Ok(())
    }

    async fn stream_body(
        &mut self,
        body: &mut Body,
        up: &mut Stream,
    ) -> Result<BodyEnd, ProxyError> {
        let limits = &self.shard.config.limits;
        // Watch the backend while sending: it may answer before the end.
        // Without a spare descriptor, stream without watching.
        let mut watch = up.watch().ok();
        // Large bodies stream in large buffers.
        if body.is_larger_than(buffer::BUF_SIZE as u64) {
            self.cb.upsize();
        }
        while !body.is_done() {
            let deadline = Instant::now() + limits.body_timeout;
            if let Some(w) = watch.as_mut() {
                if self.client_or_answer(up, w, deadline).await? {
                    return Ok(BodyEnd::Answered);
                }
            }
            let cb = &mut *self.cb;
            match self.client.fill(cb, buffer::LARGE_BUF_SIZE, deadline).await {
                Ok(0) => return Err(client_io(io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return Err(ProxyError::downstream(ErrorKind::ClientTimeout))
                }
                Err(e) => return Err(client_io(e)),
            }
            let start = cb.pos;
            let (n, used) = body
                .frame(&mut cb.v[start..], false)
                .map_err(|e| ProxyError::downstream(ErrorKind::BadRequestBody(e)))?;
            let v = std::mem::take(&mut cb.v);
            let limit = limits.upstream_body_timeout;
            let (res, v) = match watch.as_mut() {
                Some(w) => up.write_watching(v, start, start + n, limit, w).await,
                None => {
                    let (res, v) = up.write_range(v, start, start + n, limit).await;
                    (res.map(|()| Watched::Written), v)
                }
            };
            cb.v = v;
            match res.map_err(|e| ProxyError::upstream(ErrorKind::UpstreamIo(e)))? {
                Watched::Written => cb.consume(used),
                Watched::Spoke => return Ok(BodyEnd::Answered),
            }
        }
        self.body_done = true;
        Ok(BodyEnd::Complete)
    }

    fn encode_head(
        &mut self,
        resp: &ResponseView<'_>,
        close: bool,
        set_cookie: Option<SetCookie<'_>>,
        out: &mut Vec<u8>,
    ) -> ClientHead {
        // Bytes the client sent after an upgrade request are not a next
        // request: without the switch, the connection closes instead.
        let held = self.upgrade && !self.cb.is_empty() && !resp.head.switched;
        let ctx = ClientContext {
            http10: self.http10,
            close_client: close || held,
        };
        let extras = ResponseExtras {
            headers: self.add_response_headers,
            set_cookie,
            request_id: self.request_id,
        };
        write_client_head(resp, ctx, &extras, out)
    }

    async fn tunnel(&mut self, up: &mut Stream, idle: Duration) -> Carried {
        let shard = self.shard;
        let limits = &shard.config.limits;
        shard.tunnels.set(shard.tunnels.get() + 1);
        shard.metrics.tunnels_total.inc();
        let tl = TunnelLimits {
            idle,
            write: limits
                .client_write_timeout
                .max(limits.upstream_body_timeout),
        };
        // What the client sent after its upgrade request goes first; the
        // read buffer goes back to the free list (an idle tunnel holds none).
        let early = (!self.cb.is_empty()).then(|| {
            let mut e = buffer::take();
            e.extend_from_slice(self.cb.data());
            e
        });
        buffer::give(std::mem::take(&mut self.cb.v));
        self.cb.pos = 0;
        // Boxed: the relay's idle timer would otherwise grow (and align to
        // 128 bytes) the state of every exchange, upgraded or not.
        let carried = Box::pin(tunnel::relay(self.client, up, early, tl)).await;
        shard.tunnels.set(shard.tunnels.get() - 1);
        shard.metrics.tunnel_bytes_upstream.add(carried.upstream);
        shard
            .metrics
            .tunnel_bytes_downstream
            .add(carried.downstream);
        carried
    }

    async fn write(
        &mut self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    ) -> (Result<(), ProxyError>, Vec<u8>) {
        let limit = self.shard.config.limits.client_write_timeout;
        let (res, buf) = self.client.write_range(buf, start, end, limit).await;
        (res.map_err(client_io), buf)
    }
}
