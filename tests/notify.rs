//! systemd readiness without systemd: the test binds the Unix datagram
//! socket systemd would, hands it to lbd as NOTIFY_SOCKET, and reads what
//! lbd says: READY=1 once it listens, STOPPING=1 on SIGTERM, and around an
//! upgrade RELOADING=1, then MAINPID=<new> from the old process before it
//! drains, and READY=1 from the new one.

mod support;

use std::fs;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{free_port, unique_temp_dir, LbdConf};

fn spawn(conf: &Path, notify: &Path, args: &[&str], log: &Path) -> Child {
    support::spawn_lbd(conf, 1, args, &[("NOTIFY_SOCKET", notify)], log)
}

/// What every test here starts from: a temp dir, the socket systemd would
/// bind (read timeout 10 s), a config on a free port; returns the dir, the
/// socket and its path, the port, the config and the log file.
fn setup(tag: &str) -> (PathBuf, UnixDatagram, PathBuf, u16, PathBuf, PathBuf) {
    let dir = unique_temp_dir(tag);
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let port = free_port();
    // The backend need not exist: nothing is proxied here.
    let conf = LbdConf::new(port)
        .backends(&[free_port()])
        .top(&format!(
            "upgrade_sock: {}\ngrace_period_seconds: 5\ngraceful_shutdown_timeout_seconds: 1\n",
            dir.join("upgrade.sock").display()
        ))
        .write(&dir);
    let log = dir.join("lbd.log");
    (dir, sock, sock_path, port, conf, log)
}

/// The next datagram, or a panic naming `what` after 10 s.
fn next(sock: &UnixDatagram, what: &str, log: &Path) -> String {
    let mut buf = [0u8; 4096];
    match sock.recv(&mut buf) {
        Ok(n) => String::from_utf8_lossy(&buf[..n]).into_owned(),
        Err(e) => panic!(
            "no notification ({what}): {e}\n---- lbd log ----\n{}",
            fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

fn fields(msg: &str) -> Vec<&str> {
    msg.lines().collect()
}

fn wait_exit(child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "lbd did not exit");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn ready_once_listening_and_stopping_on_sigterm() {
    let (dir, sock, sock_path, port, conf, log) = setup("notify");
    let mut lbd = spawn(&conf, &sock_path, &[], &log);
    let msg = next(&sock, "READY", &log);
    // Ready means listening: the port accepts at once.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_ok(),
        "READY=1 before lbd listens"
    );
    assert_eq!(
        fields(&msg),
        [format!("MAINPID={}", lbd.id()).as_str(), "READY=1"],
        "{msg:?}"
    );
    kill(Pid::from_raw(lbd.id() as i32), Signal::SIGTERM).expect("SIGTERM");
    assert_eq!(fields(&next(&sock, "STOPPING", &log)), ["STOPPING=1"]);
    wait_exit(&mut lbd);
    // Nothing else was said.
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    assert!(sock.recv(&mut buf).is_err(), "an extra notification");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn an_upgrade_hands_mainpid_to_the_new_process() {
    let (dir, sock, sock_path, port, conf, log) = setup("notify-up");
    let mut old = spawn(&conf, &sock_path, &[], &log);
    assert!(next(&sock, "READY", &log).contains("READY=1"));
    kill(Pid::from_raw(old.id() as i32), Signal::SIGQUIT).expect("SIGQUIT");
    let reloading = next(&sock, "RELOADING", &log);
    assert_eq!(fields(&reloading)[0], "RELOADING=1", "{reloading:?}");
    assert!(
        fields(&reloading)
            .get(1)
            .is_some_and(|f| f.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let mut new = spawn(&conf, &sock_path, &["-u"], &log);
    let want_main = format!("MAINPID={}", new.id());
    // The old process names the new one; the new one says it is ready (and
    // names itself). Their order is not fixed.
    let (a, b) = (next(&sock, "MAINPID", &log), next(&sock, "new READY", &log));
    let mut got = [a, b];
    got.sort();
    assert_eq!(
        [fields(&got[0]), fields(&got[1])],
        [
            vec![want_main.as_str()],
            vec![want_main.as_str(), "READY=1"]
        ],
        "{got:?}"
    );
    // The old process drains without saying STOPPING (it is not the
    // service's main process any more).
    wait_exit(&mut old);
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 256];
    assert!(sock.recv(&mut buf).is_err(), "an extra notification");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    let _ = new.kill();
    let _ = new.wait();
    let _ = fs::remove_dir_all(&dir);
}
