//! Provenance resources and `_include` / `_revinclude` over the FHIR facade.
//!
//! - `GET /fhir/R4/Provenance/{id}` and `GET /fhir/R4/Provenance?target=Type/id[/_history/n]`:
//!   the Provenance of each version (author, organisation, time, the version and whether it
//!   created, updated or deleted the resource), read only after the version itself was decided
//!   by consent and audited.
//! - `_include=Type:param` on searches: the resources the page's matches reference through
//!   `param` (e.g. `MedicationRequest:medication`, `Observation:subject`), each read as the
//!   caller (decided and audited); one the caller may not see is left out, unnamed.
//! - `_revinclude=Provenance:target`: the Provenance of each match's current version.

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use serde_json::{Value, json};
use sharedcare_kit::edge::{Refusal, Refuse};
use sharedcare_kit::json::Fields;

use crate::RecordsError;
use crate::api::RecordsApi;
use crate::fhir;
use crate::http::respond::{Outcome, Reader, base, fhir_response};
use crate::store::{Actor, Written};

type Result<T> = std::result::Result<T, Outcome>;

/// The reference search parameters `_include` follows, and the elements they name.
const INCLUDES: &[(&str, &[&str])] = &[
    ("subject", &["subject"]),
    ("patient", &["patient", "subject"]),
    ("medication", &["medicationReference"]),
    ("encounter", &["encounter"]),
    ("performer", &["performer"]),
    ("requester", &["requester"]),
    ("author", &["author"]),
    (
        "organization",
        &["organization", "managingOrganization", "serviceProvider"],
    ),
    ("practitioner", &["practitioner"]),
    ("based-on", &["basedOn"]),
];

/// The `_include` parameters a search of any type may name (`Type:param`).
pub fn include_params() -> impl Iterator<Item = &'static str> {
    INCLUDES.iter().map(|(name, _)| *name)
}

/// What `_include` and `_revinclude` ask a search to add.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Includes {
    /// Elements whose references to follow.
    pub elements: Vec<&'static str>,
    /// `_revinclude=Provenance:target`.
    pub provenance: bool,
}

impl Includes {
    /// Whether nothing is asked for.
    pub fn is_empty(&self) -> bool {
        self.elements.is_empty() && !self.provenance
    }

    /// Adds one `_include` (`Type:param`) of a search of `rtype`; the error says why not.
    pub fn include(&mut self, rtype: &str, v: &str) -> std::result::Result<(), RecordsError> {
        let (t, param) = v.split_once(':').unwrap_or(("", v));
        let param = param.split(':').next().unwrap_or("");
        if t != rtype {
            return Err(RecordsError::invalid(
                "_include",
                format!("{v:?}: expected {rtype}:<parameter>"),
            ));
        }
        let Some((_, elements)) = INCLUDES.iter().find(|(name, _)| *name == param) else {
            let known: Vec<&str> = INCLUDES.iter().map(|(n, _)| *n).collect();
            return Err(RecordsError::invalid(
                "_include",
                format!("{v:?}: the parameters followed are {}", known.join(", ")),
            ));
        };
        self.elements.extend(elements.iter().copied());
        Ok(())
    }

    /// Adds one `_revinclude`: only `Provenance:target` is supported.
    pub fn revinclude(&mut self, v: &str) -> std::result::Result<(), RecordsError> {
        if v != "Provenance:target" {
            return Err(RecordsError::invalid(
                "_revinclude",
                format!("{v:?}: only Provenance:target is supported"),
            ));
        }
        self.provenance = true;
        Ok(())
    }
}

/// The routes.
pub fn router(api: RecordsApi) -> Router {
    Router::new()
        .route("/fhir/R4/Provenance", get(search))
        .route("/fhir/R4/Provenance/{id}", get(read))
        .with_state(api)
}

/// The identifier system of a version's source document (what a feed took it from, e.g.
/// `hl7v2:<sender>:<control id>` for an HL7 v2 message the connectors keep).
pub const SOURCE_DOCUMENT_SYSTEM: &str = "https://sharedcare.nhs.uk/Id/source-document";

