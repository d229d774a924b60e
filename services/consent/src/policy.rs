//! The consent decision: who may do what with a patient's record, for what purpose, given the
//! patient's directives, the national data opt-out, the GP dissent flag, care relationships and
//! break-glass grants. A pure function of its inputs ([`decide`]); the service loads the facts.
//!
//! Directives follow FHIR R4 `Consent.provision`: a root provision whose `type` (permit/deny)
//! applies to everything its conditions match, and nested provisions that are exceptions to it.
//! A nested provision with `securityLabel`s acts on those categories only (withholding them, or
//! releasing them from a deny), without counting or naming what is in the record.
//!
//! Order of the rules (the first that decides wins, and every rule consulted is reported):
//! 1. the patient at P9 (or their authorised representative) may read their own record; below P9 not;
//! 2. the national data opt-out denies every purpose other than direct care;
//! 3. staff need a legitimate relationship (their organisation cares for the patient now) or an
//!    active break-glass grant for emergency treatment; systems (client-credentials tokens) are
//!    authorised by their scope instead;
//!    then a write is permitted: recording care delivered is not sharing it, so directives and
//!    dissent govern who reads, not what a provider may record;
//! 4. the GP dissent flag keeps the record within the registered GP practice; patient consent at
//!    the point of care cannot lift it, only break-glass in an emergency;
//! 5. break-glass permits the whole record (audited, reviewed);
//! 6. the patient's active directives: whole-record deny, category withholding, named
//!    organisation or role permits/denies, time limits;
//! 7. otherwise direct care within a relationship is permitted.

use serde::{Deserialize, Serialize};
use sharedcare_kit::pdp::is_label;

/// Purposes of use that are direct care (HL7 v3 PurposeOfUse): the national data opt-out does
/// not apply to them.
pub const DIRECT_CARE: &[&str] = &["TREAT", "ETREAT", "BTG", "CAREMGT", "PATRQT", "POPHLTH-DIRECT"];

/// What is being done.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read a resource.
    Read,
    /// Search the record.
    Search,
    /// Create a resource.
    Create,
    /// Update a resource.
    Update,
    /// Delete a resource (a new version marked deleted; its history is kept).
    Delete,
}

impl Action {
    /// Parses the FHIR interaction name.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "read" | "vread" | "history" => Some(Action::Read),
            "search" | "search-type" => Some(Action::Search),
            "create" => Some(Action::Create),
            "update" => Some(Action::Update),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }
    fn reads(self) -> bool {
        matches!(self, Action::Read | Action::Search)
    }
}

/// Who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// Staff in a selected role at an organisation.
    Staff {
        /// Person id (nhsid_useruid).
        person: String,
        /// ODS code of the role's organisation.
        org: String,
        /// National RBAC role code.
        role: String,
    },
    /// A patient (or a representative acting for one).
    Patient {
        /// Their own NHS number.
        nhs_number: String,
        /// P0, P5 or P9.
        proofing: sharedcare_kit::nhs::ProofingLevel,
    },
    /// A system acting for an organisation (client_credentials).
    Service {
        /// Client id.
        client_id: String,
        /// Organisation the service acts for, when known.
        org: String,
    },
}

/// A legitimate relationship between an organisation and the patient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Relationship {
    /// Organisation (ODS code).
    pub org: String,
    /// gp_registration | encounter | episode_of_care | care_package | referral
    pub kind: String,
    /// Start (unix seconds).
    pub start: i64,
    /// End (unix seconds); `None` while ongoing.
    pub end: Option<i64>,
}

impl Relationship {
    fn active(&self, now: i64) -> bool {
        self.start <= now && self.end.is_none_or(|e| now < e)
    }
}

/// A break-glass grant: a member of staff without a relationship, in an emergency.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakGlass {
    /// The person.
    pub person: String,
    /// Their organisation.
    pub org: String,
    /// Start and end (unix seconds).
    pub start: i64,
    /// When the grant lapses.
    pub end: i64,
}

/// An authorised representative (e.g. lasting power of attorney for health and welfare).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Representative {
    /// The representative's own NHS number.
    pub nhs_number: String,
    /// Start (unix seconds).
    pub start: i64,
    /// End, if any.
    pub end: Option<i64>,
}

/// `Consent.provision.type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    /// permit
    Permit,
    /// deny
    Deny,
}

