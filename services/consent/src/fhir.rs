//! FHIR R4 Consent (scope `patient-privacy`) as the directive format. [`parse`] turns a Consent
//! into the policy's [`Provision`], refusing by its path every element the policy cannot
//! enforce (never ignoring one); [`render`] writes a Consent for a directive stored before
//! Consent was the format. Pure: no I/O.
//!
//! What each element means to the policy:
//! - `provision.type` permit | deny; `provision.period` (dateTimes) when it applies;
//! - `provision.actor`: a recipient (`role` v3-ParticipationType PRCP or IRCP) named by
//!   `reference.identifier`: an Organization by ODS code, or a PractitionerRole by national
//!   RBAC job role code (`https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode`);
//! - `provision.action`: consentaction `access`/`disclose` (read and search), `collect`
//!   (create), `correct` (update and delete), or the exact FHIR interaction
//!   (`http://hl7.org/fhir/restful-interaction`);
//! - `provision.purpose`: v3-ActReason codes (TREAT, ETREAT, HRESCH…);
//! - what data: `provision.securityLabel` (v3-ActCode or v3-Confidentiality), `provision.class`
//!   (resource types) or `provision.code` (any coded concept), one of the three per provision;
//! - nested `provision`s: exceptions to the root (one level).

use serde_json::{Map, Value, json};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::nhs::{NHS_NUMBER_SYSTEM, NhsNumber};
use sharedcare_kit::pdp::{CLASS_PREFIX, CODE_PREFIX};

use crate::ConsentError;
use crate::policy::{Action, Effect, Provision};

/// `Consent.scope`'s code system.
pub const SCOPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
/// `provision.action`: the FHIR consent actions.
pub const ACTION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/consentaction";
/// `provision.action`: the exact FHIR interactions.
pub const INTERACTION_SYSTEM: &str = "http://hl7.org/fhir/restful-interaction";
/// `provision.purpose`: HL7 v3 ActReason (PurposeOfUse).
pub const PURPOSE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";
/// `provision.securityLabel`: HL7 v3 ActCode sensitivity codes.
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// `provision.securityLabel`: HL7 v3 confidentiality codes.
pub const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// `provision.actor.role`: HL7 v3 ParticipationType.
pub const PARTICIPATION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
/// `provision.class`: FHIR resource types.
pub const RESOURCE_TYPE_SYSTEM: &str = "http://hl7.org/fhir/resource-types";
/// An actor's organisation by ODS code.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// An actor's PractitionerRole by national RBAC job role code.
pub const JOB_ROLE_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode";

/// Directive statuses (FHIR R4 `Consent.status`).
pub const STATUSES: &[&str] = &[
    "active",
    "inactive",
    "rejected",
    "entered-in-error",
    "proposed",
    "draft",
];

/// A Consent that passed: what the policy acts on, and the resource as written.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    /// `id`, when the writer gave one.
    pub id: Option<String>,
    /// The patient (`patient.identifier`).
    pub nhs_number: NhsNumber,
    /// `status`.
    pub status: String,
    /// `provision`, as the policy reads it.
    pub provision: Provision,
    /// The whole resource, as written.
    pub body: Map<String, Value>,
}

fn invalid(path: &str, reason: impl Into<String>) -> ConsentError {
    ConsentError::invalid(path, reason)
}

