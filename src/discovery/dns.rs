//! DNS resolution for service discovery: what one group's name resolves to,
//! now.
//!
//! This module owns the resolver (hickory over a tokio current-thread
//! runtime of its own) and the meaning of an answer: A and AAAA records of a
//! name on a configured port ([`Query::Host`]), or SRV records with their
//! targets resolved and only the lowest priority that resolves kept
//! ([`Query::Srv`], RFC 2782). Its API is blocking: it runs on the discovery
//! control thread, never on a worker. There is no answer cache: every
//! [`Resolver::resolve`] asks the nameservers again, so a change is seen on
//! the next resolve, whatever TTL the previous answer had; the TTL is
//! reported for the caller's own schedule. An empty answer (NXDOMAIN, or
//! NOERROR without records) is an answer; SERVFAIL, REFUSED and silence are
//! errors, so a caller keeps what it had rather than emptying a group.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as WireError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::rdata::SRV;
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;

/// What a group asks DNS: A and AAAA records of a name, every address one
/// backend on the configured port (resolv.conf's search list applies to a
/// name without a trailing dot when the system configuration is used); or
/// SRV records (target, port, weight; only the lowest priority value whose
/// targets resolve is used, RFC 2782; weight 0 counts as 1).
pub(crate) use crate::config::DiscoveryName as Query;

/// One backend an answer names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Record {
    /// Where the backend listens.
    pub(crate) address: std::net::SocketAddr,
    /// Its weight: 1 for [`Query::Host`], the SRV weight (0 counted as 1)
    /// for [`Query::Srv`]; an address named by several SRV records gets the
    /// sum of their weights.
    pub(crate) weight: u32,
}

/// What a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Answer {
    /// The backends, sorted and deduplicated by address.
    pub(crate) records: Vec<Record>,
    /// The smallest TTL among the records used (an SRV answer: the SRV
    /// records and the used targets' addresses); for an empty answer the
    /// negative TTL (from the SOA the server sent) if known, else 0 (an SRV
    /// answer whose targets do not resolve: the smallest of the SRV TTL
    /// and the targets' negative TTLs).
    pub(crate) ttl: Duration,
}

/// Why a name could not be resolved. Every message names the query.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DnsError {
    /// The nameserver answered SERVFAIL.
    #[error("DNS {query}: the nameserver answered SERVFAIL")]
    ServFail {
        /// The name and record type asked.
        query: String,
    },
    /// The nameserver answered REFUSED.
    #[error("DNS {query}: the nameserver answered REFUSED")]
    Refused {
        /// The name and record type asked.
        query: String,
    },
    /// No nameserver answered in time.
    #[error("DNS {query}: no answer from any nameserver")]
    Timeout {
        /// The name and record type asked.
        query: String,
    },
    /// Anything else: a bad name, another response code, a socket error, a
    /// configuration that cannot be read.
    #[error("DNS {0}")]
    Other(String),
}

/// A blocking DNS resolver: a tokio current-thread runtime and a hickory
/// resolver without a cache.
pub(crate) struct Resolver {
    // Dropped before the runtime its background tasks live on.
    inner: TokioResolver,
    runtime: tokio::runtime::Runtime,
}

