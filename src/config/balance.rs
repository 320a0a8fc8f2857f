//! `upstreams.<g>` balancing keys: `balance`, `hash`, `hash_balance_factor`,
//! `sticky`, `slow_start_ms`, `panic_threshold_percent`.
//!
//! The algorithms live in [`crate::upstream::select`]; this module owns the
//! keys, their defaults and their errors (each naming the dotted key).

use std::time::Duration;

use serde::Deserialize;

use super::{in_range, invalid, ConfigError};
use crate::upstream::select::hash_key::HashKey;
use crate::upstream::select::Balance;

/// `upstreams.<g>.hash`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHash {
    /// `client_ip | uri | path | header:NAME | cookie:NAME | query:NAME`.
    key: String,
}

/// `upstreams.<g>.sticky`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSticky {
    /// Cookie name. Default `lbd_srv`.
    #[serde(default)]
    cookie: Option<String>,
    /// Cookie lifetime (`Max-Age`) in seconds; default none (a session
    /// cookie).
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// The balancing keys of one group as written.
pub(super) struct RawBalance<'a> {
    pub(super) balance: &'a Option<String>,
    pub(super) hash: &'a Option<RawHash>,
    pub(super) hash_balance_factor: Option<u32>,
    pub(super) sticky: &'a Option<RawSticky>,
    pub(super) slow_start_ms: Option<u64>,
    pub(super) panic_threshold_percent: Option<u32>,
}

/// Sticky sessions of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyConfig {
    /// Cookie name.
    pub cookie: String,
    /// `Max-Age`, if any.
    pub ttl_s: Option<u64>,
}

/// A group's validated balancing settings.
#[derive(Debug, Clone)]
pub struct BalanceConfig {
    /// The algorithm.
    pub balance: Balance,
    /// The hash key (`balance: hash` only).
    pub hash_key: Option<HashKey>,
    /// Bounded load in percent of the average (0 = off).
    pub hash_balance_factor: u32,
    /// Sticky cookie, any balance.
    pub sticky: Option<StickyConfig>,
    /// Weight ramp after a backend (re)joins.
    pub slow_start: Option<Duration>,
    /// Below this share of eligible backends, balance over all of them.
    pub panic_threshold_percent: Option<u32>,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        BalanceConfig {
            balance: Balance::RoundRobin,
            hash_key: None,
            hash_balance_factor: 0,
            sticky: None,
            slow_start: None,
            panic_threshold_percent: None,
        }
    }
}

/// Validates a group's balancing keys.
pub(super) fn validate(group: &str, raw: &RawBalance<'_>) -> Result<BalanceConfig, ConfigError> {
    let key = |k: &str| format!("upstreams.{group}.{k}");
    let balance = match raw.balance.as_deref().unwrap_or("round_robin") {
        "round_robin" => Balance::RoundRobin,
        "least_conn" => Balance::LeastConn,
        "p2c" => Balance::P2c,
        "random" => Balance::Random,
        "hash" => Balance::Hash,
        other => {
            return Err(invalid(
                key("balance"),
                other,
                "must be `round_robin`, `least_conn`, `p2c`, `random` or `hash`",
            ))
        }
    };
    let hash_key = match (raw.hash, balance) {
        (Some(h), Balance::Hash) => {
            Some(HashKey::parse(&h.key).map_err(|e| invalid(key("hash.key"), &h.key, e))?)
        }
        (None, Balance::Hash) => {
            return Err(invalid(
                key("hash"),
                "(missing)",
                "`balance: hash` needs `hash: { key: ... }`",
            ))
        }
        (Some(_), _) => {
            return Err(invalid(
                key("hash"),
                "(set)",
                "only meaningful with `balance: hash`",
            ))
        }
        (None, _) => None,
    };
    let hash_balance_factor = match raw.hash_balance_factor {
        None => 0,
        Some(_) if balance != Balance::Hash => {
            return Err(invalid(
                key("hash_balance_factor"),
                "(set)",
                "only meaningful with `balance: hash`",
            ))
        }
        Some(f) => in_range(
            key("hash_balance_factor"),
            f,
            100..=10_000,
            "must be a percentage from 100 to 10000 (HAProxy's hash-balance-factor)",
        )?,
    };
    Ok(BalanceConfig {
        balance,
        hash_key,
        hash_balance_factor,
        sticky: raw.sticky.as_ref().map(|s| sticky(&key, s)).transpose()?,
        slow_start: raw
            .slow_start_ms
            .map(|ms| {
                in_range(
                    key("slow_start_ms"),
                    ms,
                    1..=3_600_000,
                    "must be from 1 to 3600000",
                )
                .map(Duration::from_millis)
            })
            .transpose()?,
        panic_threshold_percent: raw
            .panic_threshold_percent
            .map(|p| {
                in_range(
                    key("panic_threshold_percent"),
                    p,
                    1..=100,
                    "must be a percentage from 1 to 100",
                )
            })
            .transpose()?,
    })
}

fn sticky(key: &dyn Fn(&str) -> String, s: &RawSticky) -> Result<StickyConfig, ConfigError> {
    let cookie = s.cookie.clone().unwrap_or_else(|| "lbd_srv".into());
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if cookie.is_empty() || !cookie.bytes().all(token) {
        return Err(invalid(
            key("sticky.cookie"),
            &cookie,
            "must be a cookie name (letters, digits and !#$%&'*+-.^_`|~)",
        ));
    }
    let ttl_s = s
        .ttl_s
        .map(|t| {
            in_range(
                key("sticky.ttl_s"),
                t,
                1..=315_360_000,
                "must be from 1 to 315360000",
            )
        })
        .transpose()?;
    Ok(StickyConfig { cookie, ttl_s })
}
