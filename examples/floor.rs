//! `floor`: the cheapest possible forwarder on this box, for `bench/run.sh`.
//!
//! `floor --listen 127.0.0.1:6191 --backend 127.0.0.1:8081 --backend 127.0.0.1:8082`
//!
//! A raw io_uring byte forwarder on the `io-uring` crate, no runtime, no HTTP:
//! one thread, one ring (COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN, each
//! dropped if the kernel refuses it), a multishot accept, and every accepted
//! client paired 1:1 with a new backend connection (round robin). Both sockets
//! of a pair get a multishot recv into one provided buffer ring, and each
//! received buffer is sent to the other socket, then handed back to the ring.
//! One send in flight per direction keeps the byte order. An idle connection
//! holds no buffer. Every proxy in the bench does at least this much kernel
//! work per request, so its CPU time per request is the floor the others are
//! compared with (notes §11: about 6.7 µs on the 2-vCPU VM).

use std::collections::VecDeque;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

const BUF_SIZE: usize = 16 * 1024;
const BUF_COUNT: u16 = 512; // power of two
const BGID: u16 = 0;
const ENOBUFS: i32 = 105;

const OP_ACCEPT: u64 = 0;
const OP_RECV: u64 = 1;
const OP_SEND: u64 = 2;

fn ud(op: u64, slot: usize, dir: usize) -> u64 {
    ((slot as u64) << 8) | (op << 1) | dir as u64
}

