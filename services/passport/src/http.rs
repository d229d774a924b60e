//! The passport's JSON API for the web pages: `GET /passport/v1/patients/{nhs_number}`
//! (bearer token; `X-Purpose-Of-Use` for break-glass), answering what gRPC answers. Errors
//! are FHIR-style OperationOutcomes from the kit's edge.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sharedcare_kit::edge::{self, ServiceError};

use crate::api::Api;

/// The routes the passport adds to the process's HTTP server.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/passport/v1/patients/{nhs_number}", get(passport))
        .with_state(api)
}

async fn passport(State(api): State<Api>, headers: HeaderMap, Path(nhs_number): Path<String>) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(sharedcare_kit::auth::bearer);
    let Some(token) = token else {
        return refused(&crate::PassportError::Unauthenticated("missing bearer token".into()));
    };
    let who = match api.verifier().principal(token).await {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    let purpose = headers
        .get("x-purpose-of-use")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match api.passport(&who, &nhs_number, purpose).await {
        Ok(view) => axum::Json(view.to_json()).into_response(),
        Err(e) => refused(&e),
    }
}

fn refused<E: ServiceError>(e: &E) -> Response {
    let (status, body) = edge::operation_outcome(e);
    (status, axum::Json(body)).into_response()
}
