//! `sharedcare audit monitor <url> --key <verifier key>`: an independent monitor of an audit
//! log over HTTP (C2SP tlog-checkpoint and tlog-tiles). Each round it fetches the checkpoint,
//! verifies its signature with the pinned key, fetches the tiles holding what is new since the
//! last checkpoint it accepted (all of them the first time), and checks them against the tree
//! and that checkpoint against the last one (see `sharedcare_audit::monitor`). The last
//! accepted checkpoint is kept in `--state`, so a restarted monitor carries on from it.
//!
//! A refused checkpoint, a fork or a log that went back is printed as `ALERT …` and the monitor
//! exits with status 2; an unreachable log is retried.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use sharedcare_audit::monitor::{self, Alarm};
use sharedcare_audit::note::{self, Checkpoint, VerifierKey};
use sharedcare_audit::tiles::{self, Tiles};

/// `sharedcare audit monitor …`.
#[derive(clap::Args, Debug)]
pub struct MonitorArgs {
    /// The log's address: Sharedcare's HTTP base URL (`/audit/v1` is added) or the full prefix.
    pub url: String,
    /// The log's note verifier key, pinned: `<origin>+<key id>+<base64 key>` (audit logs it at
    /// start, and GetTreeHead returns it).
    #[arg(long, value_name = "VKEY")]
    pub key: String,
    /// A bearer token with scope audit.read (not needed when the log sets audit.public_tiles).
    #[arg(long, env = "AUDIT_MONITOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where the last accepted checkpoint is kept between rounds and runs.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// Seconds between rounds.
    #[arg(long, default_value_t = 30)]
    pub every: u64,
    /// One round, then exit (0 when the checkpoint was accepted).
    #[arg(long)]
    pub once: bool,
}

/// Tiles fetched at once.
const TILES_IN_FLIGHT: usize = 8;

/// Exit status for an alarm.
pub const ALARM_EXIT: u8 = 2;

/// Runs the monitor. Returns `Err` for a failure to run; an alarm exits the process.
pub async fn run(args: MonitorArgs) -> anyhow::Result<()> {
    let key = VerifierKey::parse(&args.key).map_err(|e| anyhow::anyhow!("--key: {e}"))?;
    let base = {
        let u = args.url.trim_end_matches('/');
        if u.ends_with("/audit/v1") {
            u.to_string()
        } else {
            format!("{u}/audit/v1")
        }
    };
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let mut previous: Option<Checkpoint> = match &args.state {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(path).with_context(|| format!("--state {}", path.display()))?;
            match note::open_checkpoint(&text, &key) {
                Ok(cp) => Some(cp),
                Err(e) => bail!(
                    "--state {}: the saved checkpoint does not open with --key: {e}",
                    path.display()
                ),
            }
        }
        _ => None,
    };
    loop {
        match round(&client, &base, args.token.as_deref(), &key, previous.as_ref()).await {
            Ok((cp, text, fetched)) => {
                let since = previous
                    .as_ref()
                    .map(|p| format!(", consistent with {} entries", p.size))
                    .unwrap_or_default();
                println!(
                    "ok {} at {} entries, root {}{since} ({fetched} tiles checked)",
                    cp.origin,
                    cp.size,
                    sharedcare_audit::store::hex(&cp.root)
                );
                if let Some(path) = &args.state {
                    std::fs::write(path, &text).with_context(|| format!("--state {}", path.display()))?;
                }
                previous = Some(cp);
            }
            Err(Failure::Alarm(a)) => {
                eprintln!("ALERT {a}");
                println!("ALERT {a}");
                std::process::exit(i32::from(ALARM_EXIT));
            }
            Err(Failure::Refused(why)) => {
                eprintln!("ALERT the checkpoint was refused: {why}");
                println!("ALERT the checkpoint was refused: {why}");
                std::process::exit(i32::from(ALARM_EXIT));
            }
            Err(Failure::Unreachable(e)) if !args.once => {
                eprintln!("warning: the log could not be read, retrying: {e:#}");
            }
            Err(Failure::Unreachable(e)) => return Err(e),
        }
        if args.once {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(args.every)).await;
    }
}

enum Failure {
    Alarm(Alarm),
    Refused(String),
    Unreachable(anyhow::Error),
}

async fn get(client: &reqwest::Client, url: &str, token: Option<&str>) -> Result<Vec<u8>, Failure> {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::Unreachable(anyhow::anyhow!("GET {url}: {e}")))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| Failure::Unreachable(anyhow::anyhow!("GET {url}: {e}")))?;
    if !status.is_success() {
        return Err(Failure::Unreachable(anyhow::anyhow!(
            "GET {url}: {status}: {}",
            String::from_utf8_lossy(&body).trim()
        )));
    }
    Ok(body.to_vec())
}

/// One round: the accepted checkpoint, its note, and how many tiles were checked.
async fn round(
    client: &reqwest::Client,
    base: &str,
    token: Option<&str>,
    key: &VerifierKey,
    previous: Option<&Checkpoint>,
) -> Result<(Checkpoint, String, usize), Failure> {
    let raw = get(client, &format!("{base}/checkpoint"), token).await?;
    let text = String::from_utf8(raw).map_err(|_| Failure::Refused("the checkpoint is not UTF-8".into()))?;
    let cp = note::open_checkpoint(&text, key).map_err(|e| Failure::Refused(e.to_string()))?;
    let from = previous.map(|p| p.size.min(cp.size)).unwrap_or(0);
    let wanted = monitor::tiles_to_fetch(from, cp.size);
    // Several tiles in flight at once: the first round reads every tile of the log.
    let mut fetches = futures::stream::iter(wanted.iter().copied())
        .map(|(id, width)| async move {
            let bytes = get(client, &format!("{base}/{}", tiles::path(id, width)), token).await?;
            if bytes.len() != width as usize * 32 {
                return Err(Failure::Alarm(Alarm::BadTile(format!(
                    "tile {}/{} came with {} bytes, not the {} of {width} hashes",
                    id.level,
                    id.index,
                    bytes.len(),
                    width * 32
                ))));
            }
            Ok((id, bytes))
        })
        .buffer_unordered(TILES_IN_FLIGHT);
    let mut fetched = Tiles::default();
    while let Some(tile) = fetches.next().await {
        let (id, bytes) = tile?;
        fetched.0.insert(id, bytes);
    }
    monitor::check(previous, &cp, &fetched).map_err(Failure::Alarm)?;
    Ok((cp, text, wanted.len()))
}
