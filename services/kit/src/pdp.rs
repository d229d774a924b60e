//! Asking the consent service (the policy decision point) before patient data is read or
//! written. Services never decide for themselves: every access of patient data carries a
//! decision from consent, and an access consent could not decide is refused. Shared by every
//! service that serves patient data (records, passport).

use std::time::Duration;

use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::{DecideManyRequest, DecideRequest, DecideResponse};
use tonic::transport::Channel;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::auth::{Principal, ServiceToken, has_scope};

/// Who is accessing and why, from their token and request: what consent decides on and
/// what the audit entry records.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// "staff" or "service".
    pub kind: &'static str,
    /// Person (staff) or client id (service).
    pub id: String,
    /// ODS code of the actor's organisation.
    pub organisation: String,
    /// Selected role's national RBAC role code.
    pub role: String,
    /// Selected role profile's id.
    pub role_profile: String,
    /// Purpose of use (HL7 v3 PurposeOfUse): TREAT unless the caller says otherwise.
    pub purpose: String,
}

/// Sensitivity labels a directive can withhold (HL7 v3 ActCode confidentiality and
/// sensitivity codes, plus the NHS safeguarding label). A service asks consent about all of
/// them to learn whether to tell the caller that information may be withheld, without that
/// answer depending on what the record holds.
pub const SENSITIVE_LABELS: &[&str] = &[
    "SEX",
    "STD",
    "HIV",
    "SDV",
    "PSY",
    "MH",
    "BH",
    "ETH",
    "SUD",
    "GDIS",
    "SAFEGUARDING",
];

/// A category naming a class of data (a FHIR resource type), e.g. `class:Immunization`.
pub const CLASS_PREFIX: &str = "class:";
/// A category naming a coded concept, e.g. `code:http://snomed.info/sct|35489007`.
pub const CODE_PREFIX: &str = "code:";

/// Whether a category is a sensitivity label (not a class or a code).
pub fn is_label(category: &str) -> bool {
    !category.starts_with(CLASS_PREFIX) && !category.starts_with(CODE_PREFIX)
}

/// The categories of one resource a patient's directive can name: its sensitivity labels, its
/// class (`class:{resource_type}`) and each of its codes (`code:{system}|{code}`).
pub fn categories<'a>(
    resource_type: &str,
    labels: impl IntoIterator<Item = String>,
    codes: impl IntoIterator<Item = &'a str>,
) -> Vec<String> {
    let mut out: Vec<String> = labels.into_iter().collect();
    out.push(format!("{CLASS_PREFIX}{resource_type}"));
    out.extend(codes.into_iter().map(|c| format!("{CODE_PREFIX}{c}")));
    out
}

/// The codes of a FHIR resource as `system|code` tokens, from `code`,
/// `medicationCodeableConcept` and `vaccineCode` (what search and directives match on).
pub fn fhir_codes(body: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut out = Vec::new();
    for element in ["code", "medicationCodeableConcept", "vaccineCode"] {
        let codings = body
            .get(element)
            .and_then(|c| c.get("coding"))
            .and_then(serde_json::Value::as_array);
        for c in codings.into_iter().flatten() {
            if let Some(code) = c.get("code").and_then(serde_json::Value::as_str) {
                let system = c.get("system").and_then(serde_json::Value::as_str).unwrap_or("");
                out.push(format!("{system}|{code}"));
            }
        }
    }
    out
}

/// A purpose of use that is not an HL7 v3 PurposeOfUse code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a PurposeOfUse code (e.g. TREAT, ETREAT, BTG)")]
pub struct InvalidPurpose(pub String);

/// A purpose of use: empty = TREAT; otherwise an HL7 v3 PurposeOfUse code (upper-case
/// letters and '-', e.g. TREAT, ETREAT, BTG, CAREMGT, HRESCH).
pub fn check_purpose(purpose: &str) -> Result<String, InvalidPurpose> {
    if purpose.is_empty() {
        return Ok("TREAT".into());
    }
    if purpose.len() > 32 || !purpose.bytes().all(|b| b.is_ascii_uppercase() || b == b'-') {
        return Err(InvalidPurpose(purpose.to_string()));
    }
    Ok(purpose.to_string())
}

