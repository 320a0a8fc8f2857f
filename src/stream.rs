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

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use monoio::time::{timeout, timeout_at, Instant};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

use crate::buffer::{self, InBuf};

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

/// Reads from `tcp` into `b`'s spare capacity before `deadline`.
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
    match timeout_at(deadline, tcp.read(v.slice_mut(len..cap))).await {
        Ok((res, slice)) => {
            b.v = slice.into_inner();
            res
        }
        // The buffer stays with the cancelled operation; callers close the
        // connection after a timeout.
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes `buf[start..end]` to `tcp` within `limit`.
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
    match timeout(limit, tcp.write_all(buf.slice(start..end))).await {
        Ok((res, slice)) => (res.map(|_| ()), slice.into_inner()),
        Err(_) => (Err(io::ErrorKind::TimedOut.into()), Vec::new()),
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
