//! One exchange, protocol-neutral: a request, already parsed and routed by a
//! downstream, goes to a backend of its group, and the response comes back
//! through the same downstream.
//!
//! [`forward`] drives the upstream half: it acquires a backend connection
//! ([`crate::upstream::connect`]), sends the upstream head together with the
//! body bytes the client already sent in one write, streams the rest of the
//! request body, reads the response head (relaying 1xx interim heads),
//! writes the client's head with the first body bytes in one write, streams
//! the rest, and puts the upstream connection back in the pool only when the
//! response ended exactly where its framing said. A request sent but answered
//! by no response byte is resent when its error says that is safe
//! ([`crate::error::Retry`]). What is specific to the client's protocol
//! (reading its body, the shape of its response head, writing to it) sits
//! behind [`Downstream`]: the HTTP/1 connection loop implements it, and so
//! can an HTTP/2 stream or a tunnel's first exchange.

use std::io;
use std::time::Duration;

use monoio::time::Instant;

use crate::buffer::{self, InBuf};
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::Body;
use crate::http::request::{Parsed, RequestHead};
use crate::http::response::{
    parse_response_to, ResponseHead, ResponseView, MAX_RESPONSE_HEAD_BYTES,
};
use crate::http::rewrite::{ClientHead, SetCookie};
use crate::shard::Shard;
use crate::stream::Stream;
use crate::tunnel::Carried;
use crate::upstream::connect::{acquire, reacquire, Attempts, Upstream};
use crate::upstream::{Affinity, BackendId};

/// A request as a downstream hands it over: routed, with its upstream head
/// already written (see [`forward`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Request {
    /// The upstream group it was routed to.
    pub(crate) group: usize,
    /// What it contributes to the pick of a backend (hash key, sticky
    /// cookie).
    pub(crate) affinity: Affinity,
    /// The neutral decisions from its head.
    pub(crate) head: RequestHead,
    /// lbd closes the client connection after this exchange.
    pub(crate) close_client: bool,
    /// The upgrade the request asks for (an index into its group's
    /// `upgrade_protocols`), when the group allows it.
    pub(crate) upgrade: Option<usize>,
}

/// How an exchange failed.
pub(crate) enum Failure {
    /// Nothing was sent to the client yet: send this error's status (the
    /// buffer is for that response).
    Respond(ProxyError, Vec<u8>),
    /// Response bytes already went out (or the client is gone): close.
    Close(ProxyError),
}

impl Failure {
    /// A failure before any response byte: respond if the error has a
    /// status for the client, else close.
    fn before_response(err: ProxyError, buf: Vec<u8>) -> Self {
        if err.status().is_some() {
            Failure::Respond(err, buf)
        } else {
            Failure::Close(err)
        }
    }
}

/// What a completed exchange reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    /// The client connection closes after it.
    pub(crate) close_client: bool,
    /// The status sent.
    pub(crate) status: u16,
    /// Response body bytes sent.
    pub(crate) body_bytes: u64,
    /// The backend that answered.
    pub(crate) backend: BackendId,
    /// The connection was switched to a tunnel (it is closed now), with the
    /// bytes it carried.
    pub(crate) tunnel: Option<Carried>,
}

/// The client's side of one exchange, as the upstream half needs it.
pub(crate) trait Downstream {
    /// An upstream connection is ready and nothing was sent on it yet (an
    /// HTTP/1.1 client waiting on `Expect: 100-continue` gets its `100` now).
    async fn upstream_ready(&mut self, head: &RequestHead) -> Result<(), ProxyError>;

    /// Frames the request body bytes that arrived with the head and appends
    /// the ones to forward to `out`, after the upstream head.
    fn buffered_body(&mut self, body: &mut Body, out: &mut Vec<u8>) -> Result<(), ProxyError>;

    /// Streams the rest of the request body to `up`, until it is complete
    /// ([`BodyEnd::Complete`]) or the backend begins to answer first
    /// ([`BodyEnd::Answered`], RFC 9112 §9.5).
    async fn stream_body(
        &mut self,
        body: &mut Body,
        up: &mut Stream,
    ) -> Result<BodyEnd, ProxyError>;

    /// Writes the client's response head for `resp` (interim or final) into
    /// `out`; `close`: lbd closes the client connection after this exchange;
    /// `set_cookie`: the sticky cookie to add to a final response.
    fn encode_head(
        &mut self,
        resp: &ResponseView<'_>,
        close: bool,
        set_cookie: Option<SetCookie<'_>>,
        out: &mut Vec<u8>,
    ) -> ClientHead;