/// The provided buffer ring: `BUF_COUNT` entries shared with the kernel, plus
/// the buffers they point to.
struct BufRing {
    entries: *mut types::BufRingEntry,
    bufs: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    fn new(ring: &IoUring) -> io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(
            BUF_COUNT as usize * std::mem::size_of::<types::BufRingEntry>(),
            4096,
        )
        .map_err(io::Error::other)?;
        // SAFETY: the layout has a non-zero size; zeroed memory is a valid
        // (empty) ring, and we check the pointer for null before use.
        let entries = unsafe { std::alloc::alloc_zeroed(layout) } as *mut types::BufRingEntry;
        if entries.is_null() {
            return Err(io::Error::other("out of memory"));
        }
        let mut br = BufRing {
            entries,
            bufs: vec![0u8; BUF_SIZE * BUF_COUNT as usize].into_boxed_slice(),
            tail: 0,
        };
        for bid in 0..BUF_COUNT {
            br.give_back(bid);
        }
        br.publish();
        // SAFETY: `entries` is page aligned, holds BUF_COUNT entries and lives
        // (leaked with the BufRing, which lives for the whole process) as long
        // as the ring.
        unsafe {
            ring.submitter()
                .register_buf_ring(entries as u64, BUF_COUNT, BGID)?;
        }
        Ok(br)
    }

    fn buf(&self, bid: u16, off: usize, len: usize) -> *const u8 {
        self.bufs[bid as usize * BUF_SIZE + off..][..len].as_ptr()
    }

    /// Queues buffer `bid` for the kernel (visible after `publish`).
    fn give_back(&mut self, bid: u16) {
        let idx = (self.tail & (BUF_COUNT - 1)) as usize;
        let addr = self.bufs[bid as usize * BUF_SIZE..].as_ptr() as u64;
        // SAFETY: idx < BUF_COUNT, so the entry is inside the allocation; the
        // kernel only reads entries between its head and the published tail,
        // and this one is past the published tail.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(addr);
        e.set_len(BUF_SIZE as u32);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: `entries` is the ring base; its tail field is a u16 the
        // kernel reads, so it is written with a release store through an atomic.
        let tail = unsafe { &*(types::BufRingEntry::tail(self.entries) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

#[derive(Default)]
struct Dir {
    /// Received, not yet sent: (buffer id, offset, length).
    queue: VecDeque<(u16, usize, usize)>,
    sending: bool,
    recv_armed: bool,
    /// The read side hit EOF: once `queue` drains, half-close the other socket.
    eof: bool,
}

struct Pair {
    socks: [TcpStream; 2], // 0 = client, 1 = backend; dir d reads socks[d], writes socks[1-d]
    dirs: [Dir; 2],
    inflight: usize,
    closing: bool,
}

struct Floor {
    ring: IoUring,
    bufs: BufRing,
    pairs: Vec<Option<Pair>>,
    free: Vec<usize>,
    starved: Vec<(usize, usize)>,
    backends: Vec<SocketAddr>,
    next_backend: usize,
}

impl Floor {
    fn push(&mut self, e: squeue::Entry) {
        loop {
            // SAFETY: every entry points at memory that outlives the operation:
            // buffers inside `bufs` (never freed) and fds owned by a Pair that
            // is freed only when its in-flight count reaches zero.
            if unsafe { self.ring.submission().push(&e) }.is_ok() {
                return;
            }
            let _ = self.ring.submit();
        }
    }

    fn arm_recv(&mut self, slot: usize, dir: usize) {
        let Some(p) = self.pairs[slot].as_mut() else {
            return;
        };
        let fd = p.socks[dir].as_raw_fd();
        p.dirs[dir].recv_armed = true;
        p.inflight += 1;
        let e = opcode::RecvMulti::new(types::Fd(fd), BGID)
            .build()
            .user_data(ud(OP_RECV, slot, dir));
        self.push(e);
    }

    fn send_next(&mut self, slot: usize, dir: usize) {
        let Some(p) = self.pairs[slot].as_mut() else {
            return;
        };
        if p.dirs[dir].sending || p.closing {
            return;
        }
        let Some(&(bid, off, len)) = p.dirs[dir].queue.front() else {
            return;
        };
        p.dirs[dir].sending = true;
        p.inflight += 1;
        let fd: RawFd = p.socks[1 - dir].as_raw_fd();
        let e = opcode::Send::new(types::Fd(fd), self.bufs.buf(bid, off, len), len as u32)
            .flags(libc_msg_nosignal())
            .build()
            .user_data(ud(OP_SEND, slot, dir));
        self.push(e);
    }

    fn start_close(&mut self, slot: usize) {
        if let Some(p) = self.pairs[slot].as_mut() {
            if !p.closing {
                p.closing = true;
                // Ends the pending multishot recvs (they complete with 0).
                let _ = p.socks[0].shutdown(Shutdown::Both);
                let _ = p.socks[1].shutdown(Shutdown::Both);
            }
        }
        self.maybe_free(slot);
    }

    fn maybe_free(&mut self, slot: usize) {
        let done = matches!(&self.pairs[slot], Some(p) if p.closing && p.inflight == 0);
        if done {
            if let Some(p) = self.pairs[slot].take() {
                for d in &p.dirs {
                    for &(bid, _, _) in &d.queue {
                        self.bufs.give_back(bid);
                    }
                }
            }
            self.free.push(slot);
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32, listen_fd: RawFd) {
        if !cqueue::more(flags) {
            let e = opcode::AcceptMulti::new(types::Fd(listen_fd))
                .build()
                .user_data(ud(OP_ACCEPT, 0, 0));
            self.push(e);
        }
        if res < 0 {
            return;
        }
        // SAFETY: a successful accept returns a new socket fd that nothing else owns.
        let client = unsafe { TcpStream::from_raw_fd(res) };
        let addr = self.backends[self.next_backend % self.backends.len()];
        self.next_backend = self.next_backend.wrapping_add(1);
        // Blocking connect: on loopback it completes within the call.
        let Ok(backend) = TcpStream::connect(addr) else {
            return;
        };
        let _ = client.set_nodelay(true);
        let _ = backend.set_nodelay(true);
        let pair = Pair {
            socks: [client, backend],
            dirs: Default::default(),
            inflight: 0,
            closing: false,
        };
        let slot = match self.free.pop() {
            Some(s) => {
                self.pairs[s] = Some(pair);
                s
            }
            None => {
                self.pairs.push(Some(pair));
                self.pairs.len() - 1
            }
        };
        self.arm_recv(slot, 0);
        self.arm_recv(slot, 1);
    }

    fn on_recv(&mut self, slot: usize, dir: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        let Some(p) = self.pairs[slot].as_mut() else {
            return;
        };
        if !more {
            p.inflight -= 1;
            p.dirs[dir].recv_armed = false;
        }
        if let Some(bid) = cqueue::buffer_select(flags) {
            if res > 0 && !p.closing {
                p.dirs[dir].queue.push_back((bid, 0, res as usize));
            } else {
                self.bufs.give_back(bid);
            }
        }
        let closing = p.closing;
        if res > 0 {
            if !more && !closing {
                self.arm_recv(slot, dir);
            }
            self.send_next(slot, dir);
        } else if res == -ENOBUFS && !closing {
            self.starved.push((slot, dir)); // re-armed when buffers come back
        } else if res == 0 && !closing {
            p.dirs[dir].eof = true;
            self.finish_dir(slot, dir);
        } else {
            self.start_close(slot);
        }
        self.maybe_free(slot);
    }

    /// After EOF on `dir`'s read side and its last send: pass the FIN on
    /// (half-close), and close the pair once both directions are done.
    fn finish_dir(&mut self, slot: usize, dir: usize) {
        let Some(p) = self.pairs[slot].as_mut() else {
            return;
        };
        let d = &p.dirs[dir];
        if !d.eof || d.sending || !d.queue.is_empty() {
            return;
        }
        let _ = p.socks[1 - dir].shutdown(Shutdown::Write);
        let other = &p.dirs[1 - dir];
        if other.eof && !other.sending && other.queue.is_empty() {
            self.start_close(slot);
        }
    }

    fn on_send(&mut self, slot: usize, dir: usize, res: i32) {
        let Some(p) = self.pairs[slot].as_mut() else {
            return;
        };
        p.inflight -= 1;
        p.dirs[dir].sending = false;
        if res <= 0 {
            return self.start_close(slot);
        }
        let front = p.dirs[dir]
            .queue
            .front_mut()
            .expect("a send has a queued buffer");
        front.1 += res as usize;
        front.2 -= res as usize;
        if front.2 == 0 {
            let bid = front.0;
            p.dirs[dir].queue.pop_front();
            self.bufs.give_back(bid);
        }
        self.send_next(slot, dir);
        self.finish_dir(slot, dir);
        self.maybe_free(slot);
    }

    fn run(&mut self, listener: &TcpListener) -> io::Result<()> {
        let lfd = listener.as_raw_fd();
        let e = opcode::AcceptMulti::new(types::Fd(lfd))
            .build()
            .user_data(ud(OP_ACCEPT, 0, 0));
        self.push(e);
        let mut cqes: Vec<(u64, i32, u32)> = Vec::with_capacity(1024);
        loop {
            self.bufs.publish();
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(4) || e.raw_os_error() == Some(16) => {}
                Err(e) => return Err(e),
            }
            cqes.clear();
            cqes.extend(
                self.ring
                    .completion()
                    .map(|c| (c.user_data(), c.result(), c.flags())),
            );
            for &(u, res, flags) in &cqes {
                let (slot, op, dir) = ((u >> 8) as usize, (u >> 1) & 0x7f, (u & 1) as usize);
                match op {
                    OP_ACCEPT => self.on_accept(res, flags, lfd),
                    OP_RECV => self.on_recv(slot, dir, res, flags),
                    _ => self.on_send(slot, dir, res),
                }
            }
            for (slot, dir) in std::mem::take(&mut self.starved) {
                if matches!(&self.pairs[slot], Some(p) if !p.closing && !p.dirs[dir].recv_armed) {
                    self.arm_recv(slot, dir);
                }
            }
        }
    }
}

fn libc_msg_nosignal() -> i32 {
    0x4000 // MSG_NOSIGNAL: a reset peer gives EPIPE, not SIGPIPE
}

fn build_ring() -> io::Result<IoUring> {
    // Best flags first, then drop them one by one if the kernel refuses.
    for level in 0..4 {
        let mut b = IoUring::builder();
        if level < 3 {
            b.setup_coop_taskrun();
        }
        if level < 2 {
            b.setup_single_issuer();
        }
        if level < 1 {
            b.setup_defer_taskrun();
        }
        match b.build(4096) {
            Ok(r) => {
                if level > 0 {
                    eprintln!("floor: ring built at fallback level {level}");
                }
                return Ok(r);
            }
            Err(e) if level == 3 => return Err(e),
            Err(_) => {}
        }
    }
    unreachable!()
}

fn main() -> io::Result<()> {
    let mut listen: SocketAddr = "127.0.0.1:6191".parse().expect("valid default");
    let mut backends = Vec::new();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it.next().unwrap_or_default();
        let addr = v
            .parse()
            .map_err(|e| io::Error::other(format!("{a} {v}: {e}")))?;
        match a.as_str() {
            "--listen" => listen = addr,
            "--backend" => backends.push(addr),
            _ => return Err(io::Error::other(format!("unknown argument {a}"))),
        }
    }
    if backends.is_empty() {
        return Err(io::Error::other(
            "usage: floor --listen ADDR --backend ADDR [--backend ADDR]...",
        ));
    }
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    sock.bind(&listen.into())?;
    sock.listen(4096)?;
    let listener: TcpListener = sock.into();
    let ring = build_ring()?;
    let bufs = BufRing::new(&ring)?;
    eprintln!("floor listening on {listen}, backends {backends:?}");
    let mut f = Floor {
        ring,
        bufs,
        pairs: Vec::new(),
        free: Vec::new(),
        starved: Vec::new(),
        backends,
        next_backend: 0,
    };
    f.run(&listener)
}
