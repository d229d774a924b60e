//! The audit service: an append-only log of every access to patient data.
//!
//! - [`store`]: the `entries` table; appends are idempotent by event id.
//! - [`consumer`]: applies `AccessRecorded` events from other services' topics.
//! - [`grpc`]: the `sharedcare.audit.v1.Audit` service (list by patient).
#![forbid(unsafe_code)]

pub mod consumer;
pub mod error;
pub mod grpc;
pub mod merkle;
pub mod store;

pub use error::AuditError;

use std::sync::Arc;

use sharedcare_kit::bus;
use sharedcare_kit::db::Db;
use sharedcare_kit::serve::{Consumer, Mount};
use sharedcare_proto::audit::v1::audit_server::AuditServer;

/// The service's name (schema, consumer group).
pub const NAME: &str = "audit";

/// Services whose topics carry `AccessRecorded` events.
pub const AUDITED_SERVICES: &[&str] = &["records"];

/// Applies the audit schema to `db`.
pub async fn migrate(db: &Db) -> sharedcare_kit::Result<()> {
    db.migrate(
        sqlx::migrate!("./migrations/postgres"),
        sqlx::migrate!("./migrations/sqlite"),
    )
    .await
}

/// Builds the service on its database: gRPC routes (callers checked by `verifier`) and one
/// consumer per audited topic.
pub fn mount(db: Db, verifier: sharedcare_kit::auth::Verifier) -> Mount {
    let store = store::Store::new(db.clone());
    let mut m = Mount::new(NAME);
    m.add_grpc(AuditServer::new(grpc::AuditApi::new(store.clone(), verifier)));
    let handler = Arc::new(consumer::AccessConsumer::new(store));
    m.consumers = AUDITED_SERVICES
        .iter()
        .map(|s| Consumer {
            group: NAME.to_string(),
            topic: bus::topic(s),
            handler: handler.clone(),
        })
        .collect();
    m.db = Some(db);
    m
}
