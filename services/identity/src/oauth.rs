//! The OpenID provider's protocol logic, apart from HTTP: client authentication, the token
//! endpoint's grants, token minting, introspection, revocation and logout.
//!
//! Standards followed: OpenID Connect Core 1.0, RFC 6749 (OAuth 2.0), RFC 7636 (PKCE),
//! RFC 7009 (revocation), RFC 7662 (introspection), RFC 7523 (private_key_jwt), RFC 9068 (JWT
//! access tokens), OpenID Connect Back-Channel Logout 1.0, RFC 9700 (refresh token rotation).

use sharedcare_kit::json::Fields;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sharedcare_kit::auth::{KeySource, KeysError, Verifier};
use sharedcare_kit::bus::envelope;
use sharedcare_kit::jose::{self, JwkSet};
use sharedcare_kit::outbox::Outbox;
use sharedcare_proto::events::v1::IdentityEvent;

use crate::config::IdentityConfig;
use crate::error::IdentityError;
use crate::keys::KeyRing;
use crate::model::{ACR_PASSWORD, AuthMethod, Client, EventKind, Grant, SubjectKind, acr_for, check_scope};
use crate::model::{JWT_BEARER, now};
use crate::store::{Session, Store};
use sharedcare_kit::nhs::ProofingLevel;

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

/// An authorization request's parameters that are checked without I/O (RFC 6749 §4.1.1,
/// RFC 7636, OIDC Core §3.1.2.1), once the client and redirect URI are known to be good.
#[derive(Debug, Clone, Default)]
pub struct AuthzParams<'a> {
    /// `response_type`.
    pub response_type: &'a str,
    /// `scope`.
    pub scope: &'a str,
    /// `code_challenge`.
    pub code_challenge: &'a str,
    /// `code_challenge_method`.
    pub code_challenge_method: &'a str,
    /// `max_age`.
    pub max_age: &'a str,
    /// `prompt`.
    pub prompt: &'a str,
}

/// What [`check_authorization`] accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedAuthz {
    /// The granted scope (requested ∩ the client's, `openid` included).
    pub scope: String,
    /// The PKCE challenge ("" when none was sent by a confidential client).
    pub code_challenge: String,
    /// `max_age` in seconds, if asked.
    pub max_age: Option<i64>,
    /// `prompt`, as sent.
    pub prompt: String,
}

/// Checks the parameters of an authorization request for `client` (response type, scope,
/// PKCE, `max_age`, `prompt`); the error goes back to the client's redirect URI.
pub fn check_authorization(client: &Client, p: &AuthzParams<'_>) -> Result<CheckedAuthz, OAuthError> {
    use OAuthErrorCode::*;
    if p.response_type != "code" {
        return Err(OAuthError::new(UnsupportedResponseType, "response_type must be code"));
    }
    if !client.allows_grant("authorization_code") {
        return Err(OAuthError::new(
            UnauthorizedClient,
            "this client may not use the authorization code flow",
        ));
    }
    let scope = match check_scope(p.scope, &client.settings.scopes) {
        Ok(s) if s.split(' ').any(|x| x == "openid") => s,
        Ok(_) => return Err(OAuthError::new(InvalidScope, "scope must include openid")),
        Err(e) => return Err(OAuthError::new(InvalidScope, e.to_string())),
    };
    let code_challenge = check_pkce(
        p.code_challenge,
        p.code_challenge_method,
        client.settings.auth_method == AuthMethod::None,
    )?;
    let max_age = match p.max_age {
        "" => None,
        v => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => {
                return Err(OAuthError::new(
                    InvalidRequest,
                    "max_age must be a non-negative integer",
                ));
            }
        },
    };
    if p.prompt
        .split_whitespace()
        .any(|x| !["none", "login", "select_account", "consent"].contains(&x))
    {
        return Err(OAuthError::new(
            InvalidRequest,
            "prompt must be none, login or select_account",
        ));
    }
    Ok(CheckedAuthz {
        scope,
        code_challenge,
        max_age,
        prompt: p.prompt.to_string(),
    })
}

/// RFC 7636: only S256; required of public clients; a challenge is a base64url SHA-256.
fn check_pkce(challenge: &str, method: &str, public_client: bool) -> Result<String, OAuthError> {
    use base64::Engine;
    let invalid = |why: &str| Err(OAuthError::new(OAuthErrorCode::InvalidRequest, why));
    if challenge.is_empty() {
        if public_client {
            return invalid("PKCE with code_challenge_method=S256 is required for public clients");
        }
        return Ok(String::new());
    }
    if method != "S256" {
        return invalid("code_challenge_method must be S256");
    }
    let decodes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(challenge)
        .is_ok();
    if challenge.len() != 43 || !decodes {
        return invalid("code_challenge must be a base64url SHA-256 (43 characters)");
    }
    Ok(challenge.to_string())
}

