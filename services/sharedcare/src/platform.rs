//! Composing services into a process: `up` (all of them), `serve` (one), `migrate`.
//! `up` and `serve` differ only in which services they mount and which back ends they pass.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sharedcare_kit::bus::Bus;
use sharedcare_kit::bus::embedded::EmbeddedBus;
use sharedcare_kit::bus::kafka::KafkaBus;
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::metrics::Metrics;
use sharedcare_kit::outbox::Outbox;
use sharedcare_kit::sealing::{self, LocalKek, Sealer};
use sharedcare_kit::serve::{self, Listen, Running};
use sharedcare_kit::service::{self, InternalClient, Mode, Service};
use sharedcare_kit::shutdown;
use sharedcare_kit::tasks::Tasks;
use sharedcare_kit::telemetry;

use crate::config::Config;

/// Every service the binary can run, in start order (a service's dependencies first).
/// Adding a service: write its crate, implement [`Service`] and add one line here.
pub fn registry(config: &Config) -> Vec<Box<dyn Service>> {
    vec![
        Box::new(sharedcare_identity::Identity::new(config.identity.clone())),
        Box::new(
            sharedcare_consent::Consent::new(sharedcare_identity::demo::care_relationships())
                .with_config(config.consent.clone()),
        ),
        Box::new(sharedcare_records::Records::new(config.records.clone())),
        Box::new(sharedcare_audit::Audit::new(config.audit.clone())),
        Box::new(sharedcare_passport::Passport::new(config.passport.clone())),
        Box::new(sharedcare_portal::Portal::new(
            config.portal.clone(),
            sharedcare_identity::demo::PORTAL_CLIENT,
        )),
        Box::new(sharedcare_connectors::Connectors::new(
            config.connectors.clone(),
            vec![demo_pas()],
        )),
    ]
}

/// The demo acute trust's PAS (Northbridge University Hospitals, RX1): sends HL7 v2 ADT with
/// MSH-3 `PAS` and MSH-4 `RX1`, and writes to records as its own client.
pub fn demo_pas() -> sharedcare_connectors::SenderConfig {
    let (client_id, secret) = sharedcare_identity::demo::PAS_CLIENT;
    sharedcare_connectors::SenderConfig {
        application: "PAS".into(),
        facility: "RX1".into(),
        ods_code: "RX1".into(),
        client_id: client_id.into(),
        client_secret: secret.into(),
        client_secret_file: String::new(),
        local_time: "uk".into(),
    }
}

/// The names of the services the binary can run, in start order.
pub fn service_names() -> Vec<&'static str> {
    registry(&Config::default()).iter().map(|s| s.name()).collect()
}

/// A command-line parser that accepts the registered services' names and lists them, with
/// what each does, in `--help`.
pub fn service_parser() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(
        registry(&Config::default())
            .iter()
            .map(|s| clap::builder::PossibleValue::new(s.name()).help(s.about())),
    )
}

/// The registered services named in `names`, in registry order; an unknown name is an error
/// that lists the known ones.
fn select(config: &Config, names: &[&str]) -> anyhow::Result<Vec<Box<dyn Service>>> {
    let known = service_names();
    if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
        bail!("unknown service {unknown:?}; expected one of: {}", known.join(", "));
    }
    Ok(registry(config)
        .into_iter()
        .filter(|s| names.contains(&s.name()))
        .collect())
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
pub async fn open_db(config: &Config, service: &dyn Service) -> anyhow::Result<Db> {
    open_store(config, service, service.name()).await
}

/// `service`'s migrated store under `name` (its schema in Postgres, `<name>.db` in the data
/// directory): a service's own store, or a second one beside it (a rebuild's target).
async fn open_store(config: &Config, service: &dyn Service, name: &str) -> anyhow::Result<Db> {
    let url = if config.database.url.is_empty() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create data directory {}", config.data_dir.display()))?;
        db::sqlite_url(&config.data_dir, name)
    } else {
        config.database.url.clone()
    };
    let timeout = Duration::from_millis(config.database.connect_timeout_ms);
    let db = Db::connect(&url, name, config.database.max_connections, timeout).await?;
    db.migrate(service.migrations()).await?;
    Ok(db)
}

