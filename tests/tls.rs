//! TLS against the real binary: HTTPS upstreams with SNI and a rewritten
//! Host, verification, pooled TLS connections, TLS listeners with SNI.
//! Certificates are generated here with rcgen; origins speak rustls.

mod support;

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use support::{free_port, read_response, unique_temp_dir, LbdConf};

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test CA that writes its certificate and issued leaves to `dir`.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        fs::write(dir.join(format!("{name}-ca.pem")), issuer.pem()).unwrap();
        Ca {
            issuer,
            dir: dir.to_owned(),
            name: name.to_string(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join(format!("{}-ca.pem", self.name))
    }

    /// Issues a leaf for `dns`; returns (cert file, key file).
    fn leaf(&self, dns: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![dns.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        let c = self.dir.join(format!("{}-{dns}.crt", self.name));
        let k = self.dir.join(format!("{}-{dns}.key", self.name));
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

fn server_config(cert: &Path, key: &Path) -> Arc<rustls::ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    Arc::new(
        rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
    )
}

/// The certificates of the CA file `ca`, as a client's trust roots.
fn roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    roots
}

/// lbd (as `conf` shapes it) with a TLS listener whose certificate names
/// `lb.test`, in front of a plain origin: lbd, the CA file, the origin.
fn tls_front(
    tag: &str,
    conf: impl FnOnce(LbdConf) -> LbdConf,
) -> (support::Lbd, PathBuf, support::Origin) {
    let ca = Ca::new(&unique_temp_dir(&format!("tls-{tag}")), tag);
    let (cert, key) = ca.leaf("lb.test");
    let origin = support::Origin::start("plain");
    let lbd = conf(LbdConf::front(&[origin.port]))
        .listener_extra(&format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            cert.display(),
            key.display()
        ))
        .start();
    (lbd, ca.ca_file(), origin)
}

fn client_config(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

/// (SNI, Host) of every request an origin received.
type Seen = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// A keep-alive HTTPS origin: counts handshakes, records SNI and Host.
struct TlsOrigin {
    port: u16,
    handshakes: Arc<AtomicUsize>,
    resumed: Arc<AtomicUsize>,
    requests: Arc<AtomicUsize>,
    seen: Seen,
}

impl TlsOrigin {
    fn start(config: Arc<rustls::ServerConfig>) -> TlsOrigin {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let o = TlsOrigin {
            port,
            handshakes: Arc::new(AtomicUsize::new(0)),
            resumed: Arc::new(AtomicUsize::new(0)),
            requests: Arc::new(AtomicUsize::new(0)),
            seen: Arc::new(Mutex::new(Vec::new())),
        };
        let (hs, rq, seen) = (o.handshakes.clone(), o.requests.clone(), o.seen.clone());
        let resumed = o.resumed.clone();
        thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (config, hs, rq, seen) = (config.clone(), hs.clone(), rq.clone(), seen.clone());
                let resumed = resumed.clone();
                thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, s);
                    while tls.conn.is_handshaking() {
                        if tls.conn.complete_io(&mut tls.sock).is_err() {
                            return;
                        }
                    }
                    hs.fetch_add(1, Ordering::SeqCst);
                    if tls.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed) {
                        resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    let sni = tls.conn.server_name().map(str::to_string);
                    let mut r = BufReader::new(tls);
                    loop {
                        let mut host = String::new();
                        let mut first = true;
                        loop {
                            let mut line = String::new();
                            match r.read_line(&mut line) {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                            if line == "\r\n" {
                                break;
                            }
                            if !first {
                                if let Some((k, v)) = line.split_once(':') {
                                    if k.eq_ignore_ascii_case("host") {
                                        host = v.trim().to_string();
                                    }
                                }
                            }
                            first = false;
                        }
                        rq.fetch_add(1, Ordering::SeqCst);
                        seen.lock().unwrap().push((sni.clone(), host));
                        let body = "secure origin";
                        let resp = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        let w = r.get_mut();
                        if w.write_all(resp.as_bytes()).is_err() || w.flush().is_err() {
                            return;
                        }
                    }
                });
            }
        });
        o
    }
}

