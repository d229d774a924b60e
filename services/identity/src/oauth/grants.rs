//! The token endpoint's grants (authorization_code, refresh_token with rotation,
//! client_credentials), token minting, and revocation (RFC 7009).

use sharedcare_kit::json::Fields;
use std::collections::HashMap;

use serde_json::json;
use sharedcare_kit::jose::{self};

use super::claims::{access_claims, merge, scoped_claims};
use super::{OAuthError, OAuthErrorCode, OResult, Provider, TokenResponse};
use crate::error::IdentityError;
use crate::model::now;
use crate::model::{Client, Grant, check_scope};
use crate::store::Session;

impl Provider {
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

    pub(super) fn client_credentials(&self, client: &Client, scope: &str) -> OResult<TokenResponse> {
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

    pub(super) async fn redeem_code(
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

    pub(super) async fn refresh(&self, client: &Client, token: &str, scope: &str) -> OResult<TokenResponse> {
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
    pub(super) async fn live_session(&self, grant: &Grant) -> OResult<Session> {
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
    pub(super) async fn issue(&self, client: &Client, grant: &Grant, family: Option<String>) -> OResult<TokenResponse> {
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
}