/// Whether the configured database is the embedded one (SQLite files under `data_dir`).
fn embedded(config: &Config) -> bool {
    config.database.url.is_empty() || config.database.url.starts_with("sqlite:")
}

/// The key-encryption key sealing the private keys `services` store (identity's signing keys,
/// audit's log key): the configured one; on the embedded store without one, the key kept
/// beside the data (made on first start). On Postgres a KEK must be configured: refused,
/// naming the setting, otherwise.
pub fn sealer(config: &Config, services: &[&str]) -> anyhow::Result<Sealer> {
    let stores_keys = services
        .iter()
        .any(|s| [sharedcare_identity::NAME, sharedcare_audit::NAME].contains(s));
    if !stores_keys && !config.key_encryption.configured() {
        // Nothing is sealed in this process.
        return Ok(Arc::new(LocalKek::random()?));
    }
    let fallback = embedded(config).then(|| sealing::default_kek_path(&config.data_dir));
    Ok(config.key_encryption.sealer(fallback.as_deref())?)
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
    let topics: Vec<String> = registry(config).iter().flat_map(|s| s.topics()).collect();
    kafka.ensure_topics(&topics).await?;
    Ok(Arc::new(kafka))
}

/// The issuer the services in this process trust: `auth.issuer`, else the identity service
/// mounted here.
fn trusted_issuer(config: &Config, services: &[&str], http: std::net::SocketAddr) -> Option<String> {
    if !config.auth.issuer.is_empty() {
        return Some(config.auth.issuer.clone());
    }
    services
        .contains(&sharedcare_identity::NAME)
        .then(|| sharedcare_identity::issuer(&config.identity, http))
}

/// When identity runs in this process, the others fetch its keys and their own tokens from
/// this process's HTTP listener, not through the public issuer URL: behind an ingress or in a
/// container, that URL (say https://ics.example.nhs.uk) need not lead back here from inside.
fn keys_from_here(config: &mut Config, services: &[&str], http: std::net::SocketAddr) {
    if !services.contains(&sharedcare_identity::NAME) {
        return;
    }
    let here = format!("http://{}", loopback_if_unspecified(http));
    if config.auth.jwks_uri.is_empty() {
        config.auth.jwks_uri = format!("{here}/oauth2/jwks");
    }
    if config.auth.token_endpoint.is_empty() {
        config.auth.token_endpoint = format!("{here}/oauth2/token");
    }
}

