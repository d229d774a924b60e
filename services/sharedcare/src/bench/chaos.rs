//! `bench chaos`: faults injected into a running platform, and a ledger that says afterwards
//! whether anything acknowledged was lost, doubled or left unaudited.
//!
//! Set-up: a PostgreSQL cluster and an Apache Kafka broker of the run's own (started with
//! `infra/postgres.sh` and `infra/kafka.sh` on their own ports and directories, so nothing
//! else on the machine is disturbed), and identity, consent, audit, records and the passport
//! each as its own `sharedcare serve` process on fixed ports — records and the passport as two
//! replicas each behind one address (a TCP balancer, as a Kubernetes Service spreads
//! connections over pods).
//!
//! Load, for the whole run: writers put Observations (each a new id), readers read them back
//! and view the patients' passports as the ICS's integration system (each read and view
//! decided by consent and audited before it answers), a consent changer turns one patient's
//! whole-record deny directive on and off, so some reads are refused, and a GP with no care
//! relationship (signed in through identity's pages) breaks the glass for each patient in
//! turn, reading one of their records before (refused) and after (permitted under the grant).
//! Every call carries a W3C `traceparent` of its own, and the audit entry it causes carries
//! that trace id: the ledger keeps each call's trace id and what the caller was told
//! (acknowledged, refused, or no answer).
//!
//! Faults, one at a time: first each kind once, then `--faults` in all from a schedule drawn
//! from `--seed` (printed, so a run can be repeated): kill -9 of each service and of each
//! records and passport replica while calls are in flight on it (restarted on the same ports,
//! as Kubernetes would), a Kafka restart, a Postgres restart, consent frozen with SIGSTOP for
//! longer than records' consent timeout, Kafka down for `--outage-seconds` while writes fill
//! the outbox, and two network partitions of 15 s: every service cut off from Kafka, and one
//! records replica cut off from Postgres (`infra/partition.sh`: packets dropped by nftables, so
//! connections hang rather than fail, then carry on when it heals). After each, the time until
//! a write, a read and a passport view all succeed again is the time to recover.
//!
//! Afterwards: every acknowledged write is stored, once (version 1); every acknowledged read,
//! view and consent change has exactly one `success` audit entry, each grant one `granted`,
//! and every refused call exactly one `denied` entry; a call that got no answer has at most
//! one entry (an entry means the data *may* have been seen: it was committed with the
//! decision before the answer was sent, and the process died or the caller gave up before the
//! answer arrived; such entries are counted, never doubled); the audit log stops growing with
//! every expected entry in it (the consumers caught up); `sharedcare audit verify` passes on
//! the database.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use sharedcare_proto::audit::v1::QueryRequest;
use sharedcare_proto::audit::v1::audit_client::AuditClient;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::{BreakGlassRequest, Directive, PutDirectiveRequest};
use sharedcare_proto::passport::v1::GetPassportRequest;
use sharedcare_proto::passport::v1::passport_client::PassportClient;
use sharedcare_proto::records::v1::records_client::RecordsClient;
use sharedcare_proto::records::v1::{GetRequest, PutRequest};
use tokio::sync::Mutex;
use tonic::transport::Channel;

use super::args::BenchArgs;
use super::balancer::Balancer;
use super::harness::{DEMO_SERVICE_ID, DEMO_SERVICE_SECRET};

/// Patients the load writes about; patient 0's consent is turned on and off.
const PATIENTS: u32 = 8;

/// Writers and readers, each paced to [`PACE`] between calls.
const WORKERS: usize = 4;

/// Pause between one worker's calls (4 workers: about 100 calls a second in all).
const PACE: Duration = Duration::from_millis(40);

/// How long a caller waits for an answer before counting it as none.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Records' consent timeout in the run (`records.consent_timeout_ms`); consent is frozen for
/// longer than this.
const CONSENT_TIMEOUT_MS: u64 = 2_000;

/// Steady load between two faults.
const SETTLE: Duration = Duration::from_secs(2);

/// A fault is "not recovered" after this long.
const RECOVERY_LIMIT: Duration = Duration::from_secs(120);

/// The processes, in the order they start (identity first: the others trust its tokens):
/// (name, service). Records and the passport run as two replicas each behind one address.
const PROCESSES: [(&str, &str); 7] = [
    ("identity", "identity"),
    ("consent", "consent"),
    ("audit", "audit"),
    ("records-a", "records"),
    ("records-b", "records"),
    ("passport-a", "passport"),
    ("passport-b", "passport"),
];

/// How long a partition lasts (or `--outage-seconds`, if shorter): longer than the 11 s in
/// which Postgres ends a silent replica's relay session and frees its lock.
const PARTITION: Duration = Duration::from_secs(15);

/// The loopback address records-b reaches Postgres on (Postgres listens there too), so that a
/// partition can cut that replica off alone.
const PARTITIONABLE: &str = "127.0.0.2";

/// What can be done to the platform.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// kill -9 of a service's process, then started again on the same ports.
    Kill(&'static str),
    /// The Kafka broker stopped and started again at once.
    KafkaRestart,
    /// Postgres stopped (fast shutdown: connections cut) and started again at once.
    PostgresRestart,
    /// Consent stopped with SIGSTOP for longer than records' consent timeout, then SIGCONT.
    FreezeConsent,
    /// The Kafka broker down for `--outage-seconds` while the load goes on.
    KafkaOutage,
    /// Every service cut off from Kafka (packets dropped) for [`PARTITION`].
    PartitionKafka,
    /// records-b cut off from Postgres (packets dropped) for [`PARTITION`]; records-a
    /// goes on.
    PartitionPostgres,
}

impl Fault {
    /// Every kind, in the order of the first pass.
    fn all() -> Vec<Fault> {
        let mut v: Vec<Fault> = PROCESSES.iter().map(|(name, _)| Fault::Kill(name)).collect();
        v.extend([
            Fault::KafkaRestart,
            Fault::PostgresRestart,
            Fault::FreezeConsent,
            Fault::KafkaOutage,
            Fault::PartitionKafka,
            Fault::PartitionPostgres,
        ]);
        v
    }

