//! Bearer tokens → [`Principal`]: what every service's authorisation code sees.
//!
//! [`Verifier`] checks an identity-issued JWT (ES256 only, `kid` from a cached JWK Set that is
//! refreshed once when an unknown `kid` arrives, issuer, audience, `exp`, `nbf`) and maps its
//! claims — CIS2's names for staff, NHS login's for patients — to a typed principal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;

use std::collections::HashMap;

use crate::jose::{self, JoseError, Jwk, JwkSet, PublicKey};
use crate::nhs::{NhsNumber, OdsCode, ProofingLevel};

/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: i64 = 30;

/// The national RBAC activity of staff who work the break-glass review queue (consent allows
/// it; the portal offers the queue): the privacy officer's "Receive Legal Override and
/// Emergency View Alerts", apart from identity administration (B1300). In the demo ICS, the
/// ICB's administrator holds both: she is also its information governance lead.
pub const BREAK_GLASS_REVIEW_ACTIVITY: &str = "B0015";
/// Least time between two key-set fetches caused by unknown `kid`s (a flood of forged kids
/// must not turn into a flood of JWKS fetches).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(1);
/// The authentication assurance levels (`acr`, NIST SP 800-63B) at which staff tokens are
/// accepted: a password and a second factor or better, as NHS CIS2 authenticates staff. A
/// password-only staff token (AAL1) is refused by every service, naming the claim.
pub const STAFF_ACR: &[&str] = &["AAL2", "AAL3"];

/// How long a verifier trusts a fetched key set by default (`auth.jwks_max_age_secs`).
pub const DEFAULT_KEYS_MAX_AGE: Duration = Duration::from_secs(300);
/// Verified tokens a verifier remembers (then it starts again from empty).
pub const VERIFIED_CACHE: usize = 10_000;

/// Who is calling, as authorisation code sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A member of staff acting in one selected role profile (CIS2's `selected_roleid`).
    Staff {
        /// The person's user id (`nhsid_useruid`).
        person: String,
        /// The role profile they act in.
        role: RoleProfile,
        /// How strongly they authenticated (`acr`).
        acr: String,
    },
    /// A patient (NHS login).
    Patient {
        /// Their NHS number.
        nhs_number: NhsNumber,
        /// Identity proofing level (P9 to see one's own record).
        proofing: ProofingLevel,
    },
    /// A service calling with a `client_credentials` token.
    Service {
        /// The OAuth client id.
        client_id: String,
        /// Granted scopes.
        scopes: Vec<String>,
    },
}

/// A staff role profile as carried in `nhsid_nrbac_roles` (CIS2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleProfile {
    /// `person_roleid`: the role profile's id.
    pub person_roleid: String,
    /// `org_code`: the organisation's ODS code.
    pub org_code: String,
    /// `role_code`: national RBAC job role code, e.g. "S8000:G8000:R8000".
    pub role_code: String,
    /// `role_name`.
    #[serde(default)]
    pub role_name: String,
    /// `activity_codes`: national RBAC activities, included activities expanded.
    #[serde(default)]
    pub activity_codes: Vec<String>,
    /// `person_orgid`.
    #[serde(default)]
    pub person_orgid: String,
}

impl RoleProfile {
    /// The organisation, parsed.
    pub fn org(&self) -> Option<OdsCode> {
        OdsCode::parse(&self.org_code).ok()
    }
}

