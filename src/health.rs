//! Health: the checker thread and the bitmap workers read.
//!
//! One dedicated thread (never a worker) checks every backend of every group
//! that has a `health_check` block, on that group's interval, with blocking
//! sockets and a timeout (it is the only place such I/O is allowed). Results
//! go into [`HealthMap`]: one bit per backend (global id) in `AtomicU64`
//! words, written only by the checker, read by workers with a relaxed load on
//! every selection. A backend's state flips after `fall` consecutive failures
//! or `rise` consecutive successes; each transition is logged once (warn for
//! down, info for up) with the reason. The first round runs before lbd
//! accepts traffic, and its result is taken as is, so a backend that is dead
//! at start never sees a first request.
//!
//! Besides the bits, the map holds a per-backend *generation*, bumped by the
//! checker after every passing check, which the workers' own passive marks
//! compare against. Backends are indexed by
//! their registry id; what to check comes from the registry as
//! [`CheckGroup`]s. No worker ever writes shared memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{CheckKind, HealthCheckConfig};
use crate::proxy_protocol::Version;

/// The shared health state: one bit, one generation and one "up since"
/// time per backend.
#[derive(Debug)]
pub struct HealthMap {
    words: Vec<AtomicU64>,
    generations: Vec<AtomicU64>,
    failures: Vec<AtomicU64>,
    /// Per backend: when it last turned healthy after being down, in µs
    /// since `epoch` plus one (0: up since start, no ramp). Slow start is a
    /// function of this and the time alone, so every worker agrees.
    up_since: Vec<AtomicU64>,
    /// Per backend: the admin API's state ([`AdminState`]), written by the
    /// admin thread only.
    admin: Vec<std::sync::atomic::AtomicU8>,
    /// Per backend: the last active check, `(µs since epoch + 1) << 1 | passed`
    /// (0: never checked). Checker thread writes, admin thread reads.
    last_check: Vec<AtomicU64>,
    /// Why each backend's last check failed (checker and admin threads
    /// only, never a worker).
    last_failure: std::sync::Mutex<std::collections::HashMap<usize, String>>,
    epoch: Instant,
}

/// A backend's last active check, for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastCheck {
    /// How long ago it finished.
    pub(crate) ago: Duration,
    /// Why it failed; `None` when it passed.
    pub(crate) failure: Option<String>,
}

/// A backend's state as the admin API set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AdminState {
    /// Gets requests (when healthy).
    Active,
    /// No new requests; in-flight and keep-alive exchanges finish.
    Draining,
    /// No new requests, and its idle pooled connections are not used.
    Disabled,
}

impl AdminState {
    /// The name the API and `GET /upstreams` use.
    pub(crate) fn name(self) -> &'static str {
        match self {
            AdminState::Active => "active",
            AdminState::Draining => "draining",
            AdminState::Disabled => "disabled",
        }
    }
}

impl HealthMap {
    /// All `n` backends up, generation 0.
    pub fn new(n: usize) -> Self {
        let counters = || (0..n).map(|_| AtomicU64::new(0)).collect();
        HealthMap {
            words: (0..n.div_ceil(64))
                .map(|_| AtomicU64::new(u64::MAX))
                .collect(),
            generations: counters(),
            failures: counters(),
            up_since: counters(),
            admin: (0..n)
                .map(|_| std::sync::atomic::AtomicU8::new(0))
                .collect(),
            last_check: counters(),
            last_failure: Default::default(),
            epoch: Instant::now(),
        }
    }

    /// Backend `id`'s admin state. One relaxed load.
    #[inline]
    pub(crate) fn admin_state(&self, id: usize) -> AdminState {
        match self.admin.get(id).map(|a| a.load(Ordering::Relaxed)) {
            Some(0) => AdminState::Active,
            Some(1) => AdminState::Draining,
            _ => AdminState::Disabled,
        }
    }

