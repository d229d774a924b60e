//! `sharedcare bench passport`, against `sharedcare up` started as a child process (which
//! runs on Kafka and Postgres when `kafka.brokers` and `database.url` are set in the
//! environment, as the bench's own configuration is):
//! - views over gRPC, each decided by consent and audited: as a service, as the GP viewing her
//!   registered patients, as a patient (P9) viewing her own;
//! - freshness: with records written at `--rate` per second, how long after a write's answer
//!   the passport shows it (sampled by a probe write every 50 ms);
//! - rebuild: events per second replayed into an empty model (embedded log and SQLite, or
//!   Kafka and Postgres when configured).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use sharedcare_kit::bus::embedded::EmbeddedBus;
use sharedcare_kit::bus::kafka::KafkaBus;
use sharedcare_kit::bus::{self, Bus, Outgoing};
use sharedcare_proto::events::v1::{RecordState, SharingState};
use sharedcare_proto::passport::v1::GetPassportRequest;
use sharedcare_proto::passport::v1::passport_client::PassportClient;
use sharedcare_proto::records::v1::PutRequest;
use sharedcare_proto::records::v1::records_client::RecordsClient;

use super::args::BENCH_SEED;
use super::args::BenchArgs;
use super::harness::{Bearer, UpProcess, demo_service_token, histogram, nth, phase, report};
use crate::config::Config;

type Passports = PassportClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;
type Writers = RecordsClient<tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>>;

/// People of the synthetic population the passport bench writes (their whole records).
const PASSPORT_PATIENTS: u32 = 500;

