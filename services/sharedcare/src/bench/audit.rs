//! `sharedcare bench audit [--entries N]`: the audit log from empty to N entries, appended in
//! batches of 256 `AccessRecorded` events (the consumer's batch), on SQLite in a temporary
//! directory, or on Postgres when `database.url` is set (in a schema of its own, dropped
//! afterwards). At 10⁵, 10⁶ and 10⁷ entries (those reached) and at N it measures:
//!
//! - inclusion proofs (2,000 random entries) and consistency proofs (500 random pairs);
//! - start-up to the first signed checkpoint: a new `Log` opened on the store (what a
//!   restarted service does) signing a head over entries not yet signed;
//! - bytes on disk per entry (entries with their indexes, tiles, inbox).
//!
//! Append rates are printed per tenth of the run, so the last can be set against the first.

use std::time::{Duration, Instant};

use sharedcare_audit::log::Log;
use sharedcare_audit::store::Store;
use sharedcare_kit::bus::{self as kbus, Delivery};
use sharedcare_kit::db::Db;
use sharedcare_proto::events::v1::AccessRecorded;

use super::args::BenchArgs;
use super::harness::histogram;
use crate::config::Config;
use crate::population::Rng;

const BATCH: u64 = 256;
const ORIGIN: &str = "sharedcare.bench/audit";

/// Fills the audit log of `up`'s data directory `data` with `n` entries of other patients
/// (before `up` starts), printing the rate.
pub async fn prefill(data: &std::path::Path, n: u64) -> anyhow::Result<()> {
    let url = sharedcare_kit::db::sqlite_url(data, "audit");
    let db = Db::connect(&url, "audit", 2, Duration::from_secs(5)).await?;
    db.migrate(sharedcare_kit::service::Service::migrations(
        &sharedcare_audit::Audit::new(Default::default()),
    ))
    .await?;
    // The key `up` on this directory will find beside the data.
    let sealer = sharedcare_kit::sealing::KeyEncryptionConfig::default()
        .sealer(Some(&sharedcare_kit::sealing::default_kek_path(data)))?;
    let store = Store::new(db.clone(), sealer);
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let b = batch(done);
        let refs: Vec<(&Delivery, AccessRecorded)> = b.iter().map(|(d, e)| (d, e.clone())).collect();
        done += store.append_all(&refs).await? as u64;
    }
    println!(
        "audit log filled with {done} entries of other patients in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    db.close().await;
    Ok(())
}

fn batch(start: u64) -> Vec<(Delivery, AccessRecorded)> {
    (start..start + BATCH)
        .map(|i| {
            let e = AccessRecorded {
                actor: format!("555000{:06}", i % 1000),
                actor_organisation: "A81001".into(),
                action: "read".into(),
                resources: vec![format!("Patient/p{}/_history/1", i % 5000)],
                nhs_number: "9434765919".into(),
                purpose: "TREAT".into(),
                outcome: "success".into(),
                ..AccessRecorded::default()
            };
            let env = kbus::envelope(
                "sharedcare.events.v1.AccessRecorded",
                "records",
                "Patient/p",
                "9434765919",
                &e,
            );
            (
                Delivery {
                    envelope: env,
                    topic: "sharedcare.records.v1".into(),
                    partition: 0,
                    offset: i as i64,
                },
                e,
            )
        })
        .collect()
}

/// Where the bench's log lives.
enum Place {
    Sqlite(tempfile::TempDir),
    Postgres(String, String),
}