    /// After a `101`: relays bytes both ways between the client and `up`
    /// until the tunnel ends (or idles for `idle`).
    async fn tunnel(&mut self, up: &mut Stream, idle: Duration) -> Carried;

    /// Counts the final response `status` in the client metrics (by
    /// protocol: HTTP/2 streams override this).
    fn count_response(&self, shard: &Shard, status: u16) {
        shard.metrics.response(status);
    }

    /// Writes `buf[start..end]` (response bytes) to the client; hands the
    /// buffer back.
    async fn write(
        &mut self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    ) -> (Result<(), ProxyError>, Vec<u8>);
}

/// How streaming a request body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    /// Every byte went to the backend.
    Complete,
    /// The backend answered before the body was complete (a 401, 403 or
    /// 413 to an upload, a redirect...): stop sending, relay the answer,
    /// never reuse that upstream connection, and close the client
    /// connection after the response.
    Answered,
}

/// The request side's state while a response is awaited.
struct Sent<'u> {
    up: Upstream<'u>,
    /// When the request went out (latency-aware groups only).
    sent_at: Option<std::time::Instant>,
    /// The request bytes, kept for the one safe resend until a response
    /// arrives.
    obuf: Vec<u8>,
    /// How much of `obuf` the request is.
    len: usize,
    /// Idempotent and entirely in `obuf`.
    resendable: bool,
    /// The backend answered before the whole body was sent.
    answered_early: bool,
    attempts: Attempts,
}

/// Forwards one request and relays its response. `obuf` holds the upstream
/// head the downstream wrote.
pub(crate) async fn forward<D: Downstream>(
    shard: &Shard,
    down: &mut D,
    req: &Request,
    obuf: Vec<u8>,
) -> Result<Done, Failure> {
    let sent = send_request(shard, down, req, obuf).await?;
    let (up, resp, client, ub, hbuf) = read_response_head(shard, down, req, sent).await?;
    if resp.switched {
        return switch(shard, down, req.group, up, resp, ub, hbuf).await;
    }
    relay_response(shard, down, up, resp, client, ub, hbuf).await
}

/// Acquires a backend and sends the request: head and buffered body bytes
/// in one write, then the rest of the body.
async fn send_request<'s, D: Downstream>(
    shard: &'s Shard,
    down: &mut D,
    req: &Request,
    mut obuf: Vec<u8>,
) -> Result<Sent<'s>, Failure> {
    let limits = &shard.config.limits;
    let mut attempts = Attempts::new(shard.config.max_retries);
    let now = || shard.coarse_now();
    let aff = &req.affinity;
    let mut up = match acquire(&shard.upstreams, req.group, aff, now, &mut attempts).await {
        Ok(u) => u,
        Err(e) => return Err(Failure::Respond(e, obuf)),
    };
    if let Err(e) = down.upstream_ready(&req.head).await {
        return Err(Failure::Close(e));
    }
    let mut body = Body::new(req.head.framing, limits.max_chunk_extension_bytes);
    if let Err(e) = down.buffered_body(&mut body, &mut obuf) {
        return Err(Failure::before_response(e, obuf));
    }
    let resendable = req.head.idempotent && body.is_done();
    let sent_at = shard
        .upstreams
        .borrow()
        .uses_latency(req.group)
        .then(std::time::Instant::now);
    let len = obuf.len();
    let (res, ob) = up
        .stream
        .write_range(obuf, 0, len, limits.upstream_body_timeout)
        .await;
    let mut sent = Sent {
        answered_early: false,
        sent_at,
        obuf: ob,
        len,
        resendable,
        attempts,
        up,
    };
    count_request(shard, sent.up.backend);
    if let Err(e) = res {
        let err = ProxyError::upstream(ErrorKind::UpstreamIo(e));
        if !err.retryable(resendable) {
            return Err(Failure::Respond(err, sent.obuf));
        }
        sent = resend(shard, req, sent).await?;
    }
    if !body.is_done() {
        match down.stream_body(&mut body, &mut sent.up.stream).await {
            Ok(BodyEnd::Complete) => {}
            Ok(BodyEnd::Answered) => sent.answered_early = true,
            Err(e) => return Err(Failure::before_response(e, sent.obuf)),
        }
    }
    Ok(sent)
}

fn count_request(shard: &Shard, backend: BackendId) {
    shard.metrics.backend(backend.index()).requests.inc();
}

