//! Reads: the CapabilityStatement, read, vread and `_history`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use sharedcare_kit::edge::Refuse;

use super::respond::{Reader, Result, base, check_path, fhir_response, params, stored_response};
use super::search::{count_param, everything, unknown_param};
use crate::api::{RecordsApi, page_size};
use crate::store::Actor;
use crate::{RecordsError, bundle, fhir};

pub(crate) async fn metadata(headers: HeaderMap) -> Response {
    let resources: Vec<Value> = fhir::RESOURCE_TYPES
        .iter()
        .map(|t| {
            let mut search = vec![
                json!({"name": "_count", "type": "number"}),
                json!({"name": "_lastUpdated", "type": "date"}),
                json!({"name": "_sort", "type": "special",
                       "documentation": "date, _lastUpdated or _id, each with - for descending (not on patient search)"}),
                json!({"name": "date", "type": "date"}),
                json!({"name": "code", "type": "token"}),
            ];
            if *t == "Patient" {
                search.push(json!({"name": "identifier", "type": "token"}));
                for (name, kind) in [
                    ("family", "string"),
                    ("given", "string"),
                    ("name", "string"),
                    ("birthdate", "date"),
                    ("gender", "token"),
                    ("address-postalcode", "string"),
                ] {
                    search.push(json!({"name": name, "type": kind}));
                }
            } else {
                search.push(json!({"name": "patient", "type": "reference"}));
                search.push(json!({"name": "subject", "type": "reference"}));
            }
            if !fhir::is_patient_data(t) {
                // Directory data is read and written by id; searches are per patient.
                return json!({
                    "type": t,
                    "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "create"},
                                    {"code": "delete"}, {"code": "history-instance"}],
                    "versioning": "versioned-update",
                    "readHistory": true,
                    "updateCreate": true,
                });
            }
            let includes: Vec<String> = crate::provenance::include_params().map(|p| format!("{t}:{p}")).collect();
            json!({
                "type": t,
                "searchInclude": includes,
                "searchRevInclude": ["Provenance:target"],
                "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "create"},
                                {"code": "delete"}, {"code": "history-instance"}, {"code": "search-type"}],
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalUpdate": true,
                "searchParam": search,
            })
        })
        .collect();
    // Consent is served by the consent service under the same base (`up` mounts both; an
    // ingress routes `/fhir/R4/Consent` to consent).
    let mut resources = resources;
    resources.push(json!({
        "type": "Provenance",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [{"name": "target", "type": "reference"}],
    }));
    resources.push(json!({
        "type": "Consent",
        "interaction": [{"code": "read"}, {"code": "vread"}, {"code": "update"}, {"code": "create"},
                        {"code": "history-instance"}, {"code": "search-type"}],
        "versioning": "versioned",
        "readHistory": true,
        "updateCreate": true,
        "searchParam": [{"name": "patient", "type": "reference"}, {"name": "status", "type": "token"}],
    }));
    let body = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-25",
        "publisher": "Sharedcare",
        "kind": "instance",
        "software": {"name": "Sharedcare", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Sharedcare shared care record", "url": base(&headers)},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "security": {
                "cors": false,
                "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "OAuth"}]}],
                "description": "Bearer tokens from the Sharedcare identity service; every access is decided by the consent service and audited."
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}],
            "operation": [
                {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"},
                {"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                {"name": "patient-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"},
                {"name": "group-export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"},
            ],
        }],
    });
    fhir_response(StatusCode::OK, &body, HeaderMap::new())
}

/// `…/{id}/_history` and `Patient/{id}/$everything`.
pub(crate) async fn operation(
    State(api): State<RecordsApi>,
    Path((rtype, id, op)): Path<(String, String, String)>,
    raw: RawQuery,
    Reader(who): Reader,
    headers: HeaderMap,
) -> Result<Response> {
    match (rtype.as_str(), op.as_str()) {
        (_, "_history") => history(api, (rtype, id), raw, &who, headers).await,
        ("Patient", "$everything") => everything(&api, &id, &who, &headers, raw.0).await,
        _ => Err(RecordsError::not_found(format!("{rtype}/{id}/{op}")).into()),
    }
}

pub(crate) async fn read(
    State(api): State<RecordsApi>,
    Path((rtype, id)): Path<(String, String)>,
    Reader(who): Reader,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let s = api.store().get(&rtype, &id, &who).await?;
    Ok(stored_response(s))
}

pub(crate) async fn vread(
    State(api): State<RecordsApi>,
    Path((rtype, id, vid)): Path<(String, String, String)>,
    Reader(who): Reader,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let version: i64 = vid
        .parse()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| RecordsError::invalid("vid", format!("{vid:?} is not a version (1 or more)")))?;
    let s = api.store().vread(&rtype, &id, version, &who).await?;
    Ok(stored_response(s))
}

pub(crate) async fn history(
    api: RecordsApi,
    (rtype, id): (String, String),
    RawQuery(raw): RawQuery,
    who: &Actor,
    headers: HeaderMap,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let mut count = 0;
    let mut cursor = String::new();
    for (k, v) in params(raw) {
        match k.as_str() {
            "_count" => count = count_param(&v)?,
            "_cursor" => cursor = v,
            other => return Err(unknown_param(other).into()),
        }
    }
    let size = page_size(count)?;
    let page = api.store().history(&rtype, &id, size, &cursor, who).await?;
    let base = base(&headers);
    let link = |cursor: &str| {
        let mut url = format!("{base}/{rtype}/{id}/_history?_count={size}");
        if !cursor.is_empty() {
            url.push_str(&format!("&_cursor={cursor}"));
        }
        url
    };
    let body = bundle::page("history", &base, &page, &link(&cursor), &link(&page.next_cursor), |s| {
        let (method, status) = match (s.deleted, s.version) {
            (true, _) => ("DELETE", "204"),
            (false, 1) => ("POST", "201"),
            (false, _) => ("PUT", "200"),
        };
        json!({"request": {"method": method, "url": format!("{}/{}/_history/{}", s.resource_type, s.id, s.version)},
               "response": {"status": status, "etag": format!("W/\"{}\"", s.version)}})
    });
    Ok(fhir_response(StatusCode::OK, &body, HeaderMap::new()))
}
