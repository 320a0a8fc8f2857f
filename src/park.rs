//! Idle keep-alive client connections parked without a task.
//!
//! A connection that stays idle between requests for [`PARK_AFTER`] leaves
//! its task: the session ends, and the socket moves into this per-worker
//! table (a few dozen bytes each) and into a per-worker epoll set. One parker
//! task waits on that epoll set through the worker's ring; when a parked
//! client sends its next request (or closes), the parker takes it out and
//! starts a new session for it where the old one stopped. Deadlines of parked
//! connections are swept like the others. This is what nginx does with an
//! idle keep-alive connection (its buffers freed, only the connection struct
//! and an epoll registration left): an io_uring design otherwise keeps a task
//! and an in-flight poll per idle connection, about a kilobyte each.
//!
//! Only plain TCP connections park: a TLS connection's rustls state is most
//! of its idle cost and cannot move into a small slot. Connections that have
//! not sent a first request stay in their task too (their head deadline runs
//! from accept and is short). Parking costs a few syscalls, paid once per
//! idle period that is at least `PARK_AFTER` long, never per request on busy
//! connections.

// The one syscall wrapper here that needs `unsafe` has its SAFETY comment.
#![allow(unsafe_code)]

use std::cell::{Cell, RefCell};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

/// How long a connection waits idle in its task before it parks. Short, as
/// nginx frees an idle connection's buffers at once; long enough that a
/// client sending back-to-back requests (a pause of a round trip or a few
/// milliseconds) never pays the few syscalls of parking. Parking takes
/// effect at the next idle sweep, a quarter of this later at most.
pub const PARK_AFTER: Duration = Duration::from_millis(250);

/// Where a client connection stands between requests: what a session needs
/// to go on serving it.
#[derive(Clone, Copy, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Index of the listener that accepted it.
    pub listener: usize,
    /// Requests served on it so far.
    pub served: u64,
}

/// A parked connection.
struct Parked {
    fd: OwnedFd,
    info: ConnInfo,
    /// When the keep-alive timeout closes it.
    deadline: Instant,
}

/// A worker's parked connections.
pub struct ParkingLot {
    /// `None` when epoll could not be set up: parking is then off.
    epoll: Option<Epoll>,
    slots: RefCell<Vec<Option<Parked>>>,
    free: RefCell<Vec<usize>>,
    /// Set when nothing waits on the epoll set any more.
    off: Cell<bool>,
}

