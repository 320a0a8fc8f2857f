//! lbd: a Linux-tuned, thread-per-core HTTP/1.1 load balancer on io_uring.
//!
//! # Layout
//! A request crosses the modules in this order: a [`worker`] accepts it,
//! [`downstream`] reads it ([`downstream::h1`]: the HTTP/1 connection loop)
//! with the sans-I/O [`http`] codec, [`route`] picks its upstream group,
//! [`proxy`] runs the protocol-neutral exchange, and [`upstream`] picks,
//! pools and connects backends by stable id.
//!
//! * [`cli`]: the command line (Pingora-compatible flags).
//! * [`ctl`]: `lbd ctl`, the admin API's command-line client.
//! * [`config`]: `conf.yaml`, typed and validated; every key documented.
//! * [`listener`]: builds the SO_REUSEPORT listening sockets, one per worker
//!   per address, on the main thread.
//! * [`worker`]: one pinned thread per core, each with its own monoio runtime
//!   and io_uring ring; accept and unpark loops, background ticks, drain.
//! * [`shard`]: one worker's state (upstreams, routes, clock, counters, idle
//!   deadlines, parking lot, access-log buffer), and the little the process
//!   shares with workers.
//! * [`downstream`]: the client side: the HTTP/1 connection loop (idle and
//!   parking, PROXY protocol and TLS at the start, head reading, keep-alive,
//!   error responses), request ids, and HTTP/2 connections
//!   ([`downstream::h2`]: h2c prior knowledge and ALPN `h2`, each stream one
//!   exchange through [`proxy`]; [`downstream::poll_io`]: the connection as
//!   the `h2` crate's tokio I/O over monoio's poll-io; [`downstream::h2_flood`]:
//!   the sans-I/O meter of control and empty frames).
//! * [`route`]: which upstream group a request goes to.
//! * [`proxy`]: one exchange, protocol-neutral: request to a backend,
//!   response back; retries; pooling after an exact end.
//! * [`tunnel`]: the byte tunnel an upgraded connection (WebSocket) becomes
//!   after its `101`.
//! * [`upstream`]: the backend registry with stable ids and a worker's view
//!   of it: selection ([`upstream::select`]), idle connections
//!   ([`upstream::pool`]), passive marks ([`upstream::marks`]), checkout or
//!   connect and the retry policy ([`upstream::connect`]).
//! * [`http`]: the sans-I/O HTTP/1.1 codec: request and response heads, head
//!   rewriting (with the forwarding headers), body framing, chunked bodies.
//! * [`proxy_protocol`]: the sans-I/O PROXY protocol (v1, v2): the header
//!   read in front of client connections and written in front of upstream
//!   ones.
//! * [`tls`]: rustls configs for listeners and upstream groups.
//! * [`stream`]: a connection as the data path sees it: TCP, or TLS driven
//!   by lbd over TCP.
//! * [`buffer`]: the per-worker I/O buffer free list.
//! * [`idle`]: coarse per-worker deadlines for idle connections.
//! * [`deadline`]: the same coarse deadlines for a worker's socket reads and
//!   writes (no timer per operation).
//! * [`park`]: idle keep-alive connections parked without a task (epoll set).
//! * [`error`]: proxy errors: who failed, whether a retry is safe, status mapping.
//! * [`health`]: the checker thread and the shared health bitmap.
//! * [`discovery`]: DNS service discovery (A/AAAA, SRV) on its own thread.
//! * [`membership`]: who is in each group: static, discovered and API
//!   members, the one door through which the backend set changes.
//! * [`signals`]: the signal thread: drain, upgrade, log reopen.
//! * [`daemon`]: `-d`, the pid file, files written atomically.
//! * [`notify`]: systemd readiness (`Type=notify`): READY, RELOADING,
//!   STOPPING, MAINPID.
//! * [`preflight`]: what `-t` and a start check beyond the YAML: the files
//!   the configuration names can be created.
//! * [`upgrade`]: the listening-socket hand-over (SCM_RIGHTS).
//! * [`logging`]: log setup and reopen.
//! * [`metrics`]: per-worker counters and histograms, `.hgrm` and Prometheus output.
//! * [`admin`]: the `/metrics` and `/health` endpoint thread.
//! * [`status_page`]: the admin address's live status page (`GET /`) and its `GET /stats` JSON.
//! * [`access_log`]: per-worker buffered access log and its writer thread.

