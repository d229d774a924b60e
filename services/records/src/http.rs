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

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Router, body::Bytes};
use serde_json::{Value, json};
use sharedcare_kit::auth::{Principal, bearer};

use crate::demographics::{self, PatientQuery};
use crate::grpc::{RecordsApi, actor_of, check_purpose, page_size};
use crate::provenance::Includes;
use crate::store::{Actor, MAX_PAGE, Page, Query, Sort, Stored};
use crate::{RecordsError, bundle, fhir};

/// The FHIR media type.
pub const FHIR_JSON: &str = "application/fhir+json";

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

type Result<T> = std::result::Result<T, Outcome>;

/// The caller, from `Authorization` and `X-Purpose-Of-Use`.
pub(crate) async fn caller(api: &RecordsApi, headers: &HeaderMap, scope: &str) -> Result<Actor> {
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

/// The verified principal of the bearer token in `Authorization`.
pub(crate) async fn principal(api: &RecordsApi, headers: &HeaderMap) -> Result<Principal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or_else(|| RecordsError::Unauthenticated("missing bearer token".into()))?;
    Ok(api
        .verifier()
        .principal(token)
        .await
        .map_err(|e| RecordsError::Unauthenticated(e.to_string()))?)
}

/// The FHIR base URL as the caller addressed it.
pub(crate) fn base(headers: &HeaderMap) -> String {
    sharedcare_kit::edge::fhir_base(headers)
}

