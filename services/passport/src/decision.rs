//! The one consent decision behind every passport view, sharing-choices page and access log:
//! what is asked (about every sensitivity label at once), how the answer becomes the caller's
//! answer, and the audit entry that records it. `api` (single asks) and `views` (batches) both
//! come here, so a view is judged the same way whichever path serves it.

use sharedcare_kit::access::{NO_DECISION, Outcome};
use sharedcare_kit::auth::Principal;
use sharedcare_kit::bus::{self, Envelope};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::pdp::{self, PdpError, SENSITIVE_LABELS};
use sharedcare_proto::consent::v1::decide_response::Effect;
use sharedcare_proto::consent::v1::{DecideRequest, DecideResponse};
use sharedcare_proto::events::v1::AccessRecorded;

use crate::PassportError;

/// The scope a service needs to read passports (the record's read scope).
pub const READ_SCOPE: &str = "records.read";

/// What a view is of, for its audit entry's resource.
#[derive(Clone, Copy)]
pub(crate) enum Asked {
    Passport,
    SharingChoices,
    AccessLog,
}

impl Asked {
    pub(crate) fn resource(self, patient: &NhsNumber) -> String {
        match self {
            Asked::Passport => format!("Passport/{patient}"),
            Asked::SharingChoices => format!("Passport/{patient}/sharing-choices"),
            Asked::AccessLog => format!("Passport/{patient}/access-log"),
        }
    }
}

/// How a view ended, for its audit entry.
#[derive(Clone, Debug)]
pub(crate) struct Audited {
    pub(crate) outcome: Outcome,
    pub(crate) purpose: String,
    pub(crate) reason: String,
}

impl Audited {
    /// No decision could be made, or the data could not be read.
    pub(crate) fn error(purpose: &str) -> Audited {
        Audited {
            outcome: Outcome::Error,
            purpose: purpose.to_string(),
            reason: NO_DECISION.into(),
        }
    }

    /// Refused before consent was asked (`why` is what the caller is told).
    pub(crate) fn refused(purpose: &str, why: impl Into<String>) -> Audited {
        Audited {
            outcome: Outcome::Denied,
            purpose: purpose.to_string(),
            reason: why.into(),
        }
    }

    /// As `d` decided: its reason and rules, and break-glass as the purpose when that was the
    /// basis.
    fn of_decision(d: &DecideResponse, purpose: &str) -> Audited {
        let why = format!("{} [{}]", d.reason, d.rules.join(", "));
        let (purpose, reason) = if d.break_glass {
            (
                "BTG".to_string(),
                format!("break-glass: {}; {why}", d.break_glass_reason),
            )
        } else {
            (purpose.to_string(), why)
        };
        let outcome = match d.effect() {
            Effect::Deny => Outcome::Denied,
            _ => Outcome::Success,
        };
        Audited {
            outcome,
            purpose,
            reason,
        }
    }
}

/// The trace a request came in (captured where it arrives, for entries written elsewhere).
#[derive(Clone, Debug, Default)]
pub(crate) struct Trace {
    parent: String,
    id: String,
}

impl Trace {
    /// The current request's.
    pub(crate) fn current() -> Trace {
        Trace {
            parent: sharedcare_kit::telemetry::current_traceparent(),
            id: sharedcare_kit::telemetry::current_trace_id(),
        }
    }
}

/// Consent's answer (or the failure to get one) to a view for `purpose`, judged: the audit
/// entry, and the decision when it allows the view or the refusal the caller gets.
pub(crate) fn judge<'d>(
    decided: Result<&'d DecideResponse, &PdpError>,
    purpose: &str,
) -> (Audited, Result<&'d DecideResponse, PassportError>) {
    match decided {
        Err(e) => (Audited::error(purpose), Err(PassportError::Consent(e.clone()))),
        Ok(d) if d.effect() == Effect::Deny => {
            let refused = PassportError::forbidden(format!("access denied: {}", d.reason));
            (Audited::of_decision(d, purpose), Err(refused))
        }
        Ok(d) => (Audited::of_decision(d, purpose), Ok(d)),
    }
}

/// The consent question for `who` viewing `patient`'s passport: about every sensitivity
/// label at once, so what is withheld (and whether to say so) depends on the person's choices,
/// never on what the record holds.
pub(crate) fn ask(who: &Principal, patient: &NhsNumber, purpose: String) -> Result<DecideRequest, PassportError> {
    let categories: Vec<String> = SENSITIVE_LABELS.iter().map(|l| l.to_string()).collect();
    if let Principal::Patient { nhs_number, proofing } = who {
        return Ok(DecideRequest {
            principal_kind: "patient".into(),
            principal_nhs_number: nhs_number.to_string(),
            proofing_level: proofing.to_string(),
            nhs_number: patient.to_string(),
            action: "read".into(),
            categories,
            purpose: "PATRQT".into(),
            ..Default::default()
        });
    }
    let actor = pdp::actor_of(who, READ_SCOPE, purpose)
        .ok_or_else(|| PassportError::forbidden(format!("reading a passport needs scope {READ_SCOPE}")))?;
    Ok(pdp::ask(&actor, patient.as_str(), "read", categories))
}

/// The `AccessRecorded` entry for a view of `resource`, in the caller's `trace`.
pub(crate) fn access(who: &Principal, patient: &NhsNumber, resource: &str, o: &Audited, trace: &Trace) -> Envelope {
    let (organisation, role) = match who {
        Principal::Staff { role, .. } => (role.org_code.clone(), role.role_code.clone()),
        _ => (String::new(), String::new()),
    };
    let resource = resource.to_string();
    let event = AccessRecorded {
        actor: who.id(),
        actor_organisation: organisation,
        actor_role: role,
        action: "read".into(),
        resources: vec![resource.clone()],
        nhs_number: patient.to_string(),
        purpose: o.purpose.clone(),
        reason: o.reason.clone(),
        outcome: o.outcome.as_str().into(),
        time: Some(sharedcare_kit::db::timestamp(sharedcare_kit::db::now_us())),
        trace_id: trace.id.clone(),
        service: crate::NAME.into(),
    };
    let mut envelope = bus::envelope(
        "sharedcare.events.v1.AccessRecorded",
        crate::NAME,
        &resource,
        patient.as_str(),
        &event,
    );
    envelope.traceparent = trace.parent.clone();
    envelope
}
