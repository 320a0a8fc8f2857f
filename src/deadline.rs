//! Coarse deadlines for a worker's socket reads and writes.
//!
//! A monoio `Timeout` around every read and write puts a timer on the
//! wheel and takes it off again (about 1.5% of lbd's CPU on small
//! keep-alive requests, in a `perf` profile), and its 128-byte aligned
//! timer entry made every exchange's state 1.9 KB larger, which is copied
//! as the exchange moves between phases. An operation that times out is
//! rare, and a read or write timeout that fires a little late does its job
//! as well, so each operation instead takes a slot in a per-worker table
//! like the idle connections' ([`IdleTimers`]). The worker's reaper sweeps
//! it with the idle table, so a deadline fires at most one sweep period (a
//! quarter of the shortest timeout, 10 to 62.5 ms) after it passed, never
//! before.
//!
//! The table lives in a thread-local that [`install`] sets when a worker's
//! state is built; socket operations run only on workers.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use crate::idle::{IdleTimers, Within};

thread_local! {
    static TABLE: Cell<Option<&'static IdleTimers>> = const { Cell::new(None) };
}

/// Gives this thread a deadline table and returns it, for the worker's
/// reaper to sweep. One per worker, which lives as long as the process, so
/// the table is leaked rather than counted.
pub(crate) fn install() -> &'static IdleTimers {
    let table: &'static IdleTimers = Box::leak(Box::default());
    TABLE.set(Some(table));
    table
}

/// This thread's table. A thread that never installed one (no worker state:
/// not lbd's data path) gets one swept by a task of its own runtime.
fn table() -> &'static IdleTimers {
    if let Some(t) = TABLE.get() {
        return t;
    }
    let t = install();
    monoio::spawn(async move {
        loop {
            monoio::time::sleep(Duration::from_millis(10)).await;
            t.sweep(Instant::now());
        }
    });
    t
}

/// Awaits `fut` until `deadline` (as the sweep sees it); `None` on timeout.
pub(crate) fn within<F: Future>(deadline: Instant, fut: Pin<&mut F>) -> Within<'_, F> {
    table().within(deadline, fut)
}

#[cfg(test)]
mod tests {
    use super::*;
    use monoio::{LegacyDriver, RuntimeBuilder};

    fn runtime() -> monoio::Runtime<monoio::time::TimeDriver<LegacyDriver>> {
        RuntimeBuilder::<LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
    }

    #[test]
    fn an_operation_past_its_deadline_ends_at_the_sweep() {
        runtime().block_on(async {
            let table = install();
            let at = Instant::now() + Duration::from_millis(20);
            monoio::spawn(async move {
                monoio::time::sleep(Duration::from_millis(30)).await;
                table.sweep(Instant::now());
            });
            let stuck = std::pin::pin!(std::future::pending::<()>());
            assert_eq!(within(at, stuck).await, None);
            let done = std::pin::pin!(async { 5 });
            assert_eq!(within(at + Duration::from_secs(60), done).await, Some(5));
        });
    }

    #[test]
    fn a_thread_without_a_table_gets_one_its_runtime_sweeps() {
        std::thread::spawn(|| {
            runtime().block_on(async {
                let started = Instant::now();
                let stuck = std::pin::pin!(std::future::pending::<()>());
                let at = started + Duration::from_millis(20);
                assert_eq!(within(at, stuck).await, None);
                assert!(started.elapsed() < Duration::from_secs(1));
            });
        })
        .join()
        .expect("test thread");
    }
}
