//! One client connection: its request loop, from bytes on the socket to a
//! response written back.
//!
//! A session waits for the client to become readable *before* taking a buffer
//! (an idle keep-alive connection holds none), reads and parses the request
//! head with the sans-I/O codec, picks a backend with the worker's cursor,
//! reuses a pooled upstream connection or connects, writes the rewritten head
//! together with the first body bytes in one write, streams the rest of the
//! body per its framing, then reads the response head, writes it with the
//! first body bytes in one write and streams the rest. Every read and write
//! has a deadline. The upstream connection goes back to the worker's pool only
//! when the response ended exactly where its framing said. Errors map to one
//! status via [`ProxyError::status`]; once response bytes reached the client,
//! an error can only close the connection.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::{timeout, Instant};

use crate::buffer::{self, InBuf};
use crate::error::{ErrorKind, ProxyError};
use crate::http::chunked::{ChunkError, ChunkedDecoder};
use crate::http::request::{parse_request, Forwarding, HeadLimits, Parsed, RequestHead};
use crate::http::response::{
    parse_response, RequestContext, ResponseHead, MAX_RESPONSE_HEAD_BYTES,
};
use crate::http::{self, Framing};
use crate::park::{ConnInfo, PARK_AFTER};
use crate::stream::Stream;
use crate::worker::WorkerCtx;

/// How long an idle keep-alive connection stays open once draining began.
pub const DRAIN_IDLE_WINDOW: Duration = Duration::from_secs(1);

/// Where a message body stands.
enum Body {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl Body {
    fn new(framing: Framing, ext_limit: usize) -> Self {
        match framing {
            Framing::None | Framing::Length(0) => Body::Done,
            Framing::Length(n) => Body::Length(n),
            Framing::Chunked => Body::Chunked(ChunkedDecoder::with_extension_limit(ext_limit)),
            Framing::UntilClose => Body::UntilClose,
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, Body::Done)
    }

    /// More than one small buffer's worth (or of unknown length) remains.
    fn is_large(&self) -> bool {
        match self {
            Body::Done => false,
            Body::Length(n) => *n > buffer::BUF_SIZE as u64,
            Body::Chunked(_) | Body::UntilClose => true,
        }
    }

    /// Frames the bytes at the start of `buf`. Returns (bytes to forward, now
    /// at `buf[..out]`; bytes consumed). With `dechunk`, chunk data is moved
    /// to the front and framing dropped; otherwise the consumed bytes are
    /// forwarded verbatim.
    fn frame(&mut self, buf: &mut [u8], dechunk: bool) -> Result<(usize, usize), ChunkError> {
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
                if dec.is_done() {
                    *self = Body::Done;
                }
                Ok((if dechunk { out } else { pos }, pos))
            }
        }
    }
}

/// An upstream connection in use.
struct Upstream {
    stream: Stream,
    backend: usize,
    reused: bool,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The connection is closed.
    Closed,
    /// The connection went on idle into the worker's parking lot.
    Parked,
}