impl Resolver {
    /// `nameservers`: None = /etc/resolv.conf (hickory's system config: its
    /// nameservers, search list and ndots); Some = exactly these (UDP, with
    /// TCP when an answer is truncated). `timeout`: per attempt; a query is
    /// tried twice, so a dead nameserver fails within about twice `timeout`.
    /// /etc/hosts is not consulted (it would be read once and never again).
    pub(crate) fn new(
        nameservers: Option<&[SocketAddr]>,
        timeout: Duration,
    ) -> Result<Self, DnsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| DnsError::Other(format!("cannot start the resolver runtime: {e}")))?;
        let provider = TokioRuntimeProvider::default();
        let mut builder = match nameservers {
            None => TokioResolver::builder(provider)
                .map_err(|e| DnsError::Other(format!("cannot read /etc/resolv.conf: {e}")))?,
            Some(servers) => TokioResolver::builder_with_config(explicit(servers)?, provider),
        };
        tune(builder.options_mut(), timeout);
        let inner = {
            let _context = runtime.enter();
            builder.build()
        }
        .map_err(|e| DnsError::Other(format!("cannot build the resolver: {e}")))?;
        Ok(Self { inner, runtime })
    }

    /// Blocking resolve. NOERROR with no records and NXDOMAIN both give an
    /// empty answer (Kubernetes answers NXDOMAIN for a headless Service with
    /// no ready pods); SERVFAIL, REFUSED and timeouts give an error.
    pub(crate) fn resolve(&self, q: &Query) -> Result<Answer, DnsError> {
        // cache_size 0 already; this makes "no cache" independent of how
        // the cache treats a zero capacity.
        self.inner.clear_cache();
        let r = &self.inner;
        self.runtime.block_on(async move {
            match q {
                Query::Host { name, port } => host(r, name, *port).await,
                Query::Srv { name } => srv(r, name).await,
            }
        })
    }
}

/// A configuration naming exactly `servers`, each over UDP and TCP.
fn explicit(servers: &[SocketAddr]) -> Result<ResolverConfig, DnsError> {
    if servers.is_empty() {
        return Err(DnsError::Other("no nameservers configured".into()));
    }
    let on = |mut c: ConnectionConfig, port| {
        c.port = port;
        c
    };
    let name_servers = servers
        .iter()
        .map(|s| {
            let conns = vec![
                on(ConnectionConfig::udp(), s.port()),
                on(ConnectionConfig::tcp(), s.port()),
            ];
            NameServerConfig::new(s.ip(), true, conns)
        })
        .collect();
    Ok(ResolverConfig::from_name_servers(name_servers))
}

/// lbd's options over the system's (or hickory's default) ones.
fn tune(o: &mut ResolverOpts, timeout: Duration) {
    o.timeout = timeout;
    // Retries after the first try: one, so a lost datagram is not an error.
    o.attempts = 1;
    o.cache_size = 0;
    o.use_hosts_file = ResolveHosts::Never;
}

/// `name` parsed, or an error naming it.
fn parse(name: &str) -> Result<Name, DnsError> {
    Name::from_utf8(name).map_err(|e| DnsError::Other(format!("{name}: invalid name: {e}")))
}

/// The smaller of two optional TTLs, or the one that is there.
fn min_ttl(a: Option<u32>, b: Option<u32>) -> Option<u32> {
    a.into_iter().chain(b).min()
}

/// One name's addresses (one record type, or A and AAAA together).
#[derive(Debug)]
struct Addresses {
    ips: Vec<IpAddr>,
    /// With addresses: their smallest TTL (CNAMEs on the way included).
    /// Without: the negative TTL, if the server sent an SOA.
    ttl: Option<u32>,
}

impl Addresses {
    /// A and AAAA together: a part without addresses adds nothing, not even
    /// its TTL, unless neither has any.
    fn join(a: Self, b: Self) -> Self {
        match (a.ips.is_empty(), b.ips.is_empty()) {
            (false, true) => a,
            (true, false) => b,
            _ => Self {
                ttl: min_ttl(a.ttl, b.ttl),
                ips: a.ips.into_iter().chain(b.ips).collect(),
            },
        }
    }
}

/// `query` for messages: "web.test AAAA".
fn label(name: &Name, rtype: RecordType) -> String {
    format!("{name} {rtype}")
}

