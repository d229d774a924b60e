//! How the facade answers: FHIR JSON with its media type, OperationOutcome errors, version
//! headers, and the caller read from `Authorization` and `X-Purpose-Of-Use`.

use axum::body::Bytes;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sharedcare_kit::auth::{Principal, bearer};
use sharedcare_kit::edge::Refuse;

use crate::api::{RecordsApi, actor_of, check_purpose};
use crate::store::{Actor, Stored};
use crate::{RecordsError, fhir};

/// The FHIR media type.
pub const FHIR_JSON: &str = "application/fhir+json";

/// A FHIR error: an OperationOutcome with the status that fits.
pub struct Outcome(pub RecordsError);

impl From<RecordsError> for Outcome {
    fn from(e: RecordsError) -> Self {
        Outcome(e)
    }
}

/// The OperationOutcome for `e`, and its HTTP status (through the kit's one error edge).
pub fn outcome(e: &RecordsError) -> (StatusCode, Value) {
    sharedcare_kit::edge::operation_outcome(e)
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let (status, body) = outcome(&self.0);
        fhir_response(status, &body, HeaderMap::new())
    }
}

pub(crate) fn fhir_response(status: StatusCode, body: &Value, mut headers: HeaderMap) -> Response {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    (status, headers, body.to_string()).into_response()
}

/// A stored version as the answer, its JSON served as stored: written by serde_json with
/// `meta` stamped, it is already what parsing and writing it again would give (the same keys
/// in the same order), so a read costs no parse and no second serialisation.
pub(crate) fn stored_response(s: Stored) -> Response {
    let mut headers = version_headers(&s);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    (StatusCode::OK, headers, s.body).into_response()
}

pub(crate) type Result<T> = std::result::Result<T, Outcome>;

/// The caller, from `Authorization` and `X-Purpose-Of-Use`.
async fn caller(api: &RecordsApi, headers: &HeaderMap, scope: &str) -> Result<Actor> {
    let purpose = headers
        .get("x-purpose-of-use")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let purpose = check_purpose(purpose).map_err(|_| {
        RecordsError::invalid(
            "X-Purpose-Of-Use",
            format!("{purpose:?} is not a PurposeOfUse code (e.g. TREAT, ETREAT, BTG)"),
        )
    })?;
    let p = principal(api, headers).await?;
    Ok(actor_of(&p, scope, purpose)?)
}

/// A caller allowed to read the record (`records.read`), acting for `X-Purpose-Of-Use`: a
/// handler that takes one cannot run for anyone else.
pub(crate) struct Reader(pub(crate) Actor);

/// A caller allowed to write the record (`records.write`).
pub(crate) struct Writer(pub(crate) Actor);

impl FromRequestParts<RecordsApi> for Reader {
    type Rejection = Outcome;

    async fn from_request_parts(parts: &mut Parts, api: &RecordsApi) -> Result<Self> {
        caller(api, &parts.headers, "records.read").await.map(Reader)
    }
}

impl FromRequestParts<RecordsApi> for Writer {
    type Rejection = Outcome;

    async fn from_request_parts(parts: &mut Parts, api: &RecordsApi) -> Result<Self> {
        caller(api, &parts.headers, "records.write").await.map(Writer)
    }
}

/// The verified principal of the bearer token in `Authorization`.
pub(crate) async fn principal(api: &RecordsApi, headers: &HeaderMap) -> Result<Principal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(|| RecordsError::unauthenticated("missing bearer token"))?;
    Ok(api
        .verifier()
        .principal(token)
        .await
        .map_err(|e| RecordsError::unauthenticated(e.to_string()))?)
}

/// The FHIR base URL as the caller addressed it.
pub(crate) fn base(headers: &HeaderMap) -> String {
    sharedcare_kit::edge::fhir_base(headers)
}

pub(crate) fn version_headers(s: &Stored) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("W/\"{}\"", s.version)) {
        h.insert(header::ETAG, v);
    }
    let t = chrono::DateTime::from_timestamp_micros(s.last_updated_us).unwrap_or_default();
    if let Ok(v) = HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()) {
        h.insert(header::LAST_MODIFIED, v);
    }
    h
}

pub(crate) fn resource(s: &Stored) -> Value {
    serde_json::from_str(&s.body).unwrap_or(Value::Null)
}

pub(crate) fn check_path(rtype: &str, id: Option<&str>) -> std::result::Result<(), RecordsError> {
    fhir::check_type("type", rtype)?;
    if let Some(id) = id {
        fhir::check_id("id", id)?;
    }
    Ok(())
}

/// Query parameters as pairs, in order (some repeat, e.g. `date`).
pub(crate) fn params(raw: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

pub(crate) fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub(crate) fn body_json(body: &Bytes) -> std::result::Result<Value, RecordsError> {
    serde_json::from_slice(body).map_err(|e| RecordsError::invalid("resource", format!("not valid JSON: {e}")))
}