/// Serves one client connection until it closes, errs, times out or parks.
/// `info.served` is 0 for a new connection, or the count of a connection
/// coming back from the parking lot.
pub async fn serve(ctx: Rc<WorkerCtx>, tcp: TcpStream, info: ConnInfo) -> End {
    let ConnInfo {
        peer,
        listener,
        group,
        served: already,
    } = info;
    let limits = &ctx.config.limits;
    // A parked connection is plain TCP (TLS ones never park).
    let tls = if already == 0 {
        ctx.listener_tls(listener)
    } else {
        None
    };
    let mut client = match tls {
        None => Stream::plain(tcp),
        // Boxed: the handshake's state is only needed until it completes, so
        // it must not widen every connection's future.
        Some((config, limit)) => match Box::pin(Stream::accept_tls(tcp, config, limit)).await {
            Ok(s) => s,
            Err(e) => {
                log::debug!("{peer}: TLS handshake failed: {e}");
                return End::Closed;
            }
        },
    };
    let mut cbuf: Option<InBuf> = None;
    let mut served: u64 = already;
    // A connection back from the parking lot is readable already: no wait.
    let mut resumed = already > 0;
    // The first request's head must be complete within `header_timeout` of
    // the connection being accepted (idle wait included); later requests'
    // heads within `header_timeout` of their first byte.
    let first_deadline = Instant::now() + limits.header_timeout;
    loop {
        // Idle: wait for bytes without holding a buffer.
        if !std::mem::take(&mut resumed) && cbuf.as_ref().is_none_or(InBuf::is_empty) {
            if let Some(b) = cbuf.take() {
                b.release();
            }
            let idle_limit = if served == 0 {
                limits.header_timeout
            } else {
                limits.keepalive_timeout
            };
            // A keep-alive connection idle for PARK_AFTER leaves this task
            // for the worker's parking lot (see `park`).
            let mut may_park = served > 0
                && idle_limit > PARK_AFTER
                && matches!(client, Stream::Plain(_))
                && ctx.lot.enabled();
            let mut left = idle_limit;
            // While draining, an idle connection gets one short window for a
            // request already on its way (served with Connection: close),
            // then closes: closing at once would race with such a request.
            let mut drain_window_used = false;
            loop {
                let parking = may_park && !ctx.shutting_down();
                let wait = if ctx.shutting_down() {
                    drain_window_used = true;
                    left.min(DRAIN_IDLE_WINDOW)
                } else if parking {
                    PARK_AFTER
                } else {
                    left
                };
                let woke = {
                    let readable = std::pin::pin!(client.readable());
                    ctx.idle.within(ctx.coarse_now() + wait, readable).await
                };
                match woke {
                    Some(Ok(())) => break,
                    Some(Err(_)) => return End::Closed,
                    None if ctx.shutting_down() && !drain_window_used => continue,
                    None if parking && !ctx.shutting_down() => {
                        left = left.saturating_sub(PARK_AFTER);
                        let Stream::Plain(tcp) = &client else {
                            return End::Closed;
                        };
                        let info = ConnInfo {
                            peer,
                            listener,
                            group,
                            served,
                        };
                        // The rest of the keep-alive timeout, as coarse as
                        // the sweep.
                        match ctx.lot.park(tcp, info, ctx.coarse_now() + left) {
                            Ok(()) => return End::Parked,
                            // Out of descriptors, say: wait here instead.
                            Err(e) => {
                                log::debug!("{peer}: cannot park idle connection: {e}");
                                may_park = false;
                            }
                        }
                    }
                    None => return End::Closed,
                }
            }
        }
        // After the idle wait: bytes are there, take a buffer for them.
        let mut cb = cbuf.take().unwrap_or_default();
        // The exchange's state (about 3 KiB of futures) lives in its own
        // allocation only while a request is in progress, so an idle
        // keep-alive connection costs a few hundred bytes, not kilobytes.
        let head_deadline = if served == 0 {
            first_deadline
        } else {
            Instant::from_std(ctx.coarse_now()) + limits.header_timeout
        };
        let keep = match Box::pin(exchange(
            &ctx,
            &mut client,
            peer,
            group,
            &mut cb,
            served,
            head_deadline,
        ))
        .await
        {
            Ok(keep) => keep,
            Err(()) => {
                cb.release();
                return End::Closed;
            }
        };
        served += 1;
        if !keep {
            cb.release();
            return End::Closed;
        }
        cbuf = Some(cb);
    }
}

/// What the request loop learned from the head phase.
struct Request {
    head: RequestHead,
    close_client: bool,
}

