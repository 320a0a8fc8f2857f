//! The forwarding keys: who the client is and what the backend is told of it.
//!
//! * `listeners[i].proxy_protocol`: PROXY protocol headers accepted in front
//!   of connections from `trusted` sources.
//! * `upstreams.<g>.send_proxy_protocol`: the header lbd sends in front of
//!   its own connections to a group's backends.
//! * `listeners[i].forwarded`: which forwarding headers lbd writes
//!   (`X-Forwarded-For/-Proto/-Host`, RFC 7239 `Forwarded`, both, none).
//! * `trusted_proxies` (top level, or per listener): the clients whose
//!   forwarding headers (and request id) are kept and appended to; from
//!   anyone else they are replaced.
//! * `request_id` (top level, or per listener): the request-id header, kept
//!   from trusted clients, generated otherwise.
//!
//! Every error names the key, with the index of a list entry
//! (`listeners[0].proxy_protocol.trusted[1]`), and the value.

use std::net::IpAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{in_range, invalid, ConfigError};
use crate::proxy_protocol::{Version, Versions};

/// One address or a list of them, as written.
#[derive(Debug)]
pub(super) enum RawCidrs {
    /// A single `IP` or `IP/prefix`.
    One(String),
    /// A list of them.
    Many(Vec<String>),
}

/// By hand rather than `untagged`, for an error that says what is expected.
impl<'de> Deserialize<'de> for RawCidrs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawCidrs;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an address or network (10.0.0.0/8), or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawCidrs, E> {
                Ok(RawCidrs::One(v.to_string()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawCidrs, A::Error> {
                Vec::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawCidrs::Many)
            }
        }
        d.deserialize_any(V)
    }
}

impl RawCidrs {
    fn entries(&self) -> &[String] {
        match self {
            RawCidrs::One(s) => std::slice::from_ref(s),
            RawCidrs::Many(v) => v,
        }
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `IP/prefix`, or a bare `IP` (one address). The host bits must be
    /// zero (`10.0.0.1/8` is refused: it says `10.0.0.0/8` or
    /// `10.0.0.1/32`, and which is unclear).
    fn parse(key: &str, s: &str) -> Result<Cidr, ConfigError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.trim().parse().map_err(|_| {
            invalid(
                key,
                s,
                "expected an IP address or network, e.g. 10.0.0.0/8, 127.0.0.1 or \"2001:db8::/32\"",
            )
        })?;
        let max: u8 = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.trim().parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    let family = if net.is_ipv4() { "IPv4" } else { "IPv6" };
                    return Err(invalid(
                        key,
                        s,
                        format!("prefix length must be a number from 0 to {max} for an {family} network"),
                    ));
                }
            },
        };
        let cidr = Cidr { net, prefix };
        let masked = cidr.masked();
        if masked != net {
            return Err(invalid(
                key,
                s,
                format!("host bits are set after /{prefix}: did you mean {masked}/{prefix}?"),
            ));
        }
        Ok(cidr)
    }

    /// The network address (host bits cleared).
    fn masked(&self) -> IpAddr {
        match self.net {
            IpAddr::V4(a) => {
                let m = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & m).into())
            }
            IpAddr::V6(a) => {
                let m = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & m).into())
            }
        }
    }

    /// True if `ip` (canonical: an IPv4-mapped IPv6 address is IPv4) lies
    /// in the network.
    fn contains(&self, ip: IpAddr) -> bool {
        let shift = |bits: u32| bits - u32::from(self.prefix);
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u32::from(n) ^ u32::from(a))
                    .checked_shr(shift(32))
                    .unwrap_or(0)
                    == 0
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                (u128::from(n) ^ u128::from(a))
                    .checked_shr(shift(128))
                    .unwrap_or(0)
                    == 0
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

/// A set of networks; empty matches nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CidrSet(Vec<Cidr>);

