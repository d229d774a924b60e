//! The OpenID provider's protocol logic, apart from HTTP: client authentication, the token
//! endpoint's grants, token minting, introspection, revocation and logout.
//!
//! Standards followed: OpenID Connect Core 1.0, RFC 6749 (OAuth 2.0), RFC 7636 (PKCE),
//! RFC 7009 (revocation), RFC 7662 (introspection), RFC 7523 (private_key_jwt), RFC 9068 (JWT
//! access tokens), OpenID Connect Back-Channel Logout 1.0, RFC 9700 (refresh token rotation).

use sharedcare_kit::edge::Refusal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sharedcare_kit::auth::Verifier;
use sharedcare_kit::bus::envelope;
use sharedcare_kit::jose::{self, JwkSet};
use sharedcare_kit::outbox::Outbox;
use sharedcare_proto::events::v1::IdentityEvent;

use crate::config::IdentityConfig;
use crate::error::IdentityError;
use crate::keys::KeyRing;
use crate::model::now;
use crate::model::{Client, EventKind, Grant, SubjectKind};
use crate::store::{Session, Store};

mod authorize;
mod claims;
mod client_auth;
mod grants;

pub use self::authorize::{
    AuthzParams, CheckedAuthz, check_authorization, needs_second_factor, session_fresh_enough, vtr_satisfied,
};
pub use self::client_auth::Presented;

/// The registered OAuth 2.0 / OpenID Connect error codes identity answers with: RFC 6749
/// §4.1.2.1 and §5.2, RFC 6750 §3.1 (`invalid_token`) and OIDC Core §3.1.2.6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    /// `invalid_request`.
    InvalidRequest,
    /// `invalid_client`.
    InvalidClient,
    /// `invalid_grant`.
    InvalidGrant,
    /// `invalid_scope`.
    InvalidScope,
    /// `invalid_token`.
    InvalidToken,
    /// `unauthorized_client`.
    UnauthorizedClient,
    /// `unsupported_response_type`.
    UnsupportedResponseType,
    /// `unsupported_grant_type`.
    UnsupportedGrantType,
    /// `access_denied`.
    AccessDenied,
    /// `login_required`.
    LoginRequired,
    /// `interaction_required`.
    InteractionRequired,
    /// `consent_required`.
    ConsentRequired,
    /// `unmet_authentication_requirements` (OpenID Connect Unmet Authentication Requirements 1.0).
    UnmetAuthenticationRequirements,
    /// `temporarily_unavailable`.
    TemporarilyUnavailable,
    /// `server_error`.
    ServerError,
}

impl OAuthErrorCode {
    /// The code as it goes on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::InvalidToken => "invalid_token",
            OAuthErrorCode::UnauthorizedClient => "unauthorized_client",
            OAuthErrorCode::UnsupportedResponseType => "unsupported_response_type",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorCode::AccessDenied => "access_denied",
            OAuthErrorCode::LoginRequired => "login_required",
            OAuthErrorCode::InteractionRequired => "interaction_required",
            OAuthErrorCode::ConsentRequired => "consent_required",
            OAuthErrorCode::UnmetAuthenticationRequirements => "unmet_authentication_requirements",
            OAuthErrorCode::TemporarilyUnavailable => "temporarily_unavailable",
            OAuthErrorCode::ServerError => "server_error",
        }
    }

    /// What an upstream provider's authorization error becomes when passed on to the app:
    /// the prompt=none outcomes and unavailability keep their meaning, anything else is a
    /// refusal.
    pub fn from_upstream(code: &str) -> OAuthErrorCode {
        match code {
            "login_required" => OAuthErrorCode::LoginRequired,
            "interaction_required" => OAuthErrorCode::InteractionRequired,
            "consent_required" => OAuthErrorCode::ConsentRequired,
            "temporarily_unavailable" => OAuthErrorCode::TemporarilyUnavailable,
            _ => OAuthErrorCode::AccessDenied,
        }
    }
}

impl std::fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for OAuthErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// An OAuth / OIDC error response (RFC 6749 §5.2): a registered code and a description that
/// says what was wrong without echoing secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// `error`.
    pub code: OAuthErrorCode,
    /// `error_description`.
    pub description: String,
}

impl OAuthError {
    /// An error with `code`.
    pub fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        OAuthError {
            code,
            description: description.into(),
        }
    }
    /// HTTP status for the token, revocation and introspection endpoints.
    pub fn status(&self) -> u16 {
        match self.code {
            OAuthErrorCode::InvalidClient | OAuthErrorCode::InvalidToken => 401,
            OAuthErrorCode::TemporarilyUnavailable => 503,
            OAuthErrorCode::ServerError => 500,
            _ => 400,
        }
    }
}

