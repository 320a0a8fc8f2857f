//! Zero-downtime upgrade: handing listening sockets, and the running
//! process's state, to a new process.
//!
//! The protocol fixes Pingora's known defects while keeping its shape. The
//! new process (`lbd -u`) is the server: it binds `upgrade_sock` (a
//! `SOCK_SEQPACKET` Unix socket, so message boundaries survive) and waits, for
//! `upgrade_sock_connect_accept_max_retries` seconds, for the old process. The old process, on SIGQUIT, connects
//! (retrying for a bounded time, so either start order works) and sends every
//! listening socket it has: all workers' SO_REUSEPORT sockets for every
//! address. Each message carries at most [`MAX_FDS_PER_MSG`] descriptors with
//! SCM_RIGHTS and a framed, size-checked payload naming each socket's address.
//! After the last of them comes the state, an opaque blob (the admin API's
//! changes, as JSON) in one or more chunks of at most 64 KiB, the last one
//! marked; an empty state is one empty last chunk. Then the receiver acks:
//!
//! ```text
//! sockets  "LBDU" | version u8 (2) | total u32 | first u32 | n u16 | n × (len u16, address bytes)
//! state    "LBDS" | more u8 (1: another chunk follows, 0: the last) | bytes
//! ack      "LBDA" | total u32
//! ```
//!
//! The receiver checks magic, version, sizes, that the payload names exactly
//! as many addresses as descriptors arrived, and that nothing was truncated;
//! received descriptors are close-on-exec (`MSG_CMSG_CLOEXEC`). It takes
//! socket messages of version 1 (an older lbd: no state follows) or 2 (then
//! state chunks until the last, [`MAX_STATE`] bytes at most, with no
//! descriptors). When it has everything it answers the ack. Only after that
//! acknowledgement does the old process stop accepting and drain; without it
//! (a peer closing early, or an older `lbd -u` refusing version 2) the old
//! process logs an error and keeps serving.

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
/// Most state bytes one hand-over may carry.
pub const MAX_STATE: usize = 16 << 20;
const MAGIC: &[u8; 4] = b"LBDU";
const STATE_MAGIC: &[u8; 4] = b"LBDS";
const ACK: &[u8; 4] = b"LBDA";
/// Version 2: a state follows the sockets.
const VERSION: u8 = 2;
/// State bytes in one chunk: a payload less its 5-byte header.
const STATE_CHUNK: usize = MAX_PAYLOAD - 5;

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
    /// 1 (no state follows) or 2.
    version: u8,
    total: u32,
    first: u32,
    addrs: Vec<SocketAddr>,
}

fn decode(p: &[u8]) -> Result<Header, UpgradeError> {
    let err = UpgradeError::Protocol;
    if p.len() < 15 || &p[..4] != MAGIC {
        return Err(err("bad magic or short header"));
    }
    let version = p[4];
    if !(1..=VERSION).contains(&version) {
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
        version,
        total,
        first,
        addrs,
    })
}

/// Encodes one state chunk.
fn encode_state(more: bool, bytes: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + bytes.len());
    p.extend_from_slice(STATE_MAGIC);
    p.push(u8::from(more));
    p.extend_from_slice(bytes);
    p
}

/// Decodes one state chunk: whether another follows, and its bytes.
fn decode_state(p: &[u8]) -> Result<(bool, &[u8]), UpgradeError> {
    if p.len() < 5 || &p[..4] != STATE_MAGIC {
        return Err(UpgradeError::Protocol(
            "bad state magic or short state header",
        ));
    }
    match p[4] {
        0 => Ok((false, &p[5..])),
        1 => Ok((true, &p[5..])),
        _ => Err(UpgradeError::Protocol(
            "state `more` flag is neither 0 nor 1",
        )),
    }
}