impl ParkingLot {
    /// A lot with its own epoll set; parking is off (with a warning) if the
    /// kernel refuses one.
    pub fn new() -> Self {
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(e) => Some(e),
            Err(e) => {
                log::warn!("cannot create an epoll set, idle connections will not park: {e}");
                None
            }
        };
        ParkingLot {
            epoll,
            slots: RefCell::default(),
            free: RefCell::default(),
            off: Cell::new(false),
        }
    }

    /// True when connections can park.
    pub fn enabled(&self) -> bool {
        self.epoll.is_some() && !self.off.get()
    }

    /// Stops parking; connections already parked close at the next sweep.
    pub fn disable(&self) {
        self.off.set(true);
        self.shorten(Instant::now());
    }

    /// Parked connections.
    pub fn len(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }

    /// True when nothing is parked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A duplicate of the epoll set's descriptor, for waiting on it.
    pub fn epoll_fd(&self) -> io::Result<OwnedFd> {
        match &self.epoll {
            Some(e) => e.0.try_clone(),
            None => Err(io::Error::other("parking is off")),
        }
    }

    /// Parks the connection on `fd` (the caller then drops its own stream).
    /// The socket is duplicated rather than taken from the stream because a
    /// cancelled poll may still hold the stream's descriptor for a moment.
    pub fn park(&self, fd: &impl AsRawFd, info: ConnInfo, deadline: Instant) -> io::Result<()> {
        let Some(epoll) = &self.epoll else {
            return Err(io::Error::other("parking is off"));
        };
        // SAFETY: `fd` is borrowed for this call, so its descriptor is open
        // until we return; the borrow is used only to duplicate it.
        let dup = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) }.try_clone_to_owned()?;
        let mut slots = self.slots.borrow_mut();
        let id = match self.free.borrow_mut().pop() {
            Some(id) => id,
            None => {
                slots.push(None);
                slots.len() - 1
            }
        };
        // Level-triggered: bytes that arrived while parking are reported at
        // once.
        let ev = EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, id as u64);
        if let Err(e) = epoll.add(&dup, ev) {
            self.free.borrow_mut().push(id);
            return Err(e.into());
        }
        slots[id] = Some(Parked {
            fd: dup,
            info,
            deadline,
        });
        Ok(())
    }

    /// Frees slot `id`, which held `p`, and unregisters `p`.
    fn forget(&self, id: usize, p: &Parked) {
        self.free.borrow_mut().push(id);
        if let Some(e) = &self.epoll {
            // Explicit: the registration would otherwise outlive this
            // descriptor if the socket is ever duplicated again.
            let _ = e.delete(&p.fd);
        }
    }

    fn take(&self, id: usize) -> Option<Parked> {
        let p = self.slots.borrow_mut().get_mut(id)?.take()?;
        self.forget(id, &p);
        Some(p)
    }

    /// Takes out the connections that became readable (or closed), without
    /// blocking. `events` is scratch space.
    pub fn ready(&self, events: &mut [EpollEvent], out: &mut Vec<(OwnedFd, ConnInfo)>) {
        let Some(epoll) = &self.epoll else { return };
        let n = match epoll.wait(events, EpollTimeout::ZERO) {
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => 0,
            Err(e) => {
                log::warn!("epoll_wait on parked connections failed: {e}");
                0
            }
        };
        for ev in &events[..n] {
            if let Some(p) = self.take(ev.data() as usize) {
                out.push((p.fd, p.info));
            }
        }
    }

    /// Closes parked connections whose deadline passed; returns how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let mut closed = 0;
        for (id, slot) in self.slots.borrow_mut().iter_mut().enumerate() {
            if let Some(p) = slot.take_if(|p| p.deadline <= now) {
                self.forget(id, &p);
                closed += 1;
                // Dropping `p` closes the connection.
            }
        }
        closed
    }

    /// Brings every deadline to `at` or earlier (drain).
    pub fn shorten(&self, at: Instant) {
        for p in self.slots.borrow_mut().iter_mut().flatten() {
            p.deadline = p.deadline.min(at);
        }
    }
}

impl Default for ParkingLot {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    fn info() -> ConnInfo {
        ConnInfo {
            peer: "127.0.0.1:1".parse().expect("addr"),
            listener: 0,
            served: 3,
        }
    }

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        (c, s)
    }

    #[test]
    fn readable_connection_comes_back_with_its_state() {
        let lot = ParkingLot::new();
        let (mut client, server) = pair();
        let far = Instant::now() + Duration::from_secs(60);
        lot.park(&server, info(), far).expect("park");
        drop(server);
        assert_eq!(lot.len(), 1);
        let mut events = vec![EpollEvent::empty(); 8];
        let mut out = Vec::new();
        lot.ready(&mut events, &mut out);
        assert!(out.is_empty(), "nothing sent yet");
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").expect("write");
        lot.ready(&mut events, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1.served, 3);
        assert!(lot.is_empty());
        // The descriptor that came back is the live connection.
        let mut back = TcpStream::from(out.pop().expect("conn").0);
        let mut b = [0u8; 64];
        let n = std::io::Read::read(&mut back, &mut b).expect("read");
        assert_eq!(&b[..n], b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn sweep_closes_expired_and_frees_slots() {
        let lot = ParkingLot::new();
        let (mut client, server) = pair();
        let now = Instant::now();
        lot.park(&server, info(), now + Duration::from_secs(60))
            .expect("park");
        drop(server);
        assert_eq!(lot.sweep(now), 0);
        lot.shorten(now);
        assert_eq!(lot.sweep(now), 1);
        assert!(lot.is_empty());
        // The client sees the close.
        let mut b = [0u8; 8];
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        assert_eq!(std::io::Read::read(&mut client, &mut b).expect("eof"), 0);
        // The slot is reused.
        let (_c2, s2) = pair();
        lot.park(&s2, info(), now).expect("park");
        assert_eq!(lot.slots.borrow().len(), 1);
    }
}
