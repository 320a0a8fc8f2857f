//! The balancing key of `hash`-style upstreams: which part of a request is
//! hashed onto the ring (`ketama.rs`), parsed from the config and extracted
//! per request as nginx would compute the same variable, so that lbd and an
//! nginx with `hash $VAR consistent` send the same key to the same server.
//!
//! | spec | nginx variable | value hashed |
//! |---|---|---|
//! | `client_ip` | `$remote_addr` | client address as text, formatted by nginx's `ngx_inet6_ntop` rules (`::ffff:1.2.3.4` for mapped IPv4, `::1.2.3.4` for IPv4-compatible, otherwise RFC 5952) |
//! | `uri` | `$request_uri` | the request target as sent, path + query; for an absolute-form target (`http://host/p?q`) the part from the path on, as nginx's `unparsed_uri`, `/` if it has none |
//! | `path` | (`$uri` before normalisation) | `uri` up to the first `?`, `/` if empty; raw, *not* percent-decoded or dot-segment-merged as nginx's `$uri` is, so it equals `$uri` only for normalised paths |
//! | `header:NAME` | `$http_NAME` | every `NAME` header (case-insensitive), in order, joined with `, ` (`; ` for `Cookie`), as nginx ≥ 1.23 does; a single header is its value |
//! | `cookie:NAME` | `$cookie_NAME` | the first `NAME` cookie in the `Cookie` headers (`sticky.rs`'s parser, nginx's rules) |
//! | `query:NAME` | `$arg_NAME` | the first `NAME=` argument in the query (name case-insensitive), raw up to the next `&` (`ngx_http_arg`) |
//!
//! The hash is nginx's CRC-32 (`ketama::crc32`), computed incrementally with
//! no allocation. A missing or empty value gives `None`: nginx then uses
//! plain round robin (ngx_http_upstream_hash_module.c, `hp->key.len == 0`),
//! and so should the caller. Header values are compared after trimming
//! spaces and tabs at both ends, as nginx stores them. Header names match
//! exactly (ASCII-case-insensitively): nginx also lets `$http_x_user` match an
//! `X_User` header, but ignores headers with underscores by default.

use super::ketama::Crc32;
use super::sticky;
use std::fmt;
use std::net::IpAddr;

/// What part of a request the hash balances on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address as text (`$remote_addr`).
    ClientIp,
    /// The request target, path and query (`$request_uri`).
    Uri,
    /// The request path without the query.
    Path,
    /// The value(s) of a request header (`$http_NAME`).
    Header(String),
    /// The value of a cookie (`$cookie_NAME`).
    Cookie(String),
    /// The value of a query argument (`$arg_NAME`).
    Query(String),
}

const EXPECTED: &str = "expected client_ip, uri, path, header:NAME, cookie:NAME or query:NAME";

/// RFC 9110 `tchar`, the characters of a header or cookie name.
fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

/// Checks a `NAME` argument; `what` is "header", "cookie" or "query".
fn check_name(spec: &str, what: &str, name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err(format!("empty {what} name in hash key \"{spec}\""));
    }
    let bad = |c: char| {
        if what == "query" {
            c.is_ascii_control() || c.is_whitespace() || "&=#?".contains(c)
        } else {
            !(c.is_ascii() && is_tchar(c as u8))
        }
    };
    if let Some(c) = name.chars().find(|&c| bad(c)) {
        return Err(format!(
            "invalid character {c:?} in {what} name \"{name}\" of hash key \"{spec}\""
        ));
    }
    Ok(name.to_owned())
}

