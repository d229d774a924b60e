//! `sharedcare bench export`: FHIR Bulk Data `$export` of 1,000,000 resources from a fresh
//! `up` (100,000 patients, each with nine observations, imported with `sharedcare import`):
//! kick-off to manifest (every patient decided by consent and audited), the `up` process's
//! memory while it runs, then the download of every NDJSON file.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::bench::{BenchArgs, UpProcess, demo_service_token, quiesce};

const PATIENTS: u32 = 100_000;
const OBSERVATIONS: u32 = 9;

/// Runs the benchmark.
pub async fn run(_args: &BenchArgs) -> anyhow::Result<()> {
    let (p, _) = UpProcess::start()?;
    let writer = demo_service_token(&p.http, "records.write").await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("export-bench.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
    let mut written = 0u64;
    let mut stem = 930_000_000u32;
    for i in 0..PATIENTS {
        let nhs = loop {
            stem += 1;
            if let Some(n) = sharedcare_kit::nhs::NhsNumber::from_stem(stem) {
                break n.to_string();
            }
        };
        let patient = serde_json::json!({"resourceType": "Patient", "id": format!("ex-{i}"),
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"family": "Export", "given": ["Pat"]}], "birthDate": "1960-05-01"});
        writeln!(out, "{patient}")?;
        for j in 0..OBSERVATIONS {
            let obs = serde_json::json!({"resourceType": "Observation", "id": format!("ex-{i}-o{j}"),
                "status": "final", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "75367002"}]},
                "subject": {"reference": format!("Patient/ex-{i}")}, "effectiveDateTime": "2026-11-01T10:00:00Z",
                "valueQuantity": {"value": 120 + j, "unit": "mmHg"}});
            writeln!(out, "{obs}")?;
        }
        written += 1 + u64::from(OBSERVATIONS);
    }
    out.flush()?;
    drop(out);
    let started = Instant::now();
    let imported = Command::new(std::env::current_exe()?)
        .arg("import")
        .arg(&file)
        .args(["--grpc", &p.grpc, "--token", &writer, "--source", "A81001"])
        .stderr(Stdio::null())
        .output()?;
    if !imported.status.success() {
        bail!("import failed: {}", String::from_utf8_lossy(&imported.stdout));
    }
    let import_time = started.elapsed();
    quiesce(&p).await?;
    std::fs::remove_file(&file)?;
    println!(
        "$export of {written} resources ({PATIENTS} patients) from `up` (imported in {:.0} s, audit settled after {:.0} s)",
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
    let exported: u64 = manifest["output"]
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
    for o in manifest["output"].as_array().context("no output")? {
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
