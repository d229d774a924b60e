//! FHIR Bundles: the searchset and history pages the facade returns, and the `transaction`
//! (all or nothing) and `batch` Bundles writers post.

use sharedcare_kit::edge::{Refusal, Refuse};
use sharedcare_kit::json::Fields;
use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::store::{Actor, Page, Store, Stored};
use crate::{RecordsError, fhir};

/// The notice a Bundle carries when the patient withholds information from the caller.
pub const WITHHELD_NOTICE: &str = "Some information may be withheld in line with the patient's wishes.";

/// Keeps only `elements` of `resource` (and `resourceType`, `id`, `meta`), and tags it
/// SUBSETTED (FHIR `_elements`: a summary the client must not take for the whole resource).
pub fn subset(resource: &mut Value, elements: &[String]) {
    let Value::Object(r) = resource else {
        return;
    };
    // Mandatory elements are always returned, asked for or not (FHIR search, `_elements`).
    let rtype = r.get("resourceType").and_then(Value::as_str).unwrap_or("").to_string();
    let required = sharedcare_kit::fhir_elements::required(&rtype);
    let mandatory = |k: &str| {
        required
            .iter()
            .any(|q| *q == k || q.strip_suffix("[x]").is_some_and(|stem| k.starts_with(stem)))
    };
    r.retain(|k, _| {
        matches!(k.as_str(), "resourceType" | "id" | "meta") || elements.iter().any(|e| e == k) || mandatory(k)
    });
    let meta = r.entry("meta").or_insert_with(|| json!({}));
    if let Value::Object(meta) = meta {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Value::Array(tags) = tags {
            tags.push(json!({
                "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                "code": "SUBSETTED",
            }));
        }
    }
}

/// A page as a Bundle of `kind` (`searchset` or `history`); `extra` adds each entry's
/// `search` or `request`/`response`.
pub fn page(
    kind: &str,
    base: &str,
    page: &Page,
    self_url: &str,
    next_url: &str,
    extra: impl Fn(&Stored) -> Value,
) -> Value {
    let mut entries: Vec<Value> = page
        .items
        .iter()
        .map(|s| {
            let mut e = json!({"fullUrl": format!("{base}/{}/{}", s.resource_type, s.id)});
            // A version that deleted the resource has no resource (FHIR history).
            if !s.deleted {
                e.put(
                    "resource",
                    serde_json::from_str::<Value>(&s.body).unwrap_or(Value::Null),
                );
            }
            if let (Some(e), Value::Object(more)) = (e.as_object_mut(), extra(s)) {
                e.extend(more);
            }
            e
        })
        .collect();
    if page.some_withheld && kind == "searchset" {
        entries.push(json!({
            "fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
            "resource": {"resourceType": "OperationOutcome", "issue": [{
                "severity": "information", "code": "suppressed", "diagnostics": WITHHELD_NOTICE,
            }]},
            "search": {"mode": "outcome"},
        }));
    }
    let mut links = vec![json!({"relation": "self", "url": self_url})];
    if !page.next_cursor.is_empty() {
        links.push(json!({"relation": "next", "url": next_url}));
    }
    json!({
        "resourceType": "Bundle",
        "type": kind,
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "link": links,
        "entry": entries,
    })
}

/// One entry of a posted Bundle, checked.
struct Entry {
    /// `fullUrl` (e.g. `urn:uuid:…`), empty when absent.
    full_url: String,
    /// The resource, references not yet rewritten.
    resource: Map<String, Value>,
    /// The expected version from `request.ifMatch` (0 = none).
    if_match: i64,
    /// POST (create) or PUT (update).
    create: bool,
}

fn invalid(i: usize, field: &str, reason: impl Into<String>) -> RecordsError {
    RecordsError::invalid(format!("entry[{i}].{field}"), reason)
}