/// One request/response exchange. `Ok(true)`: keep the connection.
async fn exchange(
    ctx: &Rc<WorkerCtx>,
    client: &mut Stream,
    peer: SocketAddr,
    group: usize,
    cb: &mut InBuf,
    served: u64,
    deadline: Instant,
) -> Result<bool, ()> {
    let limits = &ctx.config.limits;
    let mut obuf = buffer::take();

    // 1. The request head, under one deadline that trickled bytes do not move.
    let first_backend = ctx.default_host(group);
    let head = loop {
        if !cb.is_empty() {
            obuf.clear();
            let fwd = Forwarding {
                client_ip: peer.ip(),
                default_host: first_backend,
                host_override: ctx.host_override(group),
            };
            let hl = HeadLimits {
                max_head_bytes: limits.max_head_bytes,
                max_headers: limits.max_headers,
            };
            match parse_request(cb.data(), hl, fwd, &mut obuf) {
                Ok(Parsed::Complete(h)) => break h,
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    log::debug!("{peer}: request rejected: {e}");
                    if let Some(f) = ctx.access_fields(cb.data()) {
                        ctx.access_log(peer, f, e.status(), 0, Duration::ZERO, None);
                    }
                    let err = ProxyError::downstream(ErrorKind::BadRequest(e));
                    respond_error(ctx, client, &err, obuf, limits.client_write_timeout).await;
                    return Err(());
                }
            }
        }
        // Whether part of a head is buffered, decided before the read: a
        // read cancelled by the deadline keeps the buffer.
        let partial = !cb.is_empty();
        match client.fill(cb, limits.max_head_bytes, deadline).await {
            Ok(0) => {
                buffer::give(obuf);
                return Err(()); // EOF: the client is done (or gave up mid-head).
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                if partial {
                    if let Some(f) = ctx.access_fields(cb.data()) {
                        ctx.access_log(peer, f, 408, 0, limits.header_timeout, None);
                    }
                    let err = ProxyError::downstream(ErrorKind::ClientTimeout);
                    respond_error(ctx, client, &err, Vec::new(), limits.client_write_timeout).await;
                }
                return Err(());
            }
            Err(_) => {
                buffer::give(obuf);
                return Err(());
            }
        }
    };
    // Latency runs from the complete request head to the last response byte.
    let started = std::time::Instant::now();
    let fields = ctx.access_fields(&cb.data()[..head.head_len]);
    cb.consume(head.head_len);
    let req = Request {
        head,
        close_client: !head.keep_alive
            || served + 1 >= limits.keepalive_requests
            || ctx.shutting_down(),
    };

    match proxy(ctx, client, group, cb, obuf, &req).await {
        Ok(done) => {
            let elapsed = started.elapsed();
            ctx.record(elapsed);
            if let Some(f) = fields {
                let upstream = Some(ctx.backend_addr(done.backend));
                ctx.access_log(peer, f, done.status, done.body_bytes, elapsed, upstream);
            }
            Ok(!done.close_client)
        }
        Err(Failure::Respond(err, buf)) => {
            match err.side {
                crate::error::Side::Downstream => log::debug!("{peer}: {err}"),
                _ => log::warn!("{peer}: {err}"),
            }
            respond_error(ctx, client, &err, buf, limits.client_write_timeout).await;
            let elapsed = started.elapsed();
            ctx.record(elapsed);
            if let (Some(f), Some(status)) = (fields, err.status()) {
                ctx.access_log(peer, f, status, 0, elapsed, None);
            }
            Err(())
        }
        Err(Failure::Close(err)) => {
            log::debug!("{peer}: closing: {err}");
            if let Some(f) = fields {
                ctx.give_fields(f);
            }
            Err(())
        }
    }
}

/// How an exchange failed.
enum Failure {
    /// Nothing was sent to the client yet: send this error's status.
    Respond(ProxyError, Vec<u8>),
    /// Response bytes already went out (or the client is gone): close.
    Close(ProxyError),
}

async fn respond_error(
    ctx: &WorkerCtx,
    client: &mut Stream,
    err: &ProxyError,
    mut buf: Vec<u8>,
    limit: Duration,
) {
    let Some(status) = err.status() else { return };
    ctx.metrics.response(status);
    buf.clear();
    http::write_simple_response(&mut buf, status, http::reason_phrase(status), true);
    let len = buf.len();
    let (_, buf) = client.write_range(buf, 0, len, limit).await;
    buffer::give(buf);
}