/// The actor a verified staff member or service is, acting for `purpose`; `None` for a
/// patient (whose access is decided on their own NHS number and proofing level) and for a
/// service without `scope`.
pub fn actor_of(p: &Principal, scope: &str, purpose: String) -> Option<Actor> {
    match p {
        Principal::Service { .. } if !has_scope(p, scope) => None,
        Principal::Patient { .. } => None,
        Principal::Staff { role, .. } => Some(Actor {
            kind: "staff",
            id: p.id(),
            organisation: role.org_code.clone(),
            role: role.role_code.clone(),
            role_profile: role.person_roleid.clone(),
            purpose,
        }),
        Principal::Service { .. } => Some(Actor {
            kind: "service",
            id: p.id(),
            purpose,
            ..Actor::default()
        }),
    }
}

/// Most asks sent in one `DecideMany` (consent's limit).
const ASKS_PER_CALL: usize = 1000;

/// Why no decision was made (so the caller gets no data).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PdpError {
    /// The service could not get its own token to call consent.
    #[error("no service token to call consent: {0}")]
    Token(String),
    /// Consent could not be reached or refused the call.
    #[error("consent: {code:?}: {message}")]
    Call {
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// The service is stopping and no longer asks.
    #[error("the consent client has stopped")]
    Stopped,
    /// Consent answered a different number of decisions than asks.
    #[error("consent answered {got} of {asked} asks")]
    Incomplete {
        /// Decisions received.
        got: usize,
        /// Asks sent.
        asked: usize,
    },
}

/// What a service needs from a policy decision point: one decision per ask, in order.
#[tonic::async_trait]
pub trait Pdp: Send + Sync + 'static {
    /// Decides `asks`; an error means no decision was made (the caller gets no data).
    async fn decide(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, PdpError>;
}

/// The consent service over gRPC, called with this service's client-credentials token.
pub struct GrpcPdp {
    client: ConsentClient<Channel>,
    token: ServiceToken,
    failures: Option<prometheus_client::metrics::counter::Counter>,
}

impl GrpcPdp {
    /// Consent at `endpoint` (e.g. `http://consent:50051`), each call bounded by `timeout`.
    /// Connects lazily: consent may start after the caller.
    /// `setting` names the configuration key the endpoint came from, for the error.
    pub fn new(endpoint: &str, setting: &str, token: ServiceToken, timeout: Duration) -> crate::Result<GrpcPdp> {
        let channel = crate::peer::channel(endpoint, setting, timeout)?;
        Ok(GrpcPdp {
            client: ConsentClient::new(channel),
            token,
            failures: None,
        })
    }

    /// Counts every call that gets no decision in `failures`.
    pub fn counting(self, failures: prometheus_client::metrics::counter::Counter) -> GrpcPdp {
        GrpcPdp {
            failures: Some(failures),
            ..self
        }
    }

