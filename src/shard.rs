//! One worker's state, and what it shares with the rest of the process.
//!
//! A [`Shard`] is everything a worker's tasks touch: its view of the
//! upstreams (selection, pool, passive marks), its routes, its client
//! connection count, idle deadlines and parking lot, its coarse clock, its
//! counters and latency histograms, its access-log buffer and its own TLS
//! server configs. It lives in an `Rc` on the worker's thread and nothing in
//! it is touched by another core, except the counter block, which the admin
//! thread only reads. [`Shared`] is the little that is shared: flags the
//! signal thread writes and the health map the checker writes; workers only
//! read them.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::access_log;
use crate::config::Config;
use crate::health::HealthMap;
use crate::idle::IdleTimers;
use crate::metrics::{Reply, ScrapeReply, WorkerHistograms, WorkerMetrics};
use crate::park::ParkingLot;
use crate::route::{PathScratch, Routes};
use crate::upstream::{Registry, Upstreams};

/// State shared by every thread: written by the signal and checker threads,
/// read by workers.
#[derive(Debug)]
pub(crate) struct Shared {
    /// Set once on graceful shutdown: stop accepting, finish in-flight work.
    pub(crate) shutdown: AtomicBool,
    /// Backend health, written by the checker thread only.
    pub(crate) health: Arc<HealthMap>,
    /// Dump and scrape requests for the workers' histograms.
    pub(crate) requests: crate::metrics::Requests,
    /// The backend set: the newest snapshot, replaced by the control plane
    /// ([`crate::membership`]), taken up by workers in their tick.
    pub(crate) registry: ArcSwap<Registry>,
}

impl Shared {
    /// Shared state over `registry` (every backend up; health table room
    /// for every id the registry can assign).
    pub(crate) fn new(registry: Arc<Registry>) -> Self {
        Shared {
            shutdown: AtomicBool::new(false),
            health: Arc::new(HealthMap::new(registry.capacity())),
            requests: crate::metrics::Requests::default(),
            registry: ArcSwap::new(registry),
        }
    }
}

/// What connects a worker to the rest of the process for metrics.
pub(crate) struct WorkerLinks {
    /// The worker's counter block.
    pub(crate) metrics: Arc<WorkerMetrics>,
    /// Where SIGUSR1 dumps go.
    pub(crate) dump_tx: std::sync::mpsc::Sender<Reply>,
    /// Where scrape snapshots go.
    pub(crate) scrape_tx: std::sync::mpsc::Sender<ScrapeReply>,
    /// The access log's format and channel, when configured.
    pub(crate) access: Option<(access_log::Format, access_log::WorkerLink)>,
    /// Seeds this worker's random draws (random and p2c balancing).
    pub(crate) seed: u64,
    /// The worker's index (part of every request id it makes).
    pub(crate) worker: usize,
}

/// A worker's access-log state.
struct AccessState {
    log: access_log::WorkerLog,
    link: access_log::WorkerLink,
    free_fields: Vec<access_log::Fields>,
}

/// One finished exchange, for the latency histogram and the access log.
pub(crate) struct Finished {
    /// The client.
    pub(crate) peer: SocketAddr,
    /// The request's access-log fields, if logging.
    pub(crate) fields: Option<access_log::Fields>,
    /// Status sent.
    pub(crate) status: u16,
    /// Response body bytes sent.
    pub(crate) body_bytes: u64,
    /// Head read to last byte written.
    pub(crate) elapsed: Duration,
    /// The backend that answered, if any.
    pub(crate) upstream: Option<SocketAddr>,
    /// (listener, route) that served it.
    pub(crate) route: Option<(usize, usize)>,
    /// For a tunnel: bytes carried (up, down).
    pub(crate) tunnel: Option<(u64, u64)>,
}

/// Everything one worker's tasks share. Lives in an `Rc`: single-threaded.
pub(crate) struct Shard {
    /// The immutable configuration.
    pub(crate) config: Arc<Config>,
    shared: Arc<Shared>,
    /// This worker's view of the upstreams.
    pub(crate) upstreams: RefCell<Upstreams>,
    /// Per listener: where its requests go.
    pub(crate) routes: Vec<Routes>,
    /// Per listener: its first route's slot in the per-route counters.
    route_base: Vec<usize>,
    /// Scratch space for rewritten request paths.
    pub(crate) scratch: RefCell<PathScratch>,
    /// Client connections currently open on this worker.
    pub(crate) active: Cell<usize>,
    /// Upgraded connections (tunnels) open on this worker.
    pub(crate) tunnels: Cell<usize>,
    /// Deadlines of idle client connections.
    pub(crate) idle: IdleTimers,
    /// Deadlines of socket reads and writes (this thread's [`deadline`]
    /// table).
    ///
    /// [`deadline`]: crate::deadline
    pub(crate) io_deadlines: &'static IdleTimers,
    /// Idle keep-alive connections parked without a task.
    pub(crate) lot: ParkingLot,
    /// The time as of the last housekeeping tick (at most 50 ms old), for
    /// coarse deadlines on the request path: each clock read costs about as
    /// much as parsing a small header.
    clock: Cell<Instant>,
    /// This worker's counters (written here only, read by the admin thread).
    pub(crate) metrics: Arc<WorkerMetrics>,
    hist: RefCell<WorkerHistograms>,
    access: Option<RefCell<AccessState>>,
    /// Per listener: this worker's own TLS server config, if any.
    listener_tls: Vec<Option<(Arc<rustls::ServerConfig>, Duration)>>,
    /// When a PROXY protocol refusal was last logged (one a second).
    pub(crate) proxy_protocol_log: Cell<Option<Instant>>,
    /// Some group sends PROXY protocol headers: connections learn their
    /// local address.
    pub(crate) sends_proxy_protocol: bool,
    /// This worker's request ids.
    pub(crate) request_ids: crate::downstream::request_id::Generator,
}

