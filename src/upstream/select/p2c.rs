//! Power of two choices: draw two *distinct* random eligible backends and
//! take the cheaper (cost from `ewma.rs`, or in-flight counts, or anything
//! the caller computes).
//!
//! This is what linkerd2-proxy / tower's `p2c::Balance` and Envoy's
//! `LEAST_REQUEST` (choice_count 2) do. HAProxy's `random(2)` draws with
//! replacement, so with 4 servers it compares a server with itself a
//! quarter of the time and the worst server still gets picked; here the
//! second draw excludes the first, so the most expensive of ≥ 2 eligible
//! backends is never chosen. The module owns only a tiny PRNG (SplitMix64,
//! seeded per worker by the caller: no `rand`, no global state, no locks).
//!
//! Ineligible backends are handled without allocation in O(n) worst case:
//! a random index is drawn and the scan probes forward (wrapping) to the
//! next eligible backend. When some backends are ineligible this favours the
//! eligible backend just after a run of ineligible ones; with all eligible,
//! the first draw is uniform and the second is uniform over the others.

/// Per-worker power-of-two-choices selector.
#[derive(Debug, Clone)]
pub struct P2c {
    state: u64,
}

impl P2c {
    /// A selector whose PRNG starts from `seed` (any value, 0 included;
    /// give each worker a different one).
    pub fn new(seed: u64) -> Self {
        P2c { state: seed }
    }

    /// Next SplitMix64 output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform integer in `0..n` (`n ≥ 1`), by Lemire's multiply-shift.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Picks among backends `0..n`: two distinct eligible backends are drawn
    /// at random and the one with the lower `cost` wins (the first drawn on a
    /// tie). With exactly one eligible backend it is returned without calling
    /// `cost`; with none, `None`. O(n) worst case, no allocation.
    pub fn pick(
        &mut self,
        n: usize,
        mut eligible: impl FnMut(usize) -> bool,
        mut cost: impl FnMut(usize) -> u64,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let a = probe(n, self.below(n), None, &mut eligible)?;
        if n == 1 {
            return Some(a);
        }
        // Uniform over the n − 1 indexes other than `a`.
        let r = self.below(n - 1);
        let start = if r >= a { r + 1 } else { r };
        let Some(b) = probe(n, start, Some(a), &mut eligible) else {
            return Some(a);
        };
        if cost(b) < cost(a) {
            Some(b)
        } else {
            Some(a)
        }
    }
}

/// First eligible index at or after `start` (wrapping), other than `skip`.
fn probe(
    n: usize,
    start: usize,
    skip: Option<usize>,
    eligible: &mut impl FnMut(usize) -> bool,
) -> Option<usize> {
    (0..n)
        .map(|k| {
            if start + k >= n {
                start + k - n
            } else {
                start + k
            }
        })
        .find(|&i| Some(i) != skip && eligible(i))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn the_two_candidates_are_distinct() {
        let mut p = P2c::new(7);
        let seen = RefCell::new(Vec::new());
        for _ in 0..10_000 {
            seen.borrow_mut().clear();
            p.pick(
                4,
                |_| true,
                |i| {
                    seen.borrow_mut().push(i);
                    0
                },
            );
            let s = seen.borrow();
            assert_eq!(s.len(), 2);
            assert_ne!(s[0], s[1]);
        }
    }

    #[test]
    fn equal_costs_spread_evenly() {
        let mut p = P2c::new(1);
        let mut hits = [0u32; 4];
        for _ in 0..40_000 {
            hits[p.pick(4, |_| true, |_| 5).expect("pick")] += 1;
        }
        for h in hits {
            assert!((9_400..=10_600).contains(&h), "{hits:?}");
        }
    }

    #[test]
    fn prefers_cheaper_and_never_picks_the_worst() {
        // Costs 1..4: backend k wins when paired with a costlier one:
        // P = (3 − k) / 6, so 50 %, 33 %, 17 %, 0 %.
        let mut p = P2c::new(42);
        let mut hits = [0u32; 4];
        for _ in 0..60_000 {
            hits[p.pick(4, |_| true, |i| i as u64 + 1).expect("pick")] += 1;
        }
        assert_eq!(hits[3], 0);
        assert!((29_000..=31_000).contains(&hits[0]), "{hits:?}");
        assert!((19_000..=21_000).contains(&hits[1]), "{hits:?}");
        assert!((9_300..=10_700).contains(&hits[2]), "{hits:?}");
    }

    #[test]
    fn two_backends_always_compare_both() {
        let mut p = P2c::new(3);
        for _ in 0..1000 {
            assert_eq!(p.pick(2, |_| true, |i| [9, 1][i]), Some(1));
        }
    }

    #[test]
    fn ineligible_are_skipped() {
        let mut p = P2c::new(9);
        for _ in 0..1000 {
            let got = p.pick(6, |i| i == 2 || i == 5, |i| i as u64).expect("pick");
            assert_eq!(got, 2);
        }
        // One eligible: picked without asking for costs.
        for _ in 0..100 {
            assert_eq!(
                p.pick(6, |i| i == 4, |_| unreachable!("no comparison")),
                Some(4)
            );
        }
        assert_eq!(p.pick(6, |_| false, |_| 0), None);
        assert_eq!(p.pick(0, |_| true, |_| 0), None);
        assert_eq!(p.pick(1, |_| true, |_| 0), Some(0));
    }

    #[test]
    fn deterministic_per_seed() {
        let run = |seed| {
            let mut p = P2c::new(seed);
            (0..64)
                .map(|_| p.pick(8, |_| true, |_| 0).expect("pick"))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(5), run(5));
        assert_ne!(run(5), run(6));
    }
}
