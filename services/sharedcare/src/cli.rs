//! The command line: parse, load configuration, hand over.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::{bench, platform};

/// Sharedcare: one login, one shared care record, consent enforced, every access audited.
#[derive(Parser, Debug)]
#[command(name = "sharedcare", version, about, long_about = None)]
pub struct Cli {
    /// TOML configuration file (settings also come from SHAREDCARE_* variables, `__` nesting).
    #[arg(long, global = true, env = "SHAREDCARE_CONFIG_FILE")]
    pub config: Option<PathBuf>,
    /// Print the configuration in force (after file, environment and flags) and exit.
    #[arg(long, global = true)]
    pub dump_config: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// What to run.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run every service in this process on embedded storage (or Postgres/Kafka if configured).
    Up {
        /// HTTP listen address (OIDC, FHIR, /healthz, /readyz, /metrics).
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// gRPC listen address (every service, health, reflection).
        #[arg(long, value_name = "ADDR")]
        grpc: Option<String>,
        /// Data directory for embedded databases and the event log.
        #[arg(long, value_name = "DIR")]
        data: Option<String>,
        /// `/healthz`, `/readyz` and `/metrics` on this address instead of the HTTP one.
        #[arg(long, value_name = "ADDR")]
        health: Option<String>,
    },
    /// Run one service on Postgres and Kafka (what each Kubernetes Deployment runs).
    Serve {
        /// The service to run (one of those listed below).
        #[arg(value_parser = platform::service_parser())]
        service: String,
        /// HTTP listen address.
        #[arg(long, value_name = "ADDR")]
        http: Option<String>,
        /// gRPC listen address.
        #[arg(long, value_name = "ADDR")]
        grpc: Option<String>,
        /// `/healthz`, `/readyz` and `/metrics` on this address instead of the HTTP one (what
        /// the chart's probes and ServiceMonitor use; no route reaches it).
        #[arg(long, value_name = "ADDR")]
        health: Option<String>,
    },
    /// Apply database migrations for the named services (all when none are named) and exit.
    Migrate {
        /// Services to migrate.
        #[arg(value_parser = platform::service_parser())]
        services: Vec<String>,
        /// Data directory of embedded (SQLite) stores; not used when `database.url` is set.
        #[arg(long, value_name = "DIR")]
        data: Option<String>,
    },
    /// Work with the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Work with the key-encryption key that seals identity's and audit's private keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Work with the passport's read model.
    Passport {
        #[command(subcommand)]
        command: PassportCommand,
    },
    /// Print the demo ICS that `up` seeds (organisations, staff with passwords and TOTP secrets,
    /// patients, OIDC clients with secrets and redirect URIs) as JSON.
    Demo {
        /// The issuer / HTTP base URL the demo clients were registered under
        /// (default: `identity.issuer`, else the HTTP listen address).
        #[arg(long, value_name = "URL", global = true)]
        issuer: Option<String>,
        #[command(subcommand)]
        command: Option<DemoCommand>,
    },
    /// Load FHIR resources (a Bundle or NDJSON file) into the shared care record through the
    /// records service, in transactions; resumable after an interruption.
    Import(crate::import::ImportArgs),
    /// Measure the platform on this machine (see the README's performance section).
    Bench(bench::BenchArgs),
    /// A second, small ICS app (a care home's shift handover page), its own OIDC client of
    /// identity, to show single sign-on and single sign-out across the ICS's apps. Defaults:
    /// the demo's `ics-sample-app` client on http://127.0.0.1:8400 against `up`'s issuer.
    SampleApp {
        /// Listen address.
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8400")]
        listen: std::net::SocketAddr,
        /// Its address as browsers reach it (default: http://<listen>).
        #[arg(long, value_name = "URL")]
        public_url: Option<String>,
        /// Identity's issuer URL (default: `identity.issuer`, else the HTTP listen address).
        #[arg(long, value_name = "URL")]
        issuer: Option<String>,
        /// Its client id at identity.
        #[arg(long, value_name = "ID", default_value = sharedcare_identity::demo::SAMPLE_APP_CLIENT.0)]
        client_id: String,
        /// Its client secret (or SAMPLE_APP_CLIENT_SECRET).
        #[arg(long, value_name = "SECRET", env = "SAMPLE_APP_CLIENT_SECRET", default_value = sharedcare_identity::demo::SAMPLE_APP_CLIENT.1, hide_env_values = true)]
        client_secret: String,
    },
    /// GET each URL and exit non-zero unless every one answers 2xx, naming each that did not
    /// (what the chart's `helm test` runs against each service's /readyz; usable from any
    /// shell or pod, as the image has no curl).
    Check {
        /// The URLs, e.g. http://sharedcare-records:9090/readyz.
        #[arg(required = true, value_name = "URL")]
        urls: Vec<String>,
        /// How long each request may take.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        timeout: u64,
    },
    /// The Kubernetes operator: CareOrganisations and CareApps reconciled into identity.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
}

