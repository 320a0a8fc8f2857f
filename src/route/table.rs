//! The per-listener route table: this module owns turning the `routes:` config
//! into a validated, immutable table, and answering "which route serves this
//! host and path?" on every request without allocating. It is SANS-I/O: it
//! sees only bytes, and the caller maps the answer to an upstream group (via
//! [`RouteTable::target`]) or to a 404.
//!
//! # Matching
//!
//! The path given to [`RouteTable::lookup`] must already be normalised by
//! [`super::path::normalize`], and the same normalised form is what lbd
//! forwards, so a request is routed and served under one spelling.
//!
//! 1. **Host.** The request host (the `Host` header or `:authority`) loses its
//!    `:port` (an IPv6 literal keeps its brackets: `[::1]:8080` → `[::1]`) and
//!    one trailing dot (`example.com.` is the same absolute DNS name as
//!    `example.com`, RFC 1034 §3.1; nginx strips it too), and is compared
//!    ASCII-case-insensitively. The most specific host wins, like Envoy
//!    virtual hosts and nginx `server_name`: an exact host, else the longest
//!    matching `*.suffix` wildcard, else the routes without `host`.
//!    `*.example.com` matches `a.example.com` and `a.b.example.com`, never
//!    `example.com`. A missing or empty host matches only host-less routes.
//! 2. **Path.** Among the routes of the chosen host only, the longest matching
//!    `path_prefix` wins; a route without `path_prefix` has prefix `""` and
//!    matches every path.
//! 3. **No fallback.** Once a host (exact or wildcard) was chosen, only its
//!    routes count: if none of their prefixes match, the answer is `None`
//!    (lbd answers 404), as with nginx server blocks and Envoy virtual hosts.
//!    Host-less routes apply only when no host route matched the host. No
//!    match at all is `None` too.
//!
//! **Prefix semantics: plain, case-sensitive byte prefix** of the normalised,
//! not percent-decoded path, as nginx `location /prefix` and Envoy `prefix`.
//! So `/v1` matches `/v1`, `/v1/users` *and* `/v10`; write `/v1/` to match
//! only inside the `/v1/` directory (it matches neither `/v1` nor `/v10`).
//! We chose this over segment-aware matching because it is what operators
//! coming from nginx and Envoy expect, and the trailing `/` gives segment
//! semantics when wanted.
//!
//! # Validation
//!
//! [`RouteTable::new`] rejects, naming the route by index and key: an empty
//! host; a host with spaces, control characters, a port, a `*` anywhere but a
//! leading `*.`, an empty label, a trailing dot, or characters outside
//! `[A-Za-z0-9._-]` (use punycode for IDNs); a `path_prefix` not starting with
//! `/`, containing `?`, or that no normalised path can start with (`/a//`,
//! `/x/../`, `/%2f`); and duplicate routes (same host, compared
//! case-insensitively, and same `path_prefix`).
//!
//! # Cost
//!
//! A lookup is one binary search over the exact hosts (a sorted vec),
//! a linear scan over the wildcards (longest first) and over the chosen
//! host's prefixes (longest first): no allocation, no lowercasing copy.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt;

use super::path;

/// One route as configured: the match keys and the opaque target it routes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `host:`: an exact host name (or `[IPv6]` literal) or a `*.suffix`
    /// wildcard; `None` matches any host.
    pub host: Option<String>,
    /// `path_prefix:`: must start with `/`; `None` matches every path.
    pub path_prefix: Option<String>,
    /// Opaque index handed back by [`RouteTable::target`], e.g. the upstream group.
    pub target: usize,
}