/// A provision (FHIR R4 `Consent.provision`), with the elements Sharedcare acts on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provision {
    /// permit or deny; `None` on the root means "no change to the default".
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Effect>,
    /// Period `[start, end)` in unix seconds during which it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<(i64, Option<i64>)>,
    /// Organisations (ODS codes) it is about; empty = anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub organisations: Vec<String>,
    /// National RBAC role codes it is about; empty = any role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    /// Actions it is about; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub actions: Vec<Action>,
    /// Purposes of use; empty = all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub purposes: Vec<String>,
    /// What data it is about: sensitivity labels (meta.security codes), `class:{type}` and
    /// `code:{system}|{code}` categories (from FHIR `securityLabel`, `class` and `code`); empty
    /// = the whole record.
    #[serde(default, rename = "securityLabel", skip_serializing_if = "Vec::is_empty")]
    pub security_labels: Vec<String>,
    /// Exceptions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provision: Vec<Provision>,
}

/// A patient's directive (a FHIR Consent with scope patient-privacy).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directive {
    /// Its id.
    pub id: String,
    /// active | inactive | rejected | entered-in-error | proposed | draft
    pub status: String,
    /// The root provision.
    pub provision: Provision,
}

/// What is known about the patient when deciding.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Directives (all statuses; only active ones count).
    pub directives: Vec<Directive>,
    /// The national data opt-out is registered.
    pub national_opt_out: bool,
    /// The GP dissent flag is set.
    pub gp_dissent: bool,
    /// Care relationships.
    pub relationships: Vec<Relationship>,
    /// Break-glass grants.
    pub break_glass: Vec<BreakGlass>,
    /// Authorised representatives.
    pub representatives: Vec<Representative>,
}

/// One decision request.
#[derive(Clone, Debug)]
pub struct Ask {
    /// Who.
    pub who: Who,
    /// The patient.
    pub nhs_number: String,
    /// What.
    pub action: Action,
    /// Categories present in the data concerned (may be empty).
    pub categories: Vec<String>,
    /// Purpose of use.
    pub purpose: String,
    /// Now (unix seconds).
    pub now: i64,
}

/// The decision, as a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Everything asked for.
    Permit,
    /// Nothing.
    Deny,
    /// Everything except these categories (the caller removes them and says categories were
    /// withheld, without saying which resources or how many).
    Withhold(Vec<String>),
}

/// A decision with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// The decision.
    pub decision: Decision,
    /// One sentence for humans and the audit entry.
    pub reason: String,
    /// The rules consulted, in order (e.g. "relationship:gp_registration:A81001").
    pub rules: Vec<String>,
    /// Break-glass was the basis (the audit entry records purpose BTG and the reason).
    pub break_glass: bool,
}

fn outcome(decision: Decision, reason: impl Into<String>, rules: Vec<String>, break_glass: bool) -> Outcome {
    Outcome {
        decision,
        reason: reason.into(),
        rules,
        break_glass,
    }
}

fn in_period(p: &Option<(i64, Option<i64>)>, now: i64) -> bool {
    match p {
        None => true,
        Some((start, end)) => *start <= now && end.is_none_or(|e| now < e),
    }
}

/// Whether a provision's conditions (other than security labels) match this request.
fn matches(p: &Provision, ask: &Ask, org: &str, role: &str) -> bool {
    in_period(&p.period, ask.now)
        && (p.organisations.is_empty() || p.organisations.iter().any(|o| o.eq_ignore_ascii_case(org)))
        && (p.roles.is_empty() || p.roles.iter().any(|r| role.contains(r.as_str())))
        && (p.actions.is_empty() || p.actions.contains(&ask.action))
        && (p.purposes.is_empty() || p.purposes.contains(&ask.purpose))
}

/// What one directive says about a request.
struct Applied {
    /// Whole-record effect.
    effect: Effect,
    /// Categories withheld.
    withheld: Vec<String>,
    /// When the base is deny but some categories are released: only these may be seen.
    only: Option<Vec<String>>,
}

/// Applies one active directive: `None` when it says nothing about this request.
fn apply(d: &Directive, ask: &Ask, org: &str, role: &str) -> Option<Applied> {
    let root = &d.provision;
    if !matches(root, ask, org, role) {
        return None;
    }
    let kind = root.kind?;
    if !root.security_labels.is_empty() {
        // A root with labels acts on those categories only.
        return (kind == Effect::Deny).then(|| Applied {
            effect: Effect::Permit,
            withheld: root.security_labels.clone(),
            only: None,
        });
    }
    let mut a = Applied {
        effect: kind,
        withheld: Vec::new(),
        only: None,
    };
    for n in root.provision.iter().filter(|n| matches(n, ask, org, role)) {
        match (n.kind.unwrap_or(Effect::Deny), n.security_labels.is_empty()) {
            (kind, true) => a.effect = kind,
            (Effect::Deny, false) => a.withheld.extend(n.security_labels.iter().cloned()),
            (Effect::Permit, false) if a.effect == Effect::Deny => {
                a.effect = Effect::Permit;
                a.only = Some(n.security_labels.clone());
            }
            (Effect::Permit, false) => {}
        }
    }
    Some(a)
}

