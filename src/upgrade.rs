//! Zero-downtime upgrade: handing listening sockets to a new process.
//!
//! The protocol fixes Pingora's known defects while keeping its shape. The
//! new process (`lbd -u`) is the server: it binds `upgrade_sock` (a
//! `SOCK_SEQPACKET` Unix socket, so message boundaries survive) and waits, for
//! `upgrade_sock_connect_accept_max_retries` seconds, for the old process. The old process, on SIGQUIT, connects
//! (retrying for a bounded time, so either start order works) and sends every
//! listening socket it has: all workers' SO_REUSEPORT sockets for every
//! address. Each message carries at most [`MAX_FDS_PER_MSG`] descriptors with
//! SCM_RIGHTS and a framed, size-checked payload naming each socket's address:
//!
//! ```text
//! "LBDU" | version u8 (1) | total u32 | first u32 | n u16 | n × (len u16, address bytes)
//! ```
//!
//! The receiver checks magic, version, sizes, that the payload names exactly
//! as many addresses as descriptors arrived, and that nothing was truncated;
//! received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`). When it has
//! all of them it answers `"LBDA" | total u32`. Only after that
//! acknowledgement does the old process stop accepting and drain; without it
//! the old process logs an error and keeps serving.

// The one syscall wrapper here that needs `unsafe` has its SAFETY comment.
#![allow(unsafe_code)]

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    accept, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};

/// Most descriptors in one message (the kernel's SCM_MAX_FD is 253).
pub const MAX_FDS_PER_MSG: usize = 200;
/// Largest payload accepted.
const MAX_PAYLOAD: usize = 64 * 1024;
/// Most sockets one hand-over may carry.
const MAX_TOTAL: u32 = 65_536;
const MAGIC: &[u8; 4] = b"LBDU";
const ACK: &[u8; 4] = b"LBDA";
const VERSION: u8 = 1;

/// Why a hand-over failed.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// A socket call failed.
    #[error("{what}: {source}")]
    Os {
        /// The step.
        what: &'static str,
        /// The error.
        source: nix::Error,
    },
    /// The peer did not show up in time.
    #[error("no peer on {0} within {1:?}")]
    Timeout(String, Duration),
    /// The peer sent something that is not a valid hand-over message.
    #[error("invalid hand-over message: {0}")]
    Protocol(&'static str),
}

fn os(what: &'static str) -> impl FnOnce(nix::Error) -> UpgradeError {
    move |source| UpgradeError::Os { what, source }
}

