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
use monoio::net::{TcpListener, TcpStream};
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::access_log;
use crate::config::Config;
use crate::health::{HealthMap, PassiveMarks};
use crate::idle::IdleTimers;
use crate::metrics::{Reply, WorkerHistograms, WorkerMetrics};
use crate::park::{ConnInfo, ParkingLot};
use crate::session::End;
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
    /// Dump and scrape requests for the workers' histograms.
    pub requests: crate::metrics::Requests,
}

impl Shared {
    /// Shared state for `backends` backends (all up).
    pub fn new(backends: usize) -> Self {
        Shared {
            shutdown: AtomicBool::new(false),
            health: Arc::new(HealthMap::new(backends)),
            requests: crate::metrics::Requests::default(),
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
    /// Idle keep-alive connections parked without a task.
    pub lot: ParkingLot,
    /// The time as of the last housekeeping tick (at most 50 ms old), for
    /// coarse deadlines on the request path: each clock read costs about as
    /// much as parsing a small header.
    clock: Cell<std::time::Instant>,
    /// This worker's counters (written here only, read by the admin thread).
    pub metrics: Arc<WorkerMetrics>,
    hist: RefCell<WorkerHistograms>,
    access: Option<RefCell<AccessState>>,
    /// Per listener: this worker's own TLS server config, if any.
    listener_tls: Vec<Option<(Arc<rustls::ServerConfig>, Duration)>>,
    /// Per upstream group: this worker's own TLS client config and name.
    upstream_tls: Vec<
        Option<(
            Arc<rustls::ClientConfig>,
            rustls::pki_types::ServerName<'static>,
        )>,
    >,
    /// Per upstream group: the Host header override.
    host_override: Vec<Option<Vec<u8>>>,
    /// Per upstream group: the Host for requests that carry none.
    default_host: Vec<Vec<u8>>,
}

/// A worker's access-log state.
struct AccessState {
    log: access_log::WorkerLog,
    link: access_log::WorkerLink,
    free_fields: Vec<access_log::Fields>,
}

impl WorkerCtx {
    fn new(config: Arc<Config>, shared: Arc<Shared>, links: WorkerLinks) -> Self {
        let upstreams = Upstreams::from_config(&config);
        let marks = PassiveMarks::new(&config);
        let pool = Pool::new(
            upstreams.backends.len(),
            config.upstream_keepalive_pool_size,
            config.limits.upstream_idle_timeout,
        );
        WorkerCtx {
            config: config.clone(),
            shared,
            upstreams: RefCell::new(upstreams),
            marks: RefCell::new(marks),
            pool: RefCell::new(pool),
            active: Cell::new(0),
            idle: IdleTimers::default(),
            lot: ParkingLot::new(),
            clock: Cell::new(std::time::Instant::now()),
            metrics: links.metrics,
            hist: RefCell::new(WorkerHistograms::new(links.dump_tx, links.scrape_tx)),
            listener_tls: config
                .listeners
                .iter()
                .map(|l| {
                    l.tls
                        .as_ref()
                        .and_then(|(m, t)| crate::tls::server_config(m).map(|c| (c, *t)))
                })
                .collect(),
            upstream_tls: config
                .upstreams
                .iter()
                .map(|u| u.tls.as_ref().and_then(crate::tls::client_config))
                .collect(),
            host_override: config
                .upstreams
                .iter()
                .map(|u| u.host.as_ref().map(|h| h.as_bytes().to_vec()))
                .collect(),
            default_host: config
                .upstreams
                .iter()
                .map(|u| {
                    u.backends
                        .first()
                        .map(|b| b.address.to_string().into_bytes())
                        .unwrap_or_default()
                })
                .collect(),
            access: links.access.map(|(format, link)| {
                RefCell::new(AccessState {
                    log: access_log::WorkerLog::new(format),
                    link,
                    free_fields: Vec::new(),
                })
            }),
        }
    }

    /// The coarse clock: now, give or take 50 ms (never ahead).
    #[inline]
    pub fn coarse_now(&self) -> std::time::Instant {
        self.clock.get()
    }

    /// Closes parked connections past their deadline.
    pub fn sweep_parked(&self, now: std::time::Instant) {
        if !self.lot.is_empty() {
            let closed = self.lot.sweep(now);
            self.active.set(self.active.get() - closed);
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
    pub fn default_host(&self, group: usize) -> &[u8] {
        self.default_host.get(group).map_or(&[], |h| h.as_slice())
    }

    /// This worker's TLS server config for `listener`, if it terminates TLS.
    pub fn listener_tls(&self, listener: usize) -> Option<(Arc<rustls::ServerConfig>, Duration)> {
        self.listener_tls.get(listener).cloned().flatten()
    }

    /// This worker's TLS client config for `group`, if it speaks TLS.
    pub fn upstream_tls(
        &self,
        group: usize,
    ) -> Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )> {
        self.upstream_tls.get(group).cloned().flatten()
    }

    /// The `host` override of `group`.
    pub fn host_override(&self, group: usize) -> Option<&[u8]> {
        self.host_override.get(group).and_then(|h| h.as_deref())
    }

    /// Records one request's latency.
    #[inline]
    pub fn record(&self, d: Duration) {
        self.hist.borrow_mut().record(d);
    }

    /// With an access log: the request's fields, captured from its head
    /// (storage reused from a per-worker free list). `None` without one.
    pub fn access_fields(&self, head: &[u8]) -> Option<access_log::Fields> {
        let a = self.access.as_ref()?;
        let mut f = a.borrow_mut().free_fields.pop().unwrap_or_default();
        f.capture(head);
        Some(f)
    }

    /// Returns unused fields to the free list.
    pub fn give_fields(&self, f: access_log::Fields) {
        if let Some(a) = &self.access {
            let mut a = a.borrow_mut();
            if a.free_fields.len() < 256 {
                a.free_fields.push(f);
            }
        }
    }

    /// Appends an access-log line (and hands the buffer to the writer when
    /// full).
    pub fn access_log(
        &self,
        client: SocketAddr,
        fields: access_log::Fields,
        status: u16,
        body_bytes: u64,
        duration: Duration,
        upstream: Option<SocketAddr>,
    ) {
        let Some(a) = &self.access else { return };
        let mut a = a.borrow_mut();
        let entry = access_log::Entry {
            client: client.ip(),
            fields: &fields,
            status,
            body_bytes,
            duration,
            upstream,
        };
        a.log.push(&entry, std::time::SystemTime::now());
        if a.log.buf.len() >= access_log::FLUSH_BYTES {
            Self::flush_access(&mut a);
        }
        if a.free_fields.len() < 256 {
            a.free_fields.push(fields);
        }
    }

    fn flush_access(a: &mut AccessState) {
        if !a.log.buf.is_empty() {
            let full = std::mem::take(&mut a.log.buf);
            a.log.buf = a.link.swap(full);
        }
    }
}

/// What connects a worker to the rest of the process for metrics.
pub struct WorkerLinks {
    /// The worker's counter block.
    pub metrics: Arc<WorkerMetrics>,
    /// Where SIGUSR1 dumps go.
    pub dump_tx: std::sync::mpsc::Sender<Reply>,
    /// Where scrape snapshots go.
    pub scrape_tx: std::sync::mpsc::Sender<Reply>,
    /// The access log's format and channel, when configured.
    pub access: Option<(access_log::Format, access_log::WorkerLink)>,
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
    mut links: Vec<WorkerLinks>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    links.truncate(listeners.len());
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let mut handles = Vec::with_capacity(listeners.len());
    for ((id, socks), link) in listeners.into_iter().enumerate().zip(links) {
        let config = config.clone();
        let shared = shared.clone();
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[id % cores.len()])
        };
        let h = std::thread::Builder::new()
            .name(format!("lbd-worker-{id}"))
            .spawn(move || run(id, core, config, shared, socks, link))?;
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
    link: WorkerLinks,
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
                    rt.block_on(serve(id, config, shared, socks, link));
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
            rt.block_on(serve(id, config, shared, socks, link));
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
    link: WorkerLinks,
) {
    let ctx = Rc::new(WorkerCtx::new(config, shared, link));
    // Cancels every accept at once when draining; a cancelled accept is still
    // awaited, so a connection accepted in the race is served, never leaked.
    let canceller = Canceller::new();
    let mut loops = Vec::new();
    for (sock, listener) in socks {
        let group = ctx.config.listeners.get(listener).map_or(0, |l| l.upstream);
        // `from_std` must run inside the runtime (it registers the fd).
        match TcpListener::from_std(sock) {
            Ok(l) => loops.push(monoio::spawn(accept_loop(
                ctx.clone(),
                l,
                listener,
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
    // Fire idle-connection deadlines, close expired parked connections.
    let reaper = ctx.clone();
    monoio::spawn(async move {
        let l = &reaper.config.limits;
        let period = crate::idle::sweep_period(
            l.keepalive_timeout
                .min(l.header_timeout)
                .min(crate::park::PARK_AFTER),
        );
        loop {
            monoio::time::sleep(period).await;
            let now = std::time::Instant::now();
            reaper.idle.sweep(now);
            reaper.sweep_parked(now);
        }
    });
    // Bring parked connections back when they turn readable.
    if ctx.lot.enabled() {
        monoio::spawn(unpark_loop(ctx.clone()));
    }
    // Housekeeping every 50 ms, off the request path: answer histogram
    // requests, watch for shutdown (plain loads).
    let housekeeping = ctx.clone();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(Duration::from_millis(50)).await;
            let c = &housekeeping;
            c.clock.set(std::time::Instant::now());
            c.hist.borrow_mut().answer(&c.shared.requests);
            if let Some(a) = &c.access {
                WorkerCtx::flush_access(&mut a.borrow_mut());
            }
            c.metrics.connections_active.set(c.active.get() as u64);
            c.metrics.connections_parked.set(c.lot.len() as u64);
        }
    });
    while !ctx.shutting_down() {
        monoio::time::sleep(Duration::from_millis(50)).await;
    }
    // Drain: stop accepting, close idle keep-alive connections, let
    // in-flight exchanges finish (their responses carry Connection: close).
    let _ = canceller.cancel();
    for l in loops {
        l.await;
    }
    // Wake idle connections: they get a short last window (see session);
    // parked ones get the same window where they are.
    ctx.idle.fire_all();
    ctx.lot
        .shorten(std::time::Instant::now() + crate::session::DRAIN_IDLE_WINDOW);
    loop {
        ctx.sweep_parked(std::time::Instant::now());
        ctx.pool.borrow_mut().clear();
        let n = ctx.active.get();
        if n == 0 {
            break;
        }
        monoio::time::sleep(Duration::from_millis(20)).await;
    }
    log::info!("worker {id}: drained");
}

/// Runs a session for a connection counted in `active`; the count drops
/// when the connection closes (a parked connection stays counted).
fn spawn_session(ctx: &Rc<WorkerCtx>, stream: TcpStream, info: ConnInfo) {
    let c = ctx.clone();
    monoio::spawn(async move {
        if crate::session::serve(c.clone(), stream, info).await == End::Closed {
            c.active.set(c.active.get() - 1);
        }
    });
}

/// Waits on the parking lot's epoll set through the ring and starts a
/// session for every parked connection that turned readable.
async fn unpark_loop(ctx: Rc<WorkerCtx>) {
    // The epoll set is waited on as a readable descriptor; a Unix stream is
    // only the carrier monoio offers for a readiness wait on a descriptor.
    let waiter = ctx
        .lot
        .epoll_fd()
        .map(std::os::unix::net::UnixStream::from)
        .and_then(monoio::net::UnixStream::from_std);
    let waiter = match waiter {
        Ok(w) => w,
        Err(e) => {
            // Parked connections would never come back: stop parking.
            log::error!("cannot wait on parked connections, parking is off: {e}");
            ctx.lot.disable();
            return;
        }
    };
    let mut events = vec![nix::sys::epoll::EpollEvent::empty(); 256];
    let mut ready = Vec::new();
    loop {
        if let Err(e) = waiter.readable(false).await {
            log::warn!("waiting on parked connections failed: {e}");
            monoio::time::sleep(Duration::from_millis(10)).await;
            continue;
        }
        ctx.lot.ready(&mut events, &mut ready);
        for (fd, info) in ready.drain(..) {
            match TcpStream::from_std(std::net::TcpStream::from(fd)) {
                Ok(stream) => spawn_session(&ctx, stream, info),
                Err(e) => {
                    log::debug!("{}: cannot resume parked connection: {e}", info.peer);
                    ctx.active.set(ctx.active.get() - 1);
                }
            }
        }
    }
}

async fn accept_loop(
    ctx: Rc<WorkerCtx>,
    listener: TcpListener,
    index: usize,
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
                ctx.metrics.connections_total.inc();
                let info = ConnInfo {
                    peer,
                    listener: index,
                    group,
                    served: 0,
                };
                spawn_session(&ctx, stream, info);
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

#[cfg(test)]
mod size_tests {
    use super::*;

    /// The future every idle connection keeps alive: keep it small (it is
    /// most of an idle keep-alive connection's memory).
    #[test]
    fn connection_future_is_small() {
        let config = Arc::new(
            Config::from_yaml(
                "listeners: [{address: '127.0.0.1:1'}]\nupstreams: {w: {backends: ['127.0.0.1:2']}}\n",
                std::path::Path::new("t"),
                Some(1),
            )
            .expect("config"),
        );
        let shared = Arc::new(Shared::new(1));
        let (dtx, _drx) = std::sync::mpsc::channel();
        let (stx, _srx) = std::sync::mpsc::channel();
        let links = WorkerLinks {
            metrics: Arc::new(WorkerMetrics::new(1)),
            dump_tx: dtx,
            scrape_tx: stx,
            access: None,
        };
        let mut rt = RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let ctx = Rc::new(WorkerCtx::new(config, shared, links));
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            let s = monoio::net::TcpStream::connect_addr(addr)
                .await
                .expect("connect");
            let info = ConnInfo {
                peer: addr,
                listener: 0,
                group: 0,
                served: 0,
            };
            let fut = crate::session::serve(ctx, s, info);
            let size = std::mem::size_of_val(&fut);
            eprintln!("connection future: {size} bytes");
            assert!(size <= 1024, "connection future grew to {size} bytes");
        });
    }
}
