//! The command line, Pingora-compatible: `lbd -c conf.yaml [--threads N] [-d] [-u] [-t]`.
//!
//! The man page and the shell completions are generated from this
//! definition (`clap_mangen`, `clap_complete`) by the hidden
//! `--gen-assets DIR`, which the Debian package build runs.

use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser};

/// What each signal does: the end of `--help` and the man page's SIGNALS.
const SIGNALS: [(&str, &str); 5] = [
    (
        "SIGTERM",
        "graceful shutdown: stop accepting, finish in-flight requests, exit",
    ),
    ("SIGINT", "fast shutdown"),
    (
        "SIGQUIT",
        "graceful upgrade: hand the listening sockets to a new `lbd -u`, then drain",
    ),
    ("SIGHUP", "reopen error_log and access_log"),
    ("SIGUSR1", "write the latency histogram to histogram_file"),
];

/// The files of an installed lbd: the end of `--help` and the man page's FILES.
const FILES: [(&str, &str); 4] = [
    ("/etc/lbd/conf.yaml", "the configuration (Debian package)"),
    (
        "/run/lbd/",
        "pid_file and upgrade_sock, if configured there",
    ),
    (
        "/var/log/lbd/",
        "error_log and access_log, if configured there",
    ),
    (
        "/usr/share/doc/lbd/README.md",
        "every configuration key, the signals, the runbook",
    ),
];

fn after_help() -> String {
    let mut s = String::from("Signals:\n");
    for (sig, what) in SIGNALS {
        s += &format!("  {sig:<8} {what}\n");
    }
    s += "\nFiles:\n";
    for (file, what) in FILES {
        s += &format!("  {file:<29} {what}\n");
    }
    s
}

/// lbd: a thread-per-core HTTP/1.1 load balancer on io_uring.
#[derive(Debug, Parser)]
#[command(
    name = "lbd",
    version,
    about,
    long_about = "lbd: a thread-per-core HTTP/1.1 load balancer on io_uring. Each worker \
                  thread is pinned to a core and runs its own io_uring ring, SO_REUSEPORT \
                  listening sockets, upstream pool and round-robin cursor. Configured by a \
                  Pingora-compatible conf.yaml.",
    after_long_help = after_help()
)]
pub struct Cli {
    /// Path to conf.yaml.
    #[arg(
        short = 'c',
        long = "conf",
        value_name = "FILE",
        required_unless_present = "gen_assets"
    )]
    pub conf: Option<PathBuf>,

    /// Worker threads (overrides `threads` in the config).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Run in the background (also `daemon: true`).
    #[arg(short = 'd', long)]
    pub daemon: bool,

    /// Take the listening sockets over from a running lbd (zero-downtime upgrade).
    #[arg(short = 'u', long)]
    pub upgrade: bool,

    /// Test the configuration and exit: 0 if valid (warnings on stderr), 1 with the error.
    #[arg(short = 't', long)]
    pub test: bool,

    /// Write the man page and shell completions into DIR and exit.
    #[arg(long, value_name = "DIR", hide = true)]
    pub gen_assets: Option<PathBuf>,
}

/// `--gen-assets DIR`: `lbd.1` (man page), `lbd.bash`, `_lbd` (zsh),
/// `lbd.fish`, all from the definition above.
pub fn generate_assets(dir: &Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    std::fs::write(dir.join("lbd.1"), man_page(cmd.clone())?)?;
    for (shell, name) in [
        (Shell::Bash, "lbd.bash"),
        (Shell::Zsh, "_lbd"),
        (Shell::Fish, "lbd.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "lbd", &mut out);
        std::fs::write(dir.join(name), out)?;
    }
    Ok(())
}

/// clap_mangen's sections, with SIGNALS and FILES as man pages have them
/// (instead of `--help`'s text as one EXTRA section).
fn man_page(cmd: clap::Command) -> std::io::Result<Vec<u8>> {
    use clap_mangen::roff::{bold, roman, Roff};
    let man = clap_mangen::Man::new(cmd);
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = Roff::new();
    for (title, rows) in [("SIGNALS", &SIGNALS[..]), ("FILES", &FILES[..])] {
        roff.control("SH", [title]);
        for (name, what) in rows {
            roff.control("TP", []);
            roff.text([bold(*name)]);
            roff.text([roman(*what)]);
        }
    }
    roff.control("SH", ["SEE ALSO"]);
    roff.text([roman("systemctl(1), systemd.service(5)")]);
    out.extend_from_slice(roff.to_roff().as_bytes());
    man.render_version_section(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn conf_is_required_unless_generating() {
        assert!(Cli::try_parse_from(["lbd", "-t"]).is_err());
        let c = Cli::try_parse_from(["lbd", "--gen-assets", "/tmp/x"]).expect("parses");
        assert!(c.conf.is_none());
        let c = Cli::try_parse_from(["lbd", "-c", "a.yaml", "-t"]).expect("parses");
        assert_eq!(c.conf.as_deref(), Some(Path::new("a.yaml")));
    }
}
