//! Backend selection: smooth weighted round robin, one cursor per worker.
//!
//! Each worker owns its own [`RoundRobin`] per upstream group (shard-local:
//! no atomics, no locks). The algorithm is nginx's smooth weighted round
//! robin (`ngx_http_upstream_get_peer` in ngx_http_upstream_round_robin.c):
//! every pick adds each eligible backend's weight to its running score,
//! takes the highest, and subtracts the total from the winner. Equal
//! weights give plain rotation; weights 1:2 give B, A, B, … — interleaved,
//! not bursty. Backends the caller reports as down are skipped for that pick
//! (their score does not grow), so a recovering backend does not return with
//! a burst of saved-up credit. [`RoundRobin::next_weighted`] lets the caller
//! supply each backend's *effective* weight per pick (slow start, see
//! `slow_start.rs`), the way nginx's `effective_weight` differs from the
//! configured `weight`.

/// Per-worker cursor over one upstream group: each backend's running score.
/// Weights come with each pick, so slow start and health can change them.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    current: Vec<i64>,
}

impl RoundRobin {
    /// A cursor over `n` backends.
    pub fn new(n: usize) -> Self {
        RoundRobin {
            current: vec![0; n],
        }
    }

    /// Picks the next backend with per-pick weights: `weight(i)` is `None`
    /// for an ineligible backend and `Some(w)` for its current effective
    /// weight (a `0` counts as `1`). Returns `None` when none is eligible.
    pub fn next_weighted(&mut self, mut weight: impl FnMut(usize) -> Option<u32>) -> Option<usize> {
        step(&mut self.current, |i| {
            weight(i).map(|w| i64::from(w.max(1)))
        })
    }
}

/// One round of smooth weighted round robin over `current`.
fn step(current: &mut [i64], mut weight: impl FnMut(usize) -> Option<i64>) -> Option<usize> {
    // Fast path: a single backend needs no bookkeeping.
    if current.len() == 1 {
        return weight(0).map(|_| 0);
    }
    let mut total = 0i64;
    let mut best: Option<usize> = None;
    for i in 0..current.len() {
        let Some(w) = weight(i) else {
            continue;
        };
        current[i] += w;
        total += w;
        if best.is_none_or(|b| current[i] > current[b]) {
            best = Some(i);
        }
    }
    if let Some(b) = best {
        current[b] -= total;
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cursor with fixed weights, as the old API had.
    #[derive(Clone)]
    struct Fixed(RoundRobin, Vec<u32>);

    impl Fixed {
        fn next_weighted(&mut self, weight: impl FnMut(usize) -> Option<u32>) -> Option<usize> {
            self.0.next_weighted(weight)
        }

        fn new<const N: usize>(w: [u32; N]) -> Self {
            Fixed(RoundRobin::new(N), w.to_vec())
        }

        fn next(&mut self, mut eligible: impl FnMut(usize) -> bool) -> Option<usize> {
            let w = &self.1;
            self.0.next_weighted(|i| eligible(i).then(|| w[i]))
        }
    }

    fn picks(rr: &mut Fixed, n: usize, up: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..n).map(|_| rr.next(&up).expect("pick")).collect()
    }

    #[test]
    fn equal_weights_rotate() {
        let mut rr = Fixed::new([1, 1, 1]);
        assert_eq!(picks(&mut rr, 6, |_| true), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weights() {
        let mut rr = Fixed::new([5, 1, 1]);
        // nginx's documented sequence for 5,1,1.
        assert_eq!(picks(&mut rr, 7, |_| true), [0, 0, 1, 0, 2, 0, 0]);
        let mut rr = Fixed::new([1, 2]);
        let p = picks(&mut rr, 30, |_| true);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 20);
        for w in p.chunks(3) {
            assert_eq!(w.iter().filter(|&&i| i == 0).count(), 1);
        }
    }

    #[test]
    fn skips_down_and_wraps() {
        let mut rr = Fixed::new([1, 1, 1]);
        assert_eq!(picks(&mut rr, 4, |i| i != 1), [0, 2, 0, 2]);
        assert_eq!(rr.next(|_| false), None);
        let mut one = Fixed::new([3]);
        assert_eq!(one.next(|_| true), Some(0));
        assert_eq!(one.next(|_| false), None);
    }

    #[test]
    fn skip_respects_weights_of_the_rest() {
        let mut rr = Fixed::new([1, 1, 2]);
        let p = picks(&mut rr, 30, |i| i != 0);
        assert_eq!(p.iter().filter(|&&i| i == 2).count(), 20);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 10);
    }

    #[test]
    fn next_weighted_uses_the_given_weights() {
        // Configured 1:1, but the caller says 5:1:1 for this stretch.
        let mut rr = Fixed::new([1, 1, 1]);
        let w = [5, 1, 1];
        let p: Vec<usize> = (0..7)
            .map(|_| rr.next_weighted(|i| Some(w[i])).expect("pick"))
            .collect();
        assert_eq!(p, [0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn next_weighted_none_is_ineligible_and_zero_counts_as_one() {
        let mut rr = Fixed::new([1, 1, 1]);
        let p: Vec<usize> = (0..4)
            .map(|_| {
                rr.next_weighted(|i| if i == 1 { None } else { Some(0) })
                    .expect("pick")
            })
            .collect();
        assert_eq!(p, [0, 2, 0, 2]);
        assert_eq!(rr.next_weighted(|_| None), None);
        let mut one = Fixed::new([3]);
        assert_eq!(one.next_weighted(|_| Some(1)), Some(0));
        assert_eq!(one.next_weighted(|_| None), None);
    }

    #[test]
    fn next_is_next_weighted_with_configured_weights() {
        let mut a = Fixed::new([3, 1, 2]);
        let mut b = a.clone();
        let w = [3, 1, 2];
        for k in 0..50 {
            let up = |i: usize| !(i + k).is_multiple_of(5);
            assert_eq!(a.next(up), b.next_weighted(|i| up(i).then_some(w[i])));
        }
    }
}
