//! `bench overload`: what clients get when far more is asked of a process than it can do.
//!
//! `sharedcare up` runs pinned to CPU 0 (when `taskset` exists; run the bench itself with
//! `taskset -c 1`). First its capacity is measured: FHIR reads by id over HTTP/1.1
//! keep-alive, `--concurrency` at a time, each with a token, decided by consent and audited.
//! Then reads are *offered* at three times that rate, on a fixed schedule whatever the
//! answers (an open loop, as independent clinicians and systems behave), for `--seconds`.
//! Each answer is timed from when its request was due, so a request the load generator sent
//! late counts against the server, not for it. The limit is the process's `max_in_flight`
//! (set `SHAREDCARE_MAX_IN_FLIGHT` for the bench to pass it on).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use tokio::sync::Mutex;

use super::args::BenchArgs;
use super::harness::{UpProcess, demo_service_token, histogram, phase, report};

/// Patients read, round robin.
const PATIENTS: u64 = 100;

/// How many times capacity is offered.
const OVERLOAD: f64 = 3.0;

/// What the open-loop phase saw.
struct Outcomes {
    accepted: Histogram<u64>,
    refused: Histogram<u64>,
    failed: u64,
}

/// Runs the overload benchmark.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let pinned = Command::new("taskset").arg("--version").output().is_ok();
    let prefix: &[&str] = if pinned { &["taskset", "-c", "0"] } else { &[] };
    let (up, _) = UpProcess::start_with(prefix)?;
    let base = format!("http://{}", up.http);
    let limit = std::env::var("SHAREDCARE_MAX_IN_FLIGHT").unwrap_or_else(|_| "the default".into());
    println!(
        "overload: FHIR reads by id over HTTP/1.1 at {base}, max_in_flight {limit}, server {}",
        if pinned {
            "pinned to CPU 0 (taskset)"
        } else {
            "not pinned (no taskset)"
        }
    );
    let token = demo_service_token(&up.http, "records.read records.write").await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .build()
        .context("HTTP client")?;
    for (n, nhs) in (0..PATIENTS).zip(crate::population::nhs_numbers(PATIENTS)) {
        let patient = serde_json::json!({
            "resourceType": "Patient",
            "id": format!("overload-{n}"),
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}],
            "name": [{"family": "Overload", "given": ["Test"]}],
            "birthDate": "1970-01-01",
        });
        let r = client
            .put(format!("{base}/fhir/R4/Patient/overload-{n}"))
            .bearer_auth(&token)
            .header("content-type", "application/fhir+json")
            .header("x-source-organisation", "A81001")
            .body(patient.to_string())
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("writing patient {n}: HTTP {} {}", r.status(), r.text().await?);
        }
    }

    // Capacity: a closed loop, each of `--concurrency` readers waiting for its answer.
    let read = {
        let (base, token) = (base.clone(), token.clone());
        move |c: reqwest::Client, n: u64| {
            let url = format!("{base}/fhir/R4/Patient/overload-{}", n % PATIENTS);
            let token = token.clone();
            async move { get(&c, &url, &token).await.map(|_| ()) }
        }
    };
    let capacity = phase("capacity (closed loop)", args, std::slice::from_ref(&client), read).await?;
    let rate = capacity * OVERLOAD;
    println!(
        "capacity {capacity:.0} reads/s; offering {rate:.0}/s ({OVERLOAD}x) for {} s",
        args.seconds
    );

    // Overload: an open loop at three times capacity.
    let outcomes = Arc::new(Mutex::new(Outcomes {
        accepted: histogram(),
        refused: histogram(),
        failed: 0,
    }));
    let mut requests = tokio::task::JoinSet::new();
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut sent = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < until {
        tick.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while sent < due {
            // When this request should have gone: its latency counts from then.
            let at = started + Duration::from_secs_f64(sent as f64 / rate);
            let (c, outcomes) = (client.clone(), outcomes.clone());
            let url = format!("{base}/fhir/R4/Patient/overload-{}", sent % PATIENTS);
            let token = token.clone();
            requests.spawn(async move {
                let status = get(&c, &url, &token).await;
                let took = at.elapsed().as_micros() as u64;
                let mut o = outcomes.lock().await;
                match status {
                    Ok(()) => {
                        let _ = o.accepted.record(took);
                    }
                    Err(Refusal::Overloaded) => {
                        let _ = o.refused.record(took);
                    }
                    Err(Refusal::Other(_)) => o.failed += 1,
                }
            });
            sent += 1;
        }
        while requests.try_join_next().is_some() {}
    }
    let offered_for = started.elapsed();
    while requests.join_next().await.is_some() {}
    let o = outcomes.lock().await;
    println!(
        "offered {:.0}/s ({sent} requests in {:.1} s)",
        sent as f64 / offered_for.as_secs_f64(),
        offered_for.as_secs_f64()
    );
    report("accepted (200)", o.accepted.len(), offered_for, &o.accepted);
    report("refused (503, Retry-After)", o.refused.len(), offered_for, &o.refused);
    if o.failed > 0 {
        println!("  {} failed otherwise", o.failed);
    }
    let p99 = o.accepted.value_at_quantile(0.99) as f64 / 1000.0;
    println!(
        "accepted p99 {p99:.1} ms: {}",
        if p99 < 50.0 { "under 50 ms" } else { "OVER 50 ms" }
    );
    Ok(())
}

/// Why a read was not answered.
enum Refusal {
    /// 503: over `max_in_flight`.
    Overloaded,
    /// Anything else.
    Other(String),
}

impl From<reqwest::Error> for Refusal {
    fn from(e: reqwest::Error) -> Self {
        Refusal::Other(e.to_string())
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Overloaded => f.write_str("503"),
            Refusal::Other(e) => f.write_str(e),
        }
    }
}

async fn get(c: &reqwest::Client, url: &str, token: &str) -> Result<(), Refusal> {
    let r = c.get(url).bearer_auth(token).send().await?;
    let status = r.status().as_u16();
    r.bytes().await?;
    match status {
        200 => Ok(()),
        503 => Err(Refusal::Overloaded),
        other => Err(Refusal::Other(format!("HTTP {other}"))),
    }
}