/// Decides. Pure: the same inputs always give the same outcome.
pub fn decide(ask: &Ask, facts: &Facts) -> Outcome {
    let now = ask.now;
    let mut rules = Vec::new();
    // 1. Patients and their representatives.
    if let Who::Patient { nhs_number, proofing } = &ask.who {
        let own = *nhs_number == ask.nhs_number;
        let represents = facts
            .representatives
            .iter()
            .any(|r| r.nhs_number == *nhs_number && r.start <= now && r.end.is_none_or(|e| now < e));
        if !own && !represents {
            rules.push("patient:not-self".into());
            return outcome(
                Decision::Deny,
                "a patient may only see their own record or one they represent",
                rules,
                false,
            );
        }
        rules.push(if own {
            "patient:self".into()
        } else {
            "patient:representative".to_string()
        });
        if !proofing.sees_own_record() {
            rules.push(format!("proofing:{proofing}"));
            return outcome(
                Decision::Deny,
                "identity proofing level P9 is needed to see a record",
                rules,
                false,
            );
        }
        if !ask.action.reads() {
            return outcome(
                Decision::Deny,
                "patients change their record through their care providers",
                rules,
                false,
            );
        }
        return outcome(
            Decision::Permit,
            "patients at P9 may always read their own record",
            rules,
            false,
        );
    }
    // 2. The national data opt-out.
    let direct_care = DIRECT_CARE.contains(&ask.purpose.as_str());
    if !direct_care && facts.national_opt_out {
        rules.push("national-data-opt-out".into());
        return outcome(
            Decision::Deny,
            format!("the national data opt-out applies to purpose {}", ask.purpose),
            rules,
            false,
        );
    }
    let (person, org, role) = match &ask.who {
        Who::Staff { person, org, role } => (person.as_str(), org.as_str(), role.as_str()),
        Who::Service { org, .. } => ("", org.as_str(), ""),
        Who::Patient { .. } => unreachable!("patients were decided above"),
    };
    // 3. Relationship or break-glass; systems are authorised by their scope instead.
    let system = matches!(ask.who, Who::Service { .. });
    let relationship = facts
        .relationships
        .iter()
        .find(|r| r.active(now) && !org.is_empty() && r.org.eq_ignore_ascii_case(org));
    let emergency = matches!(ask.purpose.as_str(), "ETREAT" | "BTG");
    let glass = facts
        .break_glass
        .iter()
        .find(|g| emergency && g.person == person && !person.is_empty() && g.start <= now && now < g.end);
    match (relationship, glass) {
        (Some(r), _) => rules.push(format!("relationship:{}:{}", r.kind, r.org)),
        (None, _) if system => rules.push("system".into()),
        (None, Some(_)) => rules.push("break-glass".into()),
        (None, None) => {
            let ended = facts
                .relationships
                .iter()
                .any(|r| r.org.eq_ignore_ascii_case(org) && r.end.is_some_and(|e| e <= now));
            rules.push(if ended {
                "relationship:ended".into()
            } else {
                "relationship:none".to_string()
            });
            let why = if ended {
                "the organisation's care relationship with the patient has ended"
            } else {
                "the organisation has no legitimate care relationship with the patient; break-glass is available for emergencies"
            };
            return outcome(Decision::Deny, why, rules, false);
        }
    }
    // Recording care is not sharing it: a write by a caller with a relationship (or a system,
    // or under break-glass) is stored whatever the directives say; they govern who reads it.
    if !ask.action.reads() {
        return outcome(
            Decision::Permit,
            "recording care delivered: directives and dissent govern who may read it",
            rules,
            glass.is_some() && relationship.is_none() && !system,
        );
    }
    // 4. GP dissent.
    if facts.gp_dissent {
        let is_gp = relationship.is_some_and(|r| r.kind == "gp_registration");
        if !is_gp && glass.is_none() {
            rules.push("gp-dissent".into());
            return outcome(
                Decision::Deny,
                "the patient has dissented from sharing their GP record outside the practice",
                rules,
                false,
            );
        }
    }
    // 5. Break-glass (no relationship): the whole record, audited.
    if relationship.is_none() && !system {
        return outcome(
            Decision::Permit,
            "break-glass: emergency access granted and audited",
            rules,
            true,
        );
    }
    // 6. Directives.
    let mut withheld: Vec<String> = Vec::new();
    let mut only: Option<Vec<String>> = None;
    for d in facts.directives.iter().filter(|d| d.status == "active") {
        if let Some(a) = apply(d, ask, org, role) {
            rules.push(format!("directive:{}", d.id));
            if a.effect == Effect::Deny {
                return outcome(
                    Decision::Deny,
                    "the patient's consent directive denies this access",
                    rules,
                    false,
                );
            }
            withheld.extend(a.withheld);
            if a.only.is_some() {
                only = a.only;
            }
        }
    }
    if let Some(allowed) = only {
        // Released by class or code: data of a released class, or carrying a released code.
        if ask.categories.iter().any(|c| !is_label(c) && allowed.contains(c)) {
            return outcome(Decision::Permit, "permitted by the patient's directive", rules, false);
        }
        // Released by label: only data whose every label is released; everything else asked
        // for is withheld.
        let mut hidden: Vec<String> = ask
            .categories
            .iter()
            .filter(|c| is_label(c) && !allowed.contains(c))
            .cloned()
            .collect();
        hidden.sort();
        hidden.dedup();
        if hidden.is_empty() && !ask.categories.iter().any(|c| is_label(c)) {
            return outcome(
                Decision::Deny,
                "the patient's directive releases only named categories",
                rules,
                false,
            );
        }
        return if hidden.is_empty() {
            outcome(Decision::Permit, "permitted by the patient's directive", rules, false)
        } else {
            outcome(
                Decision::Withhold(hidden),
                "categories withheld by the patient's directive",
                rules,
                false,
            )
        };
    }
    withheld.sort();
    withheld.dedup();
    // Labels are reported when asked about (or when nothing was named); classes and codes
    // always, since a caller asking about a whole record cannot name every code in it.
    let present: Vec<String> = if ask.categories.is_empty() {
        withheld
    } else {
        withheld
            .into_iter()
            .filter(|c| !is_label(c) || ask.categories.contains(c))
            .collect()
    };
    if !present.is_empty() {
        return outcome(
            Decision::Withhold(present),
            "categories withheld by the patient's directive",
            rules,
            false,
        );
    }
    // 7. Direct care within a relationship.
    if !direct_care {
        rules.push(format!("purpose:{}", ask.purpose));
    }
    outcome(
        Decision::Permit,
        "direct care within a legitimate relationship",
        rules,
        false,
    )
}

