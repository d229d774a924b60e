//! A third-party FHIR client (Python's fhirpy, with fhir.resources' models checking every
//! response) against the records facade of `sharedcare up`. The script is
//! `tests/python/fhir_client.py`; the README's test command installs its pinned packages into
//! `tests/python/.venv`.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{service_token_for, up, user_token};

#[tokio::test]
async fn fhirpy_writes_reads_searches_and_posts_bundles_through_the_facade() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "tests/python/.venv is missing: run the README's test command (infra/test.sh), which installs tests/python/requirements.txt"
    );
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    let nhs = |i: usize| demo["patients"][i]["nhs_number"].as_str().expect("nhs").to_string();
    let system = service_token_for(&p.http, "records.read records.write").await;
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    let out = Command::new(&python)
        .arg(dir.join("fhir_client.py"))
        .env("FHIR_BASE", format!("{}/fhir/R4", p.http))
        .env("SYSTEM_TOKEN", system)
        .env("GP_TOKEN", gp)
        .env("NHS1", nhs(0))
        .env("NHS2", nhs(1))
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fhir_client.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("fhir client: all checks passed"), "{stdout}");
}

#[tokio::test]
async fn a_patients_consent_written_by_fhirpy_withholds_from_the_gp_and_reads_back_as_written() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "tests/python/.venv is missing: run the README's test command"
    );
    let data = tempfile::tempdir().expect("tmp");
    let p = up(data.path());
    let demo: Value =
        serde_json::from_str(&crate::harness::run(&["demo"], &[], Duration::from_secs(30)).1).expect("demo");
    let nhs = demo["patients"][0]["nhs_number"].as_str().expect("nhs").to_string();
    let system = service_token_for(&p.http, "records.read records.write").await;
    let gp = user_token(&p, "gp", "demo-gp-password", "selectedrole").await;
    let patient = user_token(&p, "patient1", "demo-patient1-password", "nhs_number").await;
    let out = Command::new(&python)
        .arg(dir.join("fhir_consent.py"))
        .env("FHIR_BASE", format!("{}/fhir/R4", p.http))
        .env("SYSTEM_TOKEN", system)
        .env("GP_TOKEN", gp)
        .env("PATIENT_TOKEN", patient)
        .env("NHS", nhs)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "fhir_consent.py failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("fhir consent: all checks passed"), "{stdout}");
}
