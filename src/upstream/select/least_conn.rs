//! Least connections: pick the eligible backend with the fewest in-flight
//! requests per unit of weight.
//!
//! Mirrors nginx's `least_conn` without a `zone` (each worker counts only its
//! own connections, which is what a thread-per-core worker has anyway): the
//! comparison is nginx's integer cross-multiplication
//! `peer->conns * best->weight < best->conns * peer->weight`
//! (ngx_http_upstream_least_conn_module.c, `ngx_http_upstream_get_least_conn_peer`),
//! so no division and no floats. nginx breaks ties among the equally loaded
//! with a weighted round robin; here a rotating cursor does it: the scan
//! starts one past the last pick, so equally loaded backends alternate
//! (HAProxy's `leastconn` also rotates among equals). This module owns only
//! that cursor; in-flight counts and weights are the caller's.

/// Per-worker least-connections selector for one upstream group.
#[derive(Debug, Clone, Default)]
pub struct LeastConn {
    /// Where the next scan starts (taken modulo `n`), one past the last pick.
    cursor: usize,
}

impl LeastConn {
    /// A selector whose first scan starts at backend 0.
    pub fn new() -> Self {
        LeastConn { cursor: 0 }
    }

    /// Picks among backends `0..n` the one minimising
    /// `inflight(i) / weight(i)`, where `weight(i)` is `None` for an
    /// ineligible backend and `Some(w)` for its effective weight (`0`
    /// counts as `1`). Ties go to the first in rotation order from the
    /// cursor, and the cursor moves past the pick. Returns `None` when no
    /// backend is eligible. O(n), no allocation.
    pub fn pick(
        &mut self,
        n: usize,
        mut weight: impl FnMut(usize) -> Option<u32>,
        mut inflight: impl FnMut(usize) -> u32,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let start = self.cursor % n;
        // (index, inflight, weight) of the best so far.
        let mut best: Option<(usize, u64, u64)> = None;
        for k in 0..n {
            let i = if start + k >= n {
                start + k - n
            } else {
                start + k
            };
            let Some(w) = weight(i) else {
                continue;
            };
            let w = u64::from(w.max(1));
            let c = u64::from(inflight(i));
            // Strictly less wins, so among equals the earliest in rotation stays.
            if best.is_none_or(|(_, bc, bw)| c * bw < bc * w) {
                best = Some((i, c, w));
            }
        }
        let (i, _, _) = best?;
        self.cursor = i + 1;
        Some(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_fewest_inflight() {
        let mut lc = LeastConn::new();
        let inflight = [3, 1, 2];
        for _ in 0..5 {
            assert_eq!(lc.pick(3, |_| Some(1), |i| inflight[i]), Some(1));
        }
    }

    #[test]
    fn weight_scales_the_comparison() {
        let mut lc = LeastConn::new();
        // 4/4 = 1 beats 2/1 = 2; 3/4 < 1/1.
        assert_eq!(lc.pick(2, |i| Some([1, 4][i]), |i| [2, 4][i]), Some(1));
        assert_eq!(lc.pick(2, |i| Some([1, 4][i]), |i| [1, 3][i]), Some(1));
        // 1/1 < 5/4.
        assert_eq!(lc.pick(2, |i| Some([1, 4][i]), |i| [1, 5][i]), Some(0));
    }

    #[test]
    fn equal_backends_alternate() {
        let mut lc = LeastConn::new();
        let p: Vec<usize> = (0..6)
            .map(|_| lc.pick(3, |_| Some(1), |_| 0).expect("pick"))
            .collect();
        assert_eq!(p, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn ties_rotate_only_among_the_least_loaded() {
        let mut lc = LeastConn::new();
        let inflight = [0, 5, 0, 5];
        let p: Vec<usize> = (0..4)
            .map(|_| lc.pick(4, |_| Some(1), |i| inflight[i]).expect("pick"))
            .collect();
        assert_eq!(p, [0, 2, 0, 2]);
    }

    #[test]
    fn skips_ineligible_and_handles_empty() {
        let mut lc = LeastConn::new();
        let inflight = [0, 9];
        assert_eq!(
            lc.pick(2, |i| (i == 1).then_some(1), |i| inflight[i]),
            Some(1)
        );
        assert_eq!(lc.pick(2, |_| None, |_| 0), None);
        assert_eq!(lc.pick(0, |_| Some(1), |_| 0), None);
    }

    #[test]
    fn group_shrinking_under_the_cursor_is_fine() {
        let mut lc = LeastConn::new();
        for _ in 0..5 {
            lc.pick(5, |_| Some(1), |_| 0);
        }
        assert!(lc.pick(2, |_| Some(1), |_| 0).is_some_and(|i| i < 2));
    }

    #[test]
    fn large_counts_do_not_overflow() {
        let mut lc = LeastConn::new();
        let w = [u32::MAX, 1];
        let c = [u32::MAX, u32::MAX - 1];
        assert_eq!(lc.pick(2, |i| Some(w[i]), |i| c[i]), Some(0));
    }
}
