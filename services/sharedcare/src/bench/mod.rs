//! `sharedcare bench`: the measurements in the README's performance section.
//!
//! - `bench bus`: event bus throughput and publish→consume latency (embedded, or Kafka when
//!   `kafka.brokers` is configured).
//! - `bench records`: record put, get and search, and consent Decide, over gRPC against
//!   `sharedcare up` started as a child process on a fresh data directory (or `--target` an
//!   existing endpoint: put, get and search only).
//! - `bench import`: `sharedcare import` of a generated NDJSON file into a fresh `up`.
//! - `bench audit`: the audit log from empty to `--entries` ([`audit`]).
//! - `bench identity`: the token endpoint, code and refresh round trips, logins, verification.
//! - `bench passport`: views as a service, a GP and a patient; freshness; rebuild
//!   ([`passport`]).
//! - `bench overload`: FHIR reads offered at three times capacity: what accepted requests
//!   wait, and how fast the rest are refused ([`overload`]).
//! - `bench soak`: reads at half capacity for `--seconds`, RSS and descriptors sampled.
//! - `bench chaos`: faults injected under load, the ledger checked afterwards ([`chaos`]).
//! - `bench startup`: time from spawning `sharedcare up` to `/readyz` answering 200, and the
//!   idle resident memory after that.

use crate::config::Config;

mod args;
mod audit;
mod balancer;
mod bus;
mod chaos;
mod export;
mod harness;
mod hl7;
mod identity;
mod operator;
mod overload;
mod passport;
mod portal;
mod records;
mod startup;

pub use self::args::{BenchArgs, What};

/// Runs a benchmark.
pub async fn run(config: Config, args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        What::Bus => bus::bus(&config, &args).await,
        What::Records => records::records(&args).await,
        What::Startup => startup::startup().await,
        What::Identity => identity::run(&args).await,
        What::Audit => audit::run(&config, &args).await,
        What::Import => records::import(&args).await,
        What::Passport => passport::run(&config, &args).await,
        What::PatientSearch => records::patient_search(&args).await,
        What::Export => export::run(&args).await,
        What::Operator => operator::run(&args).await,
        What::Portal => portal::run(&args).await,
        What::Hl7 => hl7::run(&args).await,
        What::Overload => overload::run(&args).await,
        What::Soak => overload::soak(&args).await,
        What::Chaos => chaos::run(&args).await,
    }
}
