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

pub mod error;
pub mod events;
pub mod grpc;
pub mod policy;
pub mod store;

pub use error::ConsentError;

use sharedcare_kit::auth::Verifier;
use sharedcare_kit::db::Db;
use sharedcare_kit::outbox::{Outbox, OutboxConfig};
use sharedcare_kit::serve::Mount;

/// The service's name: its schema, its topic (`sharedcare.consent.v1`).
pub const NAME: &str = "consent";

/// The generated gRPC contract.
pub use sharedcare_proto::consent::v1 as api;

/// Applies consent's schema to `db`.
pub async fn migrate(db: &Db) -> sharedcare_kit::Result<()> {
    // The same portable SQL serves both back ends (one directory, no copies to drift apart).
    db.migrate(sqlx::migrate!("./migrations"), sqlx::migrate!("./migrations"))
        .await
}

/// Seeds care relationships (NHS number, ODS code, kind) into an empty consent database, for
/// the demo ICS `up` runs; returns whether it seeded.
pub async fn seed_relationships(db: &Db, relationships: &[(String, &str, &str)]) -> Result<bool, ConsentError> {
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
        store.add_relationship(&format!("demo-{n}"), nhs, &r, &actor).await?;
    }
    Ok(true)
}

/// Builds the service: gRPC routes (callers checked by `verifier`), its outbox, and the
/// consumer that records care relationships from records' events.
pub fn mount(db: Db, outbox: OutboxConfig, verifier: Verifier) -> Mount {
    let store = store::Store::new(db.clone());
    let mut m = Mount::new(NAME);
    m.add_grpc(api::consent_server::ConsentServer::new(grpc::ConsentApi::new(
        store.clone(),
        verifier,
    )));
    m.consumers.push(sharedcare_kit::serve::Consumer {
        group: NAME.to_string(),
        topic: sharedcare_kit::bus::topic("records"),
        handler: std::sync::Arc::new(events::CareConsumer::new(store)),
    });
    m.outbox = Some(Outbox::new(db.clone(), outbox));
    m.db = Some(db);
    m
}
