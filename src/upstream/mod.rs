//! Backends and upstream groups as a worker sees them.
//!
//! Every backend of every group gets a global id (its position when all
//! groups' backends are laid end to end); the connection pool and, later, the
//! health bitmap are indexed by it. [`Group`] pairs a group's id range with the
//! worker's own round-robin cursor ([`select`]); idle connections live in
//! [`pool`].

pub mod pool;
pub mod select;

use std::net::SocketAddr;

use crate::config::Config;

/// A backend, as the data path needs it.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where to connect.
    pub address: SocketAddr,
    /// The configured spelling (logs).
    pub name: String,
}

/// One worker's view of an upstream group.
pub struct Group {
    /// Global id of the group's first backend.
    pub first: usize,
    /// This worker's cursor.
    pub cursor: select::RoundRobin,
}

/// All backends, flattened, plus per-group cursors for one worker.
pub struct Upstreams {
    /// Backends by global id.
    pub backends: Vec<Backend>,
    /// Groups in config order.
    pub groups: Vec<Group>,
}

impl Upstreams {
    /// Builds the flattened table from the config.
    pub fn from_config(config: &Config) -> Self {
        let mut backends = Vec::new();
        let mut groups = Vec::new();
        for up in &config.upstreams {
            let first = backends.len();
            for b in &up.backends {
                backends.push(Backend {
                    address: b.address,
                    name: b.name.clone(),
                });
            }
            groups.push(Group {
                first,
                cursor: select::RoundRobin::new(up.backends.iter().map(|b| b.weight)),
            });
        }
        Upstreams { backends, groups }
    }
}
