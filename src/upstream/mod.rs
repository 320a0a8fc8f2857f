//! The upstream side: the backend registry, and one worker's view of it.
//!
//! [`Registry`] is the backend set as the process knows it: every backend of
//! every group with a stable [`BackendId`], assigned once when the backend
//! joins the registry and never re-derived from a list position. It is built
//! on the main thread from the config and shared read-only (`Arc`) by the
//! workers, the health checker and the admin thread; everything indexed per
//! backend (the health map, per-worker counters, pooled connections, passive
//! marks) is indexed by `BackendId`. A backend set that changes at run time
//! is a change to this module only: a new registry snapshot, which workers
//! take up between requests.
//!
//! [`Upstreams`] is one worker's state over the registry, touched by that
//! worker only: per group the selection cursor ([`select`]), the worker's
//! own TLS client config and the Host settings; per backend its passive
//! mark ([`marks`]) and idle keep-alive connections ([`pool`]).
//! [`connect`] turns a group into a connected backend: checkout or connect,
//! TCP and TLS, and the retry policy across backends.

pub(crate) mod connect;
pub(crate) mod marks;
pub(crate) mod pool;
pub(crate) mod select;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::health::{CheckGroup, HealthMap};
use crate::metrics::WorkerMetrics;
use crate::stream::Stream;

/// A backend's identity for the life of the process: the index of its slot
/// in the registry, never reused for another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct BackendId(u32);

impl BackendId {
    /// The slot index (for per-backend tables).
    #[inline]
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// A backend as every thread knows it.
#[derive(Debug, Clone)]
pub(crate) struct Backend {
    /// Its id.
    pub(crate) id: BackendId,
    /// Index of its group.
    pub(crate) group: usize,
    /// Where to connect.
    pub(crate) address: SocketAddr,
    /// The configured spelling (logs, metric labels).
    pub(crate) name: String,
    /// Balancing weight, ≥ 1.
    pub(crate) weight: u32,
}

/// An upstream group: its name and members, in config order.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// The key under `upstreams:`.
    pub(crate) name: String,
    /// Its backends.
    pub(crate) members: Vec<BackendId>,
    /// Whether the group has active health checks.
    pub(crate) checked: bool,
}

/// Every backend of every group, by stable id.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    backends: Vec<Backend>,
    groups: Vec<Group>,
}

impl Registry {
    /// The registry of the configured backends (ids in config order).
    pub(crate) fn from_config(config: &Config) -> Self {
        let mut backends = Vec::new();
        let mut groups = Vec::new();
        for (gi, up) in config.upstreams.iter().enumerate() {
            let mut members = Vec::with_capacity(up.backends.len());
            for b in &up.backends {
                let id = BackendId(backends.len() as u32);
                members.push(id);
                backends.push(Backend {
                    id,
                    group: gi,
                    address: b.address,
                    name: b.name.clone(),
                    weight: b.weight,
                });
            }
            groups.push(Group {
                name: up.name.clone(),
                members,
                checked: up.health_check.is_some(),
            });
        }
        Registry { backends, groups }
    }

    /// Size of the id space (per-backend tables are this long).
    pub(crate) fn len(&self) -> usize {
        self.backends.len()
    }

    /// A backend by id.
    pub(crate) fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id.index()]
    }

    /// Every backend, by id.
    pub(crate) fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Every group, by index.
    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// What the health checker checks: each group with a `health_check`
    /// block and its members.
    pub(crate) fn check_groups(&self, config: &Config) -> Vec<CheckGroup> {
        let mut out = Vec::new();
        for (g, up) in self.groups.iter().zip(&config.upstreams) {
            let Some(check) = &up.health_check else {
                continue;
            };
            out.push(CheckGroup {
                check: check.clone(),
                tls: up.tls.as_ref().and_then(crate::tls::client_config),
                targets: g
                    .members
                    .iter()
                    .map(|&id| {
                        let b = self.backend(id);
                        (id.index(), b.name.clone(), b.address)
                    })
                    .collect(),
            });
        }
        out
    }
}

/// A TLS client config and the name to verify, for one group.
pub(crate) type ClientTls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// One worker's state for one group.
struct GroupState {
    cursor: select::RoundRobin,
    tls: Option<ClientTls>,
    host_override: Option<Vec<u8>>,
    default_host: Vec<u8>,
}