/// `addr`, with 0.0.0.0 (or ::) made the loopback address: where this process reaches itself.
fn loopback_if_unspecified(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    if addr.ip().is_unspecified() {
        std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// The client-credentials client the services in this process use for their own calls: the
/// configured one, or (when identity runs here too) an internal client with a secret made
/// for this start, which identity registers as it mounts.
fn internal_client(config: &mut Config, services: &[&str]) -> Option<InternalClient> {
    if !config.auth.client_id.is_empty() || !services.contains(&sharedcare_identity::NAME) {
        return None;
    }
    config.auth.client_id = "sharedcare-internal".into();
    config.auth.client_secret = sharedcare_kit::jose::random_token(32);
    Some(InternalClient {
        id: config.auth.client_id.clone(),
        secret: config.auth.client_secret.clone(),
        scopes: vec!["consent.decide".into(), "audit.read".into()],
    })
}

/// Starts `services` in this process; returns once they serve.
pub async fn start(config: &Config, mode: Mode, services: &[&str], client_id: &str) -> anyhow::Result<Running> {
    let selected = select(config, services)?;
    let names: Vec<&'static str> = selected.iter().map(|s| s.name()).collect();
    let bus = open_bus(config, client_id).await?;
    let bound = serve::bind_all(Listen {
        http: config.http.listen,
        grpc: config.grpc.listen,
        health: config.health.listen,
        max_in_flight: config.max_in_flight,
        max_body_bytes: config.max_body_bytes,
        client_timeout: Duration::from_millis(config.client_timeout_ms),
    })
    .await?;
    let mut config = config.clone();
    let internal = internal_client(&mut config, &names);
    keys_from_here(&mut config, &names, bound.http_addr);
    let issuer = trusted_issuer(&config, &names, bound.http_addr);
    let sealer = sealer(&config, &names)?;
    let tasks = Tasks::new();
    let metrics = Metrics::new();
    let mut mounts = Vec::new();
    for svc in &selected {
        let db = open_db(&config, svc.as_ref()).await?;
        let ctx = service::Context {
            outbox: Outbox::new(db.clone(), config.outbox.clone(), &tasks),
            db,
            mode,
            tasks: tasks.clone(),
            http_addr: bound.http_addr,
            grpc_addr: bound.grpc_addr,
            mounted: names.clone(),
            issuer: issuer.clone(),
            auth: config.auth.clone(),
            internal_client: internal.clone(),
            seed_demo: sharedcare_identity::seeds_demo(&config.identity, mode),
            metrics: metrics.clone(),
            sealer: sealer.clone(),
        };
        let mount = service::mount(svc.as_ref(), &ctx)
            .await
            .map_err(|e| anyhow::anyhow!("{} could not start: {e}", svc.name()))?;
        mounts.push(mount);
    }
    let verifier = issuer.as_deref().map(|i| config.auth.verifier(i)).transpose()?;
    let running = serve::start(mounts, bus, bound, metrics, tasks, verifier).await?;
    let demo = [
        sharedcare_identity::NAME,
        sharedcare_consent::NAME,
        sharedcare_records::NAME,
    ];
    if mode == Mode::Up
        && sharedcare_identity::seeds_demo(&config.identity, mode)
        && config.identity.seed_demo_record
        && demo.iter().all(|s| running.services.contains(s))
    {
        seed_demo_record(&running).await;
    }
    Ok(running)
}

/// On a demo platform, the demo's clinical record, written through records like any feed's,
/// before `up` says it is up. Seeded only into an empty record; a failure is reported and the
/// platform runs on without it.
async fn seed_demo_record(running: &Running) {
    let today = chrono::Utc::now().date_naive();
    let http = format!("http://{}", loopback_if_unspecified(running.http));
    let grpc = format!("http://{}", loopback_if_unspecified(running.grpc));
    match crate::demo_seed::seed(&http, &grpc, &grpc, today).await {
        Ok(s @ crate::demo_seed::Seeded::Wrote { .. }) => {
            if let Ok(said) = s.describe() {
                tracing::info!("{said}");
            }
        }
        Ok(crate::demo_seed::Seeded::AlreadyThere) => {}
        Ok(crate::demo_seed::Seeded::NotEmpty { patients, resources }) => {
            tracing::info!(
                patients,
                resources,
                "the record holds data: the demo's clinical record is not seeded"
            );
        }
        Err(e) => tracing::warn!("the demo's clinical record could not be seeded: {e:#}"),
    }
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

async fn run_until_signal(config: Config, mode: Mode, services: &[&str], name: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let _lock = lock_data_dir(&config)?;
    let telemetry = telemetry::init(name, &config.telemetry)?;
    let running = start(&config, mode, services, name).await?;
    let web = if running.services.contains(&sharedcare_portal::NAME) {
        format!(
            "  web   http://{}/  (start page, /portal for staff, /passport for patients)\n",
            running.http
        )
    } else {
        String::new()
    };
    let hl7: String = running
        .listeners
        .iter()
        .filter(|(kind, _)| kind.starts_with("mllp"))
        .map(|(kind, addr)| {
            let tls = if *kind == "mllps" { " with TLS" } else { "" };
            format!("  HL7   {addr}  (HL7 v2 ADT and results over MLLP{tls}, from configured senders)\n")
        })
        .collect();
    let probes = match running.listeners.iter().find(|(kind, _)| *kind == "health") {
        Some((_, addr)) => format!("(/healthz, /readyz and /metrics on http://{addr})"),
        None => "(/healthz, /readyz, /metrics)".to_string(),
    };
    let extra: String = running
        .listeners
        .iter()
        .map(|(kind, addr)| format!(" {kind}={addr}"))
        .collect();
    // A closed stdout (a supervisor that stopped reading) must not stop the platform.
    say(&format!(
        "Sharedcare {} is up ({}) in {} ms\n  HTTP  http://{}  {probes}\n  \
         gRPC  {}  (every service, health, reflection)\n{web}{hl7}  data  {}\nlistening http={} grpc={}{extra}\n\
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
    run_until_signal(config, Mode::Up, &service_names(), "sharedcare").await
}

/// `sharedcare serve <service>`: one service on Postgres and Kafka.
pub async fn serve(config: Config, service: &str) -> anyhow::Result<()> {
    let Some(name) = service_names().into_iter().find(|s| *s == service) else {
        bail!(
            "unknown service {service:?}; expected one of: {}",
            service_names().join(", ")
        )
    };
    if config.database.url.is_empty() {
        bail!(
            "`database.url` is required by serve: set SHAREDCARE_DATABASE__URL=postgres://user:password@host:port/database"
        );
    }
    if config.kafka.brokers.is_empty() {
        bail!("`kafka.brokers` is required by serve: set SHAREDCARE_KAFKA__BROKERS=host:port");
    }
    run_until_signal(config, Mode::Serve, &[name], name).await
}

/// `sharedcare migrate [service…]`.
pub async fn migrate(config: Config, services: &[String]) -> anyhow::Result<()> {
    let names: Vec<&str> = if services.is_empty() {
        service_names()
    } else {
        services.iter().map(String::as_str).collect()
    };
    let selected = select(&config, &names)?;
    // Only the databases are touched: with Postgres, no data directory is needed (the chart's
    // migration Job runs read-only, with no configuration but the database URL).
    let _lock = if config.database.url.is_empty() {
        lock_data_dir(&config)?
    } else {
        None
    };
    for s in selected {
        let db = open_db(&config, s.as_ref()).await?;
        db.close().await;
        println!("migrated {}", s.name());
    }
    Ok(())
}

/// `sharedcare passport rebuild`: the passport's read model rebuilt into its store `into`
/// (its own by default) from the state topics the bus retains, with progress on stderr.
pub async fn rebuild_passport(config: Config, fresh: bool, into: &str) -> anyhow::Result<()> {
    let passport = sharedcare_passport::Passport::new(config.passport.clone());
    let db = open_store(&config, &passport, into).await?;
    let bus = open_bus(&config, "sharedcare-passport-rebuild").await?;
    let poison = Metrics::new().unreported(sharedcare_passport::NAME, "undecodable_event");
    let began = std::time::Instant::now();
    let report = |line: String| eprintln!("{line}");
    let done = sharedcare_passport::rebuild::run(db.clone(), bus, fresh, poison, &report).await;
    db.close().await;
    let s = done?;
    let secs = began.elapsed().as_secs_f64();
    println!(
        "passport rebuilt into {into}: {} events applied in {secs:.1}s ({:.0}/s){}; {} entries, sharing state for {} people (run {})",
        s.events,
        s.events as f64 / secs.max(0.001),
        if s.resumed { ", resuming an interrupted run" } else { "" },
        s.entries,
        s.people,
        s.group
    );
    Ok(())
}

/// `sharedcare keys rewrap`: re-seals every private key identity and audit store under the
/// current key-encryption key (keys sealed under one of `key_encryption.previous_*`, or kept in
/// the clear by an older release). Safe while the services run: each key is replaced only if
/// unchanged, and the services open keys under the current and previous KEKs alike.
pub async fn rewrap_keys(config: Config) -> anyhow::Result<()> {
    let sealer = sealer(&config, &[sharedcare_identity::NAME, sharedcare_audit::NAME])?;
    let identity = open_db(&config, &sharedcare_identity::Identity::new(config.identity.clone())).await?;
    let sealed = sharedcare_identity::store::Store::new(identity.clone(), sealer.clone())
        .reseal_keys()
        .await?;
    identity.close().await;
    let audit = open_db(&config, &sharedcare_audit::Audit::new(config.audit.clone())).await?;
    let log = sharedcare_audit::store::Store::new(audit.clone(), sealer.clone())
        .reseal_log_key()
        .await?;
    audit.close().await;
    println!(
        "re-sealed under key-encryption key {}: identity {sealed} key(s), audit {log} key(s); every other key already was",
        sealer.current()
    );
    Ok(())
}

/// `sharedcare audit verify`: checks the audit log in the configured database.
pub async fn verify_audit(config: Config) -> anyhow::Result<()> {
    let sealer = sealer(&config, &[sharedcare_audit::NAME])?;
    let db = open_db(&config, &sharedcare_audit::Audit::new(config.audit.clone())).await?;
    let log = sharedcare_audit::log::Log::open(
        sharedcare_audit::store::Store::new(db.clone(), sealer),
        &sharedcare_audit::note::origin(&audit_issuer(&config)),
    )
    .await?;
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

/// The issuer the audit log's checkpoints are named after: `auth.issuer` (services in their
/// own processes), else `identity.issuer`, else `up`'s default.
fn audit_issuer(config: &Config) -> String {
    if !config.auth.issuer.is_empty() {
        config.auth.issuer.clone()
    } else if !config.identity.issuer.is_empty() {
        config.identity.issuer.clone()
    } else {
        sharedcare_identity::default_issuer(config.http.listen)
    }
}

/// `sharedcare operator run`: the Kubernetes operator, until SIGTERM or SIGINT.
pub async fn operator(config: Config) -> anyhow::Result<()> {
    let telemetry = telemetry::init(sharedcare_operator::NAME, &config.telemetry)?;
    let op = &config.operator;
    if op.identity_url.is_empty() {
        bail!("`operator.identity_url` is required: identity's gRPC endpoint, e.g. http://sharedcare-identity:50051");
    }
    if config.auth.issuer.is_empty() {
        bail!("`auth.issuer` is required by the operator: identity's issuer URL");
    }
    if config.auth.client_id.is_empty() || config.auth.client_secret.is_empty() {
        bail!(
            "`auth.client_id` and `auth.client_secret` are required by the operator: its own client, with scope identity.admin"
        );
    }
    let endpoint = if config.auth.token_endpoint.is_empty() {
        format!("{}/oauth2/token", config.auth.issuer.trim_end_matches('/'))
    } else {
        config.auth.token_endpoint.clone()
    };
    let token = sharedcare_kit::auth::ServiceToken::new(
        endpoint,
        &config.auth.client_id,
        &config.auth.client_secret,
        "identity.admin",
    )?;
    let identity = sharedcare_operator::identity::Identity::new(&op.identity_url, "operator.identity_url", token)?;
    let stop = tokio_util::sync::CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        shutdown::signal().await;
        on_signal.cancel();
    });
    let setup = sharedcare_operator::Setup {
        config: op.clone(),
        identity,
        issuer: config.auth.issuer.clone(),
    };
    let result = sharedcare_operator::run(setup, stop).await;
    telemetry.shutdown();
    result
}

/// `sharedcare sample-app`: the sample ICS app, until SIGTERM or SIGINT.
pub async fn sample_app(config: Config, app: sharedcare_portal::handover::HandoverConfig) -> anyhow::Result<()> {
    let telemetry = telemetry::init("sample-app", &config.telemetry)?;
    let listener = tokio::net::TcpListener::bind(app.listen)
        .await
        .with_context(|| format!("cannot listen on {}", app.listen))?;
    tracing::info!(
        listen = %listener.local_addr()?,
        issuer = %app.issuer,
        client_id = %app.client_id,
        "sample ICS app (care home handover) serving"
    );
    let served = sharedcare_portal::handover::serve(listener, &app, shutdown::signal()).await;
    telemetry.shutdown();
    Ok(served?)
}
