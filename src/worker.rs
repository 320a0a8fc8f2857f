//! Per-core workers: one pinned thread, one monoio runtime, one io_uring ring.
//!
//! A worker owns everything its requests touch: its listening sockets (one
//! SO_REUSEPORT socket per address, built by `listener` on the main thread),
//! its connection tasks, its upstream connection pool, its round-robin cursors
//! and its latency histogram. Nothing on the request path takes a lock or
//! writes memory another core writes; the only shared state is the immutable
//! config and flags the signal thread writes and workers only read.
//!
//! The ring is built inside the worker thread (SINGLE_ISSUER binds it to the
//! creating task) with COOP_TASKRUN, SINGLE_ISSUER and DEFER_TASKRUN, dropping
//! flags one by one when the kernel refuses them; when io_uring is not
//! available at all (seccomp, `kernel.io_uring_disabled`) the worker falls
//! back to monoio's epoll driver and says so in the log.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::{CancelHandle, Canceller};
use monoio::net::TcpListener;
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::Config;
use crate::health::{HealthMap, PassiveMarks};
use crate::idle::IdleTimers;
use crate::upstream::pool::Pool;
use crate::upstream::Upstreams;

/// io_uring submission queue size per worker.
const RING_ENTRIES: u32 = 4096;

/// State shared by every thread: written by the signal thread, read by workers.
#[derive(Debug)]
pub struct Shared {
    /// Set once on graceful shutdown: stop accepting, finish in-flight work.
    pub shutdown: AtomicBool,
    /// Backend health, written by the checker thread only.
    pub health: Arc<HealthMap>,
}

impl Shared {
    /// Shared state for `backends` backends (all up).
    pub fn new(backends: usize) -> Self {
        Shared {
            shutdown: AtomicBool::new(false),
            health: Arc::new(HealthMap::new(backends)),
        }
    }
}

/// Everything one worker's tasks share. Lives in an `Rc`: single-threaded.
pub struct WorkerCtx {
    /// The immutable configuration.
    pub config: Arc<Config>,
    shared: Arc<Shared>,
    upstreams: RefCell<Upstreams>,
    marks: RefCell<PassiveMarks>,
    /// Idle upstream connections.
    pub pool: RefCell<Pool>,
    /// Client connections currently open on this worker.
    pub active: Cell<usize>,
    /// Deadlines of idle client connections.
    pub idle: IdleTimers,
    latency: RefCell<hdrhistogram::Histogram<u64>>,
}

impl WorkerCtx {
    fn new(config: Arc<Config>, shared: Arc<Shared>) -> Self {
        let upstreams = Upstreams::from_config(&config);
        let marks = PassiveMarks::new(&config);
        let pool = Pool::new(
            upstreams.backends.len(),
            config.upstream_keepalive_pool_size,
            config.limits.upstream_idle_timeout,
        );
        // 1 µs to 1 hour, 3 significant digits: fixed size, never resizes on
        // the request path.
        let latency = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .unwrap_or_else(|_| hdrhistogram::Histogram::new(3).expect("sigfig 3 is valid"));
        WorkerCtx {
            config,
            shared,
            upstreams: RefCell::new(upstreams),
            marks: RefCell::new(marks),
            pool: RefCell::new(pool),
            active: Cell::new(0),
            idle: IdleTimers::default(),
            latency: RefCell::new(latency),
        }
    }

