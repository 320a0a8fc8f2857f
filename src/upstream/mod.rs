//! The upstream side: the backend registry, and one worker's view of it.
//!
//! [`registry`] is the backend set as the process knows it: every backend of
//! every group with a stable [`BackendId`], assigned once when the backend
//! joins and never re-derived from a list position, in immutable snapshots
//! shared (`Arc`) by the workers, the health checker and the admin thread;
//! everything indexed per backend (the health map, per-worker counters,
//! pooled connections, passive marks, in-flight counts, EWMA) is indexed by
//! `BackendId`, so it survives a change of the set. A worker takes a new
//! snapshot up in its housekeeping tick ([`Upstreams::refresh`]).
//!
//! [`Upstreams`] is one worker's state over the registry, touched by that
//! worker only: per group the selection cursor ([`select`]), the worker's
//! own TLS client config, the Host settings and the PROXY protocol version
//! it sends; per backend its passive mark ([`marks`]) and idle keep-alive
//! connections ([`pool`]).
//! [`connect`] turns a group into a connected backend: checkout or connect,
//! TCP and TLS, and the retry policy across backends.

pub(crate) mod connect;
pub(crate) mod marks;
pub(crate) mod pool;
pub(crate) mod registry;
pub(crate) mod select;

pub(crate) use registry::{BackendId, Group, Registry, Source, Wanted};

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, UpstreamConfig};
use crate::health::HealthMap;
use crate::http::request::RequestView;
use crate::metrics::WorkerMetrics;
use crate::stream::Stream;

/// A TLS client config and the name to verify, for one group.
pub(crate) type ClientTls = (
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
);

/// What a request contributes to the pick of its backend and connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Affinity {
    /// Its key hash (`balance: hash`), if it has the key.
    pub(crate) hash: Option<u32>,
    /// The backend its sticky cookie names, if valid for this group.
    pub(crate) sticky: Option<BackendId>,
    /// For a group that sends PROXY protocol headers: the addresses its
    /// connection's header carries (only a connection opened for the same
    /// client address is reused, see [`pool`]).
    pub(crate) proxy: Option<ProxySource>,
}

/// The addresses of a PROXY protocol header lbd sends: the client's, and
/// the one it reached lbd at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProxySource {
    /// The client (after any PROXY protocol header it came with).
    pub(crate) src: SocketAddr,
    /// lbd's local address of the client connection.
    pub(crate) dst: SocketAddr,
}

impl ProxySource {
    /// What a pooled connection carrying this header may be reused for.
    pub(crate) fn tag(&self) -> pool::Tag {
        pool::Tag {
            client: self.src.ip(),
            local: self.dst,
        }
    }
}

/// How a request to a backend ended, for latency-aware balancing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Outcome {
    /// A response head came back after `latency` (from the request sent).
    Response {
        /// Its status.
        status: u16,
        /// Request written to response head parsed.
        latency: Duration,
        /// When the head was parsed (the sample's time).
        at: Instant,
    },
    /// The backend failed (or the exchange was cut).
    Failed,
}

/// Sticky sessions of one group.
struct Sticky {
    cookie: Vec<u8>,
    ttl_s: Option<u64>,
    /// By member index.
    ids: Vec<select::sticky::StickyId>,
}

/// One worker's state for one group.
struct GroupState {
    selector: select::Selector,
    tls: Option<ClientTls>,
    host_override: Option<Vec<u8>>,
    default_host: Vec<u8>,
    hash_key: Option<select::hash_key::HashKey>,
    sticky: Option<Sticky>,
    slow_start_us: Option<u64>,
    panic_percent: Option<u32>,
    /// `upgrade_protocols`, lower-case.
    upgrades: Vec<Vec<u8>>,
    send_proxy_protocol: Option<crate::proxy_protocol::Version>,
}

/// One worker's state for one backend, by id: kept as long as the backend
/// is in the registry, whatever else changes.
#[derive(Debug, Clone)]
struct BackendState {
    inflight: u32,
    ewma: select::ewma::Ewma,
}

/// PeakEWMA's starting estimate before any sample (1 ms).
const DEFAULT_RTT_US: u64 = 1_000;

