//! `bench records`, `bench patient-search` and `bench import`: the record over gRPC, the
//! population's patients found by name, and `sharedcare import` of a generated NDJSON file.

use sharedcare_kit::json::Fields;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{Context, bail};
use sharedcare_proto::consent::v1::DecideRequest;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::records::v1::records_client::RecordsClient;
use sharedcare_proto::records::v1::{GetRequest, PutRequest, SearchRequest};

use super::args::{BENCH_SEED, BenchArgs};
use super::harness::{Bearer, UpProcess, demo_service_token, nth, phase, quiesce};

pub(crate) async fn records(args: &BenchArgs) -> anyhow::Result<()> {
    let (up, grpc, token) = match &args.target {
        Some(t) => {
            let token = args
                .token
                .clone()
                .context("--target needs --token (a bearer token with records.read and records.write)")?;
            (None, t.clone(), token)
        }
        None => {
            let taskset = args.pinned && Command::new("taskset").arg("--version").output().is_ok();
            let (p, _) = UpProcess::start_with(if taskset { &["taskset", "-c", "0"] } else { &[] })?;
            if args.pinned {
                println!(
                    "`up` {}",
                    if taskset {
                        "pinned to CPU 0 (taskset); run this bench with `taskset -c 1`"
                    } else {
                        "not pinned (no taskset)"
                    }
                );
            }
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
    for _ in 0..args.connections_or(4) {
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
            let body = crate::population::patient_at(today, BENCH_SEED, n, &nth(&nhs, n).unwrap_or_default());
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
    if args.pinned {
        observations(&clients, stored.min(SEARCHED)).await?;
    }
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
    if let (true, Some(p)) = (args.pinned, &up) {
        rest(args, &p.http, &token, stored).await?;
    }
    if let Some(http) = &decide_http {
        let token = demo_service_token(http, "consent.decide").await?;
        let bearer = Bearer(format!("Bearer {token}").parse()?);
        let mut deciders = Vec::new();
        for _ in 0..args.connections_or(4) {
            let channel = tonic::transport::Channel::from_shared(grpc.clone())?.connect().await?;
            deciders.push(ConsentClient::with_interceptor(channel, bearer.clone()));
        }
        let nhs = nhs.clone();
        phase("consent Decide (one ask per call)", args, &deciders, move |mut c, n| {
            let patient = nth(&nhs, n).unwrap_or_default();
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

/// A records client with the bench's bearer token.
type Records = RecordsClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// Patients `--pinned` gives Observations to, and searches.
const SEARCHED: u64 = 1_000;
/// Observations each of them gets.
const OBSERVATIONS_EACH: u64 = 10;

/// Ten Observations for each of the first `patients` patients (`PutMany`, 32 in flight).
async fn observations(clients: &[Records], patients: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pending = futures::stream::FuturesUnordered::new();
    use futures::StreamExt;
    for n in 0..patients {
        let mut c = nth(clients, n)?;
        let patient = crate::population::patient_id(BENCH_SEED, n);
        let resources: Vec<String> = (0..OBSERVATIONS_EACH)
            .map(|k| {
                serde_json::json!({
                    "resourceType": "Observation",
                    "id": format!("bench-obs-{n}-{k}"),
                    "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
                    "subject": {"reference": format!("Patient/{patient}")},
                    "effectiveDateTime": format!("2026-11-{:02}T09:00:00Z", k + 1),
                    "valueQuantity": {"value": 60 + k, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
                })
                .to_string()
            })
            .collect();
        pending.push(async move {
            c.put_many(sharedcare_proto::records::v1::PutManyRequest {
                resources_json: resources,
                source_organisation: "A81001".into(),
                ..Default::default()
            })
            .await
        });
        if pending.len() >= 32
            && let Some(r) = pending.next().await
        {
            r.context("writing observations")?;
        }
    }
    while let Some(r) = pending.next().await {
        r.context("writing observations")?;
    }
    println!(
        "wrote {} Observations for {patients} patients in {:.1} s",
        patients * OBSERVATIONS_EACH,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// FHIR REST over HTTP/1.1 keep-alive, as a FHIR client reads and writes: one connection per
/// request in flight, each request with its bearer token (verified, consent decided, audited).
async fn rest(args: &BenchArgs, http: &str, token: &str, stored: u64) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .http1_only()
        .build()?;
    let base = format!("http://{http}/fhir/R4");
    let get = |url: String, client: reqwest::Client, token: String| async move {
        let r = client.get(url).bearer_auth(token).send().await?;
        match r.status().is_success() {
            true => r.bytes().await.map(drop).map_err(anyhow::Error::from),
            false => Err(anyhow::anyhow!("HTTP {}", r.status())),
        }
    };
    // (phase, the request's path before and after the patient's id, patients asked about)
    let reads = [
        ("FHIR read by id (HTTP/1.1)", "Patient/", "", stored),
        (
            "FHIR search Observation?patient (HTTP/1.1, 10 found)",
            "Observation?patient=Patient/",
            "&_count=20",
            stored.min(SEARCHED),
        ),
    ];
    for (name, before, after, patients) in reads {
        phase(name, args, std::slice::from_ref(&client), {
            let (base, token) = (base.clone(), token.to_string());
            move |c, n| {
                let id = crate::population::patient_id(BENCH_SEED, n % patients);
                get(format!("{base}/{before}{id}{after}"), c, token.clone())
            }
        })
        .await?;
    }
    let today = chrono::Utc::now().date_naive();
    let nhs: Arc<Vec<String>> = Arc::new(crate::population::nhs_numbers(stored).collect());
    phase("FHIR update Patient (HTTP/1.1)", args, std::slice::from_ref(&client), {
        let (base, token) = (base.clone(), token.to_string());
        move |c: reqwest::Client, n| {
            let n = n % stored;
            let id = crate::population::patient_id(BENCH_SEED, n);
            let body = crate::population::patient_at(today, BENCH_SEED, n, &nth(&nhs, n).unwrap_or_default());
            let (url, token) = (format!("{base}/Patient/{id}"), token.clone());
            async move {
                let r = c
                    .put(url)
                    .bearer_auth(token)
                    .header("content-type", "application/fhir+json")
                    .header("x-source-organisation", "A81001")
                    .body(body)
                    .send()
                    .await?;
                match r.status().is_success() {
                    true => Ok(()),
                    false => Err(anyhow::anyhow!("HTTP {}", r.status())),
                }
            }
        }
    })
    .await?;
    Ok(())
}

// ----------------------------------------------------------------------------- patient search

/// `sharedcare bench patient-search`: the synthetic population's first 100,000 people (their
/// Patients) imported into a fresh `up`, then
/// `GET /fhir/R4/Patient?family=…&birthdate=…` as a service (`records.read`), 32 in flight.
pub(crate) async fn patient_search(args: &BenchArgs) -> anyhow::Result<()> {
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
        let name = patient.at("name").as_array().and_then(|n| n.first());
        let family = name
            .map(|n| n.at("family"))
            .and_then(|f| f.as_str())
            .unwrap_or_default()
            .to_string();
        let born = patient.at("birthDate").as_str().unwrap_or_default().to_string();
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
        let (family, born) = nth(&written, 12_345)?;
        let r: serde_json::Value = client
            .get(&base)
            .query(&[("family", family.as_str()), ("birthdate", born.as_str())])
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        r.at("entry").as_array().map_or(0, Vec::len)
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
                let (family, born) = nth(&written, i * 7).unwrap_or_default();
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
pub(crate) async fn import(_args: &BenchArgs) -> anyhow::Result<()> {
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
