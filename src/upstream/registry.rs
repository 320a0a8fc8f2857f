//! The backend registry: every backend of every group under a stable id, as
//! an immutable snapshot, and how the next snapshot is derived when a
//! group's members change.
//!
//! A [`BackendId`] is the index of a backend's slot, assigned when a
//! `(group, address)` pair first joins and never given to another pair: an
//! address that leaves and comes back (a DNS answer that flaps, an API
//! remove then add) gets its old id, and with it whatever per-id state the
//! threads kept. Slots are never freed, so an id held by an in-flight
//! request still names its backend after the backend left. The id space is
//! bounded by `limits.max_backends`, which sizes the shared per-backend
//! tables (health map, counters) once at start.
//!
//! Snapshots are built off the data path (main thread at start, then the
//! control plane, [`crate::membership`]) and published through an
//! `ArcSwap`; workers take a new one up in their housekeeping tick, never
//! on the request path.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::Config;
use crate::health::CheckGroup;

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

/// Where a backend came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The group's `backends` list.
    Static,
    /// DNS discovery.
    Dns,
    /// The admin API.
    Api,
}

impl Source {
    /// The name `GET /upstreams` uses.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Dns => "dns",
            Source::Api => "api",
        }
    }
}

/// A backend as every thread knows it.
#[derive(Debug, Clone, PartialEq)]
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
    /// Where it came from.
    pub(crate) source: Source,
}

/// An upstream group: its name and current members.
#[derive(Debug, Clone)]
pub(crate) struct Group {
    /// The key under `upstreams:`.
    pub(crate) name: String,
    /// Its backends now: static ones in config order, then discovered,
    /// then added through the API.
    pub(crate) members: Vec<BackendId>,
    /// Whether the group has active health checks.
    pub(crate) checked: bool,
}

/// A member a group should have (see [`Registry::with_members`]).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Wanted {
    /// Where to connect.
    pub(crate) address: SocketAddr,
    /// How it is spelled in logs and metric labels.
    pub(crate) name: String,
    /// Balancing weight, ≥ 1.
    pub(crate) weight: u32,
    /// Where it came from.
    pub(crate) source: Source,
}

/// Every backend of every group, by stable id: one immutable snapshot.
#[derive(Debug, Clone)]
pub(crate) struct Registry {
    /// Bumped by every change; workers compare it in their tick.
    epoch: u64,
    /// Every slot ever assigned, by id (members or not).
    backends: Vec<Arc<Backend>>,
    groups: Vec<Group>,
    /// `limits.max_backends` (at least the configured count).
    capacity: usize,
}

/// The id space is full (`limits.max_backends`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("all {0} backend ids are taken (limits.max_backends)")]
pub(crate) struct Full(pub(crate) usize);

/// What a new snapshot changed in one group.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Change {
    /// Ids that became members (new, or back after leaving).
    pub(crate) joined: Vec<BackendId>,
    /// Ids that stopped being members.
    pub(crate) left: Vec<BackendId>,
}

impl Registry {
    /// The registry of the configured backends (ids in config order).
    pub(crate) fn from_config(config: &Config) -> Self {
        let mut reg = Registry {
            epoch: 0,
            backends: Vec::new(),
            groups: Vec::new(),
            capacity: 0,
        };
        for (gi, up) in config.upstreams.iter().enumerate() {
            let mut members = Vec::with_capacity(up.backends.len());
            for b in &up.backends {
                // A backend listed twice is one member.
                if members
                    .iter()
                    .any(|&id: &BackendId| reg.backend(id).address == b.address)
                {
                    continue;
                }
                let id = BackendId(reg.backends.len() as u32);
                members.push(id);
                reg.backends.push(Arc::new(Backend {
                    id,
                    group: gi,
                    address: b.address,
                    name: b.name.clone(),
                    weight: b.weight,
                    source: Source::Static,
                }));
            }
            reg.groups.push(Group {
                name: up.name.clone(),
                members,
                checked: up.health_check.is_some(),
            });
        }
        reg.capacity = config.limits.max_backends.max(reg.backends.len());
        reg
    }

