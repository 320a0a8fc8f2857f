//! The PROXY protocol (HAProxy's, v1 text and v2 binary), sans-I/O: the
//! header a connection from a load balancer in front of lbd starts with, and
//! the one lbd sends in front of its own upstream connections.
//!
//! [`parse`] takes the bytes buffered so far from a client and says: more
//! bytes are needed, here is a complete header (its length, so what follows
//! it stays with the connection, and the client address it carries), or the
//! connection must be refused and why ([`PpError`]). The grammar is the `ppp`
//! crate's (v1 and v2, as HAProxy's `proxy-protocol.txt` specifies); this
//! module adds what a server reading from a socket needs on top of it:
//! * a v1 header is a line: lbd waits for its `\n` (within the 107 bytes the
//!   specification allows) and only then hands the whole line to ppp, whose
//!   own partial-input answers do not fit a socket read loop (it refuses a
//!   line cut right after the space before a port, and calls a complete
//!   line with a field missing incomplete);
//! * a v2 header longer than [`MAX_HEADER_LEN`] (its TLVs included) is
//!   refused before its bytes arrive;
//! * v2 `LOCAL`, v1 `UNKNOWN`, an unspecified or Unix address family or an
//!   unspecified transport carry no client address ([`Header::source`] is
//!   `None`: the connection's own peer stands), as the specification says a
//!   receiver must treat them; a v2 header for a datagram transport is
//!   malformed (a TCP connection cannot carry one).
//!
//! [`write_v1`] and [`write_v2`] write the header lbd sends upstream, and
//! [`write_local`] the address-less one its health checks send. Nothing here
//! allocates.

use std::net::{IpAddr, SocketAddr};

use ppp::PartialResult;

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// The text form (`PROXY TCP4 … \r\n`).
    V1,
    /// The binary form (12-byte signature, then addresses and TLVs).
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

/// The versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    /// v1 (text) headers are accepted.
    pub v1: bool,
    /// v2 (binary) headers are accepted.
    pub v2: bool,
}

impl Versions {
    /// Both versions.
    pub const ALL: Versions = Versions { v1: true, v2: true };

    fn allows(self, v: Version) -> bool {
        match v {
            Version::V1 => self.v1,
            Version::V2 => self.v2,
        }
    }
}

/// The v2 signature: the first 12 bytes of every v2 header.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// What every v1 header starts with.
pub const V1_PREFIX: &[u8] = b"PROXY ";
/// The longest v1 header, `\r\n` included (the specification's 107 bytes).
pub const MAX_V1_LEN: usize = 107;
/// The longest v2 header lbd accepts, TLVs included (HAProxy's limit is its
/// buffer size; lbd's is one I/O buffer).
pub const MAX_HEADER_LEN: usize = crate::buffer::BUF_SIZE;
/// v2: signature, version and command, family and transport, length.
const V2_FIXED_LEN: usize = 16;

/// A complete header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Its version.
    pub version: Version,
    /// Its length in bytes: what follows belongs to the connection (the TLS
    /// handshake or the first request).
    pub len: usize,
    /// The client's address, or `None` when the header carries none (v2
    /// `LOCAL`, v1 `UNKNOWN`, unspecified or Unix addresses): the
    /// connection's own peer stands.
    pub source: Option<SocketAddr>,
    /// The address the client connected to, when the header has one.
    pub destination: Option<SocketAddr>,
}

/// Why a connection's first bytes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PpError {
    /// The connection does not start with a PROXY protocol header.
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    /// A header of a version the listener does not accept.
    #[error("PROXY protocol {0} header, which this listener does not accept")]
    Version(Version),
    /// A header that is not valid and cannot become valid with more bytes.
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
}

/// What the first bytes of a connection are, as far as they go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// They start with (or so far are) a PROXY protocol signature.
    Proxy(Version),
    /// They cannot be the start of a PROXY protocol header.
    Other,
    /// Too few bytes to tell.
    NeedMore,
}