#[cfg(test)]
mod scenarios {
    use super::*;
    use crate::fhir;
    use serde_json::{Value, json};

    const NHS: &str = "9434765919";
    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;
    const GP: &str = "A81001";
    const TRUST: &str = "RX1";
    const CARE_HOME: &str = "VN1C4";

    fn staff(org: &str) -> Who {
        Who::Staff {
            person: format!("person-at-{org}"),
            org: org.into(),
            role: "S8000:G8000:R8000".into(),
        }
    }

    fn nurse(org: &str) -> Who {
        Who::Staff {
            person: format!("nurse-at-{org}"),
            org: org.into(),
            role: "S8000:G8000:R8001".into(),
        }
    }

    fn system() -> Who {
        Who::Service {
            client_id: "ics-integration".into(),
            org: String::new(),
        }
    }

    fn patient(nhs: &str, level: &str) -> Who {
        Who::Patient {
            nhs_number: nhs.into(),
            proofing: sharedcare_kit::nhs::ProofingLevel::parse(level).expect("a proofing level"),
        }
    }

    fn ask(who: Who, action: Action, purpose: &str, categories: &[&str]) -> Ask {
        Ask {
            who,
            nhs_number: NHS.into(),
            action,
            categories: categories.iter().map(|c| c.to_string()).collect(),
            purpose: purpose.into(),
            now: NOW,
        }
    }

    fn rel(org: &str, kind: &str, start: i64, end: Option<i64>) -> Relationship {
        Relationship {
            org: org.into(),
            kind: kind.into(),
            start,
            end,
        }
    }

    /// The usual facts: registered at the GP, an open episode at the trust.
    fn cared_for() -> Facts {
        Facts {
            relationships: vec![
                rel(GP, "gp_registration", NOW - 365 * DAY, None),
                rel(TRUST, "episode_of_care", NOW - DAY, None),
            ],
            ..Facts::default()
        }
    }