/// Whether a session authenticated at `auth_time` may answer a request with `max_age` at
/// `now` (OIDC Core §3.1.2.1: older sessions must sign in again).
pub fn session_fresh_enough(max_age: Option<i64>, auth_time: i64, now: i64) -> bool {
    max_age.is_none_or(|m| now - auth_time <= m)
}

/// Whether `acr_values` asks for more than a password while the session's methods (`amr`)
/// give only that: the user must present a second factor.
pub fn needs_second_factor(acr_values: &str, amr: &[String]) -> bool {
    acr_values.split_whitespace().any(|a| a != ACR_PASSWORD) && acr_for(amr) == ACR_PASSWORD
}

/// Whether a patient proofed at `have` satisfies NHS login's `vtr` (a JSON list of vectors
/// such as `["P9.Cp.Cd"]`): no list, or any vector whose level is at most `have`. A `vtr` that
/// is not such a list is satisfied by nothing.
pub fn vtr_satisfied(vtr: &str, have: ProofingLevel) -> bool {
    if vtr.is_empty() {
        return true;
    }
    let Ok(wanted) = serde_json::from_str::<Vec<String>>(vtr) else {
        return false;
    };
    wanted.is_empty()
        || wanted
            .iter()
            .any(|v| ProofingLevel::parse(v.split('.').next().unwrap_or_default()).is_some_and(|level| level <= have))
}

