//! Listening sockets: the one place that builds them.
//!
//! For every configured address lbd opens one SO_REUSEPORT socket per worker,
//! on the main thread, before any worker exists; each worker then adopts its
//! own (`TcpListener::from_std` inside its runtime). The kernel spreads new
//! connections over the group by 4-tuple hash. Before building the group, a
//! probe bind *without* SO_REUSEPORT makes sure no other process already
//! holds the address: reuseport would otherwise silently share the port with
//! a stale instance. Building every socket here keeps them in one list, which
//! the upgrade hand-over can pass to a new process.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::OwnedFd;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;

/// A listening socket could not be created.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {address} (listeners[{index}]): {source}")]
pub struct ListenError {
    /// The configured address.
    pub address: SocketAddr,
    /// Its index under `listeners:`.
    pub index: usize,
    /// The OS error.
    pub source: std::io::Error,
}

fn reuseport_socket(addr: SocketAddr, backlog: i32) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nodelay(true)?;
    // The epoll fallback needs non-blocking sockets; io_uring does not mind.
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s)
}

/// Fails with EADDRINUSE if anything already listens on `addr`.
pub(crate) fn probe(addr: SocketAddr) -> std::io::Result<()> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    Ok(())
}

/// Binds every listener once per worker. Result: `workers` lists of
/// `(socket, index of its entry under listeners:)`.
pub fn bind_all(
    config: &Config,
    workers: usize,
) -> Result<Vec<Vec<(TcpListener, usize)>>, ListenError> {
    let mut per_worker: Vec<Vec<(TcpListener, usize)>> = (0..workers).map(|_| Vec::new()).collect();
    for (index, l) in config.listeners.iter().enumerate() {
        let err = |source| ListenError {
            address: l.address,
            index,
            source,
        };
        let mut addr = l.address;
        if addr.port() != 0 {
            probe(addr).map_err(err)?;
        }
        for w in per_worker.iter_mut() {
            let s = reuseport_socket(addr, l.backlog).map_err(err)?;
            // Port 0: the first socket picks a port, the others join it.
            if addr.port() == 0 {
                if let Some(local) = s.local_addr().ok().and_then(|a| a.as_socket()) {
                    addr = local;
                }
            }
            w.push((s.into(), index));
        }
        log::info!(
            "listening on {addr} ({})",
            crate::logging::count(workers, "SO_REUSEPORT socket", "SO_REUSEPORT sockets")
        );
    }
    Ok(per_worker)
}

/// Builds each worker's sockets from descriptors received from the old
/// process on upgrade. For each configured address, received sockets are
/// dealt round robin to the workers (a worker may get several, so every
/// received socket keeps being accepted on and no queued connection is lost);
/// workers left without one get a new SO_REUSEPORT socket joining the same
/// group. Addresses the old process had but this config does not are closed
/// (logged); addresses it did not have are bound as usual.
pub fn adopt_all(
    config: &Config,
    workers: usize,
    received: Vec<(SocketAddr, OwnedFd)>,
) -> Result<Vec<Vec<(TcpListener, usize)>>, ListenError> {
    let mut per_worker: Vec<Vec<(TcpListener, usize)>> = (0..workers).map(|_| Vec::new()).collect();
    let mut received: Vec<Option<(SocketAddr, OwnedFd)>> = received.into_iter().map(Some).collect();
    for (index, l) in config.listeners.iter().enumerate() {
        let err = |source| ListenError {
            address: l.address,
            index,
            source,
        };
        let mine: Vec<TcpListener> = received
            .iter_mut()
            .filter(|r| r.as_ref().is_some_and(|(a, _)| *a == l.address))
            .filter_map(|r| r.take())
            .map(|(_, fd)| TcpListener::from(fd))
            .collect();
        if mine.is_empty() {
            log::info!("upgrade: {} was not handed over; binding it", l.address);
            if l.address.port() != 0 {
                probe(l.address).map_err(err)?;
            }
            for w in per_worker.iter_mut() {
                let s = reuseport_socket(l.address, l.backlog).map_err(err)?;
                w.push((s.into(), index));
            }
            continue;
        }
        let n = mine.len();
        for (j, sock) in mine.into_iter().enumerate() {
            sock.set_nonblocking(true).map_err(err)?;
            per_worker[j % workers].push((sock, index));
        }
        for w in per_worker.iter_mut().skip(n) {
            let s = reuseport_socket(l.address, l.backlog).map_err(err)?;
            w.push((s.into(), index));
        }
        log::info!(
            "upgrade: adopted {} for {}{}",
            crate::logging::count(n, "listening socket", "listening sockets"),
            l.address,
            if workers > n {
                format!(", opened {} more", workers - n)
            } else {
                String::new()
            }
        );
    }
    for (addr, _) in received.into_iter().flatten() {
        log::warn!("upgrade: {addr} is not in this config; closing the socket handed over for it");
    }
    Ok(per_worker)
}
