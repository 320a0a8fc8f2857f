//! Per-core workers: one pinned thread, one monoio runtime, one io_uring ring.
//!
//! A worker owns everything its requests touch: its listening sockets (one
//! SO_REUSEPORT socket per address, built by `listener` on the main thread),
//! its connection tasks and its [`Shard`] (upstream pool and cursors,
//! counters, histograms). This module runs it: the ring, the accept and
//! unpark loops, the background ticks and the drain. Nothing on the request
//! path takes a lock or writes memory another core writes; the only shared
//! state is the immutable config and flags the signal thread writes and
//! workers only read.
//!
//! The ring is built inside the worker thread (SINGLE_ISSUER binds it to the
//! creating task) with COOP_TASKRUN, SINGLE_ISSUER and DEFER_TASKRUN, dropping
//! flags one by one when the kernel refuses them; when io_uring is not
//! available at all (seccomp, `kernel.io_uring_disabled`) the worker falls
//! back to monoio's epoll driver and says so in the log.

use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use monoio::io::{CancelHandle, Canceller};
use monoio::net::{TcpListener, TcpStream};
use monoio::time::TimeDriver;
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};

use crate::config::Config;
use crate::downstream::{h1, End, DRAIN_IDLE_WINDOW};
use crate::park::ConnInfo;
use crate::shard::{Shard, Shared, WorkerLinks};

/// io_uring submission queue size per worker.
const RING_ENTRIES: u32 = 4096;

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
/// the index of its entry under `listeners:`.
pub(crate) fn spawn(
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
    let ctx = Rc::new(Shard::new(config, shared, link));
    // Cancels every accept at once when draining; a cancelled accept is still
    // awaited, so a connection accepted in the race is served, never leaked.
    let canceller = Canceller::new();
    let mut loops = Vec::new();
    for (sock, listener) in socks {
        // `from_std` must run inside the runtime (it registers the fd).
        match TcpListener::from_std(sock) {
            Ok(l) => loops.push(monoio::spawn(accept_loop(
                ctx.clone(),
                l,
                listener,
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
            sweeper.upstreams.borrow_mut().sweep_idle();
        }
    });
    // Fire idle-connection and socket-operation deadlines, close expired
    // parked connections.
    let reaper = ctx.clone();
    monoio::spawn(async move {
        let l = &reaper.config.limits;
        // Socket operations' deadlines are swept here too: the period
        // follows the shortest timeout of either kind.
        let period = crate::idle::sweep_period(
            l.keepalive_timeout
                .min(l.header_timeout)
                .min(crate::park::PARK_AFTER)
                .min(l.body_timeout)
                .min(l.upstream_response_timeout)
                .min(l.upstream_body_timeout)
                .min(l.client_write_timeout),
        );
        loop {
            monoio::time::sleep(period).await;
            let now = std::time::Instant::now();
            reaper.idle.sweep(now);
            reaper.io_deadlines.sweep(now);
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
            housekeeping.tick();
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
    // Wake idle connections: they get a short last window (see downstream);
    // parked ones get the same window where they are.
    ctx.idle.fire_all();
    ctx.lot
        .shorten(std::time::Instant::now() + DRAIN_IDLE_WINDOW);
    loop {
        ctx.sweep_parked(std::time::Instant::now());
        ctx.upstreams.borrow_mut().close_idle();
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
fn spawn_session(ctx: &Rc<Shard>, stream: TcpStream, info: ConnInfo) {
    let c = ctx.clone();
    monoio::spawn(async move {
        if h1::serve(c.clone(), stream, info).await == End::Closed {
            c.active.set(c.active.get() - 1);
        }
    });
}

/// Waits on the parking lot's epoll set through the ring and starts a
/// session for every parked connection that turned readable.
async fn unpark_loop(ctx: Rc<Shard>) {
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

async fn accept_loop(ctx: Rc<Shard>, listener: TcpListener, index: usize, cancel: CancelHandle) {
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
        let registry = Arc::new(crate::upstream::Registry::from_config(&config));
        let shared = Arc::new(Shared::new(registry));
        let (dtx, _drx) = std::sync::mpsc::channel();
        let (stx, _srx) = std::sync::mpsc::channel();
        let links = WorkerLinks {
            metrics: Arc::new(crate::metrics::WorkerMetrics::new(1, 1)),
            dump_tx: dtx,
            scrape_tx: stx,
            access: None,
            seed: 1,
            worker: 0,
        };
        let mut rt = RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let ctx = Rc::new(Shard::new(config, shared, links));
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = l.local_addr().expect("addr");
            let s = monoio::net::TcpStream::connect_addr(addr)
                .await
                .expect("connect");
            let info = ConnInfo {
                peer: addr,
                listener: 0,
                served: 0,
            };
            let fut = h1::serve(ctx, s, info);
            let size = std::mem::size_of_val(&fut);
            eprintln!("connection future: {size} bytes");
            assert!(size <= 1024, "connection future grew to {size} bytes");
        });
    }
}
