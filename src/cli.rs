//! The command line, Pingora-compatible: `lbd -c conf.yaml [--threads N] [-d] [-u] [-t]`.

use std::path::PathBuf;

use clap::Parser;

/// lbd: a thread-per-core HTTP/1.1 load balancer on io_uring.
#[derive(Debug, Parser)]
#[command(name = "lbd", version, about)]
pub struct Cli {
    /// Path to conf.yaml.
    #[arg(short = 'c', long = "conf", value_name = "FILE")]
    pub conf: PathBuf,

    /// Worker threads (overrides `threads` in the config).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,

    /// Run in the background (also `daemon: true`).
    #[arg(short = 'd', long)]
    pub daemon: bool,

    /// Take the listening sockets over from a running lbd (zero-downtime upgrade).
    #[arg(short = 'u', long)]
    pub upgrade: bool,

    /// Test the configuration and exit: 0 if valid, non-zero with the error.
    #[arg(short = 't', long)]
    pub test: bool,
}