    /// Sets backend `id`'s admin state (admin thread only).
    pub(crate) fn set_admin_state(&self, id: usize, s: AdminState) {
        if let Some(a) = self.admin.get(id) {
            let v = match s {
                AdminState::Active => 0,
                AdminState::Draining => 1,
                AdminState::Disabled => 2,
            };
            a.store(v, Ordering::Relaxed);
        }
    }

    /// Backend `id` (re)joins its group: active, `up` or not (a checked
    /// group's new member waits for its first check), and with `ramp` its
    /// slow start counts from now.
    pub(crate) fn join(&self, id: usize, up: bool, ramp: bool) {
        self.set_admin_state(id, AdminState::Active);
        if let Some(a) = self.last_check.get(id) {
            a.store(0, Ordering::Relaxed);
        }
        self.set(id, up);
        if up && ramp {
            self.mark_up_since(id);
        }
    }

    /// `at` as µs since the map's epoch (the time base of [`Self::up_since_us`]).
    pub(crate) fn micros(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_micros() as u64
    }

    /// When backend `id` last turned healthy after being down (µs, see
    /// [`Self::micros`]); `None` when it has been up since start.
    #[inline]
    pub(crate) fn up_since_us(&self, id: usize) -> Option<u64> {
        match self.up_since.get(id).map(|a| a.load(Ordering::Relaxed)) {
            None | Some(0) => None,
            Some(t) => Some(t - 1),
        }
    }

    fn mark_up_since(&self, id: usize) {
        if let Some(a) = self.up_since.get(id) {
            a.store(self.micros(Instant::now()) + 1, Ordering::Relaxed);
        }
    }

    /// Is backend `id` up? One relaxed load.
    #[inline]
    pub fn is_up(&self, id: usize) -> bool {
        self.words
            .get(id / 64)
            .is_some_and(|w| w.load(Ordering::Relaxed) & (1 << (id % 64)) != 0)
    }

    /// Sets backend `id`'s bit. Checker thread only.
    pub(crate) fn set(&self, id: usize, up: bool) {
        if let Some(w) = self.words.get(id / 64) {
            let bit = 1u64 << (id % 64);
            if up {
                w.fetch_or(bit, Ordering::Release);
            } else {
                w.fetch_and(!bit, Ordering::Release);
            }
        }
    }

    /// Generation of backend `id`: how many checks of it have passed.
    #[inline]
    pub fn generation(&self, id: usize) -> u64 {
        self.generations
            .get(id)
            .map_or(0, |g| g.load(Ordering::Acquire))
    }

    /// Failed active checks of backend `id` so far.
    pub fn check_failures(&self, id: usize) -> u64 {
        self.failures
            .get(id)
            .map_or(0, |f| f.load(Ordering::Relaxed))
    }

    /// Notes one check's outcome (checker thread).
    fn note_check(&self, id: usize, r: &Result<(), String>) {
        if let Some(a) = self.last_check.get(id) {
            let at = self.micros(Instant::now()) + 1;
            a.store(at << 1 | u64::from(r.is_ok()), Ordering::Relaxed);
        }
        if let Ok(mut m) = self.last_failure.lock() {
            match r {
                Ok(()) => m.remove(&id),
                Err(reason) => m.insert(id, reason.clone()),
            };
        }
    }

    /// Backend `id`'s last active check, if it had one.
    pub(crate) fn last_check(&self, id: usize) -> Option<LastCheck> {
        let v = self.last_check.get(id)?.load(Ordering::Relaxed);
        if v == 0 {
            return None;
        }
        let now = self.micros(Instant::now());
        let ago = Duration::from_micros(now.saturating_sub((v >> 1) - 1));
        let failure = match v & 1 {
            1 => None,
            _ => Some(
                self.last_failure
                    .lock()
                    .ok()
                    .and_then(|m| m.get(&id).cloned())
                    .unwrap_or_else(|| "failed".to_owned()),
            ),
        };
        Some(LastCheck { ago, failure })
    }

