//! Fuzz the PROXY protocol parser (v1 and v2) and writers: they must never
//! panic, and what the parser decides must not depend on how the bytes
//! arrive.
//!
//! Invariants checked on every input:
//! * `Complete(h)`: `h.len` lies within the input and within the limits; the
//!   header alone parses to the same header (what follows never matters);
//!   every shorter prefix asks for more bytes (a header split across reads
//!   is never refused); the version is one the listener accepts.
//! * A refusal stays a refusal whatever bytes follow (lbd may close at
//!   once; waiting would change nothing).
//! * Needing more bytes happens only below the size limits.
//! * A header written for addresses taken from the input parses back to
//!   those addresses, whole, with nothing left over.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use lbd::proxy_protocol::{
    parse, write, Version, Versions, MAX_HEADER_LEN, MAX_V1_LEN,
};
use libfuzzer_sys::fuzz_target;

fn addr(b: &[u8], v6: bool) -> SocketAddr {
    let port = u16::from_be_bytes([b[0], b[1]]);
    let ip: IpAddr = if v6 {
        let mut o = [0u8; 16];
        o.copy_from_slice(&b[2..18]);
        Ipv6Addr::from(o).into()
    } else {
        Ipv4Addr::new(b[2], b[3], b[4], b[5]).into()
    };
    SocketAddr::new(ip, port)
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, buf)) = data.split_first() else {
        return;
    };
    let versions = match sel & 3 {
        1 => Versions { v1: true, v2: false },
        2 => Versions { v1: false, v2: true },
        _ => Versions::ALL,
    };
    match parse(buf, versions) {
        Ok(Some(h)) => {
            assert!(h.len <= buf.len() && h.len <= MAX_HEADER_LEN);
            match h.version {
                Version::V1 => assert!(versions.v1 && h.len <= MAX_V1_LEN),
                Version::V2 => assert!(versions.v2),
            }
            assert_eq!(parse(&buf[..h.len], versions), Ok(Some(h)));
            for i in 0..h.len {
                assert_eq!(parse(&buf[..i], versions), Ok(None), "prefix {i}");
            }
        }
        Ok(None) => assert!(buf.len() < MAX_HEADER_LEN),
        Err(e) => {
            let mut more = buf.to_vec();
            more.extend_from_slice(b"\r\n\r\nPROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n");
            assert_eq!(parse(&more, versions), Err(e));
        }
    }
    // Round trip through the writers.
    if buf.len() >= 36 {
        let (src, dst) = (addr(&buf[..18], sel & 4 != 0), addr(&buf[18..36], sel & 8 != 0));
        for version in [Version::V1, Version::V2] {
            let mut out = Vec::new();
            write(&mut out, version, src, dst);
            let h = parse(&out, Versions::ALL)
                .expect("written header parses")
                .expect("written header is complete");
            assert_eq!((h.version, h.len), (version, out.len()));
            let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
            let (s, d) = (h.source.expect("source"), h.destination.expect("destination"));
            assert_eq!((canon(s), canon(d)), (canon(src), canon(dst)));
        }
    }
});