/// Old process: sends `sockets`, then `state`, to the new process listening
/// on `path`. Returns once the new process acknowledged all of them, with
/// the new process's pid when the kernel tells it (SO_PEERCRED).
pub fn send(
    path: &Path,
    sockets: &[(SocketAddr, RawFd)],
    state: &[u8],
    wait: Duration,
) -> Result<Option<u32>, UpgradeError> {
    if sockets.is_empty() {
        return Err(UpgradeError::Protocol("no sockets to send"));
    }
    if state.len() > MAX_STATE {
        return Err(UpgradeError::Protocol("state larger than 16 MiB"));
    }
    let sock = connect_to(path, wait)?;
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
    send_state(&sock, state)?;
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

/// Connects to the new process on `path`, retrying until `wait` passed.
fn connect_to(path: &Path, wait: Duration) -> Result<OwnedFd, UpgradeError> {
    let addr = UnixAddr::new(path).map_err(os("upgrade_sock path"))?;
    let deadline = Instant::now() + wait;
    loop {
        let s = socket(
            AddressFamily::Unix,
            SockType::SeqPacket,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(os("socket"))?;
        match connect(s.as_raw_fd(), &addr) {
            Ok(()) => return Ok(s),
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
    }
}

/// Sends `state` in chunks, the last one marked (one empty chunk if empty).
fn send_state(sock: &OwnedFd, state: &[u8]) -> Result<(), UpgradeError> {
    let mut rest = state;
    loop {
        let (bytes, tail) = rest.split_at(rest.len().min(STATE_CHUNK));
        let payload = encode_state(!tail.is_empty(), bytes);
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&payload)],
            &[],
            MsgFlags::empty(),
            None,
        )
        .map_err(os("sending the state"))?;
        if tail.is_empty() {
            return Ok(());
        }
        rest = tail;
    }
}

fn set_timeouts(sock: &OwnedFd, t: Duration) -> Result<(), UpgradeError> {
    use nix::sys::socket::{setsockopt, sockopt};
    use nix::sys::time::TimeVal;
    let tv = TimeVal::new(t.as_secs() as i64, 0);
    setsockopt(sock, sockopt::ReceiveTimeout, &tv).map_err(os("SO_RCVTIMEO"))?;
    setsockopt(sock, sockopt::SendTimeout, &tv).map_err(os("SO_SNDTIMEO"))?;
    Ok(())
}

/// What a hand-over delivers: the listening sockets in the order sent, and
/// the old process's state (`None` from a version-1 sender, which has none).
pub type Received = (Vec<(SocketAddr, OwnedFd)>, Option<Vec<u8>>);

/// New process: waits on `path` for the old process and receives its
/// listening sockets, in the order sent, and its state.
pub fn receive(path: &Path, wait: Duration) -> Result<Received, UpgradeError> {
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
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let (sockets, version) = receive_sockets(&conn, &mut buf)?;
    let state = if version >= 2 {
        Some(receive_state(&conn, &mut buf)?)
    } else {
        None
    };
    let mut ack = Vec::with_capacity(8);
    ack.extend_from_slice(ACK);
    ack.extend_from_slice(&(sockets.len() as u32).to_be_bytes());
    sendmsg::<()>(
        conn.as_raw_fd(),
        &[IoSlice::new(&ack)],
        &[],
        MsgFlags::empty(),
        None,
    )
    .map_err(os("sending acknowledgement"))?;
    Ok((sockets, state))
}

/// One message into `buf`: its length and the descriptors that came with
/// it. A close, a truncated message or truncated descriptors are errors.
fn recv_one(
    conn: &OwnedFd,
    buf: &mut [u8],
    closed: &'static str,
) -> Result<(usize, Vec<OwnedFd>), UpgradeError> {
    let mut cmsg_space = nix::cmsg_space!([RawFd; MAX_FDS_PER_MSG]);
    let mut iov = [IoSliceMut::new(buf)];
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
    if msg.bytes == 0 {
        return Err(UpgradeError::Protocol(closed));
    }
    if msg
        .flags
        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
    {
        return Err(UpgradeError::Protocol("message or descriptors truncated"));
    }
    Ok((msg.bytes, fds))
}