impl Shard {
    /// A worker's state.
    pub(crate) fn new(config: Arc<Config>, shared: Arc<Shared>, links: WorkerLinks) -> Self {
        let upstreams = Upstreams::new(
            config.clone(),
            shared.registry.load_full(),
            shared.health.clone(),
            links.metrics.clone(),
            links.seed,
        );
        let hist = WorkerHistograms::new(links.dump_tx, links.scrape_tx, config.upstreams.len());
        Shard {
            routes: config.listeners.iter().map(Routes::from_listener).collect(),
            route_base: crate::metrics::route_slots(&config).0,
            scratch: RefCell::default(),
            listener_tls: config
                .listeners
                .iter()
                .map(|l| {
                    l.tls.as_ref().and_then(|(m, t)| {
                        crate::tls::server_config(m, l.http2.is_some()).map(|c| (c, *t))
                    })
                })
                .collect(),
            proxy_protocol_log: Cell::new(None),
            sends_proxy_protocol: config
                .upstreams
                .iter()
                .any(|u| u.send_proxy_protocol.is_some()),
            request_ids: crate::downstream::request_id::Generator::new(links.worker),
            config,
            shared,
            upstreams: RefCell::new(upstreams),
            active: Cell::new(0),
            tunnels: Cell::new(0),
            idle: IdleTimers::default(),
            io_deadlines: crate::deadline::install(),
            lot: ParkingLot::new(),
            clock: Cell::new(Instant::now()),
            metrics: links.metrics,
            hist: RefCell::new(hist),
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
    pub(crate) fn coarse_now(&self) -> Instant {
        self.clock.get()
    }

    /// True once graceful shutdown began.
    pub(crate) fn shutting_down(&self) -> bool {
        self.shared.shutdown.load(Ordering::Relaxed)
    }

    /// Closes parked connections past their deadline.
    pub(crate) fn sweep_parked(&self, now: Instant) {
        if !self.lot.is_empty() {
            let closed = self.lot.sweep(now);
            self.active.set(self.active.get() - closed);
        }
    }

    /// The 50 ms housekeeping tick, off the request path: refresh the coarse
    /// clock, answer histogram requests, hand the access-log buffer over,
    /// take up a new backend set, publish the gauges.
    pub(crate) fn tick(&self) {
        self.clock.set(Instant::now());
        self.hist.borrow_mut().answer(&self.shared.requests);
        if let Some(a) = &self.access {
            Self::flush_access(&mut a.borrow_mut());
        }
        self.metrics
            .connections_active
            .set(self.active.get() as u64);
        self.metrics.connections_parked.set(self.lot.len() as u64);
        self.metrics.tunnels_active.set(self.tunnels.get() as u64);
        let mut upstreams = self.upstreams.borrow_mut();
        upstreams.refresh(&self.shared.registry);
        upstreams.publish();
    }

    /// This worker's TLS server config for `listener`, if it terminates TLS.
    pub(crate) fn listener_tls(
        &self,
        listener: usize,
    ) -> Option<(Arc<rustls::ServerConfig>, Duration)> {
        self.listener_tls.get(listener).cloned().flatten()
    }

    /// With an access log: the request's fields, captured from its head
    /// (storage reused from a per-worker free list). `None` without one.
    pub(crate) fn access_fields(&self, head: &[u8]) -> Option<access_log::Fields> {
        let a = self.access.as_ref()?;
        let mut f = a.borrow_mut().free_fields.pop().unwrap_or_default();
        f.capture(head);
        Some(f)
    }

    /// Returns unused fields to the free list.
    pub(crate) fn give_fields(&self, f: access_log::Fields) {
        if let Some(a) = &self.access {
            let mut a = a.borrow_mut();
            if a.free_fields.len() < 256 {
                a.free_fields.push(f);
            }
        }
    }

    /// Records one exchange: its latency (when `record`, also in its
    /// group's histogram), its route's status count, and its access-log
    /// line when logging.
    pub(crate) fn finish(&self, done: Finished, record: bool) {
        let group = done.route.and_then(|(l, r)| {
            let slot = self.route_base.get(l)? + r;
            self.metrics.route_response(slot, done.status);
            self.routes.get(l)?.group(r)
        });
        if record {
            self.hist.borrow_mut().record(done.elapsed, group);
        }
        let Some(fields) = done.fields else { return };
        let Some(a) = &self.access else { return };
        let mut a = a.borrow_mut();
        let entry = access_log::Entry {
            client: done.peer.ip(),
            fields: &fields,
            status: done.status,
            body_bytes: done.body_bytes,
            duration: done.elapsed,
            upstream: done.upstream,
            route: done.route.and_then(|(l, r)| self.routes.get(l)?.name(r)),
            tunnel: done.tunnel,
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