impl From<IdentityError> for OAuthError {
    fn from(e: IdentityError) -> Self {
        tracing::warn!(error = %e, "identity request failed");
        match e {
            IdentityError::Invalid { .. } => OAuthError::new(OAuthErrorCode::InvalidRequest, e.to_string()),
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

/// Client credentials as presented to an endpoint.
#[derive(Debug, Default, Clone)]
pub struct Presented {
    /// From HTTP Basic.
    pub basic: Option<(String, String)>,
    /// `client_id` form field.
    pub client_id: String,
    /// `client_secret` form field.
    pub client_secret: String,
    /// `client_assertion_type`.
    pub assertion_type: String,
    /// `client_assertion`.
    pub assertion: String,
}

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
    /// `sharedcare_unreported_failures_total{service="identity",what}`.
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

    /// Authenticates the client at the token, revocation or introspection endpoint with the
    /// method it registered (OIDC Core §9). Any failure is `invalid_client`.
    pub async fn authenticate(&self, p: &Presented) -> OResult<Client> {
        let bad = |why: &str| {
            OAuthError::new(
                OAuthErrorCode::InvalidClient,
                format!("client authentication failed: {why}"),
            )
        };
        let id = match (&p.basic, p.client_id.is_empty()) {
            (Some((id, _)), _) => id.clone(),
            (None, false) => p.client_id.clone(),
            (None, true) if !p.assertion.is_empty() => {
                let claims = unverified_payload(&p.assertion).ok_or_else(|| bad("client_assertion is not a JWT"))?;
                claims.at("iss").as_str().unwrap_or_default().to_string()
            }
            _ => return Err(bad("no client credentials")),
        };
        let (client, active) = self.registered(&id).await?.ok_or_else(|| bad("unknown client"))?;
        if !active {
            let org = &client.settings.organisation;
            return Err(bad(&format!("the client's organisation {org} is not active")));
        }
        match client.settings.auth_method {
            AuthMethod::ClientSecretBasic => {
                let Some((_, secret)) = &p.basic else {
                    return Err(bad("this client must use client_secret_basic"));
                };
                check_secret(&client, secret).map_err(|()| bad("wrong client secret"))?;
            }
            AuthMethod::ClientSecretPost => {
                if p.client_secret.is_empty() || p.basic.is_some() {
                    return Err(bad("this client must use client_secret_post"));
                }
                check_secret(&client, &p.client_secret).map_err(|()| bad("wrong client secret"))?;
            }
            AuthMethod::PrivateKeyJwt => self.check_assertion(&client, p).await?,
            AuthMethod::None => {
                if p.basic.is_some() || !p.client_secret.is_empty() || !p.assertion.is_empty() {
                    return Err(bad("a public client has no credentials"));
                }
            }
        }
        Ok(client)
    }

    /// RFC 7523 §3: iss = sub = client_id, aud names this provider, unexpired, `jti` unseen.
    async fn check_assertion(&self, client: &Client, p: &Presented) -> OResult<()> {
        let bad = |why: String| {
            OAuthError::new(
                OAuthErrorCode::InvalidClient,
                format!("client assertion refused: {why}"),
            )
        };
        let no_keys = |e: KeysError| bad(e.to_string());
        if p.assertion_type != JWT_BEARER {
            return Err(bad(format!("client_assertion_type must be {JWT_BEARER}")));
        }
        let claims = match &client.settings.jwks {
            Some(keys) => jose::verify_with(&p.assertion, keys),
            None => {
                let keys = self.client_jwks(client, false).await.map_err(no_keys)?;
                match jose::verify_with(&p.assertion, &keys) {
                    Err(jose::JoseError::UnknownKey(_)) => {
                        let keys = self.client_jwks(client, true).await.map_err(no_keys)?;
                        jose::verify_with(&p.assertion, &keys)
                    }
                    other => other,
                }
            }
        }
        .map_err(|e| bad(e.to_string()))?;
        let s = |k: &str| claims.at(k).as_str().unwrap_or_default().to_string();
        if s("iss") != client.id || s("sub") != client.id {
            return Err(bad("iss and sub must be the client_id".into()));
        }
        let token_endpoint = self.token_endpoint();
        let aud_ok = |v: &Value| v.as_str().is_some_and(|a| a == token_endpoint || a == &*self.issuer);
        let aud = match claims.at("aud") {
            Value::Array(a) => a.iter().any(aud_ok),
            v => aud_ok(v),
        };
        if !aud {
            return Err(bad("aud must be the token endpoint or the issuer".into()));
        }
        let exp = claims.at("exp").as_i64().ok_or_else(|| bad("exp is missing".into()))?;
        let now = now();
        if exp <= now || exp > now + 3600 {
            return Err(bad("exp must be in the next hour".into()));
        }
        let jti = s("jti");
        if jti.is_empty() {
            return Err(bad("jti is missing".into()));
        }
        if !self
            .store
            .first_use_of_assertion(&format!("{}:{jti}", client.id), exp)
            .await?
        {
            return Err(bad("jti was already used".into()));
        }
        Ok(())
    }

    /// A client's keys from its `jwks_uri`, cached for [`CLIENT_CACHE`]; `refresh` refetches
    /// (at most once per second per client) because an assertion named an unknown `kid`.
    async fn client_jwks(&self, client: &Client, refresh: bool) -> Result<JwkSet, KeysError> {
        let cached = self.client_keys.lock().ok().and_then(|c| c.get(&client.id).cloned());
        if let Some((keys, at)) = &cached {
            let fresh_enough = if refresh {
                at.elapsed() < Duration::from_secs(1)
            } else {
                at.elapsed() < CLIENT_CACHE
            };
            if fresh_enough {
                return Ok(keys.clone());
            }
        }
        let uri = &client.settings.jwks_uri;
        if uri.is_empty() {
            return Err(KeysError::NotRegistered);
        }
        let keys = sharedcare_kit::auth::HttpKeys::with_client(uri.clone(), self.http.clone())
            .fetch()
            .await?;
        if let Ok(mut c) = self.client_keys.lock() {
            c.insert(client.id.clone(), (keys.clone(), Instant::now()));
        }
        Ok(keys)
    }

    /// The token endpoint (RFC 6749 §3.2) after client authentication.
    pub async fn token(&self, client: &Client, form: &HashMap<String, String>) -> OResult<TokenResponse> {
        let f = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
        let grant_type = f("grant_type");
        if grant_type.is_empty() {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "grant_type is required",
            ));
        }
        if !client.allows_grant(grant_type) {
            return Err(OAuthError::new(
                OAuthErrorCode::UnauthorizedClient,
                format!("grant_type {grant_type:?} is not registered for this client"),
            ));
        }
        match grant_type {
            "client_credentials" => self.client_credentials(client, f("scope")),
            "authorization_code" => {
                self.redeem_code(client, f("code"), f("redirect_uri"), f("code_verifier"))
                    .await
            }
            "refresh_token" => self.refresh(client, f("refresh_token"), f("scope")).await,
            other => Err(OAuthError::new(
                OAuthErrorCode::UnsupportedGrantType,
                format!("grant_type {other:?} is not supported"),
            )),
        }
    }

