//! The typed configuration: `conf.yaml` parsed, validated and frozen.
//!
//! This module owns every configuration key lbd understands, its default and
//! its documentation (README's config reference mirrors the doc comments
//! here). Pingora's server keys keep Pingora's names and meanings so a Pingora
//! user's `conf.yaml` loads; Pingora keys lbd does not implement are accepted
//! with a warning; any other unknown key is an error naming the key.
//! Validation happens once, at start (and under `-t`): every error names the
//! key and the offending value. Each section's rules sit beside its `Raw*`
//! struct; `validate` runs the sections in a fixed order and stops at the
//! first error. After start the config is immutable and shared read-only
//! (`Arc<Config>`) by every thread.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::IgnoredAny;
use serde::Deserialize;

mod balance;
mod discovery;
mod forwarding;
mod routes;

pub use balance::BalanceConfig;
pub use discovery::{DiscoveryConfig, DiscoveryName};
pub use forwarding::{ListenerForwarding, ProxyProtocolConfig, RequestIdConfig};
pub use routes::{HeaderPair, ListenerRoutes, RouteConfig};

/// A configuration error: which key, which value, what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path given with `-c`.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The YAML did not parse, or a key is unknown or has the wrong type.
    #[error("config file {path}: {}{message}", key.as_ref().map(|k| format!("config key `{k}`: ")).unwrap_or_default())]
    Parse {
        /// The path given with `-c`.
        path: PathBuf,
        /// Dotted path of the key at fault, when the error is about one key
        /// (a type error, an unknown key); `None` for a YAML syntax error.
        key: Option<String>,
        /// What is wrong, with the line and column, then the line quoted.
        message: String,
    },
    /// A file the configuration names cannot be created where it says
    /// (`-t` checks this, and so does a start before it forks).
    #[error("config key `{key}`: {reason}")]
    Path {
        /// The key, e.g. `error_log`.
        key: &'static str,
        /// What is wrong, naming the path.
        reason: String,
    },
    /// A key has a value that parses but is not acceptable.
    #[error("config key `{key}`: invalid value `{value}`: {reason}")]
    Invalid {
        /// Dotted path of the key, e.g. `upstreams.web.backends[1].weight`.
        key: String,
        /// The value as written (or as understood).
        value: String,
        /// Why it is rejected.
        reason: String,
    },
}

fn invalid(
    key: impl Into<String>,
    value: impl fmt::Display,
    reason: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

/// `v` if it lies in `range`, else the error naming `key`, `v` and `reason`.
fn in_range<T: PartialOrd + fmt::Display>(
    key: impl Into<String>,
    v: T,
    range: impl RangeBounds<T>,
    reason: impl Into<String>,
) -> Result<T, ConfigError> {
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(invalid(key, v, reason))
    }
}

/// A space, a control character or DEL: never part of a path or host name.
fn is_space_or_control(b: u8) -> bool {
    b <= b' ' || b == 0x7f
}

/// `conf.yaml` as written. Field docs are the reference for each key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Config format version; Pingora's constant `1`. Optional.
    #[serde(default)]
    version: Option<u32>,
    /// Worker threads, one per core. Default: the number of CPUs. `--threads` overrides.
    #[serde(default)]
    threads: Option<usize>,
    /// Where the daemon writes its pid (issue: lifecycle). Default: none.
    #[serde(default)]
    pid_file: Option<PathBuf>,
    /// Log file; default stderr. `RUST_LOG` filters (default `info`).
    #[serde(default)]
    error_log: Option<PathBuf>,
    /// Unix socket for the listening-socket hand-over on upgrade.
    #[serde(default)]
    upgrade_sock: Option<PathBuf>,
    /// Run in the background (also `-d`).
    #[serde(default)]
    daemon: Option<bool>,
    /// Seconds in-flight requests get to finish after SIGTERM (Pingora: 300).
    #[serde(default)]
    grace_period_seconds: Option<u64>,
    /// Extra seconds after the grace period before a hard exit (Pingora: 5).
    #[serde(default)]
    graceful_shutdown_timeout_seconds: Option<u64>,
    /// Idle upstream keep-alive connections kept per backend per worker (Pingora: 128).
    #[serde(default)]
    upstream_keepalive_pool_size: Option<usize>,
    /// Upper bound on connection attempts per request across backends (Pingora: 16).
    #[serde(default)]
    max_retries: Option<usize>,
    /// Seconds either side of an upgrade waits for the other (Pingora: 5 retries, 1 s apart).
    #[serde(default)]
    upgrade_sock_connect_accept_max_retries: Option<u64>,

    /// Where SIGUSR1 writes the latency histogram. Default: `lbd-latency.hgrm`
    /// beside `error_log`, or in the working directory.
    #[serde(default)]
    histogram_file: Option<PathBuf>,
    /// The admin endpoint (`/metrics`, `/health`). Default: none.
    #[serde(default)]
    admin: Option<RawAdmin>,
    /// The access log. Default: off.
    #[serde(default)]
    access_log: Option<RawAccessLog>,
    /// The addresses lbd listens on.
    #[serde(default)]
    listeners: Vec<RawListener>,
    /// Named groups of backends.
    #[serde(default)]
    upstreams: BTreeMap<String, RawUpstream>,
    /// Limits and timeouts (all finite by default).
    #[serde(default)]
    limits: RawLimits,
    /// Clients whose forwarding headers are kept, for every listener without
    /// its own. Default: none (every client's are replaced).
    #[serde(default)]
    trusted_proxies: Option<forwarding::RawCidrs>,
    /// The request-id header, for every listener without its own. Default: off.
    #[serde(default)]
    request_id: Option<forwarding::RawRequestId>,

    // Pingora keys lbd accepts but does not implement: loaded, warned about.
    #[serde(default)]
    user: Option<IgnoredAny>,
    #[serde(default)]
    group: Option<IgnoredAny>,
    #[serde(default)]
    working_directory: Option<IgnoredAny>,
    #[serde(default)]
    listener_tasks_per_fd: Option<IgnoredAny>,
    #[serde(default)]
    work_stealing: Option<IgnoredAny>,
    #[serde(default)]
    ca_file: Option<IgnoredAny>,
    #[serde(default)]
    client_bind_to_ipv4: Option<IgnoredAny>,
    #[serde(default)]
    client_bind_to_ipv6: Option<IgnoredAny>,
    #[serde(default)]
    upstream_connect_offload_threadpools: Option<IgnoredAny>,
    #[serde(default)]
    upstream_connect_offload_thread_per_pool: Option<IgnoredAny>,
    #[serde(default)]
    upstream_debug_ssl_keylog: Option<IgnoredAny>,
    #[serde(default)]
    max_blocking_threads: Option<IgnoredAny>,
    #[serde(default)]
    blocking_threads_ttl_seconds: Option<IgnoredAny>,
    #[serde(default)]
    daemon_wait_for_ready: Option<IgnoredAny>,
    #[serde(default)]
    daemon_ready_timeout_seconds: Option<IgnoredAny>,
    #[serde(default)]
    daemon_notify_timeout_seconds: Option<IgnoredAny>,
    #[serde(default)]
    s2n_config_cache_size: Option<IgnoredAny>,
}

/// The server keys. The keys without a rule (`pid_file`, `error_log`,
/// `upgrade_sock`, `daemon`, the grace keys, the pool size,
/// `histogram_file`) only take their defaults, in `validate`.
impl RawConfig {
    /// `version`: only `1` exists.
    fn version(&self) -> Result<(), ConfigError> {
        match self.version {
            Some(v) if v != 1 => Err(invalid("version", v, "only version 1 exists")),
            _ => Ok(()),
        }
    }