    /// A directive written as a FHIR R4 Consent with `provision`, through the parser every
    /// directive goes through: the scenarios run on what a FHIR client writes.
    fn directive(id: &str, provision: Value) -> Directive {
        let consent = json!({
            "resourceType": "Consent", "id": id, "status": "active",
            "scope": {"coding": [{"system": fhir::SCOPE_SYSTEM, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"identifier": {"system": sharedcare_kit::nhs::NHS_NUMBER_SYSTEM, "value": NHS}},
            "policyRule": {"coding": [{"system": fhir::ACT_CODE_SYSTEM, "code": "OPTIN"}]},
            "provision": provision,
        });
        let parsed = fhir::parse(&consent.to_string()).unwrap_or_else(|e| panic!("{id}: {e}"));
        Directive {
            id: id.into(),
            status: parsed.status,
            provision: parsed.provision,
        }
    }

    fn deny_all() -> Value {
        json!({"type": "deny"})
    }

    fn permit_all_but(nested: Vec<Value>) -> Value {
        json!({"type": "permit", "provision": nested})
    }

    fn labels(labels: &[&str]) -> Value {
        labels
            .iter()
            .map(|l| json!({"system": fhir::ACT_CODE_SYSTEM, "code": l}))
            .collect()
    }

    fn withhold(l: &[&str]) -> Value {
        json!({"type": "deny", "securityLabel": labels(l)})
    }

    /// A recipient named by ODS code (`Organization`) or job role code (`PractitionerRole`).
    fn recipient(kind: &str, system: &str, value: &str) -> Value {
        json!([{"role": {"coding": [{"system": fhir::PARTICIPATION_SYSTEM, "code": "PRCP"}]},
                "reference": {"type": kind, "identifier": {"system": system, "value": value}}}])
    }

    fn deny_org(org: &str) -> Value {
        permit_all_but(vec![
            json!({"type": "deny", "actor": recipient("Organization", fhir::ODS_SYSTEM, org)}),
        ])
    }

    fn only_org(org: &str) -> Value {
        json!({"type": "deny", "provision": [{"type": "permit", "actor": recipient("Organization", fhir::ODS_SYSTEM, org)}]})
    }

    fn deny_role(role: &str) -> Value {
        permit_all_but(vec![
            json!({"type": "deny", "actor": recipient("PractitionerRole", fhir::JOB_ROLE_SYSTEM, role)}),
        ])
    }

    /// A FHIR dateTime for unix seconds.
    fn at(secs: i64) -> String {
        chrono::DateTime::from_timestamp(secs, 0)
            .expect("a time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    fn with(mut f: Facts, change: impl FnOnce(&mut Facts)) -> Facts {
        change(&mut f);
        f
    }

    struct Case {
        name: &'static str,
        ask: Ask,
        facts: Facts,
        want: Decision,
        rule: &'static str,
        glass: bool,
    }

    fn case(name: &'static str, ask: Ask, facts: Facts, want: Decision, rule: &'static str) -> Case {
        Case {
            name,
            ask,
            facts,
            want,
            rule,
            glass: false,
        }
    }

    fn glass_grant(person: &str, org: &str, start: i64, end: i64) -> BreakGlass {
        BreakGlass {
            person: person.into(),
            org: org.into(),
            start,
            end,
        }
    }

    fn cases() -> Vec<Case> {
        use Action::*;
        let w = |v: &[&str]| Decision::Withhold(v.iter().map(|s| s.to_string()).collect());
        vec![
            case(
                "GP reads within registration",
                ask(staff(GP), Read, "TREAT", &[]),
                cared_for(),
                Decision::Permit,
                "relationship:gp_registration:A81001",
            ),
            case(
                "trust reads during an episode",
                ask(staff(TRUST), Read, "TREAT", &[]),
                cared_for(),
                Decision::Permit,
                "relationship:episode_of_care:RX1",
            ),
            case(
                "trust writes during an episode",
                ask(staff(TRUST), Create, "TREAT", &[]),
                cared_for(),
                Decision::Permit,
                "relationship:episode_of_care:RX1",
            ),
            case(
                "care home without a relationship",
                ask(staff(CARE_HOME), Read, "TREAT", &[]),
                cared_for(),
                Decision::Deny,
                "relationship:none",
            ),
            case(
                "care home with a care package",
                ask(staff(CARE_HOME), Search, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.relationships
                        .push(rel(CARE_HOME, "care_package", NOW - 10 * DAY, None))
                }),
                Decision::Permit,
                "relationship:care_package:VN1C4",
            ),
            case(
                "relationship ended",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| f.relationships[1].end = Some(NOW - 1)),
                Decision::Deny,
                "relationship:ended",
            ),
            case(
                "relationship not started yet",
                ask(staff(CARE_HOME), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.relationships.push(rel(CARE_HOME, "referral", NOW + DAY, None))
                }),
                Decision::Deny,
                "relationship:none",
            ),
            case(
                "opted out of the shared record",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
                Decision::Deny,
                "directive:optout",
            ),
            case(
                "opt-out that is no longer active",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    let mut d = directive("old", deny_all());
                    d.status = "inactive".into();
                    f.directives.push(d);
                }),
                Decision::Permit,
                "relationship:episode_of_care:RX1",
            ),
            case(
                "mental health withheld, present in the data",
                ask(staff(TRUST), Read, "TREAT", &["MH", "N"]),
                with(cared_for(), |f| {
                    f.directives
                        .push(directive("mh", permit_all_but(vec![withhold(&["MH"])])))
                }),
                w(&["MH"]),
                "directive:mh",
            ),
            case(
                "mental health withheld, not in the data",
                ask(staff(TRUST), Read, "TREAT", &["N"]),
                with(cared_for(), |f| {
                    f.directives
                        .push(directive("mh", permit_all_but(vec![withhold(&["MH"])])))
                }),
                Decision::Permit,
                "directive:mh",
            ),
            case(
                "several categories withheld by one root-level label directive",
                ask(staff(TRUST), Search, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.directives.push(directive("sens", withhold(&["SEX", "ETH"])))
                }),
                w(&["ETH", "SEX"]),
                "directive:sens",
            ),
            case(
                "organisation named and denied",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.directives.push(directive("no-trust", deny_org(TRUST)))
                }),
                Decision::Deny,
                "directive:no-trust",
            ),
            case(
                "another organisation unaffected by that denial",
                ask(staff(GP), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.directives.push(directive("no-trust", deny_org(TRUST)))
                }),
                Decision::Permit,
                "directive:no-trust",
            ),
            case(
                "deny everyone except the GP",
                ask(staff(GP), Read, "TREAT", &[]),
                with(cared_for(), |f| f.directives.push(directive("gp-only", only_org(GP)))),
                Decision::Permit,
                "directive:gp-only",
            ),
            case(
                "deny everyone except the GP, trust asks",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| f.directives.push(directive("gp-only", only_org(GP)))),
                Decision::Deny,
                "directive:gp-only",
            ),
            case(
                "a role denied (nurses), a doctor unaffected",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.directives.push(directive("no-nurses", deny_role("R8001")))
                }),
                Decision::Permit,
                "directive:no-nurses",
            ),
            case(
                "a role denied (nurses), a nurse asks",
                ask(nurse(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.directives.push(directive("no-nurses", deny_role("R8001")))
                }),
                Decision::Deny,
                "directive:no-nurses",
            ),
            case(
                "a time-limited opt-out in force",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "for-a-month",
                        json!({"type": "deny", "period": {"start": at(NOW - DAY), "end": at(NOW + 29 * DAY)}}),
                    ))
                }),
                Decision::Deny,
                "directive:for-a-month",
            ),
            case(
                "a time-limited opt-out that has lapsed",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "last-year",
                        json!({"type": "deny", "period": {"start": at(NOW - 400 * DAY), "end": at(NOW - 35 * DAY)}}),
                    ))
                }),
                Decision::Permit,
                "relationship:episode_of_care:RX1",
            ),
            Case {
                glass: true,
                ..case(
                    "break-glass granted, no relationship",
                    ask(staff(CARE_HOME), Read, "ETREAT", &[]),
                    with(cared_for(), |f| {
                        f.break_glass
                            .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 60, NOW + 3600))
                    }),
                    Decision::Permit,
                    "break-glass",
                )
            },
            case(
                "break-glass expired",
                ask(staff(CARE_HOME), Read, "ETREAT", &[]),
                with(cared_for(), |f| {
                    f.break_glass
                        .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 7200, NOW - 3600))
                }),
                Decision::Deny,
                "relationship:none",
            ),
            case(
                "break-glass is personal: a colleague cannot use it",
                ask(nurse(CARE_HOME), Read, "ETREAT", &[]),
                with(cared_for(), |f| {
                    f.break_glass
                        .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 60, NOW + 3600))
                }),
                Decision::Deny,
                "relationship:none",
            ),
            case(
                "break-glass needs an emergency purpose",
                ask(staff(CARE_HOME), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.break_glass
                        .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 60, NOW + 3600))
                }),
                Decision::Deny,
                "relationship:none",
            ),
            case(
                "national opt-out: research refused",
                ask(staff(TRUST), Search, "HRESCH", &[]),
                with(cared_for(), |f| f.national_opt_out = true),
                Decision::Deny,
                "national-data-opt-out",
            ),
            case(
                "national opt-out: direct care unaffected",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| f.national_opt_out = true),
                Decision::Permit,
                "relationship:episode_of_care:RX1",
            ),
            case(
                "research without an opt-out",
                ask(staff(TRUST), Search, "HRESCH", &[]),
                cared_for(),
                Decision::Permit,
                "purpose:HRESCH",
            ),
            case(
                "GP dissent: the trust is refused",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| f.gp_dissent = true),
                Decision::Deny,
                "gp-dissent",
            ),
            case(
                "GP dissent: consent at the point of care cannot lift it",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.gp_dissent = true;
                    f.directives.push(directive("verbal-consent", permit_all_but(vec![])));
                }),
                Decision::Deny,
                "gp-dissent",
            ),
            case(
                "GP dissent: the practice itself still reads",
                ask(staff(GP), Read, "TREAT", &[]),
                with(cared_for(), |f| f.gp_dissent = true),
                Decision::Permit,
                "relationship:gp_registration:A81001",
            ),
            Case {
                glass: true,
                ..case(
                    "GP dissent: break-glass in an emergency",
                    ask(staff(CARE_HOME), Read, "ETREAT", &[]),
                    with(cared_for(), |f| {
                        f.gp_dissent = true;
                        f.break_glass
                            .push(glass_grant("person-at-VN1C4", CARE_HOME, NOW - 60, NOW + 3600));
                    }),
                    Decision::Permit,
                    "break-glass",
                )
            },
            case(
                "patient at P9 reads their own record",
                ask(patient(NHS, "P9"), Read, "PATRQT", &[]),
                Facts::default(),
                Decision::Permit,
                "patient:self",
            ),
            case(
                "patient at P5 is refused",
                ask(patient(NHS, "P5"), Read, "PATRQT", &[]),
                Facts::default(),
                Decision::Deny,
                "proofing:P5",
            ),
            case(
                "patient at P9 cannot write",
                ask(patient(NHS, "P9"), Update, "PATRQT", &[]),
                Facts::default(),
                Decision::Deny,
                "patient:self",
            ),
            case(
                "a patient's own opt-out does not hide the record from them",
                ask(patient(NHS, "P9"), Read, "PATRQT", &[]),
                with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
                Decision::Permit,
                "patient:self",
            ),
            case(
                "another patient is refused",
                ask(patient("9000000009", "P9"), Read, "PATRQT", &[]),
                Facts::default(),
                Decision::Deny,
                "patient:not-self",
            ),
            case(
                "an authorised representative at P9",
                ask(patient("9000000009", "P9"), Read, "PATRQT", &[]),
                with(Facts::default(), |f| {
                    f.representatives.push(Representative {
                        nhs_number: "9000000009".into(),
                        start: NOW - DAY,
                        end: None,
                    })
                }),
                Decision::Permit,
                "patient:representative",
            ),
            case(
                "a representative whose authority ended",
                ask(patient("9000000009", "P9"), Read, "PATRQT", &[]),
                with(Facts::default(), |f| {
                    f.representatives.push(Representative {
                        nhs_number: "9000000009".into(),
                        start: NOW - 30 * DAY,
                        end: Some(NOW - DAY),
                    })
                }),
                Decision::Deny,
                "patient:not-self",
            ),
            case(
                "released categories only: a deny base with sexual health released to the clinic",
                ask(staff(TRUST), Read, "TREAT", &["SEX", "MH"]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "sex-only",
                        json!({"type": "deny", "provision": [{"type": "permit", "securityLabel": labels(&["SEX"])}]}),
                    ))
                }),
                w(&["MH"]),
                "directive:sex-only",
            ),
            case(
                "a class withheld: vaccinations kept from the trust",
                ask(staff(TRUST), Read, "TREAT", &["class:Immunization"]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "no-jabs",
                        permit_all_but(vec![json!({"type": "deny",
                        "class": [{"system": fhir::RESOURCE_TYPE_SYSTEM, "code": "Immunization"}]})]),
                    ))
                }),
                w(&["class:Immunization"]),
                "directive:no-jabs",
            ),
            case(
                "a code withheld is reported whatever the caller names (it cannot name every code)",
                ask(staff(TRUST), Search, "TREAT", &["SEX"]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "no-depression",
                        permit_all_but(vec![json!({"type": "deny",
                        "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "35489007"}]}]})]),
                    ))
                }),
                w(&["code:http://snomed.info/sct|35489007"]),
                "directive:no-depression",
            ),
            case(
                "released by class: a deny base with vaccinations released",
                ask(staff(TRUST), Read, "TREAT", &["class:Immunization"]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "jabs-only",
                        json!({"type": "deny", "provision": [{"type": "permit",
                        "class": [{"system": fhir::RESOURCE_TYPE_SYSTEM, "code": "Immunization"}]}]}),
                    ))
                }),
                Decision::Permit,
                "directive:jabs-only",
            ),
            case(
                "released by class: other classes stay denied",
                ask(staff(TRUST), Read, "TREAT", &["class:Condition", "MH"]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "jabs-only",
                        json!({"type": "deny", "provision": [{"type": "permit",
                        "class": [{"system": fhir::RESOURCE_TYPE_SYSTEM, "code": "Immunization"}]}]}),
                    ))
                }),
                w(&["MH"]),
                "directive:jabs-only",
            ),
            case(
                "released by label: a labelled record of a class named nowhere is still released",
                ask(staff(TRUST), Read, "TREAT", &["SEX", "class:Observation"]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "sex-only",
                        json!({"type": "deny", "provision": [{"type": "permit", "securityLabel": labels(&["SEX"])}]}),
                    ))
                }),
                Decision::Permit,
                "directive:sex-only",
            ),
            case(
                "a system reads for direct care by its scope",
                ask(system(), Read, "TREAT", &[]),
                cared_for(),
                Decision::Permit,
                "system",
            ),
            case(
                "a system is held to the patient's opt-out of sharing",
                ask(system(), Read, "TREAT", &[]),
                with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
                Decision::Deny,
                "directive:optout",
            ),
            case(
                "a system is refused research under the national data opt-out",
                ask(system(), Search, "HRESCH", &[]),
                with(cared_for(), |f| f.national_opt_out = true),
                Decision::Deny,
                "national-data-opt-out",
            ),
            case(
                "a system records care although the record is opted out of sharing",
                ask(system(), Create, "TREAT", &[]),
                with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
                Decision::Permit,
                "system",
            ),
            case(
                "a clinician records care although the patient withholds the record",
                ask(staff(TRUST), Update, "TREAT", &["MH"]),
                with(cared_for(), |f| f.directives.push(directive("optout", deny_all()))),
                Decision::Permit,
                "relationship:episode_of_care:RX1",
            ),
            case(
                "staff without a relationship cannot write",
                ask(staff(CARE_HOME), Create, "TREAT", &[]),
                cared_for(),
                Decision::Deny,
                "relationship:none",
            ),
            case(
                "released categories only: uncategorised data stays denied",
                ask(staff(TRUST), Read, "TREAT", &[]),
                with(cared_for(), |f| {
                    f.directives.push(directive(
                        "sex-only",
                        json!({"type": "deny", "provision": [{"type": "permit", "securityLabel": labels(&["SEX"])}]}),
                    ))
                }),
                Decision::Deny,
                "directive:sex-only",
            ),
        ]
    }

    #[test]
    fn the_consent_scenarios_decide_as_the_rules_say() {
        let all = cases();
        assert!(all.len() >= 30, "{} scenarios", all.len());
        let mut failures = Vec::new();
        for c in &all {
            let got = decide(&c.ask, &c.facts);
            if got.decision != c.want || !got.rules.iter().any(|r| r == c.rule) || got.break_glass != c.glass {
                failures.push(format!(
                    "{}: got {:?} via {:?} (break-glass {})",
                    c.name, got.decision, got.rules, got.break_glass
                ));
            }
            assert!(!got.reason.is_empty(), "{}: a reason is always given", c.name);
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn parsed_directives_keep_their_stored_form() {
        let d = directive("mh", permit_all_but(vec![withhold(&["MH"])])).provision;
        let json = serde_json::to_value(&d).expect("json");
        assert_eq!(json["type"], "permit");
        assert_eq!(json["provision"][0]["securityLabel"][0], "MH");
        let back: Provision = serde_json::from_value(json).expect("parse");
        assert_eq!(back, d);
    }
}
