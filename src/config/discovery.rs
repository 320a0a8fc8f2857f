//! `upstreams.<g>.discovery`: where a group's backends come from besides its
//! `backends` list (DNS A/AAAA or SRV records), how often they are asked for
//! again, and what an empty answer means.
//!
//! The resolver and its thread live in [`crate::discovery`]; this module
//! owns the keys, their defaults and their errors (each naming the dotted
//! key).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{in_range, invalid, ConfigError};

/// `upstreams.<g>.discovery` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDiscovery {
    /// `NAME:PORT`: every A and AAAA record of NAME is a backend on PORT.
    #[serde(default)]
    dns: Option<String>,
    /// `_service._proto.NAME`: SRV records give target, port and weight;
    /// only the best (lowest) priority is used.
    #[serde(default)]
    srv: Option<String>,
    /// `IP:port` (or `IP`, port 53) of the nameservers to ask. Default: the
    /// nameservers of /etc/resolv.conf.
    #[serde(default)]
    nameservers: Option<Vec<String>>,
    /// `ttl` (the default): ask again when the answer's TTL runs out,
    /// clamped to [`min_ttl_ms`, `max_ttl_ms`]; or a fixed interval in ms.
    #[serde(default)]
    refresh: Option<RawRefresh>,
    /// Shortest time between two resolutions of the name (also the retry
    /// interval after a failure). Default 1000.
    #[serde(default)]
    min_ttl_ms: Option<u64>,
    /// Longest time an answer is used before asking again. Default 30000.
    #[serde(default)]
    max_ttl_ms: Option<u64>,
    /// `keep` (the default): an answer with no records keeps the last set;
    /// `clear`: it empties the discovered set (Envoy's STRICT_DNS).
    #[serde(default)]
    on_empty: Option<String>,
    /// How long one query may take (per attempt). Default 2000.
    #[serde(default)]
    timeout_ms: Option<u64>,
    /// Balancing weight of each A/AAAA backend (SRV records carry their
    /// own). Default 1.
    #[serde(default)]
    weight: Option<u32>,
}

/// `refresh:` as written: the word `ttl` or a number of milliseconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawRefresh {
    /// A fixed interval, ms.
    Millis(u64),
    /// `ttl`.
    Word(String),
}

/// What a group asks DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryName {
    /// A/AAAA records of `name`, each address a backend on `port`.
    Host {
        /// The name.
        name: String,
        /// The backends' port.
        port: u16,
    },
    /// SRV records of `name`.
    Srv {
        /// The name (`_http._tcp.web.service.consul`).
        name: String,
    },
}

/// When a group's name is resolved again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresh {
    /// When the answer's TTL runs out (clamped).
    Ttl,
    /// On a fixed interval.
    Every(Duration),
}

/// A validated `discovery` block.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// The key written (`dns` or `srv`), for messages.
    pub key: String,
    /// What to ask.
    pub name: DiscoveryName,
    /// `nameservers`; `None`: /etc/resolv.conf.
    pub nameservers: Option<Vec<SocketAddr>>,
    /// `refresh`.
    pub refresh: Refresh,
    /// `min_ttl_ms`.
    pub min_ttl: Duration,
    /// `max_ttl_ms`.
    pub max_ttl: Duration,
    /// `on_empty: clear`.
    pub clear_on_empty: bool,
    /// `timeout_ms`.
    pub timeout: Duration,
    /// `weight`.
    pub weight: u32,
}

impl DiscoveryConfig {
    /// How long to use an answer with `ttl` before asking again.
    pub fn next_refresh(&self, ttl: Duration) -> Duration {
        match self.refresh {
            Refresh::Ttl => ttl.clamp(self.min_ttl, self.max_ttl),
            Refresh::Every(d) => d,
        }
    }
}

impl RawDiscovery {
    /// `upstreams.<group>.discovery`.
    pub(super) fn validate(&self, group: &str) -> Result<DiscoveryConfig, ConfigError> {
        let key = |k: &str| format!("upstreams.{group}.discovery.{k}");
        let (written, name) = self.name(group)?;
        let ms = |k: &str, v: Option<u64>, default: u64, min: u64| {
            in_range(
                key(k),
                v.unwrap_or(default),
                min..=86_400_000,
                format!("must be from {min} to 86400000 ms"),
            )
            .map(Duration::from_millis)
        };
        let min_ttl = ms("min_ttl_ms", self.min_ttl_ms, 1000, 100)?;
        let max_ttl = ms("max_ttl_ms", self.max_ttl_ms, 30_000, 100)?;
        if max_ttl < min_ttl {
            return Err(invalid(
                key("max_ttl_ms"),
                max_ttl.as_millis(),
                format!("must not be below min_ttl_ms ({})", min_ttl.as_millis()),
            ));
        }
        let refresh = match &self.refresh {
            None => Refresh::Ttl,
            Some(RawRefresh::Word(w)) if w == "ttl" => Refresh::Ttl,
            Some(RawRefresh::Word(w)) => {
                return Err(invalid(
                    key("refresh"),
                    w,
                    "must be `ttl` or a number of milliseconds",
                ))
            }
            Some(RawRefresh::Millis(n)) => Refresh::Every(ms("refresh", Some(*n), 0, 100)?),
        };
        let clear_on_empty = match self.on_empty.as_deref() {
            None | Some("keep") => false,
            Some("clear") => true,
            Some(other) => return Err(invalid(key("on_empty"), other, "must be keep or clear")),
        };
        let weight = in_range(
            key("weight"),
            self.weight.unwrap_or(1),
            1..=1000,
            "must be from 1 to 1000",
        )?;
        Ok(DiscoveryConfig {
            key: written,
            name,
            nameservers: self.nameservers(group)?,
            refresh,
            min_ttl,
            max_ttl,
            clear_on_empty,
            timeout: ms("timeout_ms", self.timeout_ms, 2000, 10)?,
            weight,
        })
    }