    /// `threads`, or `--threads` which wins: 1 to 1024. Default: the CPUs.
    fn threads(&self, threads_override: Option<usize>) -> Result<usize, ConfigError> {
        let key = if threads_override.is_some() {
            "--threads"
        } else {
            "threads"
        };
        match threads_override.or(self.threads) {
            Some(0) => Err(invalid(key, 0, "must be at least 1")),
            Some(n) if n > 1024 => Err(invalid(key, n, "at most 1024 worker threads")),
            Some(n) => Ok(n),
            None => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        }
    }

    /// `max_retries`: at least one attempt. Default 16.
    fn max_retries(&self) -> Result<usize, ConfigError> {
        let n = self.max_retries.unwrap_or(16);
        in_range("max_retries", n, 1.., "must be at least 1 (one attempt)")
    }

    /// `upgrade_sock_connect_accept_max_retries`: 1 to 3600 s. Default 5.
    fn upgrade_wait(&self) -> Result<Duration, ConfigError> {
        let n = self.upgrade_sock_connect_accept_max_retries.unwrap_or(5);
        let reason = "must be from 1 to 3600 (one retry per second)";
        in_range(
            "upgrade_sock_connect_accept_max_retries",
            n,
            1..=3600,
            reason,
        )
        .map(Duration::from_secs)
    }

    /// One warning per Pingora-only key present, in declaration order.
    fn pingora_only_warnings(&self) -> Vec<String> {
        // Each key's name is its field's name.
        macro_rules! present {
            ($raw:expr; $($key:ident),* $(,)?) => {
                [$((stringify!($key), $raw.$key.is_some())),*]
            };
        }
        let keys = present!(self;
            user, group, working_directory, listener_tasks_per_fd, work_stealing, ca_file,
            client_bind_to_ipv4, client_bind_to_ipv6, upstream_connect_offload_threadpools,
            upstream_connect_offload_thread_per_pool, upstream_debug_ssl_keylog,
            max_blocking_threads, blocking_threads_ttl_seconds, daemon_wait_for_ready,
            daemon_ready_timeout_seconds, daemon_notify_timeout_seconds, s2n_config_cache_size,
        );
        keys.into_iter()
            .filter(|&(_, present)| present)
            .map(|(key, _)| {
                format!("config key `{key}` is a Pingora key lbd does not implement; ignored")
            })
            .collect()
    }
}

/// `admin:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    /// `IP:port` for `GET /metrics`, `GET /health` and the upstreams API.
    address: String,
    /// A file holding the bearer token write requests must carry
    /// (`Authorization: Bearer <token>`). Required when `address` is not
    /// loopback. Default: none (writes allowed from the loopback address).
    #[serde(default)]
    token_file: Option<PathBuf>,
}

impl RawAdmin {
    /// `admin.address`: `IP:port`; `admin.token_file`: a readable file with
    /// a non-empty token, required off loopback.
    fn validate(&self) -> Result<(SocketAddr, Option<String>), ConfigError> {
        let addr: SocketAddr = self
            .address
            .parse()
            .map_err(|_| invalid("admin.address", &self.address, "expected IP:port"))?;
        let token = match &self.token_file {
            None => None,
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    invalid("admin.token_file", p.display(), format!("cannot read: {e}"))
                })?;
                let t = text.trim().to_string();
                if t.is_empty() || t.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(invalid(
                        "admin.token_file",
                        p.display(),
                        "must hold one token of visible characters",
                    ));
                }
                Some(t)
            }
        };
        if token.is_none() && !addr.ip().is_loopback() {
            return Err(invalid(
                "admin.address",
                &self.address,
                "not a loopback address: set `admin.token_file` so the write API needs a token",
            ));
        }
        Ok((addr, token))
    }
}

/// `access_log:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessLog {
    /// File to append to.
    path: PathBuf,
    /// `combined` (default), `common` or `json`.
    #[serde(default)]
    format: Option<String>,
}

impl RawAccessLog {
    /// `access_log.format`: one of the three formats.
    fn validate(&self) -> Result<(PathBuf, crate::access_log::Format), ConfigError> {
        let format = match self.format.as_deref().unwrap_or("combined") {
            "combined" => crate::access_log::Format::Combined,
            "common" => crate::access_log::Format::Common,
            "json" => crate::access_log::Format::Json,
            other => {
                return Err(invalid(
                    "access_log.format",
                    other,
                    "must be `combined`, `common` or `json`",
                ))
            }
        };
        Ok((self.path.clone(), format))
    }
}

/// One `listeners:` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    /// `IP:port` to listen on.
    address: String,
    /// Upstream group this listener balances to; optional when there is one
    /// group. The shorthand for a single default route; exclusive with
    /// `routes`.
    #[serde(default)]
    upstream: Option<String>,
    /// Host and path routes, most specific first (see `route`).
    #[serde(default)]
    routes: Option<Vec<routes::RawRoute>>,
    /// listen(2) backlog per socket (capped by `net.core.somaxconn`). Default 4096.
    #[serde(default)]
    backlog: Option<i32>,
    /// Terminate TLS on this listener.
    #[serde(default)]
    tls: Option<RawListenerTls>,
    /// Accept PROXY protocol headers from trusted sources. Default: off.
    #[serde(default)]
    proxy_protocol: Option<forwarding::RawProxyProtocol>,
    /// `x-forwarded` (default), `rfc7239`, `both` or `none`.
    #[serde(default)]
    forwarded: Option<String>,
    /// Clients whose forwarding headers are kept. Default: the top-level key.
    #[serde(default)]
    trusted_proxies: Option<forwarding::RawCidrs>,
    /// The request-id header. Default: the top-level key.
    #[serde(default)]
    request_id: Option<forwarding::RawRequestId>,
    /// Serve HTTP/2: ALPN `h2` on a TLS listener (default on), h2c with
    /// prior knowledge on a plain one (default off).
    #[serde(default)]
    http2: Option<bool>,
    /// Most concurrent streams per HTTP/2 connection. Default 128.
    #[serde(default)]
    http2_max_concurrent_streams: Option<u32>,
    /// An HTTP/2 connection with no open stream for this long gets GOAWAY
    /// and is closed. Default: `keepalive_timeout_ms`.
    #[serde(default)]
    http2_idle_timeout_ms: Option<u64>,
}

/// `listeners`: at least one, each checked in order.
fn validate_listeners(
    raw: &[RawListener],
    upstreams: &BTreeMap<String, RawUpstream>,
    defaults: &forwarding::Defaults,
) -> Result<Vec<ListenerConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            "listeners",
            "[]",
            "at least one listener is required",
        ));
    }
    let mut listeners = Vec::with_capacity(raw.len());
    for (i, l) in raw.iter().enumerate() {
        let listener = l.validate(i, upstreams, &listeners, defaults)?;
        listeners.push(listener);
    }
    Ok(listeners)
}