    /// The snapshot's epoch.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Ids assigned so far (per-backend tables need this many slots).
    pub(crate) fn len(&self) -> usize {
        self.backends.len()
    }

    /// Ids the process can ever assign (shared tables are this long).
    pub(crate) fn capacity(&self) -> usize {
        self.capacity
    }

    /// A backend by id (a member or a former one).
    pub(crate) fn backend(&self, id: BackendId) -> &Backend {
        &self.backends[id.index()]
    }

    /// For every slot, by id: whether its group has active checks.
    pub(crate) fn slot_checked(&self) -> impl Iterator<Item = bool> + '_ {
        self.backends.iter().map(|b| self.groups[b.group].checked)
    }

    /// Every group, by index.
    pub(crate) fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The index of group `name`.
    pub(crate) fn group_index(&self, name: &str) -> Option<usize> {
        self.groups.iter().position(|g| g.name == name)
    }

    /// The current members of every group, as (group, backend).
    pub(crate) fn members(&self) -> impl Iterator<Item = (&Group, &Backend)> + '_ {
        self.groups
            .iter()
            .flat_map(move |g| g.members.iter().map(move |&id| (g, self.backend(id))))
    }

    /// True if `id` is a member of its group in this snapshot.
    pub(crate) fn is_member(&self, id: BackendId) -> bool {
        self.backends
            .get(id.index())
            .is_some_and(|b| self.groups[b.group].members.contains(&id))
    }

    /// True if group `g` has the same members in `self` and `other`, with
    /// the same weights and names.
    pub(crate) fn same_members(&self, other: &Registry, g: usize) -> bool {
        let (Some(a), Some(b)) = (self.groups.get(g), other.groups.get(g)) else {
            return false;
        };
        a.members == b.members
            && a.members.iter().all(|id| {
                matches!(
                    (self.backends.get(id.index()), other.backends.get(id.index())),
                    (Some(x), Some(y)) if Arc::ptr_eq(x, y)
                )
            })
    }

    /// The member of group `g` at `address`, if any.
    pub(crate) fn find(&self, g: usize, address: SocketAddr) -> Option<&Backend> {
        let group = self.groups.get(g)?;
        group
            .members
            .iter()
            .map(|&id| self.backend(id))
            .find(|b| b.address == address)
    }

    /// The next snapshot, in which group `g` has exactly `wanted` as
    /// members (in that order; a repeated address counts once, first
    /// wins). Addresses the group has had before keep their ids; new ones
    /// get fresh ids. The registry is unchanged on error.
    pub(crate) fn with_members(
        &self,
        g: usize,
        wanted: &[Wanted],
    ) -> Result<(Registry, Change), Full> {
        let mut next = self.clone();
        next.epoch += 1;
        let known: HashMap<SocketAddr, BackendId> = self
            .backends
            .iter()
            .filter(|b| b.group == g)
            .map(|b| (b.address, b.id))
            .collect();
        let mut members: Vec<BackendId> = Vec::with_capacity(wanted.len());
        for w in wanted {
            if members
                .iter()
                .any(|&id| next.backend(id).address == w.address)
            {
                continue;
            }
            let id = match known.get(&w.address) {
                Some(&id) => id,
                None if next.backends.len() >= next.capacity => return Err(Full(next.capacity)),
                None => BackendId(next.backends.len() as u32),
            };
            let backend = Backend {
                id,
                group: g,
                address: w.address,
                name: w.name.clone(),
                weight: w.weight,
                source: w.source,
            };
            match next.backends.get_mut(id.index()) {
                Some(slot) if **slot != backend => *slot = Arc::new(backend),
                Some(_) => {}
                None => next.backends.push(Arc::new(backend)),
            }
            members.push(id);
        }
        let old = &self.groups[g].members;
        let change = Change {
            joined: members
                .iter()
                .filter(|id| !old.contains(id))
                .copied()
                .collect(),
            left: old
                .iter()
                .filter(|id| !members.contains(id))
                .copied()
                .collect(),
        };
        next.groups[g].members = members;
        Ok((next, change))
    }

    /// What the health checker checks: each group with a `health_check`
    /// block and its current members.
    pub(crate) fn check_groups(&self, config: &Config) -> Vec<CheckGroup> {
        let mut out = Vec::new();
        for (gi, (_, up)) in self.groups.iter().zip(&config.upstreams).enumerate() {
            let Some(check) = &up.health_check else {
                continue;
            };
            out.push(CheckGroup {
                group: gi,
                check: check.clone(),
                proxy_protocol: up.send_proxy_protocol,
                tls: up.tls.as_ref().and_then(crate::tls::client_config),
                targets: self.check_targets(gi),
            });
        }
        out
    }

    /// Group `g`'s members as the checker's targets: (id, name, address).
    pub(crate) fn check_targets(&self, g: usize) -> Vec<(usize, String, SocketAddr)> {
        self.groups.get(g).map_or_else(Vec::new, |g| {
            g.members
                .iter()
                .map(|&id| {
                    let b = self.backend(id);
                    (id.index(), b.name.clone(), b.address)
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(n: usize, capacity: usize) -> Registry {
        let backends = (0..n)
            .map(|i| {
                Arc::new(Backend {
                    id: BackendId(i as u32),
                    group: 0,
                    address: addr(i),
                    name: addr(i).to_string(),
                    weight: 1,
                    source: Source::Static,
                })
            })
            .collect();
        Registry {
            epoch: 0,
            backends,
            groups: vec![Group {
                name: "web".into(),
                members: (0..n as u32).map(BackendId).collect(),
                checked: false,
            }],
            capacity,
        }
    }

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16))
    }

    fn wanted(ports: &[usize]) -> Vec<Wanted> {
        ports
            .iter()
            .map(|&i| Wanted {
                address: addr(i),
                name: addr(i).to_string(),
                weight: 1,
                source: Source::Dns,
            })
            .collect()
    }

    fn ids(r: &Registry) -> Vec<usize> {
        r.groups[0].members.iter().map(|id| id.index()).collect()
    }

    #[test]
    fn ids_are_stable_across_changes() {
        let r = reg(2, 8);
        let (r1, c) = r.with_members(0, &wanted(&[1, 2])).expect("room");
        assert_eq!(ids(&r1), [1, 2]);
        assert_eq!(c.joined, [BackendId(2)]);
        assert_eq!(c.left, [BackendId(0)]);
        assert_eq!(r1.epoch(), 1);
        assert!(!r1.is_member(BackendId(0)));
        assert_eq!(
            r1.backend(BackendId(0)).address,
            addr(0),
            "a former member keeps its slot"
        );
        // Coming back: the old id, not a new one.
        let (r2, c) = r1.with_members(0, &wanted(&[0, 1, 2])).expect("room");
        assert_eq!(ids(&r2), [0, 1, 2]);
        assert_eq!(c.joined, [BackendId(0)]);
        assert_eq!(r2.len(), 3);
        assert_eq!(r2.backend(BackendId(0)).source, Source::Dns);
    }

    #[test]
    fn duplicates_count_once_and_capacity_is_enforced() {
        let r = reg(1, 2);
        let (r1, _) = r.with_members(0, &wanted(&[0, 0, 1, 1])).expect("room");
        assert_eq!(ids(&r1), [0, 1]);
        assert_eq!(r1.with_members(0, &wanted(&[0, 1, 2])).err(), Some(Full(2)));
        let (r2, c) = r1.with_members(0, &wanted(&[])).expect("empty is fine");
        assert!(r2.groups[0].members.is_empty());
        assert_eq!(c.left.len(), 2);
        assert!(r2
            .with_members(0, &wanted(&[1]))
            .expect("room")
            .1
            .left
            .is_empty());
    }

    #[test]
    fn weight_change_is_not_a_membership_change() {
        let r = reg(1, 2);
        let mut w = wanted(&[0]);
        w[0].weight = 5;
        let (r1, c) = r.with_members(0, &w).expect("room");
        assert_eq!(c, Change::default());
        assert_eq!(r1.backend(BackendId(0)).weight, 5);
        assert_eq!(
            r.backend(BackendId(0)).weight,
            1,
            "the old snapshot is untouched"
        );
    }
}
