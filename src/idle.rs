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
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
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
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.slots.borrow().len() - self.free.borrow().len()
    }

    /// True when no connection is being timed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Awaits `fut` until `deadline` passes (as seen by the sweep). `None`
    /// on timeout. The future is borrowed pinned, so the caller's state holds
    /// it once (an idle connection's memory is mostly this state).
    pub fn within<'a, F: Future>(
        &'a self,
        deadline: Instant,
        fut: Pin<&'a mut F>,
    ) -> Within<'a, F> {
        Within {
            timers: self,
            id: self.insert(deadline),
            fut,
        }
    }
}

/// The future returned by [`IdleTimers::within`].
pub struct Within<'a, F> {
    timers: &'a IdleTimers,
    id: usize,
    fut: Pin<&'a mut F>,
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.timers.poll_fired(self.id, cx.waker()) {
            return Poll::Ready(None);
        }
        self.fut.as_mut().poll(cx).map(Some)
    }
}

impl<F> Drop for Within<'_, F> {
    fn drop(&mut self) {
        if let Some(s) = self.timers.slots.borrow_mut().get_mut(self.id) {
            *s = None;
        }
        self.timers.free.borrow_mut().push(self.id);
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
            let mut p = std::pin::pin!(pending::<()>());
            let mut f = std::pin::pin!(t.within(Instant::now(), p.as_mut()));
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
        let mut p = std::pin::pin!(async { 7 });
        let mut f = std::pin::pin!(t.within(Instant::now() + Duration::from_secs(60), p.as_mut()));
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(Some(7)));
        t.sweep(Instant::now());
    }

    #[test]
    fn slots_are_reused() {
        let t = IdleTimers::default();
        let mut p = std::pin::pin!(pending::<()>());
        let a = t
            .within(Instant::now() + Duration::from_secs(1), p.as_mut())
            .id;
        let b = t
            .within(Instant::now() + Duration::from_secs(1), p.as_mut())
            .id;
        assert_eq!(a, b);
        assert!(t.is_empty());
    }
}