impl BackendState {
    fn new() -> Self {
        BackendState {
            inflight: 0,
            ewma: select::ewma::Ewma::new(DEFAULT_RTT_US),
        }
    }
}

/// Worker `seed`'s seed for group `gi`.
fn group_seed(seed: u64, gi: usize) -> u64 {
    seed ^ (gi as u64) << 32
}

/// One worker's view of the registry. Single-threaded: lives in the worker's
/// shard, borrowed briefly (never across an await).
pub(crate) struct Upstreams {
    registry: Arc<Registry>,
    config: Arc<Config>,
    seed: u64,
    health: Arc<HealthMap>,
    groups: Vec<GroupState>,
    backends: Vec<BackendState>,
    marks: marks::PassiveMarks,
    pool: pool::Pool,
    /// This worker's counters, for per-backend counts.
    pub(crate) metrics: Arc<WorkerMetrics>,
    /// `limits.upstream_connect_timeout_ms`.
    pub(crate) connect_timeout: Duration,
}

impl Upstreams {
    /// A worker's state over `registry`, with its own TLS configs; `seed`
    /// differs per worker (random and p2c draws).
    pub(crate) fn new(
        config: Arc<Config>,
        registry: Arc<Registry>,
        health: Arc<HealthMap>,
        metrics: Arc<WorkerMetrics>,
        seed: u64,
    ) -> Self {
        let groups = registry
            .groups()
            .iter()
            .zip(&config.upstreams)
            .enumerate()
            .map(|(gi, (g, up))| group_state(&registry, g, up, group_seed(seed, gi)))
            .collect();
        Upstreams {
            marks: marks::PassiveMarks::new(&registry),
            pool: pool::Pool::new(
                registry.len(),
                config.upstream_keepalive_pool_size,
                config.limits.upstream_idle_timeout,
            ),
            backends: vec![BackendState::new(); registry.len()],
            connect_timeout: config.limits.upstream_connect_timeout,
            registry,
            config,
            seed,
            health,
            groups,
            metrics,
        }
    }

    /// Takes up the newest registry snapshot if it is not the one in use
    /// (housekeeping tick; one atomic load when nothing changed).
    pub(crate) fn refresh(&mut self, live: &arc_swap::ArcSwap<Registry>) {
        if live.load().epoch() != self.registry.epoch() {
            self.apply(live.load_full());
        }
    }

    /// Switches to snapshot `next`: per-id state (in-flight counts, EWMA,
    /// marks of members that stay) carries over; a group whose members
    /// changed gets a new selection state; backends that left lose their
    /// idle connections at once (in-flight exchanges finish, and their
    /// connections are not pooled again).
    fn apply(&mut self, next: Arc<Registry>) {
        let n = next.len();
        if self.backends.len() < n {
            self.backends.resize(n, BackendState::new());
        }
        self.pool.grow(n);
        self.marks.grow(&next);
        for gi in 0..next.groups().len() {
            if next.same_members(&self.registry, gi) {
                continue;
            }
            for &id in &self.registry.groups()[gi].members {
                if !next.is_member(id) {
                    self.pool.close(id);
                    self.marks.clear(id);
                }
            }
            if let (Some(up), Some(g)) = (self.config.upstreams.get(gi), next.groups().get(gi)) {
                self.groups[gi].set_members(&next, g, up, group_seed(self.seed, gi));
            }
        }
        self.registry = next;
    }

