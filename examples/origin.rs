//! A small, fast HTTP/1.1 origin server for demos and benchmarks.
//!
//! `cargo run --release --example origin -- --port 8081 --name a [--body-size N]`
//!
//! Answers every request with `200 OK`, header `X-Origin: <name>`, and a body
//! of `--body-size` bytes (default: `hello from <name>\n`). Keep-alive and
//! pipelining; request bodies (Content-Length or chunked) are read and
//! discarded. Single-threaded on monoio, so one origin uses at most one core.
//! Not a general web server: it exists so `scripts/demo.sh` and `bench/` need
//! nothing from the internet.

use std::net::SocketAddr;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

struct Args {
    port: u16,
    name: String,
    body: Vec<u8>,
}

fn parse_args() -> Result<Args, String> {
    let mut port = 8081u16;
    let mut name = "origin".to_string();
    let mut size: Option<usize> = None;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--port" => port = val()?.parse().map_err(|e| format!("--port: {e}"))?,
            "--name" => name = val()?,
            "--body-size" => size = Some(val()?.parse().map_err(|e| format!("--body-size: {e}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let body = match size {
        Some(n) => (0..n).map(|i| b'a' + (i % 26) as u8).collect(),
        None => format!("hello from {name}\n").into_bytes(),
    };
    Ok(Args { port, name, body })
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("origin: {e}");
            std::process::exit(2);
        }
    };
    let mut head = format!(
        "HTTP/1.1 200 OK\r\nX-Origin: {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        args.name,
        args.body.len()
    )
    .into_bytes();
    head.extend_from_slice(&args.body);
    let response: &'static [u8] = Box::leak(head.into_boxed_slice());
    let addr = SocketAddr::from(([127, 0, 0, 1], args.port));
    let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build();
    let mut rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("origin: cannot build runtime: {e}");
            std::process::exit(1);
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(addr) {
            Ok(l) => l,
            Err(e) => {
                eprintln!("origin: cannot listen on {addr}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!("origin {} listening on {addr}", args.name);
        loop {
            if let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                monoio::spawn(serve(s, response));
            }
        }
    });
}

/// Serves one connection: counts complete requests in the buffer and writes
/// that many responses in one write.
async fn serve(mut s: TcpStream, response: &'static [u8]) {
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut out: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let len = buf.len();
        if len == buf.capacity() {
            return; // head or body larger than the buffer: not for this origin
        }
        let cap = buf.capacity();
        let (res, slice) = s.read(buf.slice_mut(len..cap)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut pos = 0;
        out.clear();
        while let Some(used) = request_len(&buf[pos..]) {
            pos += used;
            out.extend_from_slice(response);
        }
        buf.drain(..pos);
        if !out.is_empty() {
            let (res, o) = s.write_all(out).await;
            out = o;
            if res.is_err() {
                return;
            }
        }
    }
}

/// Length of the first complete request (head + body) in `b`, if complete.
fn request_len(b: &[u8]) -> Option<usize> {
    let head_end = b.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&b[..head_end]).ok()?;
    let mut cl = 0usize;
    let mut chunked = false;
    for line in head.split("\r\n") {
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                cl = v.trim().parse().ok()?;
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                chunked = v.trim().eq_ignore_ascii_case("chunked");
            }
        }
    }
    if chunked {
        let mut p = head_end;
        loop {
            let line_end = b[p..].windows(2).position(|w| w == b"\r\n")? + p;
            let size_str = std::str::from_utf8(&b[p..line_end]).ok()?;
            let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
            p = line_end + 2;
            if size == 0 {
                // No trailers expected from our clients: final CRLF.
                return (b.len() >= p + 2).then_some(p + 2);
            }
            p += size + 2;
            if p > b.len() {
                return None;
            }
        }
    }
    (b.len() >= head_end + cl).then_some(head_end + cl)
}
