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
use crate::access::AuditLog;
use crate::store::Store;
use crate::view::View;
use crate::views::Viewer;
use sharedcare_proto::passport::v1 as contract;

/// The scope a service needs to read passports (the record's read scope).
pub const READ_SCOPE: &str = "records.read";

/// What gRPC and HTTP call.
#[derive(Clone)]
pub struct Api {
    viewer: Viewer,
    store: Store,
    verifier: Verifier,
    pdp: Arc<dyn Pdp>,
    outbox: Outbox,
    audit_log: AuditLog,
}

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
pub(crate) struct Outcome {
    pub(crate) outcome: &'static str,
    pub(crate) purpose: String,
    pub(crate) reason: String,
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

impl Api {
    /// Serves passports through `viewer` and sharing choices from `store`, admitting callers
    /// `verifier` accepts, asking `pdp` (choices and access logs), auditing through `outbox`
    /// and proving access logs with `audit_log`.
    pub fn new(
        viewer: Viewer,
        store: Store,
        verifier: Verifier,
        pdp: Arc<dyn Pdp>,
        outbox: Outbox,
        audit_log: AuditLog,
    ) -> Api {
        Api {
            viewer,
            store,
            verifier,
            pdp,
            outbox,
            audit_log,
        }
    }

    /// The verifier callers' tokens are checked with.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// `nhs_number`'s passport as `who` may see it, acting for `purpose` (decided, read and
    /// audited with the concurrent views, see [`crate::views`]).
    pub async fn passport(&self, who: &Principal, nhs_number: &str, purpose: &str) -> Result<View, PassportError> {
        let (patient, purpose) = parse(nhs_number, purpose)?;
        self.viewer.view(who.clone(), patient, purpose).await
    }

    /// `nhs_number`'s sharing choices, for the person or their representative.
    pub async fn sharing_choices(
        &self,
        who: &Principal,
        nhs_number: &str,
    ) -> Result<contract::SharingChoices, PassportError> {
        let (patient, purpose) = parse(nhs_number, "")?;
        let asked = Asked::SharingChoices;
        let decision = self.decide(who, &patient, &purpose, asked).await?;
        let outcome = Outcome::of_decision(&decision, &purpose);
        let choices = self
            .store
            .held(&patient)
            .await
            .map(|h| crate::choices::to_proto(&patient, h.sharing.as_ref()));
        let outcome = if choices.is_ok() {
            outcome
        } else {
            Outcome::of_error(&purpose)
        };
        self.answer(who, &patient, asked, outcome, choices).await
    }

    /// A page of who has looked at `nhs_number`'s record, with proofs, for the person or their
    /// representative.
    pub async fn access_log(
        &self,
        who: &Principal,
        nhs_number: &str,
        page_size: u32,
        before: u64,
    ) -> Result<contract::AccessLog, PassportError> {
        let (patient, purpose) = parse(nhs_number, "")?;
        let asked = Asked::AccessLog;
        let decision = self.decide(who, &patient, &purpose, asked).await?;
        let outcome = Outcome::of_decision(&decision, &purpose);
        let log = self.audit_log.page(&patient, page_size, before).await;
        let outcome = if log.is_ok() {
            outcome
        } else {
            Outcome::of_error(&purpose)
        };
        self.answer(who, &patient, asked, outcome, log).await
    }

    /// Consent's decision on `who` seeing `asked` (sharing choices or the access log) about
    /// `patient`; a refusal (or no decision) is audited before it comes back as the `Err`.
    /// They are the person's own: for anyone else they are refused without asking.
    async fn decide(
        &self,
        who: &Principal,
        patient: &NhsNumber,
        purpose: &str,
        asked: Asked,
    ) -> Result<DecideResponse, PassportError> {
        if !matches!(who, Principal::Patient { .. }) {
            let refused = PassportError::Forbidden(
                "sharing choices and the access log are for the person and their authorised representatives (NHS login)"
                    .into(),
            );
            let o = Outcome {
                outcome: "denied",
                purpose: purpose.to_string(),
                reason: "not the person or their representative".into(),
            };
            return self.answer(who, patient, asked, o, Err(refused)).await;
        }
        let ask = ask(who, patient, purpose.to_string())?;
        let decided = self.pdp.decide(vec![ask]).await.and_then(|mut d| match d.len() {
            1 => Ok(d.remove(0)),
            got => Err(pdp::PdpError::Incomplete { got, asked: 1 }),
        });
        let decision = match decided {
            Ok(d) => d,
            Err(e) => {
                let e = PassportError::Consent(e);
                return self
                    .answer(who, patient, asked, Outcome::of_error(purpose), Err(e))
                    .await;
            }
        };
        if decision.effect() == Effect::Deny {
            let outcome = Outcome::of_decision(&decision, purpose);
            let refused = PassportError::Forbidden(format!("access denied: {}", decision.reason));
            return self.answer(who, patient, asked, outcome, Err(refused)).await;
        }
        Ok(decision)
    }

    /// Records the view's audit entry durably, then answers: nothing leaves unaudited.
    async fn answer<T>(
        &self,
        who: &Principal,
        patient: &NhsNumber,
        asked: Asked,
        o: Outcome,
        answer: Result<T, PassportError>,
    ) -> Result<T, PassportError> {
        let envelope = access(who, patient, &asked.resource(patient), &o, &Trace::current());
        self.outbox
            .record(&bus::topic(crate::NAME), envelope)
            .await
            .map_err(|e| PassportError::Audit(e.to_string()))?;
        answer
    }
}

impl Outcome {
    pub(crate) fn of_error(purpose: &str) -> Outcome {
        Outcome {
            outcome: "error",
            purpose: purpose.to_string(),
            reason: "no consent decision".into(),
        }
    }

    pub(crate) fn of_decision(d: &DecideResponse, purpose: &str) -> Outcome {
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
        .ok_or_else(|| PassportError::Forbidden(format!("reading a passport needs scope {READ_SCOPE}")))?;
    Ok(pdp::ask(&actor, patient.as_str(), "read", categories))
}

/// The NHS number and purpose of use of a request, checked.
fn parse(nhs_number: &str, purpose: &str) -> Result<(NhsNumber, String), PassportError> {
    let patient = NhsNumber::parse(nhs_number).map_err(|e| PassportError::invalid("nhs_number", e.to_string()))?;
    let purpose = pdp::check_purpose(purpose).map_err(|e| PassportError::invalid("purpose", e.to_string()))?;
    Ok((patient, purpose))
}

/// The `AccessRecorded` entry for a view of `resource`, in the caller's `trace`.
pub(crate) fn access(who: &Principal, patient: &NhsNumber, resource: &str, o: &Outcome, trace: &Trace) -> Envelope {
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
        outcome: o.outcome.into(),
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