    fn client_credentials(&self, client: &Client, scope: &str) -> OResult<TokenResponse> {
        let scope = if scope.is_empty() {
            client
                .settings
                .scopes
                .iter()
                .filter(|s| s.contains('.'))
                .cloned()
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            check_scope(scope, &client.settings.scopes)
                .map_err(|e| OAuthError::new(OAuthErrorCode::InvalidScope, e.to_string()))?
        };
        let now = now();
        let ttl = self.config.access_token_secs;
        let claims = json!({
            "iss": &*self.issuer, "sub": client.id, "aud": [self.config.audience.as_str()],
            "client_id": client.id, "scope": scope, "jti": jose::random_token(16),
            "iat": now, "nbf": now, "exp": now + ttl,
        });
        let token = self
            .keys
            .active()
            .sign("at+jwt", &claims)
            .map_err(IdentityError::from)?;
        Ok(json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl, "scope": scope}))
    }

    async fn redeem_code(
        &self,
        client: &Client,
        code: &str,
        redirect_uri: &str,
        verifier: &str,
    ) -> OResult<TokenResponse> {
        let invalid = |why: &str| OAuthError::new(OAuthErrorCode::InvalidGrant, why.to_string());
        if code.is_empty() {
            return Err(OAuthError::new(OAuthErrorCode::InvalidRequest, "code is required"));
        }
        let grant = match self.store.take_code(&jose::sha256_b64(code), now()).await? {
            Ok(g) => g,
            Err(true) => return Err(invalid("authorization code was already used")),
            Err(false) => return Err(invalid("authorization code is unknown or expired")),
        };
        if grant.client_id != client.id {
            return Err(invalid("authorization code was issued to another client"));
        }
        if grant.redirect_uri != redirect_uri {
            return Err(invalid("redirect_uri does not match the authorization request"));
        }
        if !grant.code_challenge.is_empty() {
            if verifier.is_empty() {
                return Err(invalid("code_verifier is required (PKCE)"));
            }
            if jose::sha256_b64(verifier) != grant.code_challenge {
                return Err(invalid("code_verifier does not match the code_challenge (PKCE)"));
            }
        } else if !verifier.is_empty() {
            // RFC 9700 §2.1.1: a verifier for a code issued without a challenge is a sign of
            // PKCE downgrade (the challenge stripped from the request).
            return Err(invalid(
                "code_verifier was sent but the authorization request had no code_challenge",
            ));
        }
        self.live_session(&grant).await?;
        self.issue(client, &grant, None).await
    }

    async fn refresh(&self, client: &Client, token: &str, scope: &str) -> OResult<TokenResponse> {
        let invalid = |why: &str| OAuthError::new(OAuthErrorCode::InvalidGrant, why.to_string());
        if token.is_empty() {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidRequest,
                "refresh_token is required",
            ));
        }
        let (family, mut grant) = match self.store.use_refresh(&jose::sha256_b64(token), now()).await? {
            Ok(x) => x,
            Err(true) => {
                tracing::warn!(client = %client.id, "refresh token reuse: family revoked");
                return Err(invalid(
                    "refresh token was already used; every token of its family is revoked",
                ));
            }
            Err(false) => return Err(invalid("refresh token is unknown, expired or revoked")),
        };
        if grant.client_id != client.id {
            return Err(invalid("refresh token was issued to another client"));
        }
        if !scope.is_empty() {
            let asked: Vec<&str> = scope.split_whitespace().collect();
            if let Some(extra) = asked.iter().find(|s| !grant.has_scope(s)) {
                return Err(OAuthError::new(
                    OAuthErrorCode::InvalidScope,
                    format!("scope {extra:?} was not granted originally"),
                ));
            }
            grant.scope = asked.join(" ");
        }
        self.live_session(&grant).await?;
        grant.nonce.clear();
        self.issue(client, &grant, Some(family)).await
    }

    /// The session behind a grant must still be live: logging out ends every app's tokens.
    async fn live_session(&self, grant: &Grant) -> OResult<Session> {
        let s = self.store.session(&grant.session_id).await?;
        match s {
            Some(s) if !s.revoked && s.expires_at > now() => Ok(s),
            _ => Err(OAuthError::new(
                OAuthErrorCode::InvalidGrant,
                "the sign-in session has ended",
            )),
        }
    }

    /// Mints access + ID (+ refresh) tokens for a grant. `family` continues a rotation family.
    async fn issue(&self, client: &Client, grant: &Grant, family: Option<String>) -> OResult<TokenResponse> {
        let now = now();
        let ttl = self.config.access_token_secs;
        let subject = self.subject_claims(grant).await?;
        let signer = self.keys.active();
        let mut at = json!({
            "iss": &*self.issuer, "sub": self.subject_id(grant), "aud": [self.config.audience.as_str(), client.id.as_str()],
            "client_id": client.id, "scope": grant.scope, "jti": jose::random_token(16),
            "iat": now, "nbf": now, "exp": now + ttl, "auth_time": grant.auth_time,
            "acr": grant.acr(), "amr": grant.amr, "sid": grant.session_id,
        });
        merge(&mut at, access_claims(grant, &subject));
        let access_token = signer.sign("at+jwt", &at).map_err(IdentityError::from)?;
        let mut out = json!({
            "access_token": access_token, "token_type": "Bearer", "expires_in": ttl, "scope": grant.scope,
        });
        if grant.has_scope("openid") {
            let mut id = json!({
                "iss": &*self.issuer, "sub": self.subject_id(grant), "aud": client.id, "azp": client.id,
                "iat": now, "exp": now + ttl, "auth_time": grant.auth_time, "acr": grant.acr(),
                "amr": grant.amr, "sid": grant.session_id, "at_hash": jose::half_hash(&access_token),
            });
            if !grant.nonce.is_empty() {
                id.put("nonce", json!(grant.nonce));
            }
            merge(&mut id, scoped_claims(grant, &subject));
            let id_token = if client.settings.id_token_alg == "RS256" {
                // at_hash is the left half of the hash named by the ID token's alg: SHA-256 for both.
                self.keys.rsa().await?.sign("JWT", &id)
            } else {
                signer.sign("JWT", &id)
            }
            .map_err(IdentityError::from)?;
            out.put("id_token", json!(id_token));
        }
        if client.allows_grant("refresh_token") {
            let token = jose::random_token(32);
            let family = family.unwrap_or_else(|| jose::random_token(12));
            self.store
                .put_refresh(
                    &jose::sha256_b64(&token),
                    &family,
                    grant,
                    now + self.config.refresh_token_secs,
                )
                .await?;
            out.put("refresh_token", json!(token));
        }
        Ok(out)
    }

    /// Everything known about the grant's subject, as claims (filtered by scope later).
    pub async fn subject_claims(&self, grant: &Grant) -> OResult<Value> {
        match grant.subject_kind {
            SubjectKind::Staff => {
                let (p, _, _) = self
                    .store
                    .person("uid", &grant.subject)
                    .await?
                    .ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidGrant, "the person no longer exists"))?;
                let codes: Vec<&str> = p.roles.iter().map(|r| r.org_code.as_str()).collect();
                let orgs = self.store.organisation_names(&codes).await?;
                let mut user_orgs = Vec::new();
                for r in &p.roles {
                    if !user_orgs.iter().any(|o: &Value| o["org_code"] == r.org_code.as_str()) {
                        let name = orgs.iter().find(|(c, _)| *c == r.org_code).map(|(_, n)| n.clone());
                        user_orgs.push(json!({"org_code": r.org_code, "org_name": name.unwrap_or_default()}));
                    }
                }
                let roles: Vec<Value> = p
                    .roles
                    .iter()
                    .map(|r| {
                        json!({
                            "person_orgid": format!("{}{}", p.uid, r.org_code), "person_roleid": r.person_roleid,
                            "org_code": r.org_code, "role_name": r.role_name, "role_code": r.role_code,
                            "activity_codes": crate::model::expand_activities(&r.activity_codes),
                        })
                    })
                    .collect();
                Ok(json!({
                    "nhsid_useruid": p.uid, "name": format!("{} {}", p.given_name, p.family_name),
                    "given_name": p.given_name, "family_name": p.family_name, "email": p.email,
                    "nhsid_nrbac_roles": roles, "nhsid_user_orgs": user_orgs,
                    "selected_roleid": grant.selected_role, "idassurancelevel": if grant.acr() == crate::model::ACR_MFA { "3" } else { "2" },
                }))
            }
            SubjectKind::Patient => {
                let (p, _, _) = self
                    .store
                    .patient("nhs_number", &grant.subject)
                    .await?
                    .ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidGrant, "the patient no longer exists"))?;
                let vot = if grant.amr.iter().any(|m| m == "otp") {
                    format!("{}.Cp.Cd", p.proofing_level)
                } else {
                    format!("{}.Cp", p.proofing_level)
                };
                Ok(json!({
                    "nhs_number": p.nhs_number, "identity_proofing_level": p.proofing_level,
                    "given_name": p.given_name, "family_name": p.family_name, "birthdate": p.birthdate,
                    "name": format!("{} {}", p.given_name, p.family_name), "vot": vot,
                }))
            }
        }
    }

    /// Verifies one of identity's access tokens for userinfo: signature, issuer, audience,
    /// expiry, not revoked, session live. Returns its claims.
    /// Also returns the token's live session (`None` for service tokens, which have none).
    pub async fn check_access_token(&self, token: &str) -> OResult<(Value, Option<Session>)> {
        let invalid = |why: String| OAuthError::new(OAuthErrorCode::InvalidToken, why);
        let claims = self
            .verifier
            .claims(token, sharedcare_kit::auth::ACCESS_TOKEN_TYP)
            .await
            .map_err(|e| invalid(e.to_string()))?;
        let jti = claims.at("jti").as_str().unwrap_or_default();
        if self.store.jti_revoked(jti).await? {
            return Err(invalid("the access token was revoked".into()));
        }
        let session = match claims.at("sid").as_str() {
            None => None,
            Some(sid) => match self.store.session(sid).await? {
                Some(s) if !s.revoked && s.expires_at > now() => Some(s),
                _ => return Err(invalid("the sign-in session has ended".into())),
            },
        };
        Ok((claims, session))
    }

    /// userinfo (OIDC Core §5.3): the subject's claims the token's scopes allow.
    pub async fn userinfo(&self, token: &str) -> OResult<Value> {
        let (claims, session) = self.check_access_token(token).await?;
        let session = session.ok_or_else(|| OAuthError::new(OAuthErrorCode::InvalidToken, "not a user's token"))?;
        let grant = Grant::of_session(
            &session,
            claims.at("client_id").as_str().unwrap_or_default(),
            claims.at("scope").as_str().unwrap_or_default(),
        );
        let subject = self.subject_claims(&grant).await?;
        let mut out = json!({"sub": self.subject_id(&grant)});
        merge(&mut out, scoped_claims(&grant, &subject));
        Ok(out)
    }

    /// RFC 7662 introspection by an authenticated client.
    pub async fn introspect(&self, caller: &str, token: &str) -> OResult<Value> {
        if token.is_empty() {
            return Err(OAuthError::new(OAuthErrorCode::InvalidRequest, "token is required"));
        }
        // Only a resource server the token names (its audience) learns about it: to anyone
        // else every token is inactive (RFC 7662 §4: the server decides who may ask about what).
        let names_caller = |aud: &Value| match aud {
            Value::String(a) => a == caller,
            Value::Array(a) => a.iter().any(|v| v.as_str() == Some(caller)),
            _ => false,
        };
        if let Ok((c, _)) = self.check_access_token(token).await
            && names_caller(c.at("aud"))
        {
            let mut out = json!({"active": true, "token_type": "Bearer"});
            for k in [
                "scope",
                "client_id",
                "sub",
                "exp",
                "iat",
                "nbf",
                "iss",
                "aud",
                "jti",
                "sid",
                "acr",
            ] {
                if !c.at(k).is_null() {
                    out.put(k, c.at(k).clone());
                }
            }
            return Ok(out);
        }
        if let Some(g) = self.store.refresh_active(&jose::sha256_b64(token), now()).await?
            && g.client_id == caller
        {
            return Ok(json!({
                "active": true, "token_type": "refresh_token", "client_id": g.client_id,
                "scope": g.scope, "sub": self.subject_id(&g), "iss": &*self.issuer,
            }));
        }
        Ok(json!({"active": false}))
    }

    /// RFC 7009 revocation: refresh tokens revoke their family; access tokens their `jti`.
    /// Tokens of other clients and unknown tokens are ignored (the answer is 200 either way).
    pub async fn revoke(&self, client: &Client, token: &str) -> OResult<()> {
        if token.is_empty() {
            return Err(OAuthError::new(OAuthErrorCode::InvalidRequest, "token is required"));
        }
        if let Some((family, grant)) = self.store.refresh_family(&jose::sha256_b64(token)).await? {
            if grant.client_id == client.id {
                self.store.revoke_family(&family, now()).await?;
            }
            return Ok(());
        }
        if let Ok(c) = self
            .verifier
            .claims(token, sharedcare_kit::auth::ACCESS_TOKEN_TYP)
            .await
            && c.at("client_id").as_str() == Some(client.id.as_str())
        {
            let jti = c.at("jti").as_str().unwrap_or_default();
            let exp = c.at("exp").as_i64().unwrap_or_default();
            self.store.revoke_jti(jti, exp).await?;
        }
        Ok(())
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
        // sharedcare_unreported_failures_total{service="identity",what="identity_event"}.
        if let Err(err) = self.outbox.record(&sharedcare_kit::bus::topic(crate::NAME), env).await {
            self.unreported("identity_event");
            tracing::error!(error = %err, kind = kind.as_str(), "identity event could not be recorded");
        }
    }
}