/// Whether `buf` starts like a PROXY protocol header.
pub fn detect(buf: &[u8]) -> Detected {
    let signature = |sig: &[u8]| {
        let n = buf.len().min(sig.len());
        if buf[..n] != sig[..n] {
            None
        } else {
            Some(n == sig.len())
        }
    };
    match (signature(&V2_SIGNATURE), signature(V1_PREFIX)) {
        (Some(true), _) => Detected::Proxy(Version::V2),
        (_, Some(true)) => Detected::Proxy(Version::V1),
        (None, None) => Detected::Other,
        _ => Detected::NeedMore,
    }
}

/// Parses the header at the start of `buf`: `Ok(None)` while more bytes
/// are needed.
pub fn parse(buf: &[u8], versions: Versions) -> Result<Option<Header>, PpError> {
    match detect(buf) {
        Detected::NeedMore => Ok(None),
        Detected::Other => Err(PpError::Missing),
        Detected::Proxy(v) if !versions.allows(v) => Err(PpError::Version(v)),
        Detected::Proxy(Version::V1) => parse_v1(buf),
        Detected::Proxy(Version::V2) => parse_v2(buf),
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<Header>, PpError> {
    let window = &buf[..buf.len().min(MAX_V1_LEN)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_V1_LEN {
            return Err(PpError::Malformed("v1 header longer than 107 bytes"));
        }
        return Ok(None);
    };
    let line = &buf[..=lf];
    if !line.ends_with(b"\r\n") {
        return Err(PpError::Malformed("v1 header line does not end with CRLF"));
    }
    let parsed = ppp::v1::Header::try_from(line);
    if parsed.is_incomplete() {
        return Err(PpError::Malformed("v1 header line is incomplete"));
    }
    let h = parsed.map_err(|e| PpError::Malformed(v1_reason(&e)))?;
    if h.header.len() != line.len() {
        return Err(PpError::Malformed("v1 header line has a stray CR"));
    }
    let addresses = match h.addresses {
        ppp::v1::Addresses::Tcp4(a) => Some(inet(&a)),
        ppp::v1::Addresses::Tcp6(a) => Some(inet6(&a)),
        ppp::v1::Addresses::Unknown => None,
    };
    Ok(Some(Header {
        version: Version::V1,
        len: line.len(),
        source: addresses.map(|a| a.0),
        destination: addresses.map(|a| a.1),
    }))
}

/// (source, destination) of an IPv4 header (both versions share ppp's type).
fn inet(a: &ppp::v1::IPv4) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(a.source_address.into(), a.source_port),
        SocketAddr::new(a.destination_address.into(), a.destination_port),
    )
}

/// (source, destination) of an IPv6 header.
fn inet6(a: &ppp::v1::IPv6) -> (SocketAddr, SocketAddr) {
    (
        SocketAddr::new(a.source_address.into(), a.source_port),
        SocketAddr::new(a.destination_address.into(), a.destination_port),
    )
}

fn v1_reason(e: &ppp::v1::BinaryParseError) -> &'static str {
    use ppp::v1::ParseError as E;
    match e {
        ppp::v1::BinaryParseError::InvalidUtf8(_) => "v1 header is not ASCII",
        ppp::v1::BinaryParseError::Parse(p) => match p {
            E::HeaderTooLong => "v1 header longer than 107 bytes",
            E::InvalidProtocol => "v1 protocol is not TCP4, TCP6 or UNKNOWN",
            E::InvalidSourceAddress(_) => "invalid v1 source address",
            E::InvalidDestinationAddress(_) => "invalid v1 destination address",
            E::InvalidSourcePort(_) => "invalid v1 source port",
            E::InvalidDestinationPort(_) => "invalid v1 destination port",
            E::InvalidSuffix => "v1 header does not end with CRLF after the ports",
            _ => "invalid v1 header",
        },
    }
}