/// Parses and checks a Consent given as JSON text.
pub fn parse(json: &str) -> Result<Parsed, ConsentError> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| invalid("resource_json", format!("not valid JSON: {e}")))?;
    let Value::Object(body) = value else {
        return Err(invalid("resource_json", "must be a JSON object (a FHIR Consent)"));
    };
    match body.get("resourceType").and_then(Value::as_str) {
        Some("Consent") => {}
        Some(other) => {
            return Err(invalid(
                "resourceType",
                format!("{other:?}: consent stores Consent resources"),
            ));
        }
        None => return Err(invalid("resourceType", "is required (\"Consent\")")),
    }
    if let Some(unknown) = body
        .keys()
        .find(|k| !sharedcare_kit::fhir_elements::allowed("Consent", k))
    {
        return Err(invalid(unknown, "is not an element of Consent in FHIR R4"));
    }
    let id = match body.get("id") {
        None => None,
        Some(Value::String(s)) => {
            check_id("id", s)?;
            Some(s.clone())
        }
        Some(_) => return Err(invalid("id", "must be a string")),
    };
    let status = match body.get("status").and_then(Value::as_str) {
        Some(s) if STATUSES.contains(&s) => s.to_string(),
        Some(s) => {
            return Err(invalid(
                "status",
                format!("{s:?} is not one of {}", STATUSES.join(", ")),
            ));
        }
        None => return Err(invalid("status", "is required in every Consent")),
    };
    let scope = body
        .get("scope")
        .ok_or_else(|| invalid("scope", "is required in every Consent (patient-privacy)"))?;
    if !codes_of("scope", scope)?
        .iter()
        .any(|(s, c)| s == SCOPE_SYSTEM && c == "patient-privacy")
    {
        return Err(invalid(
            "scope",
            format!("Sharedcare enforces privacy consents only: scope must be {SCOPE_SYSTEM}|patient-privacy"),
        ));
    }
    match body.get("category") {
        Some(Value::Array(c)) if !c.is_empty() => {
            for (i, concept) in c.iter().enumerate() {
                codes_of(&format!("category[{i}]"), concept)?;
            }
        }
        Some(Value::Array(_)) | None => {
            return Err(invalid(
                "category",
                "is required in every Consent (e.g. LOINC 59284-0 Patient Consent)",
            ));
        }
        Some(_) => return Err(invalid("category", "must be an array of CodeableConcepts")),
    }
    if !body.contains_key("policy") && !body.contains_key("policyRule") {
        return Err(invalid(
            "policyRule",
            "a Consent needs a policyRule or a policy (R4 invariant ppc-1), e.g. v3-ActCode OPTIN or OPTOUT",
        ));
    }
    if let Some(t) = body.get("dateTime")
        && t.as_str().and_then(seconds).is_none()
    {
        return Err(invalid("dateTime", "must be a FHIR dateTime"));
    }
    let nhs_number = patient(body.get("patient"))?;
    if body.contains_key("modifierExtension") {
        return refuse(
            "modifierExtension",
            "Sharedcare does not know what these modifiers change",
        );
    }
    let root = body
        .get("provision")
        .ok_or_else(|| invalid("provision", "is required: it says what the patient permits or denies"))?;
    let provision = provision("provision", root, 0)?;
    if provision.kind.is_none() {
        return Err(invalid(
            "provision.type",
            "the root provision needs a type (permit or deny)",
        ));
    }
    Ok(Parsed {
        id,
        nhs_number,
        status,
        provision,
        body,
    })
}

/// A FHIR id: 1–64 of `A-Z a-z 0-9 - .`.
pub fn check_id(field: &str, id: &str) -> Result<(), ConsentError> {
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.') {
        return Err(invalid(
            field,
            format!("{id:?} is not a FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')"),
        ));
    }
    Ok(())
}

fn refuse<T>(path: &str, why: &str) -> Result<T, ConsentError> {
    Err(invalid(path, format!("is not enforced: {why}")))
}

/// `patient`: a Reference carrying the NHS number identifier.
fn patient(v: Option<&Value>) -> Result<NhsNumber, ConsentError> {
    let Some(r) = v else {
        return Err(invalid(
            "patient",
            "is required: the person whose choice this is, by NHS number identifier",
        ));
    };
    let ident = r.get("identifier").ok_or_else(|| {
        invalid(
            "patient.identifier",
            format!("is required: consent keys choices by NHS number ({{\"system\": \"{NHS_NUMBER_SYSTEM}\", \"value\": …}})"),
        )
    })?;
    if ident.get("system").and_then(Value::as_str) != Some(NHS_NUMBER_SYSTEM) {
        return Err(invalid(
            "patient.identifier.system",
            format!("must be {NHS_NUMBER_SYSTEM}"),
        ));
    }
    let value = ident
        .get("value")
        .and_then(Value::as_str)
        .ok_or_else(|| invalid("patient.identifier.value", "is required (the NHS number)"))?;
    NhsNumber::parse(value).map_err(|e| invalid("patient.identifier.value", e.to_string()))
}