impl CidrSet {
    /// True if `ip` lies in one of the networks. An IPv4-mapped IPv6
    /// address (a dual-stack socket's IPv4 client) matches as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.0.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.0.iter().any(|c| c.contains(ip))
    }

    /// True when no network is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `key` as a list of networks: `key[j]` names a bad entry.
    fn parse(key: &str, raw: &RawCidrs) -> Result<CidrSet, ConfigError> {
        let entries = raw.entries();
        let one = matches!(raw, RawCidrs::One(_));
        entries
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let k = if one {
                    key.to_string()
                } else {
                    format!("{key}[{j}]")
                };
                Cidr::parse(&k, s)
            })
            .collect::<Result<_, _>>()
            .map(CidrSet)
    }
}

/// `listeners[i].proxy_protocol`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxyProtocol {
    /// Sources that must (and alone may) send a header. Required, non-empty.
    #[serde(default)]
    trusted: Option<RawCidrs>,
    /// `v1`, `v2`. Default both.
    #[serde(default)]
    versions: Option<Vec<String>>,
    /// Deadline for the whole header from accept. Default 3000.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// A validated `proxy_protocol` block.
#[derive(Debug, Clone)]
pub struct ProxyProtocolConfig {
    /// Sources whose connections must start with a header.
    pub trusted: CidrSet,
    /// Accepted versions.
    pub versions: Versions,
    /// Deadline for the header, from accept.
    pub timeout: Duration,
}

impl RawProxyProtocol {
    fn validate(&self, key: &str) -> Result<ProxyProtocolConfig, ConfigError> {
        let tkey = format!("{key}.trusted");
        let trusted = match &self.trusted {
            None => {
                return Err(invalid(
                    tkey,
                    "(missing)",
                    "required: the sources allowed to send PROXY protocol headers",
                ))
            }
            Some(raw) => CidrSet::parse(&tkey, raw)?,
        };
        if trusted.is_empty() {
            return Err(invalid(
                tkey,
                "[]",
                "at least one trusted source is required (else no header is ever accepted)",
            ));
        }
        let versions = match &self.versions {
            None => Versions::ALL,
            Some(list) => {
                let mut v = Versions {
                    v1: false,
                    v2: false,
                };
                for (j, s) in list.iter().enumerate() {
                    match s.as_str() {
                        "v1" => v.v1 = true,
                        "v2" => v.v2 = true,
                        other => {
                            return Err(invalid(
                                format!("{key}.versions[{j}]"),
                                other,
                                "must be `v1` or `v2`",
                            ))
                        }
                    }
                }
                if !v.v1 && !v.v2 {
                    return Err(invalid(
                        format!("{key}.versions"),
                        "[]",
                        "at least one of `v1`, `v2`",
                    ));
                }
                v
            }
        };
        let timeout = in_range(
            format!("{key}.timeout_ms"),
            self.timeout_ms.unwrap_or(3000),
            1..=600_000,
            "must be from 1 to 600000",
        )?;
        Ok(ProxyProtocolConfig {
            trusted,
            versions,
            timeout: Duration::from_millis(timeout),
        })
    }
}

/// `request_id`: `false` (off), `true` (the defaults) or a map.
#[derive(Debug)]
pub(super) enum RawRequestId {
    /// `true`: `X-Request-Id`, generated; `false`: off.
    Flag(bool),
    /// `{ header, generate }`.
    Map(RawRequestIdMap),
}

/// By hand rather than `untagged`, so that a bad map says which field is
/// wrong instead of "did not match any variant".
impl<'de> Deserialize<'de> for RawRequestId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawRequestId;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("true, false or { header: NAME, generate: BOOL }")
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawRequestId, E> {
                Ok(RawRequestId::Flag(v))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<RawRequestId, A::Error> {
                let m = RawRequestIdMap::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RawRequestId::Map(m))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRequestIdMap {
    /// The header. Default `X-Request-Id`.
    #[serde(default)]
    header: Option<String>,
    /// Generate one when the request has none worth keeping. Default true.
    #[serde(default)]
    generate: Option<bool>,
}

/// A validated `request_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestIdConfig {
    /// The header name, as written (sent upstream and to the client).
    pub header: Vec<u8>,
    /// Generate an id when the request has none worth keeping.
    pub generate: bool,
}

