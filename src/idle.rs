//! Coarse deadlines for idle connections, one sweep per worker.
//!
//! An idle keep-alive connection waits for readability and for its idle
//! deadline. A monoio timer (`Sleep`) is 640 bytes; parked on each of 10,000
//! idle connections that alone would cost 6 MiB. Instead each idle connection
//! takes a small slot in this per-worker table (deadline + waker), and one
//! sweep task per worker fires the slots whose deadline passed. Deadlines are
//! therefore as precise as the sweep period (a quarter of the shortest idle
//! timeout, at most one second), which is all an idle timeout needs.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

struct Slot {
    deadline: Instant,
    waker: Option<Waker>,
    fired: bool,
}

/// A worker's table of idle deadlines.
#[derive(Default)]
pub struct IdleTimers {
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
}

/// Removes the slot when the wait ends, however it ends.
struct SlotGuard<'a> {
    timers: &'a IdleTimers,
    id: usize,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.timers.slots.borrow_mut().get_mut(self.id) {
            *s = None;
        }
        self.timers.free.borrow_mut().push(self.id);
    }
}

impl IdleTimers {
    fn insert(&self, deadline: Instant) -> usize {
        let slot = Slot {
            deadline,
            waker: None,
            fired: false,
        };
        let mut slots = self.slots.borrow_mut();
        match self.free.borrow_mut().pop() {
            Some(id) => {
                slots[id] = Some(slot);
                id
            }
            None => {
                slots.push(Some(slot));
                slots.len() - 1
            }
        }
    }

    /// True if the slot fired; otherwise remembers the waker.
    fn poll_fired(&self, id: usize, waker: &Waker) -> bool {
        let mut slots = self.slots.borrow_mut();
        match slots.get_mut(id).and_then(Option::as_mut) {
            Some(s) if s.fired => true,
            Some(s) => {
                if !s.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
                    s.waker = Some(waker.clone());
                }
                false
            }
            None => true,
        }
    }

    /// Fires every slot whose deadline is at or before `now`.
    pub fn sweep(&self, now: Instant) {
        let mut slots = self.slots.borrow_mut();
        for s in slots.iter_mut().flatten() {
            if !s.fired && s.deadline <= now {
                s.fired = true;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Fires every slot now (drain: idle connections close).
    pub fn fire_all(&self) {
        let mut slots = self.slots.borrow_mut();
        for s in slots.iter_mut().flatten() {
            s.fired = true;
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        }
    }

    /// Slots in use (idle connections being timed).
    pub fn len(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }

    /// True when no connection is being timed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Awaits `fut` until `timeout` passes (as seen by the sweep). `None` on
    /// timeout; `fut` is dropped then.
    pub async fn within<F: Future>(&self, timeout: Duration, fut: F) -> Option<F::Output> {
        let id = self.insert(Instant::now() + timeout);
        let _guard = SlotGuard { timers: self, id };
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            if self.poll_fired(id, cx.waker()) {
                return Poll::Ready(None);
            }
            fut.as_mut().poll(cx).map(Some)
        })
        .await
    }
}

/// The sweep period for the given idle timeouts.
pub fn sweep_period(shortest: Duration) -> Duration {
    (shortest / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;
    use std::task::Context;

    #[test]
    fn fires_after_deadline_and_frees_slot() {
        let t = IdleTimers::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        {
            let mut f = pin!(t.within(Duration::from_millis(0), pending::<()>()));
            // Not swept yet: pending.
            assert!(f.as_mut().poll(&mut cx).is_pending());
            assert_eq!(t.len(), 1);
            t.sweep(Instant::now() + Duration::from_millis(1));
            assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(None));
        }
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn completes_before_deadline() {
        let t = IdleTimers::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut f = pin!(t.within(Duration::from_secs(60), async { 7 }));
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(Some(7)));
        t.sweep(Instant::now());
    }

    #[test]
    fn slots_are_reused() {
        let t = IdleTimers::default();
        let a = t.insert(Instant::now());
        drop(SlotGuard { timers: &t, id: a });
        let b = t.insert(Instant::now());
        assert_eq!(a, b);
    }
}