fn parse_v2(buf: &[u8]) -> Result<Option<Header>, PpError> {
    if let Some(len) = buf.get(14..16) {
        let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([len[0], len[1]]));
        if total > MAX_HEADER_LEN {
            return Err(PpError::Malformed("v2 header longer than 16 KiB"));
        }
    }
    let parsed = ppp::v2::Header::try_from(buf);
    if parsed.is_incomplete() {
        return Ok(None);
    }
    let h = parsed.map_err(|e| PpError::Malformed(v2_reason(&e)))?;
    let addresses = match (h.command, h.protocol) {
        (ppp::v2::Command::Local, _) | (_, ppp::v2::Protocol::Unspecified) => None,
        (ppp::v2::Command::Proxy, ppp::v2::Protocol::Datagram) => {
            return Err(PpError::Malformed("v2 header for a datagram transport"))
        }
        (ppp::v2::Command::Proxy, ppp::v2::Protocol::Stream) => match h.addresses {
            ppp::v2::Addresses::IPv4(a) => Some(inet(&a)),
            ppp::v2::Addresses::IPv6(a) => Some(inet6(&a)),
            ppp::v2::Addresses::Unspecified | ppp::v2::Addresses::Unix(_) => None,
        },
    };
    Ok(Some(Header {
        version: Version::V2,
        len: h.len(),
        source: addresses.map(|a| a.0),
        destination: addresses.map(|a| a.1),
    }))
}

fn v2_reason(e: &ppp::v2::ParseError) -> &'static str {
    use ppp::v2::ParseError as E;
    match e {
        E::Version(_) => "v2 header with a version other than 2",
        E::Command(_) => "v2 command is neither LOCAL nor PROXY",
        E::AddressFamily(_) => "unknown v2 address family",
        E::Protocol(_) => "unknown v2 transport protocol",
        E::InvalidAddresses(..) => "v2 length too short for its address family",
        _ => "invalid v2 header",
    }
}

/// The two addresses in one family: an IPv4 address beside an IPv6 one is
/// written IPv4-mapped (as HAProxy does).
fn same_family(src: SocketAddr, dst: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if src.is_ipv4() == dst.is_ipv4() {
        (src, dst)
    } else {
        (v6(src), v6(dst))
    }
}

/// Appends the v1 header for a connection from `src` to `dst`.
pub fn write_v1(out: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr) {
    let (src, dst) = same_family(src, dst);
    out.extend_from_slice(if src.is_ipv4() {
        b"PROXY TCP4 "
    } else {
        b"PROXY TCP6 "
    });
    push_ip(out, src.ip());
    out.push(b' ');
    push_ip(out, dst.ip());
    out.push(b' ');
    crate::http::push_u64(out, u64::from(src.port()));
    out.push(b' ');
    crate::http::push_u64(out, u64::from(dst.port()));
    out.extend_from_slice(b"\r\n");
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    use std::io::Write;
    let _ = write!(out, "{ip}");
}

/// Appends the v2 `PROXY` header (TCP over IPv4 or IPv6, no TLVs) for a
/// connection from `src` to `dst`.
pub fn write_v2(out: &mut Vec<u8>, src: SocketAddr, dst: SocketAddr) {
    let (src, dst) = same_family(src, dst);
    out.extend_from_slice(&V2_SIGNATURE);
    out.push(0x21); // version 2, PROXY
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x11, 0, 12]); // TCP over IPv4, 12 bytes
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V6(a) => a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            out.extend_from_slice(&[0x21, 0, 36]); // TCP over IPv6, 36 bytes
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
}

/// Appends the header a connection that proxies no client starts with (lbd's
/// health checks): v2 `LOCAL`, or v1 `PROXY UNKNOWN`.
pub fn write_local(out: &mut Vec<u8>, version: Version) {
    match version {
        Version::V1 => out.extend_from_slice(b"PROXY UNKNOWN\r\n"),
        Version::V2 => {
            out.extend_from_slice(&V2_SIGNATURE);
            out.extend_from_slice(&[0x20, 0x00, 0, 0]); // version 2, LOCAL, UNSPEC, no bytes
        }
    }
}