/// The Provenance resource for one version.
pub fn resource(w: &Written) -> Value {
    let at = |us: i64| {
        chrono::DateTime::from_timestamp_micros(us)
            .unwrap_or_default()
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    let activity = match (w.deleted, w.version) {
        (true, _) => "DELETE",
        (false, 1) => "CREATE",
        (false, _) => "UPDATE",
    };
    let mut agent = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author"}]},
        "who": {"identifier": {"value": if w.author.is_empty() { "unknown" } else { &w.author }}},
    });
    if !w.organisation.is_empty() {
        agent.put(
            "onBehalfOf",
            json!({"identifier": {"system": fhir::ODS_SYSTEM, "value": w.organisation}}),
        );
    }
    let mut p = json!({
        "resourceType": "Provenance",
        "id": w.provenance_id,
        "meta": {"versionId": "1", "lastUpdated": at(w.recorded_us)},
        "target": [{"reference": format!("{}/{}/_history/{}", w.resource_type, w.id, w.version)}],
        "recorded": at(w.recorded_us),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": activity}]},
        "agent": [agent],
    });
    if !w.source_document.is_empty() {
        p.put(
            "entity",
            json!([{"role": "source", "what": {"identifier": {"system": SOURCE_DOCUMENT_SYSTEM, "value": w.source_document}}}]),
        );
    }
    p
}

async fn read(State(api): State<RecordsApi>, Path(id): Path<String>, Reader(who): Reader) -> Result<Response> {
    fhir::check_id("id", &id)?;
    let (t, rid, version) = api
        .store()
        .provenance_target(&id)
        .await?
        .ok_or_else(|| RecordsError::not_found(format!("Provenance/{id}")))?;
    let written = api.store().provenance_of(&t, &rid, Some(version), &who).await?;
    let w = written
        .into_iter()
        .find(|w| w.provenance_id == id)
        .ok_or_else(|| RecordsError::not_found(format!("Provenance/{id}")))?;
    Ok(fhir_response(StatusCode::OK, &resource(&w), HeaderMap::new()))
}

/// `target` as (type, id, version).
fn target(v: &str) -> std::result::Result<(String, String, Option<i64>), RecordsError> {
    let bad = || {
        RecordsError::invalid(
            "target",
            format!("{v:?} is not a reference such as Observation/123 or Observation/123/_history/2"),
        )
    };
    let parts: Vec<&str> = v.split('/').collect();
    let (t, id, version) = match parts.as_slice() {
        [t, id] => (*t, *id, None),
        [t, id, "_history", n] => (*t, *id, Some(n.parse::<i64>().map_err(|_| bad())?)),
        _ => return Err(bad()),
    };
    fhir::check_type("target", t).map_err(|_| bad())?;
    fhir::check_id("target", id).map_err(|_| bad())?;
    Ok((t.to_string(), id.to_string(), version))
}

async fn search(
    State(api): State<RecordsApi>,
    RawQuery(raw): RawQuery,
    Reader(who): Reader,
    headers: HeaderMap,
) -> Result<Response> {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes())
        .into_owned()
        .collect();
    let mut wanted = None;
    for (k, v) in &params {
        match k.as_str() {
            "target" if wanted.is_none() => wanted = Some(target(v)?),
            "_format" if v.contains("json") => {}
            other => {
                return Err(RecordsError::invalid(
                    other,
                    "is not a search parameter of Provenance here (target, once)",
                )
                .into());
            }
        }
    }
    let (t, id, version) =
        wanted.ok_or_else(|| RecordsError::invalid("target", "is required (Provenance is searched by target)"))?;
    let written = match api.store().provenance_of(&t, &id, version, &who).await {
        Ok(w) => w,
        Err(RecordsError::Refused(Refusal::NotFound(_))) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let base = base(&headers);
    let entries: Vec<Value> = written
        .iter()
        .map(|w| json!({"fullUrl": format!("{base}/Provenance/{}", w.provenance_id), "resource": resource(w), "search": {"mode": "match"}}))
        .collect();
    let body = json!({"resourceType": "Bundle", "type": "searchset", "total": entries.len(), "entry": entries});
    Ok(fhir_response(StatusCode::OK, &body, HeaderMap::new()))
}

