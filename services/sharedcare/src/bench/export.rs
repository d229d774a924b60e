//! `sharedcare bench export`: FHIR Bulk Data `$export` of about 1,000,000 resources from a fresh
//! `up` (45,000 people of the synthetic population, their records of every kind, imported with
//! `sharedcare import`, one file per writing organisation):
//! kick-off to manifest (every patient decided by consent and audited), the `up` process's
//! memory while it runs, then the download of every NDJSON file.

use sharedcare_kit::json::Fields;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::args::BenchArgs;
use super::harness::{UpProcess, demo_service_token, quiesce};

/// People of the synthetic population: about 1,000,000 resources of every kind.
const PEOPLE: u64 = 45_000;

/// Runs the benchmark.
pub async fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    // Without the demo's own record: the export must hold exactly what was imported.
    let (p, _) = UpProcess::start_env(&[], &[("SHAREDCARE_IDENTITY__SEED_DEMO_RECORD", "false")])?;
    let writer = demo_service_token(&p.http, "records.write").await?;
    let dir = tempfile::tempdir()?;
    let population = crate::population::write(dir.path(), chrono::Utc::now().date_naive(), 2026, PEOPLE)?;
    let written: u64 = population.resources.values().sum();
    let started = Instant::now();
    for org in population.resources.keys() {
        let file = dir.path().join(format!("{org}.ndjson"));
        let imported = Command::new(std::env::current_exe()?)
            .arg("import")
            .arg(&file)
            .args(["--grpc", &p.grpc, "--token", &writer, "--source", org])
            .stderr(Stdio::null())
            .output()?;
        if !imported.status.success() {
            bail!(
                "import of {org}'s file failed: {}",
                String::from_utf8_lossy(&imported.stdout)
            );
        }
    }
    let import_time = started.elapsed();
    quiesce(&p).await?;
    drop(dir);
    println!(
        "$export of {written} resources ({PEOPLE} people of the synthetic population) from `up` (imported in {:.0} s, audit settled after {:.0} s)",
        import_time.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    let bulk = demo_service_token(&p.http, "records.bulk").await?;
    let client = reqwest::Client::new();
    let rss_before = p.rss_kib()?;
    let began = Instant::now();
    let kick = client
        .get(format!("http://{}/fhir/R4/$export", p.http))
        .bearer_auth(&bulk)
        .header("prefer", "respond-async")
        .header("x-purpose-of-use", "TREAT")
        .send()
        .await?;
    if kick.status().as_u16() != 202 {
        bail!("kick-off answered {}: {}", kick.status(), kick.text().await?);
    }
    let poll = kick
        .headers()
        .get("content-location")
        .context("no Content-Location")?
        .to_str()?
        .to_string();
    let mut peak = rss_before;
    let manifest: serde_json::Value = loop {
        peak = peak.max(p.rss_kib()?);
        let r = client.get(&poll).bearer_auth(&bulk).send().await?;
        match r.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(100)).await,
            200 => break r.json().await?,
            other => bail!("poll answered {other}: {}", r.text().await?),
        }
    };
    let took = began.elapsed();
    let exported: u64 = manifest
        .at("output")
        .as_array()
        .context("no output")?
        .iter()
        .map(|o| o["count"].as_u64().unwrap_or(0))
        .sum();
    if exported != written {
        bail!("exported {exported} of {written} resources");
    }
    println!(
        "  kick-off to manifest        {:>9.0} resources/s   {:.1} s   RSS {} MiB before, {} MiB peak",
        exported as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        rss_before / 1024,
        peak / 1024
    );
    let began = Instant::now();
    let mut bytes = 0u64;
    for o in manifest.at("output").as_array().context("no output")? {
        let mut r = client
            .get(o["url"].as_str().context("no url")?)
            .bearer_auth(&bulk)
            .send()
            .await?
            .error_for_status()?;
        while let Some(chunk) = r.chunk().await? {
            bytes += chunk.len() as u64;
            peak = peak.max(p.rss_kib()?);
        }
    }
    let took = began.elapsed();
    println!(
        "  download of every file      {:>9.0} resources/s   {:.1} s   {} MiB of NDJSON   RSS {} MiB peak",
        exported as f64 / took.as_secs_f64(),
        took.as_secs_f64(),
        bytes >> 20,
        peak / 1024
    );
    Ok(())
}
