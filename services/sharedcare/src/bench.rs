//! `sharedcare bench`: the measurements in the README's performance section.
//!
//! - `bench bus`: event bus throughput and publish→consume latency (embedded, or Kafka when
//!   `kafka.brokers` is configured).
//! - `bench records`: record put, get and search, and consent Decide, over gRPC against
//!   `sharedcare up` started as a child process on a fresh data directory (or `--target` an
//!   existing endpoint: put, get and search only).
//! - `bench import`: `sharedcare import` of a generated NDJSON file into a fresh `up`.
//! - `bench audit`: the audit log from empty to `--entries` ([`crate::bench_audit`]).
//! - `bench identity`: the token endpoint, code and refresh round trips, logins, verification.
//! - `bench passport`: views as a service, a GP and a patient; freshness; rebuild
//!   ([`crate::bench_passport`]).
//! - `bench startup`: time from spawning `sharedcare up` to `/readyz` answering 200, and the
//!   idle resident memory after that.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;
use sharedcare_kit::bus::embedded::EmbeddedBus;
use sharedcare_kit::bus::kafka::KafkaBus;
use sharedcare_kit::bus::{Bus, Delivery, Envelope, Handler, Outgoing};
use sharedcare_proto::consent::v1::DecideRequest;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::records::v1::records_client::RecordsClient;
use sharedcare_proto::records::v1::{GetRequest, PutRequest, SearchRequest};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

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
    /// HTTP/2 connections the requests are spread over (records).
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
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
}

/// Runs a benchmark.
pub async fn run(config: Config, args: BenchArgs) -> anyhow::Result<()> {
    match args.what {
        What::Bus => bus(&config, &args).await,
        What::Records => records(&args).await,
        What::Startup => startup().await,
        What::Identity => crate::bench_identity::run(&args).await,
        What::Audit => crate::bench_audit::run(&config, &args).await,
        What::Import => import(&args).await,
        What::Passport => crate::bench_passport::run(&config, &args).await,
        What::PatientSearch => patient_search(&args).await,
        What::Export => crate::bench_export::run(&args).await,
        What::Operator => crate::bench_operator::run(&args).await,
        What::Portal => crate::bench_portal::run(&args).await,
    }
}

pub(crate) fn report(name: &str, count: u64, elapsed: Duration, h: &Histogram<u64>) {
    println!(
        "{name:<28} {:>9.0}/s   p50 {:>7.3} ms   p99 {:>7.3} ms   max {:>7.3} ms   (n={count})",
        count as f64 / elapsed.as_secs_f64(),
        h.value_at_quantile(0.50) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0,
    );
}

pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

// ---------------------------------------------------------------------------------------- bus

/// Records publish→consume latency (microseconds) from the envelope's `subject`.
struct LatencyHandler {
    hist: std::sync::Mutex<Histogram<u64>>,
    seen: AtomicU64,
    origin: Instant,
}

