//! Byte tunnels: what an upgraded connection (WebSocket) becomes after its
//! `101 Switching Protocols`.
//!
//! [`relay`] copies bytes both ways between the client and the backend on
//! the worker's ring, until both directions ended or the tunnel was idle
//! for `tunnel_idle_timeout_ms`. A FIN one way is passed on as a half-close
//! (`shutdown(SHUT_WR)`, or TLS `close_notify`) and does not cut the other
//! way. Like an idle keep-alive connection, an idle tunnel holds no buffer:
//! each side is awaited for readability first, and a buffer is taken from
//! the worker's free list only for the bytes that arrived. One task drives
//! both directions, so a write that waits for a slow reader (bounded by the
//! write timeouts) pauses the other direction meanwhile. The upstream
//! connection never returns to the pool.

use std::time::Duration;

use monoio::time::Instant;

use crate::buffer::{self, InBuf};
use crate::stream::Stream;

/// Bytes a tunnel carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Carried {
    /// Client to backend.
    pub(crate) upstream: u64,
    /// Backend to client.
    pub(crate) downstream: u64,
}

/// Limits of one tunnel.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TunnelLimits {
    /// No byte either way for this long: close.
    pub(crate) idle: Duration,
    /// Longest a write to either side may stall.
    pub(crate) write: Duration,
}

/// Which side woke the relay.
enum Woke {
    Client(std::io::Result<()>),
    Upstream(std::io::Result<()>),
    Idle,
}

/// Relays bytes between `client` and `upstream` until both directions end,
/// the tunnel idles out, or a side fails. `early` holds bytes the client
/// sent after its upgrade request, before the switch: they go first.
pub(crate) async fn relay(
    client: &mut Stream,
    upstream: &mut Stream,
    early: Option<Vec<u8>>,
    limits: TunnelLimits,
) -> Carried {
    let mut carried = Carried::default();
    if let Some(b) = early {
        let len = b.len();
        let (res, b) = upstream.write_range(b, 0, len, limits.write).await;
        buffer::give(b);
        if res.is_err() {
            return carried;
        }
        carried.upstream += len as u64;
    }
    let (mut from_client, mut from_upstream) = (true, true);
    // One timer for the tunnel's life, pushed back only when it fires early
    // (a timer per message would cost more than the message).
    let mut last = Instant::now();
    let mut idle = std::pin::pin!(monoio::time::sleep_until(last + limits.idle));
    while from_client || from_upstream {
        let woke = monoio::select! {
            r = client.readable(), if from_client => Woke::Client(r),
            r = upstream.readable(), if from_upstream => Woke::Upstream(r),
            _ = &mut idle => Woke::Idle,
        };
        if !matches!(woke, Woke::Idle) {
            last = Instant::now();
        }
        match woke {
            Woke::Idle if last.elapsed() < limits.idle => idle.as_mut().reset(last + limits.idle),
            Woke::Idle | Woke::Client(Err(_)) | Woke::Upstream(Err(_)) => break,
            Woke::Client(Ok(())) => match copy(client, upstream, &mut from_client, limits).await {
                Ok(n) => carried.upstream += n,
                Err(()) => break,
            },
            Woke::Upstream(Ok(())) => {
                match copy(upstream, client, &mut from_upstream, limits).await {
                    Ok(n) => carried.downstream += n,
                    Err(()) => break,
                }
            }
        }
    }
    carried
}

/// One read from `from` (readable now) written whole to `to`. At EOF the
/// direction ends (`open` false) and `to` gets a half-close.
async fn copy(
    from: &mut Stream,
    to: &mut Stream,
    open: &mut bool,
    limits: TunnelLimits,
) -> Result<u64, ()> {
    let mut buf = InBuf::from_vec(buffer::take_large());
    let deadline = Instant::now() + limits.idle;
    let n = match from.fill(&mut buf, buffer::LARGE_BUF_SIZE, deadline).await {
        Ok(n) => n,
        Err(_) => {
            buf.release();
            return Err(());
        }
    };
    if n == 0 {
        buf.release();
        *open = false;
        return to
            .shutdown_write(limits.write)
            .await
            .map(|()| 0)
            .map_err(|_| ());
    }
    let v = std::mem::take(&mut buf.v);
    let (res, v) = to.write_range(v, 0, n, limits.write).await;
    buffer::give(v);
    res.map(|()| n as u64).map_err(|_| ())
}