/// The (system, code) pairs of a CodeableConcept.
fn codes_of(path: &str, v: &Value) -> Result<Vec<(String, String)>, ConsentError> {
    let Some(concept) = v.as_object() else {
        return Err(invalid(
            path,
            "must be a CodeableConcept (an object with coding and/or text)",
        ));
    };
    let mut out = Vec::new();
    match concept.get("coding") {
        None => {}
        Some(Value::Array(codings)) => {
            for (i, c) in codings.iter().enumerate() {
                out.push(coding(&format!("{path}.coding[{i}]"), c)?);
            }
        }
        Some(_) => return Err(invalid(&format!("{path}.coding"), "must be an array of Codings")),
    }
    if out.is_empty() && !concept.get("text").is_some_and(Value::is_string) {
        return Err(invalid(path, "needs a coding or text"));
    }
    Ok(out)
}

/// A Coding's (system, code), both required.
fn coding(path: &str, v: &Value) -> Result<(String, String), ConsentError> {
    let Some(c) = v.as_object() else {
        return Err(invalid(path, "must be a Coding (an object with system and code)"));
    };
    let part = |k: &str| match c.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(_) => Err(invalid(&format!("{path}.{k}"), "must be a non-empty string")),
        None => Err(invalid(&format!("{path}.{k}"), "is required")),
    };
    Ok((part("system")?, part("code")?))
}

/// The items of a repeating element (absent = none).
fn items<'a>(path: &str, v: Option<&'a Value>) -> Result<&'a [Value], ConsentError> {
    match v {
        None => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(invalid(path, "must be an array (it repeats)")),
    }
}

