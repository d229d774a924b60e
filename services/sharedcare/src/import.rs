//! `sharedcare import <file>`: loads FHIR resources into the shared care record through the
//! records service (so every write is validated, decided by consent and audited), in
//! transactions of `--chunk` resources.
//!
//! The file is a FHIR Bundle (JSON; `urn:uuid:` fullUrls become the resources' ids and
//! references to them are rewritten) or NDJSON (one resource per line, as FHIR Bulk Data
//! exports them). Progress is kept in `<file>.progress` after every committed chunk: run the
//! same command again after an interruption and it carries on where it stopped.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use clap::Args;
use sharedcare_proto::records::v1::PutManyRequest;
use sharedcare_proto::records::v1::records_client::RecordsClient;

use crate::config::Config;

/// `sharedcare import` options.
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// A FHIR Bundle (.json) or NDJSON file (one resource per line).
    pub file: PathBuf,
    /// The records service's gRPC endpoint (default: this configuration's `grpc.listen`).
    #[arg(long, value_name = "URL")]
    pub grpc: Option<String>,
    /// A bearer token with scope records.write (default: a client-credentials token for
    /// `auth.client_id` / `auth.client_secret` from the issuer).
    #[arg(long, env = "SHAREDCARE_IMPORT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// ODS code of the organisation the records come from (provenance).
    #[arg(long, value_name = "ODS")]
    pub source: Option<String>,
    /// Resources per transaction (1-1000).
    #[arg(long, default_value_t = 500)]
    pub chunk: usize,
    /// Start again from the first resource, ignoring saved progress.
    #[arg(long)]
    pub restart: bool,
}

/// Where progress is kept: resources done and the size of the file they came from.
fn progress_path(file: &Path) -> PathBuf {
    let mut p = file.as_os_str().to_owned();
    p.push(".progress");
    PathBuf::from(p)
}

fn saved_progress(file: &Path, size: u64) -> usize {
    let text = std::fs::read_to_string(progress_path(file)).unwrap_or_default();
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        [done, of] if of.parse::<u64>().ok() == Some(size) => done.parse().unwrap_or(0),
        _ => 0,
    }
}

/// A client-credentials token for `auth.client_id` with scope records.write.
async fn token(config: &Config) -> anyhow::Result<String> {
    let issuer = if config.auth.issuer.is_empty() {
        sharedcare_identity::default_issuer(config.http.listen)
    } else {
        config.auth.issuer.clone()
    };
    let Some(source) = config.auth.service_token(&issuer, "records.write")? else {
        bail!(
            "import needs a token with scope records.write: pass --token, or set auth.client_id and auth.client_secret (SHAREDCARE_AUTH__CLIENT_ID / SHAREDCARE_AUTH__CLIENT_SECRET) for a client allowed records.write"
        );
    };
    Ok(source.get().await?)
}

/// Runs an import; prints progress to stderr and a summary to stdout.
pub async fn run(config: Config, args: ImportArgs) -> anyhow::Result<()> {
    if !(1..=1000).contains(&args.chunk) {
        bail!("--chunk: must be 1 to 1000, got {}", args.chunk);
    }
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("cannot read {}", args.file.display()))?;
    let size = text.len() as u64;
    let all = sharedcare_records::import::resources(&text)?;
    let grpc = args.grpc.clone().unwrap_or_else(|| {
        let a = config.grpc.listen;
        format!("http://{a}")
    });
    let token = match &args.token {
        Some(t) => t.clone(),
        None => token(&config).await?,
    };
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().context("token")?;
    let channel = tonic::transport::Channel::from_shared(grpc.clone())?
        .connect()
        .await
        .with_context(|| format!("cannot reach the records service at {grpc}"))?;
    let mut client = RecordsClient::new(channel).max_decoding_message_size(64 << 20);
    let mut done = if args.restart {
        0
    } else {
        saved_progress(&args.file, size)
    };
    if done > 0 {
        eprintln!("resuming after {done} of {} resources", all.len());
    }
    let started = Instant::now();
    let first = done;
    while done < all.len() {
        let end = (done + args.chunk).min(all.len());
        let mut req = tonic::Request::new(PutManyRequest {
            resources_json: all.get(done..end).unwrap_or_default().to_vec(),
            source_organisation: args.source.clone().unwrap_or_default(),
            purpose: String::new(),
            ..Default::default()
        });
        req.metadata_mut().insert("authorization", bearer.clone());
        if let Err(s) = client.put_many(req).await {
            // Name the resource by its place in the file, not in the chunk.
            let msg = s.message().to_string();
            let msg = match msg.strip_prefix("resources[").and_then(|m| m.split_once(']')) {
                Some((i, rest)) => match i.parse::<usize>() {
                    Ok(i) => format!(
                        "resource {} of the file: {}",
                        done + i + 1,
                        rest.trim_start_matches('.')
                    ),
                    Err(_) => msg.clone(),
                },
                None => msg,
            };
            bail!(
                "import stopped at resources {}-{} ({:?}): {msg}; nothing of that chunk was stored, {done} resources before it were (run again to resume)",
                done + 1,
                end,
                s.code()
            );
        }
        done = end;
        std::fs::write(progress_path(&args.file), format!("{done} {size}\n")).context("saving progress")?;
        let rate = (done - first) as f64 / started.elapsed().as_secs_f64().max(1e-6);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\rimported {done}/{} resources ({rate:.0}/s)   ", all.len());
        let _ = err.flush();
    }
    eprintln!();
    let _ = std::fs::remove_file(progress_path(&args.file));
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {} resources in {secs:.2} s ({:.0} resources/s)",
        done - first,
        (done - first) as f64 / secs.max(1e-6)
    );
    Ok(())
}
