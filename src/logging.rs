//! Log setup: `env_logger` filtered by `RUST_LOG` (default `info`), to stderr
//! or to `error_log`, reopened on SIGHUP so logrotate works.
//!
//! Nothing on the request path logs above debug; the `log` macros cost one
//! relaxed load of a read-only level when disabled. Log lines that are written
//! go through a mutex around the file, which is fine off the hot path.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct LogFile {
    path: PathBuf,
    file: File,
}

static LOG_FILE: Mutex<Option<LogFile>> = Mutex::new(None);

/// Set when stderr itself points at `error_log` (daemon mode), so a reopen
/// moves stderr too (panic messages follow the log).
static STDERR_IS_LOG: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that stderr was redirected to `error_log`.
pub fn stderr_is_log() {
    STDERR_IS_LOG.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Writes to the current `error_log` file.
struct Reopenable;

impl Write for Reopenable {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match LOG_FILE.lock() {
            Ok(mut g) => match g.as_mut() {
                Some(l) => l.file.write(buf),
                None => std::io::stderr().write(buf),
            },
            Err(_) => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match LOG_FILE.lock() {
            Ok(mut g) => match g.as_mut() {
                Some(l) => l.file.flush(),
                None => Ok(()),
            },
            Err(_) => Ok(()),
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Starts logging. With `error_log`, log lines are appended to that file.
pub fn init(error_log: Option<&Path>) -> std::io::Result<()> {
    let mut b = env_logger::Builder::new();
    // Default: info. rustls logs peer misbehaviour (e.g. an IP address sent
    // as SNI) at warn on every handshake: a client could flood the log, so it
    // is held to error unless RUST_LOG names it.
    b.filter_level(log::LevelFilter::Info)
        .filter_module("rustls", log::LevelFilter::Error);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    b.format(|f, record| {
        let ts = f.timestamp_millis();
        writeln!(
            f,
            "{ts} {:5} [{}] {}",
            record.level(),
            std::thread::current().name().unwrap_or("-"),
            record.args()
        )
    });
    if let Some(path) = error_log {
        let file = open(path)?;
        if let Ok(mut g) = LOG_FILE.lock() {
            *g = Some(LogFile {
                path: path.to_owned(),
                file,
            });
        }
        b.target(env_logger::Target::Pipe(Box::new(Reopenable)));
    }
    // A second init (tests) is harmless.
    let _ = b.try_init();
    Ok(())
}

/// `n` and the noun in the right number: `1 worker`, `2 workers`.
pub fn count(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Reopens `error_log` (SIGHUP), so a rotated file is let go.
pub fn reopen() {
    let Ok(mut g) = LOG_FILE.lock() else { return };
    let Some(l) = g.as_mut() else { return };
    match open(&l.path) {
        Ok(f) => {
            if STDERR_IS_LOG.load(std::sync::atomic::Ordering::Relaxed) {
                use std::os::fd::AsRawFd;
                let _ = nix::unistd::dup2(f.as_raw_fd(), 2);
            }
            l.file = f;
            drop(g);
            log::info!("SIGHUP: error_log reopened");
        }
        Err(e) => {
            let path = l.path.display().to_string();
            drop(g);
            log::error!("SIGHUP: cannot reopen error_log {path}: {e}");
        }
    }
}