impl RawListener {
    /// `listeners[i]`: `address` (not one of `earlier`'s), `upstream`,
    /// `backlog`, `tls`, then the forwarding keys (over `defaults`).
    fn validate(
        &self,
        i: usize,
        upstreams: &BTreeMap<String, RawUpstream>,
        earlier: &[ListenerConfig],
        defaults: &forwarding::Defaults,
    ) -> Result<ListenerConfig, ConfigError> {
        let key = format!("listeners[{i}].address");
        let address: SocketAddr = self
            .address
            .parse()
            .map_err(|_| invalid(&key, &self.address, "expected IP:port, e.g. 0.0.0.0:6188"))?;
        if earlier.iter().any(|o| o.address == address) {
            return Err(invalid(&key, &self.address, "address listed twice"));
        }
        let routes = match (&self.routes, &self.upstream) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("listeners[{i}].upstream"),
                    self.upstream.as_deref().unwrap_or_default(),
                    "`upstream` and `routes` are exclusive: add `{ upstream: NAME }` as a default route",
                ))
            }
            (Some(r), None) => routes::validate(i, r, upstreams)?,
            (None, _) => ListenerRoutes::single(self.upstream_index(i, upstreams)?),
        };
        let backlog = self.backlog.unwrap_or(4096);
        let backlog = in_range(
            format!("listeners[{i}].backlog"),
            backlog,
            1..,
            "must be at least 1",
        )?;
        let tls = self.tls.as_ref().map(|t| t.validate(i)).transpose()?;
        let raw = forwarding::RawListenerForwarding {
            proxy_protocol: self.proxy_protocol.as_ref(),
            forwarded: self.forwarded.as_deref(),
            trusted_proxies: self.trusted_proxies.as_ref(),
            request_id: self.request_id.as_ref(),
        };
        let forwarding = forwarding::listener(i, &raw, defaults)?;
        let http2 = self.http2(i, tls.is_some())?;
        Ok(ListenerConfig {
            address,
            routes,
            backlog,
            tls,
            forwarding,
            http2,
        })
    }

    /// `listeners[i].http2` (default: on with `tls`, off without),
    /// `http2_max_concurrent_streams` (1 to 10000, default 128),
    /// `http2_idle_timeout_ms` (1 to 3600000).
    fn http2(&self, i: usize, tls: bool) -> Result<Option<Http2Config>, ConfigError> {
        let max_concurrent_streams = in_range(
            format!("listeners[{i}].http2_max_concurrent_streams"),
            self.http2_max_concurrent_streams.unwrap_or(128),
            1..=10_000,
            "must be 1 to 10000",
        )?;
        let idle_timeout = self
            .http2_idle_timeout_ms
            .map(|ms| {
                in_range(
                    format!("listeners[{i}].http2_idle_timeout_ms"),
                    ms,
                    1..=3_600_000,
                    "must be 1 to 3600000",
                )
                .map(Duration::from_millis)
            })
            .transpose()?;
        Ok(self.http2.unwrap_or(tls).then_some(Http2Config {
            max_concurrent_streams,
            idle_timeout,
        }))
    }

    /// `listeners[i].upstream`: the group's index in name order; optional
    /// when there is one group.
    fn upstream_index(
        &self,
        i: usize,
        upstreams: &BTreeMap<String, RawUpstream>,
    ) -> Result<usize, ConfigError> {
        let key = format!("listeners[{i}].upstream");
        match &self.upstream {
            Some(name) => upstreams.keys().position(|k| k == name).ok_or_else(|| {
                invalid(
                    key,
                    name,
                    "no upstream group with this name under `upstreams`",
                )
            }),
            None if upstreams.len() == 1 => Ok(0),
            None => Err(invalid(
                key,
                "(missing)",
                "required when there is more than one upstream group",
            )),
        }
    }
}

/// `listeners[i].tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListenerTls {
    /// Default certificate chain (PEM, leaf first).
    cert_file: PathBuf,
    /// Its private key (PEM).
    key_file: PathBuf,
    /// More certificates, chosen by SNI.
    #[serde(default)]
    sni: Vec<RawSniCert>,
    /// Handshake deadline. Default 10000.
    #[serde(default)]
    handshake_timeout_ms: Option<u64>,
    /// Resume sessions with stateless tickets, one key per process shared
    /// by the workers. Default true.
    #[serde(default)]
    session_tickets: Option<bool>,
}

impl RawListenerTls {
    /// `listeners[i].tls`: `handshake_timeout_ms` (1 to 600000), then the
    /// certificates and keys, loaded.
    fn validate(&self, i: usize) -> Result<(crate::tls::TlsMaterial, Duration), ConfigError> {
        let hs = in_range(
            format!("listeners[{i}].tls.handshake_timeout_ms"),
            self.handshake_timeout_ms.unwrap_or(10_000),
            1..=600_000,
            "must be from 1 to 600000",
        )?;
        let hs = Duration::from_millis(hs);
        let lt = crate::tls::ListenerTls {
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            sni: self
                .sni
                .iter()
                .map(|c| crate::tls::SniCert {
                    names: c.names.clone(),
                    cert_file: c.cert_file.clone(),
                    key_file: c.key_file.clone(),
                })
                .collect(),
            session_tickets: self.session_tickets.unwrap_or(true),
        };
        Ok((crate::tls::load_listener(i, &lt).map_err(tls_invalid)?, hs))
    }
}

/// `listeners[i].tls.sni[j]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSniCert {
    /// Server names (exact match) that select this certificate.
    names: Vec<String>,
    cert_file: PathBuf,
    key_file: PathBuf,
}

/// `upstreams.<name>.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    /// SNI sent, and the name the certificate must match.
    sni: String,
    /// CA bundle (PEM). Default: the webpki root set.
    #[serde(default)]
    ca_file: Option<PathBuf>,
    /// Verify the backend certificate. Default true.
    #[serde(default)]
    verify: Option<bool>,
}

impl RawUpstreamTls {
    /// `upstreams.<group>.tls`: a warning when `verify` is false, then the
    /// CA bundle, loaded.
    fn validate(
        &self,
        group: &str,
        warnings: &mut Vec<String>,
    ) -> Result<crate::tls::TlsMaterial, ConfigError> {
        let verify = self.verify.unwrap_or(true);
        if !verify {
            warnings.push(format!(
                "upstreams.{group}.tls.verify is false: backend certificates are NOT verified; \
                 anyone on the path can impersonate these backends"
            ));
        }
        let ut = crate::tls::UpstreamTls {
            sni: self.sni.clone(),
            ca_file: self.ca_file.clone(),
            verify,
        };
        crate::tls::load_upstream(group, &ut).map_err(tls_invalid)
    }
}

/// One `upstreams:` group.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    /// `IP:port` strings or `{ address, weight }` maps.
    #[serde(default)]
    backends: Vec<RawBackend>,
    /// Active health checks; none means every backend is always eligible.
    #[serde(default)]
    health_check: Option<RawHealthCheck>,
    /// Speak TLS to the backends.
    #[serde(default)]
    tls: Option<RawUpstreamTls>,
    /// Host header sent upstream. Default: the client's Host.
    #[serde(default)]
    host: Option<String>,
    /// `round_robin` (default), `least_conn`, `p2c`, `random` or `hash`.
    #[serde(default)]
    balance: Option<String>,
    /// `balance: hash`: `{ key: client_ip | uri | path | header:NAME |
    /// cookie:NAME | query:NAME }`.
    #[serde(default)]
    hash: Option<balance::RawHash>,
    /// `balance: hash`: bounded load, percent of the average in-flight load
    /// a backend may carry before its keys move on (HAProxy's
    /// `hash-balance-factor`). Default: unbounded.
    #[serde(default)]
    hash_balance_factor: Option<u32>,
    /// `{ cookie: NAME, ttl_s: N }`: sticky sessions by cookie. Default: off.
    #[serde(default)]
    sticky: Option<balance::RawSticky>,
    /// A backend that (re)joins ramps its weight from 10% over this long.
    /// Default: off.
    #[serde(default)]
    slow_start_ms: Option<u64>,
    /// Below this share of eligible backends, balance over all of them
    /// (Envoy's panic mode). Default: off.
    #[serde(default)]
    panic_threshold_percent: Option<u32>,
    /// Protocols clients may upgrade to through this group (RFC 9110
    /// §7.8). Default `[websocket]`.
    #[serde(default)]
    upgrade_protocols: Option<Vec<String>>,
    /// This group's tunnels close after this long idle. Default:
    /// `limits.tunnel_idle_timeout_ms`.
    #[serde(default)]
    tunnel_idle_timeout_ms: Option<u64>,
    /// `v1` or `v2`: a PROXY protocol header in front of every new
    /// connection to the group's backends (and its health checks). Default: none.
    #[serde(default)]
    send_proxy_protocol: Option<String>,
    /// Backends from DNS (A/AAAA or SRV records), besides `backends`.
    /// Default: none.
    #[serde(default)]
    discovery: Option<discovery::RawDiscovery>,
}

