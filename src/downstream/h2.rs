//! One HTTP/2 client connection: h2c with prior knowledge on a plain
//! listener with `http2: true` (the 24-byte preface decides; HTTP/1.1 keeps
//! working on the same port), `h2` by ALPN on a TLS listener.
//!
//! The `h2` crate (hyperium) runs the protocol over the connection in poll
//! form ([`super::poll_io`]); its limits are set from the listener's keys
//! and lbd's HTTP/1 head limits (header list size), with its flood
//! counters (pending-accept and local-error resets) set explicitly. Each
//! stream is one exchange on its own task, through the same path as an
//! HTTP/1 request: its head is rebuilt as an HTTP/1.1 head (`:authority`
//! as `Host`, `Content-Length` if given, else `Transfer-Encoding: chunked`
//! when a body follows), parsed, routed and rewritten by
//! [`h1::prepare`], and handed to [`crate::proxy::forward`] with
//! [`H2Exchange`] as its [`Downstream`]: DATA frames become the upstream
//! body (chunked when no length was given; window released as bytes go
//! upstream), the backend's head becomes a HEADERS frame without its
//! connection-specific headers, and its body (de-chunked by the codec)
//! DATA frames sent as the client's window allows. Connection-specific
//! request headers (RFC 9113 §8.2.2) are a stream error (`h2` checks them
//! on decoding; [`rebuild_head`] again). An idle connection, and every
//! connection once the worker drains, gets a graceful GOAWAY; open streams
//! finish first.

use std::cell::Cell;
use std::io::Write as _;
use std::rc::Rc;
use std::time::Duration;

use ::h2::server::SendResponse;
use ::h2::{Reason, RecvStream, SendStream};
use bytes::Bytes;
use monoio::io::IntoPollIo;
use monoio::time::Instant;

use super::h1::{self, Conn, Idle, Routed};
use super::poll_io::{Io, Prefixed, TlsPoll, Transport};
use super::request_id::RequestId;
use crate::buffer::{self, InBuf};
use crate::config::HeaderPair;
use crate::error::{ErrorKind, ProxyError, Side};
use crate::http::body::Body;
use crate::http::chunked::ChunkedDecoder;
use crate::http::request::{Parsed, RequestHead};
use crate::http::response::ResponseView;
use crate::http::rewrite::{
    write_client_head, ClientContext, ClientHead, ResponseExtras, SetCookie,
};
use crate::http::Framing;
use crate::proxy::{self, BodyEnd, Downstream, Failure, Request};
use crate::shard::{Finished, Shard};
use crate::stream::Stream;
use crate::tunnel::Carried;

/// The client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Per-stream receive window: enough for an upload to stream without a
/// round trip per 64 KiB, small enough that 128 streams stay bounded.
const STREAM_WINDOW: u32 = 256 << 10;
/// Connection receive window.
const CONNECTION_WINDOW: u32 = 1 << 20;
/// Most response bytes queued per stream and not yet written to the
/// socket: one large upstream read (128 streams: 8 MiB at most per
/// connection).
const MAX_SEND_BUFFER: usize = crate::buffer::LARGE_BUF_SIZE;
/// Streams reset by the client before lbd accepted them, at most, before
/// the connection is closed with ENHANCE_YOUR_CALM (rapid reset,
/// CVE-2023-44487); h2's default.
const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams lbd itself reset for protocol errors, at most, per connection.
const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// How often a connection looks at the drain flag and its idle time.
const TICK: Duration = Duration::from_millis(250);
/// How long a connection waits, after its GOAWAY with no stream open, for
/// the client to close.
const GOAWAY_LINGER: Duration = Duration::from_secs(1);

thread_local! {
    /// HTTP/2 streams open on this worker (one worker per thread), against
    /// `limits.max_http2_streams_per_worker`.
    static WORKER_STREAMS: Cell<usize> = const { Cell::new(0) };
}

/// What the first bytes (or the ALPN) said.
pub(super) enum Detected {
    /// HTTP/1: the stream, and what was read of the first request.
    Http1(Stream, Option<InBuf>),
    /// HTTP/2: the connection in poll form.
    Http2(Io),
    /// The connection is done.
    Closed,
}

