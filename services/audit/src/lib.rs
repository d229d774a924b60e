//! The audit service: an append-only log of every access to patient data.
//!
//! - [`store`]: the `entries` table; appends are idempotent by event id.
//! - [`consumer`]: applies `AccessRecorded` events from other services' topics.
//! - [`grpc`]: the `sharedcare.audit.v1.Audit` service (list by patient).
//! - [`tiles`], [`note`], [`http`]: the tree stored as C2SP tlog-tiles, its checkpoints, and
//!   both served over HTTP for monitors.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod error;
pub mod fhir;
pub mod grpc;
pub mod http;
pub mod leaf;
pub mod log;
pub mod merkle;
pub mod monitor;
pub mod note;
pub mod store;
pub mod tiles;

pub use error::AuditError;

/// The audit service's settings (`[audit]`, `SHAREDCARE_AUDIT__*`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// When one member of staff viewing many patients raises an alert.
    pub alerts: store::AlertRules,
    /// Identity's gRPC endpoint (its organisation directory: which organisations a break-glass
    /// reviewer covers, so they may read those organisations' accesses). Empty = identity in
    /// the same process (`up`); when identity runs elsewhere and this is empty, a reviewer
    /// reads only their own organisation's.
    pub identity_url: String,
    /// How long an organisation's parent, read from the directory, is remembered (seconds).
    pub directory_cache_secs: u64,
    /// Serve the checkpoint and tiles (`/audit/v1/…`) to anyone, without a token. Off: only to
    /// holders of a token with scope `audit.read`. Tiles hold hashes only (see the README).
    pub public_tiles: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            alerts: store::AlertRules::default(),
            identity_url: String::new(),
            directory_cache_secs: 300,
            public_tiles: false,
        }
    }
}

impl AuditConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.alerts.window_secs < 1 {
            return Err(Invalid::new("audit.alerts.window_secs", "must be at least 1"));
        }
        if self.alerts.distinct_patients < 2 {
            return Err(Invalid::new("audit.alerts.distinct_patients", "must be at least 2"));
        }
        let url = &self.identity_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(Invalid::new(
                "audit.identity_url",
                "expected identity's gRPC URL, e.g. http://identity:50051",
            ));
        }
        if self.directory_cache_secs == 0 {
            return Err(Invalid::new("audit.directory_cache_secs", "must be at least 1"));
        }
        Ok(())
    }
}

use sharedcare_kit::config::Invalid;
use std::sync::Arc;

use sharedcare_kit::bus;
use sharedcare_kit::db::Migrations;
use sharedcare_kit::serve::{Consumer, Mount};
use sharedcare_kit::service::{Context, MountError};
use sharedcare_proto::audit::v1::audit_server::AuditServer;

/// The service's name (schema, consumer group).
pub const NAME: &str = "audit";

/// Services whose topics carry events the audit log appends (`AccessRecorded`, `ConsentEvent`).
pub const AUDITED_SERVICES: &[&str] = &["records", "consent", "passport"];

/// How often a new tree head is signed when the log has grown.
pub const SIGN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The audit service, as the binary mounts it.
pub struct Audit {
    config: AuditConfig,
}

impl Audit {
    /// The service with its settings (`[audit]`).
    pub fn new(config: AuditConfig) -> Self {
        Audit { config }
    }
}

#[async_trait::async_trait]
impl sharedcare_kit::service::Service for Audit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "the verifiable audit log: every access, with signed tree heads and proofs"
    }

    fn migrations(&self) -> Migrations {
        // Only the first migration differs (its key column: BIGSERIAL against AUTOINCREMENT).
        Migrations::Split {
            shared: sqlx::migrate!("./migrations"),
            postgres: sqlx::migrate!("./migrations/postgres"),
            sqlite: sqlx::migrate!("./migrations/sqlite"),
        }
    }

    /// gRPC routes (callers checked against the trusted issuer), one consumer per audited
    /// topic, and the task that signs tree heads.
    async fn mount(&self, ctx: &Context) -> Result<Mount, MountError> {
        let store = store::Store::new(ctx.db.clone(), ctx.sealer.clone()).with_rules(self.config.alerts.clone());
        let log = log::Log::open(store.clone(), &note::origin(ctx.issuer()?)).await?;
        tracing::info!(key = %log.verifier_key(), "audit log checkpoints are signed by this key: pin it in monitors");
        let mut m = Mount::new(NAME);
        // Identity's organisation directory: the one in this process, else the configured one.
        let identity = ctx
            .peer_url("identity", &self.config.identity_url, "audit.identity_url")
            .ok();
        let ttl = std::time::Duration::from_secs(self.config.directory_cache_secs);
        let directory = sharedcare_kit::directory::Directory::new(identity.as_deref(), "audit.identity_url", ttl)?;
        m.add_grpc(AuditServer::new(
            grpc::AuditApi::new(store.clone(), log.clone()).with_directory(directory),
        ));
        m.http = http::router(log.clone(), ctx.verifier()?, self.config.public_tiles);
        m.background.push(Box::new(move |stop| Box::pin(sign_heads(log, stop))));
        let handler = Arc::new(consumer::AccessConsumer::new(store));
        m.consumers = AUDITED_SERVICES
            .iter()
            .map(|s| Consumer {
                group: NAME.to_string(),
                topic: bus::topic(s),
                handler: handler.clone(),
            })
            .collect();
        Ok(m)
    }
}

/// Signs a tree head every [`SIGN_EVERY`] while the log grows.
async fn sign_heads(log: log::Log, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(SIGN_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = log.sign_and_store_head().await {
            tracing::warn!(error = %e, "signing a tree head failed");
        }
    }
}
