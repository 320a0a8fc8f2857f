//! Sticky sessions: a stable, opaque id per backend for the sticky cookie,
//! and the one `Cookie` header parser used by lbd (here and by
//! `hash_key.rs`'s `cookie:NAME`).
//!
//! The id is a hash of the backend's identity — its group name and its
//! address as written in the config — so a cookie set by one lbd instance is
//! understood by every other instance and survives restarts and reordering
//! of the backend list (like HAProxy's `cookie … insert` with explicit
//! `cookie` values, or nginx Plus's `sticky cookie`, which stores an MD5 of
//! the address), without showing the address in clear. The algorithm is
//! fixed and keyless so that all instances agree: FNV-1a 64 over
//! `group ‖ 0x00 ‖ address`, then MurmurHash3's `fmix64` finaliser so that
//! similar addresses give unrelated ids; rendered as 16 lowercase hex digits.
//! It hides the address from casual view only: anyone who can guess the
//! candidate addresses can recompute the ids, so it is not a secret.
//!
//! The cookie parser reproduces nginx's `$cookie_NAME`
//! (`ngx_http_parse_cookie_lines` → `ngx_http_parse_multi_header_lines_internal`
//! with separator `;`, src/http/ngx_http_parse.c): all `Cookie` headers in
//! order, first match wins; the name matches ASCII-case-insensitively, may
//! be followed by spaces before `=`; spaces after `=` are skipped; the value
//! runs to the next `;` (trailing spaces kept); a name followed by something
//! other than `=` skips to after the *next* `;`, as nginx does.

use std::fmt;

/// Stable opaque id of one backend, for the sticky cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StickyId(u64);

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a 64 step over `bytes`.
fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

/// MurmurHash3 `fmix64` finaliser.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

impl StickyId {
    /// The id of the backend `address` (as written in the config, e.g.
    /// `10.0.0.1:8080` or `app.internal:80`) in upstream group `group`.
    pub fn new(group: &str, address: &str) -> Self {
        let h = fnv1a(FNV_OFFSET, group.as_bytes());
        let h = fnv1a(h, &[0]);
        let h = fnv1a(h, address.as_bytes());
        StickyId(fmix64(h))
    }

    /// The id as a number.
    #[cfg(test)]
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id as 16 lowercase hex digits (the cookie value), without allocating.
    pub fn to_hex(self) -> [u8; 16] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 16];
        for (k, o) in out.iter_mut().enumerate() {
            *o = HEX[((self.0 >> (60 - 4 * k)) & 0xf) as usize];
        }
        out
    }

    /// Parses a cookie value: exactly 16 hex digits (either case). Anything
    /// else is `None` (a stale or forged cookie: pick normally).
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() != 16 {
            return None;
        }
        let mut v = 0u64;
        for &c in value {
            let d = char::from(c).to_digit(16)?;
            v = (v << 4) | u64::from(d);
        }
        Some(StickyId(v))
    }
}

impl fmt::Display for StickyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// The index in `ids` of the backend a sticky cookie value names, if any.
/// O(n), no allocation.
pub fn find_backend(ids: &[StickyId], cookie_value: &[u8]) -> Option<usize> {
    let id = StickyId::parse(cookie_value)?;
    ids.iter().position(|&x| x == id)
}

/// Strips leading and trailing spaces and tabs (nginx stores header values
/// without them).
fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = v.iter().position(|c| !is_ows(c)).unwrap_or(v.len());
    let end = v.iter().rposition(|c| !is_ows(c)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// The value of cookie `name` in one `Cookie` header value, nginx-style (see
/// the module doc). `None` if absent or `name` is empty; `Some(b"")` for a
/// present but empty cookie.
pub fn cookie_value<'a>(header_value: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let v = trim_ows(header_value);
    let (len, end) = (name.len(), v.len());
    if len == 0 || len > end {
        return None;
    }
    let mut s = 0;
    while s < end {
        if end - s >= len && v[s..s + len].eq_ignore_ascii_case(name) {
            s += len;
            while s < end && v[s] == b' ' {
                s += 1;
            }
            if s < end {
                let c = v[s];
                s += 1;
                if c == b'=' {
                    while s < end && v[s] == b' ' {
                        s += 1;
                    }
                    let last = v[s..]
                        .iter()
                        .position(|&c| c == b';')
                        .map_or(end, |p| s + p);
                    return Some(&v[s..last]);
                }
            }
        }
        // skip: past the next ';', then spaces.
        while s < end {
            let c = v[s];
            s += 1;
            if c == b';' {
                break;
            }
        }
        while s < end && v[s] == b' ' {
            s += 1;
        }
    }
    None
}