/// Sends the request in `sent.obuf` again, on the connection
/// [`reacquire`] picks.
async fn resend<'s>(shard: &'s Shard, req: &Request, sent: Sent<'s>) -> Result<Sent<'s>, Failure> {
    let Sent {
        up,
        sent_at,
        obuf,
        len,
        resendable,
        answered_early,
        mut attempts,
    } = sent;
    let now = || shard.coarse_now();
    let (group, aff) = (req.group, &req.affinity);
    let mut up = match reacquire(&shard.upstreams, group, aff, up, now, &mut attempts).await {
        Ok(u) => u,
        Err(e) => return Err(Failure::Respond(e, obuf)),
    };
    let limit = shard.config.limits.upstream_body_timeout;
    let (res, obuf) = up.stream.write_range(obuf, 0, len, limit).await;
    count_request(shard, up.backend);
    match res {
        Ok(()) => Ok(Sent {
            answered_early,
            up,
            sent_at: sent_at.map(|_| std::time::Instant::now()),
            obuf,
            len,
            resendable,
            attempts,
        }),
        Err(e) => Err(Failure::Respond(
            ProxyError::upstream(ErrorKind::UpstreamIo(e)),
            obuf,
        )),
    }
}

/// Reads the response head under one deadline that bytes trickled by the
/// upstream do not extend (a 1xx interim response, relayed, starts a new
/// one). Returns the connection, the head, the client's framing, the bytes
/// read past the head and the client head written into a buffer.
async fn read_response_head<'s, D: Downstream>(
    shard: &'s Shard,
    down: &mut D,
    req: &Request,
    mut sent: Sent<'s>,
) -> Result<(Upstream<'s>, ResponseHead, ClientHead, InBuf, Vec<u8>), Failure> {
    let limits = &shard.config.limits;
    let mut ub = InBuf::new();
    let mut hbuf = buffer::take();
    let mut deadline = Instant::now() + limits.upstream_response_timeout;
    loop {
        if !ub.is_empty() {
            hbuf.clear();
            // A drain that began while this request was in flight still
            // tells the client the connection closes.
            let close = req.close_client || sent.answered_early || shard.shutting_down();
            let parsed = {
                let ups = shard.upstreams.borrow();
                let set_cookie = ups
                    .sticky_cookie(req.group, &req.affinity, sent.up.backend)
                    .map(|(name, value, max_age)| SetCookie {
                        name,
                        value,
                        max_age,
                    });
                let upgrade = req.upgrade.and_then(|i| ups.upgrade_protocol(req.group, i));
                parse_response_to(ub.data(), req.head.is_head, upgrade, |v| {
                    down.encode_head(v, close, set_cookie, &mut hbuf)
                })
            };
            match parsed {
                Ok(Parsed::Complete((h, _))) if h.interim => {
                    ub.consume(h.head_len);
                    deadline = Instant::now() + limits.upstream_response_timeout;
                    let len = hbuf.len();
                    let (res, hb) = down.write(hbuf, 0, len).await;
                    hbuf = hb;
                    if let Err(e) = res {
                        ub.release();
                        return Err(Failure::Close(e));
                    }
                    continue;
                }
                Ok(Parsed::Complete((mut h, client))) => {
                    // One clock read, and only where balancing learns from it.
                    if let Some(t) = sent.sent_at {
                        let at = std::time::Instant::now();
                        sent.up.lease.responded(h.status, at - t, at);
                    } else {
                        let at = shard.coarse_now();
                        sent.up.lease.responded(h.status, Duration::ZERO, at);
                    }
                    buffer::give(sent.obuf);
                    ub.consume(h.head_len);
                    // The backend never got the whole request: its
                    // connection is in an unknown state.
                    h.upstream_reusable &= !sent.answered_early;
                    return Ok((sent.up, h, client, ub, hbuf));
                }
                Ok(Parsed::Partial) => {}
                Err(e) => {
                    ub.release();
                    buffer::give(hbuf);
                    let err = ProxyError::upstream(ErrorKind::BadResponse(e));
                    return Err(Failure::Respond(err, sent.obuf));
                }
            }
        }
        let res = sent
            .up
            .stream
            .fill(&mut ub, MAX_RESPONSE_HEAD_BYTES, deadline)
            .await;
        let err = match res {
            Ok(0) => ProxyError::upstream(ErrorKind::UpstreamClosed),
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                ProxyError::upstream(ErrorKind::UpstreamTimeout)
            }
            Err(e) => ProxyError::upstream(ErrorKind::UpstreamIo(e)),
        };
        if err.retryable(sent.resendable) && sent.attempts.left() {
            // Closed or reset before a complete response head (nothing
            // reached the client): send it again. A reset can also discard
            // part of a head the upstream had already sent.
            ub.v.clear();
            ub.pos = 0;
            sent = resend(shard, req, sent).await?;
            continue;
        }
        ub.release();
        buffer::give(hbuf);
        return Err(Failure::Respond(err, sent.obuf));
    }
}