/// Opens a new connection to `backend`: TCP within the connect timeout, then,
/// for a TLS group, the handshake within what is left of it. Any failure
/// here means nothing was sent.
async fn connect(ctx: &Rc<WorkerCtx>, group: usize, backend: usize) -> Result<Stream, ProxyError> {
    let limit = ctx.config.limits.upstream_connect_timeout;
    let started = std::time::Instant::now();
    let addr = ctx.backend_addr(backend);
    let tcp = match timeout(limit, TcpStream::connect_addr(addr)).await {
        Ok(Ok(t)) => t,
        // Out of descriptors, ports or memory: lbd's problem, not the
        // backend's; do not mark it down or try the others.
        Ok(Err(e)) if is_local_exhaustion(&e) => {
            return Err(ProxyError {
                side: crate::error::Side::Internal,
                kind: ErrorKind::LocalResources(e),
            })
        }
        Ok(Err(e)) => return Err(ProxyError::upstream(ErrorKind::ConnectFailed(e))),
        Err(_) => return Err(ProxyError::upstream(ErrorKind::ConnectTimeout)),
    };
    match ctx.upstream_tls(group) {
        None => Ok(Stream::plain(tcp)),
        Some((config, name)) => {
            let left = limit
                .saturating_sub(started.elapsed())
                .max(Duration::from_millis(1));
            match Stream::connect_tls(tcp, config, name, left).await {
                Ok(s) => Ok(s),
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    Err(ProxyError::upstream(ErrorKind::ConnectTimeout))
                }
                Err(e) => Err(ProxyError::upstream(ErrorKind::TlsHandshake(e))),
            }
        }
    }
}

fn is_local_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno) if [nix::libc::EMFILE, nix::libc::ENFILE, nix::libc::ENOBUFS, nix::libc::ENOMEM, nix::libc::EADDRNOTAVAIL].contains(&libc_errno)
    )
}

/// Connects to the next eligible backend of `group`, moving on to the next
/// when a connect fails (nothing was sent, so any method may move on). A
/// failed connect marks the backend down on this worker at once (passive
/// health). `tries` counts attempts across the whole request, bounded by
/// `max_retries`.
async fn acquire(
    ctx: &Rc<WorkerCtx>,
    group: usize,
    tries: &mut usize,
) -> Result<Upstream, ProxyError> {
    let max = ctx.config.max_retries;
    let mut last: Option<ProxyError> = None;
    while *tries < max {
        let Some(backend) = ctx.select(group) else {
            break;
        };
        *tries += 1;
        if let Some(stream) = ctx.pool.borrow_mut().checkout(backend, ctx.coarse_now()) {
            ctx.metrics.backend(backend).pool_reuse.inc();
            return Ok(Upstream {
                stream,
                backend,
                reused: true,
            });
        }
        let addr = ctx.backend_addr(backend);
        log::debug!("upstream peer is {addr}");
        match connect(ctx, group, backend).await {
            Ok(stream) => {
                ctx.metrics.backend(backend).new_connections.inc();
                return Ok(Upstream {
                    stream,
                    backend,
                    reused: false,
                });
            }
            Err(e) if e.side == crate::error::Side::Internal => {
                log::error!("cannot connect to upstream {addr}: {}", e.kind);
                return Err(e);
            }
            Err(e) => {
                log::warn!("connect to upstream {addr} failed: {}", e.kind);
                ctx.mark_down(backend);
                ctx.metrics.backend(backend).connect_errors.inc();
                last = Some(e);
            }
        }
    }
    // No eligible backend at all (all down) is 503 at once; otherwise the
    // last failure decides (502 refused, 504 timed out).
    Err(last.unwrap_or_else(|| ProxyError::upstream(ErrorKind::NoUpstream)))
}

