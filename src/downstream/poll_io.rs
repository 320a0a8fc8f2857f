//! An HTTP/2 client connection as the `h2` crate needs it: tokio
//! `AsyncRead`/`AsyncWrite` over monoio's poll-io (`into_poll_io()`: the
//! socket is waited on through an epoll set the ring polls, reads and writes
//! are plain `recv`/`send`), instead of lbd's owned-buffer ring operations.
//!
//! Two shapes: plain TCP whose first bytes (the preface, read while
//! detecting it) are replayed before the socket's ([`Prefixed`]), and TLS
//! that keeps the rustls `ServerConnection` lbd's own handshake produced
//! ([`TlsPoll`]): the ALPN decision is made by that handshake, so HTTP/1 TLS
//! connections never leave lbd's ring path, and plaintext rustls already
//! decrypted (the preface often comes with the client's last handshake
//! flight) is read first because it is still in the same connection.
//!
//! Both shapes pass their plaintext through the connection's
//! [`FloodMeter`]; once it trips, reads stop (the rest of the flood stays in
//! the socket) and the connection's task is woken to send its GOAWAY.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use monoio::net::tcp::stream_poll::TcpStreamPoll;
use rustls::ServerConnection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::h2_flood::{FloodMeter, MAX_IDLE_FRAMES};

/// A client connection in poll form, metered for floods.
pub(crate) struct Io {
    transport: Transport,
    meter: FloodMeter,
    /// Set once the meter trips; shared with the connection's task.
    flooding: Rc<Cell<bool>>,
}

/// The bytes under an [`Io`].
pub(crate) enum Transport {
    /// h2c: plain TCP, with the bytes already read.
    Plain(Prefixed),
    /// h2 over TLS (ALPN).
    Tls(Box<TlsPoll>),
}

impl Io {
    /// `transport`, metered from its first byte (the client preface).
    pub(crate) fn new(transport: Transport) -> Self {
        Io {
            transport,
            meter: FloodMeter::new(MAX_IDLE_FRAMES),
            flooding: Rc::new(Cell::new(false)),
        }
    }

    /// The flag the meter sets when it trips.
    pub(crate) fn flooding(&self) -> Rc<Cell<bool>> {
        self.flooding.clone()
    }
}

/// Plain TCP that first yields bytes read before the switch to poll-io.
pub(crate) struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    io: TcpStreamPoll,
}

impl Prefixed {
    /// `prefix` comes out before anything read from `io`.
    pub(crate) fn new(prefix: Vec<u8>, io: TcpStreamPoll) -> Self {
        Prefixed { prefix, pos: 0, io }
    }
}

/// rustls (server side, handshake done) over a poll-io TCP stream.
pub(crate) struct TlsPoll {
    io: TcpStreamPoll,
    conn: ServerConnection,
    /// The TCP stream ended (or the peer sent close_notify).
    eof: bool,
    /// close_notify was queued.
    shut: bool,
}

impl TlsPoll {
    /// Continues `conn` (its handshake complete) over `io`.
    pub(crate) fn new(io: TcpStreamPoll, conn: ServerConnection) -> Self {
        TlsPoll {
            io,
            conn,
            eof: false,
            shut: false,
        }
    }

    /// Writes queued TLS records to the socket: `Ready(Ok(()))` once
    /// nothing is queued.
    fn poll_flush_tls(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.conn.wants_write() {
            let mut w = SyncWrite {
                io: &mut self.io,
                cx,
            };
            match self.conn.write_tls(&mut w) {
                Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// `std::io::Read` over a poll stream: `Pending` becomes `WouldBlock` (the
/// waker is registered by the inner poll), for rustls's `read_tls`.
struct SyncRead<'a, 'b> {
    io: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Read for SyncRead<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// `std::io::Write` over a poll stream, for rustls's `write_tls`.
struct SyncWrite<'a, 'b> {
    io: &'a mut TcpStreamPoll,
    cx: &'a mut Context<'b>,
}

impl Write for SyncWrite<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl AsyncRead for TlsPoll {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.conn.reader().read(buf.initialize_unfilled()) {
                Ok(n) => {
                    // 0: close_notify arrived, end of stream.
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // The TCP stream ended without close_notify: end of stream
                // for h2 too (it knows whether that was mid-frame).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Poll::Ready(Ok(())),
                Err(e) => return Poll::Ready(Err(e)),
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Post-handshake messages may want a reply (key update).
            if let Poll::Ready(Err(e)) = this.poll_flush_tls(cx) {
                return Poll::Ready(Err(e));
            }
            let mut r = SyncRead {
                io: &mut this.io,
                cx,
            };
            match this.conn.read_tls(&mut r) {
                Ok(0) => this.eof = true,
                Ok(_) => {
                    let state = this.conn.process_new_packets().map_err(tls_err);
                    match state {
                        Ok(s) if s.peer_has_closed() => this.eof = true,
                        Ok(_) => {}
                        Err(e) => {
                            // Tell the peer why (the alert rustls queued).
                            let _ = this.poll_flush_tls(cx);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for TlsPoll {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut pos = 0;
        while pos < buf.len() {
            match this.conn.writer().write(&buf[pos..]) {
                Ok(n) => pos += n,
                Err(e) => return Poll::Ready(Err(e)),
            }
            match this.poll_flush_tls(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                // The socket is full: report what rustls took (it holds
                // those bytes), or wait if it took none.
                Poll::Pending if pos == 0 => return Poll::Pending,
                Poll::Pending => return Poll::Ready(Ok(pos)),
            }
        }
        Poll::Ready(Ok(pos))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.writer().flush()?;
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shut {
            this.conn.send_close_notify();
            this.shut = true;
        }
        ready!(this.poll_flush_tls(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flooding.get() {
            // The task was woken when the meter tripped; it sends GOAWAY.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.transport).poll_read(cx, buf))?;
        if this.meter.read(&buf.filled()[before..]) {
            this.flooding.set(true);
            cx.waker().wake_by_ref();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = ready!(Pin::new(&mut this.transport).poll_write(cx, buf))?;
        this.meter.wrote(&buf[..n.min(buf.len())]);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().transport).poll_shutdown(cx)
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(p) => {
                if p.pos < p.prefix.len() {
                    let n = (p.prefix.len() - p.pos).min(buf.remaining());
                    buf.put_slice(&p.prefix[p.pos..p.pos + n]);
                    p.pos += n;
                    if p.pos == p.prefix.len() {
                        p.prefix = Vec::new();
                        p.pos = 0;
                    }
                    return Poll::Ready(Ok(()));
                }
                Pin::new(&mut p.io).poll_read(cx, buf)
            }
            Transport::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(p) => Pin::new(&mut p.io).poll_write(cx, buf),
            Transport::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(p) => Pin::new(&mut p.io).poll_flush(cx),
            Transport::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(p) => Pin::new(&mut p.io).poll_shutdown(cx),
            Transport::Tls(t) => Pin::new(&mut **t).poll_shutdown(cx),
        }
    }
}
