//! `listeners[i].routes`: host and path routes, validated into the listener's
//! [`RouteTable`] and each route's options.
//!
//! Matching itself lives in [`crate::route`]; this module owns the keys, their
//! defaults and their errors, each naming the route by index and key
//! (`listeners[0].routes[2].host: …`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{invalid, ConfigError, RawUpstream};
use crate::route::table::{RouteSpec, RouteTable};

/// One `routes:` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Exact host name or `*.suffix` wildcard, case-insensitive, `:port`
    /// ignored. Default: any host (used only when no host route matches).
    #[serde(default)]
    host: Option<String>,
    /// Plain byte prefix of the normalised path; the longest wins. Default:
    /// every path.
    #[serde(default)]
    path_prefix: Option<String>,
    /// The upstream group (required).
    upstream: String,
    /// `true`: remove the matched `path_prefix` before forwarding; a string:
    /// remove that prefix when the path starts with it. Default: none.
    #[serde(default)]
    strip_prefix: Option<RawStrip>,
    /// Host header sent upstream (overrides the group's `host`). Default:
    /// the group's `host`, else the client's.
    #[serde(default)]
    set_host: Option<String>,
    /// Headers added to the upstream request (after the client's), in name
    /// order.
    #[serde(default)]
    add_request_headers: BTreeMap<String, String>,
    /// Client headers not forwarded (case-insensitive names).
    #[serde(default)]
    remove_request_headers: Vec<String>,
    /// Headers added to the response, in name order.
    #[serde(default)]
    add_response_headers: BTreeMap<String, String>,
}

/// `strip_prefix`: a flag or a prefix.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawStrip {
    /// Strip the matched `path_prefix`.
    Matched(bool),
    /// Strip this prefix.
    Prefix(String),
}

/// A header as configured: name and value bytes.
pub type HeaderPair = (Vec<u8>, Vec<u8>);

/// A validated route's options (its match keys live in the table).
#[derive(Debug, Clone, Default)]
pub struct RouteConfig {
    /// The prefix removed before forwarding.
    pub strip_prefix: Option<Vec<u8>>,
    /// Host header sent upstream.
    pub set_host: Option<Vec<u8>>,
    /// Headers added upstream.
    pub add_request_headers: Vec<HeaderPair>,
    /// Client headers dropped (lowercase).
    pub remove_request_headers: Vec<Vec<u8>>,
    /// Headers added to the response.
    pub add_response_headers: Vec<HeaderPair>,
    /// How the route is named in the access log: `routes[i]`, or `default`
    /// for the `upstream:` shorthand.
    pub name: String,
    /// `host:` as written (for the status page; matching uses the table).
    pub host: Option<String>,
    /// `path_prefix:` as written (for the status page).
    pub path_prefix: Option<String>,
}

/// A listener's routes: the table and each route's options (by route index).
#[derive(Debug, Clone)]
pub struct ListenerRoutes {
    /// The match table; its targets are upstream group indexes.
    pub table: RouteTable,
    /// Options by route index.
    pub routes: Vec<RouteConfig>,
    /// Built from the `upstream:` shorthand rather than `routes:` (its
    /// access log lines name no route).
    pub shorthand: bool,
}

impl ListenerRoutes {
    /// The `upstream:` shorthand: one default route to `group`.
    pub fn single(group: usize) -> Self {
        ListenerRoutes {
            table: RouteTable::single(group),
            routes: vec![RouteConfig {
                name: "default".into(),
                ..RouteConfig::default()
            }],
            shorthand: true,
        }
    }
}