impl HashKey {
    /// Parses a key spec from the config: `client_ip`, `uri`, `path`,
    /// `header:NAME`, `cookie:NAME` or `query:NAME` (surrounding whitespace
    /// ignored). The error names the part that is wrong.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let s = spec.trim();
        let (kind, arg) = match s.split_once(':') {
            Some((k, a)) => (k, Some(a)),
            None => (s, None),
        };
        match (kind, arg) {
            ("client_ip", None) => Ok(HashKey::ClientIp),
            ("uri", None) => Ok(HashKey::Uri),
            ("path", None) => Ok(HashKey::Path),
            ("client_ip" | "uri" | "path", Some(_)) => Err(format!(
                "hash key \"{kind}\" takes no argument (got \"{s}\")"
            )),
            ("header", Some(a)) => check_name(s, "header", a).map(HashKey::Header),
            ("cookie", Some(a)) => check_name(s, "cookie", a).map(HashKey::Cookie),
            ("query", Some(a)) => check_name(s, "query", a).map(HashKey::Query),
            ("header" | "cookie" | "query", None) => Err(format!(
                "hash key \"{kind}\" needs a name, as in \"{kind}:NAME\""
            )),
            ("", _) => Err(format!("empty hash key \"{s}\": {EXPECTED}")),
            _ => Err(format!(
                "unknown hash key \"{kind}\" in \"{s}\": {EXPECTED}"
            )),
        }
    }

    /// The CRC-32 of this key for one request, or `None` when the key is
    /// missing or empty (fall back to round robin). `target` is the request
    /// target as sent; `headers` yields `(name, value)` pairs in arrival
    /// order. No allocation.
    pub fn hash<'h>(
        &self,
        client_ip: IpAddr,
        target: &[u8],
        headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    ) -> Option<u32> {
        let value: &[u8] = match self {
            HashKey::ClientIp => {
                let mut buf = IpText::new();
                buf.write_ip(client_ip);
                return crc_nonempty(buf.as_bytes());
            }
            HashKey::Uri => request_uri(target),
            HashKey::Path => {
                let uri = request_uri(target);
                match uri.iter().position(|&c| c == b'?') {
                    Some(0) => b"/",
                    Some(q) => &uri[..q],
                    None => uri,
                }
            }
            HashKey::Header(name) => return hash_headers(headers, name.as_bytes()),
            HashKey::Cookie(name) => sticky::find_cookie(headers, name.as_bytes())?,
            HashKey::Query(name) => query_arg(args(request_uri(target))?, name.as_bytes())?,
        };
        crc_nonempty(value)
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HashKey::ClientIp => f.write_str("client_ip"),
            HashKey::Uri => f.write_str("uri"),
            HashKey::Path => f.write_str("path"),
            HashKey::Header(n) => write!(f, "header:{n}"),
            HashKey::Cookie(n) => write!(f, "cookie:{n}"),
            HashKey::Query(n) => write!(f, "query:{n}"),
        }
    }
}

/// CRC-32 of a non-empty value.
fn crc_nonempty(v: &[u8]) -> Option<u32> {
    (!v.is_empty()).then(|| super::ketama::crc32(v))
}

/// nginx's `$request_uri` (`unparsed_uri`) for a request target: origin-form
/// as is; absolute-form from the path (or `?`) after the authority, `/` if
/// there is neither; anything else (`*`, authority-form) as is.
fn request_uri(target: &[u8]) -> &[u8] {
    if target.first() == Some(&b'/') {
        return target;
    }
    let scheme_len = target
        .iter()
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    if scheme_len == 0 || !target[scheme_len..].starts_with(b"://") {
        return target;
    }
    let rest = &target[scheme_len + 3..];
    match rest.iter().position(|&c| c == b'/' || c == b'?') {
        Some(p) => &rest[p..],
        None => b"/",
    }
}

/// The query string of a `$request_uri` (after the first `?`), if any.
fn args(uri: &[u8]) -> Option<&[u8]> {
    let q = uri.iter().position(|&c| c == b'?')?;
    Some(&uri[q + 1..])
}

/// nginx's `ngx_http_arg`: the value of the first `name=` argument that
/// starts the string or follows `&`, name compared ASCII-case-insensitively,
/// up to the next `&`.
fn query_arg<'a>(args: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let len = name.len();
    if len == 0 {
        return None;
    }
    // Positions where `name` fits with one byte left for '='.
    let mut p = 0;
    while p + len < args.len() {
        if (p == 0 || args[p - 1] == b'&')
            && args[p + len] == b'='
            && args[p..p + len].eq_ignore_ascii_case(name)
        {
            let v = &args[p + len + 1..];
            let end = v.iter().position(|&c| c == b'&').unwrap_or(v.len());
            return Some(&v[..end]);
        }
        p += 1;
    }
    None
}

/// Strips leading and trailing spaces and tabs.
fn trim_ows(v: &[u8]) -> &[u8] {
    let is_ows = |c: &u8| *c == b' ' || *c == b'\t';
    let start = v.iter().position(|c| !is_ows(c)).unwrap_or(v.len());
    let end = v.iter().rposition(|c| !is_ows(c)).map_or(start, |e| e + 1);
    &v[start..end]
}