/// `upstreams`: at least one group, each checked in name order (the order
/// [`ListenerConfig::upstream`] indexes).
fn validate_upstreams(
    raw: &BTreeMap<String, RawUpstream>,
    warnings: &mut Vec<String>,
) -> Result<Vec<UpstreamConfig>, ConfigError> {
    if raw.is_empty() {
        return Err(invalid(
            "upstreams",
            "{}",
            "at least one upstream group is required",
        ));
    }
    raw.iter()
        .map(|(name, up)| up.validate(name, warnings))
        .collect()
}

impl RawUpstream {
    /// `upstreams.<name>`: `backends` (at least one), `health_check`, `tls`,
    /// `host`.
    fn validate(
        &self,
        name: &str,
        warnings: &mut Vec<String>,
    ) -> Result<UpstreamConfig, ConfigError> {
        let discovery = self
            .discovery
            .as_ref()
            .map(|d| d.validate(name))
            .transpose()?;
        if self.backends.is_empty() && discovery.is_none() {
            return Err(invalid(
                format!("upstreams.{name}.backends"),
                "[]",
                "at least one backend is required (or a `discovery` block)",
            ));
        }
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| b.validate(name, i))
            .collect::<Result<_, _>>()?;
        let health_check = self
            .health_check
            .as_ref()
            .map(|h| h.validate(name))
            .transpose()?;
        let tls = self
            .tls
            .as_ref()
            .map(|t| t.validate(name, warnings))
            .transpose()?;
        let host = self.host(name)?;
        let balance = balance::validate(
            name,
            &balance::RawBalance {
                balance: &self.balance,
                hash: &self.hash,
                hash_balance_factor: self.hash_balance_factor,
                sticky: &self.sticky,
                slow_start_ms: self.slow_start_ms,
                panic_threshold_percent: self.panic_threshold_percent,
            },
        )?;
        let upgrade_protocols = self.upgrade_protocols(name)?;
        let tunnel_idle_timeout = self
            .tunnel_idle_timeout_ms
            .map(|ms| {
                in_range(
                    format!("upstreams.{name}.tunnel_idle_timeout_ms"),
                    ms,
                    1..,
                    "must be at least 1 ms",
                )
                .map(Duration::from_millis)
            })
            .transpose()?;
        let send_proxy_protocol =
            forwarding::send_proxy_protocol(name, self.send_proxy_protocol.as_deref())?;
        Ok(UpstreamConfig {
            name: name.to_owned(),
            backends,
            health_check,
            tls,
            host,
            balance,
            upgrade_protocols,
            tunnel_idle_timeout,
            send_proxy_protocol,
            discovery,
        })
    }

    /// `upstreams.<name>.upgrade_protocols`: protocol names (tokens),
    /// lower-cased; default `websocket`.
    fn upgrade_protocols(&self, name: &str) -> Result<Vec<Vec<u8>>, ConfigError> {
        let Some(list) = &self.upgrade_protocols else {
            return Ok(vec![b"websocket".to_vec()]);
        };
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                if p.is_empty() || !p.bytes().all(token) {
                    return Err(invalid(
                        format!("upstreams.{name}.upgrade_protocols[{i}]"),
                        p,
                        "must be a protocol name such as `websocket`",
                    ));
                }
                Ok(p.to_ascii_lowercase().into_bytes())
            })
            .collect()
    }

    /// `upstreams.<name>.host`: a host name (no spaces, controls or `/`).
    fn host(&self, name: &str) -> Result<Option<String>, ConfigError> {
        match &self.host {
            Some(h) if h.is_empty() || h.bytes().any(|b| is_space_or_control(b) || b == b'/') => {
                Err(invalid(
                    format!("upstreams.{name}.host"),
                    h,
                    "must be a host name",
                ))
            }
            host => Ok(host.clone()),
        }
    }
}

/// `upstreams.<name>.health_check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    /// `tcp` (connect) or `http` (GET `path`, check the status). Default tcp.
    #[serde(default)]
    kind: Option<String>,
    /// Time between checks of a backend. Default 1000.
    #[serde(default)]
    interval_ms: Option<u64>,
    /// Connect (and, for http, response) timeout. Default 1000.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Consecutive successes to become healthy. Default 1.
    #[serde(default)]
    rise: Option<u32>,
    /// Consecutive failures to become unhealthy. Default 1.
    #[serde(default)]
    fall: Option<u32>,
    /// http: request path. Default `/`.
    #[serde(default)]
    path: Option<String>,
    /// http: Host header. Default: the backend's address.
    #[serde(default)]
    host: Option<String>,
    /// http: the status that passes. Default: any 2xx.
    #[serde(default)]
    expected_status: Option<u16>,
}

/// The dotted name of `upstreams.<group>.health_check.<k>`.
fn health_key(group: &str, k: &str) -> String {
    format!("upstreams.{group}.health_check.{k}")
}

impl RawHealthCheck {
    /// `upstreams.<group>.health_check`: the timings, the thresholds, then
    /// `kind` and its keys.
    fn validate(&self, group: &str) -> Result<HealthCheckConfig, ConfigError> {
        let timing = |k: &str, v: Option<u64>, default: u64| {
            let reason = "must be from 1 to 3600000 ms";
            in_range(
                health_key(group, k),
                v.unwrap_or(default),
                1..=3_600_000,
                reason,
            )
            .map(Duration::from_millis)
        };
        let threshold = |k: &str, v: Option<u32>| {
            in_range(
                health_key(group, k),
                v.unwrap_or(1),
                1..=100,
                "must be from 1 to 100",
            )
        };
        let interval = timing("interval_ms", self.interval_ms, 1000)?;
        let timeout = timing("timeout_ms", self.timeout_ms, 1000)?;
        let rise = threshold("rise", self.rise)?;
        let fall = threshold("fall", self.fall)?;
        let kind = self.kind(group)?;
        Ok(HealthCheckConfig {
            kind,
            interval,
            timeout,
            rise,
            fall,
        })
    }

    /// `kind`: `tcp` (default) takes none of the http keys; `http` checks them.
    fn kind(&self, group: &str) -> Result<CheckKind, ConfigError> {
        match self.kind.as_deref().unwrap_or("tcp") {
            "tcp" => {
                for (k, set) in [
                    ("path", self.path.is_some()),
                    ("host", self.host.is_some()),
                    ("expected_status", self.expected_status.is_some()),
                ] {
                    if set {
                        return Err(invalid(
                            health_key(group, k),
                            "(set)",
                            "only meaningful with `kind: http`",
                        ));
                    }
                }
                Ok(CheckKind::Tcp)
            }
            "http" => self.http(group),
            other => Err(invalid(
                health_key(group, "kind"),
                other,
                "must be `tcp` or `http`",
            )),
        }
    }

    /// `kind: http`: `path` (default `/`), `host`, `expected_status`.
    fn http(&self, group: &str) -> Result<CheckKind, ConfigError> {
        let path = self.path.clone().unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') || path.bytes().any(is_space_or_control) {
            return Err(invalid(
                health_key(group, "path"),
                &path,
                "must start with / and contain no spaces or controls",
            ));
        }
        if let Some(host) = &self.host {
            if host.is_empty() || host.bytes().any(is_space_or_control) {
                let reason = "must be a non-empty host name";
                return Err(invalid(health_key(group, "host"), host, reason));
            }
        }
        if let Some(s) = self.expected_status {
            let key = health_key(group, "expected_status");
            in_range(key, s, 100..=599, "must be an HTTP status 100-599")?;
        }
        Ok(CheckKind::Http {
            path,
            host: self.host.clone(),
            expected_status: self.expected_status,
        })
    }
}

