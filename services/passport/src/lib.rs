//! The passport service: a person's whole record by section, across GP, hospital, community
//! and social care, ready for the NHS App and for clinicians.
//!
//! - [`projection`]: what the passport shows of a resource (the domain core, no I/O).
//! - [`store`]: the read model in the passport's own tables, applied from records' and
//!   consent's state events ([`events`]); reads never fan out to other services, except the
//!   access log, which is audit's ([`access`]); [`rebuild`] replays the state topics.
//! - [`views`]: passport views served in batches (one read, one consent call, one audit
//!   commit per batch).
//! - [`api`]: every view decided by consent and audited before it is answered; [`view`] is
//!   what one caller sees, [`choices`] the person's sharing choices, [`access`] who has looked
//!   at their record (from audit, with proofs); [`grpc`] and [`http`] serve them.
#![forbid(unsafe_code)]

pub mod access;
pub mod api;
pub mod choices;
pub(crate) mod decision;
pub mod error;
pub mod events;
pub mod grpc;
pub mod http;
pub mod projection;
pub mod rebuild;
pub mod store;
pub mod view;
pub mod views;

pub use error::PassportError;

use sharedcare_kit::config::Invalid;
use std::sync::Arc;
use std::time::Duration;

use sharedcare_kit::db::Migrations;
use sharedcare_kit::serve::{Consumer, Mount};
use sharedcare_kit::service::{Context, MountError};
use sharedcare_proto::passport::v1::passport_server::PassportServer;

/// The service's name: its schema, its topic (`sharedcare.passport.v1`), its consumer group.
pub const NAME: &str = "passport";

/// The generated gRPC contract.
pub use sharedcare_proto::passport::v1 as contract;

/// Records' state-transfer topic: each stored version of patient data, body included
/// (`RecordState`), which only read models consume.
pub const RECORD_STATE_TOPIC: &str = "sharedcare.records.state.v1";

/// Consent's state-transfer topic: each person's sharing choices and care relationships after
/// every change (`SharingState`), which only read models consume.
pub const SHARING_STATE_TOPIC: &str = "sharedcare.consent.state.v1";

/// The passport's settings (`[passport]`, `SHAREDCARE_PASSPORT__*`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PassportConfig {
    /// The consent service's gRPC endpoint. Empty = the consent service in the same process
    /// (`up`); required by `serve passport`.
    pub consent_url: String,
    /// How long a consent decision may take before the view is refused as undecidable.
    pub consent_timeout_ms: u64,
    /// The audit service's gRPC endpoint, for access logs and their proofs. Empty = the audit
    /// service in the same process (`up`); required by `serve passport`.
    pub audit_url: String,
}

impl Default for PassportConfig {
    fn default() -> Self {
        PassportConfig {
            consent_url: String::new(),
            consent_timeout_ms: 2_000,
            audit_url: String::new(),
        }
    }
}

impl PassportConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), Invalid> {
        for (key, url, service) in [
            ("passport.consent_url", &self.consent_url, "consent"),
            ("passport.audit_url", &self.audit_url, "audit"),
        ] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Invalid::new(
                    key,
                    format!("expected the {service} service's gRPC URL, e.g. http://{service}:50051"),
                ));
            }
        }
        if self.consent_timeout_ms == 0 {
            return Err(Invalid::new("passport.consent_timeout_ms", "must be at least 1"));
        }
        Ok(())
    }
}

/// The passport service, as the binary mounts it.
pub struct Passport {
    config: PassportConfig,
}

impl Passport {
    /// The service with its settings.
    pub fn new(config: PassportConfig) -> Self {
        Passport { config }
    }
}

#[async_trait::async_trait]
impl sharedcare_kit::service::Service for Passport {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "the patient passport: a person's whole record by section, consent-filtered per viewer"
    }

    fn migrations(&self) -> Migrations {
        Migrations::Portable(sqlx::migrate!("./migrations"))
    }

    /// gRPC and HTTP JSON routes (callers checked against the trusted issuer, every view
    /// decided by consent and audited) and the consumer that keeps the read model.
    async fn mount(&self, ctx: &Context) -> Result<Mount, MountError> {
        let store = store::Store::new(ctx.db.clone());
        let timeout = Duration::from_millis(self.config.consent_timeout_ms);
        let consent = ctx.consent(&self.config.consent_url, "passport.consent_url", timeout)?;
        // Views are served in batches (one read, one consent call, one audit commit each);
        // the other calls share consent calls through the kit's batcher.
        let viewer = views::Viewer::new(store.clone(), consent.clone(), ctx.outbox.clone(), &ctx.tasks);
        let pdp = Arc::new(sharedcare_kit::pdp::Batched::new(consent, &ctx.tasks));
        let audit_url = ctx.peer_url("audit", &self.config.audit_url, "passport.audit_url")?;
        let audit = sharedcare_kit::peer::channel(&audit_url, "passport.audit_url", timeout)?;
        let audit_log = access::AuditLog::new(audit, ctx.service_token("audit.read")?);
        let api = api::Api::new(
            viewer,
            store.clone(),
            ctx.verifier()?,
            pdp,
            ctx.outbox.clone(),
            audit_log,
        );
        let mut m = Mount::new(NAME);
        m.http = http::router(api.clone());
        m.add_grpc(PassportServer::new(grpc::PassportApi::new(api)));
        let poison = ctx.metrics.unreported(NAME, "undecodable_event");
        let handler = Arc::new(events::StateConsumer::new(store, poison));
        for topic in [RECORD_STATE_TOPIC, SHARING_STATE_TOPIC] {
            m.consumers.push(Consumer {
                group: NAME.to_string(),
                topic: topic.to_string(),
                handler: handler.clone(),
            });
        }
        Ok(m)
    }
}
