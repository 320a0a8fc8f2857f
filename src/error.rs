//! Proxy errors: who failed, whether a retry is safe, what the client sees.
//!
//! Modelled on Pingora's error taxonomy: every failure on the request path is
//! a [`ProxyError`] with a [`Side`] (downstream client, upstream backend, or
//! lbd itself), an [`ErrorKind`] and a [`Retry`] verdict (Pingora's
//! `RetryType`), decided where the error is made from what had happened by
//! then. One function, [`ProxyError::status`], maps it to the status the
//! client gets; [`ProxyError::retryable`] says whether the request may be
//! tried again. No boxing: these are created on the hot path.

use crate::http::chunked::ChunkError;
use crate::http::request::RequestError;
use crate::http::response::ResponseError;

/// Who failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client (malformed request, timeout, disconnect).
    Downstream,
    /// The backend (refused, reset, timed out, bad response).
    Upstream,
    /// lbd itself.
    Internal,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    /// The client's request was rejected by the codec.
    #[error("{0}")]
    BadRequest(#[from] RequestError),
    /// The client's chunked body is malformed.
    #[error("bad chunked request body: {0}")]
    BadRequestBody(ChunkError),
    /// No route of the listener matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// On a TLS listener, the request's Host names another certificate than
    /// the one the connection was set up with (SNI).
    #[error("Host names another certificate than the connection's SNI")]
    Misdirected,
    /// The client was too slow sending its head or body.
    #[error("client timed out")]
    ClientTimeout,
    /// The client closed or reset the connection, or a write to it failed.
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    /// Connecting to the backend failed (nothing was sent).
    #[error("connect to upstream failed: {0}")]
    ConnectFailed(std::io::Error),
    /// Connecting to the backend timed out (nothing was sent).
    #[error("connect to upstream timed out")]
    ConnectTimeout,
    /// The TLS handshake with the backend failed (nothing was sent).
    #[error("TLS handshake with upstream failed: {0}")]
    TlsHandshake(std::io::Error),
    /// The worker already holds `limits.max_tunnels_per_worker` tunnels.
    #[error("too many upgraded connections on this worker")]
    TunnelLimit,
    /// lbd ran out of descriptors, ports or memory opening a connection.
    #[error("out of local resources: {0}")]
    LocalResources(std::io::Error),
    /// No backend could be tried.
    #[error("no upstream available")]
    NoUpstream,
    /// The backend failed after the request was (partly) sent.
    #[error("upstream I/O: {0}")]
    UpstreamIo(std::io::Error),
    /// The backend closed the connection before a complete response head.
    #[error("upstream closed the connection before responding")]
    UpstreamClosed,
    /// The backend did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The backend's response head was invalid or ambiguous.
    #[error("{0}")]
    BadResponse(#[from] ResponseError),
    /// The backend's chunked body is malformed.
    #[error("bad chunked response body: {0}")]
    BadResponseBody(ChunkError),
    /// The backend closed before the announced end of the body.
    #[error("upstream closed mid-body")]
    UpstreamTruncated,
}

/// Whether the request may be tried again after this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never (something reached the client, the backend may have acted on
    /// a partial request, or the failure is not the backend's).
    No,
    /// Nothing reached the backend: any request may go to another one.
    Yes,
    /// The request was sent but no response byte came back: only a
    /// request that is idempotent and entirely buffered may be sent again
    /// (RFC 9110 §9.2.2; nginx's `proxy_next_upstream error`).
    IfResendable,
}

/// An error on the request path.
#[derive(Debug)]
pub struct ProxyError {
    /// Who failed.
    pub side: Side,
    /// What happened.
    pub kind: ErrorKind,
    /// Whether a retry is safe.
    pub retry: Retry,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = match self.side {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        };
        write!(f, "{side}: {}", self.kind)
    }
}

impl ProxyError {
    /// A client-side failure (never retried).
    pub fn downstream(kind: ErrorKind) -> Self {
        ProxyError {
            side: Side::Downstream,
            kind,
            retry: Retry::No,
        }
    }