/// `sharedcare bench passport`.
pub(crate) async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let (p, _) = UpProcess::start()?;
    let token = demo_service_token(&p.http, "records.read records.write").await?;
    let bearer = Bearer(format!("Bearer {token}").parse()?);
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..args.connections_or(4) {
        let channel = tonic::transport::Channel::from_shared(p.grpc.clone())?
            .connect()
            .await?;
        writers.push(RecordsClient::with_interceptor(channel.clone(), bearer.clone()));
        readers.push(PassportClient::with_interceptor(channel, bearer.clone()));
    }
    // The synthetic population's first people (`demo population`'s generator), their whole
    // records, each resource put by the organisation that writes it.
    let today = chrono::Utc::now().date_naive();
    let nhs: Vec<String> = crate::population::nhs_numbers(u64::from(PASSPORT_PATIENTS)).collect();
    let records: Vec<_> = nhs
        .iter()
        .enumerate()
        .map(|(i, n)| crate::population::person_at(today, BENCH_SEED, i as u64, n))
        .collect();
    let total: usize = records.iter().map(|r| r.resources()).sum();
    println!(
        "passport over gRPC at {}, {} people of the synthetic population ({total} resources), {} in flight, {} s per phase",
        p.grpc,
        nhs.len(),
        args.concurrency,
        args.seconds
    );
    // The demo patients too, for the staff and self views: their records as `up` seeds them
    // (their GP, Riverside, has a care relationship with each).
    let demo: Vec<String> = sharedcare_identity::demo::patients()
        .into_iter()
        .map(|(p, _)| p.nhs_number)
        .collect();
    let mut writing = tokio::task::JoinSet::new();
    for (i, record) in records.into_iter().enumerate() {
        let mut w = nth(&writers, i as u64)?;
        writing.spawn(async move {
            for part in &record.parts {
                for r in &part.resources {
                    w.put(PutRequest {
                        resource_json: r.to_string(),
                        source_organisation: part.org.into(),
                        ..Default::default()
                    })
                    .await?;
                }
            }
            Ok::<(), tonic::Status>(())
        });
        if writing.len() >= args.concurrency.max(1) {
            writing.join_next().await.context("a writer")???;
        }
    }
    while let Some(done) = writing.join_next().await {
        done??;
    }
    // Freshness: from the last write's answer to the passport showing it.
    let last = nhs.last().context("no patients")?.clone();
    let written = Instant::now();
    let mut r = nth(&readers, 0)?;
    loop {
        let view = r
            .get_passport(GetPassportRequest {
                nhs_number: last.clone(),
                purpose: String::new(),
            })
            .await;
        if view.is_ok_and(|v| v.into_inner().sections.iter().any(|s| !s.entries.is_empty())) {
            break;
        }
        if written.elapsed() > Duration::from_secs(30) {
            bail!("the passport did not catch up within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "write of {total} resources → the last person's in the passport: {:.1} ms after the last write",
        written.elapsed().as_secs_f64() * 1000.0
    );
    views("GetPassport (service, decided + audited)", args, &readers, nhs.clone()).await?;
    // As people: the GP viewing her registered patients, and a patient (P9) viewing her own.
    let as_user = |token: String| -> anyhow::Result<Bearer> { Ok(Bearer(format!("Bearer {token}").parse()?)) };
    let gp = as_user(super::identity::user_token(&p.http, "gp", "demo-gp-password", "selectedrole").await?)?;
    let own = as_user(super::identity::user_token(&p.http, "patient1", "demo-patient1-password", "nhs_number").await?)?;
    let (mut staff, mut patient) = (Vec::new(), Vec::new());
    for _ in 0..args.connections_or(4) {
        let channel = tonic::transport::Channel::from_shared(p.grpc.clone())?
            .connect()
            .await?;
        staff.push(PassportClient::with_interceptor(channel.clone(), gp.clone()));
        patient.push(PassportClient::with_interceptor(channel, own.clone()));
    }
    let mine = vec![demo.first().context("no demo patient")?.clone()];
    views("GetPassport (GP, her patients)", args, &staff, demo).await?;
    views("GetPassport (patient P9, own)", args, &patient, mine).await?;
    freshness(args, &writers, &nth(&readers, 0)?, &nhs).await?;
    drop(p);
    rebuild(config).await
}

/// Records written at `args.rate` per second for `args.seconds` (observations, round the
/// patients), with a probe write every 50 ms timed from its answer until the passport shows it.
async fn freshness(args: &BenchArgs, writers: &[Writers], reader: &Passports, nhs: &[String]) -> anyhow::Result<()> {
    let observation = |id: String, patient: usize| PutRequest {
        resource_json: format!(
            r#"{{"resourceType":"Observation","id":"{id}","status":"final","subject":{{"reference":"Patient/{}"}},"code":{{"text":"blood pressure"}}}}"#,
            crate::population::patient_id(BENCH_SEED, patient as u64)
        ),
        source_organisation: "A81001".into(),
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (writers, stop, rate) = (writers.to_vec(), stop.clone(), args.rate.max(1));
        let patients = nhs.len();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sends = tokio::task::JoinSet::new();
            let mut i = 0usize;
            while !stop.is_cancelled() {
                tick.tick().await;
                let mut w = nth(&writers, i as u64)?;
                let put = observation(format!("fw-{i}"), i % patients);
                sends.spawn(async move { w.put(put).await.map(|_| ()) });
                while let Some(done) = sends.try_join_next() {
                    done??;
                }
                i += 1;
            }
            while let Some(done) = sends.join_next().await {
                done??;
            }
            Ok::<usize, anyhow::Error>(i)
        })
    };
    let probe_patient = nhs.len() - 1;
    let mut h = histogram();
    let started = Instant::now();
    let mut r = reader.clone();
    let mut w = nth(writers, 0)?;
    let mut k = 0u64;
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let id = format!("probe-{k}");
        w.put(observation(id.clone(), probe_patient)).await?;
        let written = Instant::now();
        loop {
            let view = r
                .get_passport(GetPassportRequest {
                    nhs_number: nth(nhs, probe_patient as u64)?,
                    purpose: String::new(),
                })
                .await?
                .into_inner();
            if view.sections.iter().flat_map(|s| &s.entries).any(|e| e.id == id) {
                break;
            }
            if written.elapsed() > Duration::from_secs(30) {
                bail!("probe {k} did not reach the passport within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        h.record(written.elapsed().as_micros() as u64)?;
        k += 1;
        tokio::time::sleep(Duration::from_millis(50).saturating_sub(written.elapsed())).await;
    }
    stop.cancel();
    let writes = load.await??;
    report(
        &format!("write → passport @{}/s", args.rate),
        h.len(),
        started.elapsed(),
        &h,
    );
    println!(
        "  ({writes} background writes in {:.1} s = {:.0}/s; latency from each probe's answer)",
        started.elapsed().as_secs_f64(),
        writes as f64 / started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// People whose records the rebuild phase replays (every resource in two versions, and one
/// sharing state each).
const REBUILD_PATIENTS: u32 = 2_000;

/// A rebuild of the read model from a log of generated state events into an empty store:
/// on the configured Kafka and Postgres, else an embedded log and SQLite in a temp directory.
async fn rebuild(config: &Config) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (log, kind): (Arc<dyn Bus>, String) = if config.kafka.brokers.is_empty() {
        (
            Arc::new(EmbeddedBus::open(&dir.path().join("events.db")).await?),
            "embedded log".into(),
        )
    } else {
        let mut kc = config.kafka.clone();
        kc.namespace = format!("bench{}", std::process::id());
        let k = KafkaBus::new(&kc, "bench")?;
        k.ensure_topics(&sharedcare_passport::rebuild::TOPICS.map(String::from))
            .await?;
        (Arc::new(k), format!("kafka {}", config.kafka.brokers))
    };
    let (url, name) = if config.database.url.is_empty() {
        (
            sharedcare_kit::db::sqlite_url(dir.path(), "passport"),
            "passport".to_string(),
        )
    } else {
        (
            config.database.url.clone(),
            format!("passport_bench{}", std::process::id()),
        )
    };
    let mut events: Vec<Outgoing> = Vec::new();
    // The synthetic population's first people: every resource of their records, two versions
    // each, as records publishes them.
    let today = chrono::Utc::now().date_naive();
    for (p, nhs) in crate::population::nhs_numbers(u64::from(REBUILD_PATIENTS)).enumerate() {
        let record = crate::population::person_at(today, BENCH_SEED, p as u64, &nhs);
        for part in &record.parts {
            for r in &part.resources {
                let id = r["id"].as_str().unwrap_or_default().to_string();
                for version in [1i64, 2] {
                    let state = RecordState {
                        resource_type: r["resourceType"].as_str().unwrap_or_default().into(),
                        id: id.clone(),
                        version,
                        nhs_number: nhs.clone(),
                        source_organisation: part.org.into(),
                        last_updated: Some(sharedcare_kit::db::timestamp(1_790_000_000_000_000 + version)),
                        resource_json: r.to_string(),
                        labels: Vec::new(),
                        deleted: false,
                        ..Default::default()
                    };
                    let e = bus::envelope(sharedcare_passport::events::RECORD_STATE, "records", &id, &nhs, &state);
                    events.push(Outgoing::new(sharedcare_passport::RECORD_STATE_TOPIC, &e));
                }
            }
        }
        let sharing = SharingState {
            nhs_number: nhs.clone(),
            ..Default::default()
        };
        let e = bus::envelope(
            sharedcare_passport::events::SHARING_STATE,
            "consent",
            &nhs,
            &nhs,
            &sharing,
        );
        events.push(Outgoing::new(sharedcare_passport::SHARING_STATE_TOPIC, &e));
    }
    for chunk in events.chunks(2_000) {
        log.publish(chunk).await?;
    }
    let db = sharedcare_kit::db::Db::connect(&url, &name, 8, Duration::from_secs(10)).await?;
    db.migrate(sharedcare_kit::service::Service::migrations(
        &sharedcare_passport::Passport::new(Default::default()),
    ))
    .await?;
    let started = Instant::now();
    let quiet = |_: String| {};
    let done = sharedcare_passport::rebuild::run(db.clone(), log, true, Default::default(), &quiet).await;
    let elapsed = started.elapsed();
    if !config.database.url.is_empty() {
        let drop = format!("DROP SCHEMA {name} CASCADE");
        sqlx::query(sqlx::AssertSqlSafe(drop)).execute(db.writer()).await?;
    }
    db.close().await;
    let s = done?;
    println!(
        "{:<28} {:>9.0}/s   ({} events from the {kind} into an empty model in {:.2} s; {} entries)",
        "rebuild",
        s.events as f64 / elapsed.as_secs_f64(),
        s.events,
        elapsed.as_secs_f64(),
        s.entries
    );
    Ok(())
}

/// A benchmark phase of passport views by `clients`, going round `patients`.
async fn views(name: &str, args: &BenchArgs, clients: &[Passports], patients: Vec<String>) -> anyhow::Result<()> {
    let patients = Arc::new(patients);
    phase(name, args, clients, move |mut c, i| {
        let patient = nth(&patients, i).unwrap_or_default();
        async move {
            c.get_passport(GetPassportRequest {
                nhs_number: patient,
                purpose: String::new(),
            })
            .await
            .map(|_| ())
        }
    })
    .await?;
    Ok(())
}