/// Why a bearer token was refused. Never contains the token.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer …`.
    #[error("missing bearer token")]
    Missing,
    /// Signature, algorithm or key problem.
    #[error("{0}")]
    Jose(#[from] JoseError),
    /// A claim check failed; names the claim.
    #[error("token claim {claim}: {reason}")]
    Claim {
        /// The claim, e.g. "aud".
        claim: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// The key set could not be fetched.
    #[error("token keys unavailable: {0}")]
    Keys(#[from] KeysError),
    /// This service could not get its own client-credentials token.
    #[error("service token unavailable: {0}")]
    ServiceToken(String),
}

/// Why an issuer's key set could not be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum KeysError {
    /// The JWKS endpoint could not be reached.
    #[error("{uri} could not be reached: {reason}")]
    Unreachable {
        /// The `jwks_uri`.
        uri: String,
        /// The client's error.
        reason: String,
    },
    /// The JWKS endpoint answered with an error status.
    #[error("{uri} answered HTTP {status}")]
    Status {
        /// The `jwks_uri`.
        uri: String,
        /// The HTTP status.
        status: u16,
    },
    /// The answer was not a JWK Set.
    #[error("{uri} did not answer a JWK Set: {reason}")]
    Malformed {
        /// The `jwks_uri`.
        uri: String,
        /// The parse error.
        reason: String,
    },
    /// No key set is registered (a client with neither `jwks` nor `jwks_uri`).
    #[error("no keys are registered")]
    NotRegistered,
    /// The issuer's own key store failed (identity verifying its own tokens).
    #[error("the signing key store failed: {0}")]
    Store(String),
}

impl crate::edge::ServiceError for AuthError {
    fn code(&self) -> crate::edge::ErrorCode {
        match self {
            AuthError::Keys(_) | AuthError::ServiceToken(_) => crate::edge::ErrorCode::Unavailable,
            _ => crate::edge::ErrorCode::Unauthenticated,
        }
    }

    fn internal_message(&self) -> String {
        match self {
            AuthError::ServiceToken(_) => "this service could not authenticate to its peers".into(),
            _ => "tokens cannot be checked now".into(),
        }
    }
}

/// Answers through [`crate::edge`]: a key server's address or error never reaches the caller.
impl From<AuthError> for tonic::Status {
    fn from(e: AuthError) -> Self {
        crate::edge::status(&e)
    }
}

/// How a service checks bearer tokens (`[auth]`, `SHAREDCARE_AUTH__*`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// The identity issuer URL. Empty in `up` = the identity service in the same process;
    /// required by `serve` for every service but identity.
    pub issuer: String,
    /// Where the issuer's keys are. Empty = `<issuer>/oauth2/jwks`.
    pub jwks_uri: String,
    /// Audience that access tokens must carry.
    pub audience: String,
    /// This service's own OAuth client, for the client-credentials tokens it presents to other
    /// services (records asking consent). Empty in `up` = an internal client registered with
    /// the identity service in the same process at every start.
    pub client_id: String,
    /// Its secret (client_secret_basic). Prefer `SHAREDCARE_AUTH__CLIENT_SECRET` to a file.
    pub client_secret: String,
    /// Token endpoint. Empty = `<issuer>/oauth2/token`.
    pub token_endpoint: String,
    /// The issuer's key set is trusted for at most this long before it is fetched again
    /// (seconds): a key the issuer retires in an emergency stops being trusted within it.
    pub jwks_max_age_secs: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            issuer: String::new(),
            jwks_uri: String::new(),
            audience: "sharedcare".into(),
            client_id: String::new(),
            client_secret: String::new(),
            token_endpoint: String::new(),
            jwks_max_age_secs: DEFAULT_KEYS_MAX_AGE.as_secs(),
        }
    }
}

impl AuthConfig {
    /// A verifier for tokens from `issuer` (this config's issuer when set), fetching keys over
    /// HTTP from the JWKS URI.
    pub fn verifier(&self, issuer: &str) -> crate::Result<Verifier> {
        let issuer = if self.issuer.is_empty() {
            issuer
        } else {
            self.issuer.as_str()
        };
        let issuer = issuer.trim_end_matches('/');
        let jwks = if self.jwks_uri.is_empty() {
            format!("{issuer}/oauth2/jwks")
        } else {
            self.jwks_uri.clone()
        };
        Ok(
            Verifier::new(issuer, self.audience.clone(), Arc::new(HttpKeys::new(jwks)?))
                .with_keys_max_age(Duration::from_secs(self.jwks_max_age_secs.max(1))),
        )
    }