/// A failed lookup: an empty answer with its negative TTL, or an error.
fn empty_or_err(e: NetError, query: String) -> Result<Option<u32>, DnsError> {
    let code = match e {
        NetError::Dns(WireError::NoRecordsFound(nr)) => match nr.response_code {
            ResponseCode::NoError | ResponseCode::NXDomain => return Ok(nr.negative_ttl),
            code => code,
        },
        NetError::Dns(WireError::ResponseCode(code)) => code,
        NetError::Timeout => return Err(DnsError::Timeout { query }),
        e => return Err(DnsError::Other(format!("{query}: {e}"))),
    };
    Err(match code {
        ResponseCode::ServFail => DnsError::ServFail { query },
        ResponseCode::Refused => DnsError::Refused { query },
        code => DnsError::Other(format!("{query}: the nameserver answered {code}")),
    })
}

/// The `rtype` (A or AAAA) addresses of `name`.
async fn lookup_ips(
    r: TokioResolver,
    name: Name,
    rtype: RecordType,
) -> Result<Addresses, DnsError> {
    let lookup = match r.lookup(name.clone(), rtype).await {
        Ok(l) => l,
        Err(e) => {
            let ttl = empty_or_err(e, label(&name, rtype))?;
            return Ok(Addresses { ips: vec![], ttl });
        }
    };
    let answers = lookup.answers();
    let ips = answers
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::A(a) if rtype == RecordType::A => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) if rtype == RecordType::AAAA => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    let ttl = answers.iter().map(|rec| rec.ttl).min();
    Ok(Addresses { ips, ttl })
}

/// `a` and `b` run concurrently on the current runtime.
async fn both<T: Send + 'static>(
    query: &str,
    a: impl Future<Output = Result<T, DnsError>> + Send + 'static,
    b: impl Future<Output = Result<T, DnsError>>,
) -> Result<(T, T), DnsError> {
    let a = tokio::spawn(a);
    let b = b.await;
    let a = a
        .await
        .map_err(|e| DnsError::Other(format!("{query}: lookup task failed: {e}")))?;
    Ok((a?, b?))
}

/// The A and AAAA addresses of `name`; an error in either is an error.
async fn addresses(r: &TokioResolver, name: Name) -> Result<Addresses, DnsError> {
    let v4 = lookup_ips(r.clone(), name.clone(), RecordType::A);
    let v6 = lookup_ips(r.clone(), name.clone(), RecordType::AAAA);
    let (v4, v6) = both(&name.to_string(), v4, v6).await?;
    Ok(Addresses::join(v4, v6))
}

async fn host(r: &TokioResolver, name: &str, port: u16) -> Result<Answer, DnsError> {
    let found = addresses(r, parse(name)?).await?;
    let records = found
        .ips
        .iter()
        .map(|ip| Record {
            address: SocketAddr::new(*ip, port),
            weight: 1,
        })
        .collect();
    Ok(Answer::new(records, found.ttl))
}

/// The SRV records of `name` with their TTLs; none for an empty answer,
/// with the negative TTL.
async fn srv_records(r: &TokioResolver, name: Name) -> Result<(Vec<SRV>, Option<u32>), DnsError> {
    let lookup = match r.lookup(name.clone(), RecordType::SRV).await {
        Ok(l) => l,
        Err(e) => return Ok((vec![], empty_or_err(e, label(&name, RecordType::SRV))?)),
    };
    let answers = lookup.answers();
    let set = answers
        .iter()
        .filter_map(|rec| match &rec.data {
            RData::SRV(s) => Some(s.clone()),
            _ => None,
        })
        .collect();
    Ok((set, answers.iter().map(|rec| rec.ttl).min()))
}

async fn srv(r: &TokioResolver, name: &str) -> Result<Answer, DnsError> {
    let (set, srv_ttl) = srv_records(r, parse(name)?).await?;
    let mut priorities: Vec<u16> = set.iter().map(|s| s.priority).collect();
    priorities.sort_unstable();
    priorities.dedup();
    let mut negative = srv_ttl;
    for p in priorities {
        let (records, ttl) = srv_priority(r, set.iter().filter(|s| s.priority == p)).await?;
        if !records.is_empty() {
            return Ok(Answer::new(records, min_ttl(srv_ttl, ttl)));
        }
        negative = min_ttl(negative, ttl);
    }
    Ok(Answer::new(vec![], negative))
}

