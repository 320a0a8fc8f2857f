//! WebSocket and other Upgrade tunnels (RFC 9110 §7.8) through the real
//! binary: a real WebSocket client and server (tungstenite) on loopback,
//! plain and TLS, large messages both ways, ping/pong, half-close, answers
//! other than 101, idle timeout, drain, metrics.

mod support;

use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{free_port, http_get, read_response, LbdConf, Origin};
use tungstenite::{Message, WebSocket};

/// A WebSocket echo server: every data message comes back; pings are
/// answered by tungstenite.
fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            thread::spawn(move || {
                let Ok(mut ws) = tungstenite::accept(s) else {
                    return;
                };
                loop {
                    match ws.read() {
                        Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                            if ws.send(m).is_err() {
                                return;
                            }
                        }
                        Ok(Message::Close(_)) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
        }
    });
    port
}

fn connect(port: u16) -> WebSocket<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (ws, resp) =
        tungstenite::client(format!("ws://127.0.0.1:{port}/chat"), s).expect("upgrade");
    assert_eq!(resp.status(), 101);
    ws
}

fn echo_round<S: Read + Write>(ws: &mut WebSocket<S>) {
    ws.send(Message::Text("hello".into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Text("hello".into()));
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(Message::Binary(big.clone().into())).unwrap();
    match ws.read().unwrap() {
        Message::Binary(b) => assert!(b[..] == big[..], "1 MiB echoed intact"),
        other => panic!("{other:?}"),
    }
    ws.send(Message::Ping(b"p1".to_vec().into())).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"p1");
                break;
            }
            Message::Ping(_) => {}
            other => panic!("{other:?}"),
        }
    }
}

fn metric(admin: u16, name: &str) -> f64 {
    let (_, text) = http_get(admin, "/metrics");
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0)
}

#[test]
fn websocket_echo_large_messages_ping_and_metrics() {
    let origin = echo_server();
    let admin = free_port();
    let lbd = LbdConf::front(&[origin]).threads(2).admin(admin).start();
    let mut a = connect(lbd.port);
    let mut b = connect(lbd.port);
    echo_round(&mut a);
    echo_round(&mut b);
    // Both tunnels are counted while open (gauges every 50 ms).
    thread::sleep(Duration::from_millis(150));
    assert_eq!(metric(admin, "lbd_tunnels_active"), 2.0);
    a.close(None).unwrap();
    let _ = a.read();
    drop(a);
    drop(b);
    let t = Instant::now();
    while metric(admin, "lbd_tunnels_active") != 0.0 {
        assert!(t.elapsed() < Duration::from_secs(5), "tunnels not closed");
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(admin, "lbd_tunnels_total"), 2.0);
    assert!(metric(admin, "lbd_tunnel_bytes_total{direction=\"upstream\"}") > 2e6);
    assert!(metric(admin, "lbd_tunnel_bytes_total{direction=\"downstream\"}") > 2e6);
}

#[test]
fn websocket_over_a_tls_listener() {
    let origin = echo_server();
    let dir = support::unique_temp_dir("ws-tls");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["lb.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cf, kf) = (dir.join("c.pem"), dir.join("k.pem"));
    std::fs::write(&cf, cert.pem()).unwrap();
    std::fs::write(&kf, key.serialize_pem()).unwrap();
    let lbd = LbdConf::front(&[origin])
        .listener_extra(&format!(
            "tls:\n  cert_file: {}\n  key_file: {}\n",
            cf.display(),
            kf.display()
        ))
        .start();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("lb.test").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let s = TcpStream::connect(("127.0.0.1", lbd.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let tls = rustls::StreamOwned::new(conn, s);
    let (mut ws, resp) = tungstenite::client("wss://lb.test/chat", tls).expect("upgrade over TLS");
    assert_eq!(resp.status(), 101);
    echo_round(&mut ws);

    // And to a TLS backend (wss upstream), from a plain listener.
    let tls_origin = tls_echo_server(&cert, &key);
    let lbd = LbdConf::front(&[tls_origin])
        .group_extra(&format!(
            "tls:\n  sni: lb.test\n  ca_file: {}\n",
            cf.display()
        ))
        .start();
    let mut ws = connect(lbd.port);
    echo_round(&mut ws);
}

/// A WebSocket echo server behind TLS (certificate `cert`/`key`).
fn tls_echo_server(cert: &rcgen::Certificate, key: &rcgen::KeyPair) -> u16 {
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let config = std::sync::Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], der)
            .unwrap(),
    );
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            let config = config.clone();
            thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let Ok(mut ws) = tungstenite::accept(rustls::StreamOwned::new(conn, s)) else {
                    return;
                };
                while let Ok(m) = ws.read() {
                    if matches!(m, Message::Text(_) | Message::Binary(_)) && ws.send(m).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A raw backend that switches to a byte tunnel on any upgrade request,
/// echoes what it reads, and after the client's FIN sends `bye` and closes.
fn raw_switching_backend() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            thread::spawn(move || {
                let Some(head) = support::read_until_head(&mut s) else {
                    return;
                };
                let mut b = [0u8; 4096];
                let text = String::from_utf8_lossy(&head).to_lowercase();
                assert!(
                    text.contains("connection: upgrade") && text.contains("upgrade: websocket")
                );
                let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").unwrap();
                s.write_all(&head[end..]).unwrap();
                loop {
                    match s.read(&mut b) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&b[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
                // The client half-closed; this direction still works.
                thread::sleep(Duration::from_millis(100));
                let _ = s.write_all(b"bye");
            });
        }
    });
    port
}

