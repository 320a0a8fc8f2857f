//! PROXY protocol in front of a client connection
//! (`listeners[i].proxy_protocol`), before TLS and HTTP.
//!
//! A connection from a `trusted` source must start with a v1 or v2 header
//! (of an accepted version) within `timeout_ms` of being accepted; the
//! source address the header carries becomes the connection's client
//! address ([`ConnInfo::peer`]: `X-Forwarded-For`, the access log, the
//! `client_ip` hash key, parking all read it). A header without addresses
//! (v2 `LOCAL`, v1 `UNKNOWN`, what HAProxy's own health checks send) leaves
//! the real peer's. A connection from any other source is served as usual,
//! unless it starts with a PROXY protocol signature: an untrusted source
//! must not choose its own address. Refused connections are closed, counted
//! (`lbd_proxy_protocol_rejected_total{reason}`) and logged, at most once a
//! second per worker. A trusted source that connects and closes without a
//! byte (a TCP health check) is not a refusal.
//!
//! The bytes that came after the header in the same reads are handed back:
//! they are the TLS handshake's first bytes or the first request's.
//! Parsing is [`crate::proxy_protocol`]'s, sans-I/O; this module only reads
//! (waiting for readability before it takes a buffer, as the idle wait
//! does).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use monoio::net::TcpStream;
use monoio::time::{timeout_at, Instant};

use crate::buffer::InBuf;
use crate::config::ProxyProtocolConfig;
use crate::park::ConnInfo;
use crate::proxy_protocol::{self as pp, Detected, PpError, MAX_HEADER_LEN};
use crate::shard::Shard;
use crate::stream::tcp_fill;

/// Why a connection was refused, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A source not in `trusted` sent a PROXY protocol signature.
    Untrusted,
    /// A trusted source's connection did not start with a header.
    Missing,
    /// A header that is not valid.
    Malformed,
    /// A header of a version the listener does not accept.
    Version,
    /// The connection closed in the middle of the header.
    Truncated,
    /// No complete header within `timeout_ms`.
    Timeout,
}

impl Refusal {
    /// Every reason, in the order of their counters.
    pub(crate) const ALL: [Refusal; 6] = [
        Refusal::Untrusted,
        Refusal::Missing,
        Refusal::Malformed,
        Refusal::Version,
        Refusal::Truncated,
        Refusal::Timeout,
    ];

    /// The `reason` label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Untrusted => "untrusted",
            Refusal::Missing => "missing",
            Refusal::Malformed => "malformed",
            Refusal::Version => "version",
            Refusal::Truncated => "truncated",
            Refusal::Timeout => "timeout",
        }
    }

    /// The index of its counter.
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Reads the PROXY protocol header (from a trusted source) or checks that
/// none is there (from any other), updating `info.peer`. `Ok`: the bytes
/// read past the header, if any; `Err(())`: the connection is done (refused,
/// timed out or closed).
pub(crate) async fn accept(
    shard: &Shard,
    tcp: &mut TcpStream,
    cfg: &ProxyProtocolConfig,
    info: &mut ConnInfo,
) -> Result<Option<InBuf>, ()> {
    let trusted = cfg.trusted.contains(info.peer.ip());
    // An untrusted source gets the usual first-request head deadline: it
    // need not send anything special.
    let limit = if trusted {
        cfg.timeout
    } else {
        shard.config.limits.header_timeout
    };
    let deadline = Instant::now() + limit;
    match timeout_at(deadline, tcp.readable(false)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(()),
        Err(_) => {
            if trusted {
                refuse(shard, info.peer, Refusal::Timeout, "no header");
            }
            return Err(());
        }
    }
    let mut b = InBuf::new();
    loop {
        if trusted {
            match pp::parse(b.data(), cfg.versions) {
                Ok(Some(h)) => {
                    if let Some(src) = h.source {
                        log::debug!("{}: PROXY protocol {}: client {src}", info.peer, h.version);
                        info.peer = src;
                    }
                    b.consume(h.len);
                    if b.is_empty() {
                        b.release();
                        return Ok(None);
                    }
                    return Ok(Some(b));
                }
                Ok(None) => {}
                Err(e) => {
                    b.release();
                    let reason = match e {
                        PpError::Missing => Refusal::Missing,
                        PpError::Version(_) => Refusal::Version,
                        PpError::Malformed(_) => Refusal::Malformed,
                    };
                    refuse(shard, info.peer, reason, &e.to_string());
                    return Err(());
                }
            }
        } else {
            match pp::detect(b.data()) {
                Detected::Other => return Ok(Some(b)),
                Detected::Proxy(v) => {
                    b.release();
                    let why = format!(
                        "PROXY protocol {v} header from a source not in proxy_protocol.trusted"
                    );
                    refuse(shard, info.peer, Refusal::Untrusted, &why);
                    return Err(());
                }
                Detected::NeedMore => {}
            }
        }
        let partial = !b.is_empty();
        match tcp_fill(tcp, &mut b, MAX_HEADER_LEN, deadline).await {
            Ok(0) => {
                b.release();
                if partial && trusted {
                    refuse(shard, info.peer, Refusal::Truncated, "closed mid-header");
                }
                return Err(());
            }
            Ok(_) => {}
            Err(e) => {
                b.release();
                if trusted && e.kind() == io::ErrorKind::TimedOut {
                    refuse(shard, info.peer, Refusal::Timeout, "header incomplete");
                }
                return Err(());
            }
        }
    }
}

/// Counts a refusal and logs it (at most once a second per worker; the
/// count says how many there were).
fn refuse(shard: &Shard, peer: SocketAddr, reason: Refusal, why: &str) {
    shard.metrics.proxy_protocol_rejected[reason.index()].inc();
    let now = shard.coarse_now();
    let last = &shard.proxy_protocol_log;
    if last
        .get()
        .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
    {
        last.set(Some(now));
        log::warn!(
            "{peer}: PROXY protocol: connection refused ({}): {why}",
            reason.label()
        );
    }
}
