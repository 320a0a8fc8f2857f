//! Consistent hashing exactly as nginx's `hash $key consistent`
//! (ngx_http_upstream_hash_module.c), plus HAProxy-style bounded load.
//!
//! nginx's ring is compatible with Cache::Memcached::Fast ("ketama"): each
//! `server` gets `160 × weight` points, each the CRC-32 of the server's name
//! as written in the config (split into host and port) chained with the
//! previous point. A request's key is CRC-32'd and served by the first point
//! at or after it, walking on to later points while the backend there is
//! unusable, at most 20 steps, after which nginx falls back to round robin.
//! This module owns the ring (built once per backend-set change, so its
//! allocation is off the request path), the CRC-32 that nginx uses
//! (`ngx_crc32_long`, the IEEE/zlib CRC, also used by `hash_key.rs`) and the
//! walk; eligibility and load stay with the caller. cloudflare/pingora's
//! `pingora-ketama` is a Rust port of the same function; unlike it, this
//! module hashes the *name as written* (nginx's `peer->server`), so
//! `[::1]:80` hashes `[::1]` with brackets (pingora formats the parsed
//! `SocketAddr` and hashes `::1`, which is not what nginx does), hostnames
//! and `unix:` paths work, and the sort is stable.
//!
//! Source correspondence, nginx/nginx at 3f6f782 (2026-08-21):
//!
//! | step | nginx |
//! |---|---|
//! | name = the `server` directive's first argument as written | ngx_http_upstream.c 6648 (`u.url = value[1]`), 6676 (`us->name = u.url`); ngx_http_upstream_round_robin.c 197/226 (`peer[n].server = server[i].name`, one peer per resolved address, all with the same name) |
//! | ring size `total_weight × 160` | hash module 362 |
//! | peers in config order | 380 |
//! | `unix:` prefix (case-insensitive): host = the rest, no port | 388–396 |
//! | scan from the end over digits; a `:` splits host / port; any other byte, or none left: the whole name is the host, port empty | 398–417 |
//! | `base = crc32(host ‖ "\0" ‖ port)` (the NUL is always there) | 421–424 |
//! | `prev_hash = 0`, `weight × 160` points per peer | 426–427 |
//! | point = `crc32(base ‖ prev_hash as 4 little-endian bytes)`, finalised; `prev_hash = point` | 429–447 |
//! | sort by hash | 450–453 (`ngx_qsort` = libc `qsort`), comparator 469–486 |
//! | drop later points with an already seen hash (keep the first of each run) | 455–461 |
//! | key hash `ngx_crc32_long(key)` | 538 |
//! | first point with hash ≥ key hash (may be one past the end) | 489–518, called at 555–556 |
//! | empty key or single peer: plain round robin | 585–588 |
//! | walk: server of `point[hash % number]`; among the peers with that exact name (byte compare) that are not tried / down / failed / at `max_conns`, smooth WRR; if none, `hash++`, `tries++`, and after `tries > 20` round robin | 621–690 |
//!
//! Subtleties kept: the point index wraps through `% number` (so a key
//! above the last point goes to point 0); the walk visits the starting point
//! plus 20 more (21 in all); a name like `example.com` has an empty port but
//! still hashes the `\0`; duplicate hashes keep the earlier point. On that
//! last one: `qsort` is not guaranteed stable; glibc's is normally a merge
//! sort (stable) when it can allocate its scratch buffer, musl's is not;
//! this module sorts stably, so when
//! two different servers produce the same 32-bit point (rare: ~N²/2³³ for
//! N points) the one listed first in the config keeps it, as on glibc.
//!
//! Per-request state (nginx's `tried` bitmap and its per-request `tries`)
//! is the caller's: pass already-tried backends as ineligible. Restarting
//! the walk from the key's point on each retry visits the same points nginx
//! visits when it resumes from where it stopped, as long as a backend found
//! ineligible stays so for the request.
//!
//! Bounded load ([`Ketama::pick_bounded`]) is HAProxy's `hash-balance-factor`
//! (consistent hashing with bounded loads, Mirrokni, Thorup, Zadimoghaddam
//! 2016): a backend whose in-flight count has reached its share of
//! `ceil((total_inflight + 1) × factor / 100)` slots passes the key on to the
//! next point; the share arithmetic is `chash_server_is_eligible` from
//! HAProxy's src/lb_chash.c (383–404) verbatim, including how the remainder
//! is spread by cumulative weight in config order.

