//! systemd readiness (`sd_notify(3)`), for `Type=notify` units.
//!
//! | when | message | sent by |
//! |---|---|---|
//! | listening, first health checks done | `READY=1`, `MAINPID=<pid>` | every start, `-u` included |
//! | SIGQUIT, before the hand-over | `RELOADING=1` | the old process |
//! | hand-over acknowledged | `MAINPID=<new pid>` | the old process, before it drains |
//! | hand-over failed | `READY=1` | the old process, still serving |
//! | SIGTERM, SIGINT | `STOPPING=1` | the process systemd stops |
//!
//! `MAINPID` is what lets `-d` and the upgrade work under `Type=notify`:
//! the process systemd started is not the one that serves (with `-d` it is
//! the waiting parent; after a reload, the old process). The old process
//! names its successor *before* it starts draining, so systemd never sees
//! its main process exit while a new one serves; the new one names itself
//! with `READY=1` too, so either message may arrive first. The unit needs
//! `NotifyAccess=all` (messages come from processes systemd did not start).
//!
//! Without `NOTIFY_SOCKET` in the environment every call returns at once
//! (one environment lookup; none is on the request path). A failed send is
//! logged at debug and otherwise ignored: systemd's timeout reports it.

use sd_notify::NotifyState;

fn send(what: &str, states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify {what}: {e}");
    }
}

/// lbd serves: `READY=1` and `MAINPID=` this process.
pub fn ready() {
    send(
        "READY",
        &[NotifyState::MainPid(std::process::id()), NotifyState::Ready],
    );
}

/// SIGQUIT: an upgrade begins.
pub fn reloading() {
    // systemd ≥ 253 wants the time the reload began beside RELOADING=1.
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING", &[NotifyState::Reloading, now]),
        Err(_) => send("RELOADING", &[NotifyState::Reloading]),
    }
}

/// The hand-over succeeded: `pid` serves now (when the socket told us who).
pub fn handed_over(pid: Option<u32>) {
    if let Some(pid) = pid {
        send("MAINPID", &[NotifyState::MainPid(pid)]);
    }
}

/// The hand-over failed and this process keeps serving.
pub fn still_serving() {
    send("READY", &[NotifyState::Ready]);
}

/// Shutdown begins.
pub fn stopping() {
    send("STOPPING", &[NotifyState::Stopping]);
}
