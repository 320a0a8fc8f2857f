//! TLS configuration: rustls server configs for listeners, client configs for
//! upstream groups, built from `conf.yaml`.
//!
//! Crypto provider: rustls's `ring` provider (no C toolchain beyond what ring
//! needs, lighter to build than aws-lc-rs; `--features aws-lc` builds the
//! other, which measured no cheaper, see tuning.md §13). TLS 1.2 and 1.3
//! with rustls's defaults (no CBC, no RSA key exchange, no renegotiation);
//! listeners pick the cipher suite in their own order, SHA-256 suites first
//! ([`server_rank`]). Listeners advertise ALPN `h2, http/1.1` (`http/1.1`
//! alone with `http2: false`) and pick a certificate by SNI, falling back
//! to the default (the listener's own `cert_file`). Upstream connections
//! verify the backend certificate for the group's `sni` name against
//! `ca_file` or the built-in webpki root set, send SNI, and resume sessions
//! on reconnect.
//!
//! Every worker builds its *own* `ServerConfig`/`ClientConfig` from the
//! shared [`TlsMaterial`], so session caches are per worker and no handshake
//! ever takes a lock another core holds. Listeners resume sessions with
//! stateless tickets ([`Tickets`], TLS 1.2 and 1.3): one random key per
//! process, copied into every worker's ticketer, so a ticket from one worker
//! resumes on any other (SO_REUSEPORT spreads a client's connections over
//! workers, which a per-worker session cache could not follow); TLS 1.2
//! clients without tickets resume from the worker's session-id cache. Loading happens once at start (and
//! under `-t`): a bad PEM file or a key that does not match its certificate is
//! an error naming the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// A TLS file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read or holds no usable PEM item.
    #[error("{key}: {path}: {reason}")]
    File {
        /// Config key naming the file.
        key: String,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material.
    #[error("{key}: {reason}")]
    Rustls {
        /// Config key.
        key: String,
        /// rustls's message.
        reason: String,
    },
}

fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc")]
    use rustls::crypto::aws_lc_rs::default_provider;
    #[cfg(not(feature = "aws-lc"))]
    use rustls::crypto::ring::default_provider;
    Arc::new(default_provider())
}

/// The provider for listeners: its cipher suites in lbd's order, which
/// listeners use instead of the client's ([`server_config`]).
fn server_provider() -> Arc<CryptoProvider> {
    let mut p = Arc::unwrap_or_clone(provider());
    p.cipher_suites.sort_by_key(server_rank);
    Arc::new(p)
}

/// Listeners prefer suites with SHA-256 (AES-128-GCM, then ChaCha20), then
/// AES-256-GCM with SHA-384, as HAProxy does by default. OpenSSL clients
/// list AES-256-GCM-SHA384 first, and SHA-384 (no CPU instructions for it,
/// where SHA-256 has them) was 12% of a full handshake's CPU in a `perf`
/// profile (tuning.md §13).
fn server_rank(s: &rustls::SupportedCipherSuite) -> u8 {
    use rustls::CipherSuite as C;
    match s.suite() {
        C::TLS13_AES_128_GCM_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 0,
        C::TLS13_CHACHA20_POLY1305_SHA256
        | C::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | C::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => 1,
        _ => 2,
    }
}

fn file_err(key: &str, path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        key: key.to_string(),
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Loads a PEM certificate chain (leaf first).
pub fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(key, path, e))?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(key, path, format!("invalid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(file_err(key, path, "no CERTIFICATE found in PEM file"));
    }
    Ok(certs)
}

/// Loads a PEM private key (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| file_err(key, path, e))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| file_err(key, path, format!("no usable private key: {e}")))
}

/// One certificate with its key, checked to match.
fn certified_key(
    cert_key: &str,
    cert_path: &Path,
    key_key: &str,
    key_path: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs = load_certs(cert_key, cert_path)?;
    let key = load_key(key_key, key_path)?;
    let ck = CertifiedKey::from_der(certs, key, &provider()).map_err(|e| TlsError::Rustls {
        key: key_key.to_string(),
        reason: format!(
            "{} does not match the certificate in {} ({e})",
            key_path.display(),
            cert_path.display()
        ),
    })?;
    Ok(Arc::new(ck))
}

