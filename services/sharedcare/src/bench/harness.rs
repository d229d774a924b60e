//! What every benchmark stands on: a fresh `sharedcare up` as a child process, the demo
//! service's token, timed phases with latency histograms, and the report line.

use sharedcare_kit::json::Fields;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;

use super::args::BenchArgs;

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
    // Constant bounds (1 µs to 60 s, 3 digits), which hdrhistogram accepts.
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

// ---------------------------------------------------------------------------------------- bus

/// A `sharedcare up` child process on a fresh data directory.
pub(crate) struct UpProcess {
    child: Child,
    pub(crate) http: String,
    pub(crate) grpc: String,
    /// The HL7 v2 MLLP listener's `host:port`.
    pub(crate) mllp: String,
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
            // A free port, so a bench never meets a platform already on HL7's 2575.
            .env("SHAREDCARE_CONNECTORS__MLLP_LISTEN", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn sharedcare up")?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut http = String::new();
        let mut grpc = String::new();
        let mut mllp = String::new();
        let mut lines = BufReader::new(stdout).lines();
        for line in lines.by_ref() {
            let line = line?;
            if let Some(rest) = line.strip_prefix("listening ") {
                for part in rest.split_whitespace() {
                    if let Some(a) = part.strip_prefix("http=") {
                        http = a.to_string();
                    } else if let Some(a) = part.strip_prefix("grpc=") {
                        grpc = format!("http://{a}");
                    } else if let Some(a) = part.strip_prefix("mllp=") {
                        mllp = a.to_string();
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
                mllp,
                _data: data,
            },
            started.elapsed(),
        ))
    }

    /// The process's open file descriptors.
    pub(crate) fn fds(&self) -> anyhow::Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))?.count())
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

    /// CPU seconds the process has used, user and system (`/proc/<pid>/stat` utime and stime,
    /// in Linux's fixed 100 ticks a second).
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id()))?;
        // The fields after the command name (which may hold spaces) start at the state.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("no command in stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let tick =
            |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("short stat")?.parse::<f64>()? / 100.0) };
        // utime and stime are fields 14 and 15 of stat; 12 and 13 after the command.
        Ok(tick(11)? + tick(12)?)
    }
}

impl Drop for UpProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `op` on `args.concurrency` workers for `args.seconds`, prints the report line and
/// returns the rate of successes per second.
pub(crate) async fn phase<C, F, Fut, E>(name: &str, args: &BenchArgs, clients: &[C], op: F) -> anyhow::Result<f64>
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
        let (client, op, stop, counter) = (nth(clients, w as u64)?, op.clone(), stop.clone(), counter.clone());
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
    let elapsed = started.elapsed();
    report(name, all.len(), elapsed, &all);
    if errors > 0 {
        println!("  {errors} errors");
    }
    Ok(all.len() as f64 / elapsed.as_secs_f64())
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
    r.at("access_token")
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("no access token from {http}: {r}"))
}

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

pub(crate) async fn http_ok(addr: &str, path: &str) -> bool {
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

/// Item `i` of `items` round-robin (`i` modulo their number), cloned: a benchmark's clients,
/// writers or patients taken in turn.
pub(crate) fn nth<T: Clone>(items: &[T], i: u64) -> anyhow::Result<T> {
    let n = u64::try_from(items.len())?;
    let at = usize::try_from(i.checked_rem(n).context("nothing to take from")?)?;
    items.get(at).cloned().context("nothing to take from")
}
