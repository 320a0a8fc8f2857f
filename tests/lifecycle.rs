//! Process lifecycle against the real binary: `-t`, `-d` and the pid file,
//! SIGTERM drain, SIGQUIT zero-downtime upgrade, SIGHUP log reopen.

mod support;

use std::fs;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{free_port, read_response, unique_temp_dir, LbdConf, Load, Origin};

const LBD: &str = env!("CARGO_BIN_EXE_lbd");

/// What every config here has: the upgrade socket in `dir`, short grace
/// periods and few hand-over retries (no `threads:`; the CLI says).
fn base_conf(dir: &Path, port: u16, backends: &[u16]) -> LbdConf {
    LbdConf::new(port).backends(backends).top(&format!(
        "upgrade_sock: {}\ngrace_period_seconds: 10\ngraceful_shutdown_timeout_seconds: 2\nupgrade_sock_connect_accept_max_retries: 3\n",
        dir.join("upgrade.sock").display()
    ))
}

/// Starts lbd in the foreground with stderr appended to `log`.
fn spawn(conf: &Path, threads: usize, args: &[&str], log: &Path) -> Child {
    support::spawn_lbd(conf, threads, args, &[], log)
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: u32, s: Signal) {
    kill(Pid::from_raw(pid as i32), s).expect("kill");
}

/// Waits for `child` to exit; returns how long it took.
fn wait_exit(child: &mut Child, limit: Duration) -> Duration {
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(status.success(), "lbd exited with {status}");
            return t.elapsed();
        }
        assert!(t.elapsed() < limit, "lbd did not exit within {limit:?}");
        thread::sleep(Duration::from_millis(10));
    }
}

fn get(port: u16, path: &str) -> Result<(u16, Option<String>), String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s);
    let resp = read_response(&mut r, false).map_err(|e| e.to_string())?;
    Ok((resp.status, resp.header("Connection").map(str::to_string)))
}

#[test]
fn config_test_flag() {
    let dir = unique_temp_dir("lc-t");
    let good = base_conf(&dir, free_port(), &[8081]).write(&dir);
    let out = Command::new(LBD)
        .arg("-c")
        .arg(&good)
        .arg("-t")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("test is successful"));
    let bad = dir.join("bad.yaml");
    fs::write(
        &bad,
        fs::read_to_string(&good)
            .unwrap()
            .replace("127.0.0.1:8081", "127.0.0.1:notaport"),
    )
    .unwrap();
    let out = Command::new(LBD)
        .arg("-c")
        .arg(&bad)
        .arg("-t")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("upstreams.web.backends[0]") && err.contains("notaport"),
        "{err}"
    );
}