fn version_headers(s: &Stored) -> HeaderMap {
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

fn resource(s: &Stored) -> Value {
    serde_json::from_str(&s.body).unwrap_or(Value::Null)
}

fn check_path(rtype: &str, id: Option<&str>) -> std::result::Result<(), RecordsError> {
    fhir::check_type("type", rtype)?;
    if let Some(id) = id {
        fhir::check_id("id", id)?;
    }
    Ok(())
}

async fn metadata(headers: HeaderMap) -> Response {
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
async fn operation(
    State(api): State<RecordsApi>,
    Path((rtype, id, op)): Path<(String, String, String)>,
    raw: RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    match (rtype.as_str(), op.as_str()) {
        (_, "_history") => history(api, rtype, id, raw, headers).await,
        ("Patient", "$everything") => everything(&api, &id, &headers, raw.0).await,
        _ => Err(RecordsError::NotFound(format!("{rtype}/{id}/{op}")).into()),
    }
}

async fn read(
    State(api): State<RecordsApi>,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let who = caller(&api, &headers, "records.read").await?;
    let s = api.store().get(&rtype, &id, &who).await?;
    Ok(fhir_response(StatusCode::OK, &resource(&s), version_headers(&s)))
}

async fn vread(
    State(api): State<RecordsApi>,
    Path((rtype, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let version: i64 = vid
        .parse()
        .ok()
        .filter(|v| *v >= 1)
        .ok_or_else(|| RecordsError::invalid("vid", format!("{vid:?} is not a version (1 or more)")))?;
    let who = caller(&api, &headers, "records.read").await?;
    let s = api.store().vread(&rtype, &id, version, &who).await?;
    Ok(fhir_response(StatusCode::OK, &resource(&s), version_headers(&s)))
}

/// Query parameters as pairs, in order (some repeat, e.g. `date`).
fn params(raw: Option<String>) -> Vec<(String, String)> {
    url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

async fn history(
    api: RecordsApi,
    rtype: String,
    id: String,
    RawQuery(raw): RawQuery,
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
    let who = caller(&api, &headers, "records.read").await?;
    let size = page_size(count)?;
    let page = api.store().history(&rtype, &id, size, &cursor, &who).await?;
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

fn count_param(v: &str) -> std::result::Result<i32, RecordsError> {
    v.parse()
        .map_err(|_| RecordsError::invalid("_count", format!("{v:?} is not a number")))
}

fn unknown_param(name: &str) -> RecordsError {
    RecordsError::invalid(
        name,
        "is not a search parameter Sharedcare supports (see /fhir/R4/metadata)",
    )
}

/// A FHIR date search value (`2026-01-05`, `ge2026-01-05`, `le2026-01-05T10:00:00Z`, …) as a
/// range `(from, to)` in µs.
fn date_param(name: &str, v: &str) -> std::result::Result<(Option<i64>, Option<i64>), RecordsError> {
    let (prefix, value) = match v.get(..2) {
        Some(p @ ("ge" | "gt" | "le" | "lt" | "eq")) => (p, &v[2..]),
        _ => ("eq", v),
    };
    let bad = || {
        RecordsError::invalid(
            name,
            format!("{v:?} is not a FHIR date search value (e.g. ge2026-01-31)"),
        )
    };
    // A date covers its whole day; a dateTime is an instant.
    let (start, end) = if let Ok(t) = chrono::DateTime::parse_from_rfc3339(value) {
        (t.timestamp_micros(), t.timestamp_micros())
    } else {
        let d = chrono::NaiveDate::parse_from_str(value, "%Y-%m-%d").map_err(|_| bad())?;
        let start = d.and_hms_opt(0, 0, 0).ok_or_else(bad)?.and_utc().timestamp_micros();
        (start, start + 86_400_000_000 - 1)
    };
    Ok(match prefix {
        "ge" => (Some(start), None),
        "gt" => (Some(end + 1), None),
        "le" => (None, Some(end)),
        "lt" => (None, Some(start - 1)),
        _ => (Some(start), Some(end)),
    })
}

/// A `patient`/`subject` reference value: `Patient/{id}` or a bare id.
fn patient_param(name: &str, v: &str) -> std::result::Result<String, RecordsError> {
    let id = v.rsplit_once("Patient/").map(|(_, id)| id).unwrap_or(v);
    fhir::check_id(name, id)?;
    Ok(id.to_string())
}

/// A search request, parsed and checked.
struct Parsed {
    /// A search of one patient's resources (when `people` is empty).
    q: Query,
    /// A search for patients by their demographics.
    people: PatientQuery,
    count: i32,
    elements: Vec<String>,
    only_count: bool,
    /// `_include` and `_revinclude`.
    includes: Includes,
}

/// Parses the search parameters `raw` of a search of `rtype`; errors name the parameter.
fn parse_search(rtype: &str, raw: Option<String>) -> std::result::Result<Parsed, RecordsError> {
    let mut p = Parsed {
        q: Query {
            types: vec![rtype.to_string()],
            ..Query::default()
        },
        people: PatientQuery::default(),
        count: 0,
        elements: Vec::new(),
        only_count: false,
        includes: Includes::default(),
    };
    let q = &mut p.q;
    for (k, v) in params(raw) {
        if rtype == "Patient" && p.people.add(&k, &v)? {
            continue;
        }
        match k.as_str() {
            "patient" | "subject" if rtype != "Patient" => q.patient = patient_param(&k, &v)?,
            "patient.identifier" | "subject.identifier" if rtype != "Patient" => {
                q.nhs_number = demographics::nhs_identifier(&k, &v)?
            }
            "identifier" if rtype == "Patient" => q.nhs_number = demographics::nhs_identifier(&k, &v)?,
            "_id" if rtype == "Patient" => q.patient = patient_param(&k, &v)?,
            "date" => {
                let (from, to) = date_param("date", &v)?;
                q.date_from = from.or(q.date_from);
                q.date_to = to.or(q.date_to);
            }
            "_lastUpdated" => {
                let (from, to) = date_param("_lastUpdated", &v)?;
                q.updated_from = from.or(q.updated_from);
                q.updated_to = to.or(q.updated_to);
            }
            "_elements" => p.elements = elements_param(&v)?,
            "_include" => p.includes.include(rtype, &v)?,
            "_revinclude" => p.includes.revinclude(&v)?,
            "_summary" => {
                p.only_count = match v.as_str() {
                    "count" => true,
                    "false" => false,
                    other => {
                        let why = format!("{other:?} is not supported (count or false)");
                        return Err(RecordsError::invalid("_summary", why));
                    }
                }
            }
            "code" => q.code = v,
            "_sort" => q.sort = Sort::parse(&v).map_err(|why| RecordsError::invalid("_sort", why))?,
            "_count" => p.count = count_param(&v)?,
            "_cursor" => q.cursor = v,
            "_format" if v.contains("json") => {}
            other => return Err(unknown_param(other)),
        }
    }
    if !p.people.is_empty() {
        let other = !q.patient.is_empty()
            || q.date_from.is_some()
            || q.date_to.is_some()
            || q.updated_from.is_some()
            || q.updated_to.is_some()
            || !q.code.is_empty();
        if !p.includes.is_empty() {
            return Err(RecordsError::invalid(
                "_include",
                "a search by name, birth date, gender or postcode returns patients only",
            ));
        }
        if q.sort != Sort::default() {
            return Err(RecordsError::invalid(
                "_sort",
                "a search by name, birth date, gender or postcode is ordered by patient id",
            ));
        }
        if other {
            return Err(RecordsError::invalid(
                "_id",
                "a search by name, birth date, gender or postcode takes no _id, date, _lastUpdated or code",
            ));
        }
        p.people.nhs_number = (!q.nhs_number.is_empty()).then(|| q.nhs_number.clone());
        return Ok(p);
    }
    if q.patient.is_empty() && q.nhs_number.is_empty() {
        let name = if rtype == "Patient" { "identifier" } else { "patient" };
        return Err(RecordsError::invalid(
            name,
            "searches are per patient: name one (patient=Patient/{id} or an NHS number identifier)",
        ));
    }
    if !q.patient.is_empty() && !q.nhs_number.is_empty() {
        return Err(RecordsError::invalid(
            "patient",
            "name the patient once (by id or by NHS number)",
        ));
    }
    Ok(p)
}

async fn search_type(
    State(api): State<RecordsApi>,
    Path(rtype): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response> {
    check_path(&rtype, None)?;
    let Parsed {
        mut q,
        people,
        count,
        elements,
        only_count,
        includes,
    } = parse_search(&rtype, raw.clone())?;
    if !people.is_empty() {
        let self_path = format!("Patient?{}", without_cursor(raw));
        if only_count {
            let who = caller(&api, &headers, "records.read").await?;
            let (mut total, mut cursor) = (0, String::new());
            loop {
                let found = api.store().find_patients(&people, MAX_PAGE, &cursor, &who).await?;
                total += found.patients.len();
                if found.next_cursor.is_empty() {
                    return Ok(count_bundle(&headers, total, &self_path));
                }
                cursor = found.next_cursor;
            }
        }
        let page = (page_size(count)?, q.cursor.as_str());
        return patient_bundle(&api, &people, page, &elements, &headers, &self_path).await;
    }
    let self_path = format!("{rtype}?{}", without_cursor(raw));
    if only_count {
        // Counted a page at a time, each page decided and audited like any search: the total
        // is what the caller may see, never what is withheld.
        let who = caller(&api, &headers, "records.read").await?;
        q.page_size = MAX_PAGE;
        crate::grpc::check_query(&q)?;
        let mut total = 0;
        loop {
            let page = api.store().search(&q, &who).await?;
            total += page.items.len();
            if page.next_cursor.is_empty() {
                return Ok(count_bundle(&headers, total, &self_path));
            }
            q.cursor = page.next_cursor;
        }
    }
    q.page_size = page_size(count)?;
    search_bundle(&api, q, (&elements, &includes), &headers, &self_path).await
}

/// What a condition (`If-None-Exist`, or a conditional update's `search`: the `field` bad
/// parameters are reported under) finds, as `who` (at most two: one is all either needs).
async fn existing(api: &RecordsApi, rtype: &str, condition: &str, who: &Actor, field: &str) -> Result<Vec<Stored>> {
    let named = |e: RecordsError| RecordsError::invalid(field, e.to_string());
    let p = parse_search(rtype, Some(condition.to_string())).map_err(named)?;
    if !p.people.is_empty() {
        return Ok(api.store().find_patients(&p.people, 2, "", who).await?.patients);
    }
    let q = Query { page_size: 2, ..p.q };
    crate::grpc::check_query(&q).map_err(named)?;
    Ok(api.store().search(&q, who).await?.items)
}

/// `_summary=count`: a searchset Bundle with the total and no entries.
fn count_bundle(headers: &HeaderMap, total: usize, self_path: &str) -> Response {
    let body = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": format!("{}/{self_path}", base(headers))}],
    });
    fhir_response(StatusCode::OK, &body, HeaderMap::new())
}

/// `_elements`: top-level element names (`resourceType`, `id` and `meta` are always kept).
fn elements_param(v: &str) -> std::result::Result<Vec<String>, RecordsError> {
    v.split(',')
        .map(str::trim)
        .map(|e| {
            let ok = e.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && e.chars().all(|c| c.is_ascii_alphanumeric());
            if ok {
                Ok(e.to_string())
            } else {
                Err(RecordsError::invalid(
                    "_elements",
                    format!("{e:?} is not an element name"),
                ))
            }
        })
        .collect()
}

/// `Patient/{id}/$everything`: every current resource about the patient, paged.
async fn everything(api: &RecordsApi, patient: &str, headers: &HeaderMap, raw: Option<String>) -> Result<Response> {
    fhir::check_id("id", patient)?;
    let mut q = Query {
        patient: patient.to_string(),
        ..Query::default()
    };
    let mut count = 0;
    for (k, v) in params(raw.clone()) {
        match k.as_str() {
            "_count" => count = count_param(&v)?,
            "_cursor" => q.cursor = v,
            "_type" => q.types = v.split(',').map(str::to_string).collect(),
            other => return Err(unknown_param(other).into()),
        }
    }
    for (i, t) in q.types.iter().enumerate() {
        fhir::check_type(&format!("_type[{i}]"), t)?;
    }
    q.page_size = page_size(count)?;
    search_bundle(
        api,
        q,
        (&[], &Includes::default()),
        headers,
        &format!("Patient/{patient}/$everything?{}", without_cursor(raw)),
    )
    .await
}

fn without_cursor(raw: Option<String>) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params(raw).into_iter().filter(|(k, _)| k != "_cursor"))
        .finish()
}

async fn search_bundle(
    api: &RecordsApi,
    q: Query,
    (elements, includes): (&[String], &Includes),
    headers: &HeaderMap,
    self_path: &str,
) -> Result<Response> {
    let who = caller(api, headers, "records.read").await?;
    crate::grpc::check_query(&q)?;
    let page: Page = api.store().search(&q, &who).await?;
    let mut body = searchset(headers, &page, &q.cursor, elements, self_path);
    if !includes.is_empty() {
        let matches: Vec<Value> = page
            .items
            .iter()
            .map(|s| serde_json::from_str(&s.body).unwrap_or(Value::Null))
            .collect();
        let extra = crate::provenance::included(api, (&page.items, &matches), includes, &who, &base(headers)).await;
        if let Some(entries) = body["entry"].as_array_mut() {
            entries.extend(extra);
        } else if !extra.is_empty() {
            body["entry"] = Value::Array(extra);
        }
    }
    Ok(fhir_response(StatusCode::OK, &body, HeaderMap::new()))
}

/// `GET /Patient?family=…&birthdate=…`: the patients matching whom the caller may see.
async fn patient_bundle(
    api: &RecordsApi,
    people: &PatientQuery,
    (page_size, cursor): (usize, &str),
    elements: &[String],
    headers: &HeaderMap,
    self_path: &str,
) -> Result<Response> {
    let who = caller(api, headers, "records.read").await?;
    if !cursor.is_empty() {
        fhir::check_id("_cursor", cursor)?;
    }
    let found = api.store().find_patients(people, page_size, cursor, &who).await?;
    let page = Page {
        items: found.patients,
        next_cursor: found.next_cursor,
        some_withheld: false,
    };
    Ok(fhir_response(
        StatusCode::OK,
        &searchset(headers, &page, cursor, elements, self_path),
        HeaderMap::new(),
    ))
}

/// A searchset Bundle of `page`, with self and next links on `self_path`; with `elements`,
/// each resource keeps only those (and `resourceType`, `id`, `meta`), tagged SUBSETTED.
fn searchset(headers: &HeaderMap, page: &Page, cursor: &str, elements: &[String], self_path: &str) -> Value {
    let base = base(headers);
    let link = |cursor: &str| {
        let sep = if self_path.ends_with('?') || self_path.ends_with('&') {
            ""
        } else {
            "&"
        };
        let mut url = format!("{base}/{self_path}");
        if !cursor.is_empty() {
            url.push_str(&format!("{sep}_cursor={}", urlencode(cursor)));
        }
        url
    };
    let mut body = bundle::page(
        "searchset",
        &base,
        page,
        &link(cursor),
        &link(&page.next_cursor),
        |_| json!({"search": {"mode": "match"}}),
    );
    if !elements.is_empty() {
        for entry in body["entry"].as_array_mut().into_iter().flatten() {
            if entry["search"]["mode"] == "match"
                && let Some(r) = entry.get_mut("resource")
            {
                bundle::subset(r, elements);
            }
        }
    }
    body
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn body_json(body: &Bytes) -> std::result::Result<Value, RecordsError> {
    serde_json::from_slice(body).map_err(|e| RecordsError::invalid("resource", format!("not valid JSON: {e}")))
}

/// The writing organisation: the staff member's, else `X-Source-Organisation` (systems).
fn source(who: &Actor, headers: &HeaderMap) -> std::result::Result<String, RecordsError> {
    let given = headers
        .get("x-source-organisation")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    crate::care::writing_organisation(who, given, "X-Source-Organisation")
}

fn written(s: &Stored, base: &str, created: bool) -> Response {
    let mut h = version_headers(s);
    if let Ok(v) = HeaderValue::from_str(&format!("{base}/{}/{}/_history/{}", s.resource_type, s.id, s.version)) {
        h.insert(header::LOCATION, v);
    }
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    fhir_response(status, &resource(s), h)
}

async fn create(
    State(api): State<RecordsApi>,
    Path(rtype): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    check_path(&rtype, None)?;
    let who = caller(&api, &headers, "records.write").await?;
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
fn if_match(headers: &HeaderMap) -> std::result::Result<i64, RecordsError> {
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
async fn delete(
    State(api): State<RecordsApi>,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let who = caller(&api, &headers, "records.write").await?;
    let s = api.store().delete(&rtype, &id, &source(&who, &headers)?, &who).await?;
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().extend(version_headers(&s));
    Ok(response)
}

async fn update(
    State(api): State<RecordsApi>,
    Path((rtype, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    check_path(&rtype, Some(&id))?;
    let who = caller(&api, &headers, "records.write").await?;
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
async fn conditional_update(
    State(api): State<RecordsApi>,
    Path(rtype): Path<String>,
    RawQuery(condition): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    check_path(&rtype, None)?;
    let who = caller(&api, &headers, "records.write").await?;
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

async fn post_bundle(State(api): State<RecordsApi>, headers: HeaderMap, body: Bytes) -> Result<Response> {
    let who = caller(&api, &headers, "records.write").await?;
    let value = body_json(&body)?;
    let org = source(&who, &headers)?;
    let base = base(&headers);
    let (status, out) = bundle::process(api.store(), value, &org, &who, &base).await?;
    Ok(fhir_response(status, &out, HeaderMap::new()))
}