/// Encodes one message's payload.
fn encode(total: u32, first: u32, addrs: &[SocketAddr]) -> Vec<u8> {
    let mut p = Vec::with_capacity(16 + addrs.len() * 24);
    p.extend_from_slice(MAGIC);
    p.push(VERSION);
    p.extend_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&first.to_be_bytes());
    p.extend_from_slice(&(addrs.len() as u16).to_be_bytes());
    for a in addrs {
        let s = a.to_string();
        p.extend_from_slice(&(s.len() as u16).to_be_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    p
}

/// One decoded message.
#[derive(Debug, PartialEq, Eq)]
struct Header {
    total: u32,
    first: u32,
    addrs: Vec<SocketAddr>,
}

fn decode(p: &[u8]) -> Result<Header, UpgradeError> {
    let err = UpgradeError::Protocol;
    if p.len() < 15 || &p[..4] != MAGIC {
        return Err(err("bad magic or short header"));
    }
    if p[4] != VERSION {
        return Err(err("unsupported version"));
    }
    let u32_at = |i: usize| u32::from_be_bytes([p[i], p[i + 1], p[i + 2], p[i + 3]]);
    let total = u32_at(5);
    let first = u32_at(9);
    let n = u16::from_be_bytes([p[13], p[14]]) as usize;
    if total == 0 || total > MAX_TOTAL || n == 0 || n > MAX_FDS_PER_MSG {
        return Err(err("count out of range"));
    }
    if u64::from(first) + n as u64 > u64::from(total) {
        return Err(err("message exceeds announced total"));
    }
    let mut addrs = Vec::with_capacity(n);
    let mut i = 15;
    for _ in 0..n {
        if i + 2 > p.len() {
            return Err(err("truncated address length"));
        }
        let len = u16::from_be_bytes([p[i], p[i + 1]]) as usize;
        i += 2;
        if len == 0 || len > 64 || i + len > p.len() {
            return Err(err("address length out of range"));
        }
        let s = std::str::from_utf8(&p[i..i + len]).map_err(|_| err("address not UTF-8"))?;
        addrs.push(s.parse().map_err(|_| err("address does not parse"))?);
        i += len;
    }
    if i != p.len() {
        return Err(err("trailing bytes"));
    }
    Ok(Header {
        total,
        first,
        addrs,
    })
}

/// Old process: sends `sockets` to the new process listening on `path`.
/// Returns once the new process acknowledged all of them, with the new
/// process's pid when the kernel tells it (SO_PEERCRED).
pub fn send(
    path: &Path,
    sockets: &[(SocketAddr, RawFd)],
    wait: Duration,
) -> Result<Option<u32>, UpgradeError> {
    if sockets.is_empty() {
        return Err(UpgradeError::Protocol("no sockets to send"));
    }
    let addr = UnixAddr::new(path).map_err(os("upgrade_sock path"))?;
    let deadline = Instant::now() + wait;
    let sock = loop {
        let s = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(os("socket"))?;
        match connect(s.as_raw_fd(), &addr) {
            Ok(()) => break s,
            Err(e) if Instant::now() < deadline => {
                log::debug!(
                    "upgrade: connect to {} failed ({e}); retrying",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(_) => {
                return Err(UpgradeError::Timeout(path.display().to_string(), wait));
            }
        }
    };
    set_timeouts(&sock, wait)?;
    let total = sockets.len() as u32;
    for (chunk_index, chunk) in sockets.chunks(MAX_FDS_PER_MSG).enumerate() {
        let first = (chunk_index * MAX_FDS_PER_MSG) as u32;
        let addrs: Vec<SocketAddr> = chunk.iter().map(|(a, _)| *a).collect();
        let fds: Vec<RawFd> = chunk.iter().map(|(_, f)| *f).collect();
        let payload = encode(total, first, &addrs);
        let iov = [IoSlice::new(&payload)];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), None)
            .map_err(os("sendmsg"))?;
    }
    let mut ack = [0u8; 8];
    let mut iov = [IoSliceMut::new(&mut ack)];
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty())
        .map_err(os("waiting for the new process's acknowledgement"))?;
    let n = msg.bytes;
    if n != 8 || &ack[..4] != ACK || u32::from_be_bytes([ack[4], ack[5], ack[6], ack[7]]) != total {
        return Err(UpgradeError::Protocol("bad acknowledgement"));
    }
    // Who took the sockets (it bound `upgrade_sock` after any fork), for
    // systemd's MAINPID.
    let peer = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::PeerCredentials);
    Ok(peer.ok().and_then(|c| u32::try_from(c.pid()).ok()))
}

fn set_timeouts(sock: &OwnedFd, t: Duration) -> Result<(), UpgradeError> {
    use nix::sys::socket::{setsockopt, sockopt};
    use nix::sys::time::TimeVal;
    let tv = TimeVal::new(t.as_secs() as i64, 0);
    setsockopt(sock, sockopt::ReceiveTimeout, &tv).map_err(os("SO_RCVTIMEO"))?;
    setsockopt(sock, sockopt::SendTimeout, &tv).map_err(os("SO_SNDTIMEO"))?;
    Ok(())
}