/// Forwards one request and its response. `Ok(true)`: the response told the
/// client the connection closes (or its body ran until close).
async fn proxy(
    ctx: &Rc<WorkerCtx>,
    client: &mut Stream,
    group: usize,
    cb: &mut InBuf,
    obuf: Vec<u8>,
    req: &Request,
) -> Result<Done, Failure> {
    let limits = &ctx.config.limits;
    let mut obuf = obuf;
    let mut tries = 0usize;
    let mut up = match acquire(ctx, group, &mut tries).await {
        Ok(u) => u,
        Err(e) => return Err(Failure::Respond(e, obuf)),
    };

    if req.head.expect_continue && cb.is_empty() {
        let mut cont = buffer::take();
        cont.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        let len = cont.len();
        let (res, cont) = client
            .write_range(cont, 0, len, limits.client_write_timeout)
            .await;
        buffer::give(cont);
        if let Err(e) = res {
            return Err(Failure::Close(ProxyError::downstream(ErrorKind::ClientIo(
                e,
            ))));
        }
    }

    // 2. Head plus whatever body bytes are already buffered, in one write.
    let mut body = Body::new(req.head.framing, limits.max_chunk_extension_bytes);
    {
        let start = cb.pos;
        let (out, used) = body.frame(&mut cb.v[start..], false).map_err(|e| {
            Failure::Respond(
                ProxyError::downstream(ErrorKind::BadRequestBody(e)),
                Vec::new(),
            )
        })?;
        obuf.extend_from_slice(&cb.v[start..start + out]);
        cb.consume(used);
    }
    // A request whose body is entirely in `obuf` can be re-sent on a fresh
    // connection if a reused one turns out dead (idempotent methods only).
    let resendable = req.head.idempotent && body.is_done();

    let obuf_len = obuf.len();
    let (res, ob) = up
        .stream
        .write_range(obuf, 0, obuf_len, limits.upstream_body_timeout)
        .await;
    obuf = ob;
    ctx.metrics.backend(up.backend).requests.inc();
    if let Err(e) = res {
        if resendable {
            up = resend(ctx, group, up, &mut obuf, obuf_len, &mut tries).await?;
        } else {
            return Err(Failure::Respond(
                ProxyError::upstream(ErrorKind::UpstreamIo(e)),
                obuf,
            ));
        }
    }

    // 3. Stream the rest of the request body (large buffers for a large one).
    if body.is_large() {
        cb.upsize();
    }
    while !body.is_done() {
        let deadline = Instant::now() + limits.body_timeout;
        match client.fill(cb, buffer::LARGE_BUF_SIZE, deadline).await {
            Ok(0) => {
                return Err(Failure::Close(ProxyError::downstream(ErrorKind::ClientIo(
                    io::ErrorKind::UnexpectedEof.into(),
                ))))
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Failure::Respond(
                    ProxyError::downstream(ErrorKind::ClientTimeout),
                    obuf,
                ))
            }
            Err(e) => {
                return Err(Failure::Close(ProxyError::downstream(ErrorKind::ClientIo(
                    e,
                ))))
            }
        }
        let start = cb.pos;
        let (out, used) = body.frame(&mut cb.v[start..], false).map_err(|e| {
            Failure::Respond(
                ProxyError::downstream(ErrorKind::BadRequestBody(e)),
                Vec::new(),
            )
        })?;
        let v = std::mem::take(&mut cb.v);
        let (res, v) = up
            .stream
            .write_range(v, start, start + out, limits.upstream_body_timeout)
            .await;
        cb.v = v;
        if let Err(e) = res {
            return Err(Failure::Respond(
                ProxyError::upstream(ErrorKind::UpstreamIo(e)),
                obuf,
            ));
        }
        cb.consume(used);
    }

    // 4. The response head (1xx interim heads relayed). `obuf` keeps the
    // request bytes until a response arrives, for the one safe resend.
    let mut ub = InBuf::new();
    let mut hbuf = buffer::take();
    // One deadline for the whole response head: bytes trickled by the
    // upstream do not extend it (a 1xx interim response starts a new one).
    let mut deadline = Instant::now() + limits.upstream_response_timeout;
    let resp: ResponseHead = loop {
        if !ub.is_empty() {
            hbuf.clear();
            let rctx = RequestContext {
                is_head: req.head.is_head,
                http10: req.head.http10,
                // A drain that began while this request was in flight still
                // tells the client the connection closes.
                close_client: req.close_client || ctx.shutting_down(),
            };
            match parse_response(ub.data(), rctx, &mut hbuf) {
                Ok(Parsed::Complete(h)) if h.interim => {
                    ub.consume(h.head_len);
                    deadline = Instant::now() + limits.upstream_response_timeout;
                    let len = hbuf.len();
                    let (res, hb) = client
                        .write_range(hbuf, 0, len, limits.client_write_timeout)
                        .await;
                    hbuf = hb;
                    if let Err(e) = res {
                        ub.release();
                        return Err(Failure::Close(ProxyError::downstream(ErrorKind::ClientIo(
                            e,
                        ))));
                    }
                    continue;
                }
                Ok(Parsed::Complete(h)) => break h,
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    ub.release();
                    buffer::give(hbuf);
                    return Err(Failure::Respond(
                        ProxyError::upstream(ErrorKind::BadResponse(e)),
                        obuf,
                    ));
                }
            }
        }
        let res = up
            .stream
            .fill(&mut ub, MAX_RESPONSE_HEAD_BYTES, deadline)
            .await;
        let dead = match &res {
            Ok(0) => true,
            Err(e) => e.kind() != io::ErrorKind::TimedOut,
            Ok(_) => false,
        };
        if dead && resendable && tries < ctx.config.max_retries {
            // The upstream closed or reset before a complete response head
            // (nothing reached the client), and the request is idempotent
            // and entirely in `obuf`: send it again, as nginx's
            // `proxy_next_upstream error` does. A reset can also discard
            // part of a head the upstream had already sent.
            ub.v.clear();
            ub.pos = 0;
            up = resend(ctx, group, up, &mut obuf, obuf_len, &mut tries).await?;
            continue;
        }
        match res {
            Ok(0) => {
                ub.release();
                buffer::give(hbuf);
                return Err(Failure::Respond(
                    ProxyError::upstream(ErrorKind::UpstreamClosed),
                    obuf,
                ));
            }
            Ok(_) => {}
            Err(e) => {
                ub.release();
                buffer::give(hbuf);
                let kind = if e.kind() == io::ErrorKind::TimedOut {
                    ErrorKind::UpstreamTimeout
                } else {
                    ErrorKind::UpstreamIo(e)
                };
                return Err(Failure::Respond(ProxyError::upstream(kind), obuf));
            }
        }
    };
    buffer::give(obuf);
    let mut obuf = hbuf;
    ub.consume(resp.head_len);

    // 5. Response head plus buffered body bytes, in one write.
    let mut body_bytes: u64 = 0;
    let mut body = Body::new(resp.framing, limits.max_chunk_extension_bytes);
    {
        let start = ub.pos;
        let end = ub.v.len();
        let (out, used) = match body.frame(&mut ub.v[start..end], resp.dechunk) {
            Ok(x) => x,
            Err(e) => {
                ub.release();
                return Err(Failure::Respond(
                    ProxyError::upstream(ErrorKind::BadResponseBody(e)),
                    obuf,
                ));
            }
        };
        obuf.extend_from_slice(&ub.v[start..start + out]);
        body_bytes += out as u64;
        ub.consume(used);
    }
    let len = obuf.len();
    ctx.metrics.response(resp.status);
    let (res, ob) = client
        .write_range(obuf, 0, len, limits.client_write_timeout)
        .await;
    buffer::give(ob);
    if let Err(e) = res {
        ub.release();
        return Err(Failure::Close(ProxyError::downstream(ErrorKind::ClientIo(
            e,
        ))));
    }

    // 6. Stream the rest of the response body, in large buffers when it is
    // large (fewer reads and writes per byte).
    if body.is_large() {
        ub.upsize();
    }
    while !body.is_done() {
        let deadline = Instant::now() + limits.upstream_body_timeout;
        match up
            .stream
            .fill(&mut ub, buffer::LARGE_BUF_SIZE, deadline)
            .await
        {
            Ok(0) => {
                if matches!(body, Body::UntilClose) {
                    body = Body::Done;
                    break;
                }
                ub.release();
                return Err(Failure::Close(ProxyError::upstream(
                    ErrorKind::UpstreamTruncated,
                )));
            }
            Ok(_) => {}
            Err(e) => {
                ub.release();
                let kind = if e.kind() == io::ErrorKind::TimedOut {
                    ErrorKind::UpstreamTimeout
                } else {
                    ErrorKind::UpstreamIo(e)
                };
                return Err(Failure::Close(ProxyError::upstream(kind)));
            }
        }
        let start = ub.pos;
        let end = ub.v.len();
        let (out, used) = match body.frame(&mut ub.v[start..end], resp.dechunk) {
            Ok(x) => x,
            Err(e) => {
                ub.release();
                return Err(Failure::Close(ProxyError::upstream(
                    ErrorKind::BadResponseBody(e),
                )));
            }
        };
        let v = std::mem::take(&mut ub.v);
        let (res, v) = client
            .write_range(v, start, start + out, limits.client_write_timeout)
            .await;
        ub.v = v;
        body_bytes += out as u64;
        if let Err(e) = res {
            ub.release();
            return Err(Failure::Close(ProxyError::downstream(ErrorKind::ClientIo(
                e,
            ))));
        }
        ub.consume(used);
    }
    debug_assert!(body.is_done());

    // 7. Reuse the upstream connection only after an exact end.
    let clean_end = ub.is_empty() && !up.stream.has_pending();
    ub.release();
    if resp.upstream_reusable && clean_end && !ctx.shutting_down() {
        ctx.pool
            .borrow_mut()
            .checkin(up.backend, up.stream, ctx.coarse_now());
    }
    Ok(Done {
        close_client: resp.close_client,
        status: resp.status,
        body_bytes,
        backend: up.backend,
    })
}