    /// Every ask decided, in calls of at most ASKS_PER_CALL.
    async fn decide_all(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, PdpError> {
        let mut out = Vec::with_capacity(asks.len());
        let mut asks = asks;
        while !asks.is_empty() {
            let rest = asks.split_off(asks.len().min(ASKS_PER_CALL));
            let want = asks.len();
            let req = crate::peer::request(&self.token, DecideManyRequest { asks })
                .await
                .map_err(|e| PdpError::Token(e.to_string()))?;
            let decisions = self
                .client
                .clone()
                .decide_many(req)
                .await
                .map_err(|s| PdpError::Call {
                    code: s.code(),
                    message: s.message().to_string(),
                })?
                .into_inner()
                .decisions;
            if decisions.len() != want {
                return Err(PdpError::Incomplete {
                    got: decisions.len(),
                    asked: want,
                });
            }
            out.extend(decisions);
            asks = rest;
        }
        Ok(out)
    }
}

#[tonic::async_trait]
impl Pdp for GrpcPdp {
    async fn decide(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, PdpError> {
        let decided = self.decide_all(asks).await;
        if decided.is_err()
            && let Some(failures) = &self.failures
        {
            failures.inc();
        }
        decided
    }
}

/// The decision request for `actor` doing `action` on `nhs_number`'s data labelled `categories`.
pub fn ask(actor: &Actor, nhs_number: &str, action: &str, categories: Vec<String>) -> DecideRequest {
    DecideRequest {
        principal_kind: actor.kind.to_string(),
        person_id: if actor.kind == "staff" {
            actor.id.clone()
        } else {
            String::new()
        },
        role_profile_id: actor.role_profile.clone(),
        ods_code: actor.organisation.clone(),
        nhs_number: nhs_number.to_string(),
        action: action.to_string(),
        categories,
        purpose: actor.purpose.clone(),
        role_code: actor.role.clone(),
        principal_nhs_number: String::new(),
        proofing_level: String::new(),
        client_id: if actor.kind == "service" {
            actor.id.clone()
        } else {
            String::new()
        },
    }
}

/// The purpose and reason an audit entry records for decision `d` on an access asked for
/// `purpose`: BTG with the grant's reason when the decision rests on break-glass, else the
/// purpose asked; the reason is consent's, with the rules it applied.
pub fn audit_purpose(d: &DecideResponse, purpose: &str) -> (String, String) {
    let why = format!("{} [{}]", d.reason, d.rules.join(", "));
    if d.break_glass {
        (
            "BTG".to_string(),
            format!("break-glass: {}; {why}", d.break_glass_reason),
        )
    } else {
        (purpose.to_string(), why)
    }
}

/// Asks waiting for [`Batched`]'s task, where their decisions go, and the caller's trace.
type Waiting = (
    Vec<DecideRequest>,
    tokio::sync::oneshot::Sender<Result<Vec<DecideResponse>, PdpError>>,
    opentelemetry::Context,
);

/// Most callers whose asks go to consent in one call.
const CALLERS_PER_BATCH: usize = 256;

/// A decision point that sends the asks of concurrent callers to `inner` together: one
/// `DecideMany` per batch, answered before the next batch is taken, so batches grow with the
/// load (the pattern of records' reader).
pub struct Batched {
    waiting: tokio::sync::mpsc::Sender<Waiting>,
}

impl Batched {
    /// Batches calls to `inner` from a task under `tasks`.
    pub fn new(inner: std::sync::Arc<dyn Pdp>, tasks: &crate::tasks::Tasks) -> Batched {
        let (waiting, mut rx) = tokio::sync::mpsc::channel::<Waiting>(CALLERS_PER_BATCH * 4);
        tasks.spawn(async move {
            while let Some(batch) = crate::batch::next_batch(&mut rx, CALLERS_PER_BATCH).await {
                let sizes: Vec<usize> = batch.iter().map(|(asks, _, _)| asks.len()).collect();
                let span = tracing::info_span!("consent decide batch", callers = batch.len());
                let mut replies = Vec::with_capacity(batch.len());
                let mut asks = Vec::new();
                let mut callers = Vec::with_capacity(batch.len());
                for (a, reply, cx) in batch {
                    asks.push(a);
                    replies.push(reply);
                    callers.push(cx);
                }
                crate::telemetry::serve_callers(&span, callers);
                let decided = inner
                    .decide(asks.into_iter().flatten().collect())
                    .instrument(span)
                    .await;
                match decided {
                    Ok(decisions) => {
                        let mut decisions = decisions.into_iter();
                        for (size, reply) in sizes.into_iter().zip(replies) {
                            let _ = reply.send(Ok(decisions.by_ref().take(size).collect()));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(e.clone()));
                        }
                    }
                }
            }
        });
        Batched { waiting }
    }
}

#[tonic::async_trait]
impl Pdp for Batched {
    async fn decide(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, PdpError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let cx = tracing::Span::current().context();
        self.waiting
            .send((asks, reply, cx))
            .await
            .map_err(|_| PdpError::Stopped)?;
        answer.await.map_err(|_| PdpError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Permits everything, counting the calls it gets and echoing each ask's NHS number.
    struct Counting(AtomicUsize);

    #[tonic::async_trait]
    impl Pdp for Counting {
        async fn decide(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, PdpError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok(asks
                .into_iter()
                .map(|a| DecideResponse {
                    reason: a.nhs_number,
                    ..Default::default()
                })
                .collect())
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_calls_and_each_gets_its_own_decisions() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let pdp = Arc::new(Batched::new(inner.clone(), &crate::tasks::Tasks::new()));
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..50 {
            let pdp = pdp.clone();
            calls.spawn(async move {
                let asks = (0..(i % 3 + 1))
                    .map(|k| DecideRequest {
                        nhs_number: format!("{i}-{k}"),
                        ..Default::default()
                    })
                    .collect();
                (i, pdp.decide(asks).await.expect("decided"))
            });
        }
        while let Some(done) = calls.join_next().await {
            let (i, decisions) = done.expect("joined");
            let want: Vec<String> = (0..(i % 3 + 1)).map(|k| format!("{i}-{k}")).collect();
            let got: Vec<String> = decisions.into_iter().map(|d| d.reason).collect();
            assert_eq!(got, want, "caller {i} gets its own decisions, in order");
        }
        let used = inner.0.load(Ordering::SeqCst);
        assert!(used < 50, "50 callers shared {used} calls");
    }
}
