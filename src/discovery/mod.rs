//! DNS service discovery: the control thread that keeps each group's
//! discovered members up to date.
//!
//! Every group with a `discovery` block has its name resolved once at start
//! (on the main thread, before workers serve, so the first answer's backends
//! take the first round of health checks like configured ones) and then
//! again on the `lbd-discovery` thread: when the answer's TTL runs out,
//! clamped to `[min_ttl_ms, max_ttl_ms]` (or on a fixed `refresh`). Each
//! answer goes to [`Membership::set_dns`], which keeps the ids of addresses
//! that stay and publishes the new set to the workers. A failure (SERVFAIL,
//! refusal, timeout) keeps the last good set, is logged once per failure
//! streak and retried after `min_ttl_ms`; an answer without records keeps
//! the last set or clears it (`on_empty`). The resolver ([`dns`]) and its
//! tokio runtime live on this thread only, never on a worker.

pub(crate) mod dns;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, DiscoveryConfig, DiscoveryName};
use crate::membership::Membership;
use crate::upstream::{Source, Wanted};

/// A name that did not resolve at start (`-t`, where it is an error).
#[derive(Debug, thiserror::Error)]
#[error("upstreams.{group}.discovery.{key}: {name}: {reason}")]
pub struct DiscoveryError {
    group: String,
    key: String,
    name: String,
    reason: String,
}

/// One group's discovery.
struct Task {
    group: usize,
    config: DiscoveryConfig,
    resolver: dns::Resolver,
    next: Instant,
    /// In a streak of failures or empty answers (logged once).
    failing: bool,
}

/// Every group's discovery, ready to run on its thread.
pub(crate) struct Discovery {
    tasks: Vec<Task>,
    membership: Arc<Membership>,
}

fn written(d: &DiscoveryConfig) -> String {
    match &d.name {
        DiscoveryName::Host { name, port } => format!("{name}:{port}"),
        DiscoveryName::Srv { name } => name.clone(),
    }
}

/// `-t`: every discovery name resolves, with at least one record.
pub(crate) fn check(config: &Config) -> Result<(), DiscoveryError> {
    for up in &config.upstreams {
        let Some(d) = &up.discovery else { continue };
        let error = |reason: String| DiscoveryError {
            group: up.name.clone(),
            key: d.key.clone(),
            name: written(d),
            reason,
        };
        let resolver = dns::Resolver::new(d.nameservers.as_deref(), d.timeout)
            .map_err(|e| error(e.to_string()))?;
        match resolver.resolve(&d.name) {
            Ok(a) if a.records.is_empty() => return Err(error("no records".into())),
            Ok(_) => {}
            Err(e) => return Err(error(e.to_string())),
        }
    }
    Ok(())
}

impl Discovery {
    /// Resolves every group's name once; a name that does not resolve is
    /// a warning (its group starts with its static backends) and is asked
    /// again after `min_ttl_ms`. `None` without discovery.
    pub(crate) fn start(config: &Config, membership: Arc<Membership>) -> Option<Discovery> {
        let mut tasks = Vec::new();
        for (group, up) in config.upstreams.iter().enumerate() {
            let Some(d) = &up.discovery else { continue };
            let resolver = match dns::Resolver::new(d.nameservers.as_deref(), d.timeout) {
                Ok(r) => r,
                Err(e) => {
                    log::error!(
                        "upstreams.{}.discovery: cannot set up a resolver ({e}); no discovery",
                        up.name
                    );
                    continue;
                }
            };
            let config = d.clone();
            let next = Instant::now();
            let failing = false;
            tasks.push(Task {
                group,
                config,
                resolver,
                next,
                failing,
            });
        }
        if tasks.is_empty() {
            return None;
        }
        let mut discovery = Discovery { tasks, membership };
        for i in 0..discovery.tasks.len() {
            discovery.run_task(i);
        }
        Some(discovery)
    }

    /// Runs the discovery thread.
    pub(crate) fn spawn(mut self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("lbd-discovery".into())
            .spawn(move || loop {
                let now = Instant::now();
                for i in 0..self.tasks.len() {
                    if self.tasks[i].next <= now {
                        self.run_task(i);
                    }
                }
                let next = self.tasks.iter().map(|t| t.next).min();
                let wait = next.map_or(Duration::from_secs(1), |n| {
                    n.saturating_duration_since(Instant::now())
                });
                std::thread::sleep(wait);
            })?;
        Ok(())
    }

    /// Resolves task `i`'s name and applies the answer.
    fn run_task(&mut self, i: usize) {
        let t = &mut self.tasks[i];
        let reg = self.membership.registry();
        let group = reg.groups()[t.group].name.clone();
        let what = format!(
            "upstreams.{group}.discovery.{}: {}",
            t.config.key,
            written(&t.config)
        );
        let (retry, problem) = match t.resolver.resolve(&t.config.name) {
            Ok(a) if a.records.is_empty() => {
                let cleared = t.config.clear_on_empty;
                if cleared {
                    apply(&self.membership, t.group, &what, Vec::new());
                }
                let keeping = if cleared {
                    "cleared the discovered set"
                } else {
                    "keeping the last set"
                };
                (
                    t.config.next_refresh(a.ttl),
                    Some(format!("no records; {keeping}")),
                )
            }
            Ok(a) => {
                let weight = t.config.weight;
                let found = a
                    .records
                    .iter()
                    .map(|r| Wanted {
                        address: r.address,
                        name: r.address.to_string(),
                        weight: if matches!(t.config.name, DiscoveryName::Srv { .. }) {
                            r.weight
                        } else {
                            weight
                        },
                        source: Source::Dns,
                    })
                    .collect();
                apply(&self.membership, t.group, &what, found);
                (t.config.next_refresh(a.ttl), None)
            }
            Err(e) => (
                t.config.min_ttl,
                Some(format!(
                    "{e}; keeping the last set, retrying every {:?}",
                    t.config.min_ttl
                )),
            ),
        };
        match &problem {
            Some(p) if !t.failing => log::warn!("{what}: {p}"),
            None if t.failing => log::info!("{what}: resolves again"),
            _ => {}
        }
        t.failing = problem.is_some();
        t.next = Instant::now() + retry;
    }
}

/// Hands a group's discovered members to the membership.
fn apply(membership: &Membership, group: usize, what: &str, found: Vec<Wanted>) {
    if let Err(e) = membership.set_dns(group, found) {
        log::warn!("{what}: {e}; this answer is not used");
    }
}