/// New process: waits on `path` for the old process and receives its
/// listening sockets, in the order sent.
pub fn receive(path: &Path, wait: Duration) -> Result<Vec<(SocketAddr, OwnedFd)>, UpgradeError> {
    let addr = UnixAddr::new(path).map_err(os("upgrade_sock path"))?;
    let _ = std::fs::remove_file(path);
    let listener = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )
    .map_err(os("socket"))?;
    bind(listener.as_raw_fd(), &addr).map_err(os("bind upgrade_sock"))?;
    let _cleanup = RemoveOnDrop(path);
    listen(&listener, Backlog::new(8).map_err(os("backlog"))?).map_err(os("listen"))?;
    let deadline = Instant::now() + wait;
    let conn = loop {
        match accept(listener.as_raw_fd()) {
            Ok(fd) => break own(fd),
            Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(nix::errno::Errno::EAGAIN) => {
                return Err(UpgradeError::Timeout(path.display().to_string(), wait));
            }
            Err(e) => return Err(os("accept")(e)),
        }
    };
    // The accepted socket inherits O_NONBLOCK on Linux? No, but be explicit.
    nix::fcntl::fcntl(
        conn.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
    )
    .map_err(os("fcntl"))?;
    set_timeouts(&conn, wait)?;
    let mut out: Vec<(SocketAddr, OwnedFd)> = Vec::new();
    let mut total: Option<u32> = None;
    loop {
        let mut buf = vec![0u8; MAX_PAYLOAD];
        let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MSG]);
        let (bytes, flags, fds) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<()>(
                conn.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg_space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(os("recvmsg"))?;
            let mut fds: Vec<OwnedFd> = Vec::new();
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(raw) = c {
                        fds.extend(raw.into_iter().map(own));
                    }
                }
            }
            (msg.bytes, msg.flags, fds)
        };
        if bytes == 0 {
            return Err(UpgradeError::Protocol(
                "old process closed before sending everything",
            ));
        }
        if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
            return Err(UpgradeError::Protocol("message or descriptors truncated"));
        }
        let h = decode(&buf[..bytes])?;
        if h.addrs.len() != fds.len() {
            return Err(UpgradeError::Protocol(
                "address count differs from descriptor count",
            ));
        }
        match total {
            None => total = Some(h.total),
            Some(t) if t != h.total => return Err(UpgradeError::Protocol("total changed")),
            Some(_) => {}
        }
        if h.first as usize != out.len() {
            return Err(UpgradeError::Protocol("messages out of order"));
        }
        out.extend(h.addrs.into_iter().zip(fds));
        if Some(out.len() as u32) == total {
            break;
        }
    }
    let mut ack = Vec::with_capacity(8);
    ack.extend_from_slice(ACK);
    ack.extend_from_slice(&(out.len() as u32).to_be_bytes());
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(&ack)],
        &[],
        MsgFlags::empty(),
        None,
    )
    .map_err(os("sending acknowledgement"))?;
    Ok(out)
}

/// Takes ownership of a descriptor the kernel just gave us.
fn own(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was just returned by accept(2) or received with
    // SCM_RIGHTS by recvmsg(2): it is open and owned by nobody else in this
    // process, so exactly one OwnedFd will close it.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:6188".parse().unwrap(),
            "[::1]:443".parse().unwrap(),
        ];
        let p = encode(5, 3, &addrs);
        assert_eq!(
            decode(&p).unwrap(),
            Header {
                total: 5,
                first: 3,
                addrs
            }
        );
    }

    #[test]
    fn payload_checks() {
        let a: Vec<SocketAddr> = vec!["127.0.0.1:1".parse().unwrap()];
        let good = encode(1, 0, &a);
        assert!(decode(&good[..good.len() - 1]).is_err(), "truncated");
        let mut extra = good.clone();
        extra.push(0);
        assert!(decode(&extra).is_err(), "trailing");
        let mut bad = good.clone();
        bad[0] = b'X';
        assert!(decode(&bad).is_err(), "magic");
        assert!(decode(&encode(1, 1, &a)).is_err(), "beyond total");
        assert!(decode(&encode(0, 0, &a)).is_err(), "zero total");
    }

    #[test]
    fn hand_over_real_sockets() {
        let dir = std::env::temp_dir().join(format!("lbd-upgrade-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("u.sock");
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a1 = l1.local_addr().unwrap();
        let a2 = l2.local_addr().unwrap();
        let p2 = path.clone();
        let rx = std::thread::spawn(move || receive(&p2, Duration::from_secs(5)));
        let sent = send(
            &path,
            &[(a1, l1.as_raw_fd()), (a2, l2.as_raw_fd())],
            Duration::from_secs(5),
        );
        // The peer is this very process (the receiver is a thread of it).
        assert_eq!(sent.expect("sent"), Some(std::process::id()));
        let got = rx.join().unwrap().expect("received");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[1].0), (a1, a2));
        // The received descriptor is the same listening socket.
        let l = std::net::TcpListener::from(got.into_iter().next().unwrap().1);
        assert_eq!(l.local_addr().unwrap(), a1);
        let _c = std::net::TcpStream::connect(a1).unwrap();
        assert!(l.accept().is_ok());
        assert!(!path.exists(), "socket file removed");
    }
}
