//! Log setup: `env_logger` filtered by `RUST_LOG` (default `info`), to stderr
//! or to `error_log`.
//!
//! Nothing on the request path logs above debug; the `log` macros cost one
//! relaxed load of a read-only level when disabled.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

/// Starts logging. With `error_log`, log lines are appended to that file.
pub fn init(error_log: Option<&Path>) -> std::io::Result<()> {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
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
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        b.target(env_logger::Target::Pipe(Box::new(file)));
    }
    // A second init (tests) is harmless.
    let _ = b.try_init();
    Ok(())
}