/// A backend: `"IP:port"` or `{ address: "IP:port", weight: N }`.
#[derive(Debug)]
enum RawBackend {
    Plain(String),
    Weighted(RawWeightedBackend),
}

/// Not `#[serde(untagged)]`: an untagged enum buffers the node and reports
/// only "did not match any variant", which hides the key at fault
/// (`backends[1].weight: ten`). A string is the plain form; a map is handed
/// to [`RawWeightedBackend`], so its errors name its keys.
impl<'de> Deserialize<'de> for RawBackend {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Backend;
        impl<'de> serde::de::Visitor<'de> for Backend {
            type Value = RawBackend;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"IP:port\" or { address: \"IP:port\", weight: N }")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<RawBackend, E> {
                Ok(RawBackend::Plain(s.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawBackend, A::Error> {
                let map = serde::de::value::MapAccessDeserializer::new(map);
                RawWeightedBackend::deserialize(map).map(RawBackend::Weighted)
            }
        }
        d.deserialize_any(Backend)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeightedBackend {
    address: String,
    #[serde(default)]
    weight: Option<i64>,
}

impl RawBackend {
    /// `upstreams.<group>.backends[i]`: an address with a port other than
    /// 0; `weight` 1 to 10000, default 1.
    fn validate(&self, group: &str, i: usize) -> Result<BackendConfig, ConfigError> {
        let (addr, weight) = match self {
            RawBackend::Plain(a) => (a.as_str(), 1i64),
            RawBackend::Weighted(w) => (w.address.as_str(), w.weight.unwrap_or(1)),
        };
        let key = format!("upstreams.{group}.backends[{i}]");
        let address = parse_address(&format!("{key}.address"), addr)?;
        if address.port() == 0 {
            return Err(invalid(
                format!("{key}.address"),
                addr,
                "port 0 is not a backend",
            ));
        }
        let weight = in_range(
            format!("{key}.weight"),
            weight,
            1..=10_000,
            "weight must be an integer from 1 to 10000",
        )?;
        Ok(BackendConfig {
            address,
            name: addr.to_string(),
            weight: weight as u32,
        })
    }
}

/// `limits:`: every limit and timeout, each finite by default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    /// Whole-head read deadline; trickled bytes do not extend it. Default 10000.
    #[serde(default)]
    header_timeout_ms: Option<u64>,
    /// Idle keep-alive client connection lifetime between requests. Default 60000.
    #[serde(default)]
    keepalive_timeout_ms: Option<u64>,
    /// Requests served on one client connection before it is closed. Default 1000.
    #[serde(default)]
    keepalive_requests: Option<u64>,
    /// Longest pause while reading a request body from the client. Default 30000.
    #[serde(default)]
    body_timeout_ms: Option<u64>,
    /// Largest request head (request line + headers) in bytes, then 431. Default 32768.
    #[serde(default)]
    max_head_bytes: Option<usize>,
    /// Most header lines in a request, then 431. Default 100.
    #[serde(default)]
    max_headers: Option<usize>,
    /// Upstream TCP connect timeout. Default 5000.
    #[serde(default)]
    upstream_connect_timeout_ms: Option<u64>,
    /// Wait for the upstream's response head after the request was sent. Default 60000.
    #[serde(default)]
    upstream_response_timeout_ms: Option<u64>,
    /// Longest pause while streaming a body between lbd and an upstream. Default 60000.
    #[serde(default)]
    upstream_body_timeout_ms: Option<u64>,
    /// How long an idle pooled upstream connection is kept. Default 60000.
    #[serde(default)]
    upstream_idle_timeout_ms: Option<u64>,
    /// Longest a write to a client may stall (client not reading). Default 60000.
    #[serde(default)]
    client_write_timeout_ms: Option<u64>,
    /// Client connections per worker; past it new connections are closed at once. Default 16384.
    #[serde(default)]
    max_connections_per_worker: Option<usize>,
    /// Longest chunk extension on one chunk-size line (both directions), then 400/502. Default 4096.
    #[serde(default)]
    max_chunk_extension_bytes: Option<usize>,
    /// An upgraded connection (WebSocket) with no byte either way for this
    /// long is closed. Default 3600000 (idle WebSockets send pings).
    #[serde(default)]
    tunnel_idle_timeout_ms: Option<u64>,
    /// Upgraded connections per worker; past it upgrade requests get 503. Default 4096.
    #[serde(default)]
    max_tunnels_per_worker: Option<usize>,
    /// HTTP/2 streams open at once per worker; past it new streams are
    /// refused (RST_STREAM REFUSED_STREAM). Default 16384.
    #[serde(default)]
    max_http2_streams_per_worker: Option<usize>,
    /// Backend ids the process can hold: every backend of every group,
    /// configured, discovered or added through the admin API, over the
    /// process's life (an address that leaves and comes back keeps its id).
    /// Default 4096, or the configured count if larger.
    #[serde(default)]
    max_backends: Option<usize>,
}

impl RawLimits {
    /// `limits`: the counts, the timeouts, then `max_chunk_extension_bytes`.
    fn validate(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let max_headers = in_range(
            "limits.max_headers",
            self.max_headers.unwrap_or(d.max_headers),
            1..=MAX_HEADERS_CEILING,
            format!("must be from 1 to {MAX_HEADERS_CEILING}"),
        )?;
        let max_head_bytes = in_range(
            "limits.max_head_bytes",
            self.max_head_bytes.unwrap_or(d.max_head_bytes),
            1024..=1024 * 1024,
            "must be from 1024 to 1048576",
        )?;
        let keepalive_requests = in_range(
            "limits.keepalive_requests",
            self.keepalive_requests.unwrap_or(d.keepalive_requests),
            1..,
            "must be at least 1",
        )?;
        let max_connections_per_worker = in_range(
            "limits.max_connections_per_worker",
            self.max_connections_per_worker
                .unwrap_or(d.max_connections_per_worker),
            1..,
            "must be at least 1",
        )?;
        let timeouts = self.timeouts()?;
        let max_chunk_extension_bytes = in_range(
            "limits.max_chunk_extension_bytes",
            self.max_chunk_extension_bytes
                .unwrap_or(d.max_chunk_extension_bytes),
            1..=65_536,
            "must be from 1 to 65536",
        )?;
        let max_tunnels_per_worker = in_range(
            "limits.max_tunnels_per_worker",
            self.max_tunnels_per_worker
                .unwrap_or(d.max_tunnels_per_worker),
            1..,
            "must be at least 1",
        )?;
        let max_http2_streams_per_worker = in_range(
            "limits.max_http2_streams_per_worker",
            self.max_http2_streams_per_worker
                .unwrap_or(d.max_http2_streams_per_worker),
            1..,
            "must be at least 1",
        )?;
        let max_backends = in_range(
            "limits.max_backends",
            self.max_backends.unwrap_or(d.max_backends),
            1..=1 << 20,
            "must be from 1 to 1048576",
        )?;
        Ok(Limits {
            keepalive_requests,
            max_head_bytes,
            max_headers,
            max_connections_per_worker,
            max_chunk_extension_bytes,
            max_tunnels_per_worker,
            max_http2_streams_per_worker,
            max_backends,
            ..timeouts
        })
    }

    /// The `*_timeout_ms` keys, in order; the other fields keep their defaults.
    fn timeouts(&self) -> Result<Limits, ConfigError> {
        let d = Limits::default();
        let ms = |key: &str, v: Option<u64>, default: Duration| match v {
            None => Ok(default),
            Some(n) => in_range(format!("limits.{key}"), n, 1.., "must be at least 1 ms")
                .map(Duration::from_millis),
        };
        Ok(Limits {
            header_timeout: ms(
                "header_timeout_ms",
                self.header_timeout_ms,
                d.header_timeout,
            )?,
            keepalive_timeout: ms(
                "keepalive_timeout_ms",
                self.keepalive_timeout_ms,
                d.keepalive_timeout,
            )?,
            body_timeout: ms("body_timeout_ms", self.body_timeout_ms, d.body_timeout)?,
            upstream_connect_timeout: ms(
                "upstream_connect_timeout_ms",
                self.upstream_connect_timeout_ms,
                d.upstream_connect_timeout,
            )?,
            upstream_response_timeout: ms(
                "upstream_response_timeout_ms",
                self.upstream_response_timeout_ms,
                d.upstream_response_timeout,
            )?,
            upstream_body_timeout: ms(
                "upstream_body_timeout_ms",
                self.upstream_body_timeout_ms,
                d.upstream_body_timeout,
            )?,
            upstream_idle_timeout: ms(
                "upstream_idle_timeout_ms",
                self.upstream_idle_timeout_ms,
                d.upstream_idle_timeout,
            )?,
            client_write_timeout: ms(
                "client_write_timeout_ms",
                self.client_write_timeout_ms,
                d.client_write_timeout,
            )?,
            tunnel_idle_timeout: ms(
                "tunnel_idle_timeout_ms",
                self.tunnel_idle_timeout_ms,
                d.tunnel_idle_timeout,
            )?,
            ..d
        })
    }
}

/// Validated configuration, shared read-only by all threads.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker thread count (config `threads`, CLI `--threads`, else CPUs).
    pub threads: usize,
    /// `pid_file`.
    pub pid_file: Option<PathBuf>,
    /// `error_log`.
    pub error_log: Option<PathBuf>,
    /// `upgrade_sock`.
    pub upgrade_sock: PathBuf,
    /// `daemon`.
    pub daemon: bool,
    /// `grace_period_seconds`.
    pub grace_period: Duration,
    /// `graceful_shutdown_timeout_seconds`.
    pub graceful_shutdown_timeout: Duration,
    /// `upstream_keepalive_pool_size`: idle connections per backend per worker.
    pub upstream_keepalive_pool_size: usize,
    /// `max_retries`: connection attempts per request, at most.
    pub max_retries: usize,
    /// `upgrade_sock_connect_accept_max_retries` × 1 s: how long each side of
    /// an upgrade waits for the other.
    pub upgrade_wait: Duration,
    /// Listening addresses.
    pub listeners: Vec<ListenerConfig>,
    /// Upstream groups, indexed by [`ListenerConfig::upstream`].
    pub upstreams: Vec<UpstreamConfig>,
    /// Limits and timeouts.
    pub limits: Limits,
    /// `histogram_file`.
    pub histogram_file: Option<PathBuf>,
    /// `admin.address`.
    pub admin: Option<SocketAddr>,
    /// `admin.token_file`'s token: write requests must carry it.
    pub admin_token: Option<String>,
    /// `access_log`: path and format.
    pub access_log: Option<(PathBuf, crate::access_log::Format)>,
    /// Warnings produced while loading (logged once logging is up).
    pub warnings: Vec<String>,
}

/// A validated listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Socket address to bind.
    pub address: SocketAddr,
    /// Where its requests go.
    pub routes: ListenerRoutes,
    /// listen(2) backlog.
    pub backlog: i32,
    /// TLS material and handshake timeout, if the listener terminates TLS.
    pub tls: Option<(crate::tls::TlsMaterial, Duration)>,
    /// PROXY protocol in, forwarding headers, trusted proxies, request ids.
    pub forwarding: ListenerForwarding,
    /// HTTP/2 (ALPN `h2` with TLS, h2c prior knowledge without), if on.
    pub http2: Option<Http2Config>,
}

