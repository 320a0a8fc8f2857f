//! The `lbd` binary: parse the command line, hand over to [`lbd::run`].

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = lbd::cli::Cli::parse();
    if let Err(e) = lbd::run(cli) {
        eprintln!("lbd: {e}");
        std::process::exit(1);
    }
}