/// Headers a request id cannot be: lbd writes or strips them itself.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "expect",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl RawRequestId {
    fn validate(&self, key: &str) -> Result<Option<RequestIdConfig>, ConfigError> {
        let (header, generate) = match self {
            RawRequestId::Flag(false) => return Ok(None),
            RawRequestId::Flag(true) => (None, None),
            RawRequestId::Map(m) => (m.header.as_deref(), m.generate),
        };
        let header = header.unwrap_or("X-Request-Id");
        if header.is_empty() || !header.bytes().all(is_tchar) {
            return Err(invalid(
                format!("{key}.header"),
                header,
                "must be a header name (letters, digits and !#$%&'*+-.^_`|~)",
            ));
        }
        if RESERVED.iter().any(|r| header.eq_ignore_ascii_case(r)) {
            return Err(invalid(
                format!("{key}.header"),
                header,
                "lbd writes or strips this header itself",
            ));
        }
        Ok(Some(RequestIdConfig {
            header: header.as_bytes().to_vec(),
            generate: generate.unwrap_or(true),
        }))
    }
}

/// `listeners[i].forwarded`: which forwarding headers lbd writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedStyle {
    /// `X-Forwarded-For`, `X-Forwarded-Proto`, `X-Forwarded-Host` (default).
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded` only.
    Rfc7239,
    /// Both.
    Both,
    /// None.
    None,
}

impl ForwardedStyle {
    /// The `X-Forwarded-*` headers are written.
    pub fn x_forwarded(self) -> bool {
        matches!(self, ForwardedStyle::XForwarded | ForwardedStyle::Both)
    }

    /// `Forwarded` is written.
    pub fn rfc7239(self) -> bool {
        matches!(self, ForwardedStyle::Rfc7239 | ForwardedStyle::Both)
    }
}

/// A listener's forwarding settings, validated.
#[derive(Debug, Clone, Default)]
pub struct ListenerForwarding {
    /// `proxy_protocol`, if headers are accepted.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// `forwarded`.
    pub forwarded: ForwardedStyle,
    /// `trusted_proxies` (the listener's, else the top-level one).
    pub trusted_proxies: CidrSet,
    /// `request_id` (the listener's, else the top-level one).
    pub request_id: Option<RequestIdConfig>,
}

/// The top-level defaults for every listener.
#[derive(Debug, Default)]
pub(super) struct Defaults {
    trusted_proxies: CidrSet,
    request_id: Option<RequestIdConfig>,
}

/// `trusted_proxies` and `request_id` at the top level.
pub(super) fn defaults(
    trusted_proxies: Option<&RawCidrs>,
    request_id: Option<&RawRequestId>,
) -> Result<Defaults, ConfigError> {
    Ok(Defaults {
        trusted_proxies: trusted_proxies
            .map(|t| CidrSet::parse("trusted_proxies", t))
            .transpose()?
            .unwrap_or_default(),
        request_id: request_id
            .map(|r| r.validate("request_id"))
            .transpose()?
            .flatten(),
    })
}

/// A listener's forwarding keys as written.
pub(super) struct RawListenerForwarding<'a> {
    pub(super) proxy_protocol: Option<&'a RawProxyProtocol>,
    pub(super) forwarded: Option<&'a str>,
    pub(super) trusted_proxies: Option<&'a RawCidrs>,
    pub(super) request_id: Option<&'a RawRequestId>,
}

/// `listeners[i]`'s forwarding keys, each falling back to `defaults`.
pub(super) fn listener(
    i: usize,
    raw: &RawListenerForwarding<'_>,
    defaults: &Defaults,
) -> Result<ListenerForwarding, ConfigError> {
    let key = |k: &str| format!("listeners[{i}].{k}");
    let proxy_protocol = raw
        .proxy_protocol
        .map(|p| p.validate(&key("proxy_protocol")))
        .transpose()?;
    let forwarded = match raw.forwarded {
        None | Some("x-forwarded") => ForwardedStyle::XForwarded,
        Some("rfc7239") => ForwardedStyle::Rfc7239,
        Some("both") => ForwardedStyle::Both,
        Some("none") => ForwardedStyle::None,
        Some(other) => {
            return Err(invalid(
                key("forwarded"),
                other,
                "must be `x-forwarded`, `rfc7239`, `both` or `none`",
            ))
        }
    };
    let trusted_proxies = match raw.trusted_proxies {
        Some(t) => CidrSet::parse(&key("trusted_proxies"), t)?,
        None => defaults.trusted_proxies.clone(),
    };
    let request_id = match raw.request_id {
        Some(r) => r.validate(&key("request_id"))?,
        None => defaults.request_id.clone(),
    };
    Ok(ListenerForwarding {
        proxy_protocol,
        forwarded,
        trusted_proxies,
        request_id,
    })
}

/// `upstreams.<group>.send_proxy_protocol`: `v1` or `v2`. Default: none.
pub(super) fn send_proxy_protocol(
    group: &str,
    raw: Option<&str>,
) -> Result<Option<Version>, ConfigError> {
    match raw {
        None => Ok(None),
        Some("v1") => Ok(Some(Version::V1)),
        Some("v2") => Ok(Some(Version::V2)),
        Some(other) => Err(invalid(
            format!("upstreams.{group}.send_proxy_protocol"),
            other,
            "must be `v1` or `v2`",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Result<Cidr, String> {
        Cidr::parse("k", s).map_err(|e| e.to_string())
    }

    #[test]
    fn cidrs_parse_and_match() {
        let set = CidrSet(
            ["10.0.0.0/8", "127.0.0.1", "2001:db8::/32"]
                .iter()
                .map(|s| cidr(s).unwrap())
                .collect(),
        );
        for (ip, want) in [
            ("10.1.2.3", true),
            ("11.0.0.0", false),
            ("127.0.0.1", true),
            ("127.0.0.2", false),
            ("2001:db8:1::5", true),
            ("2001:db9::", false),
            ("::ffff:10.9.9.9", true),
            ("::ffff:127.0.0.2", false),
        ] {
            assert_eq!(set.contains(ip.parse().unwrap()), want, "{ip}");
        }
        let all = CidrSet(vec![cidr("0.0.0.0/0").unwrap(), cidr("::/0").unwrap()]);
        assert!(all.contains("1.2.3.4".parse().unwrap()));
        assert!(all.contains("2001::1".parse().unwrap()));
        assert!(!CidrSet::default().contains("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn bad_cidrs_name_key_and_value() {
        for (s, why) in [
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/x", "prefix length"),
            ("10.0.0/8", "expected an IP"),
            ("localhost", "expected an IP"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8"),
        ] {
            let e = cidr(s).unwrap_err();
            assert!(e.contains("`k`") && e.contains(s) && e.contains(why), "{e}");
        }
    }

    #[test]
    fn request_id_names() {
        let v = |h: &str| {
            RawRequestId::Map(RawRequestIdMap {
                header: Some(h.into()),
                generate: None,
            })
            .validate("request_id")
        };
        assert_eq!(v("X-Trace").unwrap().unwrap().header, b"X-Trace");
        assert!(v("X Trace").is_err());
        assert!(v("Host").is_err());
        assert!(v("x-forwarded-for").is_err());
        assert_eq!(RawRequestId::Flag(false).validate("r").unwrap(), None);
        let d = RawRequestId::Flag(true).validate("r").unwrap().unwrap();
        assert_eq!(
            (d.header.as_slice(), d.generate),
            (&b"X-Request-Id"[..], true)
        );
    }

    fn load(
        extra_top: &str,
        extra_listener: &str,
        extra_group: &str,
    ) -> Result<super::super::Config, String> {
        let y = format!(
            "{extra_top}listeners:\n  - address: 127.0.0.1:6188\n{extra_listener}upstreams:\n  web:\n    backends: [127.0.0.1:8081]\n{extra_group}"
        );
        super::super::Config::from_yaml(&y, std::path::Path::new("t.yaml"), Some(1))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_load_with_defaults_and_overrides() {
        let c = load("", "", "").unwrap();
        let f = &c.listeners[0].forwarding;
        assert!(f.proxy_protocol.is_none() && f.request_id.is_none());
        assert!(f.trusted_proxies.is_empty());
        assert_eq!(f.forwarded, ForwardedStyle::XForwarded);
        assert_eq!(c.upstreams[0].send_proxy_protocol, None);

        let c = load(
            "trusted_proxies: [10.0.0.0/8]\nrequest_id: { header: X-Trace }\n",
            "    proxy_protocol: { trusted: 127.0.0.1/32, versions: [v2], timeout_ms: 500 }\n    forwarded: both\n",
            "    send_proxy_protocol: v1\n",
        )
        .unwrap();
        let f = &c.listeners[0].forwarding;
        let pp = f.proxy_protocol.as_ref().unwrap();
        assert_eq!(
            pp.versions,
            Versions {
                v1: false,
                v2: true
            }
        );
        assert_eq!(pp.timeout, Duration::from_millis(500));
        assert!(pp.trusted.contains("127.0.0.1".parse().unwrap()));
        assert!(f.trusted_proxies.contains("10.2.3.4".parse().unwrap()));
        assert_eq!(f.request_id.as_ref().unwrap().header, b"X-Trace");
        assert_eq!(f.forwarded, ForwardedStyle::Both);
        assert_eq!(c.upstreams[0].send_proxy_protocol, Some(Version::V1));

        // A listener's own keys win; `[]` and `false` turn the defaults off.
        let c = load(
            "trusted_proxies: [10.0.0.0/8]\nrequest_id: true\n",
            "    trusted_proxies: []\n    request_id: false\n",
            "",
        )
        .unwrap();
        let f = &c.listeners[0].forwarding;
        assert!(f.trusted_proxies.is_empty() && f.request_id.is_none());
    }

    #[test]
    fn bad_values_name_key_and_value() {
        for (top, listener, group, key, value) in [
            (
                "",
                "    proxy_protocol: { trusted: [10.0.0.0/8, 10.1.0.0/33] }\n",
                "",
                "listeners[0].proxy_protocol.trusted[1]",
                "10.1.0.0/33",
            ),
            (
                "",
                "    proxy_protocol: { trusted: [] }\n",
                "",
                "listeners[0].proxy_protocol.trusted",
                "[]",
            ),
            (
                "",
                "    proxy_protocol: { versions: [v1] }\n",
                "",
                "listeners[0].proxy_protocol.trusted",
                "(missing)",
            ),
            (
                "",
                "    proxy_protocol: { trusted: [127.0.0.1], versions: [v3] }\n",
                "",
                "listeners[0].proxy_protocol.versions[0]",
                "v3",
            ),
            (
                "",
                "    proxy_protocol: { trusted: [127.0.0.1], timeout_ms: 0 }\n",
                "",
                "listeners[0].proxy_protocol.timeout_ms",
                "0",
            ),
            (
                "",
                "    forwarded: x-forwarded-for\n",
                "",
                "listeners[0].forwarded",
                "x-forwarded-for",
            ),
            (
                "trusted_proxies: [bogus]\n",
                "",
                "",
                "trusted_proxies[0]",
                "bogus",
            ),
            (
                "",
                "    trusted_proxies: \"::1/200\"\n",
                "",
                "listeners[0].trusted_proxies",
                "::1/200",
            ),
            (
                "request_id: { header: \"X Id\" }\n",
                "",
                "",
                "request_id.header",
                "X Id",
            ),
            (
                "",
                "",
                "    send_proxy_protocol: v3\n",
                "upstreams.web.send_proxy_protocol",
                "v3",
            ),
        ] {
            let e = load(top, listener, group).unwrap_err();
            assert!(
                e.contains(&format!("`{key}`")) && e.contains(&format!("`{value}`")),
                "{key}: {e}"
            );
        }
        let e = load(
            "",
            "    proxy_protocol: { trusted: [127.0.0.1], ttl: 3 }\n",
            "",
        )
        .unwrap_err();
        assert!(e.contains("ttl"), "{e}");
    }
}