/// One worker's view of the registry. Single-threaded: lives in the worker's
/// shard, borrowed briefly (never across an await).
pub(crate) struct Upstreams {
    registry: Arc<Registry>,
    health: Arc<HealthMap>,
    groups: Vec<GroupState>,
    marks: marks::PassiveMarks,
    pool: pool::Pool,
    /// This worker's counters, for per-backend counts.
    pub(crate) metrics: Arc<WorkerMetrics>,
    /// `limits.upstream_connect_timeout_ms`.
    pub(crate) connect_timeout: Duration,
}

impl Upstreams {
    /// A worker's state over `registry`, with its own TLS configs.
    pub(crate) fn new(
        config: &Config,
        registry: Arc<Registry>,
        health: Arc<HealthMap>,
        metrics: Arc<WorkerMetrics>,
    ) -> Self {
        let groups = registry
            .groups
            .iter()
            .zip(&config.upstreams)
            .map(|(g, up)| GroupState {
                cursor: select::RoundRobin::new(
                    g.members.iter().map(|&id| registry.backend(id).weight),
                ),
                tls: up.tls.as_ref().and_then(crate::tls::client_config),
                host_override: up.host.as_ref().map(|h| h.as_bytes().to_vec()),
                // A request without Host gets the group's first backend, as
                // nginx sends its `proxy_pass` host.
                default_host: g
                    .members
                    .first()
                    .map(|&id| registry.backend(id).address.to_string().into_bytes())
                    .unwrap_or_default(),
            })
            .collect();
        Upstreams {
            marks: marks::PassiveMarks::new(&registry),
            pool: pool::Pool::new(
                registry.len(),
                config.upstream_keepalive_pool_size,
                config.limits.upstream_idle_timeout,
            ),
            registry,
            health,
            groups,
            metrics,
            connect_timeout: config.limits.upstream_connect_timeout,
        }
    }

    /// Picks the next eligible backend of `group`: up in the health map and
    /// not passively marked down by this worker.
    pub(crate) fn select(&mut self, group: usize) -> Option<BackendId> {
        let g = self.groups.get_mut(group)?;
        let members = &self.registry.groups.get(group)?.members;
        let health = &*self.health;
        let marks = &mut self.marks;
        g.cursor
            .next(|i| marks.eligible(members[i], health))
            .map(|i| members[i])
    }

    /// Marks `id` down on this worker after a failed connect (passive
    /// health); the checker's next passing check lifts it.
    pub(crate) fn mark_down(&mut self, id: BackendId) {
        self.marks.mark(id, &self.health);
    }

    /// Address of a backend.
    pub(crate) fn address(&self, id: BackendId) -> SocketAddr {
        self.registry.backend(id).address
    }

    /// This worker's TLS client config for `group`, if it speaks TLS.
    pub(crate) fn tls(&self, group: usize) -> Option<ClientTls> {
        self.groups.get(group).and_then(|g| g.tls.clone())
    }

    /// The `host` override of `group`.
    pub(crate) fn host_override(&self, group: usize) -> Option<&[u8]> {
        self.groups
            .get(group)
            .and_then(|g| g.host_override.as_deref())
    }

    /// `Host` to send for a request that carried none.
    pub(crate) fn default_host(&self, group: usize) -> &[u8] {
        self.groups
            .get(group)
            .map_or(&[], |g| g.default_host.as_slice())
    }

    /// Takes a live idle connection to `id`, if any (`now`: the coarse clock).
    pub(crate) fn checkout(&mut self, id: BackendId, now: Instant) -> Option<Stream> {
        self.pool.checkout(id, now)
    }

    /// Returns a connection whose exchange completed cleanly.
    pub(crate) fn checkin(&mut self, id: BackendId, stream: Stream, now: Instant) {
        self.pool.checkin(id, stream, now);
    }

    /// Closes idle connections past the idle timeout.
    pub(crate) fn sweep_idle(&mut self) {
        self.pool.sweep();
    }

    /// Closes every idle connection (drain).
    pub(crate) fn close_idle(&mut self) {
        self.pool.clear();
    }
}