/// Picks a certificate by SNI (exact, case-insensitive), else the default.
#[derive(Debug)]
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: Vec<(String, Arc<CertifiedKey>)>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            if let Some((_, ck)) = self
                .by_name
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
            {
                return Some(ck.clone());
            }
        }
        Some(self.default.clone())
    }
}

/// An extra certificate chosen by SNI.
#[derive(Debug, Clone)]
pub struct SniCert {
    /// Names (exact) that select it.
    pub names: Vec<String>,
    /// PEM chain.
    pub cert_file: PathBuf,
    /// PEM key.
    pub key_file: PathBuf,
}

/// A listener's `tls:` block.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Default certificate chain.
    pub cert_file: PathBuf,
    /// Its key.
    pub key_file: PathBuf,
    /// More certificates by SNI.
    pub sni: Vec<SniCert>,
    /// Resume sessions with stateless tickets (default true).
    pub session_tickets: bool,
}

/// An upstream group's `tls:` block.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    /// SNI and verification name.
    pub sni: String,
    /// CA bundle; `None` = webpki roots.
    pub ca_file: Option<PathBuf>,
    /// Verify the certificate (default true).
    pub verify: bool,
}

/// Loaded, validated TLS material, shared read-only; workers build their own
/// rustls configs from it.
#[derive(Debug, Clone)]
pub enum TlsMaterial {
    /// Listener side.
    Server {
        /// The default key.
        default: Arc<CertifiedKey>,
        /// Keys by SNI name.
        by_name: Vec<(String, Arc<CertifiedKey>)>,
        /// The session-ticket key, when tickets are on.
        tickets: Option<TicketKey>,
    },
    /// Upstream side.
    Client {
        /// Trust anchors.
        roots: Arc<RootCertStore>,
        /// Verification name / SNI.
        server_name: ServerName<'static>,
        /// Verify certificates.
        verify: bool,
    },
}

/// Loads a listener's certificates (validating everything).
pub fn load_listener(index: usize, t: &ListenerTls) -> Result<TlsMaterial, TlsError> {
    let k = |f: &str| format!("listeners[{index}].tls.{f}");
    let default = certified_key(&k("cert_file"), &t.cert_file, &k("key_file"), &t.key_file)?;
    let mut by_name = Vec::new();
    for (j, s) in t.sni.iter().enumerate() {
        let kk = |f: &str| format!("listeners[{index}].tls.sni[{j}].{f}");
        let ck = certified_key(&kk("cert_file"), &s.cert_file, &kk("key_file"), &s.key_file)?;
        for n in &s.names {
            by_name.push((n.clone(), ck.clone()));
        }
    }
    let tickets = match t.session_tickets {
        true => Some(TicketKey::random().map_err(|reason| TlsError::Rustls {
            key: k("session_tickets"),
            reason,
        })?),
        false => None,
    };
    Ok(TlsMaterial::Server {
        default,
        by_name,
        tickets,
    })
}

