//! Property: however a valid request stream is cut into reads, lbd's codec
//! sees the same requests.
//!
//! A stream of pipelined requests is generated (varying methods, targets,
//! headers, CRLF or bare-LF head lines, no body, Content-Length bodies or
//! chunked bodies with random chunk sizes, extensions and trailers). It is fed
//! to lbd's own `parse_request` + `write_upstream_head` and `Body` framing,
//! the way lbd's HTTP/1 loop does (re-parse the buffered head bytes after each
//! read, then frame the body with what has arrived): once all at once, once
//! cut at random points and once a byte at a time. Every feeding must give the same heads, the same upstream head bytes,
//! the same body bytes and the same end offset of each message, and those must
//! match what was generated.

use std::net::IpAddr;

use lbd::http::body::Body;
use lbd::http::chunked::MAX_CHUNK_EXT_LEN;
use lbd::http::request::{parse_request, HeadLimits, Parsed, RequestHead};
use lbd::http::rewrite::{write_upstream_head, Forwarding};
use lbd::http::Framing;
use proptest::prelude::*;

/// One generated request and what the codec should make of it.
#[derive(Debug, Clone)]
struct GenRequest {
    bytes: Vec<u8>,
    framing: Framing,
    body: Vec<u8>,
    host: String,
}

/// What the codec reported for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    head: RequestHead,
    upstream_head: Vec<u8>,
    body: Vec<u8>,
    /// Offset in the stream just past the message (head and body).
    end: usize,
}

const LIMITS: HeadLimits = HeadLimits {
    max_head_bytes: 32 * 1024,
    max_headers: 100,
};

fn fwd() -> Forwarding<'static> {
    Forwarding::new(IpAddr::from([198, 51, 100, 4]), b"backend:80", None)
}

enum State {
    Head,
    /// Inside a body, framed by lbd's own [`Body`].
    Body(Body, Message),
}

/// Parses the head at the start of `avail` the way lbd's HTTP/1 loop does
/// (parse, then write the upstream head). `Ok(None)`: need more bytes.
fn parse_head(avail: &[u8], pos: usize) -> Result<Option<Message>, String> {
    let mut out = Vec::new();
    match parse_request(avail, LIMITS, |v| {
        write_upstream_head(v, &fwd(), &mut out);
        v.head
    }) {
        Ok(Parsed::Partial) => Ok(None),
        Ok(Parsed::Complete(head)) => Ok(Some(Message {
            head,
            upstream_head: out,
            body: Vec::new(),
            end: pos + head.head_len,
        })),
        Err(e) => Err(format!("request at offset {pos} rejected with {e:?}")),
    }
}

/// Feeds `stream` in reads ending at each of `cuts` (sorted, the last being
/// the stream length), exactly as a proxy would: heads re-parsed from the
/// buffered bytes after each read, bodies framed with what has arrived.
fn drive(stream: &[u8], cuts: &[usize]) -> Result<Vec<Message>, String> {
    let mut msgs = Vec::new();
    let mut state = State::Head;
    let mut pos = 0;
    for &received in cuts {
        loop {
            let avail = &stream[pos..received];
            state = match state {
                State::Head if avail.is_empty() => {
                    state = State::Head;
                    break;
                }
                State::Head => match parse_head(avail, pos)? {
                    None => {
                        state = State::Head;
                        break;
                    }
                    Some(m) => {
                        pos = m.end;
                        let body = Body::new(m.head.framing, MAX_CHUNK_EXT_LEN);
                        if body.is_done() {
                            msgs.push(m);
                            State::Head
                        } else {
                            State::Body(body, m)
                        }
                    }
                },
                State::Body(body, m) if avail.is_empty() => {
                    state = State::Body(body, m);
                    break;
                }
                State::Body(mut body, mut m) => {
                    // De-chunked in place, as lbd does for HTTP/1.0 clients,
                    // to compare the data itself.
                    let mut scratch = avail.to_vec();
                    let (out, used) = body
                        .frame(&mut scratch, true)
                        .map_err(|e| format!("body at offset {pos}: {e:?}"))?;
                    if used > avail.len() || out > used {
                        return Err("framing beyond input".into());
                    }
                    m.body.extend_from_slice(&scratch[..out]);
                    pos += used;
                    if body.is_done() {
                        m.end = pos;
                        msgs.push(m);
                        State::Head
                    } else if used < avail.len() {
                        return Err(format!("body framing stuck at offset {pos}"));
                    } else {
                        state = State::Body(body, m);
                        break;
                    }
                }
            };
        }
    }
    match state {
        State::Head if pos == stream.len() => Ok(msgs),
        State::Head => Err(format!("stream ended inside a head at offset {pos}")),
        _ => Err(format!("stream ended inside a body at offset {pos}")),
    }
}