/// The references (`Type/id`) the `elements` of `resource` hold, once each.
fn references(resource: &Value, elements: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |r: &Value| {
        if let Some((t, id)) = r
            .get("reference")
            .and_then(Value::as_str)
            .and_then(|s| s.split_once('/'))
            && !id.contains('/')
            && fhir::check_type("reference", t).is_ok()
            && fhir::check_id("reference", id).is_ok()
        {
            let pair = (t.to_string(), id.to_string());
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
    };
    for e in elements {
        match resource.get(*e) {
            Some(Value::Array(items)) => {
                for item in items {
                    // `performer` holds References, or components with an `actor`.
                    add(item);
                    if let Some(actor) = item.get("actor") {
                        add(actor);
                    }
                }
            }
            Some(r) => add(r),
            None => {}
        }
    }
    out
}

/// The entries `includes` add to a searchset whose page `read` (decided and audited) holds
/// `matches`: each referenced resource read as `who` (left out when refused), and the
/// Provenance of each match's version (from the page: nothing read twice).
pub async fn included(
    api: &RecordsApi,
    (read, matches): (&[crate::store::Stored], &[Value]),
    includes: &Includes,
    who: &Actor,
    base: &str,
) -> Vec<Value> {
    let mut wanted: Vec<(String, String)> = Vec::new();
    for m in matches {
        for pair in references(m, &includes.elements) {
            let already = matches
                .iter()
                .any(|x| x["resourceType"] == pair.0.as_str() && x["id"] == pair.1.as_str());
            if !already && !wanted.contains(&pair) {
                wanted.push(pair);
            }
        }
    }
    let reads = wanted.iter().map(|(t, id)| api.store().get(t, id, who));
    let mut out: Vec<Value> = futures::future::join_all(reads)
        .await
        .into_iter()
        .filter_map(|r| r.ok())
        .map(|s| {
            json!({
                "fullUrl": format!("{base}/{}/{}", s.resource_type, s.id),
                "resource": serde_json::from_str::<Value>(&s.body).unwrap_or(Value::Null),
                "search": {"mode": "include"},
            })
        })
        .collect();
    if includes.provenance
        && let Ok(written) = api.store().written(read).await
    {
        out.extend(written.iter().map(|w| {
            json!({
                "fullUrl": format!("{base}/Provenance/{}", w.provenance_id),
                "resource": resource(w),
                "search": {"mode": "include"},
            })
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn includes_name_what_they_follow_and_refuse_the_rest() {
        let mut i = Includes::default();
        i.include("MedicationRequest", "MedicationRequest:medication")
            .expect("medication");
        assert_eq!(i.elements, ["medicationReference"]);
        assert!(i.include("MedicationRequest", "Observation:subject").is_err());
        assert!(
            i.include("Observation", "Observation:colour")
                .expect_err("unknown parameter")
                .to_string()
                .starts_with("_include:")
        );
        assert!(i.revinclude("Observation:subject").is_err());
        i.revinclude("Provenance:target").expect("provenance");
        assert!(i.provenance);
        let r = json!({"subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Practitioner/d1"}, {"actor": {"reference": "Organization/o1"}}],
                        "encounter": {"reference": "https://elsewhere.example/Encounter/1"}});
        assert_eq!(
            references(&r, &["subject", "performer", "encounter"]),
            [
                ("Patient".to_string(), "p1".to_string()),
                ("Practitioner".to_string(), "d1".to_string()),
                ("Organization".to_string(), "o1".to_string())
            ]
        );
    }

    #[test]
    fn a_provenance_says_who_wrote_which_version_and_how() {
        let w = Written {
            provenance_id: "abc".into(),
            resource_type: "Observation".into(),
            id: "o1".into(),
            version: 2,
            recorded_us: 1_700_000_000_000_000,
            author: "gp-system".into(),
            organisation: "A81001".into(),
            deleted: false,
            source_document: String::new(),
        };
        let p = resource(&w);
        assert_eq!(p["target"][0]["reference"], "Observation/o1/_history/2");
        assert_eq!(p["activity"]["coding"][0]["code"], "UPDATE");
        assert_eq!(p["agent"][0]["onBehalfOf"]["identifier"]["value"], "A81001");
        assert_eq!(p["recorded"], "2023-11-14T22:13:20.000000Z");
        assert!(p.get("entity").is_none(), "no source named, no entity");
        let fed = resource(&Written {
            source_document: "hl7v2:PAS@RX1:MSG1".into(),
            ..w
        });
        assert_eq!(fed["entity"][0]["role"], "source");
        assert_eq!(fed["entity"][0]["what"]["identifier"]["value"], "hl7v2:PAS@RX1:MSG1");
    }
}