impl From<IdentityError> for OAuthError {
    fn from(e: IdentityError) -> Self {
        tracing::warn!(error = %e, "identity request failed");
        match e {
            IdentityError::Refused(Refusal::Invalid { .. }) => {
                OAuthError::new(OAuthErrorCode::InvalidRequest, e.to_string())
            }
            IdentityError::Storage(_) | IdentityError::Kit(_) => OAuthError::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "identity storage is unavailable",
            ),
            IdentityError::Corrupt(_) | IdentityError::Internal(_) => {
                tracing::error!(error = %e, "identity holds corrupt data");
                OAuthError::new(OAuthErrorCode::ServerError, "identity could not complete the request")
            }
            _ => OAuthError::new(OAuthErrorCode::ServerError, "identity could not complete the request"),
        }
    }
}

/// `Result` for protocol operations.
pub type OResult<T> = std::result::Result<T, OAuthError>;

/// The provider: identity's protocol state shared by every handler.
#[derive(Clone)]
pub struct Provider {
    /// Storage.
    pub store: Store,
    /// Signing keys.
    pub keys: KeyRing,
    /// Settings.
    pub config: Arc<IdentityConfig>,
    /// `iss`.
    pub issuer: Arc<str>,
    /// Where identity events go.
    pub outbox: Outbox,
    /// Verifies identity's own access tokens (userinfo, introspection, admin API).
    pub verifier: Verifier,
    /// Argon2id with bounded memory and concurrency.
    pub hasher: Arc<crate::secrets::Hasher>,
    /// Upstream providers.
    pub broker: crate::broker::Broker,
    clients: Arc<Mutex<HashMap<String, CachedClient>>>,
    client_keys: Arc<Mutex<HashMap<String, (JwkSet, Instant)>>>,
    http: reqwest::Client,
    /// The process's metrics: failures no caller could be told of are counted here.
    metrics: sharedcare_kit::metrics::Metrics,
    /// Keys patients' pairwise subject identifiers (one secret per identity deployment).
    subject_key: Arc<[u8]>,
}

/// A cached client: the registration, whether its organisation is active (true when it has
/// none), and when it was read.
type CachedClient = (Client, bool, Instant);

/// How long a client registration is cached in memory before it is read again.
const CLIENT_CACHE: Duration = Duration::from_secs(10);

/// The token endpoint's response body.
pub type TokenResponse = Value;

impl Provider {
    /// A provider over `store` and `keys`, issuing as `issuer`.
    pub fn new(
        store: Store,
        keys: KeyRing,
        config: IdentityConfig,
        issuer: String,
        outbox: Outbox,
        hasher: Arc<crate::secrets::Hasher>,
    ) -> sharedcare_kit::Result<Provider> {
        let verifier = Verifier::new(issuer.clone(), config.audience.clone(), Arc::new(keys.clone()));
        let http = sharedcare_kit::http_client::build(Duration::from_secs(5), false)?;
        let broker = crate::broker::Broker::new(config.upstreams.clone(), store.clone(), &issuer)?;
        Ok(Provider {
            broker,
            store,
            keys,
            config: Arc::new(config),
            issuer: issuer.into(),
            outbox,
            verifier,
            hasher,
            clients: Arc::new(Mutex::new(HashMap::new())),
            client_keys: Arc::new(Mutex::new(HashMap::new())),
            http,
            metrics: sharedcare_kit::metrics::Metrics::new(),
            subject_key: jose::random_token(32).into_bytes().into(),
        })
    }

    /// The same provider keying patients' pairwise `sub` with `key` (kept in identity's
    /// tables, so every replica and every restart gives a patient the same `sub` per client).
    pub fn with_subject_key(self, key: &[u8]) -> Provider {
        Provider {
            subject_key: key.into(),
            ..self
        }
    }

    /// The `sub` of a grant's subject: a member of staff's uid (CIS2's `nhsid_useruid`, the
    /// same to every app); for a patient a pairwise pseudonym (OIDC Core §8.1): a keyed HMAC of
    /// the client and the NHS number, so two apps cannot join their users by `sub`, and nobody
    /// without identity's key can turn one back into an NHS number.
    pub fn subject_id(&self, grant: &Grant) -> String {
        match grant.subject_kind {
            SubjectKind::Staff => grant.subject.clone(),
            SubjectKind::Patient => {
                use base64::Engine;
                use hmac::{Hmac, KeyInit, Mac};
                let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(&self.subject_key) else {
                    // Any key length is valid for HMAC; this branch cannot be taken.
                    return String::new();
                };
                mac.update(grant.client_id.as_bytes());
                mac.update(b"\0");
                mac.update(grant.subject.as_bytes());
                let h = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
                h.chars().take(32).collect()
            }
        }
    }

    /// The same provider counting its unreported failures on the process's `metrics`.
    pub fn with_metrics(self, metrics: sharedcare_kit::metrics::Metrics) -> Provider {
        Provider { metrics, ..self }
    }

    /// Counts a failure of kind `what` that no caller can be told of (it is logged too), on
    /// `sharedcare_unreported_failures_total{component="identity",what}`.
    pub fn unreported(&self, what: &'static str) {
        self.metrics.unreported(crate::NAME, what).inc();
    }

    /// The token endpoint URL.
    pub fn token_endpoint(&self) -> String {
        format!("{}/oauth2/token", self.issuer)
    }