/// CRC-32 of all `name` headers joined like nginx's `$http_NAME`.
fn hash_headers<'h>(
    headers: impl IntoIterator<Item = (&'h [u8], &'h [u8])>,
    name: &[u8],
) -> Option<u32> {
    let sep: &[u8] = if name.eq_ignore_ascii_case(b"cookie") {
        b"; "
    } else {
        b", "
    };
    let mut crc = Crc32::new();
    let mut any = false;
    let mut len = 0usize;
    for (n, v) in headers {
        if !n.eq_ignore_ascii_case(name) {
            continue;
        }
        let v = trim_ows(v);
        if any {
            crc.update(sep);
            len += sep.len();
        }
        crc.update(v);
        len += v.len();
        any = true;
    }
    (len > 0).then(|| crc.finish())
}

/// A stack buffer holding an IP address as nginx prints it.
struct IpText {
    buf: [u8; 48],
    len: usize,
}

impl IpText {
    fn new() -> Self {
        IpText {
            buf: [0; 48],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    fn push(&mut self, c: u8) {
        // At most 45 bytes are ever written ("ffff:…:255.255.255.255").
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = c;
            self.len += 1;
        }
    }

    /// `%ud`.
    fn dec(&mut self, v: u8) {
        if v >= 100 {
            self.push(b'0' + v / 100);
        }
        if v >= 10 {
            self.push(b'0' + v / 10 % 10);
        }
        self.push(b'0' + v % 10);
    }

    /// `%xd`: lowercase hex, no leading zeros.
    fn hex(&mut self, v: u16) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut started = false;
        for shift in [12, 8, 4, 0] {
            let d = (v >> shift) & 0xf;
            if d != 0 || started || shift == 0 {
                self.push(HEX[usize::from(d)]);
                started = true;
            }
        }
    }

    fn dotted(&mut self, o: [u8; 4]) {
        for (k, b) in o.into_iter().enumerate() {
            if k > 0 {
                self.push(b'.');
            }
            self.dec(b);
        }
    }

