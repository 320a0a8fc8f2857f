//! Slow start: a backend that just became healthy, or was just added, gets
//! a weight that ramps linearly from 10 % to 100 % of its configured weight
//! over `window`, so a cold backend (empty caches, JIT, connection pools) is
//! not handed its full share at once.
//!
//! This is HAProxy's `slowstart` (`server_recalc_eweight`: weight grows
//! linearly with the time since the server came up) and Envoy's
//! `slow_start_config` (linear with the default aggression 1.0, floored at
//! `min_weight_percent`, default 10 %). HAProxy ramps from ~0 and Envoy holds
//! 10 % until the linear ramp passes it; here the ramp is
//! `10 % + 90 % × elapsed / window`, continuous at both ends. The result is
//! a pure function of the configured weight and timestamps, with no state,
//! so every worker computes the same weight from the shared "healthy since"
//! time and workers never disagree. Integer arithmetic only (rounded up, at
//! least 1). Configured weights are small integers (1 by default), and
//! `ceil(1 × 10 %)` is 1: a weight-1 backend would not ramp at all. So a
//! group with slow start balances on weights scaled by [`WEIGHT_SCALE`]
//! (HAProxy's `BE_WEIGHT_SCALE`, 16: every weight, ramping or not, so the
//! proportions are unchanged), via [`ramped_weight`]; a weight-1 backend
//! then ramps from 2/16 to 16/16. The effective weight feeds [`super::rr::RoundRobin::next_weighted`],
//! `least_conn.rs`, `ewma.rs` costs and the bounded-load caps in `ketama.rs`.

/// Weights of a group with slow start are multiplied by this (HAProxy's
/// `BE_WEIGHT_SCALE`), so that the ramp has steps finer than one unit of
/// configured weight.
pub const WEIGHT_SCALE: u32 = 16;

/// The balancing weight, in units of 1/[`WEIGHT_SCALE`], of a backend with
/// configured `weight` in a group with slow start: [`effective_weight`] of
/// the scaled weight. Backends that are not ramping get `weight × 16`, so
/// only the ratios the ramp changes differ from the configured ones.
pub fn ramped_weight(weight: u32, since_us: Option<u64>, now_us: u64, window_us: u64) -> u32 {
    effective_weight(
        weight.saturating_mul(WEIGHT_SCALE),
        since_us,
        now_us,
        window_us,
    )
}

/// Effective weight of a backend with configured `weight` that (re)joined
/// at `since_us` (`None`: it has been there from the start, no ramp), at
/// `now_us`, with a ramp of `window_us` (`0`: no slow start). Returns
/// `ceil(weight × (10 % + 90 % × elapsed / window))` while ramping, `weight`
/// after, and never less than 1. A `now_us` before `since_us` counts as the
/// start of the ramp.
pub fn effective_weight(weight: u32, since_us: Option<u64>, now_us: u64, window_us: u64) -> u32 {
    let weight = weight.max(1);
    let Some(since) = since_us else {
        return weight;
    };
    let elapsed = now_us.saturating_sub(since);
    if window_us == 0 || elapsed >= window_us {
        return weight;
    }
    let num = u128::from(weight) * (u128::from(window_us) + 9 * u128::from(elapsed));
    let den = 10 * u128::from(window_us);
    // elapsed < window, so the quotient is at most `weight`.
    let w = num.div_ceil(den);
    u32::try_from(w).unwrap_or(weight).clamp(1, weight)
}

/// True while a backend that (re)joined at `since_us` is still ramping at
/// `now_us`; once false the caller can forget `since_us`.
#[cfg(test)]
pub fn is_ramping(since_us: Option<u64>, now_us: u64, window_us: u64) -> bool {
    since_us.is_some_and(|since| now_us.saturating_sub(since) < window_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000;

    #[test]
    fn ramps_from_ten_to_hundred_percent() {
        let w = |t| effective_weight(100, Some(10 * S), t, 30 * S);
        assert_eq!(w(10 * S), 10);
        assert_eq!(w(25 * S), 55);
        assert_eq!(w(40 * S - 1), 100);
        assert_eq!(w(40 * S), 100);
        assert_eq!(w(1000 * S), 100);
        let mut last = 0;
        for t in (10 * S..=40 * S).step_by(100_000) {
            assert!(w(t) >= last);
            last = w(t);
        }
    }

    #[test]
    fn rounds_up_and_is_at_least_one() {
        assert_eq!(effective_weight(1, Some(0), 0, 10 * S), 1);
        assert_eq!(effective_weight(3, Some(0), 0, 10 * S), 1);
        assert_eq!(effective_weight(3, Some(0), 5 * S, 10 * S), 2);
        assert_eq!(effective_weight(0, Some(0), 0, 10 * S), 1);
        assert_eq!(effective_weight(0, None, 0, 10 * S), 1);
    }

    #[test]
    fn weight_one_ramps_in_sixteenths() {
        let w = |t| ramped_weight(1, Some(0), t, 10 * S);
        assert_eq!(w(0), 2);
        assert_eq!(w(5 * S), 9);
        assert_eq!(w(10 * S), 16);
        assert_eq!(ramped_weight(1, None, 0, 10 * S), 16);
        assert_eq!(ramped_weight(10_000, None, 0, 10 * S), 160_000);
        assert_eq!(ramped_weight(u32::MAX, None, 0, 10 * S), u32::MAX);
    }

    #[test]
    fn no_ramp_without_since_or_window() {
        assert_eq!(effective_weight(7, None, 5, 10 * S), 7);
        assert_eq!(effective_weight(7, Some(5), 5, 0), 7);
    }

    #[test]
    fn clock_before_since_is_the_start() {
        assert_eq!(effective_weight(50, Some(10 * S), 3 * S, 10 * S), 5);
    }

    #[test]
    fn extremes_do_not_overflow() {
        assert_eq!(
            effective_weight(u32::MAX, Some(0), u64::MAX - 1, u64::MAX),
            u32::MAX
        );
        assert_eq!(
            effective_weight(u32::MAX, Some(0), 0, u64::MAX),
            429_496_730
        );
    }

    #[test]
    fn ramping_flag() {
        assert!(is_ramping(Some(0), 5, 10));
        assert!(!is_ramping(Some(0), 10, 10));
        assert!(!is_ramping(None, 0, 10));
        assert!(!is_ramping(Some(0), 0, 0));
    }
}