/// Checks entry `i` of a posted Bundle.
fn entry(i: usize, e: &Value) -> Result<Entry, RecordsError> {
    let resource = match e.get("resource") {
        Some(Value::Object(r)) => r.clone(),
        _ => return Err(invalid(i, "resource", "is required (a FHIR resource)")),
    };
    let rtype = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid(i, "resource.resourceType", "is required"))?
        .to_string();
    let request = e
        .get("request")
        .ok_or_else(|| invalid(i, "request", "is required (method and url)"))?;
    let method = request.get("method").and_then(Value::as_str).unwrap_or("");
    let url = request.get("url").and_then(Value::as_str).unwrap_or("");
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        None => 0,
        Some(t) => t
            .trim_start_matches("W/")
            .trim_matches('"')
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                invalid(
                    i,
                    "request.ifMatch",
                    format!("{t:?} is not a version ETag such as W/\"3\""),
                )
            })?,
    };
    let create = match method {
        "POST" => {
            if url != rtype {
                return Err(invalid(
                    i,
                    "request.url",
                    format!("a POST of a {rtype} goes to {rtype:?}"),
                ));
            }
            true
        }
        "PUT" => {
            let id = resource.get("id").and_then(Value::as_str).unwrap_or("");
            if url != format!("{rtype}/{id}") {
                return Err(invalid(
                    i,
                    "request.url",
                    format!("a PUT goes to {rtype}/{{resource.id}}"),
                ));
            }
            false
        }
        other => {
            return Err(invalid(
                i,
                "request.method",
                format!("{other:?}: Sharedcare accepts POST (create) and PUT (update) in Bundles"),
            ));
        }
    };
    Ok(Entry {
        full_url: e.get("fullUrl").and_then(Value::as_str).unwrap_or("").to_string(),
        resource,
        if_match,
        create,
    })
}

/// Replaces every `reference` in `v` that `ids` knows (a `urn:uuid:` fullUrl) with the
/// `Type/id` it was given.
pub fn rewrite(v: &mut Value, ids: &HashMap<String, String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                match child {
                    Value::String(s) if k == "reference" => {
                        if let Some(to) = ids.get(s.as_str()) {
                            *s = to.clone();
                        }
                    }
                    _ => rewrite(child, ids),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| rewrite(c, ids)),
        _ => {}
    }
}

/// The first `reference` in `v` still naming a `urn:uuid:` (after [`rewrite`]), with its path.
fn unresolved(v: &Value, path: String) -> Option<(String, String)> {
    let at = |key: &str| {
        if path.is_empty() {
            key.to_string()
        } else {
            format!("{path}.{key}")
        }
    };
    match v {
        Value::Object(m) => m.iter().find_map(|(k, child)| match child {
            Value::String(s) if k == "reference" && s.starts_with("urn:uuid:") => Some((at(k), s.clone())),
            _ => unresolved(child, at(k)),
        }),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(n, c)| unresolved(c, format!("{path}[{n}]"))),
        _ => None,
    }
}

/// Checks a posted Bundle's entries and gives each created resource its id, rewriting
/// references between entries. Returns the resources (with expected versions) in order.
pub fn prepare(entries: &[Value]) -> Result<Vec<(fhir::Resource, i64, bool)>, RecordsError> {
    let mut checked = Vec::with_capacity(entries.len());
    let mut ids: HashMap<String, String> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let mut en = entry(i, e)?;
        if en.create {
            let id = uuid::Uuid::new_v4().to_string();
            en.resource.insert("id".into(), Value::String(id));
        }
        let rtype = en
            .resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let id = en.resource.get("id").and_then(Value::as_str).unwrap_or("").to_string();
        if !en.full_url.is_empty() {
            ids.insert(en.full_url.clone(), format!("{rtype}/{id}"));
        }
        checked.push(en);
    }
    let mut out = Vec::with_capacity(checked.len());
    for (i, en) in checked.into_iter().enumerate() {
        let mut value = Value::Object(en.resource);
        rewrite(&mut value, &ids);
        // A urn:uuid names an entry of this Bundle; one that names none cannot be resolved
        // and must not be stored as if it were a reference (FHIR R4 transaction rules).
        if let Some((path, to)) = unresolved(&value, String::new()) {
            return Err(invalid(
                i,
                &format!("resource.{path}"),
                format!("{to} is the fullUrl of no entry in this Bundle"),
            ));
        }
        let r = fhir::parse(&value.to_string()).map_err(|e| match e {
            RecordsError::Refused(Refusal::Invalid { field, reason }) => {
                invalid(i, &format!("resource.{field}"), reason)
            }
            other => other,
        })?;
        out.push((r, en.if_match, en.create));
    }
    Ok(out)
}

fn response_entry(base: &str, s: &Stored, created: bool) -> Value {
    let mut e = json!({
        "response": {
            "status": if created { "201 Created" } else { "200 OK" },
            "location": format!("{}/{}/_history/{}", s.resource_type, s.id, s.version),
            "etag": format!("W/\"{}\"", s.version),
        },
    });
    if !base.is_empty() {
        e.put("fullUrl", json!(format!("{base}/{}/{}", s.resource_type, s.id)));
    }
    e
}

