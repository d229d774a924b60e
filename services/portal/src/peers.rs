//! The platform services the pages read and change, over gRPC, each call carrying the signed-in
//! person's own access token: records, consent and the passport decide and audit as that
//! person, exactly as for any other app. Only the audit log's public key is fetched with the
//! portal's own service token.

use std::time::Duration;

use sharedcare_kit::auth::ServiceToken;
use sharedcare_proto::audit::v1::GetTreeHeadRequest;
use sharedcare_proto::audit::v1::audit_client::AuditClient;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::passport::v1::passport_client::PassportClient;
use sharedcare_proto::records::v1::records_client::RecordsClient;
use tokio::sync::OnceCell;
use tonic::transport::Channel;

use crate::error::PortalError;

/// Channels to the services (lazily connected) and the audit key once known.
#[derive(Clone)]
pub struct Peers {
    passport: Channel,
    consent: Channel,
    records: Channel,
    audit: Channel,
    audit_token: ServiceToken,
    audit_key: std::sync::Arc<OnceCell<Vec<u8>>>,
}

/// Where each service is (gRPC URLs).
pub struct Endpoints<'a> {
    /// The passport.
    pub passport: (&'a str, &'a str),
    /// Consent.
    pub consent: (&'a str, &'a str),
    /// Records.
    pub records: (&'a str, &'a str),
    /// Audit.
    pub audit: (&'a str, &'a str),
}

impl Peers {
    /// Channels to the services at `at` (each a URL and the setting it came from), calls bounded
    /// by `timeout`; the audit key is fetched with `audit_token`.
    pub fn new(at: Endpoints<'_>, timeout: Duration, audit_token: ServiceToken) -> Result<Peers, PortalError> {
        let ch = |(url, setting): (&str, &str)| {
            sharedcare_kit::peer::channel(url, setting, timeout).map_err(|e| PortalError::Internal(e.to_string()))
        };
        Ok(Peers {
            passport: ch(at.passport)?,
            consent: ch(at.consent)?,
            records: ch(at.records)?,
            audit: ch(at.audit)?,
            audit_token,
            audit_key: std::sync::Arc::new(OnceCell::new()),
        })
    }

    /// The passport.
    pub fn passport(&self) -> PassportClient<Channel> {
        PassportClient::new(self.passport.clone())
    }

    /// Consent.
    pub fn consent(&self) -> ConsentClient<Channel> {
        ConsentClient::new(self.consent.clone())
    }

    /// Records.
    pub fn records(&self) -> RecordsClient<Channel> {
        RecordsClient::new(self.records.clone())
    }

    /// The audit log's Ed25519 public key as audit itself publishes it (fetched once).
    pub async fn audit_key(&self) -> Result<Vec<u8>, PortalError> {
        self.audit_key
            .get_or_try_init(|| async {
                let req = sharedcare_kit::peer::request(&self.audit_token, GetTreeHeadRequest { fresh: false })
                    .await
                    .map_err(|e| PortalError::Internal(e.to_string()))?;
                let head = AuditClient::new(self.audit.clone())
                    .get_tree_head(req)
                    .await?
                    .into_inner();
                Ok::<_, PortalError>(head.public_key)
            })
            .await
            .cloned()
    }
}

/// `message` as a request carrying `token` (the signed-in person's access token) and the
/// current trace context.
pub fn as_user<T>(token: &str, message: T) -> Result<tonic::Request<T>, PortalError> {
    let mut req = tonic::Request::new(message);
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|_| PortalError::Internal("the access token is not a valid header value".into()))?;
    req.metadata_mut().insert("authorization", bearer);
    if let Ok(v) = sharedcare_kit::telemetry::current_traceparent().parse() {
        req.metadata_mut().insert("traceparent", v);
    }
    Ok(req)
}