    /// Client-credentials tokens for this service's own calls, asking for `scope`, from
    /// `issuer` (this config's issuer when set); `None` when no client is configured.
    pub fn service_token(&self, issuer: &str, scope: &str) -> crate::Result<Option<ServiceToken>> {
        if self.client_id.is_empty() {
            return Ok(None);
        }
        ServiceToken::new(self.token_endpoint(issuer), &self.client_id, &self.client_secret, scope).map(Some)
    }

    /// The token endpoint clients of this process use: `auth.token_endpoint`, else the
    /// issuer's (this config's issuer when set, else `issuer`) `/oauth2/token`.
    pub fn token_endpoint(&self, issuer: &str) -> String {
        if !self.token_endpoint.is_empty() {
            return self.token_endpoint.clone();
        }
        let issuer = if self.issuer.is_empty() {
            issuer
        } else {
            self.issuer.as_str()
        };
        format!("{}/oauth2/token", issuer.trim_end_matches('/'))
    }
}

/// A service's own access token from the client-credentials grant, fetched when first needed
/// and again shortly before it expires. Concurrent callers share one fetch.
#[derive(Clone)]
pub struct ServiceToken {
    inner: Arc<TokenInner>,
}

struct TokenInner {
    endpoint: String,
    client_id: String,
    secret: String,
    scope: String,
    client: reqwest::Client,
    /// The current token and when to fetch the next one.
    current: std::sync::RwLock<Option<(String, Instant)>>,
    fetching: tokio::sync::Mutex<()>,
}

