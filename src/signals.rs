//! The signal thread: signals are blocked everywhere and taken here, on the
//! main thread, with `sigwait`, so no handler ever runs on a worker.
//!
//! SIGINT exits at once. SIGTERM begins a graceful shutdown: workers see the
//! shared flag (a plain atomic load), stop starting new exchanges, and the
//! process exits when the grace period ends.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::signal::{SigSet, Signal};

use crate::config::Config;
use crate::worker::Shared;

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

/// Waits for signals until lbd should exit.
pub fn run(set: &SigSet, config: &Config, shared: &Shared) {
    loop {
        match set.wait() {
            Ok(Signal::SIGINT) => {
                log::info!("SIGINT: fast shutdown");
                return;
            }
            Ok(Signal::SIGTERM) => {
                log::info!("SIGTERM: graceful shutdown");
                shared.shutdown.store(true, Ordering::Relaxed);
                let until = Instant::now() + config.grace_period.min(Duration::from_secs(1));
                while Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                return;
            }
            Ok(other) => log::info!("{other:?} received; not handled yet"),
            Err(e) => {
                log::error!("sigwait failed: {e}");
                return;
            }
        }
    }
}