/// Loads an upstream group's trust anchors.
pub fn load_upstream(group: &str, t: &UpstreamTls) -> Result<TlsMaterial, TlsError> {
    let k = |f: &str| format!("upstreams.{group}.tls.{f}");
    let mut roots = RootCertStore::empty();
    match &t.ca_file {
        Some(p) => {
            for c in load_certs(&k("ca_file"), p)? {
                roots.add(c).map_err(|e| {
                    file_err(&k("ca_file"), p, format!("unusable CA certificate: {e}"))
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let server_name = ServerName::try_from(t.sni.clone()).map_err(|e| TlsError::Rustls {
        key: k("sni"),
        reason: format!("`{}` is not a valid server name: {e}", t.sni),
    })?;
    Ok(TlsMaterial::Client {
        roots: Arc::new(roots),
        server_name,
        verify: t.verify,
    })
}

/// Which certificate a listener's SNI resolver picks for `name` (exact,
/// case-insensitive, else the default), as an identity to compare: two
/// names pick the same certificate exactly when these are equal.
pub fn certificate_for(m: &TlsMaterial, name: Option<&[u8]>) -> usize {
    let TlsMaterial::Server {
        default, by_name, ..
    } = m
    else {
        return 0;
    };
    let ck = name
        .and_then(|n| {
            by_name
                .iter()
                .find(|(k, _)| k.as_bytes().eq_ignore_ascii_case(n))
        })
        .map_or(default, |(_, ck)| ck);
    Arc::as_ptr(ck) as usize
}

/// True when the listener has certificates chosen by SNI (so a request
/// can name another certificate than its connection's).
pub fn has_sni_certificates(m: &TlsMaterial) -> bool {
    matches!(m, TlsMaterial::Server { by_name, .. } if !by_name.is_empty())
}

/// Builds a worker's own server config; ALPN offers `h2` first when
/// `http2` (the listener serves HTTP/2), then `http/1.1`.
pub fn server_config(m: &TlsMaterial, http2: bool) -> Option<Arc<ServerConfig>> {
    let TlsMaterial::Server {
        default,
        by_name,
        tickets,
    } = m
    else {
        return None;
    };
    let resolver = SniResolver {
        default: default.clone(),
        by_name: by_name.clone(),
    };
    let mut cfg = ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    cfg.ignore_client_order = true;
    cfg.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if let Some(key) = tickets {
        cfg.ticketer = Arc::new(Tickets::new(key));
    }
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    Some(Arc::new(cfg))
}

/// Sessions a worker keeps for TLS 1.2 session-id resumption (rustls's
/// default is 256; a few hundred bytes each).
const SESSION_CACHE: usize = 4096;

/// How long a ticket is valid (the hint sent to clients, and checked by
/// rustls on resumption): rustls's own ticketer uses 6 hours.
const TICKET_LIFETIME_S: u32 = 6 * 3600;

/// A listener's session-ticket key: 32 random bytes drawn once at load, the
/// same in every worker. Never printed.
#[derive(Clone)]
pub struct TicketKey(Arc<[u8; 32]>);

impl TicketKey {
    fn random() -> Result<Self, String> {
        let mut k = [0u8; 32];
        provider()
            .secure_random
            .fill(&mut k)
            .map_err(|_| "no random bytes for the session-ticket key".to_owned())?;
        Ok(TicketKey(Arc::new(k)))
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

/// A worker's ticketer: ChaCha20-Poly1305 under the listener's
/// [`TicketKey`], a random nonce per ticket (`nonce ‖ ciphertext ‖ tag`).
/// Its own copy of the key, no lock, nothing shared with other workers.
pub struct Tickets {
    key: ring::aead::LessSafeKey,
    rng: ring::rand::SystemRandom,
}

impl Tickets {
    fn new(key: &TicketKey) -> Self {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key.0[..])
            .unwrap_or_else(|_| unreachable!("a 32-byte key fits ChaCha20-Poly1305"));
        Tickets {
            key: ring::aead::LessSafeKey::new(unbound),
            rng: ring::rand::SystemRandom::new(),
        }
    }
}

impl fmt::Debug for Tickets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Tickets(..)")
    }
}

impl rustls::server::ProducesTickets for Tickets {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        TICKET_LIFETIME_S
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        use ring::aead::{Aad, Nonce, NONCE_LEN};
        use ring::rand::SecureRandom;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NONCE_LEN + plain.len() + self.key.algorithm().tag_len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[NONCE_LEN..],
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        use ring::aead::{Aad, Nonce, NONCE_LEN};
        let (nonce, sealed) = cipher.split_at_checked(NONCE_LEN)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain_len = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .ok()?
            .len();
        buf.truncate(plain_len);
        Some(buf)
    }
}

/// Builds a worker's own client config (its own session cache).
pub fn client_config(m: &TlsMaterial) -> Option<(Arc<ClientConfig>, ServerName<'static>)> {
    let TlsMaterial::Client {
        roots,
        server_name,
        verify,
    } = m
    else {
        return None;
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .ok()?;
    let mut cfg = if *verify {
        builder
            .with_root_certificates(roots.clone())
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider())))
            .with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Some((Arc::new(cfg), server_name.clone()))
}

/// `verify: false`: accepts any certificate (signatures still checked so the
/// handshake is well-formed). Start-up logs a loud warning.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