    /// True once graceful shutdown began.
    pub fn shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }

    /// Picks the next eligible backend of `group` (global id): up in the
    /// health map and not passively marked down by this worker.
    pub fn select(&self, group: usize) -> Option<usize> {
        let mut ups = self.upstreams.borrow_mut();
        let g = ups.groups.get_mut(group)?;
        let first = g.first;
        let health = &*self.shared.health;
        let mut marks = self.marks.borrow_mut();
        g.cursor
            .next(|i| marks.eligible(first + i, health))
            .map(|i| first + i)
    }

    /// Marks `backend` down on this worker after a failed connect (passive
    /// health); the checker's next passing check lifts it.
    pub fn mark_down(&self, backend: usize) {
        self.marks.borrow_mut().mark(backend, &self.shared.health);
    }

    /// Number of backends in `group`.
    pub fn group_len(&self, group: usize) -> usize {
        self.upstreams
            .borrow()
            .groups
            .get(group)
            .map_or(0, |g| g.cursor.len())
    }

    /// Address of a backend by global id.
    pub fn backend_addr(&self, backend: usize) -> SocketAddr {
        self.upstreams.borrow().backends[backend].address
    }

    /// `Host` to send for a request that carried none: the group's first
    /// backend, as nginx sends its `proxy_pass` host.
    pub fn default_host(&self, group: usize) -> Vec<u8> {
        let ups = self.upstreams.borrow();
        ups.groups
            .get(group)
            .and_then(|g| ups.backends.get(g.first))
            .map(|b| b.host.clone())
            .unwrap_or_default()
    }

    /// Records one request's latency.
    pub fn record(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        self.latency.borrow_mut().saturating_record(us.max(1));
    }
}

/// Which ring setup flags a worker ended up with.
#[derive(Debug, Clone, Copy)]
struct RingFlags {
    coop_taskrun: bool,
    single_issuer: bool,
    defer_taskrun: bool,
}

impl std::fmt::Display for RingFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names = Vec::new();
        if self.coop_taskrun {
            names.push("COOP_TASKRUN");
        }
        if self.single_issuer {
            names.push("SINGLE_ISSUER");
        }
        if self.defer_taskrun {
            names.push("DEFER_TASKRUN");
        }
        if names.is_empty() {
            names.push("none");
        }
        write!(f, "{}", names.join("|"))
    }
}

fn build_uring(flags: RingFlags) -> std::io::Result<monoio::Runtime<TimeDriver<IoUringDriver>>> {
    let mut b = io_uring::IoUring::builder();
    if flags.coop_taskrun {
        b.setup_coop_taskrun();
    }
    if flags.single_issuer {
        b.setup_single_issuer();
    }
    if flags.defer_taskrun {
        b.setup_defer_taskrun();
    }
    RuntimeBuilder::<IoUringDriver>::new()
        .with_entries(RING_ENTRIES)
        .uring_builder(b)
        .enable_timer()
        .build()
}

/// Spawns the worker threads. `listeners[i]` are worker i's sockets, each with
/// the index of its upstream group.
pub fn spawn(
    config: Arc<Config>,
    shared: Arc<Shared>,
    listeners: Vec<Vec<(std::net::TcpListener, usize)>>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(listeners.len());
    for (id, socks) in listeners.into_iter().enumerate() {
        let config = config.clone();
        let shared = shared.clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[id % cores.len()])
        };
        let h = std::thread::Builder::new()
            .name(format!("lbd-worker-{id}"))
            .spawn(move || run(id, core, config, shared, socks))?;
        handles.push(h);
    }
    Ok(handles)
}

fn run(
    id: usize,
    core: Option<core_affinity::CoreId>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    socks: Vec<(std::net::TcpListener, usize)>,
) {
    let pinned = match core {
        Some(c) => {
            if core_affinity::set_for_current(c) {
                format!("pinned to CPU {}", c.id)
            } else {
                "not pinned (sched_setaffinity failed)".to_string()
            }
        }
        None => "not pinned (no CPU list)".to_string(),
    };
    let force_legacy = std::env::var_os("MONOIO_FORCE_LEGACY_DRIVER").is_some();
    if !force_legacy && monoio::utils::detect_uring() {
        let candidates = [
            RingFlags {
                coop_taskrun: true,
                single_issuer: true,
                defer_taskrun: true,
            },
            RingFlags {
                coop_taskrun: true,
                single_issuer: true,
                defer_taskrun: false,
            },
            RingFlags {
                coop_taskrun: true,
                single_issuer: false,
                defer_taskrun: false,
            },
            RingFlags {
                coop_taskrun: false,
                single_issuer: false,
                defer_taskrun: false,
            },
        ];
        for flags in candidates {
            match build_uring(flags) {
                Ok(mut rt) => {
                    log::info!("worker {id}: io_uring driver, ring flags {flags}, {pinned}");
                    rt.block_on(serve(id, config, shared, socks));
                    return;
                }
                Err(e) => log::debug!("worker {id}: io_uring with {flags} refused: {e}"),
            }
        }
        log::warn!("worker {id}: every io_uring setup was refused; falling back to epoll");
    } else if !force_legacy {
        log::warn!(
            "worker {id}: io_uring is unavailable (seccomp or kernel.io_uring_disabled?); \
             using the epoll driver"
        );
    }
    match RuntimeBuilder::<LegacyDriver>::new()
        .with_entries(RING_ENTRIES)
        .enable_timer()
        .build()
    {
        Ok(mut rt) => {
            log::info!("worker {id}: epoll (legacy) driver, {pinned}");
            rt.block_on(serve(id, config, shared, socks));
        }
        Err(e) => {
            log::error!("worker {id}: cannot build any runtime: {e}");
            std::process::exit(1);
        }
    }
}