use std::collections::HashMap;

/// Points per unit of weight (nginx: `160 * weight`).
pub const POINTS_PER_WEIGHT: usize = 160;

/// Steps nginx walks past the key's point before giving up (`tries > 20`).
pub const MAX_TRIES: usize = 20;

/// Weights are clamped to `1..=MAX_WEIGHT` when the ring is built. nginx
/// rejects `weight=0` and has no upper bound, but a weight this large would
/// already mean 10 million points for one server: lbd's config should
/// refuse such weights rather than rely on this clamp.
pub const MAX_WEIGHT: u32 = 65_536;

/// CRC-32 lookup table (IEEE 802.3, reflected polynomial `0xedb88320`), as
/// nginx's `ngx_crc32_table256`.
const CRC_TABLE: [u32; 256] = crc_table();

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

/// Incremental CRC-32 (IEEE, as zlib and nginx's `ngx_crc32_init` /
/// `ngx_crc32_update` / `ngx_crc32_final`). Copyable, so a common prefix can
/// be hashed once and extended many times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crc32(u32);

impl Crc32 {
    /// A hasher over no bytes yet (`ngx_crc32_init`).
    pub const fn new() -> Self {
        Crc32(0xffff_ffff)
    }

    /// Feeds `bytes` (`ngx_crc32_update`).
    pub fn update(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    /// The CRC-32 of everything fed so far (`ngx_crc32_final`); the hasher
    /// itself is unchanged.
    pub fn finish(&self) -> u32 {
        self.0 ^ 0xffff_ffff
    }
}

impl Default for Crc32 {
    fn default() -> Self {
        Self::new()
    }
}

/// One-shot CRC-32 of `bytes`, equal to nginx's `ngx_crc32_long`.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut h = Crc32::new();
    h.update(bytes);
    h.finish()
}

/// Splits a server name as nginx does for the ring (hash module 388–417):
/// `unix:PATH` → (`PATH`, ""); otherwise, if the name ends in `:` followed by
/// only digits (possibly none), (before the colon, the digits); otherwise
/// (the whole name, "").
fn split_server_name(name: &[u8]) -> (&[u8], &[u8]) {
    if name.len() >= 5 && name[..5].eq_ignore_ascii_case(b"unix:") {
        return (&name[5..], b"");
    }
    for (j, &c) in name.iter().rev().enumerate() {
        if c == b':' {
            let colon = name.len() - j - 1;
            return (&name[..colon], &name[colon + 1..]);
        }
        if !c.is_ascii_digit() {
            break;
        }
    }
    (name, b"")
}

/// A point on the ring.
#[derive(Debug, Clone, Copy)]
struct Point {
    hash: u32,
    /// Index into the name groups.
    group: usize,
}

/// nginx's consistent-hash ring over one backend group.
///
/// Backends are indexes `0..n` in the order given to [`Ketama::new`] (the
/// config order). Backends with the same name (one `server` line resolving to
/// several addresses, or a name listed twice) share their points, as in nginx.
#[derive(Debug, Clone)]
pub struct Ketama {
    /// Sorted by hash, hashes unique.
    points: Box<[Point]>,
    /// Backend indexes by name group: group `g` is `members[starts[g]..starts[g + 1]]`.
    members: Box<[usize]>,
    starts: Box<[usize]>,
    /// Number of backends.
    n: usize,
}