    /// `ngx_sock_ntop` without port: dotted quad, or `ngx_inet6_ntop`.
    fn write_ip(&mut self, ip: IpAddr) {
        let p = match ip {
            IpAddr::V4(v4) => return self.dotted(v4.octets()),
            IpAddr::V6(v6) => v6.octets(),
        };
        // Longest run (≥ 2, first on ties) of zero 16-bit groups, as byte index.
        let (mut zero, mut last, mut max, mut n) = (usize::MAX, usize::MAX, 1usize, 0usize);
        for i in (0..16).step_by(2) {
            if p[i] != 0 || p[i + 1] != 0 {
                if max < n {
                    zero = last;
                    max = n;
                }
                n = 0;
                continue;
            }
            if n == 0 {
                last = i;
            }
            n += 1;
        }
        if max < n {
            zero = last;
            max = n;
        }
        let mut end = 16;
        if zero == 0 {
            if (max == 5 && p[10] == 0xff && p[11] == 0xff)
                || max == 6
                || (max == 7 && p[14] != 0 && p[15] != 1)
            {
                end = 12;
            }
            self.push(b':');
        }
        let mut i = 0;
        while i < end {
            if i == zero {
                self.push(b':');
                i += (max - 1) * 2 + 2;
                continue;
            }
            self.hex(u16::from_be_bytes([p[i], p[i + 1]]));
            if i < 14 {
                self.push(b':');
            }
            i += 2;
        }
        if end == 12 {
            self.dotted([p[12], p[13], p[14], p[15]]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ketama::crc32;
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const NO_HEADERS: [(&[u8], &[u8]); 0] = [];

    fn ip_text(ip: &str) -> String {
        let mut t = IpText::new();
        t.write_ip(ip.parse().expect("ip"));
        String::from_utf8_lossy(t.as_bytes()).into_owned()
    }

    fn k(spec: &str) -> HashKey {
        HashKey::parse(spec).expect("spec")
    }

    #[test]
    fn parses_and_round_trips() {
        for s in [
            "client_ip",
            "uri",
            "path",
            "header:X-User",
            "cookie:session_id",
            "query:user",
        ] {
            assert_eq!(k(s).to_string(), s);
        }
        assert_eq!(k("  uri "), HashKey::Uri);
        assert_eq!(k("header:X-User"), HashKey::Header("X-User".into()));
    }

    #[test]
    fn parse_errors_name_the_bad_part() {
        let e = |s: &str| HashKey::parse(s).expect_err(s);
        assert!(
            e("foo:bar").contains("unknown hash key \"foo\""),
            "{}",
            e("foo:bar")
        );
        assert!(e("foo").contains(EXPECTED));
        assert!(e("").contains("empty hash key"));
        assert!(e("uri:x").contains("\"uri\" takes no argument"));
        assert!(e("header").contains("needs a name"));
        assert!(e("header:").contains("empty header name"));
        assert!(e("header:X User").contains("' ' in header name \"X User\""));
        assert!(e("cookie:a=b").contains("'=' in cookie name"));
        assert!(e("query:a&b").contains("'&' in query name"));
        assert!(e("Header:x").contains("unknown hash key \"Header\""));
    }

    #[test]
    fn ip_text_is_nginx_remote_addr() {
        assert_eq!(ip_text("192.168.0.1"), "192.168.0.1");
        assert_eq!(ip_text("0.0.0.0"), "0.0.0.0");
        assert_eq!(ip_text("255.10.100.7"), "255.10.100.7");
        assert_eq!(ip_text("::"), "::");
        assert_eq!(ip_text("::1"), "::1");
        assert_eq!(ip_text("::2"), "::2");
        assert_eq!(ip_text("1::"), "1::");
        assert_eq!(ip_text("2001:db8::1"), "2001:db8::1");
        assert_eq!(ip_text("2001:db8:0:1:0:0:0:1"), "2001:db8:0:1::1");
        assert_eq!(ip_text("2001:0:0:1:0:0:1:1"), "2001::1:0:0:1:1");
        assert_eq!(ip_text("2001:db8:0:1:1:1:1:1"), "2001:db8:0:1:1:1:1:1");
        assert_eq!(ip_text("fe80::abcd:ef01"), "fe80::abcd:ef01");
        assert_eq!(
            ip_text("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
        );
        // Embedded IPv4, where nginx differs from Rust's Display.
        assert_eq!(ip_text("::ffff:1.2.3.4"), "::ffff:1.2.3.4");
        assert_eq!(ip_text("::1.2.3.4"), "::1.2.3.4");
        assert_eq!(ip_text("::100"), "::0.0.1.0");
        // nginx's test is `p[14] != 0 && p[15] != 1`, so ::101 stays hex.
        assert_eq!(ip_text("::101"), "::101");
        assert_eq!(ip_text("::ffff:0:1.2.3.4"), "::ffff:0:102:304");
    }

    #[test]
    fn ip_text_matches_rfc5952_without_leading_zeros() {
        // Wherever the first group is non-zero nginx prints RFC 5952, as Rust does.
        let mut x = 0x1234_5678_9abc_def0_u64;
        for _ in 0..5000 {
            let mut g = [0u16; 8];
            for s in g.iter_mut() {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *s = if x.is_multiple_of(3) {
                    0
                } else {
                    (x >> 20) as u16
                };
            }
            g[0] |= 1;
            let ip = Ipv6Addr::from(g);
            assert_eq!(ip_text(&ip.to_string()), ip.to_string());
        }
    }

    #[test]
    fn client_ip_hashes_the_text() {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(
            k("client_ip").hash(ip, b"/", NO_HEADERS),
            Some(crc32(b"10.1.2.3"))
        );
    }

    #[test]
    fn uri_and_path() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let h = |spec: &str, t: &str| k(spec).hash(ip, t.as_bytes(), NO_HEADERS);
        let c = |s: &str| Some(crc32(s.as_bytes()));
        assert_eq!(h("uri", "/a/b?x=1&y=2"), c("/a/b?x=1&y=2"));
        assert_eq!(h("path", "/a/b?x=1&y=2"), c("/a/b"));
        assert_eq!(h("path", "/a/b"), c("/a/b"));
        assert_eq!(h("uri", "/a%20b"), c("/a%20b"));
        // Absolute-form: nginx's $request_uri starts at the path.
        assert_eq!(h("uri", "http://example.com:8080/p?q=1"), c("/p?q=1"));
        assert_eq!(h("uri", "https://example.com"), c("/"));
        assert_eq!(h("uri", "http://example.com?q"), c("?q"));
        assert_eq!(h("path", "http://example.com?q"), c("/"));
        assert_eq!(h("uri", "*"), c("*"));
        assert_eq!(h("uri", ""), None);
    }

    #[test]
    fn query_args_like_ngx_http_arg() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let h = |spec: &str, t: &str| k(spec).hash(ip, t.as_bytes(), NO_HEADERS);
        let c = |s: &str| Some(crc32(s.as_bytes()));
        assert_eq!(h("query:user", "/p?a=1&user=bob&user=eve"), c("bob"));
        assert_eq!(h("query:user", "/p?USER=bob"), c("bob"));
        assert_eq!(h("query:user", "/p?xuser=1&user=2"), c("2"));
        assert_eq!(h("query:user", "/p?user=a%20b"), c("a%20b"));
        assert_eq!(h("query:user", "/p?user=x=y"), c("x=y"));
        assert_eq!(h("query:user", "/p?user"), None);
        assert_eq!(h("query:user", "/p?user="), None);
        assert_eq!(h("query:user", "/p?user=&user=2"), None);
        assert_eq!(h("query:user", "/p"), None);
        assert_eq!(h("query:user", "/p?"), None);
        assert_eq!(h("query:u", "/p?u=1?v=2"), c("1?v=2"));
        assert_eq!(h("query:q", "http://h/x?q=7"), c("7"));
    }

    #[test]
    fn headers_join_like_nginx() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let hs: [(&[u8], &[u8]); 5] = [
            (b"Host", b"example.com"),
            (b"x-user", b" alice "),
            (b"Cookie", b"a=1"),
            (b"X-USER", b"bob"),
            (b"cookie", b"b=2"),
        ];
        let h = |spec: &str| k(spec).hash(ip, b"/", hs);
        assert_eq!(h("header:Host"), Some(crc32(b"example.com")));
        assert_eq!(h("header:X-User"), Some(crc32(b"alice, bob")));
        assert_eq!(h("header:Cookie"), Some(crc32(b"a=1; b=2")));
        assert_eq!(h("header:X-Missing"), None);
        let empty: [(&[u8], &[u8]); 1] = [(b"X-User", b"  ")];
        assert_eq!(k("header:X-User").hash(ip, b"/", empty), None);
    }

    #[test]
    fn cookies() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let hs: [(&[u8], &[u8]); 2] = [(b"Cookie", b"sid=; x=1"), (b"Cookie", b"sid=abc")];
        assert_eq!(k("cookie:x").hash(ip, b"/", hs), Some(crc32(b"1")));
        // The first `sid` is empty: nginx's key is empty, so round robin.
        assert_eq!(k("cookie:sid").hash(ip, b"/", hs), None);
        assert_eq!(k("cookie:nope").hash(ip, b"/", hs), None);
    }

