//! lbd: a Linux-tuned, thread-per-core HTTP/1.1 load balancer on io_uring.
//!
//! # Layout
//! * [`cli`]: the command line (Pingora-compatible flags).
//! * [`config`]: `conf.yaml`, typed and validated; every key documented.
//! * [`listener`]: builds the SO_REUSEPORT listening sockets, one per worker
//!   per address, on the main thread.
//! * [`worker`]: one pinned thread per core, each with its own monoio runtime
//!   and io_uring ring; accept loops; per-worker state.
//! * [`session`]: one client connection's request loop (the data path).
//! * [`http`]: the sans-I/O HTTP/1.1 codec: request and response heads,
//!   framing, chunked bodies, header rewriting.
//! * [`upstream`]: backends, the per-worker round-robin cursor
//!   ([`upstream::select`]) and idle connection pool ([`upstream::pool`]).
//! * [`buffer`]: the per-worker I/O buffer free list.
//! * [`idle`]: coarse per-worker deadlines for idle connections.
//! * [`error`]: proxy errors: who failed, retry safety, status mapping.
//! * [`health`]: the checker thread, the shared health bitmap, passive marks.
//! * [`signals`]: the signal thread.
//! * [`logging`]: log setup.

#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod buffer;
pub mod cli;
pub mod config;
pub mod error;
pub mod health;
pub mod http;
pub mod idle;
pub mod listener;
pub mod logging;
pub mod session;
pub mod signals;
pub mod upstream;
pub mod worker;

use std::sync::Arc;

/// Why lbd could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// A listening socket could not be created.
    #[error(transparent)]
    Listen(#[from] listener::ListenError),
    /// Logging or threads could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Runs lbd as the command line says; returns when it exits.
pub fn run(cli: cli::Cli) -> Result<(), StartError> {
    let config = config::Config::load(&cli.conf, cli.threads)?;
    if cli.test {
        println!(
            "lbd: configuration file {} test is successful",
            cli.conf.display()
        );
        return Ok(());
    }
    logging::init(config.error_log.as_deref()).map_err(|source| StartError::Io {
        what: "cannot open error_log",
        source,
    })?;
    for w in &config.warnings {
        log::warn!("{w}");
    }
    let config = Arc::new(config);
    // Signals are handled on this thread only: block them before any worker
    // exists so every worker inherits the mask.
    let signals = signals::block().map_err(|e| StartError::Io {
        what: "cannot block signals",
        source: e.into(),
    })?;
    let socks = listener::bind_all(&config, config.threads)?;
    let backends = config.upstreams.iter().map(|u| u.backends.len()).sum();
    let shared = Arc::new(worker::Shared::new(backends));
    // The first round of health checks completes before any worker accepts.
    health::start(&config, shared.health.clone()).map_err(|source| StartError::Io {
        what: "cannot start the health checker",
        source,
    })?;
    let workers =
        worker::spawn(config.clone(), shared.clone(), socks).map_err(|source| StartError::Io {
            what: "cannot start worker threads",
            source,
        })?;
    log::info!(
        "lbd {} started: {} workers, {} listeners",
        env!("CARGO_PKG_VERSION"),
        workers.len(),
        config.listeners.len()
    );
    signals::run(&signals, &config, &shared);
    Ok(())
}
