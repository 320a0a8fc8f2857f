//! Peak-EWMA latency estimate per backend, for latency-aware balancing
//! (`p2c.rs` compares two backends by [`Ewma::cost`]).
//!
//! Mirrors tower's / linkerd2-proxy's `PeakEwma` (tower `load/peak_ewma.rs`,
//! `RttEstimate::update`): a sample above the current estimate replaces it
//! at once (peak-sensitive: a backend that just got slow is avoided
//! immediately); a sample below it is blended in with weight
//! `1 - exp(-elapsed / decay)`, where `elapsed` is the time since the
//! previous update, so the estimate forgets with time constant `decay`
//! (tower's default is 10 s) rather than per sample. The cost is
//! `estimate × (inflight + 1) / weight`, as in tower (`rtt × (pending + 1)`)
//! with lbd's weight dividing it.
//!
//! Two deliberate departures, both for known failure modes:
//!
//! * **Idle decay toward a default.** Between samples the estimate drifts
//!   toward `default_rtt` with the same time constant (tower drifts toward 0
//!   on every `load()` read). Without it a backend that was once slow and then
//!   stops receiving traffic keeps its bad estimate forever and is starved
//!   (Traefik #12306). The drift is computed at read time from the timestamps,
//!   so [`Ewma::cost`] takes `&self` and does not depend on how often it is
//!   read. When a sample arrives, the interval since the previous update is
//!   attributed to that sample instead, as in tower.
//! * **Failure penalty.** A failure (connect error, timeout, 5xx) is not a
//!   fast sample: [`Ewma::penalize`] raises the estimate to
//!   `clamp(2 × current, penalty, 16 × penalty)` (never lowering it), with
//!   `penalty` 1 s by default, so a backend that fails fast does not look
//!   fast (linkerd2-proxy #4537) and repeated failures back off
//!   exponentially up to 16 × `penalty`, after which idle decay brings it
//!   back into rotation.
//!
//! Time is passed in by the caller as microseconds from a monotonic origin
//! (deterministic and testable); a timestamp earlier than the last update
//! counts as no time elapsed. The estimate is kept as `f64` microseconds:
//! exponential decay needs `exp`, and with an integer state the tiny
//! per-sample steps of a busy backend (elapsed ≪ decay) would round away and
//! the estimate would never come down. Costs are returned as integers.

/// The decay time constant: 2 s. tower's default is 10 s; a shorter one
/// brings traffic back to a backend that recovered within seconds instead
/// of tens of them, at the price of forgetting a slow spell sooner.
pub const DEFAULT_DECAY_US: u64 = 2_000_000;

/// Default latency charged for one failure: 1 s.
pub const DEFAULT_PENALTY_US: u64 = 1_000_000;

/// A penalized estimate never exceeds this multiple of the penalty.
pub const PENALTY_CAP_FACTOR: f64 = 16.0;

/// Peak-EWMA response-head latency estimate of one backend.
#[derive(Debug, Clone)]
pub struct Ewma {
    /// Estimate at `stamp_us`, microseconds.
    est_us: f64,
    /// Time of the last update.
    stamp_us: u64,
    /// Value the estimate drifts to without samples, microseconds.
    default_us: f64,
    /// Decay time constant, microseconds.
    decay_us: f64,
    /// Latency charged for a failure, microseconds.
    penalty_us: f64,
}

impl Ewma {
    /// A fresh estimate equal to `default_rtt_us` (clamped to ≥ 1 µs), with
    /// the default decay (10 s) and failure penalty (1 s).
    pub fn new(default_rtt_us: u64) -> Self {
        Self::with_params(default_rtt_us, DEFAULT_DECAY_US, DEFAULT_PENALTY_US)
    }

