//! Passive health: backends a worker saw fail, marked down on that worker
//! only.
//!
//! A connect that fails on live traffic marks the backend down in this
//! worker's own table at once, so a crash is noticed before the checker's
//! next round, and no worker ever writes shared memory. The mark is tagged
//! with the backend's health generation at the time (bumped by the checker
//! after every passing check) and holds until a newer check passes; for a
//! group without active checks it lapses after one second.

use std::cell::Cell;
use std::time::{Duration, Instant};

use super::{BackendId, Registry};
use crate::health::HealthMap;

/// How long a passive mark lasts for a backend without active checks.
const UNCHECKED_MARK: Duration = Duration::from_secs(1);

/// A worker's own passive marks, by backend id.
#[derive(Debug)]
pub(crate) struct PassiveMarks {
    /// Per backend: `Some((generation seen, expiry))` while marked down.
    /// Cells, so that eligibility can be asked through a shared borrow in
    /// the middle of a pick (a lapsed mark is cleared on the way).
    marks: Vec<Cell<Option<(u64, Instant)>>>,
    /// Whether the backend's group has active checks.
    checked: Vec<bool>,
}

impl PassiveMarks {
    /// An empty table for every backend of `registry`.
    pub(crate) fn new(registry: &Registry) -> Self {
        let checked: Vec<bool> = registry.slot_checked().collect();
        PassiveMarks {
            marks: (0..checked.len()).map(|_| Cell::new(None)).collect(),
            checked,
        }
    }

    /// Makes room for the ids of a new registry snapshot.
    pub(crate) fn grow(&mut self, registry: &Registry) {
        let backends = registry.slot_checked();
        for (i, checked) in backends.enumerate().skip(self.marks.len()) {
            debug_assert_eq!(i, self.marks.len());
            self.marks.push(Cell::new(None));
            self.checked.push(checked);
        }
    }

    /// Forgets `id`'s mark (it left its group).
    pub(crate) fn clear(&mut self, id: BackendId) {
        if let Some(m) = self.marks.get(id.index()) {
            m.set(None);
        }
    }

    /// Marks `id` down after a failed connect.
    pub(crate) fn mark(&mut self, id: BackendId, map: &HealthMap) {
        if let Some(m) = self.marks.get(id.index()) {
            m.set(Some((
                map.generation(id.index()),
                Instant::now() + UNCHECKED_MARK,
            )));
        }
    }

    /// True if `id` is eligible: up in the map and not passively marked.
    /// Only reads the clock when a mark exists.
    pub(crate) fn eligible(&self, id: BackendId, map: &HealthMap) -> bool {
        let i = id.index();
        if !map.is_up(i) || map.admin_state(i) != crate::health::AdminState::Active {
            return false;
        }
        let Some(slot) = self.marks.get(i) else {
            return false;
        };
        let Some((gen, expiry)) = slot.get() else {
            return true;
        };
        let lapsed = if self.checked.get(i).copied().unwrap_or(false) {
            map.generation(i) != gen
        } else {
            Instant::now() >= expiry
        };
        if lapsed {
            slot.set(None);
        }
        lapsed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_mark_lapses_on_newer_generation() {
        let cfg = crate::config::Config::from_yaml(
            "listeners: [{address: '127.0.0.1:1'}]\nupstreams:\n  w:\n    backends: ['127.0.0.1:2', '127.0.0.1:3']\n    health_check: {kind: tcp}\n",
            std::path::Path::new("t"),
            Some(1),
        )
        .expect("config");
        let reg = Registry::from_config(&cfg);
        let (a, b) = (reg.groups()[0].members[0], reg.groups()[0].members[1]);
        let m = HealthMap::new(2);
        let mut p = PassiveMarks::new(&reg);
        assert!(p.eligible(a, &m));
        p.mark(a, &m);
        assert!(!p.eligible(a, &m));
        assert!(p.eligible(b, &m));
        m.bump_generation(0);
        assert!(p.eligible(a, &m), "a newer passing check lifts the mark");
        m.set(1, false);
        assert!(!p.eligible(b, &m));
    }
}