/// What a completed exchange reports.
struct Done {
    close_client: bool,
    status: u16,
    body_bytes: u64,
    backend: usize,
}

/// Re-sends a fully buffered idempotent request (`obuf[..len]`) after its
/// upstream failed before any response byte. A reused pooled connection that
/// died is most likely just stale: retry the same backend on a new
/// connection. A fresh connection that died means the backend is in
/// trouble: mark it down on this worker and move to the next backend.
async fn resend(
    ctx: &Rc<WorkerCtx>,
    group: usize,
    old: Upstream,
    obuf: &mut Vec<u8>,
    len: usize,
    tries: &mut usize,
) -> Result<Upstream, Failure> {
    let limits = &ctx.config.limits;
    let backend = old.backend;
    let reused = old.reused;
    drop(old);
    let fresh = if reused {
        let addr = ctx.backend_addr(backend);
        log::debug!("pooled connection to {addr} was closed; resending on a new one");
        *tries += 1;
        match connect(ctx, group, backend).await {
            Ok(stream) => {
                ctx.metrics.backend(backend).new_connections.inc();
                Some(Upstream {
                    stream,
                    backend,
                    reused: false,
                })
            }
            Err(e) => {
                log::warn!("connect to upstream {addr} failed: {}", e.kind);
                None
            }
        }
    } else {
        None
    };
    let mut up = if let Some(up) = fresh {
        up
    } else {
        log::warn!(
            "upstream {} failed before responding; retrying the idempotent request on the next backend",
            ctx.backend_addr(backend)
        );
        ctx.mark_down(backend);
        match acquire(ctx, group, tries).await {
            Ok(u) => u,
            Err(e) => {
                // Nothing left to try: report the original failure.
                let err = if matches!(e.kind, ErrorKind::NoUpstream) {
                    ProxyError::upstream(ErrorKind::UpstreamClosed)
                } else {
                    e
                };
                return Err(Failure::Respond(err, std::mem::take(obuf)));
            }
        }
    };
    let buf = std::mem::take(obuf);
    let (res, buf) = up
        .stream
        .write_range(buf, 0, len, limits.upstream_body_timeout)
        .await;
    *obuf = buf;
    ctx.metrics.backend(up.backend).requests.inc();
    match res {
        Ok(()) => Ok(up),
        Err(e) => Err(Failure::Respond(
            ProxyError::upstream(ErrorKind::UpstreamIo(e)),
            std::mem::take(obuf),
        )),
    }
}