pub async fn run(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let target = args.entries;
    let (db, place) = if config.database.url.is_empty() {
        let dir = tempfile::tempdir()?;
        let url = sharedcare_kit::db::sqlite_url(dir.path(), "audit");
        (
            Db::connect(&url, "audit", 4, Duration::from_secs(5)).await?,
            Place::Sqlite(dir),
        )
    } else {
        let schema = format!("bench_audit_{}", std::process::id());
        let db = Db::connect(&config.database.url, &schema, 8, Duration::from_secs(5)).await?;
        (db, Place::Postgres(config.database.url.clone(), schema))
    };
    db.migrate(sharedcare_kit::service::Service::migrations(
        &sharedcare_audit::Audit::new(Default::default()),
    ))
    .await?;
    // A throwaway log: its key sealed under a throwaway key-encryption key.
    let sealer: sharedcare_kit::sealing::Sealer = std::sync::Arc::new(sharedcare_kit::sealing::LocalKek::random()?);
    let store = Store::new(db.clone(), sealer);
    let log = Log::open(store.clone(), ORIGIN).await?;
    match &place {
        Place::Sqlite(dir) => println!(
            "audit log on SQLite ({}), {target} entries in batches of {BATCH} AccessRecorded",
            dir.path().display()
        ),
        Place::Postgres(url, schema) => println!(
            "audit log on Postgres ({}, schema {schema}), {target} entries in batches of {BATCH} AccessRecorded",
            sharedcare_kit::db::redact(url)
        ),
    }
    let milestones: Vec<u64> = [100_000, 1_000_000, 10_000_000, target]
        .into_iter()
        .filter(|m| *m <= target)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let tenth = (target / 10).max(BATCH);
    let mut n = 0u64;
    let mut h = histogram();
    let mut segment = (Instant::now(), 0u64);
    let mut rates: Vec<f64> = Vec::new();
    let started = Instant::now();
    let mut measured = Duration::ZERO;
    for m in milestones {
        while n < m {
            let b = batch(n);
            let refs: Vec<(&Delivery, AccessRecorded)> = b.iter().map(|(d, e)| (d, e.clone())).collect();
            let t = Instant::now();
            n += store.append_all(&refs).await? as u64;
            let _ = h.record(t.elapsed().as_micros() as u64);
            if n - segment.1 >= tenth {
                let rate = (n - segment.1) as f64 / segment.0.elapsed().as_secs_f64();
                println!(
                    "append {:>10}..{:<10} {rate:>9.0}/s   batch p50 {:>6.2} ms   p99 {:>6.2} ms",
                    segment.1,
                    n,
                    h.value_at_quantile(0.5) as f64 / 1000.0,
                    h.value_at_quantile(0.99) as f64 / 1000.0
                );
                rates.push(rate);
                h.reset();
                segment = (Instant::now(), n);
            }
        }
        let t = Instant::now();
        measure(&log, &store, &db, &place, n).await?;
        measured += t.elapsed();
        segment = (Instant::now(), n);
    }
    let appending = started.elapsed() - measured;
    println!(
        "appended {n} entries in {:.1} s: {:.0}/s overall; last tenth {:.0}% of the first",
        appending.as_secs_f64(),
        n as f64 / appending.as_secs_f64(),
        rates
            .last()
            .zip(rates.first())
            .map(|(l, f)| 100.0 * l / f)
            .unwrap_or(100.0)
    );
    db.close().await;
    if let Place::Postgres(url, schema) = &place {
        let admin = Db::connect(url, "public", 1, Duration::from_secs(5)).await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(admin.writer())
            .await?;
        admin.close().await;
    }
    Ok(())
}

/// Proofs, a cold start and disk use at `size` entries.
async fn measure(log: &Log, store: &Store, db: &Db, place: &Place, size: u64) -> anyhow::Result<()> {
    println!("-- at {size} entries");
    let t = Instant::now();
    let head = log.sign_head().await?;
    println!(
        "   sign head (warm)             {:>8.2} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let mut rng = Rng(size);
    let n = head.tree_size;
    let mut h = histogram();
    for _ in 0..2_000 {
        let index = rng.below(n);
        let t = Instant::now();
        log.inclusion(index, n).await?;
        let _ = h.record(t.elapsed().as_micros() as u64);
    }
    quantiles("inclusion proof", &h);
    let mut h = histogram();
    for _ in 0..500 {
        let first = 1 + rng.below(n - 1);
        let t = Instant::now();
        log.consistency(first, n).await?;
        let _ = h.record(t.elapsed().as_micros() as u64);
    }
    quantiles("consistency proof", &h);
    // A restarted service: a new Log on the store, signing over entries appended since.
    let b = batch(size);
    let refs: Vec<(&Delivery, AccessRecorded)> = b.iter().map(|(d, e)| (d, e.clone())).collect();
    store.append_all(&refs).await?;
    let t = Instant::now();
    let cold = Log::open(store.clone(), ORIGIN).await?;
    let first = cold.sign_head().await?;
    println!(
        "   start-up to a signed checkpoint {:>6.1} ms   (open {} entries, sign {})",
        t.elapsed().as_secs_f64() * 1000.0,
        first.tree_size,
        first.tree_size
    );
    let bytes: u64 = match place {
        Place::Sqlite(dir) => ["audit.db", "audit.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.path().join(f)).ok())
            .map(|m| m.len())
            .sum(),
        Place::Postgres(_, schema) => {
            use sqlx::Row;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT CAST(SUM(pg_total_relation_size(c.oid)) AS BIGINT) FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind = 'r'"
            )))
            .fetch_one(db.pool())
            .await?
            .try_get::<i64, _>(0)? as u64
        }
    };
    println!(
        "   disk                         {:>8.1} MiB, {:.0} bytes per entry",
        bytes as f64 / 1_048_576.0,
        bytes as f64 / first.tree_size as f64
    );
    Ok(())
}

fn quantiles(name: &str, h: &hdrhistogram::Histogram<u64>) {
    println!(
        "   {name:<28} p50 {:>6.3} ms   p99 {:>6.3} ms   (n={})",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.len()
    );
}
