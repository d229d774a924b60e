//! Serving a passport (shared by gRPC and HTTP): who may see what is decided by consent for
//! every view, the view is audited durably before it is answered, and what consent withholds
//! is left out without a trace of what it was.

use sharedcare_kit::edge::Refuse;
use std::sync::Arc;

use sharedcare_kit::auth::{Principal, Verifier};
use sharedcare_kit::bus;
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::outbox::Outbox;
use sharedcare_kit::pdp::{self, Pdp};

use crate::PassportError;
use crate::access::AuditLog;
pub use crate::decision::READ_SCOPE;
use crate::decision::{Asked, Audited, Trace, access, ask, judge};
use crate::store::Store;
use crate::view::View;
use crate::views::Viewer;
use sharedcare_proto::passport::v1 as contract;

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
        let outcome = self.decide(who, &patient, &purpose, asked).await?;
        let choices = self
            .store
            .held(&patient)
            .await
            .map(|h| crate::choices::to_proto(&patient, h.sharing.as_ref()));
        let outcome = if choices.is_ok() {
            outcome
        } else {
            Audited::error(&purpose)
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
        let outcome = self.decide(who, &patient, &purpose, asked).await?;
        let log = self.audit_log.page(&patient, page_size, before).await;
        let outcome = if log.is_ok() { outcome } else { Audited::error(&purpose) };
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
    ) -> Result<Audited, PassportError> {
        if !matches!(who, Principal::Patient { .. }) {
            let refused = PassportError::forbidden(
                "sharing choices and the access log are for the person and their authorised representatives (NHS login)",
            );
            let o = Audited::refused(purpose, "not the person or their representative");
            return self.answer(who, patient, asked, o, Err(refused)).await;
        }
        let ask = ask(who, patient, purpose.to_string())?;
        let decided = self.pdp.decide(vec![ask]).await.and_then(|mut d| match d.len() {
            1 => Ok(d.remove(0)),
            got => Err(pdp::PdpError::Incomplete { got, asked: 1 }),
        });
        match judge(decided.as_ref(), purpose) {
            (audited, Ok(_)) => Ok(audited),
            (audited, Err(refused)) => self.answer(who, patient, asked, audited, Err(refused)).await,
        }
    }

    /// Records the view's audit entry durably, then answers: nothing leaves unaudited.
    async fn answer<T>(
        &self,
        who: &Principal,
        patient: &NhsNumber,
        asked: Asked,
        o: Audited,
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

/// The NHS number and purpose of use of a request, checked.
fn parse(nhs_number: &str, purpose: &str) -> Result<(NhsNumber, String), PassportError> {
    let patient = NhsNumber::parse(nhs_number).map_err(|e| PassportError::invalid("nhs_number", e.to_string()))?;
    let purpose = pdp::check_purpose(purpose).map_err(|e| PassportError::invalid("purpose", e.to_string()))?;
    Ok((patient, purpose))
}