/// The backends of one priority's SRV records and the TTL that goes with
/// them (the negative one if none resolves). A target of `.` ("no such
/// service here") adds nothing; an error resolving any target is an error.
async fn srv_priority(
    r: &TokioResolver,
    set: impl Iterator<Item = &SRV>,
) -> Result<(Vec<Record>, Option<u32>), DnsError> {
    let mut found = Vec::new();
    for s in set.filter(|s| !s.target.is_root()) {
        let a = addresses(r, s.target.clone()).await?;
        found.push((s, a));
    }
    let (used, unused): (Vec<_>, Vec<_>) = found.into_iter().partition(|(_, a)| !a.ips.is_empty());
    let from = if used.is_empty() { &unused } else { &used };
    let ttl = from.iter().filter_map(|(_, a)| a.ttl).min();
    let records = used
        .iter()
        .flat_map(|(s, a)| {
            a.ips.iter().map(|ip| Record {
                address: SocketAddr::new(*ip, s.port),
                weight: u32::from(s.weight.max(1)),
            })
        })
        .collect();
    Ok((records, ttl))
}

impl Answer {
    /// Sorted by address, one record per address (weights summed).
    fn new(mut records: Vec<Record>, ttl: Option<u32>) -> Self {
        records.sort_by_key(|r| r.address);
        records.dedup_by(|later, kept| {
            let same = later.address == kept.address;
            if same {
                kept.weight = kept.weight.saturating_add(later.weight);
            }
            same
        });
        let ttl = Duration::from_secs(u64::from(ttl.unwrap_or(0)));
        Self { records, ttl }
    }
}

#[cfg(test)]
mod tests {
    //! Against a real dnsmasq on loopback (Debian: dnsmasq-base).

    use super::*;
    use std::net::{TcpListener, UdpSocket};
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    const DNSMASQ: &str = "/usr/sbin/dnsmasq";
    /// The per-attempt timeout of the resolvers under test.
    const QUICK: Duration = Duration::from_millis(500);
    /// A DS record of the root KSK: with it, dnsmasq validates what it
    /// forwards, and fails (SERVFAIL) on anything an unsigned upstream says.
    const ROOT_ANCHOR: &str = "--trust-anchor=.,20326,8,2,\
        E06D44B80B8F1D39A95C0B0D7C65D08458E880409BBC683457104237C7F8EC8D";

    static DIRS: AtomicUsize = AtomicUsize::new(0);

