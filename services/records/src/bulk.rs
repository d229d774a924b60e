//! FHIR Bulk Data Access `$export` over HTTP (the asynchronous request pattern):
//!
//! - kick-off: `GET /fhir/R4/$export`, `/fhir/R4/Patient/$export` or
//!   `/fhir/R4/Group/{id}/$export` with `Prefer: respond-async` and `X-Purpose-Of-Use`, by a
//!   system whose token has `records.bulk`: `202 Accepted` with `Content-Location`;
//! - status: `GET /fhir/R4/$export-poll/{job}`: `202` with `X-Progress` while it runs, `200`
//!   with the manifest when done; `DELETE` cancels it and deletes its files;
//! - files: `GET /fhir/R4/$export-file/{job}/{Type}.ndjson`, streamed.
//!
//! Only the system that started an export may follow or download it.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sharedcare_kit::auth::{Principal, has_scope};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::pdp::{Actor, check_purpose};
use tokio::io::AsyncReadExt;

use crate::RecordsError;
use crate::api::RecordsApi;
use crate::fhir;
use crate::http::respond::Outcome;
use crate::store::{ExportRequest, Level};

/// The scope a system needs to export.
pub const BULK_SCOPE: &str = "records.bulk";

type Result<T> = std::result::Result<T, Outcome>;

/// The routes.
pub fn router(api: RecordsApi) -> Router {
    Router::new()
        .route("/fhir/R4/$export", get(system))
        .route("/fhir/R4/Patient/$export", get(patients))
        .route("/fhir/R4/Group/{id}/$export", get(group))
        .route("/fhir/R4/$export-poll/{job}", get(status).delete(cancel))
        .route("/fhir/R4/$export-file/{job}/{file}", get(file))
        .with_state(api)
}

/// The exporting system: a service token with `records.bulk`, acting for the purpose named.
async fn exporter(api: &RecordsApi, headers: &HeaderMap, purpose_required: bool) -> Result<Actor> {
    let p = crate::http::respond::principal(api, headers).await?;
    if !matches!(p, Principal::Service { .. }) || !has_scope(&p, BULK_SCOPE) {
        return Err(RecordsError::forbidden(format!(
            "a Bulk Data export needs a system token with scope {BULK_SCOPE}"
        ))
        .into());
    }
    let purpose = headers
        .get("x-purpose-of-use")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if purpose.is_empty() && purpose_required {
        return Err(RecordsError::invalid(
            "X-Purpose-Of-Use",
            "is required for an export: what it is for decides who is in it (the national data opt-out applies to every purpose but direct care)",
        )
        .into());
    }
    let purpose = check_purpose(purpose).map_err(|e| RecordsError::invalid("X-Purpose-Of-Use", e.to_string()))?;
    Ok(Actor {
        kind: "service",
        id: p.id(),
        purpose,
        ..Actor::default()
    })
}

/// The FHIR base URL as the caller addressed it.
fn base(headers: &HeaderMap) -> String {
    sharedcare_kit::edge::fhir_base(headers)
}

/// Checks a kick-off's headers and parameters.
fn request(
    level: Level,
    path: &str,
    headers: &HeaderMap,
    raw: Option<String>,
) -> std::result::Result<ExportRequest, RecordsError> {
    let prefer = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !prefer.split(',').any(|p| p.trim() == "respond-async") {
        return Err(RecordsError::invalid(
            "Prefer",
            "must be respond-async: an export runs in the background",
        ));
    }
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok())
        && !accept.split(',').any(|a| {
            let a = a.trim();
            a.starts_with("application/fhir+json") || a.starts_with("application/json") || a.starts_with("*/*")
        })
    {
        return Err(RecordsError::invalid("Accept", "must be application/fhir+json"));
    }
    let mut req = ExportRequest {
        level,
        types: Vec::new(),
        since_us: None,
        request_url: format!(
            "{}/{path}{}",
            base(headers),
            raw.as_deref().map(|q| format!("?{q}")).unwrap_or_default()
        ),
    };
    let params: Vec<(String, String)> = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    for (k, v) in params {
        match k.as_str() {
            "_outputFormat" => {
                if !matches!(v.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                    return Err(RecordsError::invalid(
                        "_outputFormat",
                        format!("{v:?}: only application/fhir+ndjson is written"),
                    ));
                }
            }
            "_type" => {
                for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    fhir::check_type("_type", t)?;
                    req.types.push(t.to_string());
                }
            }
            "_since" => {
                let t = chrono::DateTime::parse_from_rfc3339(&v).map_err(|_| {
                    RecordsError::invalid(
                        "_since",
                        format!("{v:?} is not a FHIR instant (e.g. 2026-11-01T00:00:00Z)"),
                    )
                })?;
                req.since_us = Some(t.timestamp_micros());
            }
            // The format of the status and error responses (FHIR clients send it): JSON.
            "_format" if v.contains("json") => {}
            other => {
                return Err(RecordsError::invalid(
                    other,
                    "is not supported by this export (_outputFormat, _type and _since are)",
                ));
            }
        }
    }
    Ok(req)
}

