//! `/fhir/R4/Consent`: patients' directives as FHIR R4 Consent resources, for FHIR clients
//! (create, read, vread, update, history, search by `patient` and `status`). The same writes
//! as gRPC `PutDirective`; the same callers (a service with `consent.write`, or the patient or
//! their authorised representative at P9).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use sharedcare_kit::auth::{Principal, bearer};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::nhs::{NHS_NUMBER_SYSTEM, NhsNumber};
use std::collections::HashMap;

use crate::ConsentError;
use crate::grpc::ConsentApi;
use crate::store::ConsentVersion;

const FHIR_JSON: &str = "application/fhir+json";

/// The routes.
pub fn router(api: ConsentApi) -> Router {
    Router::new()
        .route("/fhir/R4/Consent", get(search).post(create))
        .route("/fhir/R4/Consent/{id}", get(read).put(update))
        .route("/fhir/R4/Consent/{id}/_history", get(history))
        .route("/fhir/R4/Consent/{id}/_history/{vid}", get(vread))
        .with_state(api)
}

/// A FHIR error: an OperationOutcome with the status that fits.
struct Outcome(ConsentError);

impl From<ConsentError> for Outcome {
    fn from(e: ConsentError) -> Self {
        Outcome(e)
    }
}

impl IntoResponse for Outcome {
    fn into_response(self) -> Response {
        let (status, body) = sharedcare_kit::edge::operation_outcome(&self.0);
        respond(status, &body, HeaderMap::new())
    }
}

type Result<T> = std::result::Result<T, Outcome>;

fn respond(status: StatusCode, body: &Value, mut headers: HeaderMap) -> Response {
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    (status, headers, body.to_string()).into_response()
}

/// The caller, from `Authorization`.
async fn caller(api: &ConsentApi, headers: &HeaderMap) -> Result<Principal> {
    let unauthenticated = |why: String| Outcome(ConsentError::unauthenticated(why));
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(|| unauthenticated("missing bearer token".into()))?;
    api.verifier()
        .principal(token)
        .await
        .map_err(|e| unauthenticated(e.to_string()))
}

fn check_id(id: &str) -> std::result::Result<(), ConsentError> {
    crate::fhir::check_id("id", id)
}

fn version_headers(v: &ConsentVersion) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Ok(e) = HeaderValue::from_str(&format!("W/\"{}\"", v.version)) {
        h.insert(header::ETAG, e);
    }
    let t = chrono::DateTime::from_timestamp(v.updated_at, 0).unwrap_or_default();
    if let Ok(m) = HeaderValue::from_str(&t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()) {
        h.insert(header::LAST_MODIFIED, m);
    }
    h
}

fn resource(v: &ConsentVersion) -> Value {
    serde_json::from_str(&v.resource).unwrap_or(Value::Null)
}

/// Whether `p` may see `patient`'s Consents (the callers who may write them).
async fn may_see(api: &ConsentApi, p: &Principal, patient: &str) -> Result<()> {
    let nhs = NhsNumber::parse(patient).map_err(|e| ConsentError::Corrupt(format!("stored NHS number: {e}")))?;
    Ok(api.authorise(p, "consent.write", Some(&nhs)).await?)
}

/// The FHIR base URL as the caller addressed it.
fn base(headers: &HeaderMap) -> String {
    sharedcare_kit::edge::fhir_base(headers)
}

async fn write(api: &ConsentApi, headers: &HeaderMap, body: &str, id: Option<&str>) -> Result<Response> {
    let p = caller(api, headers).await?;
    let json = match id {
        Some(_) => body.to_string(),
        // Create: the server assigns the id (FHIR create ignores one in the body).
        None => match serde_json::from_str::<Value>(body) {
            Ok(Value::Object(mut m)) => {
                m.remove("id");
                Value::Object(m).to_string()
            }
            _ => body.to_string(),
        },
    };
    let (_, stored) = api.write_consent(&p, &json, id).await?;
    let mut h = version_headers(&stored);
    if let Ok(l) = HeaderValue::from_str(&format!(
        "{}/Consent/{}/_history/{}",
        base(headers),
        stored.id,
        stored.version
    )) {
        h.insert(header::LOCATION, l);
    }
    // A first version is a create, whether by POST or by PUT to a new id.
    let status = if stored.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(respond(status, &resource(&stored), h))
}

async fn create(State(api): State<ConsentApi>, headers: HeaderMap, body: String) -> Result<Response> {
    write(&api, &headers, &body, None).await
}

