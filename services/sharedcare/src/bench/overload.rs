//! `bench overload`: what clients get when far more is asked of a process than it can do;
//! `bench soak`: the same reads at half capacity for a long time, memory and descriptors
//! watched.
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
use super::harness::{UpProcess, demo_service_token, histogram, phase, quiesce, report};

/// Patients read, round robin.
const PATIENTS: u64 = 100;

/// The load's token scope.
const SCOPE: &str = "records.read records.write";

/// How many times capacity is offered.
const OVERLOAD: f64 = 3.0;

/// What the open-loop phase saw.
struct Outcomes {
    accepted: Histogram<u64>,
    refused: Histogram<u64>,
    failed: u64,
    /// Why the first failure failed (a soak that stops serving says so).
    first_failure: Option<String>,
}

impl Outcomes {
    fn new() -> Self {
        Outcomes {
            accepted: histogram(),
            refused: histogram(),
            failed: 0,
            first_failure: None,
        }
    }
}

/// How often the open loop fetches a new token: well inside the demo token's 10 minutes (a
/// soak that kept one token would be refused from then on, and look flat for it).
const TOKEN_REFRESH: Duration = Duration::from_secs(300);

/// A running `up` with patients to read, and a client and token to read them with.
struct Target {
    up: UpProcess,
    client: reqwest::Client,
    base: String,
    token: String,
}

/// Starts `up` (pinned to CPU 0 when `taskset` exists), writes the patients and measures the
/// capacity for reads as a closed loop of `--concurrency`.
async fn target(args: &BenchArgs, what: &str) -> anyhow::Result<(Target, f64)> {
    let pinned = Command::new("taskset").arg("--version").output().is_ok();
    let prefix: &[&str] = if pinned { &["taskset", "-c", "0"] } else { &[] };
    let (up, _) = UpProcess::start_with(prefix)?;
    let base = format!("http://{}", up.http);
    let limit = std::env::var("SHAREDCARE_MAX_IN_FLIGHT").unwrap_or_else(|_| "the default".into());
    println!(
        "{what}: FHIR reads by id over HTTP/1.1 at {base}, max_in_flight {limit}, server {}",
        if pinned {
            "pinned to CPU 0 (taskset)"
        } else {
            "not pinned (no taskset)"
        }
    );
    let token = demo_service_token(&up.http, SCOPE).await?;
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
    let read = {
        let (base, token) = (base.clone(), token.clone());
        move |c: reqwest::Client, n: u64| {
            let url = format!("{base}/fhir/R4/Patient/overload-{}", n % PATIENTS);
            let token = token.clone();
            async move { get(&c, &url, &token).await.map(|_| ()) }
        }
    };
    // Ten seconds tell the capacity, however long the run that follows.
    let measure = BenchArgs {
        seconds: args.seconds.min(10),
        ..args.clone()
    };
    let cpu_before = up.cpu_seconds()?;
    let capacity = phase("capacity (closed loop)", &measure, std::slice::from_ref(&client), read).await?;
    // Each read's audit entry is durable before its answer, but audit applies it to the log
    // afterwards: how far behind that was says what rate the whole path sustains.
    let stopped = Instant::now();
    quiesce(&up).await?;
    // `quiesce` returns one second after the log last grew.
    let behind = stopped.elapsed().saturating_sub(Duration::from_secs(1)).as_secs_f64();
    let loaded = measure.seconds as f64;
    let reads = capacity * loaded;
    println!(
        "audit log caught up {behind:.1} s after the closed loop: {:.0} reads/s audited end to end; \
         CPU per read {:.0} µs (all of `up`, the audit entry applied)",
        reads / (loaded + behind),
        (up.cpu_seconds()? - cpu_before) / reads.max(1.0) * 1e6
    );
    Ok((
        Target {
            up,
            client,
            base,
            token,
        },
        capacity,
    ))
}

/// Reads offered at `rate` per second on a fixed schedule for `length` (an open loop: each
/// answer timed from when its request was due); `sample` is called every 10 s with the time
/// and how many have been accepted so far. Returns the
/// outcomes, how many were sent and for how long.
async fn open_loop(
    t: &Target,
    rate: f64,
    length: Duration,
    mut sample: impl FnMut(Duration, u64),
) -> (Outcomes, u64, Duration) {
    let outcomes = Arc::new(Mutex::new(Outcomes::new()));
    let mut token = t.token.clone();
    let mut refreshed = Duration::ZERO;
    let mut requests = tokio::task::JoinSet::new();
    let started = Instant::now();
    let until = started + length;
    let mut sent = 0u64;
    let mut sampled = Duration::ZERO;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < until {
        tick.tick().await;
        let elapsed = started.elapsed();
        if elapsed >= sampled + Duration::from_secs(10) {
            sampled = elapsed;
            let accepted = outcomes.lock().await.accepted.len();
            sample(elapsed, accepted);
        }
        if elapsed >= refreshed + TOKEN_REFRESH {
            refreshed = elapsed;
            match demo_service_token(&t.up.http, SCOPE).await {
                Ok(new) => token = new,
                Err(e) => {
                    // Refused while the server is at its limit, say: try again in 10 s.
                    refreshed = elapsed.saturating_sub(TOKEN_REFRESH - Duration::from_secs(10));
                    println!("  token refresh failed at {:.0} s: {e}", elapsed.as_secs_f64());
                }
            }
        }
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while sent < due {
            // When this request should have gone: its latency counts from then.
            let at = started + Duration::from_secs_f64(sent as f64 / rate);
            let (c, outcomes) = (t.client.clone(), outcomes.clone());
            let url = format!("{}/fhir/R4/Patient/overload-{}", t.base, sent % PATIENTS);
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
                    Err(Refusal::Other(why)) => {
                        o.failed += 1;
                        o.first_failure.get_or_insert(why);
                    }
                }
            });
            sent += 1;
        }
        while requests.try_join_next().is_some() {}
    }
    let offered_for = started.elapsed();
    while requests.join_next().await.is_some() {}
    let o = std::mem::replace(&mut *outcomes.lock().await, Outcomes::new());
    (o, sent, offered_for)
}