/// `sharedcare operator …`.
#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Reconcile CareOrganisations and CareApps into identity (`operator.identity_url`, with
    /// the operator's own client `auth.client_id`/`auth.client_secret`, scope identity.admin),
    /// leading through a Lease so that several replicas are safe. Needs KUBECONFIG or an
    /// in-cluster service account.
    Run,
    /// Print the CustomResourceDefinitions, generated from the operator's types.
    Crds,
}

/// `sharedcare keys …`.
#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Re-seal every stored private key (identity's signing and relying-party keys, audit's
    /// log key) under the current key-encryption key. To rotate the KEK: make the new one
    /// `key_encryption.key_file` (or `.key`), list the old one under
    /// `key_encryption.previous_key_files` (or `.previous_keys`) for every process, run this,
    /// then drop the old one. Safe while the services run.
    Rewrap {
        /// Data directory of embedded (SQLite) stores; not used when `database.url` is set.
        #[arg(long, value_name = "DIR")]
        data: Option<String>,
    },
}

/// `sharedcare audit …`.
#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Recompute every leaf hash and every signed tree head from the stored entries; name any
    /// entry that was altered, removed or reordered. Exits non-zero if anything is wrong.
    Verify {
        /// Data directory of an embedded (SQLite) store. With `database.url` set (in the
        /// config file or SHAREDCARE_DATABASE__URL) the audit schema in Postgres is verified
        /// instead and this is not used.
        #[arg(long, value_name = "DIR")]
        data: Option<String>,
    },
    /// Watch an audit log from outside, as any monitor could: fetch its signed checkpoints and
    /// tiles over HTTP, check each checkpoint with the pinned key and against the last one seen,
    /// and raise an ALERT (exit status 2) if the log forked, went back or serves a bad tile.
    Monitor(crate::audit_monitor::MonitorArgs),
}

/// `sharedcare demo …`.
#[derive(Subcommand, Debug)]
pub enum DemoCommand {
    /// Write a deterministic synthetic ICS of N people (records of about 10-60 resources across
    /// the demo organisations) as NDJSON, one file per writing organisation, for `sharedcare
    /// import --source <ODS>` (the GP practice's file, with the Patients, first).
    Population {
        /// How many people (1 to 900,000: their NHS numbers come from the 999 range).
        #[arg(long, value_name = "N")]
        patients: u64,
        /// The seed: the same seed gives the same people.
        #[arg(long, value_name = "S", default_value_t = 1)]
        seed: u64,
        /// The directory to write `<ODS>.ndjson` files into.
        #[arg(long, value_name = "DIR", default_value = "population")]
        out: std::path::PathBuf,
        /// The day the records' dates count back from (YYYY-MM-DD; default today).
        #[arg(long, value_name = "DATE")]
        today: Option<chrono::NaiveDate>,
    },
    /// Write the demo ICS's clinical record into a running demo platform (what `up` does on
    /// its first start), as its integration engine: only into an empty record.
    Seed {
        /// Records' gRPC endpoint (default: `grpc.listen`).
        #[arg(long, value_name = "URL")]
        grpc: Option<String>,
        /// Consent's gRPC endpoint, where it is not records' (each its own Service in a
        /// cluster; default: the same as `--grpc`).
        #[arg(long, value_name = "URL")]
        consent: Option<String>,
    },
}