/// Appends the header for `version`.
pub fn write(out: &mut Vec<u8>, version: Version, src: SocketAddr, dst: SocketAddr) {
    match version {
        Version::V1 => write_v1(out, src, dst),
        Version::V2 => write_v2(out, src, dst),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv6Addr;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn complete(buf: &[u8]) -> Header {
        match parse(buf, Versions::ALL) {
            Ok(Some(h)) => h,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut b = V2_SIGNATURE.to_vec();
        b.push(cmd);
        b.push(fam);
        b.extend_from_slice(&(body.len() as u16).to_be_bytes());
        b.extend_from_slice(body);
        b
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let h = complete(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET /");
        assert_eq!(h.version, Version::V1);
        assert_eq!(h.len, 45);
        assert_eq!(h.source, Some(sa("192.0.2.1:56324")));
        assert_eq!(h.destination, Some(sa("198.51.100.2:443")));
        let h = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
        assert_eq!(h.source, Some(sa("[2001:db8::1]:1")));
        let h = complete(b"PROXY UNKNOWN\r\n\x16\x03");
        assert_eq!((h.len, h.source), (15, None));
        let h = complete(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n");
        assert_eq!(h.source, None);
    }

    #[test]
    fn v2_inet_inet6_local_unspec() {
        let mut body = vec![192, 0, 2, 1, 10, 0, 0, 1];
        body.extend_from_slice(&[0xdc, 0x04, 0x01, 0xbb]);
        let h = complete(&v2(0x21, 0x11, &body));
        assert_eq!(h.len, 28);
        assert_eq!(h.source, Some(sa("192.0.2.1:56324")));
        assert_eq!(h.destination, Some(sa("10.0.0.1:443")));
        // TLVs after the addresses are part of the header.
        let mut with_tlv = body.clone();
        with_tlv.extend_from_slice(&[0x04, 0, 2, 9, 9]);
        let mut buf = v2(0x21, 0x11, &with_tlv);
        buf.extend_from_slice(b"GET");
        assert_eq!(complete(&buf).len, 33);
        let mut b6 = Vec::new();
        b6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        b6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b6.extend_from_slice(&[0, 80, 0, 81]);
        let h = complete(&v2(0x21, 0x21, &b6));
        assert_eq!(h.source, Some(sa("[2001:db8::7]:80")));
        // LOCAL: no address, whatever follows.
        assert_eq!(complete(&v2(0x20, 0x00, &[])).source, None);
        assert_eq!(complete(&v2(0x20, 0x11, &body)).source, None);
        // PROXY with UNSPEC family or transport: the real peer stands.
        assert_eq!(complete(&v2(0x21, 0x00, &[])).source, None);
        assert_eq!(complete(&v2(0x21, 0x10, &body)).source, None);
    }

    #[test]
    fn every_split_is_partial_until_complete() {
        let mut inputs = vec![
            b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\n".to_vec(),
            b"PROXY TCP6 ::ffff:1.2.3.4 2001:db8::2 0 65535\r\n".to_vec(),
            b"PROXY UNKNOWN\r\n".to_vec(),
        ];
        let mut out = Vec::new();
        write_v2(&mut out, sa("[2001:db8::1]:9"), sa("[::1]:443"));
        inputs.push(out);
        inputs.push(v2(0x20, 0x00, &[]));
        for full in inputs {
            for i in 0..full.len() {
                assert_eq!(
                    parse(&full[..i], Versions::ALL),
                    Ok(None),
                    "{:?} at {i}",
                    String::from_utf8_lossy(&full)
                );
            }
            assert_eq!(complete(&full).len, full.len());
        }
    }

    #[test]
    fn refusals_say_why() {
        let m = |b: &[u8]| parse(b, Versions::ALL);
        assert_eq!(m(b"GET / HTTP/1.1\r\n"), Err(PpError::Missing));
        assert_eq!(m(b"\x16\x03\x01"), Err(PpError::Missing));
        assert_eq!(m(b"PROXY"), Ok(None));
        assert_eq!(m(b"PROXY!"), Err(PpError::Missing));
        for bad in [
            &b"PROXY TCP4 192.0.2.1\r\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",
            b"PROXY TCP4 300.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 99999\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 01 2\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",
            b"PROXY TCP4 \xff\r\n",
        ] {
            assert!(
                matches!(m(bad), Err(PpError::Malformed(_))),
                "{:?}: {:?}",
                String::from_utf8_lossy(bad),
                m(bad)
            );
        }
        // Too long without an end.
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_V1_LEN, b'1');
        assert!(matches!(m(&long), Err(PpError::Malformed(_))));
        long.truncate(MAX_V1_LEN - 1);
        assert_eq!(m(&long), Ok(None));
        // v2: bad version, command, family; too short for its family;
        // datagram; too long.
        for (cmd, fam, len) in [
            (0x11, 0x11, 12),
            (0x22, 0x11, 12),
            (0x21, 0x41, 12),
            (0x21, 0x11, 4),
            (0x21, 0x12, 12),
        ] {
            let bad = v2(cmd, fam, &vec![0; len]);
            assert!(
                matches!(m(&bad), Err(PpError::Malformed(_))),
                "{cmd:x} {fam:x}"
            );
        }
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(matches!(m(&huge), Err(PpError::Malformed(_))));
    }

    #[test]
    fn versions_are_enforced() {
        let v1only = Versions {
            v1: true,
            v2: false,
        };
        let v2only = Versions {
            v1: false,
            v2: true,
        };
        assert_eq!(
            parse(&v2(0x20, 0, &[]), v1only),
            Err(PpError::Version(Version::V2))
        );
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n", v2only),
            Err(PpError::Version(Version::V1))
        );
        // A prefix is not yet a version.
        assert_eq!(parse(b"\r\n\r\n", v1only), Ok(None));
    }

    #[test]
    fn detect_prefixes() {
        assert_eq!(detect(b""), Detected::NeedMore);
        assert_eq!(detect(b"P"), Detected::NeedMore);
        assert_eq!(detect(b"\r\n"), Detected::NeedMore);
        assert_eq!(detect(b"\r\nGET"), Detected::Other);
        assert_eq!(detect(b"POST"), Detected::Other);
        assert_eq!(detect(b"PROXY "), Detected::Proxy(Version::V1));
        assert_eq!(detect(&V2_SIGNATURE), Detected::Proxy(Version::V2));
    }

    #[test]
    fn written_headers_parse_back() {
        let cases = [
            (sa("192.0.2.1:56324"), sa("10.0.0.1:443")),
            (sa("[2001:db8::1]:1"), sa("[2001:db8::2]:65535")),
            (sa("192.0.2.1:5"), sa("[::1]:6")),
        ];
        for (src, dst) in cases {
            for version in [Version::V1, Version::V2] {
                let mut out = Vec::new();
                write(&mut out, version, src, dst);
                let h = complete(&out);
                assert_eq!((h.version, h.len), (version, out.len()));
                let (s, d) = same_family(src, dst);
                assert_eq!((h.source, h.destination), (Some(s), Some(d)), "{version}");
            }
        }
        let mut out = Vec::new();
        write_v1(&mut out, sa("192.0.2.1:56324"), sa("10.0.0.1:443"));
        assert_eq!(out, b"PROXY TCP4 192.0.2.1 10.0.0.1 56324 443\r\n");
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            write_local(&mut out, version);
            let h = complete(&out);
            assert_eq!((h.version, h.len, h.source), (version, out.len(), None));
        }
    }
}