/// An HTTPS origin that answers `413` as soon as it has a request head and
/// then stops reading (an early answer to an upload); returns its port and
/// its handshake count.
fn early_tls_origin(config: Arc<rustls::ServerConfig>) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hs = Arc::new(AtomicUsize::new(0));
    let count = hs.clone();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let (config, count) = (config.clone(), count.clone());
            thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut tls = rustls::StreamOwned::new(conn, s);
                let mut head = Vec::new();
                let mut b = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let _ = tls
                    .write_all(b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 4\r\n\r\nbig!");
                let _ = tls.flush();
                thread::sleep(Duration::from_secs(15));
            });
        }
    });
    (port, hs)
}

#[test]
fn early_answer_from_a_tls_upstream_to_a_large_upload() {
    let dir = unique_temp_dir("tls-early");
    let ca = Ca::new(&dir, "early");
    let (cert, key) = ca.leaf("origin.test");
    let (port, answered) = early_tls_origin(server_config(&cert, &key));
    let lbd = secure(&[port], "origin.test", &ca.ca_file()).start();
    let body = vec![5u8; 64 << 20];
    for (i, chunked) in [false, true].into_iter().enumerate() {
        let s = TcpStream::connect(("127.0.0.1", lbd.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let head = if chunked {
            "POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
        } else {
            format!(
                "POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
        };
        let mut w = s.try_clone().unwrap();
        let payload = body.clone();
        let t = std::time::Instant::now();
        let sender = thread::spawn(move || {
            let _ = w.write_all(head.as_bytes());
            for c in payload.chunks(1 << 16) {
                let ok = if chunked {
                    w.write_all(format!("{:x}\r\n", c.len()).as_bytes()).is_ok()
                        && w.write_all(c).is_ok()
                        && w.write_all(b"\r\n").is_ok()
                } else {
                    w.write_all(c).is_ok()
                };
                if !ok {
                    return;
                }
            }
        });
        let mut r = BufReader::new(s);
        let resp = read_response(&mut r, false).expect("a response");
        assert_eq!(resp.status, 413, "chunked={chunked}");
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        drop(r);
        let _ = sender.join();
        // Not reused: each upload got its own upstream connection.
        assert_eq!(answered.load(Ordering::SeqCst), i + 1);
    }
}

fn plain_get(port: u16, host: &str) -> (u16, String) {
    let mut c = support::Client::connect(port);
    c.send(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes());
    let r = c.response();
    (r.status, r.body_str())
}

/// lbd (one worker) in front of HTTPS `backends`: group `secure`, verified
/// against `ca` for the name `sni`.
fn secure(backends: &[u16], sni: &str, ca: &Path) -> LbdConf {
    LbdConf::front(backends)
        .group("secure")
        .group_extra(&format!(
            "tls:\n  sni: {sni}\n  ca_file: {}\n",
            ca.display()
        ))
}

#[test]
fn https_upstream_with_sni_rewritten_host_and_pooled_connections() {
    let dir = unique_temp_dir("tls-up");
    let ca = Ca::new(&dir, "good");
    let (cert, key) = ca.leaf("origin.test");
    let origin = TlsOrigin::start(server_config(&cert, &key));
    let lbd = secure(&[origin.port], "origin.test", &ca.ca_file())
        .group_extra("host: origin.test")
        .start();
    let mut c = lbd.client();
    for _ in 0..10 {
        c.send(b"GET / HTTP/1.1\r\nHost: lb.local\r\n\r\n");
        let r = c.response();
        assert_eq!(r.status, 200, "{}", lbd.stderr());
        assert_eq!(r.body_str(), "secure origin");
    }
    // Ten requests, one TLS handshake: the connection was pooled and reused.
    assert_eq!(origin.requests.load(Ordering::SeqCst), 10);
    assert_eq!(origin.handshakes.load(Ordering::SeqCst), 1);
    for (sni, host) in origin.seen.lock().unwrap().iter() {
        assert_eq!(sni.as_deref(), Some("origin.test"));
        assert_eq!(host, "origin.test", "Host rewritten for the upstream");
    }
}

#[test]
fn certificate_from_another_ca_is_refused_with_502() {
    let dir = unique_temp_dir("tls-bad");
    let trusted = Ca::new(&dir, "trusted");
    let rogue = Ca::new(&dir, "rogue");
    let (cert, key) = rogue.leaf("origin.test");
    let origin = TlsOrigin::start(server_config(&cert, &key));
    let lbd = secure(&[origin.port], "origin.test", &trusted.ca_file()).start();
    let port = lbd.port;
    assert_eq!(plain_get(port, "x").0, 502);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 0);
    let log = lbd.stderr();
    assert!(log.contains("TLS handshake with upstream failed"), "{log}");
    assert!(log.to_lowercase().contains("certificate"), "{log}");
}

#[test]
fn wrong_sni_name_fails_verification() {
    let dir = unique_temp_dir("tls-name");
    let ca = Ca::new(&dir, "ca");
    let (cert, key) = ca.leaf("origin.test");
    let origin = TlsOrigin::start(server_config(&cert, &key));
    let lbd = secure(&[origin.port], "someone-else.test", &ca.ca_file()).start();
    let port = lbd.port;
    assert_eq!(plain_get(port, "x").0, 502);
}

/// Connects to lbd's TLS listener with verification against `ca` for `sni`.
fn tls_get(port: u16, ca: &Path, sni: &str) -> Result<(u16, String), String> {
    tls_get_host(port, ca, sni, sni)
}

/// [`tls_get`] with a Host header other than the SNI name.
fn tls_get_host(port: u16, ca: &Path, sni: &str, host: &str) -> Result<(u16, String), String> {
    let conn = rustls::ClientConnection::new(
        client_config(ca),
        ServerName::try_from(sni.to_string()).unwrap(),
    )
    .map_err(|e| e.to_string())?;
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, s);
    tls.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let alpn = tls.conn.alpn_protocol().map(|a| a.to_vec());
    assert_eq!(alpn.as_deref(), Some(&b"http/1.1"[..]));
    let mut r = BufReader::new(tls);
    let resp = read_response(&mut r, false).map_err(|e| e.to_string())?;
    Ok((resp.status, resp.body_str()))
}

#[test]
fn tls_listener_verifies_and_picks_certificate_by_sni() {
    let dir = unique_temp_dir("tls-lis");
    let ca = Ca::new(&dir, "lis");
    let (c1, k1) = ca.leaf("lb.test");
    let (c2, k2) = ca.leaf("other.test");
    let origin = support::Origin::start("plain");
    let lbd = LbdConf::front(&[origin.port])
        .threads(2)
        .listener_extra(&format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n  sni:\n    - names: [other.test]\n      cert_file: {}\n      key_file: {}\n",
            c1.display(),
            k1.display(),
            c2.display(),
            k2.display()
        ))
        .start();
    let port = lbd.port;
    let ca_file = ca.ca_file();
    // Default certificate for lb.test, verified like curl would.
    assert_eq!(
        tls_get(port, &ca_file, "lb.test").unwrap(),
        (200, "plain".to_string())
    );
    // SNI other.test gets the other certificate (verification for that
    // name would fail with the default one).
    assert_eq!(tls_get(port, &ca_file, "other.test").unwrap().0, 200);
    // An unknown name gets the default certificate, which does not match it.
    let e = tls_get(port, &ca_file, "unknown.test").unwrap_err();
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    // A client that does not trust this CA refuses the server.
    let other = Ca::new(&dir, "stranger");
    assert!(tls_get(port, &other.ca_file(), "lb.test").is_err());
    // A Host that names another certificate than the SNI the connection
    // was set up with is misdirected (421), and never reaches the origin;
    // case and port do not matter, and a name no certificate is chosen
    // for keeps the default one.
    let before = origin.requests();
    let (status, _) = tls_get_host(port, &ca_file, "lb.test", "other.test").unwrap();
    assert_eq!(status, 421);
    assert_eq!(
        origin.requests(),
        before,
        "a misdirected request reached the origin"
    );
    let (status, _) = tls_get_host(port, &ca_file, "other.test", "lb.test:443").unwrap();
    assert_eq!(status, 421);
    let ok = tls_get_host(port, &ca_file, "other.test", "OTHER.test:443").unwrap();
    assert_eq!(ok.0, 200);
    let ok = tls_get_host(port, &ca_file, "lb.test", "unknown.test").unwrap();
    assert_eq!(ok.0, 200);
}