    /// A client by id (cached briefly).
    pub async fn client(&self, id: &str) -> OResult<Option<Client>> {
        Ok(self.registered(id).await?.map(|(c, _)| c))
    }

    /// A client and whether its organisation is active (true when it has none), cached
    /// briefly: the token endpoint asks on every request.
    async fn registered(&self, id: &str) -> OResult<Option<(Client, bool)>> {
        if let Ok(cache) = self.clients.lock()
            && let Some((c, active, at)) = cache.get(id)
            && at.elapsed() < CLIENT_CACHE
        {
            return Ok(Some((c.clone(), *active)));
        }
        let Some(c) = self.store.client(id).await? else {
            return Ok(None);
        };
        let org = &c.settings.organisation;
        let active = org.is_empty() || self.store.organisation(org).await?.is_some_and(|o| o.active);
        if let Ok(mut cache) = self.clients.lock() {
            cache.insert(id.to_string(), (c.clone(), active, Instant::now()));
        }
        Ok(Some((c, active)))
    }

    /// Forgets a cached client (after an administrator changed it).
    pub fn forget_client(&self, id: &str) {
        if let Ok(mut cache) = self.clients.lock() {
            cache.remove(id);
        }
    }

    /// Forgets every cached client (after an organisation changed: its clients' standing did).
    pub fn forget_clients(&self) {
        if let Ok(mut cache) = self.clients.lock() {
            cache.clear();
        }
    }

    /// Ends a session: its refresh tokens are revoked and every client that signed in through
    /// it gets a back-channel logout token. Returns the clients notified successfully.
    pub async fn end_session(&self, session: &Session, kind: EventKind) -> OResult<Vec<String>> {
        let clients = self.store.revoke_session(&session.id, now()).await?;
        self.event(
            kind,
            session.subject_kind.as_str(),
            &session.subject,
            "",
            "",
            "",
            &[],
            "",
        )
        .await;
        let mut notified = Vec::new();
        for id in clients {
            let Some(client) = self.client(&id).await? else {
                continue;
            };
            let uri = &client.settings.backchannel_logout_uri;
            if uri.is_empty() {
                continue;
            }
            let now = now();
            let grant = Grant::of_session(session, &id, "");
            let token = self
                .keys
                .active()
                .sign(
                    "logout+jwt",
                    &json!({
                        "iss": &*self.issuer, "aud": id, "iat": now, "exp": now + 120, "jti": jose::random_token(16),
                        "sub": self.subject_id(&grant), "sid": session.id,
                        "events": {"http://schemas.openid.net/event/backchannel-logout": {}},
                    }),
                )
                .map_err(IdentityError::from)?;
            match self.http.post(uri).form(&[("logout_token", token)]).send().await {
                Ok(r) if r.status().is_success() => notified.push(id),
                Ok(r) => tracing::warn!(client = %id, status = %r.status(), "back-channel logout refused"),
                Err(e) => tracing::warn!(client = %id, error = %e, "back-channel logout failed"),
            }
        }
        Ok(notified)
    }

    /// Writes an identity event to the outbox (durably, before the caller answers).
    #[allow(clippy::too_many_arguments)]
    pub async fn event(
        &self,
        kind: EventKind,
        subject_kind: &str,
        subject: &str,
        client_id: &str,
        source: &str,
        detail: &str,
        amr: &[String],
        acr: &str,
    ) {
        let e = IdentityEvent {
            kind: kind.as_str().into(),
            subject: subject.into(),
            subject_kind: subject_kind.into(),
            client_id: client_id.into(),
            source_address: source.into(),
            detail: detail.into(),
            time: Some(sharedcare_kit::db::timestamp(sharedcare_kit::db::now_us())),
            amr: amr.to_vec(),
            acr: acr.into(),
        };
        let key = if subject_kind == "patient" { subject } else { "" };
        let env = envelope("sharedcare.events.v1.IdentityEvent", crate::NAME, subject, key, &e);
        // The event follows an answer already decided (a sign-in, a lockout), so there is no
        // caller to return this to: it is logged and counted on
        // sharedcare_unreported_failures_total{component="identity",what="identity_event"}.
        if let Err(err) = self.outbox.record(&sharedcare_kit::bus::topic(crate::NAME), env).await {
            self.unreported("identity_event");
            tracing::error!(error = %err, kind = kind.as_str(), "identity event could not be recorded");
        }
    }
}

impl Grant {
    /// What a live session grants `client_id` for `scope` (for userinfo and logout tokens).
    pub(super) fn of_session(session: &Session, client_id: &str, scope: &str) -> Grant {
        Grant {
            client_id: client_id.to_string(),
            session_id: session.id.clone(),
            subject_kind: session.subject_kind,
            subject: session.subject.clone(),
            scope: scope.to_string(),
            nonce: String::new(),
            redirect_uri: String::new(),
            code_challenge: String::new(),
            auth_time: session.auth_time,
            amr: session.amr.clone(),
            selected_role: session.selected_role.clone(),
        }
    }
}