/// Decides a new connection's protocol: ALPN on TLS; on plain TCP, whether
/// its first bytes are the HTTP/2 preface (read, within the first request's
/// head deadline, until they differ from it or match it whole). `early`:
/// bytes already read (after a PROXY protocol header).
pub(super) async fn detect(
    shard: &Shard,
    mut client: Stream,
    conn: &Conn,
    early: Option<InBuf>,
) -> Detected {
    if let Stream::Tls(_) = client {
        if !client.alpn_h2() {
            return Detected::Http1(client, early);
        }
        if let Some(b) = early {
            b.release();
        }
        return match client.into_server_tls() {
            Ok((tcp, tls)) => match tcp.into_poll_io() {
                Ok(io) => Detected::Http2(Io::new(Transport::Tls(Box::new(TlsPoll::new(io, tls))))),
                Err(e) => {
                    log::debug!("{}: cannot switch to poll I/O: {e}", conn.info.peer);
                    Detected::Closed
                }
            },
            Err(c) => Detected::Http1(c, None),
        };
    }
    let mut cb = match early {
        Some(b) => b,
        None => match h1::wait_idle(shard, &mut client, &conn.info).await {
            Idle::Readable => InBuf::new(),
            Idle::Closed | Idle::Parked => return Detected::Closed,
        },
    };
    loop {
        let d = cb.data();
        let n = d.len().min(PREFACE.len());
        if d[..n] != PREFACE[..n] {
            return Detected::Http1(client, Some(cb));
        }
        if n == PREFACE.len() {
            break;
        }
        let limit = shard.config.limits.max_head_bytes;
        match client.fill(&mut cb, limit, conn.first_deadline).await {
            Ok(n) if n > 0 => {}
            _ => {
                cb.release();
                return Detected::Closed;
            }
        }
    }
    let prefix = cb.data().to_vec();
    cb.release();
    let Stream::Plain(tcp) = client else {
        return Detected::Closed;
    };
    match tcp.into_poll_io() {
        Ok(io) => Detected::Http2(Io::new(Transport::Plain(Prefixed::new(prefix, io)))),
        Err(e) => {
            log::debug!("{}: cannot switch to poll I/O: {e}", conn.info.peer);
            Detected::Closed
        }
    }
}

/// Serves an HTTP/2 connection until it closes: accepts streams (each on
/// its own task), sends GOAWAY when idle or draining.
pub(super) async fn serve(shard: Rc<Shard>, io: Io, conn: Conn) {
    let Some(cfg) = shard
        .config
        .listeners
        .get(conn.info.listener)
        .and_then(|l| l.http2)
    else {
        return;
    };
    let limits = &shard.config.limits;
    let peer = conn.info.peer;
    let idle = cfg.idle_timeout.unwrap_or(limits.keepalive_timeout);
    let mut builder = ::h2::server::Builder::new();
    builder
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_head_bytes).unwrap_or(u32::MAX))
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buffer_size(MAX_SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_reset_streams(MAX_PENDING_ACCEPT_RESETS * 2);
    let flooding = io.flooding();
    let handshake = monoio::time::timeout_at(conn.first_deadline, builder.handshake(io)).await;
    let mut h2c = match handshake {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            log::debug!("{peer}: HTTP/2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            log::debug!("{peer}: HTTP/2 handshake timed out");
            return;
        }
    };
    shard.metrics.http2_connections_total.inc();
    let conn = Rc::new(conn);
    let open = Rc::new(Cell::new(0usize));
    let mut active_at = Instant::now();
    let mut goaway_at: Option<Instant> = None;
    loop {
        let next = monoio::select! {
            r = h2c.accept() => Some(r),
            _ = flood(&flooding), if goaway_at.is_none() => None,
            _ = monoio::time::sleep(TICK) => None,
        };
        if flooding.get() && goaway_at.is_none() {
            log::debug!("{peer}: HTTP/2 flood of control or empty frames: GOAWAY");
            shard.metrics.http2_floods_total.inc();
            h2c.abrupt_shutdown(Reason::ENHANCE_YOUR_CALM);
            goaway_at = Some(Instant::now());
            continue;
        }
        let now = Instant::now();
        if flooding.get() && goaway_at.is_some_and(|at| now - at >= GOAWAY_LINGER) {
            // A flooding client that does not read its GOAWAY gets no more.
            break;
        }
        match next {
            Some(None) => {
                log::debug!("{peer}: HTTP/2 connection closed");
                break;
            }
            Some(Some(Err(e))) => {
                log::debug!("{peer}: HTTP/2 connection: {e}");
                break;
            }
            Some(Some(Ok((_, mut respond))))
                if WORKER_STREAMS.get() >= limits.max_http2_streams_per_worker =>
            {
                // The client may retry a refused stream (RFC 9113 §8.7).
                log::debug!("{peer}: HTTP/2 stream refused: the worker's stream cap");
                respond.send_reset(Reason::REFUSED_STREAM);
            }
            Some(Some(Ok((req, respond)))) => {
                shard.metrics.http2_streams_total.inc();
                WORKER_STREAMS.set(WORKER_STREAMS.get() + 1);
                open.set(open.get() + 1);
                let (shard, conn, open) = (shard.clone(), conn.clone(), open.clone());
                monoio::spawn(async move {
                    // Boxed: a stream's exchange state lives only as long
                    // as the stream.
                    Box::pin(stream(&shard, &conn, req, respond)).await;
                    open.set(open.get() - 1);
                    WORKER_STREAMS.set(WORKER_STREAMS.get().saturating_sub(1));
                });
            }
            None => {}
        }
        if open.get() > 0 {
            active_at = now;
        }
        match goaway_at {
            None if shard.shutting_down() || now - active_at >= idle => {
                h2c.graceful_shutdown();
                goaway_at = Some(now);
            }
            // The client has had its GOAWAY and has no stream open.
            Some(at) if open.get() == 0 && now - at >= GOAWAY_LINGER => {
                log::debug!("{peer}: HTTP/2 connection closed after GOAWAY");
                break;
            }
            _ => {}
        }
    }
}

