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

/// What a directive that released categories gives: everything, or all but `hidden`.
fn by_directive(hidden: Vec<String>, rules: Vec<String>) -> Outcome {
    if hidden.is_empty() {
        outcome(Decision::Permit, "permitted by the patient's directive", rules, false)
    } else {
        outcome(
            Decision::Withhold(hidden),
            "categories withheld by the patient's directive",
            rules,
            false,
        )
    }
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
    withheld.sort();
    withheld.dedup();
    // Labels are reported when asked about (or when nothing was named); classes and codes
    // always, since a caller asking about a whole record cannot name every code in it.
    let present = |withheld: &[String]| -> Vec<String> {
        withheld
            .iter()
            .filter(|c| ask.categories.is_empty() || !is_label(c) || ask.categories.contains(c))
            .cloned()
            .collect()
    };
    if let Some(allowed) = only {
        // What one directive withholds stays withheld whatever another releases: the
        // stricter answer wins.
        let released = |c: &String| allowed.contains(c) && !withheld.contains(c);
        // Released by class or code: data of a released class, or carrying a released code
        // (less what any directive withholds).
        if ask.categories.iter().any(|c| !is_label(c) && released(c)) {
            return by_directive(present(&withheld), rules);
        }
        // Released by label: only data whose every label is released; everything else asked
        // for is withheld.
        if !ask.categories.iter().any(|c| is_label(c)) {
            return outcome(
                Decision::Deny,
                "the patient's directive releases only named categories",
                rules,
                false,
            );
        }
        let mut hidden: Vec<String> = ask
            .categories
            .iter()
            .filter(|c| is_label(c) && !released(c))
            .cloned()
            .chain(withheld.iter().filter(|c| !is_label(c)).cloned())
            .collect();
        hidden.sort();
        hidden.dedup();
        return by_directive(hidden, rules);
    }
    let present = present(&withheld);
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
mod scenarios;