impl Ketama {
    /// Builds the ring for `servers`: `(name as written in the config,
    /// weight)`, e.g. `("127.0.0.1:8081", 1)`, `("backend.local:80", 2)`,
    /// `("[::1]:8080", 1)`, `("unix:/run/app.sock", 1)`. Weights are clamped
    /// to `1..=MAX_WEIGHT`. Allocates; call it when the backend set changes,
    /// not per request.
    pub fn new(servers: &[(&str, u32)]) -> Self {
        // Name groups in order of first appearance.
        let mut group_ids: HashMap<&str, usize> = HashMap::new();
        let mut group_of = Vec::with_capacity(servers.len());
        for &(name, _) in servers {
            let next = group_ids.len();
            group_of.push(*group_ids.entry(name).or_insert(next));
        }
        let groups = group_ids.len();
        let mut starts = vec![0usize; groups + 1];
        for &g in &group_of {
            starts[g + 1] += 1;
        }
        for g in 0..groups {
            starts[g + 1] += starts[g];
        }
        let mut fill = starts.clone();
        let mut members = vec![0usize; servers.len()];
        for (i, &g) in group_of.iter().enumerate() {
            members[fill[g]] = i;
            fill[g] += 1;
        }

        let total: usize = servers
            .iter()
            .map(|&(_, w)| w.clamp(1, MAX_WEIGHT) as usize * POINTS_PER_WEIGHT)
            .sum();
        let mut points = Vec::with_capacity(total);
        for (&(name, weight), &group) in servers.iter().zip(&group_of) {
            let (host, port) = split_server_name(name.as_bytes());
            let mut base = Crc32::new();
            base.update(host);
            base.update(b"\0");
            base.update(port);
            let mut prev_hash = 0u32;
            for _ in 0..weight.clamp(1, MAX_WEIGHT) as usize * POINTS_PER_WEIGHT {
                let mut h = base;
                h.update(&prev_hash.to_le_bytes());
                let hash = h.finish();
                points.push(Point { hash, group });
                prev_hash = hash;
            }
        }
        // Stable, then keep the first of each run of equal hashes.
        points.sort_by_key(|p| p.hash);
        points.dedup_by_key(|p| p.hash);

        Ketama {
            points: points.into_boxed_slice(),
            members: members.into_boxed_slice(),
            starts: starts.into_boxed_slice(),
            n: servers.len(),
        }
    }

    /// nginx's key hash: `ngx_crc32_long(key)`. An empty key makes nginx
    /// use plain round robin instead of the ring (hash module 585); callers
    /// should do the same (`hash_key.rs` returns `None` for it).
    #[cfg(test)]
    pub fn key_hash(key: &[u8]) -> u32 {
        crc32(key)
    }

    /// Number of backends the ring was built for.
    #[cfg(test)]
    pub fn backends(&self) -> usize {
        self.n
    }

