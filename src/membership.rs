//! Who is in each group: the control plane's one door to the backend set.
//!
//! A group's members come from three sources: its `backends` list, DNS
//! discovery ([`crate::discovery`]) and the admin API ([`crate::admin`]).
//! [`Membership`] keeps each source's list per group, and every change from
//! any of them goes through it: it derives the next registry snapshot
//! ([`Registry::with_members`], ids stable by address), prepares the shared
//! health entries of backends that join (down until their first check in a
//! group with health checks; slow start from now), publishes the snapshot
//! for the workers' next tick, and hands the checker its new targets. It
//! runs on the admin and discovery threads, never on a worker; its lock is
//! taken by those threads only.
//!
//! The admin API's changes (backends added and removed, drain and disable)
//! are run-time state: [`Membership::export`] writes them for the SIGQUIT
//! hand-over and [`Membership::import`] replays them in the new process.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::health::{AdminState, TargetsUpdate};
use crate::shard::Shared;
use crate::upstream::registry::{Change, Full};
use crate::upstream::{BackendId, Registry, Source, Wanted};

/// Why the admin API's change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum MembershipError {
    /// No group by that name.
    #[error("no upstream group `{0}`")]
    NoGroup(String),
    /// No member at that address.
    #[error("no backend {address} in `{group}`")]
    NoBackend {
        /// The group.
        group: String,
        /// The address asked for.
        address: String,
    },
    /// Adding an address the group already has.
    #[error("{address} is already a backend of `{group}`")]
    Exists {
        /// The group.
        group: String,
        /// The address.
        address: SocketAddr,
    },
    /// Removing a backend DNS discovery provides (it would come back).
    #[error("{address} comes from `{group}`'s DNS discovery: remove it from DNS, or drain it")]
    Discovered {
        /// The group.
        group: String,
        /// The address.
        address: SocketAddr,
    },
    /// No id left.
    #[error(transparent)]
    Full(#[from] Full),
}

impl MembershipError {
    /// The request field at fault.
    pub(crate) fn field(&self) -> &'static str {
        match self {
            MembershipError::NoGroup(_) => "group",
            MembershipError::Full(_) => "limits.max_backends",
            _ => "address",
        }
    }

    /// The HTTP status the admin API answers with.
    pub(crate) fn status(&self) -> u16 {
        match self {
            MembershipError::NoGroup(_) | MembershipError::NoBackend { .. } => 404,
            MembershipError::Exists { .. } | MembershipError::Discovered { .. } => 409,
            MembershipError::Full(_) => 507,
        }
    }
}

/// One group's sources.
#[derive(Debug, Default)]
struct Sources {
    /// `backends` from the config.
    statics: Vec<Wanted>,
    /// Static backends the API removed.
    removed: Vec<SocketAddr>,
    /// The last DNS answer.
    dns: Vec<Wanted>,
    /// Added through the API.
    api: Vec<Wanted>,
}

impl Sources {
    /// The members, in order: static, discovered, added.
    fn wanted(&self) -> Vec<Wanted> {
        self.statics
            .iter()
            .filter(|w| !self.removed.contains(&w.address))
            .chain(&self.dns)
            .chain(&self.api)
            .cloned()
            .collect()
    }
}

struct State {
    groups: Vec<Sources>,
    /// Drain and disable set through the API, by (group, address): kept
    /// while a backend is away (a DNS flap) and across an upgrade.
    states: HashMap<(usize, SocketAddr), AdminState>,
    checker: Option<Sender<TargetsUpdate>>,
}

/// The backend set's owner on the control plane.
pub(crate) struct Membership {
    shared: Arc<Shared>,
    state: Mutex<State>,
    /// Set once workers serve: from then on, joining backends ramp up
    /// (slow start) instead of starting at full weight.
    serving: AtomicBool,
}

impl Membership {
    /// The configured members of every group, as in `shared`'s registry.
    pub(crate) fn new(config: &Config, shared: Arc<Shared>) -> Self {
        let groups = config
            .upstreams
            .iter()
            .map(|up| Sources {
                statics: up
                    .backends
                    .iter()
                    .map(|b| Wanted {
                        address: b.address,
                        name: b.name.clone(),
                        weight: b.weight,
                        source: Source::Static,
                    })
                    .collect(),
                ..Sources::default()
            })
            .collect();
        Membership {
            shared,
            state: Mutex::new(State {
                groups,
                states: HashMap::new(),
                checker: None,
            }),
            serving: AtomicBool::new(false),
        }
    }

