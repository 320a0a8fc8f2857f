//! Backend selection: which member of a group gets the next request.
//!
//! The algorithms are sans-I/O, each in its own module, working on member
//! indexes `0..n` of one group with per-backend state passed in:
//! [`rr`] (nginx's smooth weighted round robin, the default), [`least_conn`]
//! (nginx `least_conn`), [`p2c`] over [`ewma`] costs (linkerd's PeakEWMA
//! with a failure penalty), [`ketama`] (exactly nginx's `hash … consistent`,
//! with HAProxy's bounded load), [`slow_start`] (a weight ramp computed from
//! time alone), [`hash_key`] (the balancing key of a request) and
//! [`sticky`] (stable backend ids for cookies). [`Selector`] is one worker's
//! selection state for one group; [`Member`] is how it sees a member at the
//! moment of a pick. Nothing here reads a clock, locks or allocates per pick.

pub(crate) mod ewma;
pub(crate) mod hash_key;
pub(crate) mod ketama;
pub(crate) mod least_conn;
pub(crate) mod p2c;
pub(crate) mod rr;
pub(crate) mod slow_start;
pub(crate) mod sticky;

/// `balance:` of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin (the default).
    RoundRobin,
    /// Fewest in-flight requests per weight on this worker.
    LeastConn,
    /// Power of two choices over PeakEWMA costs.
    P2c,
    /// Weighted random.
    Random,
    /// Consistent hashing of a request key (nginx `hash … consistent`).
    Hash,
}

/// A member as a pick sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    /// Effective weight (slow start applied); `None` when not eligible.
    pub(crate) weight: Option<u32>,
    /// Requests in flight to it on this worker.
    pub(crate) inflight: u32,
    /// Its PeakEWMA cost (p2c only, and only when asked for: see
    /// [`Selector::pick`]).
    pub(crate) cost: u64,
}

enum Kind {
    RoundRobin,
    LeastConn(least_conn::LeastConn),
    P2c,
    Random,
    Hash {
        ring: ketama::Ketama,
        /// `hash_balance_factor`, 0 = unbounded.
        factor: u32,
    },
}

/// One worker's selection state for one group.
pub(crate) struct Selector {
    kind: Kind,
    /// The round robin (also the fallback of `hash` for requests without a
    /// key, as nginx falls back).
    rr: rr::RoundRobin,
    rng: p2c::P2c,
}

impl Selector {
    /// A selector over members named `names` (as written, for the ring)
    /// with these configured weights; `seed` differs per worker.
    pub(crate) fn new(balance: Balance, names: &[(&str, u32)], factor: u32, seed: u64) -> Self {
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin,
            Balance::LeastConn => Kind::LeastConn(least_conn::LeastConn::new()),
            Balance::P2c => Kind::P2c,
            Balance::Random => Kind::Random,
            Balance::Hash => Kind::Hash {
                ring: ketama::Ketama::new(names),
                factor,
            },
        };
        Selector {
            kind,
            rr: rr::RoundRobin::new(names.len()),
            rng: p2c::P2c::new(seed),
        }
    }

    /// True if picks need PeakEWMA costs (and so latency samples).
    pub(crate) fn uses_latency(&self) -> bool {
        matches!(self.kind, Kind::P2c)
    }

    /// Picks a member among `n`; `member(i, cost)` describes member `i`
    /// (with its cost only when `cost`: computing it is the expensive part);
    /// `hash` is the request's key hash (`balance: hash`).
    pub(crate) fn pick(
        &mut self,
        n: usize,
        member: impl Fn(usize, bool) -> Member,
        hash: Option<u32>,
    ) -> Option<usize> {
        let full = &member;
        let member = |i| full(i, false);
        let member_cost = |i| full(i, true).cost;
        let weight = |i| member(i).weight;
        match &mut self.kind {
            Kind::RoundRobin => self.rr.next_weighted(weight),
            Kind::LeastConn(lc) => lc.pick(n, weight, |i| member(i).inflight),
            Kind::P2c => {
                let eligible = |i| member(i).weight.is_some();
                self.rng.pick(n, eligible, member_cost)
            }
            Kind::Random => weighted_random(&mut self.rng, n, weight),
            Kind::Hash { ring, factor } => {
                let picked = hash.and_then(|h| {
                    let eligible = |i| member(i).weight.is_some();
                    if *factor == 0 {
                        return ring.pick(h, eligible);
                    }
                    let total: u32 = (0..n).map(|i| member(i).inflight).sum();
                    let inflight = |i| member(i).inflight;
                    let w = |i| member(i).weight.unwrap_or(0);
                    ring.pick_bounded(h, eligible, inflight, w, total, *factor)
                });
                picked.or_else(|| self.rr.next_weighted(weight))
            }
        }
    }
}

/// A member drawn with probability proportional to its weight (nginx
/// `random` without `two`).
fn weighted_random(
    rng: &mut p2c::P2c,
    n: usize,
    weight: impl Fn(usize) -> Option<u32>,
) -> Option<usize> {
    let total: u64 = (0..n).filter_map(&weight).map(u64::from).sum();
    if total == 0 {
        return None;
    }
    let mut r = ((u128::from(rng.next_u64()) * u128::from(total)) >> 64) as u64;
    for i in 0..n {
        if let Some(w) = weight(i) {
            let w = u64::from(w);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(ws: &[Option<u32>]) -> impl Fn(usize, bool) -> Member + '_ {
        move |i, _| Member {
            weight: ws[i],
            inflight: 0,
            cost: 0,
        }
    }

    #[test]
    fn an_empty_group_picks_nothing() {
        use Balance::*;
        for b in [RoundRobin, LeastConn, P2c, Random, Hash] {
            let mut s = Selector::new(b, &[], 0, 1);
            assert_eq!(s.pick(0, members(&[]), None), None, "{b:?}");
            assert_eq!(s.pick(0, members(&[]), Some(7)), None, "{b:?}");
        }
        let mut s = Selector::new(Hash, &[], 150, 1);
        assert_eq!(s.pick(0, members(&[]), Some(7)), None);
    }

    #[test]
    fn random_is_weighted_and_skips_ineligible() {
        let names = [("a:1", 1), ("b:1", 3), ("c:1", 1)];
        let mut s = Selector::new(Balance::Random, &names, 0, 7);
        let ws = [Some(1), Some(3), None];
        let mut counts = [0usize; 3];
        for _ in 0..4000 {
            counts[s.pick(3, members(&ws), None).expect("pick")] += 1;
        }
        assert_eq!(counts[2], 0);
        assert!((2700..3300).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn hash_without_key_falls_back_to_round_robin() {
        let names = [("a:1", 1), ("b:1", 1)];
        let mut s = Selector::new(Balance::Hash, &names, 0, 1);
        let ws = [Some(1), Some(1)];
        let a = s.pick(2, members(&ws), None);
        let b = s.pick(2, members(&ws), None);
        assert_ne!(a, b);
        let h = ketama::Ketama::key_hash(b"user-1");
        let first = s.pick(2, members(&ws), Some(h));
        assert!((0..10).all(|_| s.pick(2, members(&ws), Some(h)) == first));
    }
}
