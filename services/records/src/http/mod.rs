//! The FHIR R4 REST facade at `/fhir/R4`: the same store, consent decisions and audit as the
//! gRPC API, spoken as FHIR (`application/fhir+json`, Bundles, OperationOutcome errors).
//!
//! - `GET  /fhir/R4/metadata` — the CapabilityStatement (no token needed)
//! - `GET  /fhir/R4/{type}/{id}` — read; `…/_history/{vid}` — vread; `…/_history` — history
//! - `GET  /fhir/R4/{type}?patient=…&date=ge…&code=…&_count=…` — search (a searchset Bundle)
//! - `GET  /fhir/R4/Patient/{id}/$everything` — every current resource about the patient
//! - `POST /fhir/R4/{type}` — create; `PUT /fhir/R4/{type}/{id}` — update (`If-Match: W/"n"`)
//! - `POST /fhir/R4` — a `transaction` (all or nothing) or `batch` Bundle
//!
//! Every call needs `Authorization: Bearer`; the purpose of use is `X-Purpose-Of-Use` (default
//! TREAT). Information withheld under the patient's directive is left out of Bundles, which
//! then carry an OperationOutcome entry saying so (search mode `outcome`).

use axum::Router;
use axum::routing::get;

use self::read::{metadata, operation, read, vread};
use self::search::search_type;
use self::write::{conditional_update, create, delete, post_bundle, update};
use crate::api::RecordsApi;

mod read;
pub mod respond;
mod search;
mod write;

pub use self::respond::{FHIR_JSON, Outcome, outcome};

/// The facade's routes, under `/fhir/R4`.
pub fn router(api: RecordsApi) -> Router {
    Router::new()
        .route("/fhir/R4/metadata", get(metadata))
        .route("/fhir/R4", axum::routing::post(post_bundle))
        .route(
            "/fhir/R4/{rtype}",
            get(search_type).post(create).put(conditional_update),
        )
        .route("/fhir/R4/{rtype}/{id}", get(read).put(update).delete(delete))
        .route("/fhir/R4/{rtype}/{id}/{op}", get(operation))
        .route("/fhir/R4/{rtype}/{id}/_history/{vid}", get(vread))
        .with_state(api.clone())
        .merge(crate::provenance::router(api.clone()))
        .merge(crate::bulk::router(api))
}
