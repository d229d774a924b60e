//! Client authentication at the token, introspection and revocation endpoints:
//! client_secret_basic/post and private_key_jwt (RFC 7523), with the client's keys cached.

use sharedcare_kit::json::Fields;
use std::time::{Duration, Instant};

use serde_json::Value;
use sharedcare_kit::auth::{KeySource, KeysError};
use sharedcare_kit::jose::{self, JwkSet};

use super::{CLIENT_CACHE, OAuthError, OAuthErrorCode, OResult, Provider};
use crate::model::{AuthMethod, Client};
use crate::model::{JWT_BEARER, now};

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

impl Provider {
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
    pub(super) async fn check_assertion(&self, client: &Client, p: &Presented) -> OResult<()> {
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
    pub(super) async fn client_jwks(&self, client: &Client, refresh: bool) -> Result<JwkSet, KeysError> {
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
}

pub(super) fn check_secret(client: &Client, secret: &str) -> Result<(), ()> {
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

pub(super) fn unverified_payload(jwt: &str) -> Option<Value> {
    use base64::Engine;
    let p = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).ok()?;
    serde_json::from_slice(&bytes).ok()
}