    /// Workers serve now; the checker (if any) takes new targets from `tx`.
    pub(crate) fn serving(&self, checker: Option<Sender<TargetsUpdate>>) {
        self.lock().checker = checker;
        self.serving.store(true, Ordering::Relaxed);
    }

    /// The current snapshot.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.shared.registry.load_full()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere with the lock held leaves consistent lists
        // (each change is computed before it is stored).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Group `g`'s discovered members are now `found`.
    pub(crate) fn set_dns(&self, g: usize, found: Vec<Wanted>) -> Result<Change, Full> {
        let mut st = self.lock();
        let Some(sources) = st.groups.get_mut(g) else {
            return Ok(Change::default());
        };
        let before = std::mem::replace(&mut sources.dns, found);
        let r = self.publish(&mut st, g);
        if r.is_err() {
            st.groups[g].dns = before;
        }
        r
    }

    /// `POST /upstreams/{group}/backends`.
    pub(crate) fn add(
        &self,
        group: &str,
        address: SocketAddr,
        weight: u32,
    ) -> Result<BackendId, MembershipError> {
        let mut st = self.lock();
        let g = self.group(group)?;
        if self.registry().find(g, address).is_some() {
            let group = group.to_owned();
            return Err(MembershipError::Exists { group, address });
        }
        let sources = &mut st.groups[g];
        let name = address.to_string();
        let source = Source::Api;
        sources.api.push(Wanted {
            address,
            name,
            weight,
            source,
        });
        if let Err(e) = self.publish(&mut st, g) {
            st.groups[g].api.pop();
            return Err(e.into());
        }
        self.member(g, group, &address.to_string())
    }

    /// `DELETE /upstreams/{group}/backends/{address}`.
    pub(crate) fn remove(&self, group: &str, address: &str) -> Result<BackendId, MembershipError> {
        let mut st = self.lock();
        let g = self.group(group)?;
        let id = self.member(g, group, address)?;
        let reg = self.registry();
        let b = reg.backend(id);
        let sources = &mut st.groups[g];
        match b.source {
            Source::Dns => {
                let group = group.to_owned();
                let address = b.address;
                return Err(MembershipError::Discovered { group, address });
            }
            Source::Api => sources.api.retain(|w| w.address != b.address),
            Source::Static => sources.removed.push(b.address),
        }
        self.publish(&mut st, g)?;
        Ok(id)
    }

    /// `POST …/{address}/drain|disable|enable`.
    pub(crate) fn set_state(
        &self,
        group: &str,
        address: &str,
        state: AdminState,
    ) -> Result<BackendId, MembershipError> {
        let mut st = self.lock();
        let g = self.group(group)?;
        let id = self.member(g, group, address)?;
        let addr = self.registry().backend(id).address;
        if state == AdminState::Active {
            st.states.remove(&(g, addr));
        } else {
            st.states.insert((g, addr), state);
        }
        self.shared.health.set_admin_state(id.index(), state);
        Ok(id)
    }

    fn group(&self, name: &str) -> Result<usize, MembershipError> {
        self.registry()
            .group_index(name)
            .ok_or_else(|| MembershipError::NoGroup(name.to_owned()))
    }

    /// The member of group `g` written as `address` (`IP:port`, or its
    /// name as configured).
    fn member(&self, g: usize, group: &str, address: &str) -> Result<BackendId, MembershipError> {
        let reg = self.registry();
        let parsed: Option<SocketAddr> = address.parse().ok();
        reg.groups()[g]
            .members
            .iter()
            .copied()
            .find(|&id| {
                let b = reg.backend(id);
                Some(b.address) == parsed || b.name == address
            })
            .ok_or_else(|| MembershipError::NoBackend {
                group: group.to_owned(),
                address: address.to_owned(),
            })
    }

