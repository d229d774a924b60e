//! Searches: parameters parsed into a query (errors name the parameter), searchset Bundles
//! with stable paging, `_summary=count`, `_elements`, `_include`, and `$everything`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::json::Fields;

use super::respond::{Reader, Result, base, check_path, fhir_response, params, urlencode};
use crate::api::{RecordsApi, page_size};
use crate::demographics::{self, PatientQuery};
use crate::provenance::Includes;
use crate::store::{Actor, MAX_PAGE, Page, Query, Sort, Stored};
use crate::{RecordsError, bundle, fhir};

pub(crate) fn count_param(v: &str) -> std::result::Result<i32, RecordsError> {
    v.parse()
        .map_err(|_| RecordsError::invalid("_count", format!("{v:?} is not a number")))
}

pub(crate) fn unknown_param(name: &str) -> RecordsError {
    RecordsError::invalid(
        name,
        "is not a search parameter Sharedcare supports (see /fhir/R4/metadata)",
    )
}

/// A FHIR date search value (`2026-01-05`, `ge2026-01-05`, `le2026-01-05T10:00:00Z`, …) as a
/// range `(from, to)` in µs.
pub(crate) fn date_param(name: &str, v: &str) -> std::result::Result<(Option<i64>, Option<i64>), RecordsError> {
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
pub(crate) fn patient_param(name: &str, v: &str) -> std::result::Result<String, RecordsError> {
    let id = v.rsplit_once("Patient/").map(|(_, id)| id).unwrap_or(v);
    fhir::check_id(name, id)?;
    Ok(id.to_string())
}

/// A search request, parsed and checked.
pub(crate) struct Parsed {
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
pub(crate) fn parse_search(rtype: &str, raw: Option<String>) -> std::result::Result<Parsed, RecordsError> {
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
            "_sort" => q.sort = Sort::parse("_sort", &v)?,
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

pub(crate) async fn search_type(
    State(api): State<RecordsApi>,
    Path(rtype): Path<String>,
    RawQuery(raw): RawQuery,
    Reader(who): Reader,
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
        return patient_bundle(&api, &people, page, (&elements, &who), &headers, &self_path).await;
    }
    let self_path = format!("{rtype}?{}", without_cursor(raw));
    if only_count {
        // Counted a page at a time, each page decided and audited like any search: the total
        // is what the caller may see, never what is withheld.
        q.page_size = MAX_PAGE;
        crate::api::check_query(&q)?;
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
    search_bundle(&api, q, (&elements, &includes), &who, &headers, &self_path).await
}

/// `_summary=count`: a searchset Bundle with the total and no entries.
pub(crate) fn count_bundle(headers: &HeaderMap, total: usize, self_path: &str) -> Response {
    let body = json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": [{"relation": "self", "url": format!("{}/{self_path}", base(headers))}],
    });
    fhir_response(StatusCode::OK, &body, HeaderMap::new())
}

/// `_elements`: top-level element names (`resourceType`, `id` and `meta` are always kept).
pub(crate) fn elements_param(v: &str) -> std::result::Result<Vec<String>, RecordsError> {
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
pub(crate) async fn everything(
    api: &RecordsApi,
    patient: &str,
    who: &Actor,
    headers: &HeaderMap,
    raw: Option<String>,
) -> Result<Response> {
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
        who,
        headers,
        &format!("Patient/{patient}/$everything?{}", without_cursor(raw)),
    )
    .await
}

pub(crate) fn without_cursor(raw: Option<String>) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params(raw).into_iter().filter(|(k, _)| k != "_cursor"))
        .finish()
}

pub(crate) async fn search_bundle(
    api: &RecordsApi,
    q: Query,
    (elements, includes): (&[String], &Includes),
    who: &Actor,
    headers: &HeaderMap,
    self_path: &str,
) -> Result<Response> {
    crate::api::check_query(&q)?;
    let page: Page = api.store().search(&q, who).await?;
    let mut body = searchset(headers, &page, &q.cursor, elements, self_path);
    if !includes.is_empty() {
        let matches: Vec<Value> = page
            .items
            .iter()
            .map(|s| serde_json::from_str(&s.body).unwrap_or(Value::Null))
            .collect();
        let extra = crate::provenance::included(api, (&page.items, &matches), includes, who, &base(headers)).await;
        if let Some(entries) = body.get_mut("entry").and_then(Value::as_array_mut) {
            entries.extend(extra);
        } else if !extra.is_empty() {
            body.put("entry", Value::Array(extra));
        }
    }
    Ok(fhir_response(StatusCode::OK, &body, HeaderMap::new()))
}

/// `GET /Patient?family=…&birthdate=…`: the patients matching whom the caller may see.
pub(crate) async fn patient_bundle(
    api: &RecordsApi,
    people: &PatientQuery,
    (page_size, cursor): (usize, &str),
    (elements, who): (&[String], &Actor),
    headers: &HeaderMap,
    self_path: &str,
) -> Result<Response> {
    if !cursor.is_empty() {
        fhir::check_id("_cursor", cursor)?;
    }
    let found = api.store().find_patients(people, page_size, cursor, who).await?;
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
pub(crate) fn searchset(headers: &HeaderMap, page: &Page, cursor: &str, elements: &[String], self_path: &str) -> Value {
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
        for entry in body
            .get_mut("entry")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            if entry.at("search").at("mode") == "match"
                && let Some(r) = entry.get_mut("resource")
            {
                bundle::subset(r, elements);
            }
        }
    }
    body
}

/// What a condition (`If-None-Exist`, or a conditional update's `search`: the `field` bad
/// parameters are reported under) finds, as `who` (at most two: one is all either needs).
pub(crate) async fn existing(
    api: &RecordsApi,
    rtype: &str,
    condition: &str,
    who: &Actor,
    field: &str,
) -> Result<Vec<Stored>> {
    let named = |e: RecordsError| RecordsError::invalid(field, e.to_string());
    let p = parse_search(rtype, Some(condition.to_string())).map_err(named)?;
    if !p.people.is_empty() {
        return Ok(api.store().find_patients(&p.people, 2, "", who).await?.patients);
    }
    let q = Query { page_size: 2, ..p.q };
    crate::api::check_query(&q).map_err(named)?;
    Ok(api.store().search(&q, who).await?.items)
}