/// Writes the client head with the first body bytes in one write, streams
/// the rest of the body, and pools the upstream connection after an exact
/// end.
async fn relay_response<D: Downstream>(
    shard: &Shard,
    down: &mut D,
    mut up: Upstream<'_>,
    resp: ResponseHead,
    client: ClientHead,
    mut ub: InBuf,
    mut obuf: Vec<u8>,
) -> Result<Done, Failure> {
    let limits = &shard.config.limits;
    let mut body = Body::new(resp.framing, limits.max_chunk_extension_bytes);
    let mut body_bytes: u64 = 0;
    let start = ub.pos;
    let end = ub.v.len();
    match body.frame(&mut ub.v[start..end], client.dechunk) {
        Ok((out, used)) => {
            obuf.extend_from_slice(&ub.v[start..start + out]);
            body_bytes += out as u64;
            ub.consume(used);
        }
        Err(e) => {
            ub.release();
            let err = ProxyError::upstream(ErrorKind::BadResponseBody(e));
            return Err(Failure::Respond(err, obuf));
        }
    }
    down.count_response(shard, resp.status);
    let len = obuf.len();
    let (res, ob) = down.write(obuf, 0, len).await;
    buffer::give(ob);
    if let Err(e) = res {
        ub.release();
        return Err(Failure::Close(e));
    }
    // Large bodies stream in large buffers (fewer reads and writes per byte).
    if body.is_larger_than(buffer::BUF_SIZE as u64) {
        ub.upsize();
    }
    while !body.is_done() {
        match relay_body_step(shard, down, &mut up, &mut body, &mut ub, client.dechunk).await {
            Ok(n) => body_bytes += n,
            Err(e) => {
                ub.release();
                return Err(Failure::Close(e.after_response()));
            }
        }
    }
    let clean_end = ub.is_empty() && !up.stream.has_pending();
    ub.release();
    if resp.upstream_reusable && clean_end && !shard.shutting_down() {
        shard
            .upstreams
            .borrow_mut()
            .checkin(up.backend, up.stream, up.tag, shard.coarse_now());
    }
    Ok(Done {
        close_client: client.close_client,
        status: resp.status,
        body_bytes,
        backend: up.backend,
        tunnel: None,
    })
}

/// After a `101`: the client gets the head with whatever the backend sent
/// after it, then the connection is a tunnel until either side ends it.
async fn switch<D: Downstream>(
    shard: &Shard,
    down: &mut D,
    group: usize,
    mut up: Upstream<'_>,
    resp: ResponseHead,
    ub: InBuf,
    mut obuf: Vec<u8>,
) -> Result<Done, Failure> {
    obuf.extend_from_slice(ub.data());
    ub.release();
    down.count_response(shard, resp.status);
    let len = obuf.len();
    let (res, ob) = down.write(obuf, 0, len).await;
    buffer::give(ob);
    res.map_err(Failure::Close)?;
    let idle = shard
        .config
        .upstreams
        .get(group)
        .and_then(|g| g.tunnel_idle_timeout)
        .unwrap_or(shard.config.limits.tunnel_idle_timeout);
    let carried = down.tunnel(&mut up.stream, idle).await;
    Ok(Done {
        close_client: true,
        status: resp.status,
        body_bytes: carried.downstream,
        backend: up.backend,
        tunnel: Some(carried),
    })
}

/// One read of response body from the upstream, framed and written to the
/// client. Returns the body bytes written.
async fn relay_body_step<D: Downstream>(
    shard: &Shard,
    down: &mut D,
    up: &mut Upstream<'_>,
    body: &mut Body,
    ub: &mut InBuf,
    dechunk: bool,
) -> Result<u64, ProxyError> {
    let deadline = Instant::now() + shard.config.limits.upstream_body_timeout;
    match up.stream.fill(ub, buffer::LARGE_BUF_SIZE, deadline).await {
        Ok(0) if body.on_eof() => return Ok(0),
        Ok(0) => return Err(ProxyError::upstream(ErrorKind::UpstreamTruncated)),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            return Err(ProxyError::upstream(ErrorKind::UpstreamTimeout))
        }
        Err(e) => return Err(ProxyError::upstream(ErrorKind::UpstreamIo(e))),
    }
    let start = ub.pos;
    let end = ub.v.len();
    let (out, used) = body
        .frame(&mut ub.v[start..end], dechunk)
        .map_err(|e| ProxyError::upstream(ErrorKind::BadResponseBody(e)))?;
    let v = std::mem::take(&mut ub.v);
    let (res, v) = down.write(v, start, start + out).await;
    ub.v = v;
    res?;
    ub.consume(used);
    Ok(out as u64)
}