fn outcome_lines(o: &Outcomes, sent: u64, offered_for: Duration) {
    println!(
        "offered {:.0}/s ({sent} requests in {:.1} s)",
        sent as f64 / offered_for.as_secs_f64(),
        offered_for.as_secs_f64()
    );
    report("accepted (200)", o.accepted.len(), offered_for, &o.accepted);
    report("refused (503, Retry-After)", o.refused.len(), offered_for, &o.refused);
    if o.failed > 0 {
        println!(
            "  {} failed otherwise (the first: {})",
            o.failed,
            o.first_failure.as_deref().unwrap_or("?")
        );
    }
}

/// Runs the overload benchmark.
pub async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let (t, capacity) = target(args, "overload").await?;
    let rate = capacity * OVERLOAD;
    println!(
        "capacity {capacity:.0} reads/s; offering {rate:.0}/s ({OVERLOAD}x) for {} s",
        args.seconds
    );
    let (o, sent, offered_for) = open_loop(&t, rate, Duration::from_secs(args.seconds), |_, _| {}).await;
    outcome_lines(&o, sent, offered_for);
    let p99 = o.accepted.value_at_quantile(0.99) as f64 / 1000.0;
    println!(
        "accepted p99 {p99:.1} ms: {}",
        if p99 < 50.0 { "under 50 ms" } else { "OVER 50 ms" }
    );
    Ok(())
}

/// `bench soak`: reads at half the measured capacity for `--seconds` (1800 for the README's
/// figure), the server's resident memory and open file descriptors sampled every 10 s.
pub async fn soak(args: &BenchArgs) -> anyhow::Result<()> {
    let (t, capacity) = target(args, "soak").await?;
    let rate = capacity / 2.0;
    let length = Duration::from_secs(args.seconds);
    println!(
        "capacity {capacity:.0} reads/s; offering {rate:.0}/s (half) for {} s",
        args.seconds
    );
    let first = (t.up.rss_kib()?, t.up.fds()?);
    println!(
        "{:>8}  {:>10}  {:>5}  {:>16}",
        "at", "RSS MiB", "fds", "served/s (last)"
    );
    let mut samples = vec![(Duration::ZERO, first.0, first.1)];
    let up = &t.up;
    let mut last = (Duration::ZERO, 0u64);
    let (o, sent, offered_for) = open_loop(&t, rate, length, |at, accepted| {
        if let (Ok(rss), Ok(fds)) = (up.rss_kib(), up.fds()) {
            if samples.len() % 6 == 0 {
                let served = (accepted - last.1) as f64 / (at - last.0).as_secs_f64().max(1.0);
                last = (at, accepted);
                println!(
                    "{:>7.0}s  {:>10.1}  {:>5}  {served:>16.0}",
                    at.as_secs_f64(),
                    rss as f64 / 1024.0,
                    fds
                );
            }
            samples.push((at, rss, fds));
        }
    })
    .await;
    outcome_lines(&o, sent, offered_for);
    let last = (t.up.rss_kib()?, t.up.fds()?);
    // Past the warm-up (the first tenth), how far memory and descriptors moved.
    let settled: Vec<_> = samples.iter().filter(|(at, _, _)| *at >= length / 10).collect();
    let (lo, hi) = settled
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), (_, r, _)| (lo.min(*r), hi.max(*r)));
    let (flo, fhi) = settled
        .iter()
        .fold((usize::MAX, 0), |(lo, hi), (_, _, f)| (lo.min(*f), hi.max(*f)));
    println!(
        "RSS {:.1} MiB at the start, {:.1} at the end; after the warm-up between {:.1} and {:.1} MiB",
        first.0 as f64 / 1024.0,
        last.0 as f64 / 1024.0,
        lo as f64 / 1024.0,
        hi as f64 / 1024.0
    );
    println!(
        "open file descriptors {} at the start, {} at the end; after the warm-up between {flo} and {fhi}",
        first.1, last.1
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
