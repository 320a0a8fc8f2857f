//! What a start would fail on that the YAML alone does not show: the files
//! the configuration names must be creatable where it says. `-t` runs these
//! checks, and so does every start, before it forks, so `-t` passing means
//! the start does not fail on them (for the user that ran `-t`).
//!
//! | key | checked |
//! |---|---|
//! | `error_log`, `access_log.path` | appended to: the file is writable, or its directory exists and is writable |
//! | `pid_file`, `histogram_file` | written atomically (temp file + rename): the directory exists and is writable |
//! | `upgrade_sock` | the directory exists (only an upgrade binds or connects to it) |
//!
//! Every message names the key and the path.

use std::path::{Path, PathBuf};

use nix::unistd::{access, AccessFlags};

use crate::config::{Config, ConfigError};

/// Runs every check in the order of the table; the first failure is returned.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    if let Some(p) = &config.error_log {
        appendable("error_log", p)?;
    }
    if let Some(p) = &config.pid_file {
        dir_writable("pid_file", p)?;
    }
    if let Some((p, _)) = &config.access_log {
        appendable("access_log.path", p)?;
    }
    if let Some(p) = &config.histogram_file {
        dir_writable("histogram_file", p)?;
    }
    dir_exists("upgrade_sock", &config.upgrade_sock)?;
    Ok(())
}

fn fail(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Path { key, reason }
}

/// The directory `file` goes into (`.` for a bare file name).
fn parent(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// `file`'s directory exists and is a directory.
fn dir_exists(key: &'static str, file: &Path) -> Result<PathBuf, ConfigError> {
    let dir = parent(file);
    match std::fs::metadata(&dir) {
        Ok(m) if m.is_dir() => Ok(dir),
        Ok(_) => Err(fail(
            key,
            format!(
                "{} is not a directory (for {})",
                dir.display(),
                file.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(fail(
            key,
            format!(
                "directory {} does not exist (for {})",
                dir.display(),
                file.display()
            ),
        )),
        Err(e) => Err(fail(
            key,
            format!("cannot use directory {}: {e}", dir.display()),
        )),
    }
}

/// A file can be created in `file`'s directory: it exists and this user may
/// write and search it.
fn dir_writable(key: &'static str, file: &Path) -> Result<(), ConfigError> {
    let dir = dir_exists(key, file)?;
    if std::fs::metadata(file).is_ok_and(|m| m.is_dir()) {
        return Err(fail(key, format!("{} is a directory", file.display())));
    }
    access(&dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        fail(
            key,
            format!(
                "directory {} is not writable (uid {}): {}",
                dir.display(),
                nix::unistd::getuid(),
                e.desc()
            ),
        )
    })
}

/// `file` can be opened for appending: it exists and is writable, or it
/// can be created.
fn appendable(key: &'static str, file: &Path) -> Result<(), ConfigError> {
    match std::fs::metadata(file) {
        Ok(m) if m.is_dir() => Err(fail(key, format!("{} is a directory", file.display()))),
        Ok(_) => access(file, AccessFlags::W_OK).map_err(|e| {
            fail(
                key,
                format!(
                    "file {} is not writable (uid {}): {}",
                    file.display(),
                    nix::unistd::getuid(),
                    e.desc()
                ),
            )
        }),
        Err(_) => dir_writable(key, file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_names_the_key_and_the_path() {
        let missing = Path::new("/nonexistent-lbd-dir/x.log");
        for (key, check) in [
            ("error_log", appendable as fn(&'static str, &Path) -> _),
            ("pid_file", dir_writable),
        ] {
            let e = check(key, missing).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "config key `{key}`: directory /nonexistent-lbd-dir does not exist \
                     (for /nonexistent-lbd-dir/x.log)"
                )
            );
        }
        let e = dir_exists("upgrade_sock", Path::new("/etc/hostname/sock"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/etc/hostname is not a directory"), "{e}");
        let e = dir_writable("pid_file", Path::new("/tmp"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/tmp is a directory"), "{e}");
        // A bare file name lives in the working directory.
        assert_eq!(parent(Path::new("lbd.pid")), PathBuf::from("."));
        assert!(dir_exists("pid_file", Path::new("lbd.pid")).is_ok());
    }
}
