//! `sharedcare bench`: measurements for the README's performance section.

use clap::Args;

use crate::config::Config;

/// What to measure.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// bus | records | startup
    pub what: String,
}

/// Runs a benchmark.
pub async fn run(_config: Config, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("unknown benchmark {:?}", args.what)
}
