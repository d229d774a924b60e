//! `sharedcare`: the whole platform in one binary. See `sharedcare --help`.
#![forbid(unsafe_code)]

mod audit_monitor;
mod bench;
mod cli;
mod config;
mod demo_record;
mod demo_seed;
mod import;
mod platform;
mod population;

use clap::Parser;

/// mimalloc rather than glibc's malloc: 9-12 % less CPU per audited read (see the README's
/// Performance section).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