    fn name(&self) -> String {
        match self {
            Fault::Kill(s) => format!("kill -9 {s}"),
            Fault::KafkaRestart => "restart Kafka".into(),
            Fault::PostgresRestart => "restart Postgres".into(),
            Fault::FreezeConsent => "SIGSTOP consent".into(),
            Fault::KafkaOutage => "Kafka down".into(),
            Fault::PartitionKafka => "cut off Kafka".into(),
            Fault::PartitionPostgres => "cut records-b off PG".into(),
        }
    }
}

/// The schedule of `count` faults from `seed`: each kind once, then drawn at random.
fn schedule(seed: u64, count: usize) -> Vec<Fault> {
    let kinds = Fault::all();
    // The population's SplitMix64: the same schedule from the same seed on any build.
    let mut rng = crate::population::Rng(seed);
    let mut out: Vec<Fault> = kinds.iter().copied().take(count).collect();
    while out.len() < count {
        if let Some(k) = kinds.get(rng.below(kinds.len() as u64) as usize) {
            out.push(*k);
        }
    }
    out
}

// ------------------------------------------------------------------------ infrastructure

/// Postgres and Kafka of the run's own, through the project's scripts.
struct Infra {
    scripts: PathBuf,
    dir: PathBuf,
    /// Removes `dir` when the run passes; taken (and the directory kept) when it fails.
    guard: Option<tempfile::TempDir>,
    pg_port: u16,
    kafka_port: u16,
}

impl Infra {
    fn script(&self, which: &str, action: &str) -> anyhow::Result<String> {
        let out = Command::new(self.scripts.join(format!("{which}.sh")))
            .arg(action)
            .env("PG_PORT", self.pg_port.to_string())
            .env("PG_HOME", self.dir.join("postgres"))
            .env("KAFKA_PORT", self.kafka_port.to_string())
            .env("KAFKA_HOME", self.dir.join("kafka"))
            .env("KAFKA_HEAP", "256m")
            .env("PG_EXTRA_LISTEN", PARTITIONABLE)
            .stderr(Stdio::inherit())
            .output()
            .with_context(|| format!("run {which}.sh {action}"))?;
        if !out.status.success() {
            bail!("{which}.sh {action} failed ({})", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    fn database_url(&self, host: &str) -> String {
        format!("postgres://sharedcare:sharedcare@{host}:{}/sharedcare", self.pg_port)
    }

    /// The run's own partition (a table in nftables), named by its ports.
    fn partition_name(&self) -> String {
        format!("chaos{}", self.kafka_port)
    }

    /// Drops packets to and from each of `targets` (`[addr:]port`) until [`Infra::heal`].
    fn partition(&self, targets: &[String]) -> anyhow::Result<()> {
        let mut args = vec!["add".to_string(), self.partition_name()];
        args.extend(targets.iter().cloned());
        let s = Command::new(self.scripts.join("partition.sh")).args(&args).status()?;
        if !s.success() {
            bail!("partition.sh {} failed ({s})", args.join(" "));
        }
        Ok(())
    }

    fn heal(&self) -> anyhow::Result<()> {
        let s = Command::new(self.scripts.join("partition.sh"))
            .args(["remove", &self.partition_name()])
            .status()?;
        if !s.success() {
            bail!("partition.sh remove failed ({s})");
        }
        Ok(())
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }
}

impl Drop for Infra {
    fn drop(&mut self) {
        let _ = self.heal();
        let _ = self.script("kafka", "stop");
        let _ = self.script("postgres", "stop");
    }
}

/// Ports the run takes: Kafka's four, Postgres's, and HTTP and gRPC for each process.
const PORTS: u16 = 4 + 1 + 2 * PROCESSES.len() as u16;

/// `n` consecutive free TCP ports on loopback (bound and released), the first returned. They
/// come from below the kernel's ephemeral range (32768 up) and above the fixed ports the test
/// suite uses, so no outgoing connection can take one between a check and a restart on it:
/// a service restarted after kill -9 comes back on the same port, and Kafka listens on
/// `port` to `port + 3`.
fn free_ports(n: u16) -> anyhow::Result<u16> {
    const FIRST: u32 = 21_000;
    const SLOTS: u32 = 2_700;
    let start = (uuid::Uuid::new_v4().as_u128() % u128::from(SLOTS)) as u32;
    for k in 0..SLOTS {
        let port = u16::try_from(FIRST + ((start + k) % SLOTS) * 4)?;
        if (0..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", port + i)).is_ok()) {
            return Ok(port);
        }
    }
    bail!("no {n} consecutive free ports between {FIRST} and 32000")
}

// ----------------------------------------------------------------------------- processes

/// One `sharedcare serve <service>` process, restartable on the same ports.
struct Served {
    /// This process (`records-a`).
    name: &'static str,
    /// The service it runs (`records`).
    service: &'static str,
    http: String,
    grpc: String,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Served {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut child = Command::new(exe)
            .args(["serve", self.service, "--http", &self.http, "--grpc", &self.grpc])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn serve {}", self.name))?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !said && line.starts_with("listening ") {
                    said = true;
                    let _ = tx.send(());
                }
            }
        });
        self.child = Some(child);
        if rx.recv_timeout(Duration::from_secs(90)).is_err() {
            bail!(
                "serve {} did not say it was listening within 90 s (its log: {})",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// kill -9, and reaped.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether it exited by itself (then it is reaped and forgotten).
    fn exited(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(_))) => {
                self.child = None;
                true
            }
            _ => false,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.kill();
    }
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let s = Command::new("kill").args([sig, &pid.to_string()]).status()?;
    if !s.success() {
        bail!("kill {sig} {pid} failed");
    }
    Ok(())
}

// --------------------------------------------------------------------------------- ledger

/// What a caller was told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    /// The call succeeded.
    Acked,
    /// Refused by consent (PERMISSION_DENIED).
    Refused,
    /// An error or no answer in time.
    Unanswered,
}

/// What a call did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A record written (records' Put).
    Write,
    /// A record read (records' Get).
    Read,
    /// Patient 0's directive changed (consent's PutDirective).
    Consent,
    /// A clinician broke the glass (consent's BreakGlass).
    BreakGlass,
    /// A patient's passport viewed (the passport's GetPassport).
    View,
}