    fn count_failure(&self, id: usize) {
        if let Some(f) = self.failures.get(id) {
            f.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn bump_generation(&self, id: usize) {
        if let Some(g) = self.generations.get(id) {
            g.fetch_add(1, Ordering::Release);
        }
    }
}

/// One backend as the checker sees it.
struct Target {
    id: usize,
    name: String,
    address: SocketAddr,
    up: bool,
    /// Joined after start and not checked yet: down until its first
    /// passing check, which brings it up at once.
    fresh: bool,
    successes: u32,
    failures: u32,
    next: Instant,
}

impl Target {
    fn new((id, name, address): (usize, String, SocketAddr), fresh: bool, next: Instant) -> Self {
        Target {
            id,
            name,
            address,
            up: !fresh,
            fresh,
            successes: 0,
            failures: 0,
            next,
        }
    }
}

/// A group's new member list for the checker: (upstream index, targets as
/// in [`CheckGroup::targets`]).
pub(crate) type TargetsUpdate = (usize, Vec<(usize, String, SocketAddr)>);

/// One group's checks, as the registry hands them over.
pub(crate) struct CheckGroup {
    /// The group's index among the upstreams.
    pub(crate) group: usize,
    /// The group's `health_check` block.
    pub(crate) check: HealthCheckConfig,
    /// The group's `send_proxy_protocol`: checks start with an address-less
    /// header of that version (v2 `LOCAL`, v1 `PROXY UNKNOWN`).
    pub(crate) proxy_protocol: Option<Version>,
    /// The checker's TLS settings for a TLS group.
    pub(crate) tls: CheckTls,
    /// Its backends: (id index, name as written, address).
    pub(crate) targets: Vec<(usize, String, SocketAddr)>,
}

struct GroupChecks {
    group: usize,
    check: HealthCheckConfig,
    proxy_protocol: Option<Version>,
    tls: CheckTls,
    targets: Vec<Target>,
}

/// TLS settings for checking a TLS group: the checker's own client config.
pub type CheckTls = Option<(
    Arc<rustls::ClientConfig>,
    rustls::pki_types::ServerName<'static>,
)>;

/// Runs one check; `Err` carries the reason for the log. For a TLS group the
/// check includes the handshake (tcp kind) or runs over TLS (http kind); a
/// group that sends PROXY protocol headers gets one first (`proxy`: its
/// version; the address-less kind, since no client is proxied).
pub fn check_once(
    address: SocketAddr,
    check: &HealthCheckConfig,
    tls: &CheckTls,
    proxy: Option<Version>,
) -> Result<(), String> {
    let deadline = Instant::now() + check.timeout;
    let mut tcp = TcpStream::connect_timeout(&address, check.timeout).map_err(|e| describe(&e))?;
    let remaining = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    tcp.set_read_timeout(Some(remaining()))
        .map_err(|e| describe(&e))?;
    tcp.set_write_timeout(Some(remaining()))
        .map_err(|e| describe(&e))?;
    if let Some(v) = proxy {
        let mut header = Vec::with_capacity(16);
        crate::proxy_protocol::write_local(&mut header, v);
        tcp.write_all(&header)
            .map_err(|e| format!("PROXY protocol header: {}", describe(&e)))?;
    }
    let mut stream: Box<dyn ReadWrite> = match tls {
        None => Box::new(tcp),
        Some((config, name)) => {
            let conn = rustls::ClientConnection::new(config.clone(), name.clone())
                .map_err(|e| format!("TLS: {e}"))?;
            let mut s = rustls::StreamOwned::new(conn, tcp);
            while s.conn.is_handshaking() {
                s.conn
                    .complete_io(&mut s.sock)
                    .map_err(|e| format!("TLS handshake: {}", describe(&e)))?;
            }
            Box::new(s)
        }
    };
    match &check.kind {
        CheckKind::Tcp => Ok(()),
        CheckKind::Http {
            path,
            host,
            expected_status,
        } => {
            let host = host.clone().unwrap_or_else(|| address.to_string());
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: lbd-health-check\r\nConnection: close\r\n\r\n"
            );
            stream.write_all(req.as_bytes()).map_err(|e| describe(&e))?;
            stream.flush().map_err(|e| describe(&e))?;
            // Read until the status line is complete.
            let mut buf = [0u8; 512];
            let mut len = 0;
            loop {
                let n = stream.read(&mut buf[len..]).map_err(|e| describe(&e))?;
                if n == 0 {
                    return Err("connection closed before a status line".into());
                }
                len += n;
                if buf[..len].contains(&b'\n') || len == buf.len() {
                    break;
                }
            }
            let status = parse_status(&buf[..len]).ok_or("invalid HTTP status line")?;
            let pass = match expected_status {
                Some(want) => status == *want,
                None => (200..300).contains(&status),
            };
            if pass {
                Ok(())
            } else {
                Err(format!("HTTP status {status}"))
            }
        }
    }
}

/// A blocking byte stream: TCP or TLS over TCP.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn parse_status(b: &[u8]) -> Option<u16> {
    let line = b.split(|&c| c == b'\n').next()?;
    let mut parts = line.split(|&c| c == b' ');
    let version = parts.next()?;
    if !version.starts_with(b"HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

fn describe(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => "timed out".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

/// The checker: owns per-backend rise/fall state, writes the map.
pub struct Checker {
    map: Arc<HealthMap>,
    groups: Vec<GroupChecks>,
    /// New member lists from the control plane.
    updates: std::sync::mpsc::Receiver<TargetsUpdate>,
}

impl Checker {
    /// A checker for `groups`. `None` if there is nothing to check (no
    /// thread needed).
    fn new(
        groups: Vec<CheckGroup>,
        map: Arc<HealthMap>,
        updates: std::sync::mpsc::Receiver<TargetsUpdate>,
    ) -> Option<Self> {
        let now = Instant::now();
        let groups: Vec<GroupChecks> = groups
            .into_iter()
            .map(|g| GroupChecks {
                group: g.group,
                check: g.check,
                proxy_protocol: g.proxy_protocol,
                tls: g.tls,
                targets: g
                    .targets
                    .into_iter()
                    .map(|t| Target::new(t, false, now))
                    .collect(),
            })
            .collect();
        (!groups.is_empty()).then_some(Checker {
            map,
            groups,
            updates,
        })
    }

    /// Takes a group's new member list: members that stay keep their
    /// rise/fall state, new ones are checked at once.
    fn update(&mut self, (group, targets): TargetsUpdate) {
        let Some(g) = self.groups.iter_mut().find(|g| g.group == group) else {
            return;
        };
        let now = Instant::now();
        let mut old = std::mem::take(&mut g.targets);
        g.targets = targets
            .into_iter()
            .map(|t| match old.iter().position(|o| o.id == t.0) {
                Some(i) => old.swap_remove(i),
                None => Target::new(t, true, now),
            })
            .collect();
    }

    /// The first round: every backend checked in parallel, its state taken
    /// from this one result. Returns when all checks finished (each bounded by
    /// its timeout).
    pub fn first_round(&mut self) {
        let results: Vec<Vec<Result<(), String>>> = std::thread::scope(|s| {
            let handles: Vec<Vec<_>> = self
                .groups
                .iter()
                .map(|g| {
                    g.targets
                        .iter()
                        .map(|t| {
                            let (check, tls, pp) = (&g.check, &g.tls, g.proxy_protocol);
                            let addr = t.address;
                            s.spawn(move || check_once(addr, check, tls, pp))
                        })
                        .collect()
                })
                .collect();
            handles
                .into_iter()
                .map(|hs| {
                    hs.into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err("checker panicked".into())))
                        .collect()
                })
                .collect()
        });
        let now = Instant::now();
        for (g, res) in self.groups.iter_mut().zip(results) {
            for (t, r) in g.targets.iter_mut().zip(res) {
                t.next = now + g.check.interval;
                self.map.note_check(t.id, &r);
                match r {
                    Ok(()) => {
                        t.up = true;
                        self.map.set(t.id, true);
                        self.map.bump_generation(t.id);
                    }
                    Err(reason) => {
                        t.up = false;
                        self.map.count_failure(t.id);
                        self.map.set(t.id, false);
                        log::warn!("{} is unhealthy: {reason}", t.name);
                    }
                }
            }
        }
    }

    /// Checks forever, each backend on its group's interval. Checks that are
    /// due together run in parallel threads so one slow backend does not delay
    /// the others.
    pub fn run(mut self) {
        loop {
            let now = Instant::now();
            let due: Vec<(usize, usize)> = self
                .groups
                .iter()
                .enumerate()
                .flat_map(|(gi, g)| {
                    g.targets
                        .iter()
                        .enumerate()
                        .filter(|(_, t)| t.next <= now)
                        .map(move |(ti, _)| (gi, ti))
                })
                .collect();
            if !due.is_empty() {
                let groups = &self.groups;
                let results: Vec<Result<(), String>> = std::thread::scope(|s| {
                    let hs: Vec<_> = due
                        .iter()
                        .map(|&(gi, ti)| {
                            let g = &groups[gi];
                            let addr = g.targets[ti].address;
                            s.spawn(move || check_once(addr, &g.check, &g.tls, g.proxy_protocol))
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap_or_else(|_| Err("checker panicked".into())))
                        .collect()
                });
                let done = Instant::now();
                for ((gi, ti), r) in due.into_iter().zip(results) {
                    let g = &mut self.groups[gi];
                    let (rise, fall, interval) = (g.check.rise, g.check.fall, g.check.interval);
                    let t = &mut g.targets[ti];
                    t.next = done + interval;
                    apply(&self.map, t, r, rise, fall);
                }
            }
            let next = self
                .groups
                .iter()
                .flat_map(|g| g.targets.iter().map(|t| t.next))
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
            let wait = next.saturating_duration_since(Instant::now());
            if !wait.is_zero() {
                match self.updates.recv_timeout(wait) {
                    Ok(u) => self.update(u),
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    // The control plane is gone (tests): plain sleeps.
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        std::thread::sleep(wait)
                    }
                }
            }
            while let Ok(u) = self.updates.try_recv() {
                self.update(u);
            }
        }
    }
}

/// Applies one check result to a backend's rise/fall state.
fn apply(map: &HealthMap, t: &mut Target, r: Result<(), String>, rise: u32, fall: u32) {
    let fresh = std::mem::take(&mut t.fresh);
    map.note_check(t.id, &r);
    match r {
        Ok(()) if fresh => {
            t.up = true;
            map.bump_generation(t.id);
            map.mark_up_since(t.id);
            map.set(t.id, true);
            log::info!("{} passed its first check: in service", t.name);
        }
        Err(reason) if fresh => {
            map.count_failure(t.id);
            log::warn!("{} failed its first check: {reason}", t.name);
        }
        Ok(()) => {
            t.failures = 0;
            map.bump_generation(t.id);
            if !t.up {
                t.successes += 1;
                if t.successes >= rise {
                    t.up = true;
                    t.successes = 0;
                    map.mark_up_since(t.id);
                    map.set(t.id, true);
                    log::info!("{} is healthy again", t.name);
                }
            }
        }
        Err(reason) => {
            t.successes = 0;
            map.count_failure(t.id);
            if t.up {
                t.failures += 1;
                if t.failures >= fall {
                    t.up = false;
                    t.failures = 0;
                    map.set(t.id, false);
                    log::warn!("{} is unhealthy: {reason}", t.name);
                }
            }
        }
    }
}

/// Starts the checker: runs the first round (blocking, bounded by the
/// timeouts), then spawns the checker thread. Returns where to send new
/// member lists; `None` without health checks (no thread).
pub(crate) fn start(
    groups: Vec<CheckGroup>,
    map: Arc<HealthMap>,
) -> std::io::Result<Option<std::sync::mpsc::Sender<TargetsUpdate>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let Some(mut checker) = Checker::new(groups, map, rx) else {
        return Ok(None);
    };
    checker.first_round();
    std::thread::Builder::new()
        .name("lbd-health".into())
        .spawn(move || checker.run())?;
    Ok(Some(tx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_check_keeps_the_outcome_and_the_reason_until_a_rejoin() {
        let m = HealthMap::new(2);
        assert_eq!(m.last_check(0), None, "never checked");
        m.note_check(0, &Err("connection refused".into()));
        let c = m.last_check(0).expect("checked");
        assert_eq!(c.failure.as_deref(), Some("connection refused"));
        assert!(c.ago < Duration::from_secs(1));
        m.note_check(0, &Ok(()));
        assert_eq!(m.last_check(0).and_then(|c| c.failure), None);
        assert_eq!(m.last_check(1), None, "others untouched");
        m.join(0, false, false);
        assert_eq!(m.last_check(0), None, "a rejoined backend starts afresh");
    }

    #[test]
    fn bitmap_set_and_read_across_words() {
        let m = HealthMap::new(130);
        assert!((0..130).all(|i| m.is_up(i)));
        m.set(0, false);
        m.set(64, false);
        m.set(129, false);
        assert!(!m.is_up(0) && !m.is_up(64) && !m.is_up(129));
        assert!(m.is_up(1) && m.is_up(63) && m.is_up(65) && m.is_up(128));
        m.set(64, true);
        assert!(m.is_up(64));
        assert!(!m.is_up(500), "out of range is never up");
    }

    fn target() -> Target {
        let address = "127.0.0.1:1".parse().unwrap();
        Target::new((3, "b".into(), address), false, Instant::now())
    }

    #[test]
    fn a_fresh_backend_is_down_until_its_first_pass() {
        let m = HealthMap::new(4);
        m.set(3, false);
        let mut t = Target::new(
            (3, "b".into(), "127.0.0.1:1".parse().unwrap()),
            true,
            Instant::now(),
        );
        apply(&m, &mut t, Err("refused".into()), 2, 3);
        assert!(!m.is_up(3) && !t.up);
        apply(&m, &mut t, Ok(()), 2, 3);
        assert!(!m.is_up(3), "after a failure, rise applies");
        apply(&m, &mut t, Ok(()), 2, 3);
        assert!(m.is_up(3));
        let mut t = Target::new(
            (2, "c".into(), "127.0.0.1:2".parse().unwrap()),
            true,
            Instant::now(),
        );
        m.set(2, false);
        apply(&m, &mut t, Ok(()), 2, 3);
        assert!(m.is_up(2), "a first pass brings it up at once");
        assert!(m.up_since_us(2).is_some(), "and slow start ramps from then");
    }

    #[test]
    fn rise_and_fall_thresholds() {
        let m = HealthMap::new(4);
        let mut t = target();
        apply(&m, &mut t, Err("x".into()), 2, 3);
        apply(&m, &mut t, Err("x".into()), 2, 3);
        assert!(m.is_up(3), "two failures < fall 3");
        apply(&m, &mut t, Ok(()), 2, 3);
        apply(&m, &mut t, Err("x".into()), 2, 3);
        apply(&m, &mut t, Err("x".into()), 2, 3);
        assert!(m.is_up(3), "a success resets the failure count");
        apply(&m, &mut t, Err("x".into()), 2, 3);
        assert!(!m.is_up(3));
        apply(&m, &mut t, Ok(()), 2, 3);
        assert!(!m.is_up(3), "one success < rise 2");
        apply(&m, &mut t, Ok(()), 2, 3);
        assert!(m.is_up(3));
    }

    #[test]
    fn status_line_parsing() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status(b"HTTP/1.0 500 Oops\r\n"), Some(500));
        assert_eq!(parse_status(b"garbage"), None);
        assert_eq!(parse_status(b"HTTP/1.1 20 OK\r\n"), None);
    }

    #[test]
    fn tcp_check_against_real_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let check = HealthCheckConfig {
            kind: CheckKind::Tcp,
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 1,
            fall: 1,
        };
        assert!(check_once(addr, &check, &None, None).is_ok());
        drop(l);
        let e = check_once(addr, &check, &None, None).unwrap_err();
        assert_eq!(e, "connection refused");
    }
}