/// One provision (and, at depth 0, its exceptions).
fn provision(path: &str, v: &Value, depth: usize) -> Result<Provision, ConsentError> {
    let Some(p) = v.as_object() else {
        return Err(invalid(path, "must be an object (a Consent.provision)"));
    };
    let at = |k: &str| format!("{path}.{k}");
    let mut out = Provision::default();
    for (k, v) in p {
        match k.as_str() {
            "id" | "extension" => {}
            "type" => {
                out.kind = Some(match v.as_str() {
                    Some("permit") => Effect::Permit,
                    Some("deny") => Effect::Deny,
                    _ => return Err(invalid(&at("type"), "must be permit or deny")),
                })
            }
            "period" => out.period = Some(period(&at("period"), v)?),
            "actor" => {
                for (i, a) in items(&at("actor"), Some(v))?.iter().enumerate() {
                    actor(&format!("{path}.actor[{i}]"), a, &mut out)?;
                }
            }
            "action" => {
                for (i, a) in items(&at("action"), Some(v))?.iter().enumerate() {
                    let path = format!("{path}.action[{i}]");
                    for (system, code) in codes_of(&path, a)? {
                        for action in action(&path, &system, &code)? {
                            if !out.actions.contains(&action) {
                                out.actions.push(action);
                            }
                        }
                    }
                }
            }
            "purpose" => {
                for (i, c) in items(&at("purpose"), Some(v))?.iter().enumerate() {
                    let path = format!("{path}.purpose[{i}]");
                    let (system, code) = coding(&path, c)?;
                    if system != PURPOSE_SYSTEM {
                        return Err(invalid(
                            &format!("{path}.system"),
                            format!("must be {PURPOSE_SYSTEM} (e.g. TREAT, ETREAT, HRESCH)"),
                        ));
                    }
                    out.purposes.push(code);
                }
            }
            "securityLabel" => {
                for (i, c) in items(&at("securityLabel"), Some(v))?.iter().enumerate() {
                    let path = format!("{path}.securityLabel[{i}]");
                    let (system, code) = coding(&path, c)?;
                    if system != ACT_CODE_SYSTEM && system != CONFIDENTIALITY_SYSTEM {
                        return Err(invalid(
                            &format!("{path}.system"),
                            format!(
                                "must be {ACT_CODE_SYSTEM} or {CONFIDENTIALITY_SYSTEM}: records label data with those"
                            ),
                        ));
                    }
                    out.security_labels.push(code);
                }
            }
            "class" => {
                for (i, c) in items(&at("class"), Some(v))?.iter().enumerate() {
                    let path = format!("{path}.class[{i}]");
                    let (system, code) = coding(&path, c)?;
                    if system != RESOURCE_TYPE_SYSTEM {
                        return Err(invalid(
                            &format!("{path}.system"),
                            format!("must be {RESOURCE_TYPE_SYSTEM}: the record's classes are resource types"),
                        ));
                    }
                    out.security_labels.push(format!("{CLASS_PREFIX}{code}"));
                }
            }
            "code" => {
                for (i, c) in items(&at("code"), Some(v))?.iter().enumerate() {
                    let path = format!("{path}.code[{i}]");
                    let codes = codes_of(&path, c)?;
                    if codes.is_empty() {
                        return Err(invalid(&path, "needs a coding: text alone cannot be matched"));
                    }
                    for (system, code) in codes {
                        out.security_labels.push(format!("{CODE_PREFIX}{system}|{code}"));
                    }
                }
            }
            "provision" if depth == 0 => {
                for (i, n) in items(&at("provision"), Some(v))?.iter().enumerate() {
                    out.provision
                        .push(provision(&format!("{path}.provision[{i}]"), n, depth + 1)?);
                }
            }
            "provision" => {
                return refuse(
                    &at("provision"),
                    "Sharedcare enforces a root provision and one level of exceptions",
                );
            }
            "data" => {
                return refuse(
                    &at("data"),
                    "consent decides by category, class or code, not by named resources",
                );
            }
            "dataPeriod" => {
                return refuse(
                    &at("dataPeriod"),
                    "consent decides on what data is, not when it was recorded",
                );
            }
            "modifierExtension" => {
                return refuse(
                    &at("modifierExtension"),
                    "Sharedcare does not know what these modifiers change",
                );
            }
            other => return Err(invalid(&at(other), "is not an element of Consent.provision")),
        }
    }
    let kinds = ["securityLabel", "class", "code"]
        .into_iter()
        .filter(|k| p.contains_key(*k))
        .count();
    if kinds > 1 {
        return Err(invalid(
            &at("class"),
            "securityLabel, class and code in one provision is not enforced (each would widen the other); put each in its own nested provision",
        ));
    }
    Ok(out)
}

/// A FHIR date or dateTime as unix seconds (a date at midnight UTC, a year or month at its start).
pub fn seconds(s: &str) -> Option<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp());
    }
    let padded = match s.len() {
        4 => format!("{s}-01-01"),
        7 => format!("{s}-01"),
        _ => s.to_string(),
    };
    chrono::NaiveDate::parse_from_str(&padded, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp())
}

fn period(path: &str, v: &Value) -> Result<(i64, Option<i64>), ConsentError> {
    let Some(p) = v.as_object() else {
        return Err(invalid(path, "must be a Period (an object with start and/or end)"));
    };
    let when = |k: &str| -> Result<Option<i64>, ConsentError> {
        match p.get(k) {
            None => Ok(None),
            Some(t) => t.as_str().and_then(seconds).map(Some).ok_or_else(|| {
                invalid(
                    &format!("{path}.{k}"),
                    "must be a FHIR dateTime (e.g. 2026-12-01 or 2026-12-01T09:00:00Z)",
                )
            }),
        }
    };
    let (start, end) = (when("start")?, when("end")?);
    if let (Some(s), Some(e)) = (start, end)
        && e < s
    {
        return Err(invalid(&format!("{path}.end"), "is before the start"));
    }
    Ok((start.unwrap_or(0), end))
}

