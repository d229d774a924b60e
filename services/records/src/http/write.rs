//! Writes: create, update (`If-Match`), conditional update, delete and transaction or batch
//! Bundles.

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sharedcare_kit::edge::Refuse;

use super::respond::{Result, Writer, base, body_json, check_path, fhir_response, resource, version_headers};
use super::search::existing;
use crate::api::RecordsApi;
use crate::store::{Actor, Stored};
use crate::{RecordsError, bundle, fhir};

/// The writing organisation: the staff member's, else `X-Source-Organisation` (systems).
pub(crate) fn source(who: &Actor, headers: &HeaderMap) -> std::result::Result<String, RecordsError> {
    let given = headers
        .get("x-source-organisation")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    crate::care::writing_organisation(who, given, "X-Source-Organisation")
}

pub(crate) fn written(s: &Stored, base: &str, created: bool) -> Response {
    let mut h = version_headers(s);
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/{}/{}/_history/{}", s.resource_type, s.id, s.version)) {
        h.insert(header::LOCATION, v);
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    fhir_response(status, &resource(s), h)
}

pub(crate) async fn create(
    State(api): State<RecordsApi>,
    Path(rtype): Path<String>,
    Writer(who): Writer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    check_path(&rtype, None)?;
    let mut value = body_json(&body)?;
    if value.get("resourceType").and_then(Value::as_str) != Some(rtype.as_str()) {
        return Err(RecordsError::invalid("resourceType", format!("must be {rtype} (the URL's type)")).into());
    }
    // The server assigns the id of a created resource.
    if let Some(obj) = value.as_object_mut() {
        obj.remove("id");
    }
    let r = fhir::parse(&value.to_string())?;
    // Conditional create: nothing is written when the condition finds the resource already.
    if let Some(condition) = headers.get("if-none-exist") {
        let condition = condition
            .to_str()
            .map_err(|_| RecordsError::invalid("If-None-Exist", "must be a search query in ASCII"))?;
        let found = existing(&api, &rtype, condition, &who, "If-None-Exist").await?;
        match found.as_slice() {
            [] => {}
            [one] => return Ok(written(one, &base(&headers), false)),
            _ => {
                return Err(RecordsError::Precondition(
                    "If-None-Exist".into(),
                    "matches more than one resource; make the condition more specific".into(),
                )
                .into());
            }
        }
    }
    let s = api.store().put(r, &source(&who, &headers)?, &who, 0).await?;
    Ok(written(&s, &base(&headers), true))
}

/// `If-Match: W/"3"` as a version.
pub(crate) fn if_match(headers: &HeaderMap) -> std::result::Result<i64, RecordsError> {
    let Some(v) = headers.get(header::IF_MATCH) else {
        return Ok(0);
    };
    let text = v.to_str().unwrap_or("");
    text.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| RecordsError::invalid("If-Match", format!("{text:?} is not a version ETag such as W/\"3\"")))
}

/// `DELETE /fhir/R4/{type}/{id}`: `204 No Content` with the deleting version's `ETag`.
pub(crate) async fn delete(
    State(api): State<RecordsApi>,
    Path((rtype, id)): Path<(String, String)>,
    Writer(who): Writer,
    headers: HeaderMap,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let s = api.store().delete(&rtype, &id, &source(&who, &headers)?, &who).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().extend(version_headers(&s));
    Ok(response)
}

pub(crate) async fn update(
    State(api): State<RecordsApi>,
    Path((rtype, id)): Path<(String, String)>,
    Writer(who): Writer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let value = body_json(&body)?;
    if value.get("resourceType").and_then(Value::as_str) != Some(rtype.as_str()) {
        return Err(RecordsError::invalid("resourceType", format!("must be {rtype} (the URL's type)")).into());
    }
    if value.get("id").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(RecordsError::invalid("id", format!("must be {id:?} (the URL's id)")).into());
    }
    let expected = if_match(&headers)?;
    let r = fhir::parse(&value.to_string())?;
    let s = api.store().put(r, &source(&who, &headers)?, &who, expected).await?;
    Ok(written(&s, &base(&headers), s.version == 1))
}

/// `PUT /fhir/R4/{type}?{search}`: conditional update. The search runs first, as the caller
/// (so it finds only what they may see): no match creates the resource (with the body's id,
/// or one the server assigns), one match updates it (a body id must be that one's), two or
/// more are refused with 412.
pub(crate) async fn conditional_update(
    State(api): State<RecordsApi>,
    Path(rtype): Path<String>,
    RawQuery(condition): RawQuery,
    Writer(who): Writer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    check_path(&rtype, None)?;
    let condition = condition.filter(|c| !c.is_empty()).ok_or_else(|| {
        RecordsError::invalid(
            "search",
            "a conditional update needs search parameters (PUT [type]?[search])",
        )
    })?;
    let mut value = body_json(&body)?;
    if value.get("resourceType").and_then(Value::as_str) != Some(rtype.as_str()) {
        return Err(RecordsError::invalid("resourceType", format!("must be {rtype} (the URL's type)")).into());
    }
    let found = existing(&api, &rtype, &condition, &who, "search").await?;
    let given = value.get("id").and_then(Value::as_str).map(str::to_string);
    match found.as_slice() {
        [] => {}
        [one] => {
            if given.as_deref().is_some_and(|id| id != one.id) {
                let why = format!("must be {:?}, the resource the search found (or left out)", one.id);
                return Err(RecordsError::invalid("id", why).into());
            }
            if let Some(obj) = value.as_object_mut() {
                obj.insert("id".into(), Value::String(one.id.clone()));
            }
        }
        _ => {
            return Err(RecordsError::Precondition(
                "search".into(),
                "matches more than one resource; make the condition more specific".into(),
            )
            .into());
        }
    }
    let expected = if_match(&headers)?;
    let r = fhir::parse(&value.to_string())?;
    let s = api.store().put(r, &source(&who, &headers)?, &who, expected).await?;
    Ok(written(&s, &base(&headers), s.version == 1))
}

pub(crate) async fn post_bundle(
    State(api): State<RecordsApi>,
    Writer(who): Writer,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let value = body_json(&body)?;
    let org = source(&who, &headers)?;
    let base = base(&headers);
    let (status, out) = bundle::process(api.store(), value, &org, &who, &base).await?;
    Ok(fhir_response(status, &out, HeaderMap::new()))
}