/// One call the load made.
#[derive(Clone, Debug)]
struct Call {
    trace: String,
    kind: Kind,
    /// The Observation written or read (empty for a consent change).
    id: String,
    told: Told,
}

/// Everything the load was told, in order.
#[derive(Default)]
struct Ledger {
    calls: Vec<Call>,
    /// Observation ids whose write was acknowledged, with their patient's index.
    written: Vec<(String, u32)>,
}

/// A new W3C traceparent and its trace id.
fn traceparent() -> (String, String) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    (format!("00-{trace}-{span}-01"), trace)
}

/// The shared state of the load.
struct Load {
    /// Records through the balancer, one connection each (so calls reach both replicas);
    /// each call takes the next. Made anew after each fault (see [`Load::reconnect`]).
    records: std::sync::RwLock<Vec<RecordsClient<Channel>>>,
    /// The passport through its balancer, likewise.
    passport: std::sync::RwLock<Vec<PassportClient<Channel>>>,
    /// Which client the next call takes.
    turn: std::sync::atomic::AtomicUsize,
    consent: ConsentClient<Channel>,
    token: Mutex<String>,
    /// The demo GP's access token (signed in through identity's pages, second factor too).
    clinician: Mutex<String>,
    patients: Vec<String>,
    ledger: Mutex<Ledger>,
    next: std::sync::atomic::AtomicU64,
    stop: AtomicBool,
}

fn request<T>(msg: T, token: &str, traceparent: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    req.metadata_mut().insert("traceparent", traceparent.parse()?);
    req.set_timeout(CALL_TIMEOUT);
    Ok(req)
}

fn told<T>(r: &Result<T, tonic::Status>) -> Told {
    match r {
        Ok(_) => Told::Acked,
        Err(s) if s.code() == tonic::Code::PermissionDenied => Told::Refused,
        Err(_) => Told::Unanswered,
    }
}

fn observation(id: &str, patient: u32) -> String {
    serde_json::json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "27113001", "display": "Body weight"}]},
        "subject": {"reference": format!("Patient/chaos-p{patient}")},
        "valueQuantity": {"value": 70, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    })
    .to_string()
}

fn consent_directive(nhs: &str, active: bool) -> String {
    serde_json::json!({
        "resourceType": "Consent", "id": "chaos-deny",
        "status": if active { "active" } else { "inactive" },
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}},
        "dateTime": "2026-12-01T10:00:00Z",
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "deny"}
    })
    .to_string()
}

impl Load {
    async fn token(&self) -> String {
        self.token.lock().await.clone()
    }

    /// How many calls so far got no answer.
    async fn unanswered(&self) -> usize {
        let l = self.ledger.lock().await;
        l.calls.iter().filter(|c| c.told == Told::Unanswered).count()
    }

    /// The next connection to records.
    fn records(&self) -> anyhow::Result<RecordsClient<Channel>> {
        take_turn(&self.records, &self.turn)
    }

    /// The next connection to the passport.
    fn passport(&self) -> anyhow::Result<PassportClient<Channel>> {
        take_turn(&self.passport, &self.turn)
    }

    /// New connections through the balancers, spread over both replicas again: connections
    /// stay where they are until they break, so after a replica's kill every connection would
    /// otherwise stay on the other one. (Calls in flight finish on the old ones.)
    fn reconnect(&self, p: &Platform) -> anyhow::Result<()> {
        let fresh = clients(p, "records", RecordsClient::new)?;
        *self.records.write().map_err(|_| anyhow::anyhow!("clients poisoned"))? = fresh;
        let fresh = clients(p, "passport", PassportClient::new)?;
        *self.passport.write().map_err(|_| anyhow::anyhow!("clients poisoned"))? = fresh;
        Ok(())
    }

    /// Writes down what the caller of `trace` was told.
    async fn note<T>(&self, trace: String, kind: Kind, id: String, r: &Result<T, tonic::Status>) -> Told {
        let told = told(r);
        self.ledger.lock().await.calls.push(Call { trace, kind, id, told });
        told
    }

    /// Puts `resource_json` as the integration system; returns what the caller was told.
    async fn put(&self, resource_json: String, id: &str) -> Told {
        let (tp, trace) = traceparent();
        let token = self.token().await;
        let r = match request(
            PutRequest {
                resource_json,
                source_organisation: "RXX01".into(),
                ..Default::default()
            },
            &token,
            &tp,
        ) {
            Ok(req) => match self.records() {
                Ok(mut r) => r.put(req).await,
                Err(e) => Err(tonic::Status::internal(e.to_string())),
            },
            Err(e) => Err(tonic::Status::internal(e.to_string())),
        };
        self.note(trace, Kind::Write, id.to_string(), &r).await
    }

    /// Turns patient 0's whole-record deny on or off through consent.
    async fn set_directive(&self, nhs: &str, active: bool) -> Told {
        let (tp, trace) = traceparent();
        let token = self.token().await;
        let msg = PutDirectiveRequest {
            directive: Some(Directive {
                resource_json: consent_directive(nhs, active),
                ..Default::default()
            }),
        };
        let r = match request(msg, &token, &tp) {
            Ok(req) => self.consent.clone().put_directive(req).await,
            Err(e) => Err(tonic::Status::internal(e.to_string())),
        };
        self.note(
            trace,
            Kind::Consent,
            format!("directive {}", if active { "on" } else { "off" }),
            &r,
        )
        .await
    }

    /// Reads Observation `id` as the integration system; returns what the caller was told.
    async fn get(&self, id: &str) -> Told {
        let token = self.token().await;
        self.get_as(id, &token).await
    }

    /// Reads Observation `id` with `token`; returns what the caller was told.
    async fn get_as(&self, id: &str, token: &str) -> Told {
        let (tp, trace) = traceparent();
        let r = match request(
            GetRequest {
                resource_type: "Observation".into(),
                id: id.to_string(),
                ..Default::default()
            },
            token,
            &tp,
        ) {
            Ok(req) => match self.records() {
                Ok(mut r) => r.get(req).await,
                Err(e) => Err(tonic::Status::internal(e.to_string())),
            },
            Err(e) => Err(tonic::Status::internal(e.to_string())),
        };
        self.note(trace, Kind::Read, id.to_string(), &r).await
    }

