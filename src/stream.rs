//! A connection as the data path sees it: plain TCP, or TLS over TCP.
//!
//! lbd drives rustls itself rather than through monoio-rustls. monoio-rustls
//! (0.4) copies through two 16 KiB buffers owned by every connection, which an
//! idle keep-alive or pooled TLS connection would hold forever, and it hides
//! whether rustls still holds decrypted bytes, which the idle wait (wait for
//! readability before taking a buffer) must know. Here ciphertext passes
//! through buffers taken from the worker's free list only while I/O is in
//! progress, rustls's own state is all an idle TLS connection keeps, and
//! [`Stream::readable`] returns at once when plaintext is already decrypted.
//! Everything is async on the worker's ring, so a slow handshake never blocks
//! the worker's other connections; every operation has a deadline.

// One `unsafe` block: borrowing a live socket to duplicate it (SAFETY below).
#![allow(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::Instant;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::buffer::{self, InBuf};
use crate::deadline;

/// A second view of an upstream socket, for readiness only: while a request
/// body is being sent, it tells lbd that the backend began to answer (an
/// early response, RFC 9112 §9.5) without disturbing the reads and writes
/// in flight on the stream itself.
pub struct Watch {
    fd: monoio::net::UnixStream,
}

impl Watch {
    /// Resolves when the socket turns readable (data, or EOF).
    pub async fn readable(&self) -> io::Result<()> {
        self.fd.readable(false).await
    }
}

/// How a watched write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watched {
    /// Every byte was written.
    Written,
    /// The peer began to answer (or closed) first; the write was abandoned
    /// and the connection must not be used for another request.
    Spoke,
}

/// TLS state over a TCP connection.
pub struct Tls {
    tcp: TcpStream,
    conn: Connection,
    /// The peer sent close_notify, or the TCP stream ended.
    eof: bool,
}

/// A client or upstream connection.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS, driven by lbd.
    Tls(Box<Tls>),
}

fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Reads from `tcp` into `b`'s spare capacity before `deadline` (a coarse
/// one: see [`deadline`]).
pub(crate) async fn tcp_fill(
    tcp: &mut TcpStream,
    b: &mut InBuf,
    limit: usize,
    deadline: Instant,
) -> io::Result<usize> {
    if !b.make_room(limit) {
        return Err(io::Error::other("buffer full"));
    }
    let v = std::mem::take(&mut b.v);
    let len = v.len();
    let cap = v.capacity();
    let read = std::pin::pin!(tcp.read(v.slice_mut(len..cap)));
    match deadline::within(deadline.into_std(), read).await {
        Some((res, slice)) => {
            b.v = slice.into_inner();
            res
        }
        // The buffer stays with the cancelled operation; callers close the
        // connection after a timeout.
        None => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes `buf[start..end]` to `tcp` within `limit` (coarse: see
/// [`deadline`]).
async fn tcp_write(
    tcp: &mut TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: Duration,
) -> (io::Result<()>, Vec<u8>) {
    if start >= end {
        return (Ok(()), buf);
    }
    let deadline = std::time::Instant::now() + limit;
    let write = std::pin::pin!(tcp.write_all(buf.slice(start..end)));
    match deadline::within(deadline, write).await {
        Some((res, slice)) => (res.map(|_| ()), slice.into_inner()),
        None => (Err(io::ErrorKind::TimedOut.into()), Vec::new()),
    }
}

impl Tls {
    /// Sends whatever rustls has queued (handshake messages, records).
    async fn flush(&mut self, limit: Duration) -> io::Result<()> {
        if !self.conn.wants_write() {
            return Ok(());
        }
        let mut out = buffer::take();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out)?;
        }
        let len = out.len();
        let (res, out) = tcp_write(&mut self.tcp, out, 0, len, limit).await;
        buffer::give(out);
        res
    }

    /// [`Tls::flush`], abandoned when application data (or close) arrives
    /// through `watch` first; other records read meanwhile go to rustls.
    async fn flush_watching(&mut self, limit: Duration, watch: &mut Watch) -> io::Result<Watched> {
        let mut out = buffer::take();
        while self.conn.wants_write() {
            self.conn.write_tls(&mut out)?;
        }
        let len = out.len();
        let write = tcp_write(&mut self.tcp, out, 0, len, limit);
        let mut write = std::pin::pin!(write);
        loop {
            monoio::select! {
                r = &mut write => {
                    let (res, out) = r;
                    buffer::give(out);
                    return res.map(|()| Watched::Written);
                }
                r = watch.fd.readable(false) => {
                    r?;
                    if absorb(&mut self.conn, &mut self.eof, watch).await? {
                        return Ok(Watched::Spoke);
                    }
                }
            }
        }
    }

    /// Reads one batch of ciphertext and feeds it to rustls. `Ok(false)` on EOF.
    async fn read_tls(&mut self, deadline: Instant) -> io::Result<bool> {
        let mut cbuf = InBuf::new();
        let n = tcp_fill(&mut self.tcp, &mut cbuf, buffer::BUF_SIZE, deadline).await?;
        if n == 0 {
            cbuf.release();
            self.eof = true;
            return Ok(false);
        }
        let mut slice = cbuf.data();
        let mut result = Ok(true);
        while !slice.is_empty() {
            match self.conn.read_tls(&mut slice) {
                Ok(_) => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
            match self.conn.process_new_packets() {
                Ok(state) => {
                    if state.peer_has_closed() {
                        self.eof = true;
                    }
                }
                Err(e) => {
                    result = Err(tls_err(e));
                    break;
                }
            }
        }
        cbuf.release();
        result
    }

    /// Feeds ciphertext that was read before the handshake began (the
    /// bytes after a PROXY protocol header) to rustls.
    fn feed(&mut self, mut early: &[u8]) -> io::Result<()> {
        while !early.is_empty() {
            if self.conn.read_tls(&mut early)? == 0 {
                break;
            }
            let state = self.conn.process_new_packets().map_err(tls_err)?;
            if state.peer_has_closed() {
                self.eof = true;
            }
        }
        Ok(())
    }

    /// Completes the handshake before `deadline`.
    async fn handshake(&mut self, deadline: Instant) -> io::Result<()> {
        while self.conn.is_handshaking() {
            let left = deadline.saturating_duration_since(Instant::now());
            self.flush(left.max(Duration::from_millis(1))).await?;
            if self.conn.is_handshaking()
                && self.conn.wants_read()
                && !self.read_tls(deadline).await?
            {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed during the TLS handshake",
                ));
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        self.flush(left.max(Duration::from_millis(1))).await
    }

    /// Decrypted bytes waiting in rustls.
    fn plaintext_pending(&mut self) -> bool {
        self.conn
            .process_new_packets()
            .map(|s| s.plaintext_bytes_to_read() > 0)
            .unwrap_or(true)
    }
}

/// Reads what `watch` has into `conn`: true if application data or a close
/// came with it.
async fn absorb(conn: &mut Connection, eof: &mut bool, watch: &mut Watch) -> io::Result<bool> {
    let buf = buffer::take();
    let cap = buf.capacity();
    let (res, buf) = watch.fd.read(buf.slice_mut(0..cap)).await;
    let buf = buf.into_inner();
    let result = match res {
        Ok(0) => {
            *eof = true;
            Ok(true)
        }
        Ok(n) => feed(conn, &buf[..n]).map(|closed| {
            *eof |= closed;
            closed
                || conn
                    .process_new_packets()
                    .map(|s| s.plaintext_bytes_to_read() > 0)
                    .unwrap_or(true)
        }),
        Err(e) => Err(e),
    };
    buffer::give(buf);
    result
}

/// Feeds ciphertext to rustls; true if the peer closed.
fn feed(conn: &mut Connection, mut bytes: &[u8]) -> io::Result<bool> {
    let mut closed = false;
    while !bytes.is_empty() {
        conn.read_tls(&mut bytes)?;
        closed |= conn
            .process_new_packets()
            .map_err(tls_err)?
            .peer_has_closed();
    }
    Ok(closed)
}

impl Stream {
    /// Adopts a plain TCP connection.
    pub fn plain(tcp: TcpStream) -> Self {
        let _ = tcp.set_nodelay(true);
        Stream::Plain(tcp)
    }

    /// Server side: the TLS handshake with a client, within `limit`.
    /// `early`: the handshake's first bytes, if some were already read
    /// from `tcp` (after a PROXY protocol header).
    pub async fn accept_tls(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        limit: Duration,
        early: &[u8],
    ) -> io::Result<Self> {
        let _ = tcp.set_nodelay(true);
        let conn = ServerConnection::new(config).map_err(tls_err)?;
        let mut t = Box::new(Tls {
            tcp,
            conn: Connection::Server(conn),
            eof: false,
        });
        t.feed(early)?;
        t.handshake(Instant::now() + limit).await?;
        Ok(Stream::Tls(t))
    }

    /// Client side: the TLS handshake with a backend, within `limit`.
    pub async fn connect_tls(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        limit: Duration,
    ) -> io::Result<Self> {
        let _ = tcp.set_nodelay(true);
        let conn = ClientConnection::new(config, name).map_err(tls_err)?;
        let mut t = Box::new(Tls {
            tcp,
            conn: Connection::Client(conn),
            eof: false,
        });
        t.handshake(Instant::now() + limit).await?;
        Ok(Stream::Tls(t))
    }

    /// The socket's descriptor (for the pool's liveness probe).
    pub fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Plain(t) => t.as_raw_fd(),
            Stream::Tls(t) => t.tcp.as_raw_fd(),
        }
    }

    /// A TLS connection?
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Before closing a TLS connection: sends `close_notify`, so the client
    /// sees a clean end (OpenSSL 3 reports a close without one as an
    /// "unexpected eof" and will not resume that session). Best effort,
    /// within `limit`; nothing for plain TCP.
    pub async fn close_notify(&mut self, limit: Duration) {
        if let Stream::Tls(t) = self {
            t.conn.send_close_notify();
            let _ = t.flush(limit).await;
        }
    }

    /// Ends the sending side: TLS `close_notify`, then a TCP FIN
    /// (`shutdown(SHUT_WR)`); reading goes on (a staged close).
    pub async fn shutdown_write(&mut self, limit: Duration) -> io::Result<()> {
        match self {
            Stream::Plain(t) => t.shutdown().await,
            Stream::Tls(t) => {
                t.conn.send_close_notify();
                t.flush(limit).await?;
                t.tcp.shutdown().await
            }
        }
    }

    /// A readiness watch on this connection's socket (a duplicate
    /// descriptor).
    pub fn watch(&self) -> io::Result<Watch> {
        let raw = self.raw_fd();
        // SAFETY: `raw` belongs to this stream's TcpStream, which `&self`
        // keeps open for the whole call; the borrow only duplicates it.
        let dup = unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned()?;
        let fd = monoio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(dup))?;
        Ok(Watch { fd })
    }

    /// After `watch` turned readable: did the peer begin to answer? Plain
    /// TCP: yes (data, or EOF). TLS: only if a record with application data
    /// (or close) arrived; post-handshake messages such as session tickets
    /// are absorbed (read through the watch and fed to rustls) and do not
    /// count.
    pub async fn spoke(&mut self, watch: &mut Watch) -> io::Result<bool> {
        match self {
            Stream::Plain(_) => Ok(true),
            Stream::Tls(t) => absorb(&mut t.conn, &mut t.eof, watch).await,
        }
    }

    /// [`Stream::write_range`], abandoned when the peer begins to answer
    /// first (see [`Stream::spoke`]).
    pub async fn write_watching(
        &mut self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
        limit: Duration,
        watch: &mut Watch,
    ) -> (io::Result<Watched>, Vec<u8>) {
        if start >= end {
            return (Ok(Watched::Written), buf);
        }
        match self {
            Stream::Plain(tcp) => {
                let deadline = std::time::Instant::now() + limit;
                let write = std::pin::pin!(tcp.write_all(buf.slice(start..end)));
                monoio::select! {
                    r = deadline::within(deadline, write) => match r {
                        Some((res, slice)) => (res.map(|_| Watched::Written), slice.into_inner()),
                        None => (Err(io::ErrorKind::TimedOut.into()), Vec::new()),
                    },
                    _ = watch.fd.readable(false) => (Ok(Watched::Spoke), Vec::new()),
                }
            }
            Stream::Tls(t) => {
                if let Err(e) = t.conn.writer().write_all(&buf[start..end]) {
                    return (Err(e), buf);
                }
                (t.flush_watching(limit, watch).await, buf)
            }
        }
    }

    /// The TLS client and lbd agreed on HTTP/2 (ALPN `h2`).
    pub fn alpn_h2(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.conn.alpn_protocol() == Some(b"h2"))
    }

    /// A server-side TLS stream's parts, for HTTP/2 (see
    /// `downstream::poll_io`); any other stream comes back as it was.
    pub fn into_server_tls(self) -> Result<(TcpStream, ServerConnection), Stream> {
        match self {
            Stream::Tls(t) => {
                let Tls { tcp, conn, eof } = *t;
                match conn {
                    Connection::Server(s) => Ok((tcp, s)),
                    conn => Err(Stream::Tls(Box::new(Tls { tcp, conn, eof }))),
                }
            }
            plain => Err(plain),
        }
    }

    /// The server name a TLS client sent in SNI (server side only).
    pub fn server_name(&self) -> Option<&str> {
        match self {
            Stream::Tls(t) => match &t.conn {
                Connection::Server(s) => s.server_name(),
                Connection::Client(_) => None,
            },
            Stream::Plain(_) => None,
        }
    }

    /// True if bytes arrived that nobody asked for (a TLS record decrypted
    /// past the end of a response): such a connection is not reusable.
    pub fn has_pending(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(t) => t.eof || t.plaintext_pending(),
        }
    }

    /// Resolves when a read would find data (or EOF), without taking a
    /// buffer; at once if decrypted bytes are already waiting.
    pub async fn readable(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(t) => t.readable(false).await,
            Stream::Tls(t) => {
                if t.eof || t.plaintext_pending() {
                    return Ok(());
                }
                t.tcp.readable(false).await
            }
        }
    }

    /// Reads more bytes into `b` (growing it up to `limit`) before
    /// `deadline`. `Ok(0)` is end of stream.
    pub async fn fill(
        &mut self,
        b: &mut InBuf,
        limit: usize,
        deadline: Instant,
    ) -> io::Result<usize> {
        match self {
            Stream::Plain(t) => tcp_fill(t, b, limit, deadline).await,
            Stream::Tls(t) => loop {
                if !b.make_room(limit) {
                    return Err(io::Error::other("buffer full"));
                }
                let pending = t
                    .conn
                    .process_new_packets()
                    .map_err(tls_err)?
                    .plaintext_bytes_to_read();
                if pending > 0 {
                    // Read straight into the buffer's spare room (zeroed only
                    // as far as there is plaintext to read).
                    let old = b.v.len();
                    let room = b.v.capacity() - old;
                    let n = pending.min(room);
                    b.v.resize(old + n, 0);
                    let got = t.conn.reader().read(&mut b.v[old..])?;
                    b.v.truncate(old + got);
                    return Ok(got);
                }
                if t.eof {
                    return Ok(0);
                }
                // Post-handshake messages (tickets, key updates) may want a reply.
                let left = deadline.saturating_duration_since(Instant::now());
                t.flush(left.max(Duration::from_millis(1))).await?;
                if !t.read_tls(deadline).await? {
                    return Ok(0);
                }
            },
        }
    }

    /// Writes `buf[start..end]` fully within `limit`; hands the buffer back.
    pub async fn write_range(
        &mut self,
        buf: Vec<u8>,
        start: usize,
        end: usize,
        limit: Duration,
    ) -> (io::Result<()>, Vec<u8>) {
        match self {
            Stream::Plain(t) => tcp_write(t, buf, start, end, limit).await,
            Stream::Tls(t) => {
                if start >= end {
                    return (Ok(()), buf);
                }
                if let Err(e) = t.conn.writer().write_all(&buf[start..end]) {
                    return (Err(e), buf);
                }
                let res = t.flush(limit).await;
                (res, buf)
            }
        }
    }
}
