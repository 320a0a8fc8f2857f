//! Backend selection: smooth weighted round robin, one cursor per worker.
//!
//! Each worker owns its own [`RoundRobin`] per upstream group (shard-local:
//! no atomics, no locks). The algorithm is nginx's smooth weighted round
//! robin: every pick adds each eligible backend's weight to its running
//! score, takes the highest, and subtracts the total from the winner. Equal
//! weights give plain rotation; weights 1:2 give B, A, B, … — interleaved,
//! not bursty. Backends the caller reports as down are skipped for that pick
//! (their score does not grow), so a recovering backend does not return with
//! a burst of saved-up credit.

/// Per-worker cursor over one upstream group.
#[derive(Debug, Clone)]
pub(crate) struct RoundRobin {
    weights: Vec<i64>,
    current: Vec<i64>,
}

impl RoundRobin {
    /// A cursor over backends with these weights (each ≥ 1).
    pub(crate) fn new(weights: impl IntoIterator<Item = u32>) -> Self {
        let weights: Vec<i64> = weights.into_iter().map(i64::from).collect();
        let current = vec![0; weights.len()];
        RoundRobin { weights, current }
    }

    /// Picks the next backend among those for which `eligible(i)` holds.
    /// Returns `None` when none is eligible.
    pub(crate) fn next(&mut self, mut eligible: impl FnMut(usize) -> bool) -> Option<usize> {
        // Fast path: a single backend needs no bookkeeping.
        if self.weights.len() == 1 {
            return eligible(0).then_some(0);
        }
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for i in 0..self.weights.len() {
            if !eligible(i) {
                continue;
            }
            self.current[i] += self.weights[i];
            total += self.weights[i];
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        if let Some(b) = best {
            self.current[b] -= total;
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(rr: &mut RoundRobin, n: usize, up: impl Fn(usize) -> bool) -> Vec<usize> {
        (0..n).map(|_| rr.next(&up).expect("pick")).collect()
    }

    #[test]
    fn equal_weights_rotate() {
        let mut rr = RoundRobin::new([1, 1, 1]);
        assert_eq!(picks(&mut rr, 6, |_| true), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn smooth_weights() {
        let mut rr = RoundRobin::new([5, 1, 1]);
        // nginx's documented sequence for 5,1,1.
        assert_eq!(picks(&mut rr, 7, |_| true), [0, 0, 1, 0, 2, 0, 0]);
        let mut rr = RoundRobin::new([1, 2]);
        let p = picks(&mut rr, 30, |_| true);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 20);
        for w in p.chunks(3) {
            assert_eq!(w.iter().filter(|&&i| i == 0).count(), 1);
        }
    }

    #[test]
    fn skips_down_and_wraps() {
        let mut rr = RoundRobin::new([1, 1, 1]);
        assert_eq!(picks(&mut rr, 4, |i| i != 1), [0, 2, 0, 2]);
        assert_eq!(rr.next(|_| false), None);
        let mut one = RoundRobin::new([3]);
        assert_eq!(one.next(|_| true), Some(0));
        assert_eq!(one.next(|_| false), None);
    }

    #[test]
    fn skip_respects_weights_of_the_rest() {
        let mut rr = RoundRobin::new([1, 1, 2]);
        let p = picks(&mut rr, 30, |i| i != 0);
        assert_eq!(p.iter().filter(|&&i| i == 2).count(), 20);
        assert_eq!(p.iter().filter(|&&i| i == 1).count(), 10);
    }
}
