//! Routing: which upstream group a request goes to, and the path it is
//! forwarded with.
//!
//! Each listener has its [`Routes`], consulted once per request between
//! parsing its head and choosing a backend, with the protocol-neutral view
//! of the request (so HTTP/1 and later HTTP/2 route alike). [`table`] owns
//! host and path matching (exact host, then the longest `*.suffix`, then
//! routes without a host; within a host the longest `path_prefix`; once a
//! host matched only its routes count). [`path`] owns normalisation: on a
//! listener whose routes match or strip paths, the path is normalised
//! (`//` merged, dot segments resolved, encoded slashes and dot segments
//! rejected with 400) before matching, and that same form is forwarded, so
//! a request is never routed by one spelling and served by another. A
//! listener with only the `upstream:` shorthand has a single default route
//! and pays for none of this.

pub(crate) mod path;
pub(crate) mod table;

use crate::config::{ListenerConfig, ListenerRoutes, RouteConfig};
use crate::http::request::{RequestError, RequestView};

/// Where one listener's requests go.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    routes: ListenerRoutes,
    /// Some route matches on or strips the path: normalise it.
    paths: bool,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// Index of the route in the listener's `routes`.
    pub(crate) index: usize,
    /// Index of the upstream group.
    pub(crate) group: usize,
}

/// Scratch space for rewritten paths (one per worker, reused).
#[derive(Debug, Default)]
pub(crate) struct PathScratch {
    normalized: Vec<u8>,
    stripped: Vec<u8>,
}

impl Routes {
    /// The routes of a listener.
    pub(crate) fn from_listener(l: &ListenerConfig) -> Self {
        let paths = !l.routes.table.is_single()
            && (l.routes.table.uses_paths()
                || l.routes.routes.iter().any(|r| r.strip_prefix.is_some()));
        Routes {
            routes: l.routes.clone(),
            paths,
        }
    }

    /// A route's options.
    pub(crate) fn config(&self, route: usize) -> &RouteConfig {
        &self.routes.routes[route]
    }

    /// The upstream group route `route` sends to.
    pub(crate) fn group(&self, route: usize) -> Option<usize> {
        (route < self.routes.routes.len()).then(|| self.routes.table.target(route))
    }

    /// A route's name for the access log (`routes[i]`); `None` for the
    /// `upstream:` shorthand, whose lines stay as they were. A `routes:`
    /// list of one default route is still named (`routes[0]`).
    pub(crate) fn name(&self, route: usize) -> Option<&str> {
        if self.routes.shorthand {
            return None;
        }
        self.routes.routes.get(route).map(|r| r.name.as_str())
    }

    /// Routes `req`: `Ok(None)` when nothing matches (404); otherwise the
    /// route and the path to forward (normalised and stripped as the route
    /// says, borrowed from the request or from `scratch`).
    pub(crate) fn select<'a>(
        &self,
        req: &RequestView<'a>,
        scratch: &'a mut PathScratch,
    ) -> Result<Option<(Route, &'a [u8])>, RequestError> {
        if self.routes.table.is_single() {
            let route = Route {
                index: 0,
                group: self.routes.table.target(0),
            };
            return Ok(Some((route, req.path)));
        }
        let path = if self.paths && req.path != b"*" {
            path::normalize(req.path, &mut scratch.normalized)
                .map_err(|e| RequestError::Bad(e.reason()))?
        } else {
            req.path
        };
        let Some(index) = self.routes.table.lookup(req.target_host(), path) else {
            return Ok(None);
        };
        let route = Route {
            index,
            group: self.routes.table.target(index),
        };
        let path = match &self.routes.routes[index].strip_prefix {
            Some(prefix) => path::strip_prefix(path, prefix, &mut scratch.stripped),
            None => path,
        };
        Ok(Some((route, path)))
    }
}