    /// A fresh estimate with explicit parameters: `default_rtt_us` is the
    /// starting value and the idle target, `decay_us` the time constant and
    /// `penalty_us` the minimum latency charged for a failure. Zeros are
    /// clamped to 1 µs.
    pub fn with_params(default_rtt_us: u64, decay_us: u64, penalty_us: u64) -> Self {
        let default_us = default_rtt_us.max(1) as f64;
        Ewma {
            est_us: default_us,
            stamp_us: 0,
            default_us,
            decay_us: decay_us.max(1) as f64,
            penalty_us: penalty_us.max(1) as f64,
        }
    }

    /// `exp(-elapsed / decay)`: the weight the state at `stamp_us` still has at `now_us`.
    fn keep(&self, now_us: u64) -> f64 {
        let elapsed = now_us.saturating_sub(self.stamp_us) as f64;
        (-elapsed / self.decay_us).exp()
    }

    /// The estimate at `now_us` including idle drift toward the default.
    fn current(&self, now_us: u64) -> f64 {
        self.default_us + (self.est_us - self.default_us) * self.keep(now_us)
    }

    /// Records a response-head latency sample of `rtt_us` at `now_us`.
    pub fn observe(&mut self, now_us: u64, rtt_us: u64) {
        let rtt = rtt_us as f64;
        if rtt >= self.current(now_us) {
            self.est_us = rtt;
        } else {
            let keep = self.keep(now_us);
            self.est_us = self.est_us * keep + rtt * (1.0 - keep);
        }
        self.stamp_us = self.stamp_us.max(now_us);
    }

    /// Records a failure (or 5xx) at `now_us`: the estimate becomes at least
    /// `clamp(2 × current, penalty, 16 × penalty)`.
    pub fn penalize(&mut self, now_us: u64) {
        let cur = self.current(now_us);
        let charged = (2.0 * cur).clamp(self.penalty_us, PENALTY_CAP_FACTOR * self.penalty_us);
        self.est_us = cur.max(charged);
        self.stamp_us = self.stamp_us.max(now_us);
    }

    /// The latency estimate at `now_us`, in whole microseconds.
    #[cfg(test)]
    pub fn estimate_us(&self, now_us: u64) -> u64 {
        self.current(now_us).round() as u64
    }