#[test]
fn half_close_is_passed_on_and_pipelined_bytes_enter_the_tunnel() {
    let origin = raw_switching_backend();
    let lbd = LbdConf::front(&[origin]).start();
    let mut s = TcpStream::connect(lbd.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Bytes pipelined after the upgrade request go into the tunnel.
    s.write_all(
        b"GET /t HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nearly",
    )
    .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let resp = read_response(&mut r, true).unwrap();
    assert_eq!(resp.status, 101);
    let mut got = vec![0u8; 5];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"early");
    s.write_all(b"ping").unwrap();
    let mut got = vec![0u8; 4];
    r.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    // FIN from the client: the backend sees it, and can still answer.
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"bye");
}

#[test]
fn an_answer_other_than_101_keeps_http_and_held_bytes_never_reach_the_backend() {
    let origin = Origin::start("plain");
    let lbd = LbdConf::front(&[origin.port]).start();
    // 200 to an upgrade request: an ordinary response; the request the
    // client pipelined behind it is not parsed: the connection closes.
    let mut s = TcpStream::connect(lbd.addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /status/200 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).unwrap();
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close")));
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    assert!(
        origin.heads().iter().all(|h| !h.contains("/smuggled")),
        "a held request reached the backend"
    );
    // 403 without pipelined bytes: the connection stays HTTP.
    let mut c = lbd.client();
    c.send(
        b"GET /status/403 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    );
    assert_eq!(c.response().status, 403);
    assert_eq!(c.get("/after").status, 200);
    // The backend was asked for the upgrade.
    let h = origin
        .heads()
        .into_iter()
        .find(|h| h.contains("/status/403"))
        .unwrap();
    assert!(h.to_lowercase().contains("upgrade: websocket"), "{h}");
}

#[test]
fn idle_tunnels_close_after_the_timeout_and_drain_ends_them() {
    let origin = echo_server();
    let lbd = LbdConf::front(&[origin])
        .limits(&[("tunnel_idle_timeout_ms", 400)])
        .start();
    let mut ws = connect(lbd.port);
    echo_round(&mut ws);
    let t = Instant::now();
    let end = loop {
        match ws.read() {
            Ok(Message::Text(_) | Message::Binary(_)) => {}
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    let idle = t.elapsed();
    assert!(
        idle >= Duration::from_millis(300) && idle < Duration::from_secs(3),
        "{idle:?}: {end}"
    );

    // SIGTERM: a tunnel keeps working during the grace period, then closes.
    let origin = echo_server();
    let mut lbd = LbdConf::front(&[origin])
        .top("grace_period_seconds: 1\ngraceful_shutdown_timeout_seconds: 1\n")
        .start();
    let mut ws = connect(lbd.port);
    kill(Pid::from_raw(lbd.pid() as i32), Signal::SIGTERM).unwrap();
    thread::sleep(Duration::from_millis(200));
    echo_round(&mut ws);
    assert!(
        lbd.wait_exit(Duration::from_secs(5)),
        "lbd did not exit after the grace period"
    );
}
