//! Audit entries as FHIR R4 AuditEvent resources, shaped after IHE Basic Audit Log Patterns
//! (BALP): who (agent, with role and organisation), what (entity: the resources, and the
//! patient by NHS number), why (purposeOfEvent), outcome, when, and the service that observed it.

use serde_json::{Value, json};
use sharedcare_kit::db;
use sharedcare_kit::nhs::NHS_NUMBER_SYSTEM;
use sharedcare_proto::audit::v1::AuditEntry;

const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// FHIR `AuditEvent.action` (C, R, U, D, E) for an entry's action.
fn action_code(action: &str) -> &'static str {
    match action {
        "create" => "C",
        "read" | "vread" | "history" | "search" => "R",
        "update" => "U",
        _ => "E",
    }
}

/// FHIR `AuditEvent.outcome`: 0 success, 4 minor failure (refused or not found), 8 serious
/// failure (could not be decided or recorded).
fn outcome_code(outcome: &str) -> &'static str {
    match outcome {
        "success" => "0",
        "denied" | "withheld" | "not-found" => "4",
        _ => "8",
    }
}

/// The REST interaction (`http://hl7.org/fhir/restful-interaction`) for an entry's action.
fn subtype(action: &str) -> Option<&'static str> {
    Some(match action {
        "create" => "create",
        "read" => "read",
        "vread" => "vread",
        "history" => "history-instance",
        "search" => "search-type",
        "update" => "update",
        _ => return None,
    })
}

/// One entry as an AuditEvent.
pub fn audit_event(e: &AuditEntry) -> Value {
    let recorded = e
        .time
        .as_ref()
        .and_then(|t| chrono::DateTime::from_timestamp_micros(db::micros(t)))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let (kind, sub) = match subtype(&e.action) {
        Some(s) => (
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful Operation"}),
            json!([{"system": "http://hl7.org/fhir/restful-interaction", "code": s}]),
        ),
        None => (
            json!({"system": "https://sharedcare.nhs.uk/audit-action", "code": e.action}),
            json!([]),
        ),
    };
    let mut who = json!({"identifier": {"value": e.actor}});
    let mut agent = serde_json::Map::new();
    if !e.actor_role.is_empty() {
        agent.insert("role".into(), json!([{"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode", "code": e.actor_role}]}]));
    }
    if !e.actor_organisation.is_empty() {
        if let Some(w) = who.as_object_mut() {
            w.insert(
                "display".into(),
                json!(format!("{} at {}", e.actor, e.actor_organisation)),
            );
        }
        agent.insert(
            "location".into(),
            json!({"identifier": {"system": ODS_SYSTEM, "value": e.actor_organisation}}),
        );
    }
    if !e.purpose.is_empty() {
        agent.insert(
            "purposeOfUse".into(),
            json!([{"coding": [{"system": PURPOSE_SYSTEM, "code": e.purpose}]}]),
        );
    }
    agent.insert("who".into(), who);
    agent.insert("requestor".into(), json!(true));
    let mut entity: Vec<Value> = e
        .resources
        .iter()
        .map(|r| {
            json!({"what": {"reference": r},
                   "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"}})
        })
        .collect();
    if !e.nhs_number.is_empty() {
        entity.push(json!({
            "what": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": e.nhs_number}},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
        }));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "id": e.event_id,
        "meta": {"tag": [{"system": "https://sharedcare.nhs.uk/audit-leaf-index", "code": e.leaf_index.to_string()}]},
        "type": kind,
        "subtype": sub,
        "action": action_code(&e.action),
        "recorded": recorded,
        "outcome": outcome_code(&e.outcome),
        "agent": [agent],
        "source": {"observer": {"display": format!("sharedcare {}", e.service)},
                   "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
        "entity": entity,
    });
    let Some(fields) = event.as_object_mut() else {
        return event;
    };
    if !e.reason.is_empty() || e.outcome != "success" {
        let desc = if e.reason.is_empty() {
            e.outcome.clone()
        } else {
            format!("{}: {}", e.outcome, e.reason)
        };
        fields.insert("outcomeDesc".into(), json!(desc));
    }
    if !e.purpose.is_empty() {
        fields.insert(
            "purposeOfEvent".into(),
            json!([{"coding": [{"system": PURPOSE_SYSTEM, "code": e.purpose}]}]),
        );
    }
    if fields
        .get("subtype")
        .and_then(Value::as_array)
        .is_some_and(Vec::is_empty)
    {
        fields.remove("subtype");
    }
    event
}

/// Entries as a FHIR Bundle of type `collection`.
pub fn bundle(entries: &[AuditEntry]) -> Value {
    json!({
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "entry": entries.iter().map(|e| json!({"fullUrl": format!("urn:uuid:{}", e.event_id), "resource": audit_event(e)})).collect::<Vec<_>>(),
    })
}