    /// Load cost at `now_us` with `inflight` requests outstanding on this
    /// backend and effective `weight` (`0` counts as `1`):
    /// `estimate × (inflight + 1) / weight`, in nanoseconds (saturating).
    /// Only comparisons between costs are meaningful.
    pub fn cost(&self, now_us: u64, inflight: u32, weight: u32) -> u64 {
        let load = f64::from(inflight) + 1.0;
        let w = f64::from(weight.max(1));
        // `as` saturates for out-of-range floats.
        (self.current(now_us) * 1000.0 * load / w).round() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The math below was worked out for a 10 s time constant.
    fn ten_s(default_rtt_us: u64) -> Ewma {
        Ewma::with_params(default_rtt_us, 10_000_000, DEFAULT_PENALTY_US)
    }

    const MS: u64 = 1000;
    const S: u64 = 1_000_000;

    fn close(got: u64, want: f64) -> bool {
        (got as f64 - want).abs() <= want * 0.01 + 1.0
    }

    #[test]
    fn starts_at_default() {
        let e = ten_s(30 * MS);
        assert_eq!(e.estimate_us(0), 30 * MS);
        assert_eq!(e.estimate_us(1000 * S), 30 * MS);
        assert_eq!(ten_s(0).estimate_us(0), 1);
    }

    #[test]
    fn peak_replaces_at_once() {
        let mut e = ten_s(10 * MS);
        e.observe(S, 500 * MS);
        assert_eq!(e.estimate_us(S), 500 * MS);
    }

    #[test]
    fn lower_samples_decay_with_the_time_constant() {
        let mut e = ten_s(10 * MS);
        e.observe(S, 100 * MS);
        // One time constant later, a 10 ms sample: 100·e⁻¹ + 10·(1 − e⁻¹) ≈ 43.1 ms.
        e.observe(11 * S, 10 * MS);
        let want = 100_000.0 * (-1f64).exp() + 10_000.0 * (1.0 - (-1f64).exp());
        assert!(
            close(e.estimate_us(11 * S), want),
            "{}",
            e.estimate_us(11 * S)
        );
        // A sample right after barely moves it.
        let before = e.estimate_us(11 * S);
        e.observe(11 * S + 1, 10 * MS);
        assert!(before - e.estimate_us(11 * S + 1) <= 1);
    }

    #[test]
    fn frequent_small_steps_still_converge() {
        // 1 sample per ms for 50 s: integer state would stay stuck at the peak.
        let mut e = ten_s(10 * MS);
        e.observe(0, 200 * MS);
        let mut t = 0;
        while t < 50 * S {
            t += MS;
            e.observe(t, 20 * MS);
        }
        assert!(close(
            e.estimate_us(t),
            20_000.0 + 180_000.0 * (-5f64).exp()
        ));
    }

    #[test]
    fn idle_estimate_drifts_back_to_default() {
        let mut e = ten_s(10 * MS);
        e.observe(0, S);
        let want = 10_000.0 + 990_000.0 * (-3f64).exp();
        assert!(close(e.estimate_us(30 * S), want));
        assert!(close(e.estimate_us(200 * S), 10_000.0));
        // A fast backend idle for long also returns to the neutral default.
        let mut f = ten_s(10 * MS);
        f.observe(0, 10 * MS);
        f.observe(60 * S, MS);
        assert!(close(f.estimate_us(600 * S), 10_000.0));
    }

    #[test]
    fn once_slow_backend_gets_retried() {
        // Traefik #12306: A serves steadily at 20 ms; B was slow once and got no
        // traffic since. B's cost must eventually fall below A's.
        let mut a = ten_s(10 * MS);
        let mut b = ten_s(10 * MS);
        b.observe(0, 2 * S);
        let mut t = 0;
        let mut retried = None;
        while t < 120 * S {
            t += 10 * MS;
            a.observe(t, 20 * MS);
            if b.cost(t, 0, 1) < a.cost(t, 0, 1) {
                retried = Some(t);
                break;
            }
        }
        let t = retried.expect("B never retried");
        assert!(t > 10 * S && t < 70 * S, "{t}");
    }

    #[test]
    fn failures_do_not_look_fast() {
        let mut e = ten_s(10 * MS);
        e.observe(S, 5 * MS);
        e.penalize(S);
        assert_eq!(e.estimate_us(S), DEFAULT_PENALTY_US);
        e.penalize(S);
        assert_eq!(e.estimate_us(S), 2 * DEFAULT_PENALTY_US);
        for _ in 0..10 {
            e.penalize(S);
        }
        assert_eq!(e.estimate_us(S), 16 * DEFAULT_PENALTY_US);
        // A penalty never lowers an estimate above the cap.
        let mut slow = ten_s(10 * MS);
        slow.observe(S, 40 * S);
        slow.penalize(S);
        assert_eq!(slow.estimate_us(S), 40 * S);
    }

    #[test]
    fn cost_scales_with_inflight_and_weight() {
        let e = ten_s(10 * MS);
        assert_eq!(e.cost(0, 0, 1), 10_000_000);
        assert_eq!(e.cost(0, 3, 1), 40_000_000);
        assert_eq!(e.cost(0, 3, 2), 20_000_000);
        assert_eq!(e.cost(0, 3, 0), 40_000_000);
        let mut huge = ten_s(u64::MAX);
        huge.observe(0, u64::MAX);
        assert_eq!(huge.cost(0, u32::MAX, 1), u64::MAX);
    }

    #[test]
    fn time_going_backwards_is_harmless() {
        let mut e = ten_s(10 * MS);
        e.observe(10 * S, 100 * MS);
        e.observe(5 * S, 10 * MS);
        e.penalize(0);
        assert!(e.estimate_us(0) >= 100 * MS);
    }
}