/// A configuration error, naming the offending route and key.
///
/// Displayed as `routes[2].host: invalid value "*foo": <reason>`; errors about
/// a route as a whole have an empty `key` (`routes[4]: <reason>`), and errors
/// about the list itself have `key == "routes"` (`routes: <reason>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// Index of the offending route in the `routes:` list.
    pub index: usize,
    /// The offending key: `"host"`, `"path_prefix"`, `""` or `"routes"`.
    pub key: &'static str,
    /// The offending value, as configured.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl fmt::Display for RouteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            "routes" => write!(f, "routes: {}", self.reason),
            "" => write!(f, "routes[{}]: {}", self.index, self.reason),
            key => write!(
                f,
                "routes[{}].{key}: invalid value {:?}: {}",
                self.index, self.value, self.reason
            ),
        }
    }
}

impl std::error::Error for RouteError {}

/// The validated, immutable route table of one listener.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Per route index, in config order.
    routes: Vec<Route>,
    /// Exact hosts, lowercase, sorted by name.
    exact: Vec<(Box<[u8]>, Group)>,
    /// Wildcards as their lowercase `.suffix`, longest first.
    wildcard: Vec<(Box<[u8]>, Group)>,
    /// Routes without `host`.
    hostless: Group,
    /// One route with no match keys.
    single: bool,
}

/// A configured route, by index.
#[derive(Debug, Clone)]
struct Route {
    target: usize,
    /// `b""` when the route has no `path_prefix`.
    prefix: Box<[u8]>,
}

/// The routes of one host (or of no host): `(prefix, route index)`, longest
/// prefix first, so the first match is the longest.
#[derive(Debug, Clone, Default)]
struct Group(Vec<(Box<[u8]>, usize)>);

impl Group {
    fn find(&self, path: &[u8]) -> Option<usize> {
        self.0
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map(|&(_, route)| route)
    }
}

/// A validated `host:` key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum HostKey {
    /// Lowercase name or `[IPv6]` literal.
    Exact(Box<[u8]>),
    /// Lowercase suffix including its leading dot: `*.a.com` → `.a.com`.
    Wildcard(Box<[u8]>),
}

