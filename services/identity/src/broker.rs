//! Identity brokering: sending a user to an upstream OpenID provider — as a real ICS sends staff
//! to NHS CIS2 and patients to NHS login — and signing them in here as the local person or
//! patient the upstream identity links to.
//!
//! The relying-party side is the `openidconnect` crate: discovery, the authorization request
//! with PKCE (S256), state and nonce, the code exchange, and ID token validation (signature by
//! the upstream's JWKS, issuer, audience, expiry, nonce). The client authenticates to the
//! upstream with `private_key_jwt` (RFC 7523), as CIS2 and NHS login require; its key is made
//! on first use, kept in identity's tables and published at `/oauth2/rp/jwks` for the upstream
//! registration.
//!
//! The NHS App path: a request carrying NHS login's `assertedLoginIdentity` is sent upstream
//! with `prompt=none` and the assertion, so a patient already signed in to the NHS App gets in
//! silently; when the upstream answers `login_required` the app gets that error back.

use sharedcare_kit::edge::Refuse;
use sharedcare_kit::json::Fields;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use openidconnect::core::{CoreAuthPrompt, CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AuthType, AuthorizationCode, ClientId, CsrfToken, IssuerUrl, Nonce, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use sharedcare_kit::jose::{self, JwkSet, Signer256};

use crate::config::UpstreamConfig;
use crate::error::{IdentityError, Result};
use crate::model::SubjectKind;
use crate::store::Store;

/// What the broker remembers between the redirect upstream and the callback.
#[derive(Serialize, Deserialize)]
struct Pending {
    req: String,
    upstream: String,
    verifier: String,
    nonce: String,
    /// SHA-256 of the binding cookie of the browser that started the sign-in: the callback
    /// must come back to it (login CSRF, RFC 9700 §4.7.1).
    #[serde(default)]
    browser: String,
}

/// The outcome of a callback: the local subject to sign in, with how the upstream
/// authenticated them.
pub struct Linked {
    /// Staff or patient.
    pub kind: SubjectKind,
    /// uid or NHS number.
    pub subject: String,
    /// `amr` from the upstream, plus "fed".
    pub amr: Vec<String>,
    /// The parked authorization request to resume.
    pub req: String,
}

/// Why a brokered sign-in could not start; the message is shown to the user.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// No upstream by that name is configured.
    #[error("no upstream provider named {0:?}")]
    Unknown(String),
    /// The upstream's discovery document could not be had.
    #[error("discovery at {issuer} failed: {reason}")]
    Discovery {
        /// The upstream issuer.
        issuer: String,
        /// Why.
        reason: String,
    },
    /// A URL the redirect needs is malformed (configuration).
    #[error("the upstream provider is misconfigured: {0}")]
    Config(String),
    /// The pending sign-in could not be stored.
    #[error("identity storage is unavailable")]
    Storage(#[source] IdentityError),
}

/// Why a brokered sign-in did not complete.
pub enum BrokerError {
    /// The upstream answered with an OAuth error (e.g. `login_required` after `prompt=none`);
    /// passed back to the app for request `req`.
    Upstream {
        /// The parked request.
        req: String,
        /// The upstream's `error`.
        code: String,
    },
    /// The callback came to a browser that did not start the sign-in (login CSRF).
    OtherBrowser,
    /// Anything else: a page explains it.
    Failed(String),
}

/// Brokers to the configured upstreams.
#[derive(Clone)]
pub struct Broker {
    upstreams: Arc<Vec<UpstreamConfig>>,
    store: Store,
    issuer: Arc<str>,
    http: reqwest::Client,
    discovered: Arc<Mutex<HashMap<String, CoreProviderMetadata>>>,
}

/// How long a brokered sign-in may take.
const PENDING_SECS: i64 = 600;

impl Broker {
    /// A broker for `upstreams`, calling back to `issuer`.
    pub fn new(upstreams: Vec<UpstreamConfig>, store: Store, issuer: &str) -> sharedcare_kit::Result<Broker> {
        let http = sharedcare_kit::http_client::build(std::time::Duration::from_secs(10), false)?;
        Ok(Broker {
            upstreams: Arc::new(upstreams),
            store,
            issuer: issuer.into(),
            http,
            discovered: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The configured upstreams.
    pub fn upstreams(&self) -> &[UpstreamConfig] {
        &self.upstreams
    }

    fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    fn callback(&self) -> String {
        format!("{}/oauth2/broker/callback", self.issuer)
    }

    /// Our signing key for `private_key_jwt` to `upstream`, made on first use.
    pub async fn rp_key(&self, upstream: &str) -> Result<Signer256> {
        if let Some(secret) = self.store.rp_key(upstream).await? {
            let bytes = B64
                .decode(&secret)
                .map_err(|_| IdentityError::invalid("rp_keys.secret", "not base64url"))?;
            return Signer256::from_secret(&bytes).map_err(|e| IdentityError::invalid("rp_keys.secret", e.to_string()));
        }
        let key = Signer256::generate()?;
        self.store.put_rp_key(upstream, &B64.encode(key.secret_bytes())).await?;
        // Two replicas racing both insert-or-ignore; read back the one that won.
        Box::pin(self.rp_key(upstream))
            .await
            .map(|k| if k.kid() == key.kid() { key } else { k })
    }

    /// The public keys of every upstream client, for registration at the upstreams.
    pub async fn rp_jwks(&self) -> Result<JwkSet> {
        let mut keys = Vec::new();
        for u in self.upstreams.iter() {
            keys.push(serde_json::to_value(self.rp_key(&u.name).await?.jwk()).unwrap_or_default());
        }
        Ok(JwkSet { keys })
    }

    async fn metadata(&self, u: &UpstreamConfig) -> std::result::Result<CoreProviderMetadata, StartError> {
        if let Some(m) = self.discovered.lock().ok().and_then(|d| d.get(&u.name).cloned()) {
            return Ok(m);
        }
        let failed = |reason: String| StartError::Discovery {
            issuer: u.issuer.clone(),
            reason,
        };
        let issuer = IssuerUrl::new(u.issuer.clone()).map_err(|e| failed(e.to_string()))?;
        let m = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| failed(e.to_string()))?;
        if let Ok(mut d) = self.discovered.lock() {
            d.insert(u.name.clone(), m.clone());
        }
        Ok(m)
    }

    /// The upstream authorization URL for parked request `req`. `asserted` is NHS login's
    /// `assertedLoginIdentity` (silent sign-in with `prompt=none`).
    pub async fn start(
        &self,
        name: &str,
        req: &str,
        asserted: &str,
        login_hint: &str,
        binding: &str,
    ) -> std::result::Result<String, StartError> {
        let u = self
            .upstream(name)
            .ok_or_else(|| StartError::Unknown(name.to_string()))?;
        let meta = self.metadata(u).await?;
        let redirect = RedirectUrl::new(self.callback()).map_err(|e| StartError::Config(e.to_string()))?;
        let client = CoreClient::from_provider_metadata(meta, ClientId::new(u.client_id.clone()), None)
            .set_redirect_uri(redirect);
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = jose::random_token(18);
        let nonce = jose::random_token(18);
        let (s, n) = (state.clone(), nonce.clone());
        let mut auth = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                move || CsrfToken::new(s),
                move || Nonce::new(n),
            )
            .set_pkce_challenge(challenge);
        for scope in u.scopes.split_whitespace().filter(|s| *s != "openid") {
            auth = auth.add_scope(Scope::new(scope.to_string()));
        }
        if !asserted.is_empty() {
            auth = auth
                .add_prompt(CoreAuthPrompt::None)
                .add_extra_param("asserted_login_identity", asserted.to_string());
        }
        if !login_hint.is_empty() {
            auth = auth.add_extra_param("login_hint", login_hint.to_string());
        }
        let (url, _, _) = auth.url();
        let pending = Pending {
            req: req.to_string(),
            upstream: u.name.clone(),
            verifier: verifier.secret().clone(),
            nonce,
            browser: jose::sha256_b64(binding),
        };
        let params = serde_json::to_string(&pending).map_err(|e| StartError::Config(e.to_string()))?;
        self.store
            .put_auth_request(&format!("broker:{state}"), &params, crate::model::now() + PENDING_SECS)
            .await
            .map_err(StartError::Storage)?;
        Ok(url.to_string())
    }

    /// Completes a brokered sign-in from the upstream's redirect, in the browser holding
    /// `binding` (the value of its binding cookie, if it sent one).
    pub async fn finish(
        &self,
        q: &HashMap<String, String>,
        binding: Option<&str>,
    ) -> std::result::Result<Linked, BrokerError> {
        let f = |k: &str| q.get(k).cloned().unwrap_or_default();
        let now = crate::model::now();
        let key = format!("broker:{}", f("state"));
        // Single use, whatever happens next: taken (read and deleted) in one statement.
        let pending: Pending = match self.store.take_auth_request(&key, now).await {
            Ok(Some(p)) => serde_json::from_str(&p).map_err(|e| BrokerError::Failed(e.to_string()))?,
            Ok(None) => {
                return Err(BrokerError::Failed(
                    "the sign-in with the other provider has expired or was already used (state)".into(),
                ));
            }
            Err(e) => return Err(BrokerError::Failed(e.to_string())),
        };
        // Someone else's sign-in finishing in this browser (login CSRF) is refused before the
        // code is used.
        if pending.browser.is_empty() || binding.is_none_or(|b| jose::sha256_b64(b) != pending.browser) {
            return Err(BrokerError::OtherBrowser);
        }
        if !f("error").is_empty() {
            return Err(BrokerError::Upstream {
                req: pending.req,
                code: f("error"),
            });
        }
        let fail = |m: String| BrokerError::Failed(m);
        let u = self
            .upstream(&pending.upstream)
            .ok_or_else(|| fail("the upstream provider is no longer configured".into()))?
            .clone();
        let meta = self.metadata(&u).await.map_err(|e| fail(e.to_string()))?;
        let token_endpoint = meta
            .token_endpoint()
            .map(|t| t.to_string())
            .ok_or_else(|| fail("the upstream has no token endpoint".into()))?;
        let redirect = RedirectUrl::new(self.callback()).map_err(|e| fail(e.to_string()))?;
        let client = CoreClient::from_provider_metadata(meta, ClientId::new(u.client_id.clone()), None)
            .set_redirect_uri(redirect)
            .set_auth_type(AuthType::RequestBody);
        let key = self.rp_key(&u.name).await.map_err(|e| fail(e.to_string()))?;
        let assertion = key
            .sign(
                "JWT",
                &serde_json::json!({
                    "iss": u.client_id, "sub": u.client_id, "aud": token_endpoint,
                    "jti": jose::random_token(16), "iat": now, "exp": now + 60,
                }),
            )
            .map_err(|e| fail(e.to_string()))?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(f("code")))
            .map_err(|e| fail(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .add_extra_param("client_assertion_type", crate::model::JWT_BEARER)
            .add_extra_param("client_assertion", assertion)
            .request_async(&self.http)
            .await
            .map_err(|e| fail(format!("the code exchange with {} failed: {e:?}", u.display_name)))?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| fail(format!("{} returned no ID token", u.display_name)))?;
        id_token
            .claims(&client.id_token_verifier(), &Nonce::new(pending.nonce))
            .map_err(|e| fail(format!("the ID token from {} is not valid: {e}", u.display_name)))?;
        // Verified above; read the linking claim and amr from the same token's payload.
        let payload = id_token
            .to_string()
            .split('.')
            .nth(1)
            .and_then(|p| B64.decode(p).ok())
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        let value = payload.at(&u.link_claim).as_str().unwrap_or_default().to_string();
        if value.is_empty() {
            return Err(fail(format!(
                "{} did not send the {} claim",
                u.display_name, u.link_claim
            )));
        }
        let (kind, subject) = match u.link_to.as_str() {
            "patient" => {
                let found = self
                    .store
                    .patient("nhs_number", &value)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                (SubjectKind::Patient, found.map(|(p, _, _)| p.nhs_number))
            }
            _ => {
                let found = self
                    .store
                    .person("uid", &value)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                (SubjectKind::Staff, found.map(|(p, _, _)| p.uid))
            }
        };
        let subject = subject.ok_or_else(|| {
            fail(format!(
                "no {} account here is linked to this {} identity ({})",
                u.link_to, u.display_name, u.link_claim
            ))
        })?;
        let mut amr: Vec<String> = payload
            .at("amr")
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        amr.push("fed".into());
        Ok(Linked {
            kind,
            subject,
            amr,
            req: pending.req,
        })
    }
}