    /// Views patient `k`'s passport as the integration system; returns what it was told.
    async fn view(&self, k: usize) -> Told {
        let (tp, trace) = traceparent();
        let token = self.token().await;
        let nhs = self
            .patients
            .get(k % self.patients.len().max(1))
            .cloned()
            .unwrap_or_default();
        let r = match request(
            GetPassportRequest {
                nhs_number: nhs.clone(),
                purpose: String::new(),
            },
            &token,
            &tp,
        ) {
            Ok(req) => match self.passport() {
                Ok(mut p) => p.get_passport(req).await,
                Err(e) => Err(tonic::Status::internal(e.to_string())),
            },
            Err(e) => Err(tonic::Status::internal(e.to_string())),
        };
        self.note(trace, Kind::View, format!("passport {nhs}"), &r).await
    }

    /// One write of a new Observation.
    async fn write_one(&self) -> Told {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let patient = (n % u64::from(PATIENTS)) as u32;
        let id = format!("chaos-o{n}");
        let t = self.put(observation(&id, patient), &id).await;
        if t == Told::Acked {
            self.ledger.lock().await.written.push((id, patient));
        }
        t
    }

    /// One read of an Observation written before (chosen by `pick`).
    async fn read_one(&self, pick: u64) -> Option<Told> {
        let id = {
            let l = self.ledger.lock().await;
            let n = l.written.len() as u64;
            if n == 0 {
                return None;
            }
            l.written.get((pick % n) as usize).map(|(id, _)| id.clone())
        }?;
        Some(self.get(&id).await)
    }

    /// A worker: alternately writes and reads until told to stop.
    async fn work(self: Arc<Self>, worker: usize) {
        let mut i = worker as u64;
        while !self.stop.load(Ordering::Relaxed) {
            match i % 4 {
                0 | 2 => {
                    self.write_one().await;
                }
                1 => {
                    self.read_one(i.wrapping_mul(2_654_435_761)).await;
                }
                _ => {
                    self.view((i / 4) as usize).await;
                }
            }
            i += 1;
            tokio::time::sleep(PACE).await;
        }
    }

    /// Turns patient 0's whole-record deny on and off every second or so.
    async fn change_consent(self: Arc<Self>) {
        let mut active = false;
        while !self.stop.load(Ordering::Relaxed) {
            active = !active;
            if let Some(nhs) = self.patients.first() {
                self.set_directive(nhs, active).await;
            }
            tokio::time::sleep(Duration::from_millis(1_300)).await;
        }
    }

