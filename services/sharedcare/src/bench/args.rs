//! What `sharedcare bench` can measure, and its options.

use clap::{Args, ValueEnum};

/// The synthetic population's seed the record-writing benchmarks draw people from.
pub(crate) const BENCH_SEED: u64 = 1;

/// What to measure.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum What {
    /// Event bus throughput and latency.
    Bus,
    /// Record put/get over gRPC in `up` mode.
    Records,
    /// `up` start-up time and idle memory.
    Startup,
    /// Identity: client_credentials, code round trips, refresh, logins, kit verification.
    Identity,
    /// The audit log from empty to `--entries`: append rates, proofs, start-up to a signed
    /// checkpoint and disk per entry (SQLite; Postgres when `database.url` is set).
    Audit,
    /// `sharedcare import` of a generated NDJSON file into `up` (resources/s).
    Import,
    /// Passport views over gRPC in `up` (each decided by consent and audited), and how soon a
    /// write reaches the passport.
    Passport,
    /// Patient search by family name and birth date over `/fhir/R4` in `up`, over 100,000
    /// imported patients.
    PatientSearch,
    /// FHIR Bulk Data `$export` of 1,000,000 resources from `up`: throughput and memory.
    Export,
    /// The web: a signed-in clinician's patient summary page in `up` (session, consent,
    /// audit, render), over HTTP.
    Portal,
    /// HL7 v2 ADT over MLLP into `up`: admissions and updates over 8 connections, each ACKed
    /// after the write, and how soon an admission reaches the passport.
    Hl7,
    /// FHIR reads by id offered at three times the capacity of `up` (measured first): the
    /// latency of those accepted and how fast the rest are refused (`max_in_flight`).
    Overload,
    /// FHIR reads at half the capacity of `up` for `--seconds` (1800 for the README): its
    /// resident memory and open file descriptors sampled every 10 s.
    Soak,
    /// Faults injected into identity, consent, audit and records as `serve` processes on a
    /// Postgres and a Kafka of the run's own (started with the scripts under `--infra`) while
    /// a load writes, reads and changes consent; afterwards the load's ledger is checked
    /// against the store and the audit log (lost, doubled, unaudited), and `audit verify` run.
    Chaos,
    /// The operator: 500 CareApps applied to a real kube-apiserver (KUBECONFIG) until all are
    /// Ready, reconciled into a fresh `up`.
    Operator,
}

/// `sharedcare bench` options.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub what: What,
    /// Seconds per measured phase.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Concurrent requests in flight (records).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Connections the requests are spread over: HTTP/2 for records, passport and portal
    /// (default 4); MLLP for hl7 (default 8).
    #[arg(long)]
    pub connections: Option<usize>,
    /// Events per second for the latency phase (bus).
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// gRPC endpoint of a running instance instead of starting one (records), e.g.
    /// http://127.0.0.1:50051.
    #[arg(long)]
    pub target: Option<String>,
    /// Bearer token for `--target` (records).
    #[arg(long)]
    pub token: Option<String>,
    /// Entries to append (audit).
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: u64,
    /// Entries of other patients put in the audit log before `up` starts (portal: the
    /// patient's access-log page measured over a log that size).
    #[arg(long, default_value_t = 0)]
    pub audit_entries: u64,
    /// Faults to inject (chaos): each kind once, then drawn at random from `--seed`.
    #[arg(long, default_value_t = 200)]
    pub faults: usize,
    /// The seed of the fault schedule (chaos); a random one (printed) when not given.
    #[arg(long)]
    pub seed: Option<u64>,
    /// How long Kafka stays down in a "Kafka down" fault (chaos).
    #[arg(long, default_value_t = 60)]
    pub outage_seconds: u64,
    /// The project's `infra/` scripts (chaos starts its own Postgres and Kafka with them).
    #[arg(long, default_value = "infra")]
    pub infra: std::path::PathBuf,
    /// records: run `up` pinned to CPU 0 (`taskset`; run the bench itself with `taskset -c 1`),
    /// write ten Observations for each of the first 1,000 patients, and measure FHIR REST over
    /// HTTP/1.1 keep-alive (read by id, search by patient, update) besides gRPC.
    #[arg(long)]
    pub pinned: bool,
}

impl BenchArgs {
    /// `--connections`, else `default`; at least one.
    pub fn connections_or(&self, default: usize) -> usize {
        self.connections.unwrap_or(default).max(1)
    }
}