    /// A port free on 127.0.0.1 for both UDP and TCP a moment ago.
    fn free_port() -> u16 {
        loop {
            let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP");
            let port = udp.local_addr().expect("local_addr").port();
            if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }

    /// A dnsmasq answering on 127.0.0.1 from a hosts file, names under
    /// `test.` local (NXDOMAIN when unknown); killed on drop.
    struct Dnsmasq {
        addr: SocketAddr,
        child: Child,
        dir: PathBuf,
    }

    impl Dnsmasq {
        fn start(hosts: &str, args: &[&str]) -> Self {
            Self::on(free_port(), hosts, args)
        }

        fn on(port: u16, hosts: &str, args: &[&str]) -> Self {
            let n = DIRS.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("lbd-dns-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            std::fs::write(dir.join("hosts"), hosts).expect("hosts file");
            let log = std::fs::File::create(dir.join("log")).expect("log file");
            let child = Command::new(DNSMASQ)
                .args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
                .arg(format!("--addn-hosts={}", dir.join("hosts").display()))
                .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
                .arg(format!("--port={port}"))
                .args([
                    "--user=root",
                    "--pid-file=",
                    "--log-facility=-",
                    "--local=/test/",
                ])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("cannot run /usr/sbin/dnsmasq (apt-get install dnsmasq-base)");
            let mut d = Self {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                child,
                dir,
            };
            d.wait_ready();
            d
        }

        /// Until it answers anything at all (it reads its files first).
        fn wait_ready(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            let probe = Resolver::new(Some(&[self.addr]), Duration::from_millis(100)).unwrap();
            let q = host("ready.probe.test", 1);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = self.child.try_wait() {
                    let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
                    panic!("dnsmasq exited ({status}):\n{log}");
                }
                match probe.resolve(&q) {
                    Ok(_) | Err(DnsError::ServFail { .. } | DnsError::Refused { .. }) => return,
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            panic!("dnsmasq on {} does not answer", self.addr);
        }

        fn resolver(&self) -> Resolver {
            Resolver::new(Some(&[self.addr]), QUICK).unwrap()
        }

        /// Rewrites the hosts file and tells dnsmasq to read it again.
        fn set_hosts(&self, hosts: &str) {
            let tmp = self.dir.join("hosts.new");
            std::fs::write(&tmp, hosts).unwrap();
            std::fs::rename(&tmp, self.dir.join("hosts")).unwrap();
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
        }
    }

    impl Drop for Dnsmasq {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn host(name: &str, port: u16) -> Query {
        Query::Host {
            name: name.into(),
            port,
        }
    }

    fn srv(name: &str) -> Query {
        Query::Srv { name: name.into() }
    }

    fn rec(address: &str, weight: u32) -> Record {
        Record {
            address: address.parse().unwrap(),
            weight,
        }
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_and_aaaa_records_sorted_with_their_ttl() {
        let hosts = "127.0.0.3 web.test\n127.0.0.2 web.test\n::1 web.test\n\
                     127.0.0.4 v4.test\n::4 v6.test\n";
        let d = Dnsmasq::start(hosts, &["--local-ttl=7"]);
        let r = d.resolver();
        let a = r.resolve(&host("web.test", 8080)).unwrap();
        let want = vec![
            rec("127.0.0.2:8080", 1),
            rec("127.0.0.3:8080", 1),
            rec("[::1]:8080", 1),
        ];
        assert_eq!(
            a,
            Answer {
                records: want,
                ttl: secs(7)
            }
        );
        // One family only: the other's NODATA adds nothing.
        let a = r.resolve(&host("v4.test", 80)).unwrap();
        assert_eq!(a.records, vec![rec("127.0.0.4:80", 1)]);
        assert_eq!(a.ttl, secs(7));
        let a = r.resolve(&host("v6.test.", 80)).unwrap();
        assert_eq!(a.records, vec![rec("[::4]:80", 1)]);
    }

    #[test]
    fn srv_uses_the_lowest_priority_that_resolves() {
        let hosts = "127.0.0.11 a.test\n127.0.0.12 b.test\n127.0.0.13 c.test\n::13 c.test\n";
        let d = Dnsmasq::start(
            hosts,
            &[
                "--local-ttl=30",
                // Priority 1: its only target does not resolve.
                "--srv-host=_http._tcp.web.test,gone.test,8080,1,9",
                "--srv-host=_http._tcp.web.test,a.test,8081,10,5",
                "--srv-host=_http._tcp.web.test,b.test,8082,10,0",
                "--srv-host=_http._tcp.web.test,c.test,8083,20,7",
                // Only a backup priority; a target with A and AAAA.
                "--srv-host=_backup._tcp.web.test,c.test,9000,20,7",
                // The same target and port twice: one backend, weights summed.
                "--srv-host=_twice._tcp.web.test,a.test,9001,0,3",
                "--srv-host=_twice._tcp.web.test,a.test,9001,0,4",
            ],
        );
        let r = d.resolver();
        let a = r.resolve(&srv("_http._tcp.web.test")).unwrap();
        let want = vec![rec("127.0.0.11:8081", 5), rec("127.0.0.12:8082", 1)];
        assert_eq!(
            a,
            Answer {
                records: want,
                ttl: secs(30)
            }
        );
        let a = r.resolve(&srv("_backup._tcp.web.test")).unwrap();
        let want = vec![rec("127.0.0.13:9000", 7), rec("[::13]:9000", 7)];
        assert_eq!(a.records, want);
        let a = r.resolve(&srv("_twice._tcp.web.test")).unwrap();
        assert_eq!(a.records, vec![rec("127.0.0.11:9001", 7)]);
    }

    #[test]
    fn nxdomain_and_nodata_are_empty_answers() {
        let d = Dnsmasq::start(
            "127.0.0.2 web.test\n",
            // No target: "." (the service is decidedly not available).
            &[
                "--srv-host=_none._tcp.web.test",
                "--srv-host=_gone._tcp.web.test,gone.test,80",
            ],
        );
        let r = d.resolver();
        let empty = Answer {
            records: vec![],
            ttl: Duration::ZERO,
        };
        // NXDOMAIN (dnsmasq sends no SOA for its local names: TTL 0).
        assert_eq!(r.resolve(&host("nope.test", 80)).unwrap(), empty);
        assert_eq!(r.resolve(&srv("_nope._tcp.web.test")).unwrap(), empty);
        // NOERROR without SRV records.
        assert_eq!(r.resolve(&srv("web.test")).unwrap(), empty);
        // SRV records whose targets are "." or do not resolve.
        assert!(r
            .resolve(&srv("_none._tcp.web.test"))
            .unwrap()
            .records
            .is_empty());
        assert!(r
            .resolve(&srv("_gone._tcp.web.test"))
            .unwrap()
            .records
            .is_empty());
    }

    #[test]
    fn an_empty_answer_has_the_negative_ttl_of_the_soa() {
        // Authoritative mode: negative answers carry the zone's SOA.
        let d = Dnsmasq::start(
            "127.0.0.2 web.auth.test\n",
            &[
                "--auth-server=ns.auth.test,127.0.0.1",
                "--auth-zone=auth.test",
                "--auth-ttl=42",
            ],
        );
        let r = d.resolver();
        let a = r.resolve(&host("web.auth.test", 80)).unwrap();
        assert_eq!(a.records, vec![rec("127.0.0.2:80", 1)]);
        let a = r.resolve(&host("nope.auth.test", 80)).unwrap();
        assert_eq!(
            a,
            Answer {
                records: vec![],
                ttl: secs(42)
            }
        );
    }

    #[test]
    fn servfail_is_an_error() {
        // An unsigned upstream behind a validating dnsmasq: the front can
        // prove nothing and answers SERVFAIL.
        let upstream = Dnsmasq::start(
            "127.0.0.5 web.fail.example\n",
            &[
                "--local=/example/",
                "--srv-host=_http._tcp.fail.example,web.fail.example,80",
            ],
        );
        let server = format!("--server={}#{}", upstream.addr.ip(), upstream.addr.port());
        let front = Dnsmasq::start("", &["--dnssec", ROOT_ANCHOR, &server]);
        let r = front.resolver();
        let e = r.resolve(&host("web.fail.example", 80)).unwrap_err();
        assert!(matches!(e, DnsError::ServFail { .. }), "{e:?}");
        assert!(e.to_string().contains("web.fail.example"), "{e}");
        let e = r.resolve(&srv("_http._tcp.fail.example")).unwrap_err();
        assert!(matches!(e, DnsError::ServFail { .. }), "{e:?}");
    }

    #[test]
    fn refused_is_an_error() {
        // Outside its local domain and with no upstream, dnsmasq refuses.
        let d = Dnsmasq::start("127.0.0.2 web.test\n", &[]);
        let e = d.resolver().resolve(&host("web.example", 80)).unwrap_err();
        assert!(matches!(e, DnsError::Refused { .. }), "{e:?}");
        assert!(e.to_string().contains("web.example"), "{e}");
    }

    #[test]
    fn a_dead_nameserver_is_an_error_within_twice_the_timeout() {
        let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let r = Resolver::new(Some(&[dead]), Duration::from_millis(300)).unwrap();
        let start = Instant::now();
        let e = r.resolve(&host("web.test", 80)).unwrap_err();
        let took = start.elapsed();
        assert!(matches!(e, DnsError::Timeout { .. }), "{e:?}");
        eprintln!("dead nameserver: {e} after {took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        let e = r.resolve(&srv("_http._tcp.web.test")).unwrap_err();
        assert!(matches!(e, DnsError::Timeout { .. }), "{e:?}");
    }

    #[test]
    fn a_truncated_answer_is_read_over_tcp() {
        // 100 A records do not fit dnsmasq's 1232-byte UDP answers.
        let hosts: String = (1..=100)
            .map(|i| format!("127.0.1.{i} big.test\n"))
            .collect();
        let d = Dnsmasq::start(&hosts, &[]);
        let a = d.resolver().resolve(&host("big.test", 80)).unwrap();
        assert_eq!(a.records.len(), 100);
        assert_eq!(a.records[0], rec("127.0.1.1:80", 1));
    }

    #[test]
    fn a_nameserver_that_comes_back_is_used_again() {
        let d = Dnsmasq::start("127.0.0.2 web.test\n", &[]);
        let (addr, r) = (d.addr, d.resolver());
        let q = host("web.test", 80);
        assert!(r.resolve(&q).is_ok());
        drop(d);
        assert!(matches!(r.resolve(&q), Err(DnsError::Timeout { .. })));
        let _d = Dnsmasq::on(addr.port(), "127.0.0.3 web.test\n", &[]);
        assert_eq!(r.resolve(&q).unwrap().records, vec![rec("127.0.0.3:80", 1)]);
    }

    #[test]
    fn a_change_is_seen_on_the_next_resolve_whatever_the_ttl() {
        let d = Dnsmasq::start("127.0.0.2 web.test\n", &["--local-ttl=3600"]);
        let r = d.resolver();
        let q = host("web.test", 80);
        assert_eq!(r.resolve(&q).unwrap().records, vec![rec("127.0.0.2:80", 1)]);
        d.set_hosts("127.0.0.3 web.test\n");
        let want = vec![rec("127.0.0.3:80", 1)];
        let deadline = Instant::now() + Duration::from_secs(5);
        while r.resolve(&q).unwrap().records != want {
            assert!(Instant::now() < deadline, "the change was not seen");
            std::thread::sleep(Duration::from_millis(20));
        }
        d.set_hosts("");
        while !r.resolve(&q).unwrap().records.is_empty() {
            assert!(Instant::now() < deadline, "the removal was not seen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(Resolver::new(Some(&[]), QUICK).is_err());
        let r = Resolver::new(Some(&["127.0.0.1:1".parse().unwrap()]), QUICK).unwrap();
        let long = format!("{}.test", "a".repeat(64));
        let e = r.resolve(&host(&long, 80)).unwrap_err();
        assert!(matches!(e, DnsError::Other(_)), "{e:?}");
        assert!(e.to_string().contains(&long), "{e}");
    }

    #[test]
    fn the_system_configuration_is_read() {
        // /etc/resolv.conf: only that it builds; its nameservers may be
        // unreachable here.
        assert!(Resolver::new(None, QUICK).is_ok());
    }

    #[test]
    fn an_answer_is_sorted_with_one_record_per_address() {
        let a = Answer::new(
            vec![
                rec("[::1]:80", 1),
                rec("127.0.0.2:80", 2),
                rec("127.0.0.1:80", 3),
                rec("127.0.0.2:80", 4),
            ],
            Some(5),
        );
        let want = vec![
            rec("127.0.0.1:80", 3),
            rec("127.0.0.2:80", 6),
            rec("[::1]:80", 1),
        ];
        assert_eq!(
            a,
            Answer {
                records: want,
                ttl: secs(5)
            }
        );
        assert_eq!(Answer::new(vec![], None).ttl, Duration::ZERO);
    }
}