/// One `provision.actor`: a recipient organisation or job role.
fn actor(path: &str, v: &Value, out: &mut Provision) -> Result<(), ConsentError> {
    let role = v.get("role").ok_or_else(|| {
        invalid(
            &format!("{path}.role"),
            "is required (v3-ParticipationType PRCP: the recipient)",
        )
    })?;
    let recipient = codes_of(&format!("{path}.role"), role)?
        .iter()
        .any(|(s, c)| s == PARTICIPATION_SYSTEM && (c == "PRCP" || c == "IRCP"));
    if !recipient {
        return Err(invalid(
            &format!("{path}.role"),
            format!(
                "is not enforced unless it is a recipient ({PARTICIPATION_SYSTEM} PRCP or IRCP): consent decides who receives data"
            ),
        ));
    }
    let reference = v.get("reference").ok_or_else(|| {
        invalid(
            &format!("{path}.reference"),
            "is required (an Organization or PractitionerRole)",
        )
    })?;
    let Some(ident) = reference.get("identifier") else {
        return Err(invalid(
            &format!("{path}.reference.identifier"),
            format!(
                "is required: name an Organization by ODS code ({ODS_SYSTEM}) or a PractitionerRole by job role code ({JOB_ROLE_SYSTEM})"
            ),
        ));
    };
    let value = ident
        .get("value")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid(&format!("{path}.reference.identifier.value"), "is required"))?;
    let declared = reference.get("type").and_then(Value::as_str);
    match ident.get("system").and_then(Value::as_str) {
        Some(ODS_SYSTEM) if declared.is_none_or(|t| t == "Organization") => {
            out.organisations.push(value.to_ascii_uppercase())
        }
        Some(JOB_ROLE_SYSTEM) if declared.is_none_or(|t| t == "PractitionerRole") => out.roles.push(value.to_string()),
        _ => {
            return Err(invalid(
                &format!("{path}.reference.identifier.system"),
                format!("must be {ODS_SYSTEM} (an Organization) or {JOB_ROLE_SYSTEM} (a PractitionerRole)"),
            ));
        }
    }
    Ok(())
}

/// The policy's actions for one `provision.action` coding.
fn action(path: &str, system: &str, code: &str) -> Result<Vec<Action>, ConsentError> {
    use Action::*;
    let actions = match (system, code) {
        (ACTION_SYSTEM, "access" | "disclose") => vec![Read, Search],
        (ACTION_SYSTEM, "collect") => vec![Create],
        (ACTION_SYSTEM, "correct") => vec![Update, Delete],
        (ACTION_SYSTEM, "use") => {
            return Err(invalid(
                path,
                "\"use\" is not enforced: consent sees data leave the record, not how it is used after",
            ));
        }
        (INTERACTION_SYSTEM, "read" | "vread" | "history-instance") => vec![Read],
        (INTERACTION_SYSTEM, "search-type") => vec![Search],
        (INTERACTION_SYSTEM, "create") => vec![Create],
        (INTERACTION_SYSTEM, "update") => vec![Update],
        (INTERACTION_SYSTEM, "delete") => vec![Delete],
        _ => {
            return Err(invalid(
                path,
                format!(
                    "{system}|{code}: expected {ACTION_SYSTEM} (access, disclose, collect, correct) or {INTERACTION_SYSTEM}"
                ),
            ));
        }
    };
    Ok(actions)
}

