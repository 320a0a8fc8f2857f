//! Stub (replaced by the real resolver).
#![allow(dead_code)]
pub(crate) enum Query {
    Host { name: String, port: u16 },
    Srv { name: String },
}
pub(crate) struct Record {
    pub(crate) address: std::net::SocketAddr,
    pub(crate) weight: u32,
}
pub(crate) struct Answer {
    pub(crate) records: Vec<Record>,
    pub(crate) ttl: std::time::Duration,
}
#[derive(Debug, thiserror::Error)]
pub(crate) enum DnsError {
    #[error("x")]
    Other(String),
}
pub(crate) struct Resolver;
impl Resolver {
    pub(crate) fn new(
        _n: Option<&[std::net::SocketAddr]>,
        _t: std::time::Duration,
    ) -> Result<Self, DnsError> {
        Ok(Resolver)
    }
    pub(crate) fn resolve(&self, _q: &Query) -> Result<Answer, DnsError> {
        Err(DnsError::Other("stub".into()))
    }
}