/// Validates `listeners[i].routes`.
pub(super) fn validate(
    i: usize,
    raw: &[RawRoute],
    upstreams: &BTreeMap<String, RawUpstream>,
) -> Result<ListenerRoutes, ConfigError> {
    let mut specs = Vec::with_capacity(raw.len());
    let mut routes = Vec::with_capacity(raw.len());
    for (j, r) in raw.iter().enumerate() {
        let key = |k: &str| format!("listeners[{i}].routes[{j}].{k}");
        let upstream = upstreams
            .keys()
            .position(|k| *k == r.upstream)
            .ok_or_else(|| {
                invalid(
                    key("upstream"),
                    &r.upstream,
                    "no upstream group with this name under `upstreams`",
                )
            })?;
        specs.push(RouteSpec {
            host: r.host.clone(),
            path_prefix: r.path_prefix.clone(),
            target: upstream,
        });
        routes.push(RouteConfig {
            strip_prefix: strip(r, &key)?,
            set_host: set_host(r, &key)?,
            add_request_headers: headers(&r.add_request_headers, &key("add_request_headers"))?,
            remove_request_headers: removals(r, &key)?,
            add_response_headers: headers(&r.add_response_headers, &key("add_response_headers"))?,
            name: format!("routes[{j}]"),
            host: r.host.clone(),
            path_prefix: r.path_prefix.clone(),
        });
    }
    let table = RouteTable::new(specs).map_err(|e| {
        // Errors about a whole route or the list carry no value of their
        // own: show what was written instead of an empty one.
        let (key, value) = match e.key {
            "" => (
                format!("listeners[{i}].routes[{}]", e.index),
                raw.get(e.index)
                    .map_or(e.value, |r| format!("{{ upstream: {} }}", r.upstream)),
            ),
            "routes" => (format!("listeners[{i}].routes"), "[]".to_owned()),
            k => (format!("listeners[{i}].routes[{}].{k}", e.index), e.value),
        };
        invalid(key, value, e.reason)
    })?;
    Ok(ListenerRoutes {
        table,
        routes,
        shorthand: false,
    })
}

fn strip(r: &RawRoute, key: &dyn Fn(&str) -> String) -> Result<Option<Vec<u8>>, ConfigError> {
    match &r.strip_prefix {
        None | Some(RawStrip::Matched(false)) => Ok(None),
        Some(RawStrip::Matched(true)) => match &r.path_prefix {
            Some(p) => Ok(Some(p.trim_end_matches('/').as_bytes().to_vec())),
            None => Err(invalid(
                key("strip_prefix"),
                "true",
                "needs a `path_prefix` to strip (or give the prefix itself)",
            )),
        },
        Some(RawStrip::Prefix(p)) => {
            if !p.starts_with('/') || p.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'?') {
                return Err(invalid(
                    key("strip_prefix"),
                    p,
                    "must be `true`, `false` or a path prefix starting with /",
                ));
            }
            Ok(Some(p.trim_end_matches('/').as_bytes().to_vec()))
        }
    }
}

fn set_host(r: &RawRoute, key: &dyn Fn(&str) -> String) -> Result<Option<Vec<u8>>, ConfigError> {
    match &r.set_host {
        None => Ok(None),
        Some(h) if h.is_empty() || h.bytes().any(|b| b <= b' ' || b == 0x7f || b == b'/') => {
            Err(invalid(key("set_host"), h, "must be a host name"))
        }
        Some(h) => Ok(Some(h.as_bytes().to_vec())),
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Names lbd writes itself; a route cannot add or remove them.
fn reserved(name: &str) -> bool {
    ["host", "content-length", "transfer-encoding", "connection"]
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r))
}

fn headers(map: &BTreeMap<String, String>, key: &str) -> Result<Vec<HeaderPair>, ConfigError> {
    map.iter()
        .map(|(n, v)| {
            if !is_token(n) || reserved(n) {
                return Err(invalid(
                    format!("{key}.{n}"),
                    n,
                    "must be a header name (a token), not Host, Connection or a framing header",
                ));
            }
            if v.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
                return Err(invalid(
                    format!("{key}.{n}"),
                    v,
                    "a header value cannot hold CR, LF or NUL",
                ));
            }
            Ok((n.as_bytes().to_vec(), v.trim().as_bytes().to_vec()))
        })
        .collect()
}

fn removals(r: &RawRoute, key: &dyn Fn(&str) -> String) -> Result<Vec<Vec<u8>>, ConfigError> {
    r.remove_request_headers
        .iter()
        .enumerate()
        .map(|(k, n)| {
            if !is_token(n) || reserved(n) {
                return Err(invalid(
                    format!("{}[{k}]", key("remove_request_headers")),
                    n,
                    "must be a header name (a token), not Host, Connection or a framing header",
                ));
            }
            Ok(n.to_ascii_lowercase().into_bytes())
        })
        .collect()
}
