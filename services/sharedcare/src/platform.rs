//! Composing services into a process: `up` (all of them), `serve` (one), `migrate`.
//! `up` and `serve` differ only in which services they mount and which back ends they pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sharedcare_kit::bus::embedded::EmbeddedBus;
use sharedcare_kit::bus::kafka::KafkaBus;
use sharedcare_kit::bus::{self, Bus};
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::metrics::Metrics;
use sharedcare_kit::serve::{self, Bound, Listen, Mount, Running};
use sharedcare_kit::shutdown;
use sharedcare_kit::telemetry;

use crate::config::Config;

/// Services that run today, in start order.
pub const SERVICES: &[&str] = &[
    sharedcare_identity::NAME,
    sharedcare_consent::NAME,
    sharedcare_records::NAME,
    sharedcare_audit::NAME,
];

fn check_service(name: &str) -> anyhow::Result<()> {
    if SERVICES.contains(&name) {
        return Ok(());
    }
    let drafted = [sharedcare_passport::NAME];
    if drafted.contains(&name) {
        bail!(
            "service {name:?} is drafted but not built yet; runnable services: {}",
            SERVICES.join(", ")
        );
    }
    bail!("unknown service {name:?}; expected one of: {}", SERVICES.join(", "))
}

/// Takes the data directory's lock when this process will use embedded storage or the
/// embedded event log: SQLite files and the log have one writer process by design, so a second
/// `sharedcare` on the same directory is refused at start instead of corrupting ordering.
/// The lock is held until the returned file is dropped (process exit included).
pub fn lock_data_dir(config: &Config) -> anyhow::Result<Option<std::fs::File>> {
    if !config.database.url.is_empty() && !config.kafka.brokers.is_empty() {
        return Ok(None);
    }
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
    let path = config.data_dir.join("sharedcare.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "data directory {} is in use by another sharedcare process; stop it or pass --data with another directory",
            config.data_dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
}

/// Opens a service's database (its Postgres schema or its SQLite file) and migrates it.
pub async fn open_db(config: &Config, service: &str) -> anyhow::Result<Db> {
    let url = if config.database.url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
        db::sqlite_url(&config.data_dir, service)
    } else {
        config.database.url.clone()
    };
    let timeout = Duration::from_millis(config.database.connect_timeout_ms);
    let db = Db::connect(&url, service, config.database.max_connections, timeout).await?;
    match service {
        sharedcare_identity::NAME => sharedcare_identity::migrate(&db).await?,
        sharedcare_consent::NAME => sharedcare_consent::migrate(&db).await?,
        sharedcare_records::NAME => sharedcare_records::migrate(&db).await?,
        sharedcare_audit::NAME => sharedcare_audit::migrate(&db).await?,
        other => check_service(other)?,
    }
    Ok(db)
}

/// The bus the configuration asks for, checked reachable.
pub async fn open_bus(config: &Config, client_id: &str) -> anyhow::Result<Arc<dyn Bus>> {
    if config.kafka.brokers.is_empty() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
        let retention = Duration::from_secs(config.events.retention_hours.saturating_mul(3600));
        let bus = EmbeddedBus::open(&config.data_dir.join("events.db"))
            .await?
            .with_retention(retention);
        return Ok(Arc::new(bus));
    }
    let kafka = KafkaBus::new(&config.kafka, client_id)?;
    kafka.health().await.context("`kafka.brokers` cannot be reached")?;
    let topics: Vec<String> = SERVICES.iter().map(|s| bus::topic(s)).collect();
    kafka.ensure_topics(&topics).await?;
    Ok(Arc::new(kafka))
}

/// The issuer when none is configured: the HTTP base URL this process serves on.
pub fn default_issuer(http: std::net::SocketAddr) -> String {
    if http.ip().is_unspecified() {
        format!("http://localhost:{}", http.port())
    } else {
        format!("http://{http}")
    }
}

/// The issuer the services in this process trust: `auth.issuer`, else the identity service
/// mounted here (`identity.issuer` or this process's HTTP base URL).
fn trusted_issuer(config: &Config, services: &[&str], http: std::net::SocketAddr) -> anyhow::Result<String> {
    if !config.auth.issuer.is_empty() {
        return Ok(config.auth.issuer.clone());
    }
    if services.contains(&sharedcare_identity::NAME) {
        return Ok(identity_issuer(config, http));
    }
    bail!(
        "`auth.issuer` is required when identity runs in another process: set SHAREDCARE_AUTH__ISSUER to the identity service's URL, e.g. http://identity:8080"
    )
}