#[async_trait::async_trait]
impl Handler for LatencyHandler {
    async fn handle(&self, d: &Delivery) -> sharedcare_kit::Result<()> {
        if let Ok(sent_us) = d.envelope.subject.parse::<u64>() {
            let now = self.origin.elapsed().as_micros() as u64;
            let _ = self
                .hist
                .lock()
                .map(|mut h| h.record(now.saturating_sub(sent_us).max(1)));
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn event(topic: &str, i: u64, subject: String) -> Outgoing {
    let env = Envelope {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: "bench.Event".into(),
        source: "bench".into(),
        subject,
        key: format!("943{:07}", i % 1000),
        data: vec![0u8; 256],
        ..Envelope::default()
    };
    Outgoing::new(topic, &env)
}

type ConsumerTask = tokio::task::JoinHandle<sharedcare_kit::Result<()>>;

/// Consumes `topic` (group `bench-<topic>`) into a fresh [`LatencyHandler`].
fn start_consumer(
    bus: &Arc<dyn Bus>,
    topic: &'static str,
    origin: Instant,
) -> (Arc<LatencyHandler>, CancellationToken, ConsumerTask) {
    let handler = Arc::new(LatencyHandler {
        hist: std::sync::Mutex::new(histogram()),
        seen: AtomicU64::new(0),
        origin,
    });
    let stop = CancellationToken::new();
    let (b, h, s) = (bus.clone(), handler.clone(), stop.clone());
    let task = tokio::spawn(async move { b.consume(&format!("bench-{topic}"), topic, h, s).await });
    (handler, stop, task)
}

async fn bus(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (bus, kind): (Arc<dyn Bus>, String) = if config.kafka.brokers.is_empty() {
        (
            Arc::new(EmbeddedBus::open(&dir.path().join("events.db")).await?),
            "embedded".into(),
        )
    } else {
        let mut kc = config.kafka.clone();
        kc.namespace = if kc.namespace.is_empty() {
            format!("bench{}", std::process::id())
        } else {
            format!("{}-bench{}", kc.namespace, std::process::id())
        };
        let k = KafkaBus::new(&kc, "bench")?;
        k.health().await?;
        k.ensure_topics(&["throughput".to_string(), "latency".to_string()])
            .await?;
        (Arc::new(k), format!("kafka {}", config.kafka.brokers))
    };
    println!("bus: {kind}");

    // Throughput: publish in batches of 500 for the phase, then consume everything.
    let origin = Instant::now();
    let started = Instant::now();
    let mut published = 0u64;
    let mut batch_hist = histogram();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let batch: Vec<Outgoing> = (0..500)
            .map(|i| event("throughput", published + i, String::new()))
            .collect();
        let t = Instant::now();
        bus.publish(&batch).await?;
        batch_hist.record(t.elapsed().as_micros() as u64)?;
        published += 500;
    }
    report("publish (batches of 500)", published, started.elapsed(), &batch_hist);
    let (handler, stop, consumer) = start_consumer(&bus, "throughput", origin);
    let started = Instant::now();
    while handler.seen.load(Ordering::Relaxed) < published {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("consumer did not catch up within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let consumed = started.elapsed();
    println!(
        "{:<28} {:>9.0}/s   (n={published})",
        "consume",
        published as f64 / consumed.as_secs_f64()
    );
    stop.cancel();
    let _ = consumer.await;

    // Latency: a steady rate, each event stamped at publish.
    let (handler, stop, consumer) = start_consumer(&bus, "latency", origin);
    // Let the consumer join its group before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let bus = bus.clone();
        let e = event("latency", i, origin.elapsed().as_micros().to_string());
        sends.spawn(async move { bus.publish(&[e]).await });
    }
    while let Some(r) = sends.join_next().await {
        r??;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while handler.seen.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let _ = consumer.await;
    let h = handler.hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    report(
        &format!("publish→consume @{}/s", args.rate),
        h.len(),
        Duration::from_secs(args.seconds),
        &h,
    );
    Ok(())
}

// ------------------------------------------------------------------------------------ records

/// A `sharedcare up` child process on a fresh data directory.
pub(crate) struct UpProcess {
    child: Child,
    pub(crate) http: String,
    pub(crate) grpc: String,
    _data: tempfile::TempDir,
}

impl UpProcess {
    pub(crate) fn start() -> anyhow::Result<(UpProcess, Duration)> {
        Self::start_with(&[])
    }

    /// Starts `up` under `prefix` (e.g. `taskset -c 0`).
    pub(crate) fn start_with(prefix: &[&str]) -> anyhow::Result<(UpProcess, Duration)> {
        Self::start_env(prefix, &[])
    }

    /// Starts `up` under `prefix` with extra environment `env` (e.g. without the demo's
    /// clinical record, for a benchmark that counts exactly what it wrote).
    pub(crate) fn start_env(prefix: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(UpProcess, Duration)> {
        Self::start_in(tempfile::tempdir()?, prefix, env)
    }

    /// Starts `up` on the data directory `data` (e.g. one holding a large audit log already).
    pub(crate) fn start_in(
        data: tempfile::TempDir,
        prefix: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(UpProcess, Duration)> {
        use std::io::{BufRead, BufReader};
        let exe = std::env::current_exe()?;
        let started = Instant::now();
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        let mut child = cmd
            .args(["up", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--data"])
            .arg(data.path())
            .env("SHAREDCARE_TELEMETRY__LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn sharedcare up")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut http = String::new();
        let mut grpc = String::new();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("listening ") {
                for part in rest.split_whitespace() {
                    if let Some(a) = part.strip_prefix("http=") {
                        http = a.to_string();
                    } else if let Some(a) = part.strip_prefix("grpc=") {
                        grpc = format!("http://{a}");
                    }
                }
                break;
            }
        }
        // Keep reading so the child never writes into a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        if http.is_empty() {
            bail!("sharedcare up did not start");
        }
        Ok((
            UpProcess {
                child,
                http,
                grpc,
                _data: data,
            },
            started.elapsed(),
        ))
    }

    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("VmRSS not found")
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn phase<C, F, Fut, E>(name: &str, args: &BenchArgs, clients: &[C], op: F) -> anyhow::Result<()>
where
    C: Clone + Send + 'static,
    F: Fn(C, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(), E>> + Send,
    E: Send + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..args.concurrency {
        let (client, op, stop, counter) = (
            clients[w % clients.len()].clone(),
            op.clone(),
            stop.clone(),
            counter.clone(),
        );
        tasks.spawn(async move {
            let mut h = histogram();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                match op(client.clone(), n).await {
                    Ok(()) => {
                        let _ = h.record(t.elapsed().as_micros() as u64);
                    }
                    Err(_) => errors += 1,
                }
            }
            (h, errors)
        });
    }
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = histogram();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (h, e) = r?;
        all.add(h)?;
        errors += e;
    }
    report(name, all.len(), started.elapsed(), &all);
    if errors > 0 {
        println!("  {errors} errors");
    }
    Ok(())
}

/// Adds `authorization: Bearer …` to every call.
#[derive(Clone)]
pub(crate) struct Bearer(pub(crate) tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// The demo ICS's integration client (see `sharedcare demo`).
pub(crate) const DEMO_SERVICE_ID: &str = "ics-integration";
/// Its secret (public: demo only).
pub(crate) const DEMO_SERVICE_SECRET: &str = "demo-integration-secret-95be0d27aa";

/// A client_credentials token for the demo integration client from the issuer at `http`.
pub(crate) async fn demo_service_token(http: &str, scope: &str) -> anyhow::Result<String> {
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{http}/oauth2/token"))
        .basic_auth(DEMO_SERVICE_ID, Some(DEMO_SERVICE_SECRET))
        .form(&[("grant_type", "client_credentials"), ("scope", scope)])
        .send()
        .await?
        .json()
        .await?;
    r["access_token"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no access token from {http}: {r}"))
}

async fn records(args: &BenchArgs) -> anyhow::Result<()> {
    let (up, grpc, token) = match &args.target {
        Some(t) => {
            let token = args
                .token
                .clone()
                .context("--target needs --token (a bearer token with records.read and records.write)")?;
            (None, t.clone(), token)
        }
        None => {
            let (p, _) = UpProcess::start()?;
            let g = p.grpc.clone();
            let token = demo_service_token(&p.http, "records.read records.write").await?;
            (Some(p), g, token)
        }
    };
    // Decide is measured against the `up` this bench starts (it needs a consent.decide token).
    let decide_http: Option<String> = up.as_ref().map(|p| p.http.clone());
    let bearer = Bearer(format!("Bearer {token}").parse()?);
    let mut clients = Vec::new();
    let mut health = Vec::new();
    for _ in 0..args.connections.max(1) {
        let channel = tonic::transport::Channel::from_shared(grpc.clone())?.connect().await?;
        clients.push(RecordsClient::with_interceptor(channel.clone(), bearer.clone()));
        health.push(tonic_health::pb::health_client::HealthClient::new(channel));
    }
    println!(
        "records over gRPC at {grpc}, {} in flight, {} s per phase",
        args.concurrency, args.seconds
    );
    // The synthetic population's people (`demo population`'s generator): the n-th put is
    // person n's Patient, NHS numbers going round the first 100,000.
    let nhs: Vec<String> = crate::population::nhs_numbers(100_000).collect();
    let nhs = Arc::new(nhs);
    let ids = Arc::new(AtomicU64::new(0));
    let today = chrono::Utc::now().date_naive();
    phase("put (new Patient each)", args, &clients, {
        let (nhs, ids) = (nhs.clone(), ids.clone());
        move |mut c, n| {
            let body = crate::population::patient_at(today, BENCH_SEED, n, &nhs[(n % nhs.len() as u64) as usize]);
            ids.fetch_max(n + 1, Ordering::Relaxed);
            async move {
                c.put(PutRequest {
                    resource_json: body,
                    source_organisation: "A81001".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        }
    })
    .await?;
    // The transport's ceiling on this machine: the same load on the gRPC health check.
    phase("grpc health check (baseline)", args, &health, |mut c, _| async move {
        c.check(tonic_health::pb::HealthCheckRequest { service: String::new() })
            .await
            .map(|_| ())
    })
    .await?;
    let stored = ids.load(Ordering::Relaxed).clamp(1, 100_000);
    phase("get (by id)", args, &clients, move |mut c, n| async move {
        c.get(GetRequest {
            resource_type: "Patient".into(),
            id: crate::population::patient_id(BENCH_SEED, n % stored),
            ..Default::default()
        })
        .await
        .map(|_| ())
    })
    .await?;
    phase(
        "search (by patient, one page)",
        args,
        &clients,
        move |mut c, n| async move {
            c.search(SearchRequest {
                patient: crate::population::patient_id(BENCH_SEED, n % stored),
                page_size: 20,
                ..Default::default()
            })
            .await
            .map(|_| ())
        },
    )
    .await?;
    if let Some(http) = &decide_http {
        let token = demo_service_token(http, "consent.decide").await?;
        let bearer = Bearer(format!("Bearer {token}").parse()?);
        let mut deciders = Vec::new();
        for _ in 0..args.connections.max(1) {
            let channel = tonic::transport::Channel::from_shared(grpc.clone())?.connect().await?;
            deciders.push(ConsentClient::with_interceptor(channel, bearer.clone()));
        }
        let nhs = nhs.clone();
        phase("consent Decide (one ask per call)", args, &deciders, move |mut c, n| {
            let patient = nhs[(n % nhs.len() as u64) as usize].clone();
            async move {
                c.decide(DecideRequest {
                    principal_kind: "staff".into(),
                    person_id: "555000000001".into(),
                    ods_code: "A81001".into(),
                    role_code: "S8000:G8000:R8000".into(),
                    nhs_number: patient,
                    action: "read".into(),
                    purpose: "TREAT".into(),
                    categories: vec!["SEX".into()],
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        })
        .await?;
    }
    Ok(())
}

// ----------------------------------------------------------------------------- patient search

/// Waits until `p` has applied the events of what was just written: the audit log (the
/// slowest consumer) has not grown for a second.
pub(crate) async fn quiesce(p: &UpProcess) -> anyhow::Result<()> {
    use sharedcare_proto::audit::v1::GetTreeHeadRequest;
    use sharedcare_proto::audit::v1::audit_client::AuditClient;
    let token = demo_service_token(&p.http, "audit.read").await?;
    let channel = tonic::transport::Channel::from_shared(p.grpc.clone())?
        .connect()
        .await?;
    let mut audit = AuditClient::with_interceptor(channel, Bearer(format!("Bearer {token}").parse()?));
    let mut last = u64::MAX;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let size = audit
            .get_tree_head(GetTreeHeadRequest { fresh: true })
            .await?
            .into_inner()
            .tree_size;
        if size == last {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the audit log was still growing after 300 s");
        }
        last = size;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `sharedcare bench patient-search`: the synthetic population's first 100,000 people (their
/// Patients) imported into a fresh `up`, then
/// `GET /fhir/R4/Patient?family=…&birthdate=…` as a service (`records.read`), 32 in flight.
async fn patient_search(args: &BenchArgs) -> anyhow::Result<()> {
    const PATIENTS: u32 = 100_000;
    let (p, _) = UpProcess::start()?;
    let token = demo_service_token(&p.http, "records.write records.read").await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("patients.ndjson");
    // The synthetic population's people (their Patients only: this measures the search).
    let mut text = String::new();
    let mut written = Vec::new();
    for record in crate::population::people(chrono::Utc::now().date_naive(), 2026, u64::from(PATIENTS)) {
        let patient = record
            .parts
            .first()
            .and_then(|p| p.resources.first())
            .context("a person without a Patient")?;
        let family = patient["name"][0]["family"].as_str().unwrap_or_default().to_string();
        let born = patient["birthDate"].as_str().unwrap_or_default().to_string();
        text.push_str(&patient.to_string());
        text.push('\n');
        written.push((family, born));
    }
    std::fs::write(&file, &text)?;
    let started = Instant::now();
    let out = Command::new(std::env::current_exe()?)
        .arg("import")
        .arg(&file)
        .args(["--grpc", &p.grpc, "--token", &token, "--source", "A81001"])
        .stderr(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!("import failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let imported = started.elapsed();
    quiesce(&p).await?;
    println!(
        "patient search over {} patients in `up` (imported in {:.1} s; its events applied after {:.1} s), {} in flight, {} s",
        written.len(),
        imported.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        args.concurrency,
        args.seconds
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;
    let base = format!("http://{}/fhir/R4/Patient", p.http);
    let written = Arc::new(written);
    let check = {
        let (family, born) = &written[12_345];
        let r: serde_json::Value = client
            .get(&base)
            .query(&[("family", family.as_str()), ("birthdate", born.as_str())])
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        r["entry"].as_array().map_or(0, Vec::len)
    };
    if check == 0 {
        bail!("a search for an imported patient found nobody");
    }
    phase(
        "family + birthdate (service)",
        args,
        &[client],
        move |c: reqwest::Client, i| {
            let (base, token, written) = (base.clone(), token.clone(), written.clone());
            async move {
                let (family, born) = &written[(i * 7 % written.len() as u64) as usize];
                let r = c
                    .get(&base)
                    .query(&[("family", family.as_str()), ("birthdate", born.as_str())])
                    .bearer_auth(&token)
                    .send()
                    .await?;
                r.error_for_status()?.bytes().await.map(|_| ())
            }
        },
    )
    .await?;
    drop(p);
    Ok(())
}

// ------------------------------------------------------------------------------------- import

/// Imports a synthetic population (`sharedcare demo population`: 1,000 people, their records
/// across six organisations) into a fresh `up` with `sharedcare import`, one file per writing
/// organisation, as a user would run it.
async fn import(_args: &BenchArgs) -> anyhow::Result<()> {
    let (p, _) = UpProcess::start()?;
    let token = demo_service_token(&p.http, "records.write").await?;
    let dir = tempfile::tempdir()?;
    let today = chrono::Utc::now().date_naive();
    let written = crate::population::write(dir.path(), today, 2026, 1_000)?;
    let lines: u64 = written.resources.values().sum();
    println!(
        "import of a synthetic population ({} people, {lines} resources as NDJSON, one file per organisation) into `up` over gRPC, chunks of 500",
        written.people
    );
    let exe = std::env::current_exe()?;
    let started = Instant::now();
    for org in written.resources.keys() {
        let file = dir.path().join(format!("{org}.ndjson"));
        let out = Command::new(&exe)
            .arg("import")
            .arg(&file)
            .args(["--grpc", &p.grpc, "--token", &token, "--source", org])
            .stderr(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "import of {org}'s file failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{:<32} {:>7.0}/s   ({lines} resources in {secs:.2} s, {} process starts included)",
        "import",
        lines as f64 / secs,
        written.resources.len()
    );
    Ok(())
}

// ------------------------------------------------------------------------------------ startup

async fn startup() -> anyhow::Result<()> {
    let mut ready_ms = Vec::new();
    let mut rss = Vec::new();
    for _ in 0..5 {
        let (p, spawn_to_listen) = UpProcess::start()?;
        let listening = Instant::now();
        while !http_ok(&p.http, "/readyz").await {
            if listening.elapsed() > Duration::from_secs(30) {
                bail!("/readyz never answered 200");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        ready_ms.push((spawn_to_listen + listening.elapsed()).as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        rss.push(p.rss_kib()?);
    }
    ready_ms.sort_by(f64::total_cmp);
    rss.sort();
    println!(
        "up: spawn → /readyz 200, median of 5: {:.0} ms (min {:.0}, max {:.0})",
        ready_ms[2], ready_ms[0], ready_ms[4]
    );
    println!("up: idle RSS after 3 s, median of 5: {:.1} MiB", rss[2] as f64 / 1024.0);
    Ok(())
}

async fn http_ok(addr: &str, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(s.read(&mut buf).await, Ok(n) if n >= 12 && &buf[9..12] == b"200")
}