/// The Consent for a directive stored before Consent was the format (its provision in the
/// policy's own form), so that every directive reads as FHIR.
pub fn render(id: &str, nhs: &str, status: &str, p: &Provision) -> Map<String, Value> {
    let deny_all = p.kind == Some(Effect::Deny) && p.security_labels.is_empty();
    let body = json!({
        "resourceType": "Consent",
        "id": id,
        "status": status,
        "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0", "display": "Patient Consent"}]}],
        "patient": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": nhs}},
        "policyRule": {"coding": [{"system": ACT_CODE_SYSTEM, "code": if deny_all { "OPTOUT" } else { "OPTIN" }}]},
        "provision": render_provision(p),
    });
    match body {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn time(s: i64) -> String {
    chrono::DateTime::from_timestamp(s, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn render_provision(p: &Provision) -> Value {
    let mut out = Map::new();
    if let Some(kind) = p.kind {
        out.insert(
            "type".into(),
            json!(if kind == Effect::Deny { "deny" } else { "permit" }),
        );
    }
    if let Some((start, end)) = p.period {
        let mut period = Map::new();
        period.insert("start".into(), json!(time(start)));
        if let Some(end) = end {
            period.insert("end".into(), json!(time(end)));
        }
        out.insert("period".into(), Value::Object(period));
    }
    let recipient = json!({"coding": [{"system": PARTICIPATION_SYSTEM, "code": "PRCP"}]});
    let mut actors: Vec<Value> = p
        .organisations
        .iter()
        .map(|o| json!({"role": recipient, "reference": {"type": "Organization", "identifier": {"system": ODS_SYSTEM, "value": o}}}))
        .collect();
    actors.extend(p.roles.iter().map(
        |r| json!({"role": recipient, "reference": {"type": "PractitionerRole", "identifier": {"system": JOB_ROLE_SYSTEM, "value": r}}}),
    ));
    if !actors.is_empty() {
        out.insert("actor".into(), Value::Array(actors));
    }
    if !p.actions.is_empty() {
        let codes: Vec<Value> = p
            .actions
            .iter()
            .map(|a| {
                let code = match a {
                    Action::Read => "read",
                    Action::Search => "search-type",
                    Action::Create => "create",
                    Action::Update => "update",
                    Action::Delete => "delete",
                };
                json!({"coding": [{"system": INTERACTION_SYSTEM, "code": code}]})
            })
            .collect();
        out.insert("action".into(), Value::Array(codes));
    }
    if !p.purposes.is_empty() {
        let purposes: Vec<Value> = p
            .purposes
            .iter()
            .map(|c| json!({"system": PURPOSE_SYSTEM, "code": c}))
            .collect();
        out.insert("purpose".into(), Value::Array(purposes));
    }
    let (mut labels, mut classes, mut codes) = (Vec::new(), Vec::new(), Vec::new());
    for token in &p.security_labels {
        if let Some(class) = token.strip_prefix(CLASS_PREFIX) {
            classes.push(json!({"system": RESOURCE_TYPE_SYSTEM, "code": class}));
        } else if let Some((system, code)) = token.strip_prefix(CODE_PREFIX).and_then(|t| t.split_once('|')) {
            codes.push(json!({"coding": [{"system": system, "code": code}]}));
        } else {
            labels.push(json!({"system": ACT_CODE_SYSTEM, "code": token}));
        }
    }
    for (name, list) in [("securityLabel", labels), ("class", classes), ("code", codes)] {
        if !list.is_empty() {
            out.insert(name.into(), Value::Array(list));
        }
    }
    if !p.provision.is_empty() {
        out.insert(
            "provision".into(),
            Value::Array(p.provision.iter().map(render_provision).collect()),
        );
    }
    Value::Object(out)
}

/// Sets `id`, `meta.versionId` and `meta.lastUpdated` on a Consent.
pub fn stamp(body: &mut Map<String, Value>, id: &str, version: i64, updated_at: i64) {
    body.insert("id".into(), json!(id));
    let meta = body.entry("meta").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    if let Value::Object(meta) = meta {
        meta.insert("versionId".into(), json!(version.to_string()));
        meta.insert("lastUpdated".into(), json!(time(updated_at)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NHS: &str = "9434765919";

    /// A Consent for the demo patient with `provision`.
    fn consent(provision: Value) -> String {
        json!({
            "resourceType": "Consent", "status": "active",
            "scope": {"coding": [{"system": SCOPE_SYSTEM, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": NHS}},
            "policyRule": {"coding": [{"system": ACT_CODE_SYSTEM, "code": "OPTIN"}]},
            "provision": provision,
        })
        .to_string()
    }

    fn err(json: &str) -> String {
        parse(json).expect_err("refused").to_string()
    }

    #[test]
    fn every_supported_element_reaches_the_policy() {
        let p = parse(&consent(json!({
            "type": "permit",
            "period": {"start": "2026-01-01", "end": "2027-01-01T00:00:00Z"},
            "provision": [
                {"type": "deny", "securityLabel": [{"system": ACT_CODE_SYSTEM, "code": "SEX"}]},
                {"type": "deny", "class": [{"system": RESOURCE_TYPE_SYSTEM, "code": "Immunization"}]},
                {"type": "deny", "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]}]},
                {"type": "deny",
                 "actor": [{"role": {"coding": [{"system": PARTICIPATION_SYSTEM, "code": "PRCP"}]},
                            "reference": {"identifier": {"system": ODS_SYSTEM, "value": "rx1"}}},
                           {"role": {"coding": [{"system": PARTICIPATION_SYSTEM, "code": "PRCP"}]},
                            "reference": {"type": "PractitionerRole", "identifier": {"system": JOB_ROLE_SYSTEM, "value": "R8010"}}}],
                 "action": [{"coding": [{"system": ACTION_SYSTEM, "code": "access"}]}],
                 "purpose": [{"system": PURPOSE_SYSTEM, "code": "HRESCH"}]}
            ]
        })))
        .expect("valid");
        assert_eq!(p.nhs_number.as_str(), NHS);
        let root = &p.provision;
        assert_eq!(root.kind, Some(Effect::Permit));
        assert_eq!(root.period, Some((1_767_225_600, Some(1_798_761_600))));
        assert_eq!(root.provision[0].security_labels, ["SEX"]);
        assert_eq!(root.provision[1].security_labels, ["class:Immunization"]);
        assert_eq!(
            root.provision[2].security_labels,
            ["code:http://snomed.info/sct|35489007"]
        );
        let who = &root.provision[3];
        assert_eq!(
            (who.organisations.as_slice(), who.roles.as_slice()),
            (&["RX1".to_string()][..], &["R8010".to_string()][..])
        );
        assert_eq!(who.actions, [Action::Read, Action::Search]);
        assert_eq!(who.purposes, ["HRESCH"]);
    }

    #[test]
    fn what_the_policy_cannot_enforce_is_refused_by_its_path() {
        let label = json!([{"system": ACT_CODE_SYSTEM, "code": "SEX"}]);
        let cases = [
            (
                json!({"type": "deny", "data": [{"meaning": "instance", "reference": {"reference": "Condition/1"}}]}),
                "provision.data: is not enforced",
            ),
            (
                json!({"type": "deny", "dataPeriod": {"start": "2020"}}),
                "provision.dataPeriod: is not enforced",
            ),
            (
                json!({"type": "permit", "provision": [{"type": "deny", "provision": [{"type": "permit"}]}]}),
                "provision.provision[0].provision: is not enforced",
            ),
            (
                json!({"type": "deny", "action": [{"coding": [{"system": ACTION_SYSTEM, "code": "use"}]}]}),
                "provision.action[0]: \"use\" is not enforced",
            ),
            (
                json!({"type": "deny", "securityLabel": label, "class": [{"system": RESOURCE_TYPE_SYSTEM, "code": "Observation"}]}),
                "provision.class: securityLabel, class and code in one provision",
            ),
            (
                json!({"type": "deny", "securityLabel": ["SEX"]}),
                "provision.securityLabel[0]: must be a Coding",
            ),
            (
                json!({"type": "deny", "securityLabel": [{"system": "http://example.org", "code": "SEX"}]}),
                "provision.securityLabel[0].system: must be",
            ),
            (
                json!({"type": "deny", "purpose": [{"system": PURPOSE_SYSTEM}]}),
                "provision.purpose[0].code: is required",
            ),
            (
                json!({"type": "deny", "period": {"start": 1700000000}}),
                "provision.period.start: must be a FHIR dateTime",
            ),
            (
                json!({"type": "deny", "period": {"start": "2027-01-01", "end": "2026-01-01"}}),
                "provision.period.end: is before the start",
            ),
            (
                json!({"type": "deny", "actor": [{"role": {"coding": [{"system": PARTICIPATION_SYSTEM, "code": "AUT"}]},
                     "reference": {"identifier": {"system": ODS_SYSTEM, "value": "RX1"}}}]}),
                "provision.actor[0].role: is not enforced",
            ),
            (
                json!({"type": "deny", "actor": [{"role": {"coding": [{"system": PARTICIPATION_SYSTEM, "code": "PRCP"}]},
                     "reference": {"reference": "Organization/123"}}]}),
                "provision.actor[0].reference.identifier: is required",
            ),
            (
                json!({"type": "deny", "modifierExtension": [{"url": "x"}]}),
                "provision.modifierExtension: is not enforced",
            ),
            (
                json!({"type": "deny", "subject": "x"}),
                "provision.subject: is not an element",
            ),
            (json!({"type": "maybe"}), "provision.type: must be permit or deny"),
            (
                json!({"provision": []}),
                "provision.type: the root provision needs a type",
            ),
        ];
        for (provision, want) in cases {
            let got = err(&consent(provision.clone()));
            assert!(got.starts_with(want), "{provision}\n  got:  {got}\n  want: {want}…");
        }
    }

    #[test]
    fn the_consent_itself_is_checked() {
        let good: Value = serde_json::from_str(&consent(json!({"type": "deny"}))).expect("json");
        let without = |k: &str| {
            let mut v = good.clone();
            v.as_object_mut().expect("object").remove(k);
            v.to_string()
        };
        let with = |k: &str, x: Value| {
            let mut v = good.clone();
            v[k] = x;
            v.to_string()
        };
        assert!(err(&without("status")).starts_with("status: is required"));
        assert!(err(&with("status", json!("agreed"))).starts_with("status: \"agreed\" is not one of"));
        assert!(err(&without("scope")).starts_with("scope: is required"));
        assert!(
            err(&with(
                "scope",
                json!({"coding": [{"system": SCOPE_SYSTEM, "code": "research"}]})
            ))
            .starts_with("scope: Sharedcare enforces privacy consents only")
        );
        assert!(err(&without("category")).starts_with("category: is required"));
        assert!(err(&without("policyRule")).starts_with("policyRule: a Consent needs a policyRule or a policy"));
        assert!(
            err(&with("patient", json!({"reference": "Patient/p1"}))).starts_with("patient.identifier: is required")
        );
        assert!(
            err(&with(
                "patient",
                json!({"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9434765918"}})
            ))
            .starts_with("patient.identifier.value:")
        );
        assert!(err(&with("resourceType", json!("Patient"))).starts_with("resourceType:"));
        assert!(err(&with("id", json!("a b"))).starts_with("id:"));
        assert!(err(&without("provision")).starts_with("provision: is required"));
        assert!(err(&with("modifierExtension", json!([]))).starts_with("modifierExtension: is not enforced"));
    }

    #[test]
    fn a_stored_directive_renders_as_a_consent_that_parses_back_to_it() {
        let legacy: Provision = serde_json::from_value(json!({
            "type": "permit",
            "period": [1_767_225_600, null],
            "provision": [
                {"type": "deny", "securityLabel": ["MH"]},
                {"type": "deny", "organisations": ["RX1"], "roles": ["R8000"], "actions": ["read", "search"], "purposes": ["HRESCH"]}
            ]
        }))
        .expect("legacy provision");
        let body = render("d1", NHS, "active", &legacy);
        let back = parse(&Value::Object(body).to_string()).expect("renders valid");
        assert_eq!(back.provision, legacy);
        assert_eq!(back.id.as_deref(), Some("d1"));
    }
}
