//! The portal (and the sample app) as a relying party of identity: the authorization code flow
//! with PKCE (S256), `state` and `nonce` (OIDC Core §3.1), the code exchange with
//! `client_secret_basic`, refresh, RP-initiated logout and back-channel logout tokens (OIDC
//! Back-Channel Logout 1.0 §2.6).
//!
//! ID tokens and logout tokens are checked by the kit's [`Verifier`], the same code every
//! service checks bearer tokens with (ES256 only, issuer, audience, expiry, keys by `kid` from
//! the issuer's JWKS), with the client id as the audience. The `openidconnect` crate (which
//! identity uses upstream) was not used here: its typed client would check the same signature
//! with a second JOSE stack, and the endpoints are identity's own, known by path.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sharedcare_kit::auth::{HttpKeys, Principal, Verifier};
use sharedcare_kit::jose;
use sharedcare_kit::json::Fields;

/// Why a sign-in, refresh or logout token failed.
#[derive(Debug, thiserror::Error)]
pub enum RpError {
    /// Identity refused (an OAuth error code and its description).
    #[error("identity refused: {0}")]
    Refused(String),
    /// Identity could not be reached or answered nonsense.
    #[error("identity unavailable: {0}")]
    Unavailable(String),
    /// A token failed its checks (signature, audience, nonce, events claim, …).
    #[error("token rejected: {0}")]
    Token(String),
}

/// How old a back-channel logout token may be (seconds).
const LOGOUT_TOKEN_MAX_AGE_SECS: i64 = 300;

/// What the portal remembers between sending the browser to identity and its return.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Pending {
    /// PKCE code verifier.
    pub verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// Where to go once signed in (a path on this site).
    pub return_to: String,
    /// SHA-256 of the browser binding: the value of a cookie set on the browser that started
    /// the sign-in, which its callback must carry (login CSRF, RFC 9700 §4.7.1).
    #[serde(default)]
    pub browser: String,
}

impl Pending {
    /// Whether a callback came back to the browser that started this sign-in: `binding` is its
    /// binding cookie's value, if it sent one.
    pub fn same_browser(&self, binding: Option<&str>) -> bool {
        !self.browser.is_empty() && binding.is_some_and(|b| jose::sha256_b64(b) == self.browser)
    }
}

/// The browser binding for a new sign-in: the one the browser already holds (sign-ins started
/// in two tabs share it), else a new random one to set as a cookie (`fresh`).
pub fn browser_binding(existing: Option<&str>) -> (String, bool) {
    match existing {
        Some(v) if v.len() >= 22 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') => {
            (v.to_string(), false)
        }
        _ => (jose::random_token(24), true),
    }
}

/// Tokens from identity, with the ID token's verified claims.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tokens {
    /// Bearer for calls to the platform's services.
    pub access_token: String,
    /// For a new access token when this one expires (may be empty).
    pub refresh_token: String,
    /// For RP-initiated logout (`id_token_hint`).
    pub id_token: String,
    /// When the access token expires (unix seconds).
    pub expires_at: i64,
    /// The ID token's claims.
    pub claims: Value,
}

/// One OIDC client of identity.
#[derive(Clone)]
pub struct Rp {
    /// The issuer as browsers reach it (authorize and logout redirects).
    issuer: String,
    /// The token endpoint as this process reaches it.
    token_endpoint: String,
    client_id: String,
    client_secret: String,
    redirect_uri: String,
    ids: Verifier,
    http: reqwest::Client,
}