    #[test]
    fn arbitrary_input_never_panics() {
        // Short random strings over the bytes the parsers care about.
        const ALPHABET: &[u8] = b"aA=&?;/: \t,xh";
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let keys = [
            k("uri"),
            k("path"),
            k("header:a"),
            k("cookie:a"),
            k("cookie:aA"),
            k("query:a"),
            k("query:aa"),
        ];
        let ip = IpAddr::V6(Ipv6Addr::LOCALHOST);
        for _ in 0..20_000 {
            let mut bufs = [[0u8; 12]; 3];
            let mut lens = [0usize; 3];
            for (b, l) in bufs.iter_mut().zip(lens.iter_mut()) {
                *l = (next() % 13) as usize;
                for c in b.iter_mut().take(*l) {
                    *c = ALPHABET[(next() % ALPHABET.len() as u64) as usize];
                }
            }
            let target = &bufs[0][..lens[0]];
            let hs: [(&[u8], &[u8]); 2] = [
                (b"cookie", &bufs[1][..lens[1]]),
                (b"a", &bufs[2][..lens[2]]),
            ];
            for key in &keys {
                let _ = key.hash(ip, target, hs);
            }
            let _ = HashKey::parse(&String::from_utf8_lossy(target));
            let _ = sticky::cookie_value(target, &bufs[1][..lens[1]]);
        }
    }
}