#[test]
fn daemon_reports_readiness_writes_and_removes_pid_file() {
    let origin = Origin::start("a");
    let dir = unique_temp_dir("lc-d");
    let port = free_port();
    let pid_file = dir.join("lbd.pid");
    let log = dir.join("error.log");
    let extra = format!(
        "pid_file: {}\nerror_log: {}\n",
        pid_file.display(),
        log.display()
    );
    let c = base_conf(&dir, port, &[origin.port])
        .top(&extra)
        .write(&dir);
    let t = Instant::now();
    let out = Command::new(LBD)
        .arg("-c")
        .arg(&c)
        .arg("-d")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(5));
    // Listening by the time the parent exited 0.
    assert_eq!(get(port, "/").unwrap().0, 200);
    let pid: u32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(fs::read_to_string(&log).unwrap().contains("started"));

    // A second instance with the same pid file refuses (no -u), exit 1.
    let out = Command::new(LBD)
        .arg("-c")
        .arg(&c)
        .arg("-d")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("names running process"));

    signal(pid, Signal::SIGTERM);
    let t = Instant::now();
    while pid_file.exists() {
        assert!(t.elapsed() < Duration::from_secs(5), "pid file not removed");
        thread::sleep(Duration::from_millis(20));
    }
    // Gone (or a zombie waiting for init to reap it).
    let t = Instant::now();
    loop {
        let state = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if state.is_empty() || state.contains(") Z ") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "daemon still running: {state}"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn daemon_start_failure_is_a_nonzero_exit_with_the_error() {
    let dir = unique_temp_dir("lc-df");
    // Port already taken by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let c = base_conf(&dir, port, &[8081])
        .top(&format!("error_log: {}\n", dir.join("e.log").display()))
        .write(&dir);
    let out = Command::new(LBD)
        .arg("-c")
        .arg(&c)
        .arg("-d")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Address already in use"), "{err}");
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_early() {
    let origin = Origin::start("a");
    let dir = unique_temp_dir("lc-term");
    let port = free_port();
    let c = base_conf(&dir, port, &[origin.port]).write(&dir);
    let mut lbd = spawn(&c, 1, &[], &dir.join("log"));
    wait_port(port);
    let slow = thread::spawn(move || get(port, "/slow?ms=700"));
    thread::sleep(Duration::from_millis(200));
    let sent = Instant::now();
    signal(lbd.id(), Signal::SIGTERM);
    let (status, connection) = slow.join().unwrap().expect("slow request completes");
    assert_eq!(status, 200);
    assert_eq!(connection.as_deref(), Some("close"));
    // Exits as soon as nothing is in flight, long before the 10 s grace.
    wait_exit(&mut lbd, Duration::from_secs(5));
    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "{:?}",
        sent.elapsed()
    );
    // And it stopped accepting.
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn sighup_reopens_error_log() {
    let origin = Origin::start("a");
    let dir = unique_temp_dir("lc-hup");
    let port = free_port();
    let log = dir.join("error.log");
    let c = base_conf(&dir, port, &[origin.port])
        .top(&format!("error_log: {}\n", log.display()))
        .write(&dir);
    let mut lbd = spawn(&c, 1, &[], &dir.join("stderr"));
    wait_port(port);
    fs::rename(&log, dir.join("error.log.1")).unwrap();
    signal(lbd.id(), Signal::SIGHUP);
    let t = Instant::now();
    while !fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("reopened")
    {
        assert!(t.elapsed() < Duration::from_secs(3), "log not reopened");
        thread::sleep(Duration::from_millis(20));
    }
    signal(lbd.id(), Signal::SIGINT);
    wait_exit(&mut lbd, Duration::from_secs(3));
}

/// Upgrades `old` to a new process with `threads` workers. `quit_first`
/// chooses the start order.
fn upgrade(c: &Path, old: &mut Child, threads: usize, log: &Path, quit_first: bool) -> Child {
    let new = if quit_first {
        signal(old.id(), Signal::SIGQUIT);
        thread::sleep(Duration::from_millis(100));
        spawn(c, threads, &["-u"], log)
    } else {
        let n = spawn(c, threads, &["-u"], log);
        thread::sleep(Duration::from_millis(200));
        signal(old.id(), Signal::SIGQUIT);
        n
    };
    // The old process drains and exits on its own.
    wait_exit(old, Duration::from_secs(8));
    new
}

#[test]
fn sigquit_upgrade_twice_under_load_loses_nothing() {
    let a = Origin::start("a");
    let b = Origin::start("b");
    let dir = unique_temp_dir("lc-up");
    let port = free_port();
    let pid_file = dir.join("lbd.pid");
    let c = base_conf(&dir, port, &[a.port, b.port])
        .top(&format!("pid_file: {}\n", pid_file.display()))
        .write(&dir);
    let log = dir.join("log");
    let mut p1 = spawn(&c, 2, &[], &log);
    wait_port(port);
    let load = Load::start(port, 4);
    thread::sleep(Duration::from_millis(300));

    // A slow request in flight across the first upgrade completes.
    let slow = thread::spawn(move || get(port, "/slow?ms=1500"));
    thread::sleep(Duration::from_millis(100));
    // Upgrade 1: SIGQUIT first, then `lbd -u` (the seed's order), 2 → 1 workers.
    let mut p2 = upgrade(&c, &mut p1, 1, &log, true);
    assert_eq!(slow.join().unwrap().expect("slow request").0, 200);
    thread::sleep(Duration::from_millis(300));
    // Upgrade 2: `lbd -u` first, then SIGQUIT, 1 → 3 workers.
    let mut p3 = upgrade(&c, &mut p2, 3, &log, false);
    thread::sleep(Duration::from_millis(300));
    let (ok, failures) = load.finish();
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        failures.is_empty(),
        "{} failures: {:?}\n{text}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(ok > 200, "load too light: {ok}");
    assert_eq!(
        fs::read_to_string(&pid_file).unwrap().trim(),
        p3.id().to_string(),
        "pid file names the newest process"
    );
    // 2 workers' sockets went to the 1-worker process, which kept accepting
    // on both and handed both on; the 3-worker process opened one more.
    assert_eq!(
        text.matches("received 2 listening sockets").count(),
        2,
        "{text}"
    );
    assert!(text.contains("opened 1 more"), "{text}");
    signal(p3.id(), Signal::SIGTERM);
    wait_exit(&mut p3, Duration::from_secs(5));
}

#[test]
fn sigquit_without_a_new_process_keeps_serving() {
    let a = Origin::start("a");
    let dir = unique_temp_dir("lc-noup");
    let port = free_port();
    let c = base_conf(&dir, port, &[a.port]).write(&dir);
    let log = dir.join("log");
    let mut p = spawn(&c, 1, &[], &log);
    wait_port(port);
    signal(p.id(), Signal::SIGQUIT);
    // The hand-over gives up after its bounded wait; meanwhile and after,
    // requests are served.
    let t = Instant::now();
    while !fs::read_to_string(&log)
        .unwrap()
        .contains("upgrade failed, still serving")
    {
        assert_eq!(get(port, "/").unwrap().0, 200);
        assert!(t.elapsed() < Duration::from_secs(15), "no error logged");
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(port, "/").unwrap().0, 200);
    signal(p.id(), Signal::SIGINT);
    wait_exit(&mut p, Duration::from_secs(3));
}

#[test]
fn sigquit_upgrade_with_an_admin_address_keeps_serving() {
    // The admin address is bound again by the new process while the old one
    // still holds it (found following README's runbook: the new process
    // failed with "Address already in use" after taking the sockets).
    let a = Origin::start("a");
    let dir = unique_temp_dir("lc-admin");
    let port = free_port();
    let admin = free_port();
    let c = base_conf(&dir, port, &[a.port]).admin(admin).write(&dir);
    let log = dir.join("log");
    let mut p1 = spawn(&c, 1, &[], &log);
    wait_port(port);
    assert_eq!(support::http_get(admin, "/health").0, 200);
    let mut p2 = upgrade(&c, &mut p1, 1, &log, true);
    let text = || fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(get(port, "/").map(|r| r.0), Ok(200), "{}", text());
    assert_eq!(support::http_get(admin, "/health").0, 200, "{}", text());
    assert!(
        p2.try_wait().unwrap().is_none(),
        "the new process exited:\n{}",
        text()
    );
    signal(p2.id(), Signal::SIGTERM);
    wait_exit(&mut p2, Duration::from_secs(8));
}