    /// Stores group `g`'s next snapshot: joined backends get their health
    /// entries first, so no worker sees one up before it should be.
    fn publish(&self, st: &mut State, g: usize) -> Result<Change, Full> {
        let current = self.registry();
        let (next, change) = current.with_members(g, &st.groups[g].wanted())?;
        if current.same_members(&next, g) {
            return Ok(change);
        }
        let checked = next.groups()[g].checked;
        let ramp = self.serving.load(Ordering::Relaxed);
        let health = &self.shared.health;
        for &id in &change.joined {
            health.join(id.index(), !checked, ramp);
            if let Some(&s) = st.states.get(&(g, next.backend(id).address)) {
                health.set_admin_state(id.index(), s);
            }
        }
        let name = &next.groups()[g].name;
        for &id in &change.joined {
            log::info!("{name}: {} joins", next.backend(id).name);
        }
        for &id in &change.left {
            log::info!("{name}: {} leaves", next.backend(id).name);
        }
        let targets = checked.then(|| next.check_targets(g));
        self.shared.registry.store(Arc::new(next));
        if let (Some(tx), Some(t)) = (&st.checker, targets) {
            let _ = tx.send((g, t));
        }
        Ok(change)
    }

    /// The admin API's changes, for the new process of an upgrade.
    pub(crate) fn export(&self) -> Vec<u8> {
        let st = self.lock();
        let reg = self.registry();
        let groups = reg
            .groups()
            .iter()
            .zip(&st.groups)
            .enumerate()
            .map(|(g, (group, s))| SavedGroup {
                name: group.name.clone(),
                added: s
                    .api
                    .iter()
                    .map(|w| SavedBackend {
                        address: w.address,
                        weight: w.weight,
                    })
                    .collect(),
                removed: s.removed.clone(),
                states: st
                    .states
                    .iter()
                    .filter(|((sg, _), _)| *sg == g)
                    .map(|(&(_, address), s)| SavedState {
                        address,
                        state: s.name().to_owned(),
                    })
                    .collect(),
            })
            .collect();
        serde_json::to_vec(&Saved { version: 1, groups }).unwrap_or_default()
    }

    /// Replays an old process's [`Self::export`]; what no longer fits this
    /// configuration (a group gone, an address now configured twice) is
    /// skipped with a warning. Returns how many changes applied.
    pub(crate) fn import(&self, bytes: &[u8]) -> Result<usize, serde_json::Error> {
        let saved: Saved = serde_json::from_slice(bytes)?;
        let mut applied = 0;
        for sg in saved.groups {
            if self.registry().group_index(&sg.name).is_none() {
                log::warn!(
                    "upgrade: group `{}` is gone; its API changes are dropped",
                    sg.name
                );
                continue;
            }
            applied += self.import_group(&sg);
        }
        Ok(applied)
    }

    fn import_group(&self, sg: &SavedGroup) -> usize {
        let mut applied = 0;
        let mut note = |what: &str, r: Result<BackendId, MembershipError>| match r {
            Ok(_) => applied += 1,
            Err(e) => log::warn!("upgrade: `{}`: cannot {what}: {e}", sg.name),
        };
        for a in &sg.removed {
            note("remove", self.remove(&sg.name, &a.to_string()));
        }
        for b in &sg.added {
            note("add", self.add(&sg.name, b.address, b.weight));
        }
        for s in &sg.states {
            let state = match s.state.as_str() {
                "draining" => AdminState::Draining,
                "disabled" => AdminState::Disabled,
                _ => AdminState::Active,
            };
            // A discovered backend not back yet takes its state when it joins.
            if let Some(g) = self.registry().group_index(&sg.name) {
                self.lock().states.insert((g, s.address), state);
            }
            match self.set_state(&sg.name, &s.address.to_string(), state) {
                Err(MembershipError::NoBackend { .. }) => {}
                r => note("restore the drain state of", r),
            }
        }
        applied
    }
}

/// [`Membership::export`]'s format (JSON).
#[derive(Serialize, Deserialize)]
struct Saved {
    version: u32,
    groups: Vec<SavedGroup>,
}

#[derive(Serialize, Deserialize)]
struct SavedGroup {
    name: String,
    added: Vec<SavedBackend>,
    removed: Vec<SocketAddr>,
    states: Vec<SavedState>,
}

#[derive(Serialize, Deserialize)]
struct SavedBackend {
    address: SocketAddr,
    weight: u32,
}

#[derive(Serialize, Deserialize)]
struct SavedState {
    address: SocketAddr,
    state: String,
}