/// `sharedcare passport …`.
#[derive(Subcommand, Debug)]
pub enum PassportCommand {
    /// Rebuild the read model from scratch by replaying records' and consent's state topics
    /// from the oldest retained event; resumes an interrupted run. Stop the passport first
    /// when rebuilding its own store (`up` holds the embedded event log), or rebuild into
    /// another store with `--into` while it runs.
    Rebuild {
        /// Start again from scratch even if an interrupted run could be resumed.
        #[arg(long)]
        fresh: bool,
        /// The store to rebuild into: a Postgres schema, or `<name>.db` in the data directory.
        #[arg(long, value_name = "NAME", default_value = "passport")]
        into: String,
        /// Data directory of embedded stores and the event log; not used with Postgres/Kafka.
        #[arg(long, value_name = "DIR")]
        data: Option<String>,
    },
}

/// Runs the parsed command line.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut overrides: Vec<(&str, String)> = Vec::new();
    let mut flag = |key: &'static str, v: &Option<String>| {
        if let Some(v) = v {
            overrides.push((key, v.clone()));
        }
    };
    match &cli.command {
        Command::Up {
            http,
            grpc,
            data,
            health,
        } => {
            flag("http.listen", http);
            flag("grpc.listen", grpc);
            flag("data_dir", data);
            flag("health.listen", health);
        }
        Command::Serve { http, grpc, health, .. } => {
            flag("http.listen", http);
            flag("grpc.listen", grpc);
            flag("health.listen", health);
        }
        Command::Migrate { data, .. } => flag("data_dir", data),
        Command::Audit {
            command: AuditCommand::Verify { data },
        }
        | Command::Keys {
            command: KeysCommand::Rewrap { data },
        } => flag("data_dir", data),
        Command::Passport {
            command: PassportCommand::Rebuild { data, .. },
        } => flag("data_dir", data),
        Command::Bench(_)
        | Command::Audit {
            command: AuditCommand::Monitor(_),
        }
        | Command::Demo { .. }
        | Command::Import(_)
        | Command::Operator { .. }
        | Command::Check { .. }
        | Command::SampleApp { .. } => {}
    }
    let config: Config = sharedcare_kit::config::load(cli.config.as_deref(), std::env::vars(), &overrides)?;
    if cli.dump_config {
        // Secrets are not printed: the database password, the client secrets (this
        // process's, the portal's, GP Connect's and each HL7 v2 sender's) and key-encryption
        // keys given inline.
        let mut shown = config.clone();
        shown.database.url = sharedcare_kit::db::redact(&shown.database.url);
        let secrets = [
            &mut shown.auth.client_secret,
            &mut shown.portal.client_secret,
            &mut shown.connectors.gp_connect.client_secret,
            &mut shown.key_encryption.key,
        ]
        .into_iter()
        .chain(shown.connectors.senders.iter_mut().map(|s| &mut s.client_secret))
        .chain(shown.key_encryption.previous_keys.iter_mut());
        for secret in secrets.filter(|s| !s.is_empty()) {
            *secret = "<redacted>".into();
        }
        print!("{}", sharedcare_kit::config::dump(&shown)?);
        return Ok(());
    }
    match cli.command {
        Command::Up { .. } => platform::up(config).await,
        Command::Serve { service, .. } => platform::serve(config, &service).await,
        Command::Migrate { services, .. } => platform::migrate(config, &services).await,
        Command::Bench(args) => bench::run(config, args).await,
        Command::Operator {
            command: OperatorCommand::Crds,
        } => {
            print!("{}", sharedcare_operator::crds_yaml()?);
            Ok(())
        }
        Command::Operator {
            command: OperatorCommand::Run,
        } => platform::operator(config).await,
        Command::Import(args) => crate::import::run(config, args).await,
        Command::Check { urls, timeout } => check(&urls, std::time::Duration::from_secs(timeout)).await,
        Command::Audit {
            command: AuditCommand::Verify { .. },
        } => platform::verify_audit(config).await,
        Command::Keys {
            command: KeysCommand::Rewrap { .. },
        } => platform::rewrap_keys(config).await,
        Command::Audit {
            command: AuditCommand::Monitor(args),
        } => crate::audit_monitor::run(args).await,
        Command::Passport {
            command: PassportCommand::Rebuild { fresh, into, .. },
        } => platform::rebuild_passport(config, fresh, &into).await,
        Command::SampleApp {
            listen,
            public_url,
            issuer,
            client_id,
            client_secret,
        } => {
            let issuer = match issuer {
                Some(i) => i,
                None if !config.identity.issuer.is_empty() => config.identity.issuer.clone(),
                None => sharedcare_identity::default_issuer(config.http.listen),
            };
            let handover = sharedcare_portal::handover::HandoverConfig {
                listen,
                public_url: public_url.unwrap_or_else(|| format!("http://{listen}")),
                issuer,
                client_id,
                client_secret,
            };
            platform::sample_app(config, handover).await
        }
        Command::Demo { issuer, command } => {
            let base = match issuer {
                Some(i) => i,
                None if !config.identity.issuer.is_empty() => config.identity.issuer.clone(),
                None => sharedcare_identity::default_issuer(config.http.listen),
            };
            match command {
                None => {
                    let demo = sharedcare_identity::demo::describe(base.trim_end_matches('/'));
                    println!("{}", serde_json::to_string_pretty(&demo)?);
                }
                Some(DemoCommand::Population {
                    patients,
                    seed,
                    out,
                    today,
                }) => {
                    let today = today.unwrap_or_else(|| chrono::Utc::now().date_naive());
                    let started = std::time::Instant::now();
                    let w = crate::population::write(&out, today, seed, patients)?;
                    let secs = started.elapsed().as_secs_f64();
                    let total: u64 = w.resources.values().sum();
                    let files: Vec<String> = w.resources.iter().map(|(org, n)| format!("{org}.ndjson {n}")).collect();
                    println!(
                        "wrote {} people, {total} resources in {secs:.1} s ({:.0} people/s) to {}: {}",
                        w.people,
                        w.people as f64 / secs.max(1e-6),
                        out.display(),
                        files.join(", ")
                    );
                }
                Some(DemoCommand::Seed { grpc, consent }) => {
                    let grpc = grpc.unwrap_or_else(|| format!("http://{}", config.grpc.listen));
                    let consent = consent.unwrap_or_else(|| grpc.clone());
                    let today = chrono::Utc::now().date_naive();
                    let seeded = crate::demo_seed::seed(&base, &grpc, &consent, today).await?;
                    println!("{}", seeded.describe()?);
                }
            }
            Ok(())
        }
    }
}

/// `sharedcare check`: every URL answers 2xx, or an error naming those that did not and why.
async fn check(urls: &[String], timeout: std::time::Duration) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let mut failed = Vec::new();
    for url in urls {
        match client.get(url).send().await {
            Ok(r) if r.status().is_success() => println!("ok {url} ({})", r.status()),
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                let body: String = body.chars().take(300).collect();
                println!("FAILED {url}: {status} {body}");
                failed.push(url.as_str());
            }
            Err(e) => {
                println!("FAILED {url}: {e}");
                failed.push(url.as_str());
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "{} of {} checks failed: {}",
            failed.len(),
            urls.len(),
            failed.join(", ")
        )
    }
}
