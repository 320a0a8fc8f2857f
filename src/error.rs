//! Proxy errors: who failed, whether a retry is safe, what the client sees.
//!
//! Modelled on Pingora's error taxonomy: every failure on the request path is
//! a [`ProxyError`] with a [`Side`] (downstream client, upstream backend, or
//! lbd itself) and a [`ErrorKind`]. One function, [`ProxyError::status`], maps
//! it to the status the client gets; [`ProxyError::retryable`] says whether
//! the request may be tried on another backend. No boxing: these are created
//! on the hot path.

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

/// An error on the request path.
#[derive(Debug)]
pub struct ProxyError {
    /// Who failed.
    pub side: Side,
    /// What happened.
    pub kind: ErrorKind,
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
    /// A client-side failure.
    pub fn downstream(kind: ErrorKind) -> Self {
        ProxyError {
            side: Side::Downstream,
            kind,
        }
    }

    /// A backend-side failure.
    pub fn upstream(kind: ErrorKind) -> Self {
        ProxyError {
            side: Side::Upstream,
            kind,
        }
    }

    /// The status the client gets, if a response can still be sent.
    pub fn status(&self) -> Option<u16> {
        Some(match &self.kind {
            ErrorKind::BadRequest(e) => e.status(),
            ErrorKind::BadRequestBody(_) => 400,
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
            ErrorKind::NoUpstream | ErrorKind::LocalResources(_) => 503,
        })
    }

    /// True when nothing reached the backend, so any request may go to
    /// another backend.
    pub fn nothing_sent(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::ConnectFailed(_) | ErrorKind::ConnectTimeout | ErrorKind::TlsHandshake(_)
        )
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
        assert!(ProxyError::upstream(ErrorKind::ConnectFailed(io())).nothing_sent());
        assert!(!ProxyError::upstream(ErrorKind::UpstreamClosed).nothing_sent());
    }
}