/// A listener's HTTP/2 settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Http2Config {
    /// `http2_max_concurrent_streams`: SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: u32,
    /// `http2_idle_timeout_ms`, if set (else `keepalive_timeout_ms`).
    pub idle_timeout: Option<Duration>,
}

/// A validated upstream group.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// The group's name (the key under `upstreams:`).
    pub name: String,
    /// Its backends, in config order.
    pub backends: Vec<BackendConfig>,
    /// Active health checking, if configured.
    pub health_check: Option<HealthCheckConfig>,
    /// Upstream TLS material, if the group speaks TLS.
    pub tls: Option<crate::tls::TlsMaterial>,
    /// `host`: Host header override.
    pub host: Option<String>,
    /// How it balances.
    pub balance: BalanceConfig,
    /// `upgrade_protocols`, lower-case.
    pub upgrade_protocols: Vec<Vec<u8>>,
    /// `tunnel_idle_timeout_ms` of this group, if set.
    pub tunnel_idle_timeout: Option<Duration>,
    /// `send_proxy_protocol`: the PROXY protocol version sent in front of
    /// new connections to its backends.
    pub send_proxy_protocol: Option<crate::proxy_protocol::Version>,
    /// `discovery`: backends from DNS, if configured.
    pub discovery: Option<DiscoveryConfig>,
}

/// What a health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// TCP connect succeeds.
    Tcp,
    /// `GET path` answers with the expected status.
    Http {
        /// Request path.
        path: String,
        /// Host header; `None` = the backend's address.
        host: Option<String>,
        /// Passing status; `None` = any 2xx.
        expected_status: Option<u16>,
    },
}

/// A validated `health_check` block.
#[derive(Debug, Clone)]
pub struct HealthCheckConfig {
    /// tcp or http.
    pub kind: CheckKind,
    /// `interval_ms`.
    pub interval: Duration,
    /// `timeout_ms`.
    pub timeout: Duration,
    /// `rise`.
    pub rise: u32,
    /// `fall`.
    pub fall: u32,
}

/// A validated backend.
#[derive(Debug, Clone)]
pub struct BackendConfig {
    /// Resolved socket address.
    pub address: SocketAddr,
    /// As written in the config (used in logs and metrics labels).
    pub name: String,
    /// Smooth weighted round-robin weight, ≥ 1.
    pub weight: u32,
}

/// Validated limits; see [`RawLimits`] for each key's meaning and default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `limits.header_timeout_ms`.
    pub header_timeout: Duration,
    /// `limits.keepalive_timeout_ms`.
    pub keepalive_timeout: Duration,
    /// `limits.keepalive_requests`.
    pub keepalive_requests: u64,
    /// `limits.body_timeout_ms`.
    pub body_timeout: Duration,
    /// `limits.max_head_bytes`.
    pub max_head_bytes: usize,
    /// `limits.max_headers`.
    pub max_headers: usize,
    /// `limits.upstream_connect_timeout_ms`.
    pub upstream_connect_timeout: Duration,
    /// `limits.upstream_response_timeout_ms`.
    pub upstream_response_timeout: Duration,
    /// `limits.upstream_body_timeout_ms`.
    pub upstream_body_timeout: Duration,
    /// `limits.upstream_idle_timeout_ms`.
    pub upstream_idle_timeout: Duration,
    /// `limits.client_write_timeout_ms`.
    pub client_write_timeout: Duration,
    /// `limits.max_connections_per_worker`.
    pub max_connections_per_worker: usize,
    /// `limits.max_chunk_extension_bytes`.
    pub max_chunk_extension_bytes: usize,
    /// `limits.tunnel_idle_timeout_ms`.
    pub tunnel_idle_timeout: Duration,
    /// `limits.max_tunnels_per_worker`.
    pub max_tunnels_per_worker: usize,
    /// `limits.max_http2_streams_per_worker`.
    pub max_http2_streams_per_worker: usize,
    /// `limits.max_backends`.
    pub max_backends: usize,
}