async fn kick_off(
    api: &RecordsApi,
    headers: &HeaderMap,
    level: Level,
    path: &str,
    raw: Option<String>,
) -> Result<Response> {
    let actor = exporter(api, headers, true).await?;
    let req = request(level, path, headers, raw)?;
    let id = api.store().start_export(req, &actor, api.exports().clone()).await?;
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("{}/$export-poll/{id}", base(headers))) {
        h.insert(header::CONTENT_LOCATION, v);
    }
    Ok((StatusCode::ACCEPTED, h).into_response())
}

async fn system(State(api): State<RecordsApi>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Result<Response> {
    kick_off(&api, &headers, Level::System, "$export", raw).await
}

async fn patients(State(api): State<RecordsApi>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Result<Response> {
    kick_off(&api, &headers, Level::Patient, "Patient/$export", raw).await
}

async fn group(
    State(api): State<RecordsApi>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    fhir::check_id("id", &id)?;
    let path = format!("Group/{id}/$export");
    kick_off(&api, &headers, Level::Group(id), &path, raw).await
}

fn check_job(job: &str) -> std::result::Result<(), RecordsError> {
    uuid::Uuid::parse_str(job)
        .map(|_| ())
        .map_err(|_| RecordsError::not_found(format!("export {job}")))
}

async fn status(State(api): State<RecordsApi>, Path(job): Path<String>, headers: HeaderMap) -> Result<Response> {
    let actor = exporter(&api, &headers, false).await?;
    check_job(&job)?;
    let s = api.store().export_status(&job, &actor).await?;
    let time = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    match s.status.as_str() {
        "in-progress" => {
            let mut h = HeaderMap::new();
            let progress = format!("{} patients, {} resources", s.patients, s.resources);
            if let Ok(v) = HeaderValue::from_str(&progress) {
                h.insert("x-progress", v);
            }
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok((StatusCode::ACCEPTED, h).into_response())
        }
        "completed" => {
            let base = base(&headers);
            let output: Vec<_> = s
                .files
                .iter()
                .map(|(t, n)| json!({"type": t, "url": format!("{base}/$export-file/{job}/{t}.ndjson"), "count": n}))
                .collect();
            let body = json!({
                "transactionTime": time(s.transaction_us),
                "request": s.request,
                "requiresAccessToken": true,
                "output": output,
                "error": [],
            });
            Ok((
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                body.to_string(),
            )
                .into_response())
        }
        "failed" => Err(RecordsError::Unavailable(format!("the export failed: {}", s.error)).into()),
        _ => Err(RecordsError::not_found(format!("export {job} (cancelled)")).into()),
    }
}

async fn cancel(State(api): State<RecordsApi>, Path(job): Path<String>, headers: HeaderMap) -> Result<Response> {
    let actor = exporter(&api, &headers, false).await?;
    check_job(&job)?;
    api.store().cancel_export(&job, &actor, api.exports().as_ref()).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Streams one NDJSON file of a completed export (never read whole into memory).
async fn file(
    State(api): State<RecordsApi>,
    Path((job, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let actor = exporter(&api, &headers, false).await?;
    check_job(&job)?;
    let s = api.store().export_status(&job, &actor).await?;
    let Some(t) = file
        .strip_suffix(".ndjson")
        .filter(|t| s.files.iter().any(|(f, _)| f == t))
    else {
        return Err(RecordsError::not_found(format!("export {job} file {file}")).into());
    };
    if s.status != "completed" {
        return Err(RecordsError::not_found(format!("export {job} is {}", s.status)).into());
    }
    let f = api.exports().open(&job, &format!("{t}.ndjson")).await.map_err(|e| {
        RecordsError::Unavailable(format!(
            "export {job} file {t}.ndjson in {}: {e}",
            api.exports().describe()
        ))
    })?;
    let stream = futures::stream::unfold(f, |mut f| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok::<_, std::io::Error>(axum::body::Bytes::from(buf)), f))
            }
            Err(e) => Some((Err(e), f)),
        }
    });
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/fhir+ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