    /// A backend-side failure, retry verdict from what the kind says was
    /// sent: a failed connect or handshake sent nothing; an I/O failure or
    /// close before any response byte leaves only resendable requests
    /// retryable; a timeout or a bad response is never retried.
    pub fn upstream(kind: ErrorKind) -> Self {
        let retry = match kind {
            ErrorKind::ConnectFailed(_)
            | ErrorKind::ConnectTimeout
            | ErrorKind::TlsHandshake(_) => Retry::Yes,
            ErrorKind::UpstreamIo(_) | ErrorKind::UpstreamClosed => Retry::IfResendable,
            _ => Retry::No,
        };
        ProxyError {
            side: Side::Upstream,
            kind,
            retry,
        }
    }

    /// lbd's own failure (out of descriptors, ports or memory): not the
    /// backend's, so neither retried elsewhere nor held against it.
    pub fn internal(kind: ErrorKind) -> Self {
        ProxyError {
            side: Side::Internal,
            kind,
            retry: Retry::No,
        }
    }

    /// Whether the request may be tried again; `resendable`: it is
    /// idempotent and lbd still holds all of it.
    pub fn retryable(&self, resendable: bool) -> bool {
        match self.retry {
            Retry::No => false,
            Retry::Yes => true,
            Retry::IfResendable => resendable,
        }
    }

    /// The same failure once response bytes reached the client: it can
    /// only close the connection, never be retried.
    pub fn after_response(mut self) -> Self {
        self.retry = Retry::No;
        self
    }

    /// The status the client gets, if a response can still be sent.
    pub fn status(&self) -> Option<u16> {
        Some(match &self.kind {
            ErrorKind::BadRequest(e) => e.status(),
            ErrorKind::BadRequestBody(_) => 400,
            ErrorKind::NoRoute => 404,
            ErrorKind::Misdirected => 421,
            ErrorKind::ClientTimeout => 408,
            ErrorKind::ClientIo(_) => return None,
            ErrorKind::ConnectFailed(_)
            | ErrorKind::TlsHandshake(_)
            | ErrorKind::UpstreamIo(_)
            | ErrorKind::UpstreamClosed
            | ErrorKind::BadResponse(_)
            | ErrorKind::BadResponseBody(_)
            | ErrorKind::UpstreamTruncated => 502,
            ErrorKind::ConnectTimeout | ErrorKind::UpstreamTimeout => 504,
            ErrorKind::NoUpstream | ErrorKind::LocalResources(_) | ErrorKind::TunnelLimit => 503,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_mapping() {
        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            ProxyError::upstream(ErrorKind::ConnectFailed(io())).status(),
            Some(502)
        );
        assert_eq!(
            ProxyError::upstream(ErrorKind::ConnectTimeout).status(),
            Some(504)
        );
        assert_eq!(
            ProxyError::upstream(ErrorKind::UpstreamTimeout).status(),
            Some(504)
        );
        assert_eq!(
            ProxyError::upstream(ErrorKind::NoUpstream).status(),
            Some(503)
        );
        assert_eq!(
            ProxyError::downstream(ErrorKind::ClientTimeout).status(),
            Some(408)
        );
        assert_eq!(
            ProxyError::downstream(ErrorKind::ClientIo(io())).status(),
            None
        );
        assert!(ProxyError::upstream(ErrorKind::ConnectFailed(io())).retryable(false));
        let closed = ProxyError::upstream(ErrorKind::UpstreamClosed);
        assert!(closed.retryable(true) && !closed.retryable(false));
        assert!(!ProxyError::upstream(ErrorKind::UpstreamTimeout).retryable(true));
        assert!(!ProxyError::downstream(ErrorKind::ClientTimeout).retryable(true));
        assert!(!ProxyError::internal(ErrorKind::LocalResources(io())).retryable(true));
    }
}
