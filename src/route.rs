//! Routing: which upstream group a request goes to.
//!
//! Each listener has its [`Routes`], consulted once per request between
//! parsing its head and choosing a backend, with the protocol-neutral view
//! of the request (so HTTP/1 and later HTTP/2 route alike). Today a listener
//! has a single default route, its `upstream:` group; host and path matching
//! slot in here.

use crate::config::ListenerConfig;
use crate::http::request::RequestView;

/// Where one listener's requests go.
#[derive(Debug, Clone)]
pub(crate) struct Routes {
    default: usize,
}

/// The outcome of routing one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    /// Index of the upstream group.
    pub(crate) group: usize,
}

impl Routes {
    /// The routes of a listener.
    pub(crate) fn from_listener(l: &ListenerConfig) -> Self {
        Routes {
            default: l.upstream,
        }
    }

    /// The route for `req`; `None` when nothing matches (404).
    #[inline]
    pub(crate) fn select(&self, _req: &RequestView<'_>) -> Option<Route> {
        Some(Route {
            group: self.default,
        })
    }
}