/// Hard ceiling on `limits.max_headers`: the parser's header array lives on
/// the stack.
pub const MAX_HEADERS_CEILING: usize = 512;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            keepalive_requests: 1000,
            body_timeout: Duration::from_secs(30),
            max_head_bytes: 32 * 1024,
            max_headers: 100,
            upstream_connect_timeout: Duration::from_secs(5),
            upstream_response_timeout: Duration::from_secs(60),
            upstream_body_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_secs(60),
            client_write_timeout: Duration::from_secs(60),
            max_connections_per_worker: 16384,
            max_chunk_extension_bytes: crate::http::chunked::MAX_CHUNK_EXT_LEN,
            tunnel_idle_timeout: Duration::from_secs(3600),
            max_tunnels_per_worker: 4096,
            max_http2_streams_per_worker: 16384,
            max_backends: 4096,
        }
    }
}

impl Config {
    /// Reads and validates `path`. `threads_override` is `--threads`.
    pub fn load(path: &Path, threads_override: Option<usize>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_yaml(&text, path, threads_override)
    }

    /// Parses and validates YAML text (`path` is only used in messages).
    pub fn from_yaml(
        text: &str,
        path: &Path,
        threads_override: Option<usize>,
    ) -> Result<Config, ConfigError> {
        let mut key = None;
        let parsed = serde_saphyr::with_deserializer_from_str(text, |d| {
            serde_path_to_error::deserialize::<_, RawConfig>(d).map_err(|e| {
                key = Some(e.path().to_string());
                e.into_inner()
            })
        });
        match parsed {
            Ok(raw) => validate(raw, threads_override),
            Err(e) => Err(parse_error(text, path, key, &e)),
        }
    }
}

/// A parse error as lbd reports it. A YAML syntax error anywhere in the
/// file wins over a type error: the deserializer reads as it parses, so a bad
/// indent on line 3 can first surface as a type error on line 2, and the
/// syntax error is the one to fix. Otherwise the message names the dotted
/// key (`key` is serde_path_to_error's path, `.` for the root), the value
/// when it is a scalar, and the line and column.
fn parse_error(
    text: &str,
    path: &Path,
    key: Option<String>,
    err: &serde_saphyr::Error,
) -> ConfigError {
    let err = err.without_snippet();
    let parse = |key: Option<String>, line: u64, column: u64, what: String| ConfigError::Parse {
        path: path.to_owned(),
        key,
        message: format!("{what}{}", quote_line(text, line, column)),
    };
    for event in serde_saphyr::granit_parser::Parser::new_from_str(text) {
        if let Err(e) = event {
            let (line, column) = (e.marker().line() as u64, e.marker().col() as u64 + 1);
            let what = format!(
                "line {line} column {column}: YAML syntax error: {}",
                e.info()
            );
            return parse(None, line, column, what);
        }
    }
    // `?` stands for a key serde_path_to_error could not name (a duplicate
    // key, say): name its parent instead.
    let key = key
        .map(|k| k.trim_end_matches('?').trim_end_matches('.').to_string())
        .filter(|k| !k.is_empty());
    let (line, column) = err.location().map_or((0, 0), |l| (l.line(), l.column()));
    let at = if line > 0 {
        format!(" at line {line} column {column}")
    } else {
        String::new()
    };
    let what = match err {
        serde_saphyr::Error::InvalidScalar { ty, .. } => {
            let value = scalar_at(text, line, column).unwrap_or_default();
            format!(
                "invalid value `{value}`{at}: expected {}",
                expected_type(ty)
            )
        }
        _ => {
            use serde_saphyr::MessageFormatter;
            let message = serde_saphyr::DefaultMessageFormatter.format_message(err);
            // serde names the Rust type a map deserializes into; say what
            // the file should have instead.
            let message = printable(&message);
            // saphyr's advice to the programmer is not for the operator.
            let message = match message.split_once(", set DuplicateKeyPolicy") {
                Some((m, _)) => m.to_string(),
                None => message,
            };
            let message = match message.find("struct Raw") {
                Some(i) => format!("{}a mapping (key: value)", &message[..i]),
                None => match message.as_str() {
                    "expected mapping start" => "expected a mapping (key: value)".to_string(),
                    "expected sequence start" => "expected a list".to_string(),
                    _ => message,
                },
            };
            if line > 0 {
                format!("line {line} column {column}: {message}")
            } else {
                message
            }
        }
    };
    parse(key, line, column, what)
}

/// What a scalar of Rust type `ty` must look like, in the file's terms.
fn expected_type(ty: &str) -> &'static str {
    match ty {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "bool" | "boolean" => "`true` or `false`",
        _ => "a value of another type",
    }
}

/// `s` with control characters (a line break in a key, say) escaped, so a
/// message stays one line per line and cannot drive a terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The text of the scalar that starts at `line`/`column` (both from 1).
fn scalar_at(text: &str, line: u64, column: u64) -> Option<String> {
    use serde_saphyr::granit_parser::Event;
    serde_saphyr::granit_parser::Parser::new_from_str(text)
        .map_while(Result::ok)
        .find_map(|(event, span)| match event {
            Event::Scalar(v, ..)
                if span.start.line() as u64 == line && span.start.col() as u64 + 1 == column =>
            {
                Some(printable(&v))
            }
            _ => None,
        })
}

/// `line` of `text` quoted with a caret under `column` (both from 1), as
/// compilers do; empty when the position is unknown.
fn quote_line(text: &str, line: u64, column: u64) -> String {
    let Some(src) = line
        .checked_sub(1)
        .and_then(|i| text.lines().nth(i as usize))
    else {
        return String::new();
    };
    let src = printable(src);
    let gutter = " ".repeat(line.to_string().len());
    let pad = " ".repeat(column.saturating_sub(1) as usize);
    format!("\n{gutter} |\n{line} | {src}\n{gutter} | {pad}^")
}

fn parse_address(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    // `host:port`: resolved once here, on the main thread before any worker
    // exists, so no worker ever does blocking DNS.
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(invalid(key, s, "expected IP:port or host:port"));
    };
    if host.is_empty() {
        return Err(invalid(key, s, "missing host before the port"));
    }
    if port.parse::<u16>().is_err() {
        return Err(invalid(key, s, "port must be a number from 0 to 65535"));
    }
    match s.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| invalid(key, s, "host name resolved to no address")),
        Err(e) => Err(invalid(key, s, format!("cannot resolve: {e}"))),
    }
}

fn tls_invalid(e: crate::tls::TlsError) -> ConfigError {
    match e {
        crate::tls::TlsError::File { key, path, reason } => invalid(key, path.display(), reason),
        crate::tls::TlsError::Rustls { key, reason } => invalid(key, "(file)", reason),
    }
}

