//! The records service: the shared care record in FHIR R4 shape.
//!
//! - [`fhir`]: what a valid resource is (the domain core, no I/O).
//! - [`store`]: versions in the service's own tables, events through the outbox.
//! - [`grpc`]: the `sharedcare.records.v1.Records` service.
//!
//! Every put stores a new version and emits `RecordChanged` plus `AccessRecorded`; every get
//! writes `AccessRecorded` to the outbox *before* the resource is returned.
#![forbid(unsafe_code)]

pub mod bundle;
pub mod config;
pub mod consent;
pub mod error;
pub mod fhir;
pub mod grpc;
pub mod http;
pub mod labels;
pub mod store;
pub mod validate;

pub use config::RecordsConfig;
pub use error::RecordsError;

use sharedcare_kit::auth::Verifier;
use sharedcare_kit::db::Db;
use sharedcare_kit::outbox::{Outbox, OutboxConfig};
use sharedcare_kit::serve::Mount;
use sharedcare_proto::records::v1::records_server::RecordsServer;

/// The service's name: its schema, its topic (`sharedcare.records.v1`), its event source.
pub const NAME: &str = "records";

/// Applies the records schema to `db`.
pub async fn migrate(db: &Db) -> sharedcare_kit::Result<()> {
    db.migrate(
        sqlx::migrate!("./migrations/postgres"),
        sqlx::migrate!("./migrations/sqlite"),
    )
    .await
}

/// Builds the service on its database: gRPC routes (callers checked by `verifier`), outbox,
/// every access to patient data decided by `pdp` (the consent service).
/// `codes` are the configured code lists that set sensitivity labels.
pub fn mount(
    db: Db,
    outbox: OutboxConfig,
    verifier: Verifier,
    pdp: std::sync::Arc<dyn consent::Pdp>,
    codes: &[labels::LabelCode],
) -> Mount {
    let outbox = Outbox::new(db.clone(), outbox);
    let store = store::Store::new(db.clone(), outbox.clone(), pdp).with_labels(labels::Labeller::new(codes));
    let mut m = Mount::new(NAME);
    let api = grpc::RecordsApi::new(store, verifier);
    m.http = http::router(api.clone());
    m.add_grpc(RecordsServer::new(api));
    m.outbox = Some(outbox);
    m.db = Some(db);
    m
}
