//! The signal thread: every signal lbd handles is blocked in all threads and
//! taken here, on the main thread, with `sigwait`; no handler ever runs on a
//! worker. Workers learn of shutdown from one atomic flag they load (never
//! under a lock on the request path).
//!
//! | signal | effect |
//! |---|---|
//! | SIGINT | fast shutdown: exit at once |
//! | SIGTERM | graceful shutdown: stop accepting, drain, exit when idle |
//! | SIGQUIT | graceful upgrade: hand listening sockets to `lbd -u`, then drain |
//! | SIGHUP | reopen `error_log` |
//! | SIGUSR1 | dump the latency histogram (does not reopen logs) |

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::config::Config;
use crate::shard::Shared;

/// Blocks the signals lbd handles in the calling thread (and so in every
/// thread it spawns afterwards).
pub fn block() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGUSR1,
    ] {
        set.add(s);
    }
    set.thread_block()?;
    Ok(set)
}

/// What the signal loop needs to act.
pub struct Lifecycle<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// Flags shared with workers.
    pub shared: &'a Shared,
    /// Worker threads (joined on drain).
    pub workers: Vec<JoinHandle<()>>,
    /// Duplicates of every listening socket, for the upgrade hand-over.
    pub sockets: Vec<(SocketAddr, OwnedFd)>,
    /// Called on SIGUSR1.
    pub on_usr1: Box<dyn Fn() + 'a>,
    /// The run-time state handed to the new process of an upgrade (the
    /// admin API's changes).
    pub state: Box<dyn Fn() -> Vec<u8> + 'a>,
}

/// Waits for signals until lbd should exit; returns when it may.
pub fn run(set: &SigSet, mut lc: Lifecycle<'_>) {
    loop {
        match set.wait() {
            Ok(Signal::SIGINT) => {
                log::info!("SIGINT: fast shutdown");
                crate::notify::stopping();
                return;
            }
            Ok(Signal::SIGTERM) => {
                log::info!("SIGTERM: graceful shutdown");
                crate::notify::stopping();
                drain(&lc);
                return;
            }
            Ok(Signal::SIGQUIT) => {
                log::info!(
                    "SIGQUIT: handing {} to a new process on {}",
                    crate::logging::count(
                        lc.sockets.len(),
                        "listening socket",
                        "listening sockets"
                    ),
                    lc.config.upgrade_sock.display()
                );
                crate::notify::reloading();
                let fds: Vec<(SocketAddr, i32)> = lc
                    .sockets
                    .iter()
                    .map(|(a, f)| (*a, f.as_raw_fd()))
                    .collect();
                let state = (lc.state)();
                let sent = crate::upgrade::send(
                    &lc.config.upgrade_sock,
                    &fds,
                    &state,
                    lc.config.upgrade_wait,
                );
                match sent {
                    Ok(new_pid) => {
                        // Before the drain: systemd must know who serves
                        // before this process can exit.
                        crate::notify::handed_over(new_pid);
                        log::info!("upgrade: listening sockets sent; draining");
                        // Our copies are no longer needed: the new process
                        // holds the sockets.
                        lc.sockets.clear();
                        drain(&lc);
                        return;
                    }
                    Err(e) => {
                        log::error!("upgrade failed, still serving: {e}");
                        crate::notify::still_serving();
                    }
                }
            }
            Ok(Signal::SIGHUP) => {
                crate::logging::reopen();
                crate::access_log::REOPEN.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Signal::SIGUSR1) => (lc.on_usr1)(),
            Ok(other) => log::debug!("{other:?} ignored"),
            Err(e) => {
                log::error!("sigwait failed: {e}");
                return;
            }
        }
    }
}

/// Graceful drain: tell workers, wait until they finished or the deadline
/// (`grace_period_seconds` + `graceful_shutdown_timeout_seconds`) passed.
fn drain(lc: &Lifecycle<'_>) {
    lc.shared.shutdown.store(true, Ordering::Relaxed);
    let limit = lc.config.grace_period + lc.config.graceful_shutdown_timeout;
    let deadline = Instant::now() + limit;
    loop {
        if lc.workers.iter().all(JoinHandle::is_finished) {
            log::info!("drained; exiting");
            return;
        }
        if Instant::now() >= deadline {
            log::warn!("drain deadline ({limit:?}) reached with requests in flight; exiting");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
