//! A real dnsmasq on loopback for DNS discovery tests ([`Dnsmasq`]), and a
//! minimal A/AAAA query over UDP ([`query`]) so the harness can tell when a
//! change is being served without depending on `dig`.
//!
//! dnsmasq (Debian: `dnsmasq-base`, `/usr/sbin/dnsmasq`) runs as a plain
//! foreground process on 127.0.0.1 and a free port, answering from an
//! `addn-hosts` file, with `--user=root` (as root it would otherwise drop to
//! `nobody` and could not read the file), no upstream and `test.` a local
//! domain: an unknown name under `test.` is NXDOMAIN, a known name without
//! the asked type is NOERROR with no records, and a name outside `test.`
//! (not in the file) is REFUSED. SRV records come from `--srv-host=` in the
//! extra arguments; see `man dnsmasq`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const DNSMASQ: &str = "/usr/sbin/dnsmasq";
/// How long dnsmasq gets to answer after a start or a hosts change.
const SETTLE: Duration = Duration::from_secs(10);

/// Record type A.
pub const A: u16 = 1;
/// Record type AAAA.
pub const AAAA: u16 = 28;

/// A dnsmasq process; killed on drop.
pub struct Dnsmasq {
    /// Where it answers (UDP and TCP), the same across [`Dnsmasq::restart`].
    pub addr: SocketAddr,
    child: Option<Child>,
    dir: PathBuf,
    /// The hosts file's contents as last written.
    hosts: Mutex<String>,
}

impl Dnsmasq {
    /// Starts dnsmasq answering from `hosts` (an addn-hosts file:
    /// `"127.0.0.2 web.test\n::1 web.test\n"`) with `extra_args` added;
    /// returns once it answers.
    pub fn start(hosts: &str, extra_args: &[&str]) -> Dnsmasq {
        let dir = super::unique_temp_dir("dnsmasq");
        fs::write(dir.join("hosts"), hosts).expect("write the hosts file");
        let mut d = Dnsmasq {
            addr: SocketAddr::from(([127, 0, 0, 1], free_udp_tcp_port())),
            child: None,
            dir,
            hosts: Mutex::new(hosts.to_owned()),
        };
        d.spawn(extra_args);
        d
    }

