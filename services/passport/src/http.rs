//! The passport's JSON API for the web pages, answering what gRPC answers (bearer token;
//! errors are FHIR-style OperationOutcomes from the kit's edge):
//! - `GET /passport/v1/patients/{nhs_number}` (`X-Purpose-Of-Use` for break-glass);
//! - `GET /passport/v1/patients/{nhs_number}/sharing-choices`;
//! - `GET /passport/v1/patients/{nhs_number}/access-log?page_size=&before_sequence=`.

use axum::Router;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sharedcare_kit::auth::Verifier;
use sharedcare_kit::caller::Caller;
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::edge::{self, ServiceError};

use crate::PassportError;
use crate::api::Api;

/// The routes the passport adds to the process's HTTP server.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/passport/v1/patients/{nhs_number}", get(passport))
        .route(
            "/passport/v1/patients/{nhs_number}/sharing-choices",
            get(sharing_choices),
        )
        .route("/passport/v1/patients/{nhs_number}/access-log", get(access_log))
        .with_state(api)
}

/// Callers are verified with the passport's verifier.
impl FromRef<Api> for Verifier {
    fn from_ref(api: &Api) -> Verifier {
        api.verifier().clone()
    }
}

async fn passport(
    State(api): State<Api>,
    Caller(who): Caller,
    headers: HeaderMap,
    Path(nhs_number): Path<String>,
) -> Response {
    let purpose = headers
        .get("x-purpose-of-use")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    match api.passport(&who, &nhs_number, purpose).await {
        Ok(view) => axum::Json(view.to_json()).into_response(),
        Err(e) => refused(&e),
    }
}

async fn sharing_choices(State(api): State<Api>, Caller(who): Caller, Path(nhs_number): Path<String>) -> Response {
    match api.sharing_choices(&who, &nhs_number).await {
        Ok(c) => axum::Json(crate::choices::to_json(&c)).into_response(),
        Err(e) => refused(&e),
    }
}

/// The access log's paging parameters, named as in gRPC.
#[derive(serde::Deserialize)]
struct Page {
    page_size: Option<String>,
    before_sequence: Option<String>,
}

fn number<T: std::str::FromStr>(field: &str, v: Option<&String>) -> Result<Option<T>, PassportError> {
    v.map(|s| s.parse::<T>())
        .transpose()
        .map_err(|_| PassportError::invalid(field, "expected a whole number"))
}

async fn access_log(
    State(api): State<Api>,
    Caller(who): Caller,
    Path(nhs_number): Path<String>,
    Query(page): Query<Page>,
) -> Response {
    let paging = number::<u32>("page_size", page.page_size.as_ref())
        .and_then(|size| Ok((size, number::<u64>("before_sequence", page.before_sequence.as_ref())?)));
    let (size, before) = match paging {
        Ok(p) => p,
        Err(e) => return refused(&e),
    };
    match api
        .access_log(&who, &nhs_number, size.unwrap_or(0), before.unwrap_or(0))
        .await
    {
        Ok(log) => axum::Json(crate::access::to_json(&log)).into_response(),
        Err(e) => refused(&e),
    }
}

fn refused<E: ServiceError>(e: &E) -> Response {
    let (status, body) = edge::operation_outcome(e);
    (status, axum::Json(body)).into_response()
}