async fn serve(
    id: usize,
    config: Arc<Config>,
    shared: Arc<Shared>,
    socks: Vec<(std::net::TcpListener, usize)>,
) {
    let ctx = Rc::new(WorkerCtx::new(config, shared));
    // Cancels every accept at once when draining; a cancelled accept is still
    // awaited, so a connection accepted in the race is served, never leaked.
    let canceller = Canceller::new();
    let mut loops = Vec::new();
    for (sock, group) in socks {
        // `from_std` must run inside the runtime (it registers the fd).
        match TcpListener::from_std(sock) {
            Ok(l) => loops.push(monoio::spawn(accept_loop(
                ctx.clone(),
                l,
                group,
                canceller.handle(),
            ))),
            Err(e) => {
                log::error!("worker {id}: cannot adopt listening socket: {e}");
                std::process::exit(1);
            }
        }
    }
    // Close idle pooled connections past their idle timeout.
    let sweeper = ctx.clone();
    monoio::spawn(async move {
        let period = (sweeper.config.limits.upstream_idle_timeout / 2)
            .clamp(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            monoio::time::sleep(period).await;
            sweeper.pool.borrow_mut().sweep();
        }
    });
    // Fire idle-connection deadlines.
    let reaper = ctx.clone();
    monoio::spawn(async move {
        let l = &reaper.config.limits;
        let period = crate::idle::sweep_period(l.keepalive_timeout.min(l.header_timeout));
        loop {
            monoio::time::sleep(period).await;
            reaper.idle.sweep(std::time::Instant::now());
        }
    });
    // Watch for shutdown (a plain load every 50 ms, off the request path).
    while !ctx.shutting_down() {
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
    // Drain: stop accepting, close idle keep-alive connections, let
    // in-flight exchanges finish (their responses carry Connection: close).
    let _ = canceller.cancel();
    for l in loops {
        l.await;
    }
    // Wake idle connections: they get a short last window (see session).
    ctx.idle.fire_all();
    loop {
        ctx.pool.borrow_mut().clear();
        let n = ctx.active.get();
        if n == 0 {
            break;
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    log::info!("worker {id}: drained");
}

async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    listener: TcpListener,
    group: usize,
    cancel: CancelHandle,
) {
    let max = ctx.config.limits.max_connections_per_worker;
    let mut last_err_log: Option<std::time::Instant> = None;
    // Never wrap accept in a timeout/select on monoio 0.2.4: a cancelled
    // accept can leak the accepted fd. Cancellation goes through the
    // canceller instead, which still collects the result.
    loop {
        if ctx.shutting_down() {
            return;
        }
        match listener.cancelable_accept(cancel.clone()).await {
            Ok((stream, peer)) => {
                if ctx.active.get() >= max {
                    // Refuse cleanly: close at once, existing connections keep
                    // working.
                    drop(stream);
                    continue;
                }
                ctx.active.set(ctx.active.get() + 1);
                let c = ctx.clone();
                monoio::spawn(async move {
                    crate::session::serve(c.clone(), stream, peer, group).await;
                    c.active.set(c.active.get() - 1);
                });
            }
            Err(_) if ctx.shutting_down() => return,
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning; service
                // resumes when descriptors free up.
                let now = std::time::Instant::now();
                if last_err_log.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
                    log::warn!("accept failed: {e}");
                    last_err_log = Some(now);
                }
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