/// `OIDC Back-Channel Logout 1.0` §2.4: the event a logout token must carry.
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl Rp {
    /// A client `client_id` of `issuer`, whose code comes back to `redirect_uri`. The token
    /// endpoint and the keys are fetched from `token_endpoint` and `jwks_uri` (empty = under
    /// the issuer).
    pub fn new(
        issuer: &str,
        token_endpoint: &str,
        jwks_uri: &str,
        client_id: &str,
        client_secret: &str,
        redirect_uri: &str,
    ) -> sharedcare_kit::Result<Rp> {
        let issuer = issuer.trim_end_matches('/').to_string();
        let or = |v: &str, path: &str| {
            if v.is_empty() {
                format!("{issuer}{path}")
            } else {
                v.to_string()
            }
        };
        let keys = std::sync::Arc::new(HttpKeys::new(or(jwks_uri, "/oauth2/jwks"))?);
        Ok(Rp {
            token_endpoint: or(token_endpoint, "/oauth2/token"),
            ids: Verifier::new(issuer.clone(), client_id, keys).with_cache(0),
            issuer,
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            redirect_uri: redirect_uri.into(),
            http: sharedcare_kit::http_client::build(std::time::Duration::from_secs(10), true)?,
        })
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Starts a sign-in: the URL to send the browser to, the `state` it will come back with and
    /// what to remember under it, bound to the browser holding `binding` (see
    /// [`browser_binding`]). `extra` adds parameters (`prompt`, `assertedLoginIdentity`…).
    pub fn start(
        &self,
        scope: &str,
        return_to: &str,
        extra: &[(&str, &str)],
        binding: &str,
    ) -> Result<(String, String, Pending), RpError> {
        let pending = Pending {
            verifier: jose::random_token(32),
            nonce: jose::random_token(16),
            return_to: return_to.into(),
            browser: jose::sha256_b64(binding),
        };
        let state = jose::random_token(16);
        let mut url = url::Url::parse(&format!("{}/oauth2/authorize", self.issuer))
            .map_err(|e| RpError::Unavailable(format!("the issuer {:?} is not a URL: {e}", self.issuer)))?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", &self.client_id)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("scope", scope)
                .append_pair("state", &state)
                .append_pair("nonce", &pending.nonce)
                .append_pair("code_challenge", &jose::sha256_b64(&pending.verifier))
                .append_pair("code_challenge_method", "S256");
            for (k, v) in extra {
                q.append_pair(k, v);
            }
        }
        Ok((url.to_string(), state, pending))
    }

    /// Exchanges `code` for tokens and checks the ID token (signature, issuer, audience,
    /// expiry, nonce).
    pub async fn exchange(&self, code: &str, pending: &Pending) -> Result<Tokens, RpError> {
        let t = self
            .token(&[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", &pending.verifier),
            ])
            .await?;
        let id_token = t.at("id_token").as_str().unwrap_or_default().to_string();
        let claims = self
            .ids
            .claims(&id_token, sharedcare_kit::auth::ID_TOKEN_TYP)
            .await
            .map_err(|e| RpError::Token(e.to_string()))?;
        if claims.at("nonce").as_str() != Some(pending.nonce.as_str()) {
            return Err(RpError::Token("the ID token's nonce is not the one sent".into()));
        }
        tokens(&t, id_token, claims)
    }

    /// New tokens from a refresh token (identity rotates it).
    pub async fn refresh(&self, refresh_token: &str, old: &Tokens) -> Result<Tokens, RpError> {
        let t = self
            .token(&[("grant_type", "refresh_token"), ("refresh_token", refresh_token)])
            .await?;
        let id_token = t.at("id_token").as_str().unwrap_or(&old.id_token).to_string();
        let mut fresh = tokens(&t, id_token, old.claims.clone())?;
        if fresh.refresh_token.is_empty() {
            fresh.refresh_token = refresh_token.into();
        }
        Ok(fresh)
    }

    async fn token(&self, form: &[(&str, &str)]) -> Result<Value, RpError> {
        let r = self
            .http
            .post(&self.token_endpoint)
            .basic_auth(&self.client_id, Some(&self.client_secret))
            .form(form)
            .send()
            .await
            .map_err(|e| RpError::Unavailable(e.to_string()))?;
        let status = r.status();
        let body: Value = r.json().await.map_err(|e| RpError::Unavailable(e.to_string()))?;
        if status.is_client_error() {
            return Err(RpError::Refused(format!(
                "{}: {}",
                body.at("error").as_str().unwrap_or("error"),
                body.at("error_description").as_str().unwrap_or_default()
            )));
        }
        if !status.is_success() {
            return Err(RpError::Unavailable(format!("token endpoint answered {status}")));
        }
        Ok(body)
    }

    /// The form that ends the SSO session (RP-initiated logout 1.0, by POST so the ID token
    /// never appears in a URL, a proxy's access log or the browser's history), coming back to
    /// `post_logout` (registered with identity): its action and fields.
    pub fn logout_form(&self, id_token: &str, post_logout: &str) -> (String, Vec<(&'static str, String)>) {
        (
            format!("{}/oauth2/logout", self.issuer),
            vec![
                ("id_token_hint", id_token.to_string()),
                ("post_logout_redirect_uri", post_logout.to_string()),
                ("client_id", self.client_id.clone()),
            ],
        )
    }

    /// Who an access token from this client's sign-in is for: checked like an ID token (its
    /// audience names this client too) and read by the kit, as every service reads it.
    pub async fn principal(&self, access_token: &str) -> Result<Principal, RpError> {
        self.ids
            .principal(access_token)
            .await
            .map_err(|e| RpError::Token(e.to_string()))
    }

    /// Checks a back-channel logout token (§2.6: signature, issuer, audience, the logout
    /// event, no nonce; and a `sid`, which this app needs) and returns its `sid` and `sub`.
    pub async fn logout_token(&self, token: &str) -> Result<(String, String), RpError> {
        let c = self
            .ids
            .claims(token, sharedcare_kit::auth::LOGOUT_TOKEN_TYP)
            .await
            .map_err(|e| RpError::Token(e.to_string()))?;
        // §2.6: jti and iat are required; a logout token is used at once, so an old one is a
        // replay (identity's are minutes old at most).
        if c.at("jti").as_str().is_none_or(str::is_empty) {
            return Err(RpError::Token("jti: a logout token must carry one".into()));
        }
        let iat = c
            .at("iat")
            .as_i64()
            .ok_or_else(|| RpError::Token("iat: a logout token must carry one".into()))?;
        let now = chrono::Utc::now().timestamp();
        if iat > now + sharedcare_kit::auth::LEEWAY_SECS || iat < now - LOGOUT_TOKEN_MAX_AGE_SECS {
            return Err(RpError::Token(format!(
                "iat: issued {}s from now, outside the {LOGOUT_TOKEN_MAX_AGE_SECS}s a logout token is good for",
                iat - now
            )));
        }
        if c.at("events").get(BACKCHANNEL_EVENT).is_none() {
            return Err(RpError::Token(format!("events: missing {BACKCHANNEL_EVENT}")));
        }
        if c.get("nonce").is_some() {
            return Err(RpError::Token("nonce: a logout token must not carry one".into()));
        }
        let sid = c.at("sid").as_str().unwrap_or_default().to_string();
        let sub = c.at("sub").as_str().unwrap_or_default().to_string();
        // Sessions are kept by identity's session id, so a token naming only the subject
        // cannot say which to end (this app registers as needing `sid`, §2.4).
        if sid.is_empty() {
            return Err(RpError::Token(
                "sid is required: sessions here are ended by identity's session id".into(),
            ));
        }
        Ok((sid, sub))
    }
}

fn tokens(t: &Value, id_token: String, claims: Value) -> Result<Tokens, RpError> {
    let access_token = t["access_token"]
        .as_str()
        .ok_or_else(|| RpError::Unavailable("no access_token in the token response".into()))?
        .to_string();
    Ok(Tokens {
        access_token,
        refresh_token: t["refresh_token"].as_str().unwrap_or_default().to_string(),
        id_token,
        expires_at: chrono::Utc::now().timestamp() + t["expires_in"].as_i64().unwrap_or(300),
        claims,
    })
}