#[test]
fn slow_tls_handshake_does_not_block_others() {
    let dir = unique_temp_dir("tls-slow");
    let ca = Ca::new(&dir, "slow");
    let (c1, k1) = ca.leaf("lb.test");
    let origin = support::Origin::start("plain");
    let lbd = LbdConf::front(&[origin.port])
        .listener_extra(&format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n  handshake_timeout_ms: 500\n",
            c1.display(),
            k1.display()
        ))
        .start();
    let port = lbd.port;
    // A client that connects and never says hello.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for _ in 0..5 {
        assert_eq!(tls_get(port, &ca.ca_file(), "lb.test").unwrap().0, 200);
    }
    // And it is dropped after the handshake timeout.
    idle.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut b = [0u8; 1];
    assert!(matches!(idle.read(&mut b), Ok(0) | Err(_)));
}

#[test]
fn bad_certificate_files_are_start_errors_naming_the_file() {
    let dir = unique_temp_dir("tls-cfg");
    let ca = Ca::new(&dir, "cfg");
    let (c1, k1) = ca.leaf("lb.test");
    let (_c2, k2) = ca.leaf("mismatch.test");
    let junk = dir.join("junk.pem");
    fs::write(&junk, "this is not PEM").unwrap();
    let base = |cert: &Path, key: &Path| {
        LbdConf::new(free_port())
            .backends(&[1])
            .listener_extra(&format!(
                "tls:\n  cert_file: {}\n  key_file: {}\n",
                cert.display(),
                key.display()
            ))
    };
    let (status, err) = base(&junk, &k1).expect_failure();
    assert!(!status.success());
    assert!(
        err.contains("listeners[0].tls.cert_file") && err.contains("junk.pem"),
        "{err}"
    );
    let (_, err) = base(&c1, &k2).expect_failure();
    assert!(
        err.contains("key_file") && err.contains("does not match"),
        "{err}"
    );
    let (_, err) = base(&c1, &dir.join("missing.key")).expect_failure();
    assert!(err.contains("missing.key"), "{err}");
    // The same under -t.
    let conf = dir.join("t.yaml");
    fs::write(&conf, base(&c1, &k2).yaml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lbd"))
        .arg("-c")
        .arg(&conf)
        .arg("-t")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
}

#[test]
fn reconnects_resume_the_tls_session() {
    let dir = unique_temp_dir("tls-res");
    let ca = Ca::new(&dir, "res");
    let (cert, key) = ca.leaf("origin.test");
    let origin = TlsOrigin::start(server_config(&cert, &key));
    // No pooling: every request needs a new upstream connection.
    let lbd = secure(&[origin.port], "origin.test", &ca.ca_file())
        .top("upstream_keepalive_pool_size: 0")
        .start();
    let port = lbd.port;
    for _ in 0..4 {
        assert_eq!(plain_get(port, "x").0, 200);
    }
    assert_eq!(origin.handshakes.load(Ordering::SeqCst), 4);
    assert!(
        origin.resumed.load(Ordering::SeqCst) >= 3,
        "resumed {}",
        origin.resumed.load(Ordering::SeqCst)
    );
}

#[test]
fn tls_health_check_does_the_handshake() {
    let dir = unique_temp_dir("tls-hc");
    let trusted = Ca::new(&dir, "hc");
    let rogue = Ca::new(&dir, "hcrogue");
    let (gc, gk) = trusted.leaf("origin.test");
    let (rc, rk) = rogue.leaf("origin.test");
    let good = TlsOrigin::start(server_config(&gc, &gk));
    let bad = TlsOrigin::start(server_config(&rc, &rk));
    let lbd = secure(&[bad.port, good.port], "origin.test", &trusted.ca_file())
        .health_check(&[
            ("kind", "tcp"),
            ("interval_ms", "200"),
            ("timeout_ms", "500"),
        ])
        .start();
    let port = lbd.port;
    for _ in 0..6 {
        assert_eq!(plain_get(port, "x").0, 200);
    }
    assert_eq!(bad.requests.load(Ordering::SeqCst), 0);
    let log = lbd.stderr();
    assert!(
        log.contains(&format!(
            "127.0.0.1:{} is unhealthy: TLS handshake",
            bad.port
        )),
        "{log}"
    );
}

/// One HTTPS GET with `cfg` (its session cache kept between calls): how the
/// handshake went.
fn tls_get_with(port: u16, cfg: &Arc<rustls::ClientConfig>) -> Option<rustls::HandshakeKind> {
    let conn = rustls::ClientConnection::new(cfg.clone(), ServerName::try_from("lb.test").unwrap())
        .unwrap();
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, s);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n")
        .unwrap();
    let kind = tls.conn.handshake_kind();
    let mut r = BufReader::new(tls);
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    kind
}