    /// Refreshes the token every minute and the clinician's every five (a failure keeps the
    /// old one).
    async fn refresh_token(self: Arc<Self>, issuer: String) {
        let mut minutes = 0u32;
        while !self.stop.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(60)).await;
            if let Ok(t) = service_token(&issuer).await {
                *self.token.lock().await = t;
            }
            minutes += 1;
            if minutes.is_multiple_of(5)
                && let Ok(t) = clinician_token(&issuer).await
            {
                *self.clinician.lock().await = t;
            }
        }
    }

    /// The GP breaks the glass for `nhs`; returns what they were told.
    async fn break_glass(&self, nhs: &str) -> Told {
        let (tp, trace) = traceparent();
        let token = self.clinician.lock().await.clone();
        let msg = BreakGlassRequest {
            nhs_number: nhs.to_string(),
            reason_code: "unconscious-patient".into(),
            reason_text: "brought in unconscious; allergies and medicines needed now".into(),
        };
        let r = match request(msg, &token, &tp) {
            Ok(req) => self.consent.clone().break_glass(req).await,
            Err(e) => Err(tonic::Status::internal(e.to_string())),
        };
        self.note(trace, Kind::BreakGlass, format!("break-glass {nhs}"), &r)
            .await
    }

    /// A GP with no care relationship breaks the glass for each patient in turn and reads one
    /// of their Observations: refused (and audited as denied) before the first grant, then
    /// permitted under it; the grant itself is in the patient's trail.
    async fn break_glass_and_read(self: Arc<Self>) {
        let mut k = 1usize;
        while !self.stop.load(Ordering::Relaxed) {
            let patient = k % self.patients.len().max(1);
            let id = {
                let l = self.ledger.lock().await;
                l.written
                    .iter()
                    .rev()
                    .find(|(_, p)| *p as usize == patient)
                    .map(|w| w.0.clone())
            };
            let token = self.clinician.lock().await.clone();
            if let Some(id) = &id {
                self.get_as(id, &token).await;
            }
            if let Some(nhs) = self.patients.get(patient) {
                self.break_glass(nhs).await;
            }
            if let Some(id) = &id {
                self.get_as(id, &token).await;
            }
            k += 1;
            tokio::time::sleep(Duration::from_millis(1_500)).await;
        }
    }

    /// A write and a read until both succeed: the time to recover.
    async fn recovered(&self) -> Option<Duration> {
        let started = Instant::now();
        loop {
            if self.write_one().await == Told::Acked {
                let id = self.ledger.lock().await.written.last().map(|w| w.0.clone());
                if let Some(id) = id
                    && self.get(&id).await != Told::Unanswered
                    && self.view(1).await != Told::Unanswered
                {
                    return Some(started.elapsed());
                }
            }
            if started.elapsed() > RECOVERY_LIMIT {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The demo GP's token, through identity's sign-in pages (password and security code).
async fn clinician_token(issuer: &str) -> anyhow::Result<String> {
    let http = issuer.trim_start_matches("http://");
    super::identity::user_token(http, "gp", "demo-gp-password", "selectedrole").await
}

async fn service_token(issuer: &str) -> anyhow::Result<String> {
    let r: serde_json::Value = reqwest::Client::new()
        .post(format!("{issuer}/oauth2/token"))
        .basic_auth(DEMO_SERVICE_ID, Some(DEMO_SERVICE_SECRET))
        .form(&[
            ("grant_type", "client_credentials"),
            ("scope", "records.read records.write consent.write audit.read"),
        ])
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .json()
        .await?;
    r.get("access_token")
        .and_then(|t| t.as_str())
        .map(str::to_string)
        .with_context(|| format!("no access token from {issuer}: {r}"))
}

// -------------------------------------------------------------------------------- the run

/// The platform under test.
struct Platform {
    infra: Infra,
    /// One address in front of both records replicas.
    records: Balancer,
    /// One address in front of both passport replicas.
    passport: Balancer,
    services: Vec<Served>,
    outage: Duration,
    /// Processes that exited without being killed (restarted, as Kubernetes would).
    unplanned: Vec<String>,
}

impl Platform {
    fn service(&mut self, name: &str) -> anyhow::Result<&mut Served> {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))
    }

    /// Restarts any process that exited by itself, and says so.
    fn restart_exited(&mut self) -> anyhow::Result<()> {
        for s in &mut self.services {
            if s.exited() {
                self.unplanned.push(s.name.to_string());
                println!(
                    "  ! {} exited by itself; started again (its log: {})",
                    s.name,
                    s.log.display()
                );
                s.spawn()?;
            }
        }
        Ok(())
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        match fault {
            Fault::Kill(name) => {
                let s = self.service(name)?;
                s.kill();
                s.spawn()?;
            }
            Fault::KafkaRestart => {
                self.infra.script("kafka", "stop")?;
                self.infra.script("kafka", "start")?;
            }
            Fault::PostgresRestart => {
                self.infra.script("postgres", "stop")?;
                self.infra.script("postgres", "start")?;
            }
            Fault::FreezeConsent => {
                let pid = self.service("consent")?.pid().context("consent is not running")?;
                signal(pid, "-STOP")?;
                tokio::time::sleep(Duration::from_millis(CONSENT_TIMEOUT_MS + 1_000)).await;
                signal(pid, "-CONT")?;
            }
            Fault::KafkaOutage => {
                self.infra.script("kafka", "stop")?;
                tokio::time::sleep(self.outage).await;
                self.infra.script("kafka", "start")?;
            }
            Fault::PartitionKafka => {
                self.infra.partition(&[self.infra.kafka_port.to_string()])?;
                tokio::time::sleep(self.outage.min(PARTITION)).await;
                self.infra.heal()?;
            }
            Fault::PartitionPostgres => {
                self.infra
                    .partition(&[format!("{PARTITIONABLE}:{}", self.infra.pg_port)])?;
                tokio::time::sleep(self.outage.min(PARTITION)).await;
                self.infra.heal()?;
            }
        }
        Ok(())
    }
}

/// Starts Postgres, Kafka, the services and records' balancer.
async fn platform(args: &BenchArgs) -> anyhow::Result<(Platform, String)> {
    let dir = tempfile::Builder::new().prefix("sharedcare-chaos").tempdir()?;
    // Postgres runs as the postgres user, under this directory.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
    }
    let base = free_ports(PORTS)?;
    let infra = Infra {
        scripts: args.infra.clone(),
        kafka_port: base,
        pg_port: base + 4,
        dir: dir.path().to_path_buf(),
        guard: Some(dir),
    };
    let can_partition = Command::new(infra.scripts.join("partition.sh"))
        .arg("check")
        .status()
        .is_ok_and(|s| s.success());
    if !can_partition {
        bail!("infra/partition.sh cannot make a partition here: the chaos suite needs root (nftables)");
    }
    infra.script("postgres", "start")?;
    infra.script("kafka", "start")?;
    let kek = {
        use base64::Engine;
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key)
    };
    let mut ports = Vec::new();
    for i in 0..PROCESSES.len() as u16 {
        ports.push((base + 5 + 2 * i, base + 6 + 2 * i));
    }
    let identity_http = format!("http://127.0.0.1:{}", ports.first().context("ports")?.0);
    let consent_grpc = format!("http://127.0.0.1:{}", ports.get(1).context("ports")?.1);
    let audit_grpc = format!("http://127.0.0.1:{}", ports.get(2).context("ports")?.1);
    let common: Vec<(String, String)> = [
        ("SHAREDCARE_KEY_ENCRYPTION__KEY", kek),
        ("SHAREDCARE_KAFKA__BROKERS", infra.brokers()),
        ("SHAREDCARE_KAFKA__NAMESPACE", "chaos".into()),
        ("SHAREDCARE_TELEMETRY__LOG", "warn".into()),
        ("SHAREDCARE_IDENTITY__SEED_DEMO_RECORD", "false".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let mut services = Vec::new();
    for ((name, service), (http, grpc)) in PROCESSES.into_iter().zip(ports) {
        let mut env = common.clone();
        let mut add = |k: &str, v: &str| env.push((k.to_string(), v.to_string()));
        let db_host = if name == "records-b" {
            PARTITIONABLE
        } else {
            "127.0.0.1"
        };
        add("SHAREDCARE_DATABASE__URL", &infra.database_url(db_host));
        if name == "identity" {
            add("SHAREDCARE_IDENTITY__SEED_DEMO", "true");
        } else {
            add("SHAREDCARE_AUTH__ISSUER", &identity_http);
        }
        if service == "passport" {
            add("SHAREDCARE_PASSPORT__CONSENT_URL", &consent_grpc);
            add("SHAREDCARE_PASSPORT__AUDIT_URL", &audit_grpc);
            add("SHAREDCARE_AUTH__CLIENT_ID", DEMO_SERVICE_ID);
            add("SHAREDCARE_AUTH__CLIENT_SECRET", DEMO_SERVICE_SECRET);
        }
        if service == "records" {
            add("SHAREDCARE_RECORDS__CONSENT_URL", &consent_grpc);
            add(
                "SHAREDCARE_RECORDS__CONSENT_TIMEOUT_MS",
                &CONSENT_TIMEOUT_MS.to_string(),
            );
            add("SHAREDCARE_AUTH__CLIENT_ID", DEMO_SERVICE_ID);
            add("SHAREDCARE_AUTH__CLIENT_SECRET", DEMO_SERVICE_SECRET);
        }
        let mut s = Served {
            name,
            service,
            http: format!("127.0.0.1:{http}"),
            grpc: format!("127.0.0.1:{grpc}"),
            env,
            log: infra.dir.join(format!("{name}.log")),
            child: None,
        };
        s.spawn()?;
        services.push(s);
    }
    let replicas = |service: &str| -> Vec<String> {
        services
            .iter()
            .filter(|s| s.service == service)
            .map(|s| s.grpc.clone())
            .collect()
    };
    let (records, passport) = (
        Balancer::start(replicas("records")).await?,
        Balancer::start(replicas("passport")).await?,
    );
    Ok((
        Platform {
            infra,
            records,
            passport,
            services,
            outage: Duration::from_secs(args.outage_seconds),
            unplanned: Vec::new(),
        },
        identity_http,
    ))
}

/// A connection to `name`'s gRPC port (records: through the balancer).
fn grpc_of(p: &Platform, name: &str) -> anyhow::Result<Channel> {
    let addr = if name == "records" {
        p.records.addr.to_string()
    } else if name == "passport" {
        p.passport.addr.to_string()
    } else {
        p.services
            .iter()
            .find(|s| s.name == name)
            .with_context(|| format!("no service {name}"))?
            .grpc
            .clone()
    };
    Ok(Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .connect_lazy())
}

/// Eight connections to `service` through its balancer, taking turns: about half to each
/// replica.
fn clients<C>(p: &Platform, service: &str, client: fn(Channel) -> C) -> anyhow::Result<Vec<C>> {
    (0..8).map(|_| Ok(client(grpc_of(p, service)?))).collect()
}

/// The next of `clients`.
fn take_turn<C: Clone>(
    clients: &std::sync::RwLock<Vec<C>>,
    turn: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<C> {
    let n = turn.fetch_add(1, Ordering::Relaxed);
    let all = clients.read().map_err(|_| anyhow::anyhow!("clients poisoned"))?;
    all.get(n % all.len().max(1)).cloned().context("no client")
}

/// Every audit entry about `nhs`, as (trace id, outcome).
async fn entries(audit: &mut AuditClient<Channel>, token: &str, nhs: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut before = 0;
    loop {
        let mut req = tonic::Request::new(QueryRequest {
            nhs_number: nhs.into(),
            page_size: 1000,
            before_sequence: before,
            ..Default::default()
        });
        req.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
        let page = audit.query(req).await?.into_inner();
        out.extend(page.entries.into_iter().map(|e| (e.trace_id, e.outcome)));
        if page.next_before_sequence == 0 {
            return Ok(out);
        }
        before = page.next_before_sequence;
    }
}

/// The verdict on one call against the audit log.
#[derive(Default, Debug)]
struct Tally {
    acked: u64,
    missing: u64,
    doubled: u64,
    wrong_outcome: u64,
}

/// The result of comparing the ledger with the store and the audit log.
#[derive(Default, Debug)]
struct Verdict {
    writes: Tally,
    writes_lost: u64,
    writes_doubled: u64,
    reads: Tally,
    /// Passport views acknowledged, each with the passport's entry.
    views: Tally,
    refusals: Tally,
    unanswered: u64,
    unanswered_audited: u64,
    unanswered_doubled: u64,
    /// Entries with a trace id no call of the load had.
    unexplained: u64,
    /// The first few calls found wrong, to look up in the logs.
    examples: Vec<String>,
    /// Acknowledged writes that could not be read back to check (an error other than
    /// not-found or denied).
    writes_unverified: u64,
    /// Directive changes acknowledged, each with consent's entry.
    consent: Tally,
    /// Break-glass grants acknowledged, each with consent's entry.
    break_glass: Tally,
}

impl Verdict {
    fn lost(&self) -> u64 {
        self.writes_lost
            + self.reads.missing
            + self.views.missing
            + self.refusals.missing
            + self.writes.missing
            + self.consent.missing
            + self.break_glass.missing
    }

    fn doubled(&self) -> u64 {
        self.writes_doubled
            + self.reads.doubled
            + self.views.doubled
            + self.refusals.doubled
            + self.writes.doubled
            + self.consent.doubled
            + self.break_glass.doubled
            + self.unanswered_doubled
    }
}

/// Compares the ledger with the audit entries `seen` (trace id → outcomes).
fn judge(calls: &[Call], seen: &HashMap<String, Vec<String>>) -> Verdict {
    let mut v = Verdict::default();
    let mut known = std::collections::HashSet::new();
    for c in calls {
        known.insert(c.trace.as_str());
        let got = seen.get(&c.trace).map(Vec::as_slice).unwrap_or_default();
        let (tally, want) = match (c.told, c.kind) {
            // Consent's own record of directive changes is not this ledger's to check.
            (Told::Acked, Kind::Consent) => (&mut v.consent, "success"),
            (Told::Acked, Kind::BreakGlass) => (&mut v.break_glass, "granted"),
            (Told::Acked, Kind::Write) => (&mut v.writes, "success"),
            (Told::Acked, Kind::Read) => (&mut v.reads, "success"),
            (Told::Acked, Kind::View) => (&mut v.views, "success"),
            (Told::Refused, _) => (&mut v.refusals, "denied"),
            (Told::Unanswered, _) => {
                v.unanswered += 1;
                match got.len() {
                    0 => {}
                    1 => v.unanswered_audited += 1,
                    _ => v.unanswered_doubled += 1,
                }
                continue;
            }
        };
        tally.acked += 1;
        match got {
            [] => tally.missing += 1,
            [one] if one != want => tally.wrong_outcome += 1,
            [_] => continue,
            _ => tally.doubled += 1,
        }
        if v.examples.len() < 5 {
            v.examples.push(format!(
                "wrong: {:?} {} (trace {}), told {:?}: audit outcomes {got:?}",
                c.kind, c.id, c.trace, c.told
            ));
        }
    }
    for (t, e) in seen.iter().filter(|(t, _)| !known.contains(t.as_str())) {
        v.unexplained += e.len() as u64;
        if v.examples.len() < 8 {
            v.examples
                .push(format!("entries of no call (trace {t:?}): outcomes {e:?}"));
        }
    }
    v
}

/// `sharedcare bench chaos`. Stopped by SIGTERM or Ctrl-C, it still stops its Postgres, Kafka
/// and services (they are dropped with the run).
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    tokio::select! {
        r = chaos(args) => r,
        () = sharedcare_kit::shutdown::signal() => bail!("stopped by a signal; its Postgres, Kafka and services were stopped"),
    }
}

async fn chaos(args: &BenchArgs) -> anyhow::Result<()> {
    let seed = args.seed.unwrap_or_else(|| {
        let b = uuid::Uuid::new_v4();
        u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or_default())
    });
    let plan = schedule(seed, args.faults);
    println!(
        "chaos: seed {seed} (repeat with --seed {seed}), {} faults, Kafka outages of {} s",
        plan.len(),
        args.outage_seconds
    );
    println!("not injected here: replicas of the portal (see the README)");
    let (mut p, issuer) = platform(args).await?;
    let token = service_token(&issuer).await?;
    let records = std::sync::RwLock::new(clients(&p, "records", RecordsClient::new)?);
    let passport = std::sync::RwLock::new(clients(&p, "passport", PassportClient::new)?);
    let patients: Vec<String> = (0..PATIENTS)
        .map(|i| {
            (0..100)
                .find_map(|j| sharedcare_kit::nhs::NhsNumber::from_stem(900_000_000 + i * 1_000 + j))
                .map(|n| n.to_string())
                .context("an NHS number")
        })
        .collect::<anyhow::Result<_>>()?;
    let load = Arc::new(Load {
        records,
        passport,
        turn: std::sync::atomic::AtomicUsize::new(0),
        consent: ConsentClient::new(grpc_of(&p, "consent")?),
        token: Mutex::new(token.clone()),
        clinician: Mutex::new(clinician_token(&issuer).await.context("the demo GP's token")?),
        patients: patients.clone(),
        ledger: Mutex::new(Ledger::default()),
        next: std::sync::atomic::AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    // The patients, before any load.
    for (i, nhs) in patients.iter().enumerate() {
        let patient = serde_json::json!({
            "resourceType": "Patient", "id": format!("chaos-p{i}"),
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"family": "Chaos", "given": ["Pat"]}], "birthDate": "1970-01-01"
        });
        if load.put(patient.to_string(), "").await != Told::Acked {
            bail!("could not write patient {i} before the faults began");
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        tasks.push(tokio::spawn(load.clone().work(w)));
    }
    tasks.push(tokio::spawn(load.clone().change_consent()));
    tasks.push(tokio::spawn(load.clone().break_glass_and_read()));
    let refresher = tokio::spawn(load.clone().refresh_token(issuer.clone()));
    tokio::time::sleep(SETTLE).await;

    println!(
        "{:>4}  {:<20} {:>8} {:>14} {:>16}",
        "#", "fault", "at s", "recovered in", "calls cut off"
    );
    let mut recoveries: Vec<(Fault, Option<Duration>)> = Vec::new();
    for (i, fault) in plan.iter().enumerate() {
        p.restart_exited()?;
        let at = started.elapsed();
        let before = load.unanswered().await;
        p.inject(*fault).await?;
        let rec = load.recovered().await;
        println!(
            "{:>4}  {:<20} {:>8.1} {:>14} {:>16}",
            i + 1,
            fault.name(),
            at.as_secs_f64(),
            rec.map_or("NOT RECOVERED".to_string(), |d| format!("{:.2} s", d.as_secs_f64())),
            load.unanswered().await - before
        );
        recoveries.push((*fault, rec));
        load.reconnect(&p)?;
        tokio::time::sleep(SETTLE).await;
    }
    // Each worker finishes the call it is in, so the ledger holds every call that was made.
    load.stop.store(true, Ordering::Relaxed);
    refresher.abort();
    for t in tasks {
        let _ = t.await;
    }
    p.restart_exited()?;
    let ran_for = started.elapsed();

    // The consumers catch up: every acknowledged call's entry is in the log and it has
    // stopped growing.
    let calls = load.ledger.lock().await.calls.clone();
    let token = service_token(&issuer).await.unwrap_or(token);
    let mut audit = AuditClient::new(grpc_of(&p, "audit")?);
    let drain_started = Instant::now();
    let mut last = usize::MAX;
    let (seen, drained) = loop {
        let mut seen: HashMap<String, Vec<String>> = HashMap::new();
        let mut total = 0;
        for nhs in &patients {
            for (trace, outcome) in entries(&mut audit, &token, nhs).await.unwrap_or_default() {
                seen.entry(trace).or_default().push(outcome);
                total += 1;
            }
        }
        let all_in = judge(&calls, &seen).lost() == 0;
        if (all_in && total == last) || drain_started.elapsed() > Duration::from_secs(180) {
            break (seen, all_in && total == last);
        }
        last = total;
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let drain = drain_started.elapsed();
    let mut verdict = judge(&calls, &seen);

    // Every acknowledged write is stored, once: its version is still 1. Read back 16 at a
    // time, with a token fetched for each thousand (a long run outlives one token).
    let written = load.ledger.lock().await.written.clone();
    let records = RecordsClient::new(grpc_of(&p, "records")?);
    for batch in written.chunks(1_000) {
        let token = service_token(&issuer).await?;
        let results: Vec<Result<tonic::Response<_>, tonic::Status>> =
            futures::stream::iter(batch.iter().map(|(id, _)| {
                let (mut records, token) = (records.clone(), token.clone());
                async move {
                    let (tp, _) = traceparent();
                    let req = request(
                        GetRequest {
                            resource_type: "Observation".into(),
                            id: id.clone(),
                            purpose: "TREAT".into(),
                        },
                        &token,
                        &tp,
                    )
                    .map_err(|e| tonic::Status::internal(e.to_string()))?;
                    records.get(req).await
                }
            }))
            .buffer_unordered(16)
            .collect()
            .await;
        for got in results {
            match got {
                Ok(r) if r.get_ref().version == 1 => {}
                Ok(_) => verdict.writes_doubled += 1,
                Err(s) if s.code() == tonic::Code::NotFound => verdict.writes_lost += 1,
                // Patient 0's directive may be on: denied means it is there.
                Err(s) if s.code() == tonic::Code::PermissionDenied => {}
                Err(s) => {
                    verdict.writes_unverified += 1;
                    if verdict.examples.len() < 8 {
                        verdict.examples.push(format!("unverified: reading back a write: {s}"));
                    }
                }
            }
        }
    }

    // The log's own check, on the database.
    let verify = Command::new(std::env::current_exe()?)
        .args(["audit", "verify"])
        .envs(
            p.services
                .first()
                .map(|s| s.env.clone())
                .unwrap_or_default()
                .into_iter()
                .filter(|(k, _)| k == "SHAREDCARE_DATABASE__URL" || k == "SHAREDCARE_KEY_ENCRYPTION__KEY"),
        )
        .output()?;
    let verified = verify.status.success();

    let not_recovered = recoveries.iter().filter(|r| r.1.is_none()).count();
    let mut by_kind: Vec<(String, usize, Duration)> = Vec::new();
    for (f, r) in &recoveries {
        let name = f.name();
        let worst = r.unwrap_or(RECOVERY_LIMIT);
        match by_kind.iter_mut().find(|k| k.0 == name) {
            Some(k) => {
                k.1 += 1;
                k.2 = k.2.max(worst);
            }
            None => by_kind.push((name, 1, worst)),
        }
    }
    println!();
    println!("{:<20} {:>6} {:>22}", "fault", "times", "slowest recovery");
    for (name, n, worst) in &by_kind {
        println!("{name:<20} {n:>6} {:>20.2} s", worst.as_secs_f64());
    }
    println!();
    let v = &verdict;
    println!(
        "ran {:.0} s under load; {} faults injected",
        ran_for.as_secs_f64(),
        plan.len()
    );
    println!(
        "writes acknowledged {:>6}   lost {}   doubled {}   audit entry missing {}   doubled {}   not read back {}",
        v.writes.acked, v.writes_lost, v.writes_doubled, v.writes.missing, v.writes.doubled, v.writes_unverified
    );
    println!(
        "reads acknowledged  {:>6}   audit entry missing {}   doubled {}   wrong outcome {}",
        v.reads.acked, v.reads.missing, v.reads.doubled, v.reads.wrong_outcome
    );
    println!(
        "passport views      {:>6}   audit entry missing {}   doubled {}   wrong outcome {}",
        v.views.acked, v.views.missing, v.views.doubled, v.views.wrong_outcome
    );
    println!(
        "reads refused       {:>6}   denial entry missing {}   doubled {}   wrong outcome {}",
        v.refusals.acked, v.refusals.missing, v.refusals.doubled, v.refusals.wrong_outcome
    );
    println!(
        "calls unanswered    {:>6}   audited anyway (committed, answer lost) {}   doubled {}",
        v.unanswered, v.unanswered_audited, v.unanswered_doubled
    );
    println!(
        "consent changed      {:>6}   audit entry missing {}   doubled {}   wrong outcome {}",
        v.consent.acked, v.consent.missing, v.consent.doubled, v.consent.wrong_outcome
    );
    println!(
        "glass broken         {:>6}   audit entry missing {}   doubled {}   wrong outcome {}",
        v.break_glass.acked, v.break_glass.missing, v.break_glass.doubled, v.break_glass.wrong_outcome
    );
    println!("audit entries of no call of the load: {}", v.unexplained);
    for e in &v.examples {
        println!("  {e}");
    }
    println!(
        "consumers caught up: {} ({:.1} s after the load stopped); audit verify: {}; processes that exited by themselves: {}",
        if drained { "yes" } else { "NO" },
        drain.as_secs_f64(),
        if verified { "passed" } else { "FAILED" },
        if p.unplanned.is_empty() {
            "none".to_string()
        } else {
            p.unplanned.join(", ")
        }
    );
    let wrong = v.reads.wrong_outcome
        + v.views.wrong_outcome
        + v.refusals.wrong_outcome
        + v.writes.wrong_outcome
        + v.consent.wrong_outcome
        + v.break_glass.wrong_outcome;
    println!(
        "CHAOS faults={} acknowledged={} lost={} doubled={} wrong={} not_recovered={} seed={seed}",
        plan.len(),
        v.writes.acked + v.reads.acked + v.views.acked + v.refusals.acked + v.consent.acked + v.break_glass.acked,
        v.lost(),
        v.doubled(),
        wrong,
        not_recovered
    );
    if !verified {
        for line in String::from_utf8_lossy(&verify.stdout)
            .lines()
            .filter(|l| l.starts_with("FAIL"))
        {
            println!("  audit verify: {line}");
        }
        eprintln!("{}", String::from_utf8_lossy(&verify.stderr));
    }
    if v.lost() > 0
        || v.doubled() > 0
        || wrong > 0
        || not_recovered > 0
        || v.writes_unverified > 0
        || !verified
        || !drained
    {
        // Keep the services' logs to look at.
        if let Some(g) = p.infra.guard.take() {
            let _ = g.keep();
        }
        bail!(
            "chaos run with seed {seed} failed (logs under {})",
            p.infra.dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_schedule_and_every_kind_comes_first() {
        let a = schedule(42, 30);
        assert_eq!(a, schedule(42, 30));
        assert_ne!(a, schedule(43, 30), "another seed, another schedule");
        assert_eq!(a[..Fault::all().len()], Fault::all()[..]);
        assert_eq!(schedule(1, 3).len(), 3);
    }

    fn call(trace: &str, write: bool, told: Told) -> Call {
        Call {
            trace: trace.into(),
            kind: if write { Kind::Write } else { Kind::Read },
            id: String::new(),
            told,
        }
    }

    #[test]
    fn the_ledger_names_missing_doubled_and_wrong_entries() {
        let calls = [
            call("a", false, Told::Acked),
            call("b", false, Told::Acked),
            call("c", false, Told::Refused),
            call("d", true, Told::Acked),
            call("e", false, Told::Unanswered),
            call("f", false, Told::Unanswered),
            call("g", false, Told::Refused),
        ];
        let seen: HashMap<String, Vec<String>> = [
            ("a", vec!["success"]),
            ("b", vec!["success", "success"]),
            ("c", vec!["denied"]),
            ("e", vec!["success"]),
            ("g", vec!["success"]),
            ("z", vec!["success"]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
        .collect();
        let v = judge(&calls, &seen);
        assert_eq!((v.reads.acked, v.reads.missing, v.reads.doubled), (2, 0, 1));
        assert_eq!((v.refusals.acked, v.refusals.wrong_outcome), (2, 1));
        assert_eq!(
            (v.writes.acked, v.writes.missing),
            (1, 1),
            "the write's entry is missing"
        );
        assert_eq!((v.unanswered, v.unanswered_audited), (2, 1));
        assert_eq!(v.unexplained, 1);
        assert_eq!(v.lost(), 1);
        assert_eq!(v.doubled(), 1);
    }
}