impl RouteTable {
    /// Validates `specs` (the `routes:` list, in config order; route indices
    /// are positions in it) and builds the table. Fails on the first invalid
    /// route; see the module documentation for what is rejected.
    pub fn new(specs: Vec<RouteSpec>) -> Result<RouteTable, RouteError> {
        if specs.is_empty() {
            return Err(RouteError {
                index: 0,
                key: "routes",
                value: String::new(),
                reason: "at least one route is required".into(),
            });
        }
        let single = specs.len() == 1 && specs[0].host.is_none() && specs[0].path_prefix.is_none();
        let mut seen: HashMap<(Option<HostKey>, Box<[u8]>), usize> = HashMap::new();
        let mut groups: HashMap<Option<HostKey>, Group> = HashMap::new();
        let mut routes = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let err = |key: &'static str, value: &str, reason: String| RouteError {
                index,
                key,
                value: value.to_owned(),
                reason,
            };
            let host = match &spec.host {
                Some(h) => Some(parse_host(h).map_err(|r| err("host", h, r))?),
                None => None,
            };
            let prefix: Box<[u8]> = match &spec.path_prefix {
                Some(p) => parse_prefix(p).map_err(|r| err("path_prefix", p, r))?,
                None => Box::default(),
            };
            if let Some(&first) = seen.get(&(host.clone(), prefix.clone())) {
                let reason = format!("duplicate of routes[{first}] (same host and path_prefix)");
                return Err(match (&spec.path_prefix, &spec.host) {
                    (Some(p), _) => err("path_prefix", p, reason),
                    (None, Some(h)) => err("host", h, reason),
                    (None, None) => err(
                        "",
                        "",
                        format!(
                            "duplicate of routes[{first}]: both have neither host nor path_prefix"
                        ),
                    ),
                });
            }
            seen.insert((host.clone(), prefix.clone()), index);
            groups
                .entry(host)
                .or_default()
                .0
                .push((prefix.clone(), index));
            routes.push(Route {
                target: spec.target,
                prefix,
            });
        }
        let (mut exact, mut wildcard, mut hostless) = (Vec::new(), Vec::new(), Group::default());
        for (host, mut group) in groups {
            group.0.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
            match host {
                Some(HostKey::Exact(name)) => exact.push((name, group)),
                Some(HostKey::Wildcard(suffix)) => wildcard.push((suffix, group)),
                None => hostless = group,
            }
        }
        exact.sort_by(|a, b| a.0.cmp(&b.0));
        wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(RouteTable {
            routes,
            exact,
            wildcard,
            hostless,
            single,
        })
    }

    /// The table for the `upstream:` shorthand: one default route (index 0)
    /// to `target`, for which [`is_single`](Self::is_single) is true.
    pub fn single(target: usize) -> RouteTable {
        let mut hostless = Group::default();
        hostless.0.push((Box::default(), 0));
        RouteTable {
            routes: vec![Route {
                target,
                prefix: Box::default(),
            }],
            exact: Vec::new(),
            wildcard: Vec::new(),
            hostless,
            single: true,
        }
    }

    /// Finds the route (its index in the config list) for a request, or `None`
    /// for 404. `host` is the `Host`/`:authority` value as received (`None`
    /// if absent); `path` is the normalised path — passing the path with its
    /// query gives the same answer, since prefixes never contain `?`.
    /// Allocation-free.
    pub fn lookup(&self, host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
        let group = host
            .map(request_host)
            .filter(|h| !h.is_empty())
            .and_then(|h| self.host_group(h))
            .unwrap_or(&self.hostless);
        group.find(path)
    }

    /// The configured target of route `route`.
    ///
    /// # Panics
    /// If `route` is not an index returned by [`lookup`](Self::lookup).
    pub fn target(&self, route: usize) -> usize {
        self.routes[route].target
    }

    /// True when the table is one route without match keys: every lookup
    /// yields route 0, so the caller may skip host parsing and lookup.
    pub fn is_single(&self) -> bool {
        self.single
    }

    /// True when some route has a `path_prefix` (matching depends on the
    /// path, so it must be normalised first).
    pub fn uses_paths(&self) -> bool {
        self.routes.iter().any(|r| !r.prefix.is_empty())
    }

    /// The group of the most specific host route matching `host` (port and
    /// trailing dot already removed, any case).
    fn host_group(&self, host: &[u8]) -> Option<&Group> {
        if let Ok(i) = self
            .exact
            .binary_search_by(|(name, _)| cmp_lowercase(name, host))
        {
            return Some(&self.exact[i].1);
        }
        self.wildcard
            .iter()
            .find(|(suffix, _)| wildcard_matches(suffix, host))
            .map(|(_, group)| group)
    }
}

/// Reduces a request host to what is matched: no `:port`, no trailing dot.
pub(crate) fn request_host(raw: &[u8]) -> &[u8] {
    let end = if raw.first() == Some(&b'[') {
        raw.iter().position(|&b| b == b']').map(|p| p + 1)
    } else {
        raw.iter().position(|&b| b == b':')
    };
    let host = &raw[..end.unwrap_or(raw.len())];
    host.strip_suffix(b".").unwrap_or(host)
}

/// Compares a lowercase `name` with `other` lowercased, without copying.
fn cmp_lowercase(name: &[u8], other: &[u8]) -> Ordering {
    name.iter()
        .copied()
        .cmp(other.iter().map(u8::to_ascii_lowercase))
}

/// Whether `host` is a non-empty label sequence followed by `suffix` (`.a.com`).
fn wildcard_matches(suffix: &[u8], host: &[u8]) -> bool {
    let Some(cut) = host.len().checked_sub(suffix.len()) else {
        return false;
    };
    let (label, tail) = host.split_at(cut);
    tail.eq_ignore_ascii_case(suffix) && label.last().is_some_and(|&b| b != b'.')
}

const WILDCARD: &str = "wildcard must be \"*.\" followed by a domain";

