//! Process lifecycle outside the data path: daemonizing, the pid file, and
//! files the process writes atomically (pid file, histogram dumps).
//!
//! `-d` forks before any thread exists. The parent does not exit at once: it
//! waits on a pipe until the daemon reports that it is listening (exit 0) or
//! that start-up failed (the error is printed, exit 1), so a script can trust
//! the exit code. The child starts a new session and points stdin/stdout at
//! `/dev/null` and stderr at `error_log` (so even a panic message lands there).
//!
//! The pid file is written once lbd listens, atomically (temp file + rename).
//! A pid file naming a live process is not clobbered unless `-u` says this is
//! an upgrade; on exit the file is removed only if it still holds our pid (after
//! an upgrade it belongs to the new process).

// The one syscall wrapper here that needs `unsafe` has its SAFETY comment.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::kill;
use nix::unistd::{dup2, fork, pipe, setsid, ForkResult, Pid};

/// The daemon's end of the readiness pipe (`None` in the foreground).
pub struct Readiness {
    pipe: Option<File>,
}

impl Readiness {
    /// Foreground: nobody waits.
    pub fn foreground() -> Self {
        Readiness { pipe: None }
    }

    /// Tells the waiting parent that lbd is listening.
    pub fn ready(&mut self) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(b"OK\n");
        }
    }

    /// Tells the waiting parent why start-up failed.
    pub fn failed(&mut self, msg: &str) {
        if let Some(mut p) = self.pipe.take() {
            let _ = p.write_all(msg.as_bytes());
        }
    }
}

/// Opens `error_log` for appending, as the daemon's stderr.
pub fn open_log(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

/// Forks into the background. Returns only in the child; the parent exits
/// with the child's start-up verdict. `error_log` (opened by the caller, so
/// a failure is reported before the fork) becomes the child's stderr. Must
/// be called before any thread is spawned.
pub fn daemonize(error_log: Option<File>) -> std::io::Result<Readiness> {
    let (read_end, write_end): (OwnedFd, OwnedFd) = pipe()?;
    // SAFETY: lbd calls this from `run` before it spawns any thread (no
    // worker, checker or logger thread exists yet), so the child is a full
    // copy of a single-threaded process and may do anything afterwards.
    match unsafe { fork() }? {
        ForkResult::Parent { .. } => {
            drop(write_end);
            let mut verdict = String::new();
            let _ = File::from(read_end).read_to_string(&mut verdict);
            if verdict == "OK\n" {
                std::process::exit(0);
            }
            if verdict.is_empty() {
                verdict = "the daemon exited during start-up (see error_log)".into();
            }
            eprintln!("lbd: {}", verdict.trim_end());
            std::process::exit(1);
        }
        ForkResult::Child => {
            drop(read_end);
            setsid()?;
            let null = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?;
            dup2(null.as_raw_fd(), 0)?;
            dup2(null.as_raw_fd(), 1)?;
            match error_log {
                Some(f) => {
                    dup2(f.as_raw_fd(), 2)?;
                }
                None => {
                    dup2(null.as_raw_fd(), 2)?;
                }
            }
            Ok(Readiness {
                pipe: Some(File::from(write_end)),
            })
        }
    }
}

/// Why the pid file stops start-up.
#[derive(Debug, thiserror::Error)]
pub enum PidFileError {
    /// Another live process owns it.
    #[error("pid_file {path} names running process {pid}; stop it first, or use -u to upgrade it")]
    Running {
        /// The pid file.
        path: PathBuf,
        /// The live pid.
        pid: i32,
    },
    /// It could not be written.
    #[error("cannot write pid_file {path}: {source}")]
    Write {
        /// The pid file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    pid > 0 && !matches!(kill(Pid::from_raw(pid), None), Err(Errno::ESRCH))
}

/// Refuses to start over a live pid file unless `upgrade`.
pub fn check_pid_file(path: &Path, upgrade: bool) -> Result<(), PidFileError> {
    if upgrade {
        return Ok(());
    }
    match read_pid(path) {
        Some(pid) if pid != std::process::id() as i32 && alive(pid) => Err(PidFileError::Running {
            path: path.to_owned(),
            pid,
        }),
        _ => Ok(()),
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory,
/// then a rename, so a reader sees the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Writes our pid atomically.
pub fn write_pid_file(path: &Path) -> Result<(), PidFileError> {
    write_atomic(path, format!("{}\n", std::process::id()).as_bytes()).map_err(|source| {
        PidFileError::Write {
            path: path.to_owned(),
            source,
        }
    })
}

/// Removes the pid file if it still names this process.
pub fn remove_pid_file(path: &Path) {
    if read_pid(path) == Some(std::process::id() as i32) {
        let _ = std::fs::remove_file(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_rules() {
        let dir = std::env::temp_dir().join(format!("lbd-pid-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let p = dir.join("lbd.pid");
        write_pid_file(&p).expect("write");
        assert_eq!(read_pid(&p), Some(std::process::id() as i32));
        // Our own pid does not block us.
        assert!(check_pid_file(&p, false).is_ok());
        // A live foreign pid (pid 1 always exists) blocks without -u.
        std::fs::write(&p, "1\n").unwrap();
        assert!(matches!(
            check_pid_file(&p, false),
            Err(PidFileError::Running { pid: 1, .. })
        ));
        assert!(check_pid_file(&p, true).is_ok());
        // Not ours: not removed.
        remove_pid_file(&p);
        assert!(p.exists());
        // A stale pid does not block.
        std::fs::write(&p, "999999999\n").unwrap();
        assert!(check_pid_file(&p, false).is_ok());
        write_pid_file(&p).unwrap();
        remove_pid_file(&p);
        assert!(!p.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