// ---------------------------------------------------------------------------
// Generators
// ---------------------------------------------------------------------------

fn token() -> impl Strategy<Value = String> {
    "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,12}"
}

/// A header value: visible ASCII with inner spaces/tabs, no leading or
/// trailing whitespace.
fn field_value() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[!-~]{1,3}", "[!-~][ -~\t]{0,30}[!-~]",]
}

fn host() -> impl Strategy<Value = String> {
    (
        "[a-z][a-z0-9-]{0,10}(\\.[a-z]{2,5}){0,2}",
        prop::option::of(1u16..),
    )
        .prop_map(|(h, p)| match p {
            Some(p) => format!("{h}:{p}"),
            None => h,
        })
}

fn target() -> impl Strategy<Value = String> {
    "/([A-Za-z0-9._~%!$&'()*+,;=:@-]{0,10}/?){0,4}(\\?[A-Za-z0-9=&%._-]{0,20})?"
}

#[derive(Debug, Clone)]
enum BodyKind {
    None,
    Length(Vec<u8>),
    /// Chunk sizes (each ≥ 1) and the data; extensions and trailers.
    Chunked {
        chunks: Vec<Vec<u8>>,
        ext: Vec<Option<String>>,
        upper_hex: bool,
        trailers: Vec<(String, String)>,
    },
}

fn body_kind() -> impl Strategy<Value = BodyKind> {
    let ext = prop::option::of(prop_oneof![
        token().prop_map(|t| format!(";{t}")),
        (token(), token()).prop_map(|(n, v)| format!(";{n}={v}")),
        (token(), "[a-z ]{0,8}").prop_map(|(n, v)| format!(" ;{n}=\"{v}\"")),
    ]);
    prop_oneof![
        Just(BodyKind::None),
        prop::collection::vec(any::<u8>(), 0..600).prop_map(BodyKind::Length),
        (
            prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..6),
            prop::collection::vec(ext, 7),
            any::<bool>(),
            prop::collection::vec(("X-T[a-z]{0,5}", field_value()), 0..3),
        )
            .prop_map(|(chunks, ext, upper_hex, trailers)| BodyKind::Chunked {
                chunks,
                ext,
                upper_hex,
                trailers,
            }),
    ]
}

fn request() -> impl Strategy<Value = GenRequest> {
    (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]),
        target(),
        host(),
        prop::collection::vec(("X-[A-Za-z0-9-]{1,10}", field_value()), 0..8),
        body_kind(),
        any::<bool>(),                            // HTTP/1.0 (no chunked body then)
        prop::collection::vec(any::<bool>(), 16), // bare LF per line
    )
        .prop_map(|(method, target, host, headers, body, http10, lf)| {
            let body = match body {
                BodyKind::Chunked { .. } if http10 => BodyKind::None,
                b => b,
            };
            let mut line_no = 0;
            let mut eol = |out: &mut Vec<u8>| {
                out.extend_from_slice(if lf[line_no % lf.len()] {
                    b"\n"
                } else {
                    b"\r\n"
                });
                line_no += 1;
            };
            let mut b = Vec::new();
            let version = if http10 { "1.0" } else { "1.1" };
            b.extend_from_slice(format!("{method} {target} HTTP/{version}").as_bytes());
            eol(&mut b);
            b.extend_from_slice(format!("Host: {host}").as_bytes());
            eol(&mut b);
            for (n, v) in &headers {
                b.extend_from_slice(format!("{n}: {v}").as_bytes());
                eol(&mut b);
            }
            let (framing, data) = match &body {
                BodyKind::None => (Framing::None, Vec::new()),
                BodyKind::Length(d) => {
                    b.extend_from_slice(format!("Content-Length: {}", d.len()).as_bytes());
                    eol(&mut b);
                    let f = if d.is_empty() {
                        Framing::None
                    } else {
                        Framing::Length(d.len() as u64)
                    };
                    (f, d.clone())
                }
                BodyKind::Chunked { chunks, .. } => {
                    b.extend_from_slice(b"Transfer-Encoding: chunked");
                    eol(&mut b);
                    (Framing::Chunked, chunks.concat())
                }
            };
            eol(&mut b);
            match body {
                BodyKind::None => {}
                BodyKind::Length(d) => b.extend_from_slice(&d),
                BodyKind::Chunked {
                    chunks,
                    ext,
                    upper_hex,
                    trailers,
                } => {
                    for (i, c) in chunks.iter().enumerate() {
                        let size = if upper_hex {
                            format!("{:X}", c.len())
                        } else {
                            format!("{:x}", c.len())
                        };
                        b.extend_from_slice(size.as_bytes());
                        if let Some(e) = &ext[i] {
                            b.extend_from_slice(e.as_bytes());
                        }
                        b.extend_from_slice(b"\r\n");
                        b.extend_from_slice(c);
                        b.extend_from_slice(b"\r\n");
                    }
                    b.extend_from_slice(b"0");
                    if let Some(e) = &ext[6] {
                        b.extend_from_slice(e.as_bytes());
                    }
                    b.extend_from_slice(b"\r\n");
                    for (n, v) in trailers {
                        b.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
                    }
                    b.extend_from_slice(b"\r\n");
                }
            }
            GenRequest {
                bytes: b,
                framing,
                body: data,
                host,
            }
        })
}