/// Validates a configured `host:` value.
fn parse_host(raw: &str) -> Result<HostKey, String> {
    if raw.is_empty() {
        return Err("must not be empty (omit host to match any host)".into());
    }
    if raw.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("must not contain spaces or control characters".into());
    }
    let lower = raw.to_ascii_lowercase();
    if let Some(inner) = lower.strip_prefix('[') {
        return match inner.strip_suffix(']') {
            Some(addr)
                if addr.contains(':')
                    && addr
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.') =>
            {
                Ok(HostKey::Exact(lower.as_bytes().into()))
            }
            _ if inner.contains("]:") => Err("must not include a port".into()),
            _ => Err("IPv6 literal must be \"[\" address \"]\"".into()),
        };
    }
    if lower.contains(':') {
        return Err("must not include a port".into());
    }
    if let Some(domain) = lower.strip_prefix("*.") {
        if domain.is_empty() || domain.contains('*') {
            return Err(WILDCARD.into());
        }
        check_domain(domain).map_err(|e| format!("{WILDCARD}: {e}"))?;
        return Ok(HostKey::Wildcard(format!(".{domain}").into_bytes().into()));
    }
    if lower.contains('*') {
        return Err(WILDCARD.into());
    }
    check_domain(&lower)?;
    Ok(HostKey::Exact(lower.into_bytes().into()))
}

/// Validates a (lowercase) domain name or IPv4 address.
fn check_domain(domain: &str) -> Result<(), String> {
    if domain.ends_with('.') {
        return Err(
            "must not end with \".\" (request hosts with a trailing dot match it anyway)".into(),
        );
    }
    if domain.len() > 253 {
        return Err("longer than 253 bytes".into());
    }
    for label in domain.split('.') {
        if label.is_empty() {
            return Err("empty label".into());
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(if c.is_ascii() {
                format!("invalid character {c:?}")
            } else {
                format!("non-ASCII character {c:?}: use the punycode (xn--) form")
            });
        }
    }
    Ok(())
}