/// Resolves once the connection's flood meter has tripped (it wakes this
/// task then: the meter runs in this task's reads).
async fn flood(flooding: &Cell<bool>) {
    std::future::poll_fn(|_| {
        if flooding.get() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

/// Serves one stream: rebuilds its head, routes it, forwards it, logs it.
async fn stream(
    shard: &Shard,
    conn: &Conn,
    req: ::http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let peer = conn.info.peer;
    let (parts, body) = req.into_parts();
    let mut head = buffer::take();
    let chunked = match rebuild_head(&parts, body.is_end_stream(), &mut head) {
        Ok(c) => c,
        Err(why) => {
            log::debug!("{peer}: HTTP/2 stream rejected: {why}");
            buffer::give(head);
            respond.send_reset(Reason::PROTOCOL_ERROR);
            return;
        }
    };
    let mut obuf = buffer::take();
    let prepared = h1::prepare(shard, conn, &head, &mut obuf);
    let started = std::time::Instant::now();
    let Routed {
        head: rhead,
        route,
        affinity,
        upgrade: _,
        request_id,
    } = match prepared {
        Ok(Parsed::Complete(r)) => r,
        Ok(Parsed::Partial) | Err(_) => {
            let err = match prepared {
                Err(e) => e,
                _ => ProxyError::downstream(ErrorKind::BadRequest(
                    crate::http::request::RequestError::HeadTooLarge,
                )),
            };
            log::debug!("{peer}: HTTP/2 request rejected: {err}");
            let status = err.status().unwrap_or(400);
            let finished = Finished {
                peer,
                fields: access_fields(shard, &head),
                status,
                body_bytes: 0,
                elapsed: std::time::Duration::ZERO,
                upstream: None,
                route: None,
                tunnel: None,
            };
            shard.finish(finished, false);
            buffer::give(head);
            buffer::give(obuf);
            respond_status(shard, &mut respond, status);
            return;
        }
    };
    let mut fields = access_fields(shard, &head[..rhead.head_len]);
    buffer::give(head);
    let listener = &shard.config.listeners[conn.info.listener];
    if let Some(f) = &mut fields {
        if listener.forwarding.request_id.is_some() {
            f.set_request_id(request_id.as_ref().map(RequestId::as_bytes));
        }
    }
    let routes = &shard.routes[conn.info.listener];
    let request = Request {
        group: route.group,
        affinity,
        head: rhead,
        close_client: false,
        upgrade: None,
    };
    let mut down = H2Exchange {
        shard,
        body,
        chunked,
        respond,
        send: None,
        pending: None,
        interim: None,
        remaining: None,
        ended: false,
        chunks: None,
        trailers: Vec::new(),
        add_response_headers: &routes.config(route.index).add_response_headers,
        request_id: listener
            .forwarding
            .request_id
            .as_ref()
            .zip(request_id.as_ref())
            .map(|(c, id)| (c.header.as_slice(), id.as_bytes())),
        scratch: Vec::new(),
    };
    let result = proxy::forward(shard, &mut down, &request, obuf).await;
    let elapsed = started.elapsed();
    let route = Some((conn.info.listener, route.index));
    match result {
        Ok(done) => {
            if !down.ended {
                if let Some(s) = down.send.as_mut() {
                    let _ = s.send_data(Bytes::new(), true);
                }
            }
            let upstream = fields
                .is_some()
                .then(|| shard.upstreams.borrow().address(done.backend));
            let finished = Finished {
                peer,
                fields,
                status: done.status,
                body_bytes: done.body_bytes,
                elapsed,
                upstream,
                route,
                tunnel: None,
            };
            shard.finish(finished, true);
        }
        Err(Failure::Respond(err, buf)) => {
            buffer::give(buf);
            match err.side {
                Side::Downstream => log::debug!("{peer}: {err}"),
                _ => log::warn!("{peer}: {err}"),
            }
            let status = err.status().unwrap_or(0);
            match (down.send.as_mut(), err.status()) {
                (None, Some(s)) => respond_status(shard, &mut down.respond, s),
                (Some(s), _) => s.send_reset(Reason::INTERNAL_ERROR),
                (None, None) => down.respond.send_reset(Reason::INTERNAL_ERROR),
            }
            let finished = Finished {
                peer,
                fields: err.status().and(fields),
                status,
                body_bytes: 0,
                elapsed,
                upstream: None,
                route,
                tunnel: None,
            };
            shard.finish(finished, true);
        }
        Err(Failure::Close(err)) => {
            log::debug!("{peer}: HTTP/2 stream reset: {err}");
            match down.send.as_mut() {
                Some(s) => s.send_reset(Reason::INTERNAL_ERROR),
                None => down.respond.send_reset(Reason::INTERNAL_ERROR),
            }
            if let Some(f) = fields {
                shard.give_fields(f);
            }
        }
    }
}

/// The access-log fields of a stream from its rebuilt head, the request
/// line saying `HTTP/2.0`.
fn access_fields(shard: &Shard, head: &[u8]) -> Option<crate::access_log::Fields> {
    let mut f = shard.access_fields(head)?;
    if let Some(n) = f.request_line.len().checked_sub(3) {
        if f.request_line.ends_with(b" HTTP/1.1") {
            f.request_line[n..].copy_from_slice(b"2.0");
        }
    }
    Some(f)
}

/// Sends a bodiless response with `status` (lbd's own answer).
fn respond_status(shard: &Shard, respond: &mut SendResponse<Bytes>, status: u16) {
    shard.metrics.response_h2(status);
    let mut r = ::http::Response::new(());
    *r.status_mut() =
        ::http::StatusCode::from_u16(status).unwrap_or(::http::StatusCode::BAD_GATEWAY);
    let _ = respond.send_response(r, true);
}

/// A request header that only means something for one HTTP/1 connection
/// (RFC 9113 §8.2.2): malformed in an HTTP/2 request.
fn connection_specific(name: &::http::HeaderName, value: &::http::HeaderValue) -> bool {
    use ::http::header;
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
        || (name == header::TE && value.as_bytes() != b"trailers")
}

/// Writes the HTTP/1.1 head an HTTP/2 request stands for into `out`:
/// request line, `Host` from `:authority` (else the `Host` header), the
/// other headers (cookies joined, RFC 9113 §8.2.3), `Transfer-Encoding:
/// chunked` when a body of no stated length follows (`!end_stream`).
/// Returns whether that body is to be chunked; `Err` names what is
/// malformed.
fn rebuild_head(
    parts: &::http::request::Parts,
    end_stream: bool,
    out: &mut Vec<u8>,
) -> Result<bool, &'static str> {
    use ::http::header;
    if parts.method == ::http::Method::CONNECT {
        return Err("CONNECT is not supported");
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", ::http::uri::PathAndQuery::as_str);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let authority = parts.uri.authority().map(::http::uri::Authority::as_str);
    let host = authority
        .map(str::as_bytes)
        .or_else(|| parts.headers.get(header::HOST).map(|v| v.as_bytes()));
    if let Some(h) = host {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    let mut cookies = 0;
    let mut has_length = false;
    for (name, value) in &parts.headers {
        if connection_specific(name, value) {
            return Err("connection-specific header field");
        }
        if name == header::HOST {
            continue;
        }
        if name == header::COOKIE {
            cookies += 1;
            continue;
        }
        if name == header::TE {
            // `trailers` is hop-by-hop for HTTP/1.1 too.
            continue;
        }
        has_length |= name == header::CONTENT_LENGTH;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if cookies > 0 {
        out.extend_from_slice(b"Cookie: ");
        for (i, v) in parts.headers.get_all(header::COOKIE).iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(b"; ");
            }
            out.extend_from_slice(v.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    let chunked = !end_stream && !has_length;
    if chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(chunked)
}

/// The HTTP/2 stream's side of one exchange.
struct H2Exchange<'a> {
    shard: &'a Shard,
    /// The request body (DATA frames).
    body: RecvStream,
    /// The upstream body is chunked (the client gave no length).
    chunked: bool,
    respond: SendResponse<Bytes>,
    /// The response body's stream, once its head went out.
    send: Option<SendStream<Bytes>>,
    /// The final response head, sent with the first write.
    pending: Option<::http::Response<()>>,
    /// An interim (1xx) head, sent by the write that follows it.
    interim: Option<::http::Response<()>>,
    /// Response body bytes still to come, when the framing says.
    remaining: Option<u64>,
    /// END_STREAM was sent.
    ended: bool,
    /// A chunked response body: its decoder (the body arrives verbatim, so
    /// that its trailers become HTTP/2 trailers).
    chunks: Option<ChunkedDecoder>,
    /// The trailer section read so far.
    trailers: Vec<u8>,
    /// The route's `add_response_headers`.
    add_response_headers: &'a [HeaderPair],
    /// The request id echoed in the response: header name and value.
    request_id: Option<(&'a [u8], &'a [u8])>,
    /// The HTTP/1 response head, rebuilt into HTTP/2 headers.
    scratch: Vec<u8>,
}

fn client_h2(e: ::h2::Error) -> ProxyError {
    ProxyError::downstream(ErrorKind::ClientIo(std::io::Error::other(e)))
}

/// Writes all of `out` upstream within `limit`; hands the buffer back, or
/// returns it to the free list on failure.
async fn send_up(up: &mut Stream, out: Vec<u8>, limit: Duration) -> Result<Vec<u8>, ProxyError> {
    let len = out.len();
    let (res, out) = up.write_range(out, 0, len, limit).await;
    match res {
        Ok(()) => Ok(out),
        Err(e) => {
            buffer::give(out);
            Err(upstream_io(e))
        }
    }
}

fn upstream_io(e: std::io::Error) -> ProxyError {
    ProxyError::upstream(ErrorKind::UpstreamIo(e))
}

impl H2Exchange<'_> {
    /// Sends `data` as DATA frames as the client's window allows, within
    /// `client_write_timeout` per wait; END_STREAM with the last byte when
    /// `last`.
    async fn send_body(&mut self, mut data: Bytes, last: bool) -> Result<(), ProxyError> {
        let limit = self.shard.config.limits.client_write_timeout;
        let Some(send) = self.send.as_mut() else {
            return Ok(());
        };
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            if send.capacity() == 0 {
                let cap = std::future::poll_fn(|cx| send.poll_capacity(cx));
                match monoio::time::timeout(limit, cap).await {
                    Err(_) => return Err(ProxyError::downstream(ErrorKind::ClientTimeout)),
                    Ok(None) => {
                        return Err(ProxyError::downstream(ErrorKind::ClientIo(
                            std::io::ErrorKind::ConnectionReset.into(),
                        )))
                    }
                    Ok(Some(Err(e))) => return Err(client_h2(e)),
                    Ok(Some(Ok(_))) => {}
                }
            }
            let n = send.capacity().min(data.len());
            if n == 0 {
                continue;
            }
            let chunk = data.split_to(n);
            let eos = last && data.is_empty();
            send.send_data(chunk, eos).map_err(client_h2)?;
        }
        Ok(())
    }
}

impl H2Exchange<'_> {
    /// Sends the chunk data in `bytes` (verbatim chunked framing, already
    /// checked by the proxy's own decoder) as DATA frames; at the end of the
    /// body, its trailers as a trailing HEADERS frame (or an empty
    /// END_STREAM DATA frame). Framing bytes are stepped through one at a
    /// time, so trailer bytes are told from framing.
    async fn write_chunked(&mut self, bytes: &[u8]) -> Result<(), ProxyError> {
        let mut pos = 0;
        while pos < bytes.len() {
            let Some(dec) = self.chunks.as_mut() else {
                return Ok(());
            };
            if dec.is_done() {
                break;
            }
            let trailer = dec.in_trailers();
            let limit = if dec.in_data() { bytes.len() } else { pos + 1 };
            let step = dec
                .step(&bytes[pos..limit])
                .map_err(|e| ProxyError::upstream(ErrorKind::BadResponseBody(e)))?;
            let done = dec.is_done();
            if trailer {
                self.trailers
                    .extend_from_slice(&bytes[pos..pos + step.consumed]);
            }
            if let Some(r) = step.data {
                let data = Bytes::copy_from_slice(&bytes[pos + r.start..pos + r.end]);
                self.send_body(data, false).await?;
            }
            pos += step.consumed;
            if done {
                return self.end_with_trailers();
            }
            if step.consumed == 0 {
                break;
            }
        }
        Ok(())
    }

    /// Ends the stream: with the trailer section read, as HTTP/2 trailers,
    /// if it holds any field lbd may pass on; else with an empty DATA frame.
    fn end_with_trailers(&mut self) -> Result<(), ProxyError> {
        let Some(send) = self.send.as_mut() else {
            return Ok(());
        };
        self.ended = true;
        let mut map = ::http::HeaderMap::new();
        for line in self.trailers.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let value = crate::http::trim_ows(&line[colon + 1..]);
            let (Ok(name), Ok(value)) = (
                ::http::HeaderName::from_bytes(&line[..colon]),
                ::http::HeaderValue::from_bytes(value),
            ) else {
                continue;
            };
            // Fields that must not be trailers (RFC 9110 §6.5.1), and
            // connection-specific ones.
            if connection_specific(&name, &value)
                || name == ::http::header::TE
                || name == ::http::header::CONTENT_LENGTH
                || name == ::http::header::HOST
            {
                continue;
            }
            map.append(name, value);
        }
        self.trailers = Vec::new();
        if map.is_empty() {
            send.send_data(Bytes::new(), true).map_err(client_h2)
        } else {
            send.send_trailers(map).map_err(client_h2)
        }
    }
}

impl Downstream for H2Exchange<'_> {
    async fn upstream_ready(&mut self, _head: &RequestHead) -> Result<(), ProxyError> {
        // An HTTP/2 client does not wait for `100 Continue` to send DATA
        // (the backend's `100` is dropped, see `encode_head`).
        Ok(())
    }

    fn buffered_body(&mut self, _body: &mut Body, _out: &mut Vec<u8>) -> Result<(), ProxyError> {
        // DATA frames are read in `stream_body`.
        Ok(())
    }

    async fn stream_body(
        &mut self,
        body: &mut Body,
        up: &mut Stream,
    ) -> Result<BodyEnd, ProxyError> {
        let limits = &self.shard.config.limits;
        let mut out = buffer::take();
        loop {
            let next = monoio::time::timeout(limits.body_timeout, self.body.data()).await;
            let data = match next {
                Err(_) => {
                    buffer::give(out);
                    return Err(ProxyError::downstream(ErrorKind::ClientTimeout));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    buffer::give(out);
                    return Err(client_h2(e));
                }
                Ok(Some(Ok(d))) => d,
            };
            let n = data.len();
            if n == 0 {
                continue;
            }
            out.clear();
            if self.chunked {
                let _ = write!(out, "{n:x}\r\n");
                out.extend_from_slice(&data);
                out.extend_from_slice(b"\r\n");
            } else {
                out.extend_from_slice(&data);
            }
            drop(data);
            out = send_up(up, out, limits.upstream_body_timeout).await?;
            // The bytes went upstream: the client may send as many more.
            let _ = self.body.flow_control().release_capacity(n);
        }
        if self.chunked {
            out.clear();
            out.extend_from_slice(b"0\r\n");
            // The client's trailers, if it sent any, as the trailer section
            // (the stream ended, so they are there or there are none).
            let trailers = monoio::time::timeout(limits.body_timeout, self.body.trailers()).await;
            if let Ok(Ok(Some(trailers))) = trailers {
                for (name, value) in &trailers {
                    if connection_specific(name, value)
                        || name == ::http::header::TE
                        || name == ::http::header::CONTENT_LENGTH
                        || name == ::http::header::HOST
                    {
                        continue;
                    }
                    out.extend_from_slice(name.as_str().as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(value.as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
            out.extend_from_slice(b"\r\n");
            out = send_up(up, out, limits.upstream_body_timeout).await?;
        }
        buffer::give(out);
        *body = Body::Done;
        Ok(BodyEnd::Complete)
    }

    fn count_response(&self, shard: &Shard, status: u16) {
        shard.metrics.response_h2(status);
    }

    fn encode_head(
        &mut self,
        resp: &ResponseView<'_>,
        _close: bool,
        set_cookie: Option<SetCookie<'_>>,
        _out: &mut Vec<u8>,
    ) -> ClientHead {
        let keep = ClientHead {
            dechunk: false,
            close_client: false,
        };
        // The HTTP/1 head lbd would send, with the route's extras, turned
        // into HTTP/2 headers without the connection-specific ones.
        let ctx = ClientContext {
            http10: false,
            close_client: false,
        };
        let extras = ResponseExtras {
            headers: self.add_response_headers,
            set_cookie,
            request_id: self.request_id,
        };
        self.scratch.clear();
        write_client_head(resp, ctx, &extras, &mut self.scratch);
        let mut response = ::http::Response::new(());
        *response.status_mut() = ::http::StatusCode::from_u16(resp.head.status)
            .unwrap_or(::http::StatusCode::BAD_GATEWAY);
        let n = resp.headers.len() + self.add_response_headers.len() + 4;
        let mut hs = vec![httparse::EMPTY_HEADER; n];
        let mut parsed = httparse::Response::new(&mut hs);
        if let Ok(httparse::Status::Complete(_)) = parsed.parse(&self.scratch) {
            let headers = response.headers_mut();
            for h in parsed.headers.iter() {
                let Ok(name) = ::http::HeaderName::from_bytes(h.name.as_bytes()) else {
                    continue;
                };
                let Ok(value) = ::http::HeaderValue::from_bytes(h.value) else {
                    continue;
                };
                if connection_specific(&name, &value) || name == ::http::header::TE {
                    continue;
                }
                headers.append(name, value);
            }
        }
        if resp.head.interim {
            // 1xx (103 Early Hints, 100 Continue): a HEADERS frame of its
            // own before the final response (RFC 9113 §8.1).
            self.interim = Some(response);
            return keep;
        }
        self.remaining = match resp.head.framing {
            Framing::Length(n) => Some(n),
            Framing::None => Some(0),
            Framing::Chunked | Framing::UntilClose => None,
        };
        self.pending = Some(response);
        // A chunked body comes verbatim and is de-chunked in `write`, its
        // trailers kept.
        self.chunks = (resp.head.framing == Framing::Chunked)
            .then(|| ChunkedDecoder::with_extension_limit(usize::MAX));
        keep
    }

    async fn tunnel(&mut self, _up: &mut Stream, _idle: Duration) -> Carried {
        // Never reached: an HTTP/2 request carries no Upgrade (rejected in
        // `rebuild_head`) and asks for none (`Request::upgrade` is `None`).
        Carried::default()
    }

    async fn write(
        &mut self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
    ) -> (Result<(), ProxyError>, Vec<u8>) {
        if let Some(interim) = self.interim.take() {
            let res = self.respond.send_informational(interim);
            return (res.map_err(client_h2), buf);
        }
        let n = end.saturating_sub(start);
        let last = self.remaining == Some(n as u64);
        if let Some(resp) = self.pending.take() {
            let eos = last && n == 0;
            match self.respond.send_response(resp, eos) {
                Ok(s) => self.send = Some(s),
                Err(e) => return (Err(client_h2(e)), buf),
            }
            self.ended = eos;
        }
        if n == 0 || self.ended {
            return (Ok(()), buf);
        }
        if self.chunks.is_some() {
            let res = self.write_chunked(&buf[start..end]).await;
            return (res, buf);
        }
        let data = Bytes::copy_from_slice(&buf[start..end]);
        let res = self.send_body(data, last).await;
        if let Some(r) = self.remaining.as_mut() {
            *r = r.saturating_sub(n as u64);
        }
        self.ended |= last && res.is_ok();
        (res, buf)
    }
}