fn stream() -> impl Strategy<Value = Vec<GenRequest>> {
    prop::collection::vec(request(), 1..5)
}

fn concat(reqs: &[GenRequest]) -> (Vec<u8>, Vec<usize>) {
    let mut s = Vec::new();
    let mut ends = Vec::new();
    for r in reqs {
        s.extend_from_slice(&r.bytes);
        ends.push(s.len());
    }
    (s, ends)
}

/// The all-at-once result must be what was generated.
fn check_model(reqs: &[GenRequest], ends: &[usize], msgs: &[Message]) {
    assert_eq!(msgs.len(), reqs.len(), "number of messages");
    for (i, ((r, m), end)) in reqs.iter().zip(msgs).zip(ends).enumerate() {
        assert_eq!(m.head.framing, r.framing, "request {i} framing");
        assert_eq!(m.body, r.body, "request {i} body");
        assert_eq!(m.end, *end, "request {i} end offset");
        let host_line = format!("\r\nHost: {}\r\n", r.host);
        assert!(
            m.upstream_head
                .windows(host_line.len())
                .any(|w| w == host_line.as_bytes()),
            "request {i}: upstream head lacks {host_line:?}: {:?}",
            String::from_utf8_lossy(&m.upstream_head)
        );
        assert!(m.upstream_head.ends_with(b"\r\n\r\n"));
        assert!(
            !m.upstream_head
                .windows(2)
                .enumerate()
                .any(|(k, w)| w[1] == b'\n' && w[0] != b'\r' && k > 0),
            "request {i}: bare LF in upstream head"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_splits_parse_the_same(
        reqs in stream(),
        raw_cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
    ) {
        let (s, ends) = concat(&reqs);
        let whole = drive(&s, &[s.len()]).unwrap_or_else(|e| panic!("all at once: {e}\n{:?}", String::from_utf8_lossy(&s)));
        check_model(&reqs, &ends, &whole);

        let mut cuts: Vec<usize> = raw_cuts.iter().map(|i| i.index(s.len() + 1)).collect();
        cuts.push(s.len());
        cuts.sort_unstable();
        cuts.dedup();
        let split = drive(&s, &cuts);
        prop_assert_eq!(split, Ok(whole), "cuts {:?} of {:?}", cuts, String::from_utf8_lossy(&s));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn byte_at_a_time_parses_the_same(reqs in stream()) {
        let (s, ends) = concat(&reqs);
        let whole = drive(&s, &[s.len()]).unwrap_or_else(|e| panic!("all at once: {e}"));
        check_model(&reqs, &ends, &whole);
        let cuts: Vec<usize> = (1..=s.len()).collect();
        let split = drive(&s, &cuts);
        prop_assert_eq!(split, Ok(whole), "{:?}", String::from_utf8_lossy(&s));
    }
}

/// A hand-written stream exercising every framing, cut at every single point.
#[test]
fn every_single_split_of_a_fixed_stream() {
    let s: &[u8] = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n\
        POST /b HTTP/1.1\nHost: h\nContent-Length: 5\n\nhello\
        PUT /c HTTP/1.1\r\nHost: h:81\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n\
        3;e=1\r\nabc\r\nA\r\n0123456789\r\n0\r\nT: 1\r\n\r\n\
        GET / HTTP/1.0\r\n\r\n";
    let whole = drive(s, &[s.len()]).unwrap();
    assert_eq!(whole.len(), 4);
    assert_eq!(whole[1].body, b"hello");
    assert_eq!(whole[2].body, b"abc0123456789");
    assert_eq!(whole[3].end, s.len());
    for k in 0..=s.len() {
        assert_eq!(drive(s, &[k, s.len()]), Ok(whole.clone()), "split at {k}");
    }
}
