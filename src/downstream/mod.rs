//! The client side: accepted connections, from their first byte to the
//! response written back.
//!
//! [`h1`] is the HTTP/1 connection loop (idle wait and parking, TLS accept,
//! reading request heads, keep-alive, error responses) and implements
//! [`crate::proxy::Downstream`] for the exchanges it hands to
//! [`crate::proxy`]. [`proxy_protocol`] reads a PROXY protocol header in
//! front of a connection (before TLS), [`request_id`] keeps or makes request
//! ids. [`h2`] serves HTTP/2 connections (h2c prior knowledge, ALPN `h2`),
//! every stream one exchange through the same path, over the connection in
//! poll form ([`poll_io`]), metered for control-frame floods
//! ([`h2_flood`]).

pub(crate) mod h1;
pub(crate) mod h2;
pub(crate) mod h2_flood;
pub(crate) mod poll_io;
pub(crate) mod proxy_protocol;
pub(crate) mod request_id;

use std::time::Duration;

/// How long an idle keep-alive connection stays open once draining began.
pub(crate) const DRAIN_IDLE_WINDOW: Duration = Duration::from_secs(1);

/// How a connection's task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// The connection is closed.
    Closed,
    /// The connection went on idle into the worker's parking lot.
    Parked,
}