async fn update(
    State(api): State<ConsentApi>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Result<Response> {
    check_id(&id)?;
    write(&api, &headers, &body, Some(&id)).await
}

async fn read(State(api): State<ConsentApi>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response> {
    let p = caller(&api, &headers).await?;
    check_id(&id)?;
    let v = api
        .store()
        .consent(&id)
        .await?
        .ok_or_else(|| ConsentError::not_found(format!("Consent/{id}")))?;
    may_see(&api, &p, &v.nhs_number).await?;
    Ok(respond(StatusCode::OK, &resource(&v), version_headers(&v)))
}

async fn vread(
    State(api): State<ConsentApi>,
    Path((id, vid)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let p = caller(&api, &headers).await?;
    check_id(&id)?;
    let n: i64 = vid
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ConsentError::invalid("vid", format!("{vid:?} is not a version number")))?;
    let v = api
        .store()
        .consent_versions(&id, Some(n))
        .await?
        .pop()
        .ok_or_else(|| ConsentError::not_found(format!("Consent/{id}/_history/{n}")))?;
    may_see(&api, &p, &v.nhs_number).await?;
    Ok(respond(StatusCode::OK, &resource(&v), version_headers(&v)))
}

async fn history(State(api): State<ConsentApi>, Path(id): Path<String>, headers: HeaderMap) -> Result<Response> {
    let p = caller(&api, &headers).await?;
    check_id(&id)?;
    let versions = api.store().consent_versions(&id, None).await?;
    let Some(first) = versions.first() else {
        return Err(ConsentError::not_found(format!("Consent/{id}")).into());
    };
    may_see(&api, &p, &first.nhs_number).await?;
    let base = base(&headers);
    let entries: Vec<Value> = versions
        .iter()
        .map(|v| {
            let t = chrono::DateTime::from_timestamp(v.updated_at, 0).unwrap_or_default();
            json!({
                "fullUrl": format!("{base}/Consent/{}", v.id),
                "resource": resource(v),
                "request": {"method": if v.version == 1 { "POST" } else { "PUT" }, "url": format!("Consent/{}", v.id)},
                "response": {"status": if v.version == 1 { "201 Created" } else { "200 OK" },
                             "etag": format!("W/\"{}\"", v.version),
                             "lastModified": t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)},
            })
        })
        .collect();
    let body = json!({"resourceType": "Bundle", "type": "history", "total": entries.len(), "entry": entries});
    Ok(respond(StatusCode::OK, &body, HeaderMap::new()))
}

/// The patient a search names: `patient`, `patient:identifier` or `patient.identifier`, as an
/// NHS number or `https://fhir.nhs.uk/Id/nhs-number|{nhs}`.
fn searched_patient(q: &HashMap<String, String>) -> std::result::Result<NhsNumber, ConsentError> {
    let named: Vec<(&String, &String)> = q
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "patient" | "patient:identifier" | "patient.identifier"))
        .collect();
    let [(param, value)] = named.as_slice() else {
        return Err(ConsentError::invalid(
            "patient",
            "is required once: consent is searched per person (patient:identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs})",
        ));
    };
    let nhs = match value.split_once('|') {
        Some((system, nhs)) if system == NHS_NUMBER_SYSTEM => nhs,
        Some((system, _)) => {
            return Err(ConsentError::invalid(
                param.as_str(),
                format!("{system:?}: the identifier system must be {NHS_NUMBER_SYSTEM}"),
            ));
        }
        None => value.strip_prefix("Patient/").unwrap_or(value),
    };
    NhsNumber::parse(nhs).map_err(|e| ConsentError::invalid(param.as_str(), e.to_string()))
}

async fn search(
    State(api): State<ConsentApi>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response> {
    let p = caller(&api, &headers).await?;
    for k in q.keys() {
        if !matches!(
            k.as_str(),
            "patient" | "patient:identifier" | "patient.identifier" | "status" | "_format"
        ) {
            return Err(ConsentError::invalid(
                k.as_str(),
                "is not a search parameter of Consent here (patient, status)",
            )
            .into());
        }
    }
    let patient = searched_patient(&q)?;
    let status = q.get("status").map(String::as_str);
    if let Some(s) = status
        && !crate::fhir::STATUSES.contains(&s)
    {
        return Err(ConsentError::invalid(
            "status",
            format!("{s:?} is not one of {}", crate::fhir::STATUSES.join(", ")),
        )
        .into());
    }
    api.authorise(&p, "consent.write", Some(&patient)).await?;
    let found = api.store().consents_of(&patient, status).await?;
    let base = base(&headers);
    let entries: Vec<Value> = found
        .iter()
        .map(|v| json!({"fullUrl": format!("{base}/Consent/{}", v.id), "resource": resource(v), "search": {"mode": "match"}}))
        .collect();
    let body = json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries});
    Ok(respond(StatusCode::OK, &body, HeaderMap::new()))
}