    /// `dns: NAME:PORT` or `srv: NAME`, exactly one.
    fn name(&self, group: &str) -> Result<(String, DiscoveryName), ConfigError> {
        let key = |k: &str| format!("upstreams.{group}.discovery.{k}");
        match (&self.dns, &self.srv) {
            (Some(_), Some(_)) => Err(invalid(
                key("srv"),
                self.srv.as_deref().unwrap_or_default(),
                "give either `dns` or `srv`, not both",
            )),
            (None, None) => Err(invalid(
                format!("upstreams.{group}.discovery"),
                "{}",
                "needs `dns: NAME:PORT` or `srv: _service._proto.NAME`",
            )),
            (Some(d), None) => {
                let bad = || invalid(key("dns"), d, "expected NAME:PORT (a DNS name and a port)");
                let (host, port) = d.rsplit_once(':').ok_or_else(bad)?;
                let port: u16 = port.parse().map_err(|_| bad())?;
                if port == 0 || !is_dns_name(host) {
                    return Err(bad());
                }
                let name = host.to_owned();
                Ok(("dns".into(), DiscoveryName::Host { name, port }))
            }
            (None, Some(s)) => {
                if !is_dns_name(s) || !s.starts_with('_') {
                    return Err(invalid(
                        key("srv"),
                        s,
                        "expected an SRV name such as _http._tcp.web.service.consul",
                    ));
                }
                let name = s.clone();
                Ok(("srv".into(), DiscoveryName::Srv { name }))
            }
        }
    }

    /// `nameservers`: `IP:port` or `IP` (port 53), at least one if given.
    fn nameservers(&self, group: &str) -> Result<Option<Vec<SocketAddr>>, ConfigError> {
        let Some(list) = &self.nameservers else {
            return Ok(None);
        };
        if list.is_empty() {
            return Err(invalid(
                format!("upstreams.{group}.discovery.nameservers"),
                "[]",
                "list at least one nameserver, or leave the key out for /etc/resolv.conf",
            ));
        }
        list.iter()
            .enumerate()
            .map(|(i, s)| {
                let ip = s
                    .parse::<std::net::IpAddr>()
                    .map(|ip| SocketAddr::new(ip, 53));
                s.parse::<SocketAddr>().or(ip).map_err(|_| {
                    invalid(
                        format!("upstreams.{group}.discovery.nameservers[{i}]"),
                        s,
                        "expected IP or IP:port",
                    )
                })
            })
            .collect::<Result<_, _>>()
            .map(Some)
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, each 1
/// to 63 bytes, 253 in all; an optional final dot.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawDiscovery {
        serde_saphyr::from_str(yaml).expect("yaml")
    }

    #[test]
    fn dns_name_and_defaults() {
        let d = raw("dns: web.service.consul:8080")
            .validate("web")
            .expect("ok");
        assert_eq!(
            d.name,
            DiscoveryName::Host {
                name: "web.service.consul".into(),
                port: 8080
            }
        );
        assert_eq!(d.refresh, Refresh::Ttl);
        assert_eq!(d.min_ttl, Duration::from_secs(1));
        assert_eq!(d.max_ttl, Duration::from_secs(30));
        assert!(!d.clear_on_empty);
        assert_eq!(d.next_refresh(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            d.next_refresh(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("dns: web.test", "discovery.dns"),
            ("dns: web.test:0", "discovery.dns"),
            ("dns: 'we b:80'", "discovery.dns"),
            ("srv: web.test", "discovery.srv"),
            ("{dns: a.test:1, srv: _h._tcp.a.test}", "discovery.srv"),
            ("{}", "discovery"),
            ("{dns: a.test:1, on_empty: drop}", "discovery.on_empty"),
            ("{dns: a.test:1, refresh: often}", "discovery.refresh"),
            (
                "{dns: a.test:1, min_ttl_ms: 5000, max_ttl_ms: 1000}",
                "discovery.max_ttl_ms",
            ),
            ("{dns: a.test:1, nameservers: []}", "discovery.nameservers"),
            (
                "{dns: a.test:1, nameservers: [dns.google]}",
                "discovery.nameservers[0]",
            ),
        ];
        for (yaml, key) in cases {
            let e = raw(yaml).validate("web").expect_err(yaml).to_string();
            assert!(e.contains(&format!("upstreams.web.{key}")), "{yaml}: {e}");
        }
    }

    #[test]
    fn srv_fixed_refresh_and_nameservers() {
        let d =
            raw("{srv: _http._tcp.web.test, refresh: 500, nameservers: ['127.0.0.1:5353', '::1']}")
                .validate("web")
                .expect("ok");
        assert_eq!(d.refresh, Refresh::Every(Duration::from_millis(500)));
        assert_eq!(
            d.nameservers,
            Some(vec![
                "127.0.0.1:5353".parse().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ])
        );
        assert_eq!(
            d.next_refresh(Duration::from_secs(9)),
            Duration::from_millis(500)
        );
    }
}