/// The socket messages, in order, and their version.
fn receive_sockets(
    conn: &OwnedFd,
    buf: &mut [u8],
) -> Result<(Vec<(SocketAddr, OwnedFd)>, u8), UpgradeError> {
    let mut out: Vec<(SocketAddr, OwnedFd)> = Vec::new();
    let mut first_header: Option<(u32, u8)> = None;
    loop {
        let (bytes, fds) = recv_one(conn, buf, "old process closed before sending everything")?;
        let h = decode(&buf[..bytes])?;
        if h.addrs.len() != fds.len() {
            return Err(UpgradeError::Protocol(
                "address count differs from descriptor count",
            ));
        }
        let (total, version) = *first_header.get_or_insert((h.total, h.version));
        if h.total != total {
            return Err(UpgradeError::Protocol("total changed"));
        }
        if h.version != version {
            return Err(UpgradeError::Protocol("version changed"));
        }
        if h.first as usize != out.len() {
            return Err(UpgradeError::Protocol("messages out of order"));
        }
        out.extend(h.addrs.into_iter().zip(fds));
        if out.len() as u32 == total {
            return Ok((out, version));
        }
    }
}

/// The state chunks until the last, [`MAX_STATE`] bytes at most.
fn receive_state(conn: &OwnedFd, buf: &mut [u8]) -> Result<Vec<u8>, UpgradeError> {
    let mut state = Vec::new();
    loop {
        let (bytes, fds) = recv_one(conn, buf, "old process closed inside its state")?;
        if !fds.is_empty() {
            return Err(UpgradeError::Protocol("descriptors with the state"));
        }
        let (more, chunk) = decode_state(&buf[..bytes])?;
        if state.len() + chunk.len() > MAX_STATE {
            return Err(UpgradeError::Protocol("state larger than 16 MiB"));
        }
        state.extend_from_slice(chunk);
        if !more {
            return Ok(state);
        }
    }
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
                version: 2,
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
        for (version, ok) in [(0, false), (1, true), (2, true), (3, false)] {
            let mut p = good.clone();
            p[4] = version;
            assert_eq!(decode(&p).is_ok(), ok, "version {version}");
        }
    }

    #[test]
    fn state_chunk_checks() {
        assert_eq!(
            decode_state(&encode_state(true, b"ab")).unwrap(),
            (true, &b"ab"[..])
        );
        assert_eq!(
            decode_state(&encode_state(false, b"")).unwrap(),
            (false, &b""[..])
        );
        assert!(decode_state(b"LBDS").is_err(), "short");
        assert!(decode_state(b"LBDU\0").is_err(), "magic");
        assert!(decode_state(b"LBDS\x02x").is_err(), "flag");
    }

    fn temp_sock(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("lbd-upgrade-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir.join(format!("{tag}.sock"))
    }

    /// A receiver on `path` in a thread.
    fn receiver(path: &Path) -> std::thread::JoinHandle<Result<Received, UpgradeError>> {
        let path = path.to_owned();
        std::thread::spawn(move || receive(&path, Duration::from_secs(5)))
    }

    /// `state` of `len` bytes that differ from chunk to chunk.
    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn hand_over_real_sockets_and_a_multi_chunk_state() {
        let path = temp_sock("real");
        let l1 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a1 = l1.local_addr().unwrap();
        let a2 = l2.local_addr().unwrap();
        let rx = receiver(&path);
        // Four chunks, the last one short.
        let state = pattern(3 * STATE_CHUNK + 7);
        let sent = send(
            &path,
            &[(a1, l1.as_raw_fd()), (a2, l2.as_raw_fd())],
            &state,
            Duration::from_secs(5),
        );
        // The peer is this very process (the receiver is a thread of it).
        assert_eq!(sent.expect("sent"), Some(std::process::id()));
        let (got, got_state) = rx.join().unwrap().expect("received");
        assert_eq!(got_state.as_deref(), Some(&state[..]));
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].0, got[1].0), (a1, a2));
        // The received descriptor is the same listening socket.
        let l = std::net::TcpListener::from(got.into_iter().next().unwrap().1);
        assert_eq!(l.local_addr().unwrap(), a1);
        let _c = std::net::TcpStream::connect(a1).unwrap();
        assert!(l.accept().is_ok());
        assert!(!path.exists(), "socket file removed");
    }

    #[test]
    fn an_empty_state_is_one_empty_chunk() {
        let path = temp_sock("empty");
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let rx = receiver(&path);
        let a = l.local_addr().unwrap();
        send(&path, &[(a, l.as_raw_fd())], &[], Duration::from_secs(5)).expect("sent");
        let (got, state) = rx.join().unwrap().expect("received");
        assert_eq!((got.len(), state), (1, Some(Vec::new())));
    }

    /// A hand-written sender: one socket message of `version`, then the raw
    /// `after` messages, then (having shut down its sending side) the ack if
    /// one comes.
    fn fake_sender(path: &Path, version: u8, after: &[Vec<u8>]) -> Option<[u8; 8]> {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let sock = connect_to(path, Duration::from_secs(5)).expect("connect");
        let mut p = encode(1, 0, &[a]);
        p[4] = version;
        let fds = [l.as_raw_fd()];
        let cmsg = [ControlMessage::ScmRights(&fds)];
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&p)],
            &cmsg,
            MsgFlags::empty(),
            None,
        )
        .expect("send sockets");
        for m in after {
            // The receiver may already have given up.
            if sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(m)],
                &[],
                MsgFlags::empty(),
                None,
            )
            .is_err()
            {
                return None;
            }
        }
        // Done sending: a receiver still waiting for state reads the close.
        let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        let mut ack = [0u8; 8];
        let mut iov = [IoSliceMut::new(&mut ack)];
        let n = recvmsg::<()>(sock.as_raw_fd(), &mut iov, None, MsgFlags::empty()).ok()?;
        (n.bytes == 8).then_some(ack)
    }

    #[test]
    fn a_version_1_sender_hands_over_without_state() {
        let path = temp_sock("v1");
        let rx = receiver(&path);
        let ack = fake_sender(&path, 1, &[]).expect("acknowledged");
        assert_eq!(&ack, b"LBDA\0\0\0\x01");
        let (got, state) = rx.join().unwrap().expect("received");
        assert_eq!((got.len(), state), (1, None));
    }

    #[test]
    fn a_truncated_state_is_rejected() {
        let path = temp_sock("trunc");
        let rx = receiver(&path);
        // Another chunk announced, then the sender closes.
        assert!(fake_sender(&path, 2, &[encode_state(true, b"{\"a\":")]).is_none());
        assert!(matches!(
            rx.join().unwrap(),
            Err(UpgradeError::Protocol(
                "old process closed inside its state"
            ))
        ));
    }

    #[test]
    fn an_oversized_state_is_rejected() {
        let path = temp_sock("big");
        let rx = receiver(&path);
        let chunk = encode_state(true, &pattern(STATE_CHUNK));
        let chunks = vec![chunk; MAX_STATE / STATE_CHUNK + 1];
        assert!(fake_sender(&path, 2, &chunks).is_none(), "no ack");
        assert!(matches!(
            rx.join().unwrap(),
            Err(UpgradeError::Protocol("state larger than 16 MiB"))
        ));
        // The sender refuses one before connecting (no peer: not a timeout).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        let big = vec![0u8; MAX_STATE + 1];
        let r = send(&path, &[(a, l.as_raw_fd())], &big, Duration::from_secs(5));
        assert!(matches!(r, Err(UpgradeError::Protocol(_))), "{r:?}");
    }
}