    /// Rewrites the hosts file (atomically) and SIGHUPs dnsmasq, which
    /// re-reads it; returns once every name of the old or the new file
    /// gets exactly the new file's A and AAAA addresses.
    pub fn set_hosts(&self, hosts: &str) {
        let mut current = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        let tmp = self.dir.join("hosts.new");
        fs::write(&tmp, hosts).expect("write the hosts file");
        fs::rename(&tmp, self.dir.join("hosts")).expect("replace the hosts file");
        let Some(child) = &self.child else {
            // Stopped: a restart reads the new file.
            *current = hosts.to_owned();
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP dnsmasq");
        let want = parse_hosts(hosts);
        let mut names: BTreeSet<String> = parse_hosts(&current).into_keys().collect();
        names.extend(want.keys().cloned());
        *current = hosts.to_owned();
        drop(current);
        let deadline = Instant::now() + SETTLE;
        for name in names {
            let want = want.get(&name).cloned().unwrap_or_default();
            while self.addresses(&name).as_ref() != Some(&want) {
                assert!(
                    Instant::now() < deadline,
                    "dnsmasq does not serve {name} = {want:?} after SIGHUP:\n{}",
                    self.log()
                );
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Kills dnsmasq and starts it again on the same port and hosts file,
    /// with `extra_args` instead of the previous ones (SRV changes).
    pub fn restart(&mut self, extra_args: &[&str]) {
        self.stop();
        self.spawn(extra_args);
    }

    /// Kills dnsmasq: nothing answers on [`Dnsmasq::addr`] any more.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What dnsmasq wrote on stderr (add `--log-queries` to see queries).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }

    /// Runs dnsmasq and waits until it answers; retries a start that lost
    /// the port to a socket still closing.
    fn spawn(&mut self, extra_args: &[&str]) {
        let deadline = Instant::now() + SETTLE;
        loop {
            let mut child = self.command(extra_args);
            match self.wait_ready(&mut child, deadline) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(50)),
                Err(why) => panic!("dnsmasq on {}: {why}:\n{}", self.addr, self.log()),
            }
        }
    }

    fn command(&self, extra_args: &[&str]) -> Child {
        let log = fs::File::create(self.dir.join("log")).expect("create the dnsmasq log");
        Command::new(DNSMASQ)
            .args(["--keep-in-foreground", "--no-resolv", "--no-hosts"])
            .arg(format!("--addn-hosts={}", self.dir.join("hosts").display()))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .arg(format!("--port={}", self.addr.port()))
            .args([
                "--user=root",
                "--pid-file=",
                "--log-facility=-",
                "--local=/test/",
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot run /usr/sbin/dnsmasq (apt-get install dnsmasq-base)")
    }

    /// Until `child` answers a query (any answer: it reads its files
    /// before it serves), or exits, or `deadline`.
    fn wait_ready(&self, child: &mut Child, deadline: Instant) -> Result<(), String> {
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status})"));
            }
            if query(self.addr, "ready.probe.test", A).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err("does not answer".into());
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// `name`'s A and AAAA addresses as served now; None if either query
    /// got no usable answer. NXDOMAIN and REFUSED count as no addresses.
    fn addresses(&self, name: &str) -> Option<BTreeSet<IpAddr>> {
        let mut all = BTreeSet::new();
        for rtype in [A, AAAA] {
            let reply = query(self.addr, name, rtype).ok()?;
            if !matches!(reply.rcode, 0 | 3 | 5) {
                return None;
            }
            all.extend(reply.addrs);
        }
        Some(all)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A port free on 127.0.0.1 for both UDP and TCP a moment ago (dnsmasq
/// listens on both).
fn free_udp_tcp_port() -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind UDP 127.0.0.1:0");
        let port = udp.local_addr().expect("local_addr").port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Name → addresses, from hosts-file text.
fn parse_hosts(hosts: &str) -> BTreeMap<String, BTreeSet<IpAddr>> {
    let mut map: BTreeMap<String, BTreeSet<IpAddr>> = BTreeMap::new();
    for line in hosts.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(Ok(ip)) = words.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in words {
            map.entry(name.to_ascii_lowercase()).or_default().insert(ip);
        }
    }
    map
}

/// What [`query`] got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The response code: 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN, 5 REFUSED.
    pub rcode: u8,
    /// The addresses of the asked type in the answer section.
    pub addrs: Vec<IpAddr>,
}

/// One `rtype` ([`A`] or [`AAAA`]) query for `name` to `server` over UDP,
/// 200 ms to answer; an error if nothing (or garbage) came back.
pub fn query(server: SocketAddr, name: &str, rtype: u16) -> io::Result<Reply> {
    let id = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u16);
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    sock.connect(server)?;
    sock.send(&encode(id, name, rtype))?;
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf)?;
        if let Some(reply) = decode(&buf[..n], id, rtype) {
            return Ok(reply);
        }
    }
}

/// A query message: header (recursion desired), one question, class IN.
fn encode(id: u16, name: &str, rtype: u16) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.trim_end_matches('.').split('.') {
        m.push(label.len() as u8);
        m.extend_from_slice(label.as_bytes());
    }
    m.push(0);
    m.extend_from_slice(&rtype.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m
}

/// The reply to query `id`, or None if `msg` is not one.
fn decode(msg: &[u8], id: u16, rtype: u16) -> Option<Reply> {
    let u16_at = |i: usize| Some(u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]));
    if u16_at(0)? != id || msg.get(2)? & 0x80 == 0 {
        return None;
    }
    let rcode = msg.get(3)? & 0x0f;
    let (questions, answers) = (u16_at(4)?, u16_at(6)?);
    let mut at = 12;
    for _ in 0..questions {
        at = skip_name(msg, at)? + 4;
    }
    let mut addrs = Vec::new();
    for _ in 0..answers {
        at = skip_name(msg, at)?;
        let (t, len) = (u16_at(at)?, usize::from(u16_at(at + 8)?));
        let data = msg.get(at + 10..at + 10 + len)?;
        at += 10 + len;
        match (t == rtype, data.len()) {
            (true, 4) => addrs.push(IpAddr::V4(Ipv4Addr::new(
                data[0], data[1], data[2], data[3],
            ))),
            (true, 16) => {
                let octets: [u8; 16] = data.try_into().ok()?;
                addrs.push(IpAddr::V6(Ipv6Addr::from(octets)));
            }
            _ => {}
        }
    }
    Some(Reply { rcode, addrs })
}

/// The offset just past the (possibly compressed) name at `at`.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l => at += 1 + usize::from(l),
        }
    }
}