    /// Number of points on the ring (after dropping duplicate hashes).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.points.len()
    }

    /// True when the ring has no points (no servers).
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// Index of the first point with hash ≥ `hash`, `len()` when there is
    /// none (`ngx_http_upstream_find_chash_point`; hashes are unique, so this
    /// is the same index nginx's binary search returns).
    fn find(&self, hash: u32) -> usize {
        self.points.partition_point(|p| p.hash < hash)
    }

    /// The backends sharing the name of point `p` (taken modulo `len()`).
    fn members_at(&self, p: usize) -> &[usize] {
        let g = self.points[p % self.points.len()].group;
        &self.members[self.starts[g]..self.starts[g + 1]]
    }

    /// The walk of `ngx_http_upstream_get_chash_peer`, with the choice among
    /// same-named backends left to `choose`: starting at the key's point,
    /// `choose` gets the backends named by each point in turn (one index,
    /// or several for a name that resolved to several addresses, in config
    /// order) and returns the one to use, or `None` to move to the next
    /// point. After the starting point and 20 more, `None`: the caller falls
    /// back to round robin, as nginx does.
    ///
    /// To match nginx for multi-address names exactly, choose with smooth
    /// weighted round robin over the eligible members using the same
    /// [`super::rr::RoundRobin`] as the fallback (nginx shares
    /// `current_weight` between the two):
    /// `rr.next_weighted(|i| (members.contains(&i) && up(i)).then_some(w[i]))`.
    pub fn pick_with(
        &self,
        hash: u32,
        mut choose: impl FnMut(&[usize]) -> Option<usize>,
    ) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.find(hash);
        (0..=MAX_TRIES).find_map(|t| choose(self.members_at(start + t)))
    }

    /// The backend nginx would use for a key with this [`Ketama::key_hash`]:
    /// the first point at or after `hash` whose backend is `eligible`
    /// (walking at most 20 points further), or `None` when the walk found
    /// none and the caller should fall back to round robin. `eligible` should
    /// exclude backends that are down, failed, at their connection limit or
    /// already tried for this request. For a name shared by several backends
    /// this takes the first eligible one (see [`Ketama::pick_with`] for
    /// nginx's round robin among them). No allocation.
    pub fn pick(&self, hash: u32, mut eligible: impl FnMut(usize) -> bool) -> Option<usize> {
        self.pick_with(hash, |m| m.iter().copied().find(|&i| eligible(i)))
    }

    /// [`Ketama::pick`] with bounded load (HAProxy `hash-balance-factor`):
    /// a backend is usable only if `eligible(i)`, `weight(i) > 0` (its
    /// effective weight) and `inflight(i) < slots(i)`, where, with
    /// `T = Σ weight` over usable backends, `C(i)` = that sum over usable
    /// backends before `i`, and `S = ceil((total_inflight + 1) × factor / 100)`:
    /// `slots(i) = max(1, weight(i) × (S / T) + (C(i) + weight(i)) × (S % T) / T − C(i) × (S % T) / T)`
    /// (HAProxy's `chash_server_is_eligible`, in 128-bit integers so it
    /// cannot overflow). `total_inflight` is the group's total in flight,
    /// excluding the request being placed. An over-cap backend passes the
    /// key on to the next point; unlike nginx's 20-step walk the whole ring
    /// is walked, as HAProxy does, so an under-cap backend is found whenever
    /// one exists (with `factor ≥ 100` and a consistent `total_inflight`,
    /// one always does). `factor_percent == 0` disables the bound (plain
    /// [`Ketama::pick`]); HAProxy only accepts values above 100. `None`:
    /// fall back to round robin. No allocation; O(points + n²) worst case
    /// for n ≤ 128 backends, O(points × n) beyond.
    pub fn pick_bounded(
        &self,
        hash: u32,
        mut eligible: impl FnMut(usize) -> bool,
        mut inflight: impl FnMut(usize) -> u32,
        mut weight: impl FnMut(usize) -> u32,
        total_inflight: u32,
        factor_percent: u32,
    ) -> Option<usize> {
        if factor_percent == 0 {
            return self.pick(hash, eligible);
        }
        if self.points.is_empty() {
            return None;
        }
        let mut usable_weight = |i: usize| -> u128 {
            if eligible(i) {
                u128::from(weight(i))
            } else {
                0
            }
        };
        let tot_weight: u128 = (0..self.n).map(&mut usable_weight).sum();
        if tot_weight == 0 {
            return None;
        }
        // HAProxy: `((served + 1) * hash_balance_factor + 99) / 100`.
        let tot_slots =
            ((u128::from(total_inflight) + 1) * u128::from(factor_percent)).div_ceil(100);
        let per_weight = tot_slots / tot_weight;
        let remainder = tot_slots % tot_weight;
        // Backends among the first 128 already found over their cap.
        let mut over = 0u128;
        let start = self.find(hash);
        for t in 0..self.points.len() {
            for &i in self.members_at(start + t) {
                let bit = if i < 128 { 1u128 << i } else { 0 };
                if over & bit != 0 {
                    continue;
                }
                let w = usable_weight(i);
                let under = w > 0 && {
                    let cum: u128 = (0..i).map(&mut usable_weight).sum();
                    let mut slots = w * per_weight + ((cum + w) * remainder) / tot_weight
                        - (cum * remainder) / tot_weight;
                    if slots == 0 {
                        slots = 1;
                    }
                    u128::from(inflight(i)) < slots
                };
                if under {
                    return Some(i);
                }
                over |= bit;
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> u32 {
        Ketama::key_hash(k.as_bytes())
    }

    #[test]
    fn crc32_is_ieee() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
        let mut h = Crc32::new();
        h.update(b"1234");
        let mut g = h;
        g.update(b"56789");
        assert_eq!(g.finish(), 0xcbf4_3926);
        assert_eq!(h.finish(), crc32(b"1234"));
    }

    #[test]
    fn server_names_split_like_nginx() {
        let s = |n: &str| {
            let (h, p) = split_server_name(n.as_bytes());
            (
                String::from_utf8_lossy(h).into_owned(),
                String::from_utf8_lossy(p).into_owned(),
            )
        };
        let pair = |h: &str, p: &str| (h.to_owned(), p.to_owned());
        assert_eq!(s("127.0.0.1:8081"), pair("127.0.0.1", "8081"));
        assert_eq!(s("backend.local"), pair("backend.local", ""));
        assert_eq!(s("[::1]:80"), pair("[::1]", "80"));
        assert_eq!(s("[::1]"), pair("[::1]", ""));
        assert_eq!(s("unix:/tmp/a.sock"), pair("/tmp/a.sock", ""));
        assert_eq!(s("UNIX:/x:80"), pair("/x:80", ""));
        assert_eq!(s("host:"), pair("host", ""));
        assert_eq!(s("a:b:80"), pair("a:b", "80"));
        assert_eq!(s("h:8x"), pair("h:8x", ""));
        assert_eq!(s("8080"), pair("8080", ""));
        assert_eq!(s(""), pair("", ""));
    }

    #[test]
    fn points_follow_the_crc_chain() {
        let ring = Ketama::new(&[("10.0.0.1:443", 2)]);
        assert_eq!(ring.len(), 320);
        // Recompute the chain by hand: crc32("10.0.0.1\0443" ‖ prev LE).
        let mut prev = 0u32;
        let mut want = Vec::new();
        for _ in 0..320 {
            let mut input = b"10.0.0.1\x00443".to_vec();
            input.extend_from_slice(&prev.to_le_bytes());
            prev = crc32(&input);
            want.push(prev);
        }
        want.sort_unstable();
        let got: Vec<u32> = ring.points.iter().map(|p| p.hash).collect();
        assert_eq!(got, want);
        // A portless name still hashes the NUL.
        let ring = Ketama::new(&[("backend.local", 1)]);
        let mut input = b"backend.local\x00".to_vec();
        input.extend_from_slice(&0u32.to_le_bytes());
        assert!(ring.points.iter().any(|p| p.hash == crc32(&input)));
    }

    /// Two servers, weight 1: the sample pingora-ketama checks against nginx.
    #[test]
    fn golden_nginx_two_servers() {
        let ring = Ketama::new(&[("127.0.0.1:7777", 1), ("127.0.0.1:7778", 1)]);
        for (k, want) in [
            ("/some/path", 1),
            ("/some/longer/path", 0),
            ("/sad/zaidoon", 1),
            ("/g", 0),
            ("/pingora/team/is/cool/and/this/is/a/long/uri", 1),
            ("/i/am/not/confident/in/this/code", 0),
        ] {
            assert_eq!(ring.pick(key(k), |_| true), Some(want), "{k}");
        }
    }

    /// Nine servers `10.0.0.N:443 weight=100`, key `$request_uri`: every 20th
    /// line of the access log of a real nginx (`hash $request_uri consistent`)
    /// that pingora-ketama ships as test-data/sample-nginx-upstream.csv.
    /// (All 1,000 lines were checked when this test was written.)
    #[test]
    fn golden_nginx_nine_servers_weight_100() {
        let names: Vec<String> = (1..=9).map(|i| format!("10.0.0.{i}:443")).collect();
        let servers: Vec<(&str, u32)> = names.iter().map(|n| (n.as_str(), 100)).collect();
        let ring = Ketama::new(&servers);
        let golden: &[(&str, usize)] = &[
            ("/81fa1d251d605775d647b5b55565e71526d4cef6", 7),
            ("/a8762dc488e1a1af31e53af8ddb887d4f3cca990", 8),
            ("/f109862c7c78e8ce087aeff9f2368d54d91fd3be", 5),
            ("/7bd85bb6826eeb30a67a999bfdeb6f6368954a3d", 5),
            ("/7c17fc177496c13dd1207388087ae1979603c886", 5),
            ("/87654ba6f96f359e4418b3368ae2256a3c2dad51", 2),
            ("/99bbb0675c38e292e979110ac88fc7711edc92a2", 7),
            ("/508445e1be7b2b4495f2eb5907530bb095e98ea7", 5),
            ("/f55d45d265ec44be7ded0db1252281348fab75f0", 4),
            ("/6f360332b72940cc117999224b5be35551a1790a", 5),
            ("/5e89a982f7f165b47fef959e10c32afa1e01783e", 1),
            ("/038366c13ffa60a0d9ef4bef212e6e7354a6bbfa", 8),
            ("/f76abffc1a71b95e7969cceaad57429672beaf68", 3),
            ("/a50ef8903707c1c5d7158a851d636ef65e198e7a", 7),
            ("/48a468d706a7cc4b07c0e74695a9c2f64012b02a", 2),
            ("/233de62d4ed3f6e6a8d847500ed8be500970bd0e", 8),
            ("/e2067038a82745a65406516f15817b63e328a825", 2),
            ("/0b74a181ce4b4f43023e4bc0acd7770f2867572f", 5),
            ("/ef3afb81312d46b826f033d9adf0c730996e7992", 7),
            ("/3a70dff8627a20ee109fa8241d7da762a02e02b3", 4),
            ("/1a93e7ac8192b94e62372c526a858203ab55f82c", 9),
            ("/e2e2680aff762da702475c5307a31779cab5595a", 4),
            ("/ae4a64bd0638678f1f19b31f1610e800510308a8", 3),
            ("/143c0259d1759575c859b902f4e56ef478624989", 3),
            ("/ee359ac7b7e76cbc38f5a70cfb4a7323161e8519", 9),
            ("/6f6d1b8ccb3515ea7a4dfbba821b7e24f0af890e", 8),
            ("/0d5b4bab87051120251a86b92db52e12582ffdd1", 1),
            ("/53fcdac505c2e9d61d3df43336fbed32d4d52274", 1),
            ("/c9c04880224d2977fa60a0eef06d1c795fe6a423", 9),
            ("/3e4ae6d93c0251c47b243273c3cfa6a8e75561f1", 8),
            ("/383d327d7129f3b712ff73766f8ce42c74e53b15", 3),
            ("/0f4b330a57a82f31e00455ef74555b31f5bed5a5", 3),
            ("/05f427fdba3ff5f8d3039d3630772f161b8c9f14", 3),
            ("/2265098f5d88d6d99acdb58cdcc1259d928625cc", 9),
            ("/3150a053fd0dbbb2d248eebe951137ca8078f1d2", 2),
            ("/391aed0b4c3552fe6045ee9e9fa5b1d749dad8f8", 5),
            ("/af07fafd8a759a1cf5a609d578639be03caea26d", 2),
            ("/fb42de2cd7c51cacd89d7575bccd67f7ec25e451", 4),
            ("/7c838304cffcd5141ea13dc98ebe74d3c9fb0b68", 5),
            ("/749dd7577081e9d47a3bf9ef091b6e5b8daa5786", 3),
            ("/6a69c385697c7ed6b85ced626d993b02216c2186", 6),
            ("/70a2d83045053301afcd56deb30bf9095a9ad9d6", 6),
            ("/e4c7719fd87bd86bf5c818a7aa38af4d50691d51", 6),
            ("/9e26cafc4562d086fadce9cdf56c049e9cfd93b8", 5),
            ("/2bff636db028f497c8d26cce0c138a5049e69db7", 4),
            ("/1c91cb4395964c049653b422be092ecc6957ccb1", 3),
            ("/bbf232fd8d3a7f781b378f160e3fb629ce09ad59", 5),
            ("/782631660d3fd29586a00922d9e1885c30615bbf", 2),
            ("/c346dd5aae927ff513fe5a8ece05ec7c2d5674d1", 9),
            ("/3fca3907c98117eb1920bd03179a35aee3cf1939", 3),
            ("/658e0cefd2b9a97b2dd840c2a243afc0dbf06cf1", 9),
        ];
        assert_eq!(golden.len(), 51);
        for &(uri, n) in golden {
            assert_eq!(ring.pick(key(uri), |_| true), Some(n - 1), "{uri}");
        }
    }

    #[test]
    fn key_above_the_last_point_wraps_to_the_first() {
        let ring = Ketama::new(&[("a:1", 1), ("b:2", 1), ("c:3", 1)]);
        let last = ring.points[ring.len() - 1].hash;
        let first_owner = ring.members_at(0)[0];
        if last < u32::MAX {
            assert_eq!(ring.pick(last + 1, |_| true), Some(first_owner));
        }
        assert_eq!(ring.pick(u32::MAX, |_| true), {
            let p = ring.find(u32::MAX);
            Some(ring.members_at(p)[0])
        });
        assert_eq!(ring.pick(0, |_| true), Some(first_owner));
    }

    #[test]
    fn walk_moves_to_the_next_point_then_gives_up_after_20() {
        let ring = Ketama::new(&[("a:1", 1), ("b:1", 100)]);
        // Find keys whose point is followed by (a) a short and (b) a long run of b.
        let mut short = None;
        let mut long = None;
        for k in 0..100_000u32 {
            let h = crc32(&k.to_le_bytes());
            let start = ring.find(h);
            let run = (0..ring.len())
                .take_while(|&t| ring.members_at(start + t)[0] == 1)
                .count();
            if (1..=MAX_TRIES).contains(&run) && short.is_none() {
                short = Some(h);
            }
            if run > MAX_TRIES && long.is_none() {
                long = Some((h, run));
            }
            if short.is_some() && long.is_some() {
                break;
            }
        }
        let short = short.expect("a key with a short run");
        let (long, run) = long.expect("a key with a long run");
        assert_eq!(ring.pick(short, |i| i != 1), Some(0));
        assert_eq!(ring.pick(long, |i| i != 1), None, "run of {run}");
        // With every backend ineligible the walk ends too.
        assert_eq!(ring.pick(short, |_| false), None);
        let mut visited = 0;
        assert_eq!(
            ring.pick_with(short, |_| {
                visited += 1;
                None
            }),
            None
        );
        assert_eq!(visited, MAX_TRIES + 1);
    }

    #[test]
    fn removing_one_of_four_moves_only_its_keys() {
        let all = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"];
        let four = Ketama::new(&all.map(|n| (n, 1)));
        let three = Ketama::new(&[(all[0], 1), (all[1], 1), (all[3], 1)]);
        let back = [0usize, 1, 3];
        let mut moved = 0;
        for k in 0..4000 {
            let h = key(&format!("/k/{k}"));
            let before = four.pick(h, |_| true).expect("pick");
            let after = back[three.pick(h, |_| true).expect("pick")];
            if before == 2 {
                assert_ne!(after, 2);
                moved += 1;
            } else {
                assert_eq!(before, after, "key {k} moved");
            }
        }
        assert!(moved > 500, "{moved}");
        // Marking it ineligible instead moves the same keys, to the same places.
        for k in 0..4000 {
            let h = key(&format!("/k/{k}"));
            let down = four.pick(h, |i| i != 2).expect("pick");
            let after = back[three.pick(h, |_| true).expect("pick")];
            assert_eq!(down, after, "key {k}");
        }
    }

    #[test]
    fn weights_scale_the_share() {
        let ring = Ketama::new(&[("10.1.0.1:80", 1), ("10.1.0.2:80", 2), ("10.1.0.3:80", 4)]);
        assert_eq!(ring.len(), 7 * 160);
        let mut hits = [0u32; 3];
        for k in 0..70_000 {
            hits[ring.pick(key(&format!("k{k}")), |_| true).expect("pick")] += 1;
        }
        // Expected 10k / 20k / 40k; allow for ring granularity.
        assert!((7_500..=12_500).contains(&hits[0]), "{hits:?}");
        assert!((16_000..=24_000).contains(&hits[1]), "{hits:?}");
        assert!((35_000..=45_000).contains(&hits[2]), "{hits:?}");
    }

    #[test]
    fn same_name_shares_points() {
        let one = Ketama::new(&[("app:80", 1), ("db:80", 1)]);
        let two = Ketama::new(&[("app:80", 1), ("db:80", 1), ("app:80", 1)]);
        assert_eq!(one.len(), two.len());
        assert_eq!(two.backends(), 3);
        for k in 0..500 {
            let h = key(&format!("{k}"));
            let a = one.pick(h, |_| true);
            let b = two.pick(h, |_| true);
            assert_eq!(a, b);
            if a == Some(0) {
                // The second address of "app:80" takes over without moving the key.
                assert_eq!(two.pick(h, |i| i != 0), Some(2));
                let mut seen = Vec::new();
                two.pick_with(h, |m| {
                    seen.extend_from_slice(m);
                    Some(m[0])
                });
                assert_eq!(seen, [0, 2]);
            }
        }
    }

    #[test]
    fn empty_ring() {
        let ring = Ketama::new(&[]);
        assert!(ring.is_empty());
        assert_eq!(ring.pick(123, |_| true), None);
        assert_eq!(ring.pick_bounded(123, |_| true, |_| 0, |_| 1, 0, 125), None);
    }

    #[test]
    fn zero_weight_counts_as_one() {
        let ring = Ketama::new(&[("a:1", 0)]);
        assert_eq!(ring.len(), 160);
    }

    #[test]
    fn bounded_load_caps_a_hot_key() {
        let ring = Ketama::new(&[("10.2.0.1:80", 1), ("10.2.0.2:80", 1), ("10.2.0.3:80", 1)]);
        let h = key("/hot");
        let home = ring.pick(h, |_| true).expect("pick");
        // 30 requests for the hot key, none finishing, factor 150 %.
        let mut inflight = [0u32; 3];
        for _ in 0..30 {
            let total: u32 = inflight.iter().sum();
            let i = ring
                .pick_bounded(h, |_| true, |i| inflight[i], |_| 1, total, 150)
                .expect("pick");
            // Never above ceil((total + 1) × 1.5 / 3).
            assert!(inflight[i] < (total + 1) * 150 / 300 + 1);
            inflight[i] += 1;
        }
        assert_eq!(inflight.iter().sum::<u32>(), 30);
        assert!(inflight[home] >= 10 && inflight[home] <= 15, "{inflight:?}");
        assert!(inflight.iter().all(|&c| c <= 15), "{inflight:?}");
        // Unloaded, the bound changes nothing.
        assert_eq!(
            ring.pick_bounded(h, |_| true, |_| 0, |_| 1, 0, 150),
            Some(home)
        );
        // factor 0 disables the bound.
        assert_eq!(
            ring.pick_bounded(h, |_| true, |_| 99, |_| 1, 99, 0),
            Some(home)
        );
        // Ineligible and zero-weight backends are skipped; none usable → None.
        assert_eq!(ring.pick_bounded(h, |_| false, |_| 0, |_| 1, 0, 150), None);
        assert_eq!(ring.pick_bounded(h, |_| true, |_| 0, |_| 0, 0, 150), None);
    }

    #[test]
    fn bounded_slots_match_haproxy_arithmetic() {
        // Weights 1, 2, 3 (T = 6); 10 in flight, factor 125 %:
        // S = ceil(11 × 125 / 100) = 14, S / T = 2, S % T = 2.
        // slots: w=1,C=0: 2 + (1·2)/6 − 0 = 2; w=2,C=1: 4 + 6/6 − 2/6 = 5;
        // w=3,C=3: 6 + 12/6 − 6/6 = 7. Sum 14.
        let ring = Ketama::new(&[("x:1", 1), ("x:2", 2), ("x:3", 3)]);
        let w = [1u32, 2, 3];
        let slots = [2u32, 5, 7];
        for (b, &cap) in slots.iter().enumerate() {
            for load in 0..10u32 {
                // The others are far over their caps, so only b can take it,
                // and it must while under its slots.
                let load_of = |i: usize| if i == b { load } else { 1000 };
                let got = ring.pick_bounded(0, |_| true, load_of, |i| w[i], 10, 125);
                assert_eq!(got.is_some(), load < cap, "backend {b} load {load}");
            }
        }
    }
}
