//! The command line, Pingora-compatible: `lbd -c conf.yaml [--threads N] [-d] [-u] [-t]`,
//! and one subcommand, `lbd ctl`, the admin API's client ([`crate::ctl`]).
//! The daemon's flags and `ctl` exclude each other (`lbd -c x ctl` is a usage
//! error), so `-c` stays required for the daemon and means the same to `ctl`.
//!
//! The man page and the shell completions are generated from this
//! definition (`clap_mangen`, `clap_complete`) by the hidden
//! `--gen-assets DIR`, which the Debian package build runs.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand};

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
    after_long_help = after_help(),
    override_usage = "lbd [OPTIONS] --conf <FILE>\n       lbd ctl [OPTIONS] <COMMAND>",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
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

    /// A subcommand instead of running the daemon.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// `lbd`'s subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Query and change a running lbd through its admin API.
    Ctl(CtlArgs),
}

/// `lbd ctl [--admin IP:PORT] [-c FILE] [--token-file PATH] <COMMAND>`.
#[derive(Debug, Args)]
#[command(after_long_help = CTL_AFTER_HELP)]
pub struct CtlArgs {
    /// The admin API's address (else `admin.address` from -c, else $LBD_ADMIN).
    #[arg(long, value_name = "IP:PORT", global = true)]
    pub admin: Option<SocketAddr>,

    /// conf.yaml to read `admin.address` and `admin.token_file` from (nothing else in it is checked).
    #[arg(short = 'c', long = "conf", value_name = "FILE", global = true)]
    pub conf: Option<PathBuf>,

    /// File holding the bearer token for write commands (else `admin.token_file` from -c, else $LBD_ADMIN_TOKEN, the token itself).
    #[arg(long, value_name = "PATH", global = true)]
    pub token_file: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// The end of `lbd ctl --help`.
const CTL_AFTER_HELP: &str = "Exit status: 0 done, 1 the admin API refused (its message \
     and field on stderr), 2 usage error or the admin API unreachable.";

/// What `lbd ctl` does.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// List every group's backends: id, address, weight, source, health, state, in-flight and total requests.
    Upstreams {
        /// Print the admin API's JSON as is instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending new requests to a backend; requests in flight finish.
    Drain(Target),
    /// Take a backend out of rotation at once.
    Disable(Target),
    /// Put a drained or disabled backend back into rotation.
    Enable(Target),
    /// Add a backend to a group at run time.
    Add {
        /// Which backend.
        #[command(flatten)]
        target: Target,
        /// Its weight (default: the server's, 1).
        #[arg(long, value_name = "N")]
        weight: Option<u32>,
    },
    /// Remove a backend from a group at run time.
    Remove(Target),
}

/// A backend: its group and address.
#[derive(Debug, Args)]
pub struct Target {
    /// The upstream group (`upstreams.<name>` in conf.yaml).
    pub group: String,
    /// The backend's IP:PORT, as `lbd ctl upstreams` shows it.
    pub address: String,
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
    use clap_mangen::roff::{bold, roman};
    let man = clap_mangen::Man::new(cmd.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut roff = ctl_section(cmd);
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

/// The man page's COMMANDS: `lbd ctl`, its options and each of its
/// commands with its usage, in one page (no `lbd-ctl(1)` to ship).
fn ctl_section(mut cmd: clap::Command) -> clap_mangen::roff::Roff {
    use clap_mangen::roff::{bold, italic, roman, Roff};
    let mut roff = Roff::new();
    cmd.build();
    let Some(ctl) = cmd.find_subcommand_mut("ctl") else {
        return roff;
    };
    let usage = |c: &mut clap::Command| {
        let u = c.render_usage().to_string();
        u.strip_prefix("Usage: ").unwrap_or(&u).to_owned()
    };
    roff.control("SH", ["COMMANDS"]);
    roff.control("TP", []);
    roff.text([bold(usage(ctl))]);
    let about = ctl.get_about().map(|a| a.to_string()).unwrap_or_default();
    roff.text([roman(format!("{about}. {CTL_AFTER_HELP}"))]);
    roff.control("RS", []);
    for arg in ctl.get_arguments().filter(|a| !a.is_positional()) {
        let Some(long) = arg.get_long().filter(|l| *l != "help") else {
            continue;
        };
        let short = arg
            .get_short()
            .map(|c| format!("-{c}, "))
            .unwrap_or_default();
        let value = arg
            .get_value_names()
            .and_then(|v| v.first())
            .map(|v| format!(" {v}"))
            .unwrap_or_default();
        roff.control("TP", []);
        roff.text([bold(format!("{short}--{long}")), italic(value)]);
        let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
        roff.text([roman(help)]);
    }
    for sub in ctl.get_subcommands_mut().filter(|s| s.get_name() != "help") {
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        roff.control("TP", []);
        roff.text([bold(usage(sub))]);
        roff.text([roman(about)]);
    }
    roff.control("RE", []);
    roff
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
        assert!(c.command.is_none());
    }

    #[test]
    fn ctl_is_a_subcommand_apart_from_the_daemon_flags() {
        let c = Cli::try_parse_from(["lbd", "ctl", "upstreams"]).expect("parses");
        assert!(c.conf.is_none());
        assert!(matches!(
            c.command,
            Some(Command::Ctl(CtlArgs {
                command: CtlCommand::Upstreams { json: false },
                ..
            }))
        ));
        assert!(Cli::try_parse_from(["lbd", "-c", "a.yaml", "ctl", "upstreams"]).is_err());
        assert!(
            Cli::try_parse_from(["lbd", "ctl"]).is_err(),
            "a command is required"
        );
        // The ctl options go before or after the command.
        for argv in [
            &["lbd", "ctl", "-c", "a.yaml", "drain", "web", "127.0.0.1:1"][..],
            &["lbd", "ctl", "drain", "web", "127.0.0.1:1", "-c", "a.yaml"][..],
        ] {
            let Some(Command::Ctl(a)) = Cli::try_parse_from(argv).expect("parses").command else {
                panic!("not ctl: {argv:?}");
            };
            assert_eq!(a.conf.as_deref(), Some(Path::new("a.yaml")));
            assert!(
                matches!(a.command, CtlCommand::Drain(Target { ref group, .. }) if group == "web")
            );
        }
        assert!(
            Cli::try_parse_from(["lbd", "ctl", "--admin", "localhost:1", "upstreams"]).is_err()
        );
    }

    #[test]
    fn man_page_documents_ctl() {
        let page = man_page(Cli::command()).expect("renders");
        let page = String::from_utf8_lossy(&page);
        for want in ["COMMANDS", "lbd ctl drain", "\\-\\-token\\-file", "SIGNALS"] {
            assert!(page.contains(want), "{want} missing from:\n{page}");
        }
    }
}