/// The value of cookie `name` across all `Cookie` headers of a request
/// (header names compared case-insensitively), first match in order, like
/// nginx's `$cookie_NAME`.
pub fn find_cookie<'h>(
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    name: &[u8],
) -> Option<&'h [u8]> {
    headers
        .into_iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"cookie"))
        .find_map(|(_, v)| cookie_value(v, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_fmix_are_the_standard_ones() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fmix64(0), 0);
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = StickyId::new("web", "10.0.0.1:80");
        // Pinned: changing the algorithm would break every cookie in the field.
        let fnv = fnv1a(fnv1a(fnv1a(FNV_OFFSET, b"web"), &[0]), b"10.0.0.1:80");
        assert_eq!(a.as_u64(), fmix64(fnv));
        assert_eq!(a.to_string(), "0d6052d4c903e942");
        assert_eq!(a, StickyId::new("web", "10.0.0.1:80"));
        assert_ne!(a, StickyId::new("web", "10.0.0.2:80"));
        assert_ne!(a, StickyId::new("api", "10.0.0.1:80"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(StickyId::new("ab", "c"), StickyId::new("a", "bc"));
        let hex = a.to_hex();
        assert_eq!(&hex[..], a.to_string().as_bytes());
        assert!(hex
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c)));
        assert!(!a.to_string().contains("10.0.0.1"));
    }

    #[test]
    fn hex_round_trips() {
        for id in [StickyId(0), StickyId(u64::MAX), StickyId::new("g", "h:1")] {
            assert_eq!(StickyId::parse(&id.to_hex()), Some(id));
        }
        assert_eq!(StickyId::parse(b"00000000000000ff"), Some(StickyId(255)));
        assert_eq!(StickyId::parse(b"00000000000000FF"), Some(StickyId(255)));
        assert_eq!(StickyId::parse(b"0000000000000ff"), None);
        assert_eq!(StickyId::parse(b"00000000000000fg"), None);
        assert_eq!(StickyId::parse(b"+000000000000000"), None);
        assert_eq!(StickyId::parse("00000000000000é".as_bytes()), None);
    }

    #[test]
    fn find_backend_by_cookie() {
        let ids = [StickyId::new("g", "a:1"), StickyId::new("g", "b:1")];
        assert_eq!(find_backend(&ids, &ids[1].to_hex()), Some(1));
        assert_eq!(find_backend(&ids, b"0123456789abcdef"), None);
        assert_eq!(find_backend(&ids, b"junk"), None);
    }

    #[test]
    fn cookie_parsing_matches_nginx() {
        let c = |v: &str, n: &str| {
            cookie_value(v.as_bytes(), n.as_bytes())
                .map(|x| String::from_utf8_lossy(x).into_owned())
        };
        let s = |x: &str| Some(x.to_owned());
        assert_eq!(c("a=1; b=2; c=3", "b"), s("2"));
        assert_eq!(c("a=1;b=2", "b"), s("2"));
        assert_eq!(c("a=1; b=2", "a"), s("1"));
        assert_eq!(c("a=1", "A"), s("1"));
        assert_eq!(c("a = 1 ; b=2", "a"), s("1 "));
        assert_eq!(c("a=", "a"), s(""));
        assert_eq!(c("ab=1; a=2", "a"), s("2"));
        assert_eq!(c("xa=1", "a"), None);
        assert_eq!(c("a", "a"), None);
        assert_eq!(c("a=1", ""), None);
        assert_eq!(c("a=x=y; b", "a"), s("x=y"));
        assert_eq!(c("  a=1  ", "a"), s("1"));
        // nginx quirk: a name followed by ';' swallows the next cookie.
        assert_eq!(c("a;a=2", "a"), None);
        assert_eq!(c("a;b=2", "b"), s("2"));
        assert_eq!(c("b;x; b=3", "b"), s("3"));
        // Quoted values are returned as they are, quotes included.
        assert_eq!(c("a=\"q\"", "a"), s("\"q\""));
    }

    #[test]
    fn cookies_across_headers() {
        let h: [(&[u8], &[u8]); 4] = [
            (b"Host", b"x"),
            (b"cookie", b"a=1"),
            (b"X-Other", b"b=9"),
            (b"COOKIE", b"b=2; a=3"),
        ];
        assert_eq!(find_cookie(h, b"a"), Some(&b"1"[..]));
        assert_eq!(find_cookie(h, b"b"), Some(&b"2"[..]));
        assert_eq!(find_cookie(h, b"c"), None);
    }
}
