//! Serving a passport (shared by gRPC and HTTP): who may see what is decided by consent for
//! every view, the view is audited durably before it is answered, and what consent withholds
//! is left out without a trace of what it was.

use std::sync::Arc;

use sharedcare_kit::auth::{Principal, Verifier};
use sharedcare_kit::bus::{self, Envelope};
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::outbox::Outbox;
use sharedcare_kit::pdp::{self, Pdp, SENSITIVE_LABELS};
use sharedcare_proto::consent::v1::decide_response::Effect;
use sharedcare_proto::consent::v1::{DecideRequest, DecideResponse};
use sharedcare_proto::events::v1::AccessRecorded;

use crate::PassportError;
use crate::store::Reader;
use crate::view::View;

/// The scope a service needs to read passports (the record's read scope).
pub const READ_SCOPE: &str = "records.read";

/// What gRPC and HTTP call.
#[derive(Clone)]
pub struct Api {
    reader: Reader,
    verifier: Verifier,
    pdp: Arc<dyn Pdp>,
    outbox: Outbox,
}

/// How a view ended, for its audit entry.
struct Outcome {
    outcome: &'static str,
    purpose: String,
    reason: String,
}

impl Api {
    /// Serves the read model through `reader`, admitting callers `verifier` accepts, asking
    /// `pdp` for every view and auditing through `outbox`.
    pub fn new(reader: Reader, verifier: Verifier, pdp: Arc<dyn Pdp>, outbox: Outbox) -> Api {
        Api {
            reader,
            verifier,
            pdp,
            outbox,
        }
    }

    /// The verifier callers' tokens are checked with.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// `nhs_number`'s passport as `who` may see it, acting for `purpose`.
    pub async fn passport(&self, who: &Principal, nhs_number: &str, purpose: &str) -> Result<View, PassportError> {
        let patient = NhsNumber::parse(nhs_number).map_err(|e| PassportError::invalid("nhs_number", e.to_string()))?;
        let purpose = pdp::check_purpose(purpose).map_err(|e| PassportError::invalid("purpose", e.to_string()))?;
        let ask = ask(who, &patient, purpose.clone())?;
        let decided = self.pdp.decide(vec![ask]).await.and_then(|mut d| match d.len() {
            1 => Ok(d.remove(0)),
            got => Err(pdp::PdpError::Incomplete { got, asked: 1 }),
        });
        let decision = match decided {
            Ok(d) => d,
            Err(e) => {
                let e = PassportError::Consent(e);
                return self.answer(who, &patient, Outcome::of_error(&purpose), Err(e)).await;
            }
        };
        let outcome = Outcome::of_decision(&decision, &purpose);
        if decision.effect() == Effect::Deny {
            let refused = PassportError::Forbidden(format!("access denied: {}", decision.reason));
            return self.answer(who, &patient, outcome, Err(refused)).await;
        }
        let entries = match self.reader.entries(&patient).await {
            Ok(e) => e,
            Err(e) => return self.answer(who, &patient, Outcome::of_error(&purpose), Err(e)).await,
        };
        if entries.is_empty() && !matches!(who, Principal::Patient { .. }) {
            let missing = Outcome {
                outcome: "not-found",
                ..outcome
            };
            let e = PassportError::NotFound(patient.to_string());
            return self.answer(who, &patient, missing, Err(e)).await;
        }
        let view = View::build(&patient, entries, &decision.withheld_categories);
        self.answer(who, &patient, outcome, Ok(view)).await
    }

    /// Records the view's audit entry durably, then answers: nothing leaves unaudited.
    async fn answer<T>(
        &self,
        who: &Principal,
        patient: &NhsNumber,
        o: Outcome,
        answer: Result<T, PassportError>,
    ) -> Result<T, PassportError> {
        let envelope = access(who, patient, &o);
        self.outbox
            .record(&bus::topic(crate::NAME), envelope)
            .await
            .map_err(|e| PassportError::Audit(e.to_string()))?;
        answer
    }
}

impl Outcome {
    fn of_error(purpose: &str) -> Outcome {
        Outcome {
            outcome: "error",
            purpose: purpose.to_string(),
            reason: "no consent decision".into(),
        }
    }

    fn of_decision(d: &DecideResponse, purpose: &str) -> Outcome {
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
            Effect::Deny => "denied",
            _ => "success",
        };
        Outcome {
            outcome,
            purpose,
            reason,
        }
    }
}

/// The consent question for `who` viewing `patient`'s passport: about every sensitivity
/// label at once, so what is withheld (and whether to say so) depends on the person's choices,
/// never on what the record holds.
fn ask(who: &Principal, patient: &NhsNumber, purpose: String) -> Result<DecideRequest, PassportError> {
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
        .ok_or_else(|| PassportError::Forbidden(format!("reading a passport needs scope {READ_SCOPE}")))?;
    Ok(pdp::ask(&actor, patient.as_str(), "read", categories))
}

/// The `AccessRecorded` entry for a view, in the caller's trace.
fn access(who: &Principal, patient: &NhsNumber, o: &Outcome) -> Envelope {
    let (organisation, role) = match who {
        Principal::Staff { role, .. } => (role.org_code.clone(), role.role_code.clone()),
        _ => (String::new(), String::new()),
    };
    let resource = format!("Passport/{patient}");
    let event = AccessRecorded {
        actor: who.id(),
        actor_organisation: organisation,
        actor_role: role,
        action: "read".into(),
        resources: vec![resource.clone()],
        nhs_number: patient.to_string(),
        purpose: o.purpose.clone(),
        reason: o.reason.clone(),
        outcome: o.outcome.into(),
        time: Some(sharedcare_kit::db::timestamp(sharedcare_kit::db::now_us())),
        trace_id: sharedcare_kit::telemetry::current_trace_id(),
        service: crate::NAME.into(),
    };
    let mut envelope = bus::envelope(
        "sharedcare.events.v1.AccessRecorded",
        crate::NAME,
        &resource,
        patient.as_str(),
        &event,
    );
    envelope.traceparent = sharedcare_kit::telemetry::current_traceparent();
    envelope
}