#[test]
fn sessions_resume_on_any_worker_with_tickets() {
    let (lbd, ca_file, _origin) = tls_front("resume", |c| c.threads(2));
    for versions in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let cfg = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[versions])
                .unwrap()
                .with_root_certificates(roots(&ca_file))
                .with_no_client_auth(),
        );
        // SO_REUSEPORT spreads these connections over both workers (all on
        // one would take 2^-11 luck): each resumes, whichever worker
        // issued the ticket.
        let kinds: Vec<_> = (0..12).map(|_| tls_get_with(lbd.port, &cfg)).collect();
        assert_eq!(kinds[0], Some(rustls::HandshakeKind::Full), "{versions:?}");
        assert!(
            kinds[1..]
                .iter()
                .all(|k| *k == Some(rustls::HandshakeKind::Resumed)),
            "{versions:?}: {kinds:?}"
        );
    }
}

#[test]
fn session_tickets_can_be_turned_off_and_a_bad_value_names_the_key() {
    let dir = unique_temp_dir("tls-noticket");
    let ca = Ca::new(&dir, "noticket");
    let (cert, key) = ca.leaf("lb.test");
    let origin = support::Origin::start("plain");
    let tls = |v: &str| {
        format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n  session_tickets: {v}\n",
            cert.display(),
            key.display()
        )
    };
    let lbd = LbdConf::front(&[origin.port])
        .listener_extra(&tls("false"))
        .start();
    assert_eq!(tls_get(lbd.port, &ca.ca_file(), "lb.test").unwrap().0, 200);
    let (_, err) = LbdConf::front(&[origin.port])
        .listener_extra(&tls("sometimes"))
        .expect_failure();
    assert!(err.contains("session_tickets"), "{err}");
}