impl ServiceToken {
    /// Tokens for `client_id`/`secret` from `endpoint`, asking for `scope`.
    pub fn new(endpoint: impl Into<String>, client_id: &str, secret: &str, scope: &str) -> crate::Result<ServiceToken> {
        let client = crate::http_client::build(Duration::from_secs(5), true)?;
        Ok(ServiceToken {
            inner: Arc::new(TokenInner {
                endpoint: endpoint.into(),
                client_id: client_id.to_string(),
                secret: secret.to_string(),
                scope: scope.to_string(),
                client,
                current: std::sync::RwLock::new(None),
                fetching: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn fresh(&self) -> Option<String> {
        let current = self.inner.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .as_ref()
            .filter(|(_, renew)| Instant::now() < *renew)
            .map(|(t, _)| t.clone())
    }

    /// A token valid for a while yet.
    pub async fn get(&self) -> Result<String, AuthError> {
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let _one = self.inner.fetching.lock().await;
        if let Some(t) = self.fresh() {
            return Ok(t);
        }
        let i = &self.inner;
        let fail = |why: String| AuthError::ServiceToken(format!("{} at {}: {why}", i.client_id, i.endpoint));
        let r = i
            .client
            .post(&i.endpoint)
            .header(crate::nested::HEADER, crate::nested::mark())
            .basic_auth(&i.client_id, Some(&i.secret))
            .form(&[("grant_type", "client_credentials"), ("scope", i.scope.as_str())])
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = r.status();
        let body: serde_json::Value = r.json().await.map_err(|e| fail(format!("HTTP {status}: {e}")))?;
        if !status.is_success() {
            return Err(fail(format!("HTTP {status}: {body}")));
        }
        let token = body
            .get("access_token")
            .and_then(|t| t.as_str())
            .ok_or_else(|| fail("no access_token in the response".into()))?
            .to_string();
        // Renew at 80% of the lifetime, so a token never expires in flight.
        let lifetime = body.get("expires_in").and_then(|t| t.as_u64()).unwrap_or(60);
        let renew = Instant::now() + Duration::from_millis(lifetime * 800);
        *i.current.write().unwrap_or_else(|p| p.into_inner()) = Some((token.clone(), renew));
        Ok(token)
    }
}

/// Whether a principal holds a scope (services) — staff and patients are decided by consent.
pub fn has_scope(p: &Principal, scope: &str) -> bool {
    matches!(p, Principal::Service { scopes, .. } if scopes.iter().any(|s| s == scope))
}

impl Principal {
    /// Who, for audit: the person's uid, the NHS number or the client id.
    pub fn id(&self) -> String {
        match self {
            Principal::Staff { person, .. } => person.clone(),
            Principal::Patient { nhs_number, .. } => nhs_number.to_string(),
            Principal::Service { client_id, .. } => client_id.clone(),
        }
    }
}

/// Where a verifier gets the issuer's current keys.
#[async_trait::async_trait]
pub trait KeySource: Send + Sync + 'static {
    /// The issuer's JWK Set as published now.
    async fn fetch(&self) -> Result<JwkSet, KeysError>;
}

/// Fetches the issuer's JWK Set over HTTP from its `jwks_uri` (what a service in its own
/// process uses).
pub struct HttpKeys {
    url: String,
    client: reqwest::Client,
}

impl HttpKeys {
    /// Keys from `jwks_uri` fetched with an HTTP client the caller already has.
    pub fn with_client(jwks_uri: impl Into<String>, client: reqwest::Client) -> HttpKeys {
        HttpKeys {
            url: jwks_uri.into(),
            client,
        }
    }

    /// Keys from `jwks_uri`, e.g. `https://id.example.nhs.uk/oauth2/jwks`.
    pub fn new(jwks_uri: impl Into<String>) -> crate::Result<HttpKeys> {
        let client = crate::http_client::build(Duration::from_secs(5), true)?;
        Ok(HttpKeys {
            url: jwks_uri.into(),
            client,
        })
    }
}

#[async_trait::async_trait]
impl KeySource for HttpKeys {
    async fn fetch(&self) -> Result<JwkSet, KeysError> {
        let uri = || self.url.clone();
        let r = self
            .client
            .get(&self.url)
            .header(crate::nested::HEADER, crate::nested::mark())
            .send()
            .await
            .map_err(|e| KeysError::Unreachable {
                uri: uri(),
                reason: e.to_string(),
            })?;
        if !r.status().is_success() {
            return Err(KeysError::Status {
                uri: uri(),
                status: r.status().as_u16(),
            });
        }
        r.json().await.map_err(|e| KeysError::Malformed {
            uri: uri(),
            reason: e.to_string(),
        })
    }
}

/// Verifies identity's JWTs for one audience.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuer: String,
    audience: String,
    source: Arc<dyn KeySource>,
    /// Tokens already verified, with the `kid` that signed them and their claims: a client uses
    /// one access token for many calls, and only the first pays for the ECDSA verification
    /// (the floor, ~19k/s per core). A hit still needs its key to be in the current set.
    verified: std::sync::Mutex<HashMap<String, Verified>>,
    capacity: usize,
    /// Parsed keys by `kid`, and when they were fetched.
    cache: RwLock<(HashMap<String, PublicKey>, Option<Instant>)>,
    /// How long a fetched key set is trusted.
    max_age: Duration,
}

/// A token remembered as verified: the `kid` that signed it, its `typ` and its claims.
type Verified = (String, String, Arc<serde_json::Value>);

/// The JWT `typ` of an OAuth 2.0 access token (RFC 9068 §2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";
/// The `typ` identity gives ID tokens.
pub const ID_TOKEN_TYP: &str = "JWT";
/// The JWT `typ` of a back-channel logout token (OIDC Back-Channel Logout 1.0 §2.4).
pub const LOGOUT_TOKEN_TYP: &str = "logout+jwt";

/// Whether header `typ` is `want`, compared as media types are (case-insensitive, with or
/// without the `application/` prefix; RFC 7515 §4.1.9).
fn typ_is(typ: &str, want: &str) -> bool {
    let typ = typ.strip_prefix("application/").unwrap_or(typ);
    typ.eq_ignore_ascii_case(want)
}

/// The verifying keys of a JWK Set by `kid` (keys it cannot use are left out).
fn parse_keys(set: &JwkSet) -> HashMap<String, PublicKey> {
    set.keys
        .iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
        .filter_map(|k| k.verifying_key().ok().map(|p| (k.kid, p)))
        .collect()
}

fn claim(claim: &'static str, reason: impl Into<String>) -> AuthError {
    AuthError::Claim {
        claim,
        reason: reason.into(),
    }
}

impl Verifier {
    /// A verifier accepting tokens from `issuer` whose `aud` contains `audience`.
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, source: Arc<dyn KeySource>) -> Verifier {
        Verifier {
            inner: Arc::new(Inner {
                issuer: issuer.into(),
                audience: audience.into(),
                source,
                cache: RwLock::new((HashMap::new(), None)),
                verified: std::sync::Mutex::new(HashMap::new()),
                capacity: VERIFIED_CACHE,
                max_age: DEFAULT_KEYS_MAX_AGE,
            }),
        }
    }

    /// The same verifier remembering at most `capacity` verified tokens (0 = verify every
    /// signature every time).
    pub fn with_cache(self, capacity: usize) -> Verifier {
        self.rebuilt(capacity, self.inner.max_age)
    }

    /// The same verifier trusting a fetched key set for at most `max_age`: after that the set
    /// is fetched again and a key no longer published is no longer trusted, nor are tokens it
    /// signed that were remembered as verified.
    pub fn with_keys_max_age(self, max_age: Duration) -> Verifier {
        self.rebuilt(self.inner.capacity, max_age)
    }

    fn rebuilt(&self, capacity: usize, max_age: Duration) -> Verifier {
        let inner = Inner {
            issuer: self.inner.issuer.clone(),
            audience: self.inner.audience.clone(),
            source: self.inner.source.clone(),
            cache: RwLock::new((HashMap::new(), None)),
            verified: std::sync::Mutex::new(HashMap::new()),
            capacity,
            max_age,
        };
        Verifier { inner: Arc::new(inner) }
    }

    /// The key `kid` from a key set fetched within the max age: an older set is fetched again
    /// first (one caller fetches; if the issuer cannot be reached the set in hand is kept and
    /// the fetch retried after [`REFRESH_INTERVAL`]); an unknown `kid` causes a refetch too.
    async fn key(&self, kid: &str) -> Result<PublicKey, AuthError> {
        let (key, stale) = {
            let cache = self.inner.cache.read().await;
            let stale = cache.1.is_none_or(|at| at.elapsed() >= self.inner.max_age);
            (cache.0.get(kid).cloned(), stale)
        };
        match key {
            Some(k) if !stale => Ok(k),
            Some(_) => {
                self.reload_stale().await;
                let found = self.inner.cache.read().await.0.get(kid).cloned();
                found.ok_or_else(|| JoseError::UnknownKey(kid.to_string()).into())
            }
            None => {
                self.refresh(kid).await?;
                let found = self.inner.cache.read().await.0.get(kid).cloned();
                found.ok_or_else(|| JoseError::UnknownKey(kid.to_string()).into())
            }
        }
    }

    /// Fetches the key set again because it is older than the max age.
    async fn reload_stale(&self) {
        let mut cache = self.inner.cache.write().await;
        if cache.1.is_some_and(|at| at.elapsed() < self.inner.max_age) {
            return; // another caller did
        }
        match self.inner.source.fetch().await {
            Ok(set) => *cache = (parse_keys(&set), Some(Instant::now())),
            Err(e) => {
                tracing::warn!(error = %e, "the issuer's key set could not be fetched again; keeping the one in hand");
                let retry_in = self.inner.max_age.saturating_sub(REFRESH_INTERVAL);
                cache.1 = Instant::now().checked_sub(retry_in).or(cache.1);
            }
        }
    }

    /// Refetches the key set because `kid` is unknown. Fetches happen at most once per
    /// [`REFRESH_INTERVAL`]: a caller inside the window waits for its end instead of failing, so
    /// a key published just after the last fetch is still found, and a flood of forged `kid`s
    /// costs one fetch per interval, not one per request (readers of known keys never wait).
    async fn refresh(&self, kid: &str) -> Result<(), AuthError> {
        let wait = {
            let cache = self.inner.cache.read().await;
            cache
                .1
                .map(|at| REFRESH_INTERVAL.saturating_sub(at.elapsed()))
                .unwrap_or_default()
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let mut cache = self.inner.cache.write().await;
        if cache.0.contains_key(kid) || cache.1.is_some_and(|at| at.elapsed() < REFRESH_INTERVAL) {
            return Ok(());
        }
        let set = self.inner.source.fetch().await.map_err(AuthError::Keys)?;
        *cache = (parse_keys(&set), Some(Instant::now()));
        Ok(())
    }

    /// Verifies `token`, a JWT of type `typ` ([`ACCESS_TOKEN_TYP`], [`ID_TOKEN_TYP`],
    /// [`LOGOUT_TOKEN_TYP`]), and returns its claims.
    pub async fn claims(&self, token: &str, typ: &str) -> Result<serde_json::Value, AuthError> {
        Ok(self.shared_claims(token, typ).await?.as_ref().clone())
    }

    /// [`Verifier::claims`] without copying them: a cached token's claims are shared. The
    /// header's `typ` must be `typ`, so one kind of token is never taken for another (an ID
    /// token as an access token, RFC 8725 §3.11).
    async fn shared_claims(&self, token: &str, typ: &str) -> Result<Arc<serde_json::Value>, AuthError> {
        let cached = self.inner.verified.lock().ok().and_then(|v| v.get(token).cloned());
        let wrong_typ = |had: &str| {
            let had = if had.is_empty() { "none" } else { had };
            claim("typ", format!("expected {typ}, this token is {had}"))
        };
        if let Some((kid, had, claims)) = cached {
            if !typ_is(&had, typ) {
                return Err(wrong_typ(&had));
            }
            // Signature, issuer and audience were checked when it was cached; time moves on,
            // and the key that signed it must still be published.
            self.key(&kid).await?;
            self.check(&claims, chrono::Utc::now().timestamp())?;
            return Ok(claims);
        }
        let (kid, had, claims) = self.verify_uncached(token).await?;
        let claims = Arc::new(claims);
        if self.inner.capacity > 0
            && let Ok(mut v) = self.inner.verified.lock()
        {
            if v.len() >= self.inner.capacity {
                v.clear();
            }
            v.insert(token.to_string(), (kid, had.clone(), claims.clone()));
        }
        if !typ_is(&had, typ) {
            return Err(wrong_typ(&had));
        }
        Ok(claims)
    }

    /// Verifies a token's signature and claims; returns the signing key's `kid`, the header's
    /// `typ` and the claims.
    async fn verify_uncached(&self, token: &str) -> Result<(String, String, serde_json::Value), AuthError> {
        let head = jose::header(token)?;
        if head.alg != "ES256" {
            return Err(JoseError::Algorithm(head.alg).into());
        }
        let key = self.key(&head.kid).await?;
        let claims = jose::verify_checked(token, &key)?;
        self.check(&claims, chrono::Utc::now().timestamp())?;
        Ok((head.kid, head.typ, claims))
    }

    fn check(&self, c: &serde_json::Value, now: i64) -> Result<(), AuthError> {
        if c["iss"].as_str() != Some(self.inner.issuer.as_str()) {
            return Err(claim("iss", format!("expected {:?}", self.inner.issuer)));
        }
        let aud_ok = match &c["aud"] {
            serde_json::Value::String(a) => *a == self.inner.audience,
            serde_json::Value::Array(a) => a.iter().any(|v| v.as_str() == Some(self.inner.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(claim("aud", format!("does not include {:?}", self.inner.audience)));
        }
        let exp = c["exp"].as_i64().ok_or_else(|| claim("exp", "missing"))?;
        if exp + LEEWAY_SECS <= now {
            return Err(claim("exp", "token has expired"));
        }
        if let Some(nbf) = c["nbf"].as_i64()
            && nbf - LEEWAY_SECS > now
        {
            return Err(claim("nbf", "token is not valid yet"));
        }
        Ok(())
    }

    /// Verifies `token` and maps it to a principal.
    pub async fn principal(&self, token: &str) -> Result<Principal, AuthError> {
        principal_from_claims(self.shared_claims(token, ACCESS_TOKEN_TYP).await?.as_ref())
    }

    /// Verifies the `authorization: Bearer` value in gRPC metadata.
    pub async fn from_metadata(&self, md: &tonic::metadata::MetadataMap) -> Result<Principal, AuthError> {
        let value = md
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .ok_or(AuthError::Missing)?;
        let token = bearer(value).ok_or(AuthError::Missing)?;
        self.principal(token).await
    }
}

/// The token in an `Authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Maps verified claims to a principal: patient when `nhs_number` is present, staff when a role
/// is selected, service for a `client_credentials` token (`sub` = `client_id`).
pub fn principal_from_claims(c: &serde_json::Value) -> Result<Principal, AuthError> {
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    if let Some(nhs) = c["nhs_number"].as_str() {
        let nhs_number = NhsNumber::parse(nhs).map_err(|e| claim("nhs_number", e.to_string()))?;
        let proofing = ProofingLevel::parse(&s("identity_proofing_level"))
            .ok_or_else(|| claim("identity_proofing_level", "expected P0, P5 or P9"))?;
        return Ok(Principal::Patient { nhs_number, proofing });
    }
    if let Some(selected) = c["selected_roleid"].as_str() {
        let roles: Vec<RoleProfile> = serde_json::from_value(c["nhsid_nrbac_roles"].clone())
            .map_err(|e| claim("nhsid_nrbac_roles", e.to_string()))?;
        let role = roles
            .into_iter()
            .find(|r| r.person_roleid == selected)
            .ok_or_else(|| claim("selected_roleid", "names no role in nhsid_nrbac_roles"))?;
        let acr = s("acr");
        if !STAFF_ACR.contains(&acr.as_str()) {
            let had = if acr.is_empty() { "none".to_string() } else { acr };
            return Err(claim(
                "acr",
                format!(
                    "staff need a second factor (AAL2 or above); this token's assurance is {had}: sign in again with your security code"
                ),
            ));
        }
        return Ok(Principal::Staff {
            person: s("nhsid_useruid"),
            role,
            acr: s("acr"),
        });
    }
    let client_id = s("client_id");
    if !client_id.is_empty() && s("sub") == client_id {
        let scopes = s("scope").split_whitespace().map(str::to_string).collect();
        return Ok(Principal::Service { client_id, scopes });
    }
    Err(claim("sub", "token names no patient, selected role or service"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::Signer256;
    use serde_json::json;

    struct Keys(JwkSet);
    #[async_trait::async_trait]
    impl KeySource for Keys {
        async fn fetch(&self) -> Result<JwkSet, KeysError> {
            Ok(self.0.clone())
        }
    }

    fn setup() -> (Signer256, Verifier) {
        let signer = Signer256::generate().expect("key");
        let set = JwkSet {
            keys: vec![serde_json::to_value(signer.jwk()).expect("jwk")],
        };
        (signer, Verifier::new("https://id", "records", Arc::new(Keys(set))))
    }

    fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// A key source whose published set can be changed (an emergency rotation).
    struct Published(std::sync::Mutex<JwkSet>);
    #[async_trait::async_trait]
    impl KeySource for Arc<Published> {
        async fn fetch(&self) -> Result<JwkSet, KeysError> {
            Ok(self.0.lock().expect("set").clone())
        }
    }

    #[tokio::test]
    async fn a_key_retired_by_the_issuer_stops_being_trusted_within_the_max_age() {
        let old = Signer256::generate().expect("key");
        let new = Signer256::generate().expect("key");
        let set = |s: &[&Signer256]| JwkSet {
            keys: s.iter().map(|k| serde_json::to_value(k.jwk()).expect("jwk")).collect(),
        };
        let published = Arc::new(Published(std::sync::Mutex::new(set(&[&old]))));
        let v = Verifier::new("https://id", "records", Arc::new(published.clone()))
            .with_keys_max_age(Duration::from_millis(300));
        let claims = json!({"iss": "https://id", "aud": "records", "exp": now() + 600, "sub": "c", "client_id": "c"});
        let token = old.sign("at+jwt", &claims).expect("sign");
        v.principal(&token).await.expect("trusted while published");
        // The issuer retires the old key at once and publishes a new one.
        *published.0.lock().expect("set") = set(&[&new]);
        v.principal(&token)
            .await
            .expect("still trusted inside the max age (the set in hand is not yet stale)");
        tokio::time::sleep(Duration::from_millis(350)).await;
        match v.principal(&token).await {
            Err(AuthError::Jose(JoseError::UnknownKey(_))) => {}
            other => panic!("the retired key's token, remembered as verified, is refused: {other:?}"),
        }
        v.principal(&new.sign("at+jwt", &claims).expect("sign"))
            .await
            .expect("the new key is trusted");
    }

    #[tokio::test]
    async fn issuer_audience_and_expiry_are_checked() {
        let (signer, v) = setup();
        let ok = json!({"iss": "https://id", "aud": ["records"], "exp": now() + 60, "sub": "c", "client_id": "c"});
        assert!(matches!(
            v.principal(&signer.sign("at+jwt", &ok).expect("sign")).await,
            Ok(Principal::Service { .. })
        ));
        for (bad, name) in [
            (
                json!({"iss": "https://other", "aud": "records", "exp": now() + 60}),
                "iss",
            ),
            (
                json!({"iss": "https://id", "aud": "passport", "exp": now() + 60}),
                "aud",
            ),
            (
                json!({"iss": "https://id", "aud": "records", "exp": now() - 120}),
                "exp",
            ),
            (
                json!({"iss": "https://id", "aud": "records", "exp": now() + 600, "nbf": now() + 300}),
                "nbf",
            ),
        ] {
            match v
                .claims(&signer.sign("at+jwt", &bad).expect("sign"), ACCESS_TOKEN_TYP)
                .await
            {
                Err(AuthError::Claim { claim, .. }) => assert_eq!(claim, name),
                other => panic!("{name}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_token_of_one_kind_is_never_taken_for_another() {
        let (signer, v) = setup();
        let c = json!({"iss": "https://id", "aud": "records", "exp": now() + 60, "sub": "c", "client_id": "c"});
        let id_token = signer.sign("JWT", &c).expect("sign");
        match v.principal(&id_token).await {
            Err(AuthError::Claim { claim: "typ", reason }) => assert!(reason.contains("at+jwt"), "{reason}"),
            other => panic!("an ID token is not an access token: {other:?}"),
        }
        v.claims(&id_token, ID_TOKEN_TYP).await.expect("as what it is");
        assert!(
            v.claims(&signer.sign("at+jwt", &c).expect("sign"), LOGOUT_TOKEN_TYP)
                .await
                .is_err()
        );
        v.principal(&signer.sign("application/AT+JWT", &c).expect("sign"))
            .await
            .expect("media types compare case-insensitively, with or without application/");
    }

    #[test]
    fn claims_map_to_staff_and_patients() {
        let staff = json!({"nhsid_useruid": "555", "selected_roleid": "r2", "acr": "AAL3",
            "nhsid_nrbac_roles": [
                {"person_roleid": "r1", "org_code": "A81001", "role_code": "R8000"},
                {"person_roleid": "r2", "org_code": "RX1", "role_code": "R0260", "activity_codes": ["B0264"]}]});
        match principal_from_claims(&staff) {
            Ok(Principal::Staff { role, .. }) => assert_eq!(role.org_code, "RX1"),
            other => panic!("{other:?}"),
        }
        for weak in ["AAL1", ""] {
            let mut password_only = staff.clone();
            password_only["acr"] = weak.into();
            match principal_from_claims(&password_only) {
                Err(AuthError::Claim { claim: "acr", reason }) => {
                    assert!(reason.contains("second factor"), "{reason}")
                }
                other => panic!("a password-only staff token ({weak:?}) is refused: {other:?}"),
            }
        }
        let patient = json!({"nhs_number": "9434765919", "identity_proofing_level": "P9"});
        assert!(matches!(principal_from_claims(&patient), Ok(Principal::Patient { .. })));
        let bad = json!({"nhs_number": "9434765918", "identity_proofing_level": "P9"});
        assert!(matches!(
            principal_from_claims(&bad),
            Err(AuthError::Claim {
                claim: "nhs_number",
                ..
            })
        ));
    }
}