fn identity_issuer(config: &Config, http: std::net::SocketAddr) -> String {
    if config.identity.issuer.is_empty() {
        default_issuer(http)
    } else {
        config.identity.issuer.trim_end_matches('/').to_string()
    }
}

/// The client-credentials client the services in this process use for their own calls: the
/// configured one, or (when identity runs here too) an internal client with a secret made
/// for this start, which identity registers as it mounts.
fn internal_client(config: &mut Config, services: &[&str]) -> Option<sharedcare_identity::InternalClient> {
    if !config.auth.client_id.is_empty() || !services.contains(&sharedcare_identity::NAME) {
        return None;
    }
    config.auth.client_id = "sharedcare-internal".into();
    config.auth.client_secret = sharedcare_kit::jose::random_token(32);
    Some(sharedcare_identity::InternalClient {
        id: config.auth.client_id.clone(),
        secret: config.auth.client_secret.clone(),
        scopes: vec!["consent.decide".into()],
    })
}

/// How records asks consent: `records.consent_url`, else the consent service in this process.
fn consent_pdp(
    config: &Config,
    services: &[&str],
    bound: &Bound,
) -> anyhow::Result<std::sync::Arc<dyn sharedcare_records::consent::Pdp>> {
    let url = if !config.records.consent_url.is_empty() {
        config.records.consent_url.clone()
    } else if services.contains(&sharedcare_consent::NAME) {
        let mut addr = bound.grpc_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    } else {
        bail!(
            "`records.consent_url` is required when consent runs in another process: set SHAREDCARE_RECORDS__CONSENT_URL to its gRPC URL, e.g. http://consent:50051"
        )
    };
    let issuer = trusted_issuer(config, services, bound.http_addr)?;
    let Some(token) = config.auth.service_token(&issuer, "consent.decide") else {
        bail!(
            "`auth.client_id` and `auth.client_secret` are required by records to ask consent: register a client with the client_credentials grant and scope consent.decide, then set SHAREDCARE_AUTH__CLIENT_ID and SHAREDCARE_AUTH__CLIENT_SECRET"
        )
    };
    let timeout = Duration::from_millis(config.records.consent_timeout_ms);
    Ok(std::sync::Arc::new(sharedcare_records::consent::GrpcPdp::new(
        &url, token, timeout,
    )?))
}

async fn mount(
    config: &Config,
    services: &[&str],
    service: &str,
    db: Db,
    bound: &Bound,
    internal: Option<sharedcare_identity::InternalClient>,
) -> anyhow::Result<Mount> {
    let http = bound.http_addr;
    let verifier = || -> anyhow::Result<_> { Ok(config.auth.verifier(&trusted_issuer(config, services, http)?)) };
    Ok(match service {
        sharedcare_identity::NAME => sharedcare_identity::mount(
            db,
            config.outbox.clone(),
            config.identity.clone(),
            identity_issuer(config, http),
            services.len() > 1,
            internal,
        )
        .await
        .context("identity could not start")?,
        sharedcare_consent::NAME => sharedcare_consent::mount(db, config.outbox.clone(), verifier()?),
        sharedcare_records::NAME => sharedcare_records::mount(
            db,
            config.outbox.clone(),
            verifier()?,
            consent_pdp(config, services, bound)?,
            &config.records.sensitive_codes,
        ),
        sharedcare_audit::NAME => sharedcare_audit::mount(db, config.outbox.clone(), verifier()?, config.audit.clone())
            .await
            .context("audit could not start")?,
        other => {
            check_service(other)?;
            unreachable!("check_service accepts only mountable services")
        }
    })
}

/// Starts `services` in this process; returns once they serve.
pub async fn start(config: &Config, services: &[&str], client_id: &str) -> anyhow::Result<Running> {
    let bus = open_bus(config, client_id).await?;
    let bound = serve::bind_all(Listen {
        http: config.http.listen,
        grpc: config.grpc.listen,
    })
    .await?;
    let mut config = config.clone();
    let internal = internal_client(&mut config, services);
    let mut mounts = Vec::new();
    for s in services {
        let db = open_db(&config, s).await?;
        if *s == sharedcare_consent::NAME
            && config.identity.seed_demo.unwrap_or(services.len() > 1)
            && sharedcare_consent::seed_relationships(&db, &sharedcare_identity::demo::care_relationships()).await?
        {
            tracing::info!("seeded the demo ICS's care relationships into consent");
        }
        mounts.push(mount(&config, services, s, db, &bound, internal.clone()).await?);
    }
    Ok(serve::start(mounts, bus, bound, Metrics::new()).await?)
}