#[test]
fn a_closing_tls_connection_ends_with_close_notify() {
    // Without close_notify, OpenSSL 3 clients report "unexpected eof" and
    // never resume the session; rustls reports UnexpectedEof on read.
    let (lbd, ca_file, _origin) = tls_front("close", |c| c);
    let conn = rustls::ClientConnection::new(
        client_config(&ca_file),
        ServerName::try_from("lb.test").unwrap(),
    )
    .unwrap();
    let s = TcpStream::connect(("127.0.0.1", lbd.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, s);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    let read = std::io::Read::read_to_end(&mut tls, &mut all);
    assert!(read.is_ok(), "a clean TLS end expected: {read:?}");
    assert!(all.starts_with(b"HTTP/1.1 200"), "{all:?}");
}

/// The suite a client offering `suites` (in its order of preference)
/// gets from `port`.
fn negotiated(
    port: u16,
    ca: &Path,
    suites: &[rustls::SupportedCipherSuite],
) -> rustls::CipherSuite {
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites = suites.to_vec();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(p))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(ca))
        .with_no_client_auth();
    let name = ServerName::try_from("lb.test").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, s);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: lb.test\r\n\r\n")
        .unwrap();
    let resp = read_response(&mut BufReader::new(&mut tls), false).unwrap();
    assert_eq!(resp.status, 200);
    tls.conn.negotiated_cipher_suite().unwrap().suite()
}

/// Listeners choose the suite in their own order, SHA-256 suites first
/// (what OpenSSL clients list first, AES-256-GCM-SHA384, costs more per
/// handshake), among those the client offers.
#[test]
fn listeners_prefer_sha256_suites_over_the_client_order() {
    use rustls::crypto::ring::cipher_suite as cs;
    let (lbd, ca, _origin) = tls_front("suite", |c| c);
    let port = lbd.port;
    let openssl_order = [
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
        cs::TLS13_AES_128_GCM_SHA256,
    ];
    assert_eq!(
        negotiated(port, &ca, &openssl_order),
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
    );
    // A client without AES-128 keeps the ChaCha20 it offers.
    assert_eq!(
        negotiated(port, &ca, &openssl_order[..2]),
        rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
    );
    // Only AES-256: still served.
    assert_eq!(
        negotiated(port, &ca, &openssl_order[..1]),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
    );
    let tls12 = [
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    assert_eq!(
        negotiated(port, &ca, &tls12),
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
}