/// Most entries in one posted Bundle (larger loads go through `sharedcare import`).
pub const MAX_ENTRIES: usize = 1000;

/// Processes a posted `transaction` or `batch` Bundle: the response Bundle and its status.
pub async fn process(
    store: &Store,
    bundle: Value,
    source: &str,
    who: &Actor,
    base: &str,
) -> Result<(StatusCode, Value), RecordsError> {
    if bundle.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(RecordsError::invalid("resourceType", "must be Bundle"));
    }
    let kind = bundle.get("type").and_then(Value::as_str).unwrap_or("");
    if kind != "transaction" && kind != "batch" {
        return Err(RecordsError::invalid("type", "must be transaction or batch"));
    }
    let entries = match bundle.get("entry") {
        Some(Value::Array(e)) => e.clone(),
        None => Vec::new(),
        Some(_) => return Err(RecordsError::invalid("entry", "must be an array")),
    };
    if entries.len() > MAX_ENTRIES {
        return Err(RecordsError::invalid(
            "entry",
            format!("at most {MAX_ENTRIES} entries per Bundle; use `sharedcare import` for larger loads"),
        ));
    }
    if kind == "transaction" {
        let prepared = prepare(&entries)?;
        let created: Vec<bool> = prepared.iter().map(|(_, _, c)| *c).collect();
        let puts = prepared.into_iter().map(|(r, v, _)| (r, v)).collect();
        let stored = store.put_all(puts, source, who).await.map_err(|(i, e)| match e {
            RecordsError::Refused(Refusal::Invalid { field, reason }) => {
                invalid(i, &format!("resource.{field}"), reason)
            }
            RecordsError::Denied(why) => RecordsError::Denied(format!("entry[{i}]: {why}")),
            other => other,
        })?;
        let out: Vec<Value> = stored
            .iter()
            .zip(created)
            .map(|(s, c)| response_entry(base, s, c))
            .collect();
        return Ok((
            StatusCode::OK,
            json!({"resourceType": "Bundle", "type": "transaction-response", "entry": out}),
        ));
    }
    // A batch: each entry on its own (references between entries are not resolved).
    let mut out = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let one = match prepare(std::slice::from_ref(e)) {
            Ok(mut p) => {
                let (r, expected, created) = p.remove(0);
                store.put(r, source, who, expected).await.map(|s| (s, created))
            }
            Err(RecordsError::Refused(Refusal::Invalid { field, reason })) => Err(RecordsError::invalid(
                field.replacen("entry[0]", &format!("entry[{i}]"), 1),
                reason,
            )),
            Err(other) => Err(other),
        };
        out.push(match one {
            Ok((s, created)) => response_entry(base, &s, created),
            Err(err) => {
                let (status, outcome) = crate::http::respond::outcome(&err);
                json!({"response": {"status": status.as_u16().to_string(), "outcome": outcome}})
            }
        });
    }
    Ok((
        StatusCode::OK,
        json!({"resourceType": "Bundle", "type": "batch-response", "entry": out}),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(full_url: &str, resource: Value) -> Value {
        json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}})
    }

    #[test]
    fn references_between_entries_are_resolved_and_one_to_no_entry_is_refused() {
        let patient = entry(
            "urn:uuid:7d0b4c4e-0000-4000-8000-000000000001",
            json!({"resourceType": "Patient",
                   "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}]}),
        );
        let condition = |to: &str| {
            entry(
                "urn:uuid:7d0b4c4e-0000-4000-8000-000000000002",
                json!({"resourceType": "Condition", "subject": {"reference": to},
                       "code": {"coding": [{"system": "http://snomed.info/sct", "code": "195967001"}]}}),
            )
        };
        let prepared = prepare(&[
            patient.clone(),
            condition("urn:uuid:7d0b4c4e-0000-4000-8000-000000000001"),
        ])
        .unwrap_or_else(|e| panic!("a valid transaction: {e}"));
        let patient_id = prepared.first().map(|(r, _, _)| r.id.clone()).unwrap_or_default();
        let subject = prepared.get(1).and_then(|(r, _, _)| r.body.get("subject")).cloned();
        assert_eq!(subject, Some(json!({"reference": format!("Patient/{patient_id}")})));

        let refused = prepare(&[patient, condition("urn:uuid:7d0b4c4e-0000-4000-8000-00000000ffff")])
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            refused.contains("entry[1].resource.subject.reference")
                && refused.contains("urn:uuid:7d0b4c4e-0000-4000-8000-00000000ffff is the fullUrl of no entry"),
            "{refused}"
        );
    }
}