impl Grant {
    /// What a live session grants `client_id` for `scope` (for userinfo and logout tokens).
    fn of_session(session: &Session, client_id: &str, scope: &str) -> Grant {
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

fn check_secret(client: &Client, secret: &str) -> Result<(), ()> {
    if client.secret_hash.is_empty() {
        return Err(());
    }
    let given = jose::sha256_b64(secret);
    // Compare digests without an early exit.
    let (a, b) = (given.as_bytes(), client.secret_hash.as_bytes());
    if a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0 {
        Ok(())
    } else {
        Err(())
    }
}

fn unverified_payload(jwt: &str) -> Option<Value> {
    use base64::Engine;
    let p = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `sub`: the person's uid for staff (as CIS2); for patients a pairwise-stable pseudonym, not
/// the NHS number (as NHS login), which is a claim of its own under the `nhs_number` scope.
fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(a), Value::Object(b)) = (into, from) {
        for (k, v) in b {
            a.insert(k, v);
        }
    }
}

/// Claims the access token carries so services can authorise without calling identity.
fn access_claims(grant: &Grant, s: &Value) -> Value {
    match grant.subject_kind {
        SubjectKind::Staff => json!({
            "nhsid_useruid": s["nhsid_useruid"], "selected_roleid": s["selected_roleid"],
            "nhsid_nrbac_roles": s["nhsid_nrbac_roles"], "idassurancelevel": s["idassurancelevel"],
        }),
        SubjectKind::Patient => json!({
            "nhs_number": s["nhs_number"], "identity_proofing_level": s["identity_proofing_level"], "vot": s["vot"],
        }),
    }
}

/// Claims for the ID token and userinfo, by scope (CIS2 and NHS login scope names).
fn scoped_claims(grant: &Grant, s: &Value) -> Value {
    let mut out = json!({});
    let mut copy = |keys: &[&str]| {
        for k in keys {
            if !s[*k].is_null() && s[*k] != json!("") {
                out.put(k, s[*k].clone());
            }
        }
    };
    if grant.has_scope("profile") {
        copy(&[
            "name",
            "given_name",
            "family_name",
            "birthdate",
            "nhsid_useruid",
            "idassurancelevel",
        ]);
    }
    if grant.has_scope("email") {
        copy(&["email"]);
    }
    if grant.has_scope("nationalrbacaccess") {
        copy(&["nhsid_useruid", "nhsid_nrbac_roles"]);
    }
    if grant.has_scope("selectedrole") {
        copy(&["selected_roleid"]);
    }
    if grant.has_scope("associatedorgs") {
        copy(&["nhsid_user_orgs"]);
    }
    if grant.has_scope("nhs_number") {
        copy(&["nhs_number", "identity_proofing_level", "vot"]);
    }
    if grant.has_scope("basic_demographics") {
        copy(&["birthdate", "family_name", "given_name", "identity_proofing_level"]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClientSettings;

    fn client(auth_method: AuthMethod) -> Client {
        Client {
            id: "app".into(),
            name: "App".into(),
            secret_hash: String::new(),
            settings: ClientSettings {
                redirect_uris: vec!["https://app.example/cb".into()],
                post_logout_redirect_uris: Vec::new(),
                backchannel_logout_uri: String::new(),
                grant_types: vec!["authorization_code".into()],
                scopes: vec!["openid".into(), "profile".into()],
                auth_method,
                jwks: None,
                jwks_uri: String::new(),
                id_token_alg: String::new(),
                organisation: String::new(),
            },
        }
    }

    /// A valid S256 challenge (43 base64url characters).
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn params<'a>() -> AuthzParams<'a> {
        AuthzParams {
            response_type: "code",
            scope: "openid profile",
            code_challenge: CHALLENGE,
            code_challenge_method: "S256",
            ..Default::default()
        }
    }

    fn refused(c: &Client, p: &AuthzParams<'_>) -> (OAuthErrorCode, String) {
        let e = check_authorization(c, p).expect_err("refused");
        (e.code, e.description)
    }

    #[test]
    fn a_well_formed_request_is_accepted_as_asked() {
        let ok = check_authorization(&client(AuthMethod::None), &params()).expect("accepted");
        assert_eq!(ok.scope, "openid profile");
        assert_eq!(ok.code_challenge, CHALLENGE);
        assert_eq!(ok.max_age, None);
    }

    #[test]
    fn pkce_is_s256_only_and_required_of_public_clients() {
        let public = client(AuthMethod::None);
        let no_pkce = AuthzParams {
            code_challenge: "",
            code_challenge_method: "",
            ..params()
        };
        assert_eq!(refused(&public, &no_pkce).0, OAuthErrorCode::InvalidRequest);
        let confidential = client(AuthMethod::ClientSecretBasic);
        assert_eq!(
            check_authorization(&confidential, &no_pkce)
                .expect("optional")
                .code_challenge,
            ""
        );
        let plain = AuthzParams {
            code_challenge_method: "plain",
            ..params()
        };
        assert_eq!(refused(&confidential, &plain).1, "code_challenge_method must be S256");
        let short = AuthzParams {
            code_challenge: "abc",
            ..params()
        };
        assert!(refused(&confidential, &short).1.contains("43 characters"));
    }

    #[test]
    fn response_type_scope_max_age_and_prompt_are_checked_by_name() {
        let c = client(AuthMethod::ClientSecretBasic);
        let cases = [
            (
                AuthzParams {
                    response_type: "token",
                    ..params()
                },
                OAuthErrorCode::UnsupportedResponseType,
            ),
            (
                AuthzParams {
                    scope: "profile",
                    ..params()
                },
                OAuthErrorCode::InvalidScope,
            ),
            (
                AuthzParams {
                    scope: "openid records.write",
                    ..params()
                },
                OAuthErrorCode::InvalidScope,
            ),
            (
                AuthzParams {
                    max_age: "-1",
                    ..params()
                },
                OAuthErrorCode::InvalidRequest,
            ),
            (
                AuthzParams {
                    prompt: "none bogus",
                    ..params()
                },
                OAuthErrorCode::InvalidRequest,
            ),
        ];
        for (p, want) in cases {
            assert_eq!(refused(&c, &p).0, want, "{p:?}");
        }
        let aged = AuthzParams {
            max_age: "300",
            prompt: "login select_account",
            ..params()
        };
        let ok = check_authorization(&c, &aged).expect("accepted");
        assert_eq!((ok.max_age, ok.prompt.as_str()), (Some(300), "login select_account"));
    }

    #[test]
    fn a_client_without_the_code_grant_is_unauthorized() {
        let mut c = client(AuthMethod::ClientSecretBasic);
        c.settings.grant_types = vec!["client_credentials".into()];
        assert_eq!(refused(&c, &params()).0, OAuthErrorCode::UnauthorizedClient);
    }

    #[test]
    fn max_age_acr_and_vtr_decide_what_a_session_satisfies() {
        assert!(session_fresh_enough(None, 0, 1_000));
        assert!(session_fresh_enough(Some(60), 1_000, 1_060));
        assert!(!session_fresh_enough(Some(60), 1_000, 1_061));
        assert!(!session_fresh_enough(Some(0), 1_000, 1_001));

        let pwd = vec!["pwd".to_string()];
        let otp = vec!["pwd".to_string(), "otp".to_string()];
        assert!(needs_second_factor("AAL2", &pwd));
        assert!(!needs_second_factor("AAL2", &otp));
        assert!(!needs_second_factor("AAL1", &pwd));
        assert!(!needs_second_factor("", &pwd));

        assert!(vtr_satisfied("", ProofingLevel::P0));
        assert!(vtr_satisfied(r#"["P9.Cp.Cd"]"#, ProofingLevel::P9));
        assert!(!vtr_satisfied(r#"["P9.Cp.Cd"]"#, ProofingLevel::P5));
        assert!(vtr_satisfied(r#"["P9.Cp.Cd", "P5.Cp.Cd"]"#, ProofingLevel::P5));
        assert!(
            !vtr_satisfied("not json", ProofingLevel::P9),
            "a malformed vtr is met by nothing"
        );
    }

    #[test]
    fn upstream_errors_keep_their_prompt_none_meaning_or_become_a_refusal() {
        assert_eq!(
            OAuthErrorCode::from_upstream("login_required"),
            OAuthErrorCode::LoginRequired
        );
        assert_eq!(
            OAuthErrorCode::from_upstream("server_error"),
            OAuthErrorCode::AccessDenied
        );
        assert_eq!(
            OAuthErrorCode::UnmetAuthenticationRequirements.as_str(),
            "unmet_authentication_requirements"
        );
    }
}