    /// Picks an eligible backend of `group` for a request with `aff` (see
    /// [`select`]): up in the health map and not passively marked down by
    /// this worker, unless the group is in panic mode. `now`: the coarse
    /// clock (slow start, cost decay).
    pub(crate) fn select(
        &mut self,
        group: usize,
        aff: &Affinity,
        now: Instant,
    ) -> Option<BackendId> {
        let Upstreams {
            registry,
            health,
            groups,
            backends,
            marks,
            ..
        } = self;
        let g = groups.get_mut(group)?;
        let members = &registry.groups().get(group)?.members;
        let health = &**health;
        let up = |id: BackendId| marks.eligible(id, health);
        // Envoy's panic mode: too few eligible, so all are.
        let panic = g.panic_percent.is_some_and(|p| {
            let n = members.iter().filter(|&&id| up(id)).count();
            n * 100 < p as usize * members.len()
        });
        let uses_latency = g.selector.uses_latency();
        let ramp = g.slow_start_us;
        // Only slow start and cost decay need the time.
        let now_us = if ramp.is_some() || uses_latency {
            health.micros(now)
        } else {
            0
        };
        let member = |i: usize, want_cost: bool| {
            let id = members[i];
            let b = &backends[id.index()];
            let admitted = health.admin_state(id.index()) == crate::health::AdminState::Active;
            let weight = (admitted && (panic || up(id))).then(|| {
                let w = registry.backend(id).weight;
                match ramp {
                    Some(window) => select::slow_start::ramped_weight(
                        w,
                        health.up_since_us(id.index()),
                        now_us,
                        window,
                    ),
                    None => w,
                }
            });
            let cost = match weight {
                Some(w) if want_cost && uses_latency => b.ewma.cost(now_us, b.inflight, w),
                _ => 0,
            };
            select::Member {
                weight,
                inflight: b.inflight,
                cost,
            }
        };
        if let Some(s) = aff.sticky {
            if let Some(i) = members.iter().position(|&m| m == s) {
                if member(i, false).weight.is_some() {
                    return Some(s);
                }
            }
        }
        g.selector
            .pick(members.len(), member, aff.hash)
            .map(|i| members[i])
    }

    /// What `req` contributes to its pick in `group`.
    pub(crate) fn affinity(&self, group: usize, client: IpAddr, req: &RequestView<'_>) -> Affinity {
        let Some(g) = self.groups.get(group) else {
            return Affinity::default();
        };
        let headers = || req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
        let hash = g
            .hash_key
            .as_ref()
            .and_then(|k| k.hash(client, req.path, headers()));
        let sticky = g.sticky.as_ref().and_then(|s| {
            let value = select::sticky::find_cookie(headers(), &s.cookie)?;
            let i = select::sticky::find_backend(&s.ids, value)?;
            self.registry.groups()[group].members.get(i).copied()
        });
        Affinity {
            hash,
            sticky,
            proxy: None,
        }
    }

    /// The PROXY protocol version `group` sends in front of new
    /// connections, if any.
    pub(crate) fn send_proxy_protocol(
        &self,
        group: usize,
    ) -> Option<crate::proxy_protocol::Version> {
        self.groups.get(group).and_then(|g| g.send_proxy_protocol)
    }

    /// True if `group` sends PROXY protocol headers.
    pub(crate) fn sends_proxy_protocol(&self, group: usize) -> bool {
        self.send_proxy_protocol(group).is_some()
    }

    /// The sticky cookie to set on a response from `backend` for a request
    /// with `aff`: `(name, value, max_age)`, when the group is sticky and the
    /// request's cookie did not already name this backend.
    pub(crate) fn sticky_cookie(
        &self,
        group: usize,
        aff: &Affinity,
        backend: BackendId,
    ) -> Option<(&[u8], [u8; 16], Option<u64>)> {
        let s = self.groups.get(group)?.sticky.as_ref()?;
        if aff.sticky == Some(backend) {
            return None;
        }
        let members = &self.registry.groups().get(group)?.members;
        let i = members.iter().position(|&m| m == backend)?;
        Some((&s.cookie, s.ids[i].to_hex(), s.ttl_s))
    }

    /// The index of `proto` among the protocols `group` lets clients
    /// upgrade to, if it is one (case-insensitive).
    pub(crate) fn upgrade_allowed(&self, group: usize, proto: &[u8]) -> Option<usize> {
        self.groups
            .get(group)?
            .upgrades
            .iter()
            .position(|p| p.eq_ignore_ascii_case(proto))
    }

    /// Upgrade protocol `i` of `group` (see [`Self::upgrade_allowed`]).
    pub(crate) fn upgrade_protocol(&self, group: usize, i: usize) -> Option<&[u8]> {
        self.groups.get(group)?.upgrades.get(i).map(Vec::as_slice)
    }