fn describe_storage(config: &Config) -> String {
    let store = if config.database.url.is_empty() {
        format!("SQLite under {}", config.data_dir.display())
    } else {
        format!("Postgres {}", db::redact(&config.database.url))
    };
    let events = if config.kafka.brokers.is_empty() {
        format!("embedded event log {}", config.data_dir.join("events.db").display())
    } else {
        format!("Kafka {}", config.kafka.brokers)
    };
    format!("{store}; events: {events}")
}

async fn run_until_signal(config: Config, services: &[&str], name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let _lock = lock_data_dir(&config)?;
    let telemetry = telemetry::init(name, &config.telemetry)?;
    let running = start(&config, services, name).await?;
    // A closed stdout (a supervisor that stopped reading) must not stop the platform.
    say(&format!(
        "Sharedcare {} is up ({}) in {} ms\n  HTTP  http://{}  (/healthz, /readyz, /metrics)\n  \
         gRPC  {}  (every service, health, reflection)\n  data  {}\nlistening http={} grpc={}\n\
         Stop with Ctrl-C (SIGINT) or SIGTERM.\n",
        env!("CARGO_PKG_VERSION"),
        running.services.join(", "),
        started.elapsed().as_millis(),
        running.http,
        running.grpc,
        describe_storage(&config),
        running.http,
        running.grpc,
    ));
    shutdown::signal().await;
    let clean = running.stop(Duration::from_millis(config.shutdown_grace_ms)).await;
    telemetry.shutdown();
    if !clean {
        bail!(
            "shutdown did not finish within {} ms per phase",
            config.shutdown_grace_ms
        );
    }
    say("Sharedcare stopped.\n");
    Ok(())
}

fn say(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// `sharedcare up`: every service in one process.
pub async fn up(config: Config) -> anyhow::Result<()> {
    run_until_signal(config, SERVICES, "sharedcare").await
}

/// `sharedcare serve <service>`: one service on Postgres and Kafka.
pub async fn serve(config: Config, service: &str) -> anyhow::Result<()> {
    check_service(service)?;
    if config.database.url.is_empty() {
        bail!(
            "`database.url` is required by serve: set SHAREDCARE_DATABASE__URL=postgres://user:password@host:port/database"
        );
    }
    if config.kafka.brokers.is_empty() {
        bail!("`kafka.brokers` is required by serve: set SHAREDCARE_KAFKA__BROKERS=host:port");
    }
    let name: &'static str = SERVICES
        .iter()
        .find(|s| **s == service)
        .copied()
        .unwrap_or("sharedcare");
    run_until_signal(config, &[name], name).await
}

/// `sharedcare migrate [service…]`.
pub async fn migrate(config: Config, services: &[String]) -> anyhow::Result<()> {
    let names: Vec<&str> = if services.is_empty() {
        SERVICES.to_vec()
    } else {
        services.iter().map(String::as_str).collect()
    };
    for s in &names {
        check_service(s)?;
    }
    let _lock = lock_data_dir(&config)?;
    for s in names {
        let db = open_db(&config, s).await?;
        db.close().await;
        println!("migrated {s}");
    }
    Ok(())
}

/// `sharedcare audit verify`: checks the audit log in the configured database.
pub async fn verify_audit(config: Config) -> anyhow::Result<()> {
    let db = open_db(&config, sharedcare_audit::NAME).await?;
    let log = sharedcare_audit::log::Log::open(sharedcare_audit::store::Store::new(db.clone())).await?;
    let (entries, heads, problems) = log.verify().await?;
    db.close().await;
    if problems.is_empty() {
        println!(
            "audit log verified: {entries} entries, {heads} signed tree heads, nothing altered, removed or reordered"
        );
        return Ok(());
    }
    for p in &problems {
        println!("FAIL {p}");
    }
    bail!(
        "the audit log failed verification: {} problem(s) in {entries} entries and {heads} signed tree heads",
        problems.len()
    )
}