/// Validates a configured `path_prefix:` value.
fn parse_prefix(raw: &str) -> Result<Box<[u8]>, String> {
    if !raw.starts_with('/') {
        return Err("must start with \"/\"".into());
    }
    if raw.contains('?') {
        return Err("must not contain a query (\"?\")".into());
    }
    // The prefix can match a normalised path iff some normal path starts with
    // it; appending an ordinary character closes its last segment.
    let probe = format!("{raw}x");
    let mut scratch = Vec::new();
    match path::normalize(probe.as_bytes(), &mut scratch) {
        Ok(n) if n == probe.as_bytes() => Ok(raw.as_bytes().into()),
        Ok(n) => Err(format!(
            "not in normal form, so no normalised request path can match it; write {:?}",
            String::from_utf8_lossy(n.strip_suffix(b"x").unwrap_or(n))
        )),
        Err(e) => Err(format!("no request path can start with it: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(host: Option<&str>, prefix: Option<&str>, target: usize) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_owned),
            path_prefix: prefix.map(str::to_owned),
            target,
        }
    }

    fn table(routes: &[(Option<&str>, Option<&str>)]) -> RouteTable {
        let specs = routes
            .iter()
            .enumerate()
            .map(|(i, &(h, p))| spec(h, p, 100 + i))
            .collect();
        match RouteTable::new(specs) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        }
    }

    fn look(t: &RouteTable, host: Option<&str>, path: &str) -> Option<usize> {
        t.lookup(host.map(str::as_bytes), path.as_bytes())
    }

    fn error(routes: &[(Option<&str>, Option<&str>)]) -> String {
        let specs = routes.iter().map(|&(h, p)| spec(h, p, 0)).collect();
        match RouteTable::new(specs) {
            Ok(_) => panic!("{routes:?} accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// The example from the issue.
    fn example() -> RouteTable {
        table(&[
            (Some("api.example.com"), Some("/v1/")),
            (Some("api.example.com"), None),
            (Some("*.static.example.com"), None),
            (None, Some("/assets/")),
            (None, None),
        ])
    }

    #[test]
    fn example_config() {
        let t = example();
        assert!(!t.is_single());
        assert_eq!(look(&t, Some("api.example.com"), "/v1/users"), Some(0));
        assert_eq!(look(&t, Some("api.example.com"), "/v1"), Some(1));
        assert_eq!(look(&t, Some("api.example.com"), "/"), Some(1));
        // The host matched, so host-less `/assets/` does not apply.
        assert_eq!(look(&t, Some("api.example.com"), "/assets/x"), Some(1));
        assert_eq!(
            look(&t, Some("img.static.example.com"), "/assets/x"),
            Some(2)
        );
        assert_eq!(look(&t, Some("a.b.static.example.com"), "/"), Some(2));
        assert_eq!(look(&t, Some("static.example.com"), "/assets/x"), Some(3));
        assert_eq!(look(&t, Some("static.example.com"), "/x"), Some(4));
        assert_eq!(look(&t, Some("other.org"), "/assets/a.css"), Some(3));
        assert_eq!(look(&t, None, "/"), Some(4));
        assert_eq!(look(&t, Some(""), "/assets/"), Some(3));
        assert_eq!(t.target(0), 100);
        assert_eq!(t.target(4), 104);
    }

    #[test]
    fn host_is_case_insensitive_and_ignores_port_and_trailing_dot() {
        let t = example();
        for h in [
            "API.Example.COM",
            "api.example.com:443",
            "api.example.com.",
            "Api.Example.Com.:8080",
        ] {
            assert_eq!(look(&t, Some(h), "/v1/x"), Some(0), "{h}");
        }
        assert_eq!(look(&t, Some("IMG.STATIC.example.com.:80"), "/"), Some(2));
        // Only one trailing dot is an absolute name; more is junk.
        assert_eq!(look(&t, Some("api.example.com.."), "/v1/x"), Some(4));
    }

    #[test]
    fn ipv6_literals() {
        let t = table(&[
            (Some("[::1]"), None),
            (Some("[2001:DB8::1]"), None),
            (None, None),
        ]);
        assert_eq!(look(&t, Some("[::1]"), "/"), Some(0));
        assert_eq!(look(&t, Some("[::1]:8080"), "/"), Some(0));
        assert_eq!(look(&t, Some("[2001:db8::1]:443"), "/"), Some(1));
        assert_eq!(look(&t, Some("::1"), "/"), Some(2));
        assert_eq!(look(&t, Some("[::1"), "/"), Some(2));
    }

    #[test]
    fn exact_beats_wildcard_and_longest_wildcard_wins() {
        let t = table(&[
            (Some("*.example.com"), None),
            (Some("*.b.example.com"), None),
            (Some("x.b.example.com"), None),
        ]);
        assert_eq!(look(&t, Some("a.example.com"), "/"), Some(0));
        assert_eq!(look(&t, Some("b.example.com"), "/"), Some(0));
        assert_eq!(look(&t, Some("a.b.example.com"), "/"), Some(1));
        assert_eq!(look(&t, Some("z.a.b.example.com"), "/"), Some(1));
        assert_eq!(look(&t, Some("x.b.example.com"), "/"), Some(2));
        // A wildcard needs at least one label before the suffix.
        assert_eq!(look(&t, Some("example.com"), "/"), None);
        assert_eq!(look(&t, Some(".example.com"), "/"), None);
        assert_eq!(look(&t, Some("a..example.com"), "/"), None);
        assert_eq!(look(&t, Some("aexample.com"), "/"), None);
    }

    #[test]
    fn matched_host_without_path_match_is_not_found() {
        let t = table(&[
            (Some("a.example.com"), Some("/x/")),
            (Some("*.example.com"), None),
            (None, None),
        ]);
        assert_eq!(look(&t, Some("a.example.com"), "/x/1"), Some(0));
        // Neither the wildcard nor the default applies once the exact host matched.
        assert_eq!(look(&t, Some("a.example.com"), "/y"), None);
        assert_eq!(look(&t, Some("b.example.com"), "/y"), Some(1));
        let t = table(&[(Some("*.example.com"), Some("/x/")), (None, None)]);
        assert_eq!(look(&t, Some("b.example.com"), "/y"), None);
        assert_eq!(look(&t, Some("example.com"), "/y"), Some(1));
    }

    #[test]
    fn no_match_at_all_is_not_found() {
        let t = table(&[(None, Some("/assets/")), (Some("a.com"), None)]);
        assert_eq!(look(&t, None, "/x"), None);
        assert_eq!(look(&t, Some("b.com"), "/x"), None);
        assert_eq!(look(&t, Some("b.com"), "/assets/x"), Some(0));
    }

    #[test]
    fn longest_prefix_wins_regardless_of_order() {
        let t = table(&[
            (None, Some("/")),
            (None, Some("/a/b/")),
            (None, Some("/a/")),
            (None, None),
        ]);
        assert_eq!(look(&t, None, "/a/b/c"), Some(1));
        assert_eq!(look(&t, None, "/a/c"), Some(2));
        assert_eq!(look(&t, None, "/c"), Some(0));
        assert_eq!(look(&t, None, "*"), Some(3));
    }

    #[test]
    fn prefix_is_a_plain_byte_prefix() {
        let t = table(&[(None, Some("/v1")), (None, Some("/v2/")), (None, None)]);
        assert_eq!(look(&t, None, "/v1"), Some(0));
        assert_eq!(look(&t, None, "/v1/users"), Some(0));
        assert_eq!(look(&t, None, "/v10"), Some(0)); // byte prefix, not segment-aware
        assert_eq!(look(&t, None, "/v2/users"), Some(1));
        assert_eq!(look(&t, None, "/v2"), Some(2)); // `/v2/` needs the slash
        assert_eq!(look(&t, None, "/v20"), Some(2));
        assert_eq!(look(&t, None, "/V1"), Some(2)); // case-sensitive
        assert_eq!(look(&t, None, "/v%31"), Some(2)); // not decoded
                                                      // The query does not change the answer.
        assert_eq!(look(&t, None, "/v2?x=/v2/"), Some(2));
        assert_eq!(look(&t, None, "/v1?x"), Some(0));
    }

    #[test]
    fn single_table() {
        let t = RouteTable::single(7);
        assert!(t.is_single());
        assert_eq!(look(&t, Some("any.host"), "/x"), Some(0));
        assert_eq!(look(&t, None, "*"), Some(0));
        assert_eq!(t.target(0), 7);
        assert!(table(&[(None, None)]).is_single());
        assert!(!table(&[(None, Some("/"))]).is_single());
        assert!(!table(&[(Some("a.com"), None)]).is_single());
    }

    #[test]
    fn error_format_names_route_index_and_key() {
        let e = error(&[
            (None, Some("/a/")),
            (Some("a.com"), None),
            (Some("*foo"), None),
        ]);
        assert_eq!(
            e,
            r#"routes[2].host: invalid value "*foo": wildcard must be "*." followed by a domain"#
        );
        let specs = vec![spec(None, None, 0), spec(Some("a b"), None, 0)];
        let Err(e) = RouteTable::new(specs) else {
            panic!("accepted")
        };
        assert_eq!((e.index, e.key, e.value.as_str()), (1, "host", "a b"));
        assert_eq!(error(&[]), "routes: at least one route is required");
    }

    #[test]
    fn rejects_invalid_hosts() {
        for (host, reason) in [
            ("", "must not be empty"),
            ("a b.com", "spaces or control"),
            ("a.com\t", "spaces or control"),
            ("a\u{7f}.com", "spaces or control"),
            ("a.com:80", "port"),
            ("[::1]:80", "port"),
            ("[::1", "IPv6 literal"),
            ("[]", "IPv6 literal"),
            ("[a.com]", "IPv6 literal"),
            ("*foo", WILDCARD),
            ("*", WILDCARD),
            ("*.", WILDCARD),
            ("foo.*", WILDCARD),
            ("a.*.b", WILDCARD),
            ("*.*.a", WILDCARD),
            ("*.a..b", "followed by a domain: empty label"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a.com.", "must not end with"),
            ("a/b", "invalid character '/'"),
            ("münchen.de", "punycode"),
        ] {
            let e = error(&[(Some(host), None)]);
            assert!(e.starts_with("routes[0].host: invalid value"), "{e}");
            assert!(e.contains(reason), "{host:?}: {e}");
        }
        table(&[
            (Some("xn--mnchen-3ya.de"), None),
            (Some("My_Host-1"), None),
            (Some("10.0.0.1"), None),
        ]);
    }

    #[test]
    fn rejects_invalid_prefixes() {
        for (prefix, reason) in [
            ("", "must start with"),
            ("v1/", "must start with"),
            ("/a?b", "query"),
            ("/a#", "fragment"),
            ("/a b", "space"),
            ("/a//", r#"write "/a/""#),
            ("/x/../", r#"write "/""#),
            ("/./a", r#"write "/a""#),
            ("/../", "above the root"),
            ("/%2f", "encoded slash"),
            ("/%2e%2e/", "encoded dot"),
            ("/a\\", "backslash"),
            ("/a%", "percent"),
        ] {
            let e = error(&[(None, Some(prefix))]);
            assert!(e.starts_with("routes[0].path_prefix: invalid value"), "{e}");
            assert!(e.contains(reason), "{prefix:?}: {e}");
        }
        // Prefixes ending mid-segment are fine, dots included.
        table(&[
            (None, Some("/.")),
            (None, Some("/..")),
            (None, Some("/a/%2e")),
            (None, Some("/")),
        ]);
    }

    #[test]
    fn rejects_duplicates() {
        let e = error(&[(Some("a.com"), Some("/x")), (Some("A.COM"), Some("/x"))]);
        assert_eq!(
            e,
            r#"routes[1].path_prefix: invalid value "/x": duplicate of routes[0] (same host and path_prefix)"#
        );
        let e = error(&[
            (Some("*.a.com"), None),
            (None, None),
            (Some("*.A.com"), None),
        ]);
        assert!(
            e.starts_with(r#"routes[2].host: invalid value "*.A.com": duplicate of routes[0]"#),
            "{e}"
        );
        let e = error(&[(None, None), (None, Some("/")), (None, None)]);
        assert!(e.starts_with("routes[2]: duplicate of routes[0]"), "{e}");
        // Same prefix under different hosts, or different prefixes: fine.
        table(&[
            (Some("a.com"), Some("/x")),
            (Some("*.a.com"), Some("/x")),
            (None, Some("/x")),
            (Some("a.com"), Some("/x/")),
        ]);
    }

    #[test]
    fn many_exact_hosts_binary_search() {
        let names: Vec<String> = (0..50).map(|i| format!("h{i}.example.com")).collect();
        let specs = names
            .iter()
            .enumerate()
            .map(|(i, n)| spec(Some(n), None, i))
            .collect();
        let Ok(t) = RouteTable::new(specs) else {
            panic!("rejected")
        };
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.lookup(Some(n.to_uppercase().as_bytes()), b"/"), Some(i));
        }
        assert_eq!(t.lookup(Some(b"h50.example.com"), b"/"), None);
        assert_eq!(t.lookup(Some(b"h1.example.co"), b"/"), None);
    }

    #[test]
    fn request_host_strips_port_and_one_dot() {
        assert_eq!(request_host(b"a.com:80"), b"a.com");
        assert_eq!(request_host(b"a.com.:80"), b"a.com");
        assert_eq!(request_host(b"[::1]:80"), b"[::1]");
        assert_eq!(request_host(b"[::1]"), b"[::1]");
        assert_eq!(request_host(b"."), b"");
        assert_eq!(request_host(b""), b"");
    }
}
