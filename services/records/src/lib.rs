//! The records service: the shared care record in FHIR R4 shape.
//!
//! - [`fhir`]: what a valid resource is (the domain core, no I/O).
//! - [`store`]: versions in the service's own tables, events through the outbox.
//! - [`grpc`]: the `sharedcare.records.v1.Records` service.
//!
//! Every put stores a new version and emits `RecordChanged` plus `AccessRecorded`; every get
//! writes `AccessRecorded` to the outbox *before* the resource is returned.
#![forbid(unsafe_code)]

pub mod api;
pub mod bulk;
pub mod bundle;
pub mod care;
pub mod config;
pub mod consent;
pub mod demographics;
pub mod error;
pub mod export_storage;
pub mod fhir;
pub mod grpc;
pub mod http;
pub mod import;
pub mod labels;
pub mod provenance;
pub mod store;
pub mod validate;

pub use config::RecordsConfig;

/// The demo ICS's feeds, trusted when the demo is seeded: its integration engine and its acute
/// trust's PAS (HL7 v2 through the connectors).
pub const DEMO_FEEDS: &[&str] = &["ics-integration", "rx1-pas"];
pub use error::RecordsError;

use std::time::Duration;

use sharedcare_kit::db::Migrations;
use sharedcare_kit::serve::Mount;
use sharedcare_kit::service::{Context, MountError};
use sharedcare_proto::records::v1::records_server::RecordsServer;

/// The service's name: its schema, its topic (`sharedcare.records.v1`), its event source.
pub const NAME: &str = "records";

/// The topic of `RecordState` events (each stored version of patient data, body included):
/// consumed only by read models that keep their own copy (the passport), so resource bodies
/// never travel to services that do not need them.
pub const STATE_TOPIC: &str = "sharedcare.records.state.v1";

/// The records service, as the binary mounts it.
pub struct Records {
    config: RecordsConfig,
}

impl Records {
    /// The service with its settings (`[records]`).
    pub fn new(config: RecordsConfig) -> Self {
        Records { config }
    }
}

#[async_trait::async_trait]
impl sharedcare_kit::service::Service for Records {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "the shared care record: FHIR R4 over gRPC and /fhir/R4, consent-decided and audited"
    }

    fn migrations(&self) -> Migrations {
        Migrations::Portable(sqlx::migrate!("./migrations"))
    }

    fn topics(&self) -> Vec<String> {
        vec![sharedcare_kit::bus::topic(NAME), STATE_TOPIC.to_string()]
    }

    /// gRPC and FHIR routes (callers checked against the trusted issuer), every access to
    /// patient data decided by consent and audited through the outbox.
    async fn mount(&self, ctx: &Context) -> Result<Mount, MountError> {
        let verifier = ctx.verifier()?;
        let timeout = Duration::from_millis(self.config.consent_timeout_ms);
        let pdp = ctx.consent(&self.config.consent_url, "records.consent_url", timeout)?;
        // The demo's integration engine writes the demo ICS's admissions and episodes.
        let demo_feeds = if ctx.seed_demo { DEMO_FEEDS } else { &[] };
        let care = self.config.care_policy(demo_feeds);
        let store = store::Store::new(ctx.db.clone(), ctx.outbox.clone(), pdp, care, &ctx.tasks)
            .with_labels(labels::Labeller::new(&self.config.sensitive_codes));
        // Patients stored before the search index existed are indexed before serving, so a
        // search never misses them (a no-op once done).
        let indexed = store.index_patients().await?;
        if indexed > 0 {
            tracing::info!(indexed, "patients indexed for search by name and birth date");
        }
        let described = store.provenance_ids().await?;
        if described > 0 {
            tracing::info!(
                versions = described,
                "versions stored before Provenance given their Provenance ids"
            );
        }
        let interrupted = store.fail_interrupted_exports().await?;
        if interrupted > 0 {
            tracing::warn!(
                interrupted,
                "Bulk Data exports interrupted by a restart are marked failed"
            );
        }
        let mut m = Mount::new(NAME);
        let mut api = api::RecordsApi::new(store.clone(), verifier);
        if !self.config.export_dir.is_empty() {
            api = api.with_export_storage(std::sync::Arc::new(export_storage::FsExportStorage::new(
                self.config.export_dir.clone(),
            )));
        }
        let (exports, keep) = (
            api.exports().clone(),
            std::time::Duration::from_secs(self.config.export_retention_hours.saturating_mul(3600)),
        );
        m.background.push(Box::new(move |stop| {
            Box::pin(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = every.tick() => {}
                    }
                    match store.sweep_exports(keep, exports.as_ref()).await {
                        Ok((0, 0)) => {}
                        Ok((failed, removed)) => tracing::info!(failed, removed, "Bulk Data exports swept"),
                        Err(e) => tracing::warn!(error = %e, "sweeping Bulk Data exports failed; next minute again"),
                    }
                }
            })
        }));
        m.http = http::router(api.clone());
        m.add_grpc(RecordsServer::new(api));
        Ok(m)
    }
}
