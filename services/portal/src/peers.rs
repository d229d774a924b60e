//! The platform services the pages read and change, over gRPC, each call carrying the signed-in
//! person's own access token: records, consent and the passport decide and audit as that
//! person, exactly as for any other app. Only the audit log's public key is fetched with the
//! portal's own service token.

use std::collections::HashMap;
use std::time::Duration;

use sharedcare_kit::auth::ServiceToken;
use sharedcare_proto::audit::v1::GetTreeHeadRequest;
use sharedcare_proto::audit::v1::audit_client::AuditClient;
use sharedcare_proto::consent::v1::consent_client::ConsentClient;
use sharedcare_proto::identity::v1::ListOrganisationsRequest;
use sharedcare_proto::identity::v1::identity_admin_client::IdentityAdminClient;
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
    identity: Channel,
    own_token: ServiceToken,
    audit_key: std::sync::Arc<OnceCell<Vec<u8>>>,
    names: std::sync::Arc<std::sync::RwLock<Names>>,
    /// Held while the directory is read again (pages keep the names they have meanwhile).
    rereading: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// Organisation names by ODS code, as identity's directory last gave them.
#[derive(Default)]
struct Names {
    by_code: std::sync::Arc<HashMap<String, String>>,
    fetched: Option<std::time::Instant>,
}

/// How long the organisation directory is kept before it is read again.
const NAMES_FOR: Duration = Duration::from_secs(300);

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
    /// Identity (its organisation directory).
    pub identity: (&'a str, &'a str),
}

impl Peers {
    /// Channels to the services at `at` (each a URL and the setting it came from), calls bounded
    /// by `timeout`; the audit key and the organisation directory are read with `own_token`
    /// (the portal's client-credentials token, scope audit.read).
    pub fn new(at: Endpoints<'_>, timeout: Duration, own_token: ServiceToken) -> Result<Peers, PortalError> {
        let ch = |(url, setting): (&str, &str)| {
            sharedcare_kit::peer::channel(url, setting, timeout).map_err(|e| PortalError::Internal(e.to_string()))
        };
        Ok(Peers {
            passport: ch(at.passport)?,
            consent: ch(at.consent)?,
            records: ch(at.records)?,
            audit: ch(at.audit)?,
            identity: ch(at.identity)?,
            own_token,
            audit_key: std::sync::Arc::new(OnceCell::new()),
            names: Default::default(),
            rereading: Default::default(),
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

    /// Audit.
    pub fn audit(&self) -> AuditClient<Channel> {
        AuditClient::new(self.audit.clone())
    }

    /// Identity (its organisation and staff directories).
    pub fn identity(&self) -> sharedcare_proto::identity::v1::identity_admin_client::IdentityAdminClient<Channel> {
        sharedcare_proto::identity::v1::identity_admin_client::IdentityAdminClient::new(self.identity.clone())
    }

    /// The audit log's Ed25519 public key as audit itself publishes it (fetched once).
    pub async fn audit_key(&self) -> Result<Vec<u8>, PortalError> {
        self.audit_key
            .get_or_try_init(|| async {
                let req = sharedcare_kit::peer::request(&self.own_token, GetTreeHeadRequest { fresh: false })
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

impl Peers {
    /// Organisation names by ODS code from identity's directory, read at most every five
    /// minutes. When identity cannot be asked, the last names known (perhaps none): pages then
    /// show ODS codes, which is not a reason to refuse them.
    pub async fn organisation_names(&self) -> std::sync::Arc<HashMap<String, String>> {
        let fresh = || {
            self.names
                .read()
                .ok()
                .filter(|n| n.fetched.is_some_and(|at| at.elapsed() < NAMES_FOR))
                .map(|n| n.by_code.clone())
        };
        if let Some(names) = fresh() {
            return names;
        }
        // One page reads the directory; the others wait for it rather than read it too.
        let _one = self.rereading.lock().await;
        if let Some(names) = fresh() {
            return names;
        }
        let read = self.read_directory().await;
        let Ok(mut names) = self.names.write() else {
            return Default::default();
        };
        match read {
            Ok(all) => names.by_code = std::sync::Arc::new(all),
            Err(e) => tracing::warn!(error = %e, "organisation names unavailable: showing ODS codes"),
        }
        names.fetched = Some(std::time::Instant::now());
        names.by_code.clone()
    }

    async fn read_directory(&self) -> Result<HashMap<String, String>, PortalError> {
        let mut all = HashMap::new();
        let mut page_token = String::new();
        loop {
            let req = ListOrganisationsRequest {
                page_size: 500,
                page_token: page_token.clone(),
            };
            let req = sharedcare_kit::peer::request(&self.own_token, req)
                .await
                .map_err(|e| PortalError::Internal(e.to_string()))?;
            let page = IdentityAdminClient::new(self.identity.clone())
                .list_organisations(req)
                .await?
                .into_inner();
            all.extend(page.organisations.into_iter().map(|o| (o.ods_code, o.name)));
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            page_token = page.next_page_token;
        }
    }
}

/// An organisation's name from `names`, else its ODS code.
pub fn name_of<'a>(names: &'a HashMap<String, String>, ods: &'a str) -> &'a str {
    names
        .get(ods)
        .map(String::as_str)
        .filter(|n| !n.is_empty())
        .unwrap_or(ods)
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
