//! The consent service: the one policy decision point for every access to patient data.
//!
//! - [`policy`]: the decision (the domain core, no I/O).
//! - [`store`]: directives, flags, relationships and break-glass grants in consent's tables,
//!   each change with its `ConsentEvent` through the outbox.
//! - [`grpc`]: the `sharedcare.consent.v1.Consent` service.
//!
//! Decisions read the facts from the database on every call, so a revoked permission binds the
//! very next decision after the change is acknowledged: there is no cache to go stale.
#![forbid(unsafe_code)]

pub mod config;

pub mod error;
pub mod events;
pub mod fhir;
pub mod grpc;
pub mod http;
pub mod policy;
pub mod state;
pub mod store;

pub use config::ConsentConfig;
pub use error::ConsentError;

use sharedcare_kit::db::Db;
use sharedcare_kit::db::Migrations;
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::serve::Mount;
use sharedcare_kit::service::{Context, MountError};

/// The service's name: its schema, its topic (`sharedcare.consent.v1`).
pub const NAME: &str = "consent";

/// The generated gRPC contract.
pub use sharedcare_proto::consent::v1 as api;

/// A care relationship the demo ICS seeds: NHS number, ODS code, kind.
pub type DemoRelationship = (String, &'static str, &'static str);

/// The consent service, as the binary mounts it.
pub struct Consent {
    demo: Vec<DemoRelationship>,
    config: ConsentConfig,
}

impl Consent {
    /// The service; `demo` are the care relationships seeded into an empty database when the
    /// process seeds the demo ICS.
    pub fn new(demo: Vec<DemoRelationship>) -> Self {
        Consent {
            demo,
            config: ConsentConfig::default(),
        }
    }

    /// The same service with `config`.
    pub fn with_config(self, config: ConsentConfig) -> Self {
        Consent { config, ..self }
    }
}

#[async_trait::async_trait]
impl sharedcare_kit::service::Service for Consent {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "the policy decision point: directives, opt-outs, care relationships, break-glass"
    }

    fn migrations(&self) -> Migrations {
        Migrations::Portable(sqlx::migrate!("./migrations"))
    }

    fn topics(&self) -> Vec<String> {
        vec![sharedcare_kit::bus::topic(NAME), state::STATE_TOPIC.to_string()]
    }

    /// gRPC routes and `/fhir/R4/Consent` (callers checked against the trusted issuer) and the
    /// consumer that records care relationships from records' events.
    async fn mount(&self, ctx: &Context) -> Result<Mount, MountError> {
        if ctx.seed_demo && seed_relationships(&ctx.db, &self.demo).await? {
            tracing::info!("seeded the demo ICS's care relationships into consent");
        }
        let store = store::Store::new(ctx.db.clone());
        let versioned = store.version_directives().await?;
        if versioned > 0 {
            tracing::info!(
                directives = versioned,
                "rendered directives stored before FHIR Consent as Consent resources"
            );
        }
        let mut m = Mount::new(NAME);
        // Identity's organisation directory: the one in this process, else the configured one;
        // without either, a staff reviewer covers only their own organisation.
        let identity = ctx
            .peer_url("identity", &self.config.identity_url, "consent.identity_url")
            .ok();
        let ttl = std::time::Duration::from_secs(self.config.directory_cache_secs);
        let directory = sharedcare_kit::directory::Directory::new(identity.as_deref(), "consent.identity_url", ttl)?;
        let api = grpc::ConsentApi::new(store.clone(), ctx.verifier()?).with_directory(directory);
        m.http = http::router(api.clone());
        m.add_grpc(api::consent_server::ConsentServer::new(api));
        m.consumers.push(sharedcare_kit::serve::Consumer {
            group: NAME.to_string(),
            topic: sharedcare_kit::bus::topic("records"),
            handler: std::sync::Arc::new(events::CareConsumer::new(store)),
        });
        Ok(m)
    }
}

/// Seeds care relationships (NHS number, ODS code, kind) into an empty consent database, for
/// the demo ICS `up` runs; returns whether it seeded.
pub async fn seed_relationships(db: &Db, relationships: &[DemoRelationship]) -> Result<bool, ConsentError> {
    let store = store::Store::new(db.clone());
    if store.has_relationships().await? {
        return Ok(false);
    }
    let actor = store::Actor { id: "demo", org: "" };
    let start = chrono::Utc::now().timestamp() - 365 * 86_400;
    for (n, (nhs, ods, kind)) in relationships.iter().enumerate() {
        let r = policy::Relationship {
            org: ods.to_string(),
            kind: kind.to_string(),
            start,
            end: None,
        };
        let patient = sharedcare_kit::nhs::NhsNumber::parse(nhs)
            .map_err(|e| ConsentError::invalid(format!("demo relationship {n}"), e.to_string()))?;
        store
            .add_relationship(&format!("demo-{n}"), &patient, &r, &actor)
            .await?;
    }
    Ok(true)
}