    /// True if `group`'s balancing learns from response latency.
    pub(crate) fn uses_latency(&self, group: usize) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.selector.uses_latency())
    }

    /// A request to `id` begins (it counts as in flight until [`Self::finish`]).
    pub(crate) fn start(&mut self, id: BackendId) {
        if let Some(b) = self.backends.get_mut(id.index()) {
            b.inflight += 1;
        }
    }

    /// A request to `id` ended with `outcome`: failures and 5xx count as a
    /// slow response, so a fast-failing backend does not look fast.
    pub(crate) fn finish(&mut self, id: BackendId, outcome: Outcome) {
        let group = self.registry.backend(id).group;
        let learns = self.uses_latency(group);
        let Some(b) = self.backends.get_mut(id.index()) else {
            return;
        };
        b.inflight = b.inflight.saturating_sub(1);
        if !learns {
            return;
        }
        match outcome {
            Outcome::Response {
                status,
                latency,
                at,
            } if status < 500 => b
                .ewma
                .observe(self.health.micros(at), latency.as_micros() as u64),
            Outcome::Response { at, .. } => b.ewma.penalize(self.health.micros(at)),
            Outcome::Failed => b.ewma.penalize(self.health.micros(Instant::now())),
        }
    }

    /// Publishes this worker's in-flight counts (housekeeping tick).
    pub(crate) fn publish(&self) {
        for (i, b) in self.backends.iter().enumerate() {
            self.metrics.backend(i).inflight.set(u64::from(b.inflight));
        }
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

    /// Takes a live idle connection to `id` opened for `tag` (see
    /// [`pool`]), if any (`now`: the coarse clock).
    pub(crate) fn checkout(
        &mut self,
        id: BackendId,
        tag: Option<pool::Tag>,
        now: Instant,
    ) -> Option<Stream> {
        // A backend the admin API disabled gets nothing, pooled or not.
        if self.health.admin_state(id.index()) == crate::health::AdminState::Disabled {
            return None;
        }
        self.pool.checkout(id, tag, now)
    }

    /// Returns a connection whose exchange completed cleanly (`tag`: the
    /// client its PROXY protocol header named, if it sent one).
    pub(crate) fn checkin(
        &mut self,
        id: BackendId,
        stream: Stream,
        tag: Option<pool::Tag>,
        now: Instant,
    ) {
        // A backend that left the group while the exchange ran: close.
        if self.registry.is_member(id) {
            self.pool.checkin(id, stream, tag, now);
        }
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

/// A worker's state for group `g` (configured as `up`).
fn group_state(registry: &Registry, g: &Group, up: &UpstreamConfig, seed: u64) -> GroupState {
    let b = &up.balance;
    let mut state = GroupState {
        selector: select::Selector::new(b.balance, &[], b.hash_balance_factor, seed),
        tls: up.tls.as_ref().and_then(crate::tls::client_config),
        host_override: up.host.as_ref().map(|h| h.as_bytes().to_vec()),
        default_host: Vec::new(),
        hash_key: b.hash_key.clone(),
        sticky: b.sticky.as_ref().map(|s| Sticky {
            cookie: s.cookie.as_bytes().to_vec(),
            ttl_s: s.ttl_s,
            ids: Vec::new(),
        }),
        slow_start_us: b.slow_start.map(|d| d.as_micros() as u64),
        panic_percent: b.panic_threshold_percent,
        upgrades: up.upgrade_protocols.clone(),
        send_proxy_protocol: up.send_proxy_protocol,
    };
    state.set_members(registry, g, up, seed);
    state
}

impl GroupState {
    /// What depends on the members: the selection state (a fresh cursor,
    /// ring or draw), the default Host, the sticky cookie values.
    fn set_members(&mut self, registry: &Registry, g: &Group, up: &UpstreamConfig, seed: u64) {
        let b = &up.balance;
        let names: Vec<(&str, u32)> = g
            .members
            .iter()
            .map(|&id| {
                let m = registry.backend(id);
                (m.name.as_str(), m.weight)
            })
            .collect();
        self.selector = select::Selector::new(b.balance, &names, b.hash_balance_factor, seed);
        // A request without Host gets the group's first backend, as
        // nginx sends its `proxy_pass` host.
        self.default_host = g
            .members
            .first()
            .map(|&id| registry.backend(id).address.to_string().into_bytes())
            .unwrap_or_default();
        if let Some(s) = &mut self.sticky {
            s.ids = names
                .iter()
                .map(|&(name, _)| select::sticky::StickyId::new(&g.name, name))
                .collect();
        }
    }
}