#![deny(rust_2018_idioms)]
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub(crate) mod access_log;
pub(crate) mod admin;
pub(crate) mod buffer;
pub mod cli;
pub(crate) mod config;
pub(crate) mod ctl;
pub(crate) mod daemon;
pub(crate) mod deadline;
pub(crate) mod discovery;
pub(crate) mod downstream;
pub(crate) mod error;
pub(crate) mod health;
pub mod http;
pub(crate) mod idle;
pub(crate) mod listener;
pub(crate) mod logging;
pub(crate) mod membership;
pub(crate) mod metrics;
pub(crate) mod notify;
pub(crate) mod park;
pub(crate) mod preflight;
pub(crate) mod proxy;
pub mod proxy_protocol;
pub(crate) mod route;
pub(crate) mod shard;
pub(crate) mod signals;
pub(crate) mod status_page;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod tunnel;
pub(crate) mod upgrade;
pub(crate) mod upstream;
pub(crate) mod worker;

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
    /// The pid file is in the way or cannot be written.
    #[error(transparent)]
    PidFile(#[from] daemon::PidFileError),
    /// `-t`: a discovery name does not resolve.
    #[error(transparent)]
    Discovery(#[from] discovery::DiscoveryError),
    /// `-u`: the sockets could not be taken over.
    #[error("upgrade: cannot take over the listening sockets: {0}")]
    Upgrade(#[from] upgrade::UpgradeError),
    /// A file the configuration names could not be opened.
    #[error("config key `{key}`: cannot open {}: {source}", path.display())]
    Open {
        /// The key naming the file.
        key: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Logging, signals or threads could not be set up.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> StartError {
    move |source| StartError::Io { what, source }
}

fn open_err(
    key: &'static str,
    path: &std::path::Path,
) -> impl FnOnce(std::io::Error) -> StartError {
    let path = path.to_owned();
    move |source| StartError::Open { key, path, source }
}

/// Runs lbd as the command line says; returns when it exits.
pub fn run(cli: cli::Cli) -> Result<(), StartError> {
    if let Some(cli::Command::Ctl(args)) = &cli.command {
        std::process::exit(ctl::run(args));
    }
    if let Some(dir) = &cli.gen_assets {
        return cli::generate_assets(dir).map_err(io_err("cannot write the generated files"));
    }
    let Some(conf) = &cli.conf else {
        // clap requires -c unless --gen-assets is given.
        return Err(StartError::Io {
            what: "no configuration file (-c)",
            source: std::io::ErrorKind::InvalidInput.into(),
        });
    };
    let config = config::Config::load(conf, cli.threads)?;
    preflight::check(&config)?;
    if cli.test {
        // A name that does not resolve now fails the test.
        discovery::check(&config)?;
        // What a start would log before serving, on stderr; still exit 0.
        for w in &config.warnings {
            eprintln!("lbd: warning: {w}");
        }
        println!(
            "lbd: configuration file {} test is successful",
            conf.display()
        );
        return Ok(());
    }
    if let Some(p) = &config.pid_file {
        daemon::check_pid_file(p, cli.upgrade)?;
    }
    // Daemonize before any thread exists.
    let mut readiness = if cli.daemon || config.daemon {
        let log_file = match &config.error_log {
            Some(p) => Some(daemon::open_log(p).map_err(open_err("error_log", p))?),
            None => None,
        };
        let r = daemon::daemonize(log_file).map_err(io_err("cannot daemonize"))?;
        if config.error_log.is_some() {
            logging::stderr_is_log();
        }
        r
    } else {
        daemon::Readiness::foreground()
    };
    match start(&cli, config, &mut readiness) {
        Ok(()) => Ok(()),
        Err(e) => {
            readiness.failed(&e.to_string());
            Err(e)
        }
    }
}

fn start(
    cli: &cli::Cli,
    config: config::Config,
    readiness: &mut daemon::Readiness,
) -> Result<(), StartError> {
    if let Some(p) = &config.error_log {
        logging::init(Some(p)).map_err(open_err("error_log", p))?;
    } else {
        logging::init(None).map_err(io_err("cannot start logging"))?;
    }
    for w in &config.warnings {
        log::warn!("{w}");
    }
    let config = Arc::new(config);
    // Signals are handled on this thread only: block them before any other
    // thread exists so every thread inherits the mask.
    let signals = signals::block().map_err(|e| StartError::Io {
        what: "cannot block signals",
        source: e.into(),
    })?;
    // The admin address is bound before the listeners, so that once lbd
    // accepts connections, its admin API accepts them too (they are
    // served once the admin thread runs).
    let admin_listener = match config.admin {
        Some(addr) => Some(
            admin::bind(addr, cli.upgrade).map_err(|source| StartError::Io {
                what: "cannot listen on admin.address",
                source,
            })?,
        ),
        None => None,
    };
    let (socks, handed_state) = if cli.upgrade {
        log::info!(
            "upgrade: waiting for the running lbd's sockets on {}",
            config.upgrade_sock.display()
        );
        let (received, state) = upgrade::receive(&config.upgrade_sock, config.upgrade_wait)?;
        log::info!(
            "upgrade: received {}",
            logging::count(received.len(), "listening socket", "listening sockets")
        );
        (
            listener::adopt_all(&config, config.threads, received)?,
            state,
        )
    } else {
        (listener::bind_all(&config, config.threads)?, None)
    };
    // Keep a duplicate of every listening socket for a later hand-over.
    let mut handover = Vec::new();
    for (sock, _) in socks.iter().flatten() {
        let addr = sock
            .local_addr()
            .map_err(io_err("listening socket address"))?;
        let fd: std::os::fd::OwnedFd = sock
            .try_clone()
            .map_err(io_err("cannot duplicate a listening socket"))?
            .into();
        handover.push((addr, fd));
    }
    let registry = Arc::new(upstream::Registry::from_config(&config));
    let backends = registry.capacity();
    let shared = Arc::new(shard::Shared::new(registry));
    let membership = Arc::new(membership::Membership::new(&config, shared.clone()));
    // The first DNS answers join before the first round of health checks.
    let discovery = discovery::Discovery::start(&config, membership.clone());
    if let Some(state) = handed_state.filter(|s| !s.is_empty()) {
        match membership.import(&state) {
            Ok(n) => log::info!("upgrade: replayed {n} admin API changes of the old process"),
            Err(e) => log::warn!("upgrade: the old process's admin API state is unreadable: {e}"),
        }
    }
    let (dump_tx, dump_rx) = std::sync::mpsc::channel();
    let (scrape_tx, scrape_rx) = std::sync::mpsc::channel();
    let route_slots = metrics::route_slots(&config).1;
    let worker_metrics: Vec<Arc<metrics::WorkerMetrics>> = (0..config.threads)
        .map(|_| Arc::new(metrics::WorkerMetrics::new(backends, route_slots)))
        .collect();
    let mut access: Vec<Option<(access_log::Format, access_log::WorkerLink)>> =
        match &config.access_log {
            Some((path, format)) => access_log::start(path.clone(), config.threads)
                .map_err(open_err("access_log.path", path))?
                .into_iter()
                .map(|l| Some((*format, l)))
                .collect(),
            None => (0..config.threads).map(|_| None).collect(),
        };
    let links = worker_metrics
        .iter()
        .zip(access.drain(..))
        .enumerate()
        .map(|(i, (m, a))| shard::WorkerLinks {
            seed: seed(i),
            worker: i,
            metrics: m.clone(),
            dump_tx: dump_tx.clone(),
            scrape_tx: scrape_tx.clone(),
            access: a,
        })
        .collect();
    drop((dump_tx, scrape_tx));
    // The first round of health checks completes before any worker accepts.
    let checks = shared.registry.load().check_groups(&config);
    let checker = health::start(checks, shared.health.clone())
        .map_err(io_err("cannot start the health checker"))?;
    let workers = worker::spawn(config.clone(), shared.clone(), socks, links)
        .map_err(io_err("cannot start worker threads"))?;
    membership.serving(checker);
    if let Some(d) = discovery {
        d.spawn()
            .map_err(io_err("cannot start the discovery thread"))?;
    }
    if let Some(l) = admin_listener {
        let addr = l.local_addr().map_err(io_err("admin address"))?;
        admin::spawn(
            l,
            shared.clone(),
            membership.clone(),
            worker_metrics,
            scrape_rx,
            config.clone(),
            status_page::Process {
                config_path: cli.conf.as_ref().map(|p| {
                    std::fs::canonicalize(p)
                        .unwrap_or_else(|_| p.clone())
                        .display()
                        .to_string()
                }),
                started_unix: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
                upgraded: cli.upgrade,
            },
        )
        .map_err(io_err("cannot start the admin thread"))?;
        log::info!("admin endpoint on http://{addr}/metrics");
    }
    if let Some(p) = &config.pid_file {
        daemon::write_pid_file(p)?;
    }
    log::info!(
        "lbd {} started (pid {}): {}, {}",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        logging::count(workers.len(), "worker", "workers"),
        logging::count(config.listeners.len(), "listener", "listeners")
    );
    // systemd first: by the time a `-d` parent exits, systemd knows who serves.
    notify::ready();
    readiness.ready();
    signals::run(
        &signals,
        signals::Lifecycle {
            config: &config,
            shared: &shared,
            workers,
            sockets: handover,
            on_usr1: Box::new(dump_latency(&config, &shared, dump_rx)),
            state: Box::new(|| membership.export()),
        },
    );
    if let Some(p) = &config.pid_file {
        daemon::remove_pid_file(p);
    }
    Ok(())
}

/// A seed for worker `i`'s random draws: different per worker and per
/// process (from the clock and pid), no syscall per request.
fn seed(i: usize) -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ (u64::from(std::process::id()) << 32) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The SIGUSR1 action: collect every worker's interval histogram, merge,
/// write `histogram_file` atomically, log a summary.
fn dump_latency<'a>(
    config: &'a config::Config,
    shared: &'a shard::Shared,
    rx: std::sync::mpsc::Receiver<metrics::Reply>,
) -> impl Fn() + 'a {
    let since = std::cell::Cell::new(std::time::SystemTime::now());
    move || {
        let epoch = shared
            .requests
            .dump
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        let (h, got) = metrics::collect(
            &rx,
            epoch,
            config.threads,
            std::time::Duration::from_secs(2),
        );
        let now = std::time::SystemTime::now();
        let start = since.replace(now);
        if got < config.threads {
            log::warn!(
                "SIGUSR1: only {got} of {} answered",
                logging::count(config.threads, "worker", "workers")
            );
        }
        let path = metrics::histogram_path(config);
        match daemon::write_atomic(&path, metrics::hgrm(&h, start, now).as_bytes()) {
            Ok(()) => log::info!(
                "SIGUSR1: latency since last dump written to {}: {}",
                path.display(),
                metrics::summary(&h)
            ),
            Err(e) => log::error!("SIGUSR1: cannot write {}: {e}", path.display()),
        }
    }
}
