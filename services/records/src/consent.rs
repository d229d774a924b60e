//! Asking the consent service (the policy decision point) before patient data is read or
//! written. Records never decides for itself: every access of patient data carries a decision
//! from consent, and an access consent could not decide is refused.

use std::time::Duration;

use sharedcare_kit::auth::ServiceToken;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::consent::v1::{DecideManyRequest, DecideRequest, DecideResponse};
use tonic::transport::{Channel, Endpoint};

use crate::RecordsError;
use crate::store::Actor;

/// Most asks sent in one `DecideMany` (consent's limit).
const ASKS_PER_CALL: usize = 1000;

/// Why no decision was made (so the caller gets no data).
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum PdpError {
    /// Records could not get its own token to call consent.
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
    /// Consent answered a different number of decisions than asks.
    #[error("consent answered {got} of {asked} asks")]
    Incomplete {
        /// Decisions received.
        got: usize,
        /// Asks sent.
        asked: usize,
    },
}

/// What records needs from a policy decision point: one decision per ask, in order.
#[tonic::async_trait]
pub trait Pdp: Send + Sync + 'static {
    /// Decides `asks`; an error means no decision was made (the caller gets no data).
    async fn decide(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, PdpError>;
}

/// The consent service over gRPC, called with this service's client-credentials token.
pub struct GrpcPdp {
    client: ConsentClient<Channel>,
    token: ServiceToken,
}

impl GrpcPdp {
    /// Consent at `endpoint` (e.g. `http://consent:50051`), each call bounded by `timeout`.
    /// Connects lazily: consent may start after records.
    pub fn new(endpoint: &str, token: ServiceToken, timeout: Duration) -> Result<GrpcPdp, RecordsError> {
        let channel = Endpoint::from_shared(endpoint.to_string())
            .map_err(|e| RecordsError::invalid("records.consent_url", format!("{endpoint:?}: {e}")))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(GrpcPdp {
            client: ConsentClient::new(channel),
            token,
        })
    }
}

#[tonic::async_trait]
impl Pdp for GrpcPdp {
    async fn decide(&self, asks: Vec<DecideRequest>) -> Result<Vec<DecideResponse>, PdpError> {
        let token = self.token.get().await.map_err(|e| PdpError::Token(e.to_string()))?;
        let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .map_err(|_| PdpError::Token("the service token is not a valid header value".into()))?;
        let mut out = Vec::with_capacity(asks.len());
        let mut asks = asks;
        while !asks.is_empty() {
            let rest = asks.split_off(asks.len().min(ASKS_PER_CALL));
            let want = asks.len();
            let mut req = tonic::Request::new(DecideManyRequest { asks });
            req.metadata_mut().insert("authorization", bearer.clone());
            let traceparent = sharedcare_kit::telemetry::current_traceparent();
            if let Ok(v) = traceparent.parse() {
                req.metadata_mut().insert("traceparent", v);
            }
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