/// Checks `raw` section by section and freezes it. The order decides which
/// error is reported when several keys are wrong, so it stays: `version`,
/// `threads`, `upstreams`, `trusted_proxies`, `request_id`, `listeners`,
/// `limits`, `max_retries`,
/// `upgrade_sock_connect_accept_max_retries`, `access_log`, `admin`.
fn validate(raw: RawConfig, threads_override: Option<usize>) -> Result<Config, ConfigError> {
    raw.version()?;
    let mut warnings = raw.pingora_only_warnings();
    let threads = raw.threads(threads_override)?;
    let upstreams = validate_upstreams(&raw.upstreams, &mut warnings)?;
    let defaults = forwarding::defaults(raw.trusted_proxies.as_ref(), raw.request_id.as_ref())?;
    let listeners = validate_listeners(&raw.listeners, &raw.upstreams, &defaults)?;
    let limits = raw.limits.validate()?;
    let max_retries = raw.max_retries()?;
    let upgrade_wait = raw.upgrade_wait()?;
    let access_log = raw.access_log.as_ref().map(RawAccessLog::validate);
    let access_log = access_log.transpose()?;
    let admin = raw.admin.as_ref().map(RawAdmin::validate).transpose()?;
    let (admin, admin_token) = match admin {
        Some((a, t)) => (Some(a), t),
        None => (None, None),
    };
    Ok(Config {
        threads,
        pid_file: raw.pid_file,
        error_log: raw.error_log,
        upgrade_sock: raw
            .upgrade_sock
            .unwrap_or_else(|| PathBuf::from("/tmp/lbd_upgrade.sock")),
        daemon: raw.daemon.unwrap_or(false),
        grace_period: Duration::from_secs(raw.grace_period_seconds.unwrap_or(300)),
        graceful_shutdown_timeout: Duration::from_secs(
            raw.graceful_shutdown_timeout_seconds.unwrap_or(5),
        ),
        upstream_keepalive_pool_size: raw.upstream_keepalive_pool_size.unwrap_or(128),
        max_retries,
        upgrade_wait,
        listeners,
        upstreams,
        limits,
        histogram_file: raw.histogram_file,
        admin,
        admin_token,
        access_log,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(s: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(s, Path::new("test.yaml"), None)
    }

    const GOOD: &str = "
version: 1
threads: 2
listeners:
  - address: 127.0.0.1:6188
    upstream: web
upstreams:
  web:
    backends:
      - 127.0.0.1:8081
      - { address: 127.0.0.1:8082, weight: 2 }
";

    #[test]
    fn good_config_loads() {
        let c = load(GOOD).expect("valid");
        assert_eq!(c.threads, 2);
        assert_eq!(c.listeners[0].address.port(), 6188);
        let b = &c.upstreams[0].backends;
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].weight, b[1].weight), (1, 2));
        assert_eq!(c.upstream_keepalive_pool_size, 128);
    }

    #[test]
    fn threads_override_wins() {
        let c = Config::from_yaml(GOOD, Path::new("t"), Some(3)).expect("valid");
        assert_eq!(c.threads, 3);
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load(&GOOD.replace("listeners:", "listners:"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("listners"), "{e}");
    }

    #[test]
    fn weight_zero_is_named() {
        let e = load(&GOOD.replace("weight: 2", "weight: 0"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstreams.web.backends[1].weight") && e.contains('0'),
            "{e}"
        );
    }

    #[test]
    fn bad_address_is_named() {
        let e = load(&GOOD.replace("127.0.0.1:8081", "127.0.0.1:99999"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("127.0.0.1:99999") && e.contains("backends[0]"),
            "{e}"
        );
        let e = load(&GOOD.replace("127.0.0.1:6188", "nonsense"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listeners[0].address") && e.contains("nonsense"),
            "{e}"
        );
    }

    #[test]
    fn empty_backends_rejected() {
        let y = "listeners: [{address: '127.0.0.1:1'}]\nupstreams:\n  web:\n    backends: []\n";
        let e = load(y).unwrap_err().to_string();
        assert!(e.contains("upstreams.web.backends"), "{e}");
    }

    #[test]
    fn pingora_keys_warn_not_fail() {
        let c = load(&format!("{GOOD}\nwork_stealing: false\nuser: nobody\n")).expect("loads");
        assert_eq!(c.warnings.len(), 2);
    }

    #[test]
    fn listener_upstream_must_exist() {
        let e = load(&GOOD.replace("upstream: web", "upstream: nope"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listeners[0].upstream") && e.contains("nope"),
            "{e}"
        );
    }

    #[test]
    fn health_check_parses_and_validates() {
        let y = GOOD.replace(
            "      - { address: 127.0.0.1:8082, weight: 2 }\n",
            "      - { address: 127.0.0.1:8082, weight: 2 }\n    health_check:\n      kind: http\n      path: /health\n      interval_ms: 500\n      rise: 2\n",
        );
        let c = load(&y).expect("valid");
        let h = c.upstreams[0].health_check.as_ref().expect("health check");
        assert_eq!(h.interval, Duration::from_millis(500));
        assert_eq!((h.rise, h.fall), (2, 1));
        assert!(matches!(&h.kind, CheckKind::Http { path, .. } if path == "/health"));
        let e = load(&y.replace("kind: http", "kind: udp"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("upstreams.web.health_check.kind") && e.contains("udp"),
            "{e}"
        );
        let e = load(&y.replace("rise: 2", "rise: 0"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("health_check.rise"), "{e}");
        let e = load(&y.replace("kind: http", "kind: tcp"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("health_check.path"), "{e}");
    }

    /// The message for `yaml` (a parse error expected).
    fn parse_message(yaml: &str) -> (Option<String>, String) {
        match load(yaml) {
            Err(ConfigError::Parse { key, message, .. }) => (key, message),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn type_errors_name_the_dotted_key_and_value() {
        let (key, m) = parse_message(&format!("{GOOD}limits: {{header_timeout_ms: ten}}\n"));
        assert_eq!(key.as_deref(), Some("limits.header_timeout_ms"), "{m}");
        assert!(
            m.starts_with("invalid value `ten` at line 12 column 29"),
            "{m}"
        );
        let (key, m) = parse_message(&GOOD.replace("threads: 2", "threads: -1"));
        assert_eq!(key.as_deref(), Some("threads"), "{m}");
        assert!(m.contains("`-1`") && m.contains("line 3"), "{m}");
        let (key, m) = parse_message(&GOOD.replace("weight: 2", "weight: ten"));
        assert_eq!(
            key.as_deref(),
            Some("upstreams.web.backends[1].weight"),
            "{m}"
        );
        let (key, m) = parse_message(&GOOD.replace("weight: 2", "wieght: 2"));
        assert_eq!(
            key.as_deref(),
            Some("upstreams.web.backends[1].wieght"),
            "{m}"
        );
        assert!(m.contains("unknown field `wieght`"), "{m}");
        let (key, m) = parse_message(&GOOD.replace("- 127.0.0.1:8081", "- 8081"));
        assert_eq!(key.as_deref(), Some("upstreams.web.backends[0]"), "{m}");
        let (key, m) = parse_message(&format!("{GOOD}limits: 5\n"));
        assert_eq!(key.as_deref(), Some("limits"), "{m}");
        assert!(m.contains("expected a mapping"), "{m}");
        let (key, m) = parse_message(&format!("{GOOD}daemon: yes please\n"));
        assert_eq!(key.as_deref(), Some("daemon"), "{m}");
        assert!(m.contains("`true` or `false`"), "{m}");
    }

    #[test]
    fn the_whole_message_reads_well() {
        let e = load(&format!("{GOOD}limits: {{header_timeout_ms: ten}}\n")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file test.yaml: config key `limits.header_timeout_ms`: invalid value `ten` \
             at line 12 column 29: expected a whole number, 0 or more\n   |\n\
             12 | limits: {header_timeout_ms: ten}\n   |                             ^"
        );
    }

    #[test]
    fn a_syntax_error_points_at_its_line() {
        // The bad indent is on line 3; the deserializer alone would report
        // a type error on line 2.
        let y = format!("limits:\n  header_timeout_ms: 10\n   keepalive_timeout_ms: 5\n{GOOD}");
        let (key, m) = parse_message(&y);
        assert_eq!(key, None, "{m}");
        assert!(m.starts_with("line 3 column 24: YAML syntax error"), "{m}");
        let y = format!("limits:\n  header_timeout_ms: 10\n keepalive_timeout_ms: 5\n{GOOD}");
        let (_, m) = parse_message(&y);
        assert!(m.starts_with("line 3 column 2: YAML syntax error"), "{m}");
    }

    #[test]
    fn duplicate_key_is_reported_without_programmer_advice() {
        let (_, m) = parse_message(&format!("{GOOD}threads: 3\n"));
        assert!(m.contains("duplicate mapping key: threads"), "{m}");
        assert!(!m.contains("DuplicateKeyPolicy"), "{m}");
    }

    #[test]
    fn zero_timeout_rejected() {
        let e = load(&format!("{GOOD}limits:\n  header_timeout_ms: 0\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("limits.header_timeout_ms"), "{e}");
    }
}
