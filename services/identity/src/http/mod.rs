//! Identity over HTTP: discovery, JWKS, the OAuth 2.0 / OIDC endpoints and the login pages.
//!
//! The authorization endpoint parks each request under an opaque id while the browser signs
//! in (password, then TOTP when enrolled or asked for, then role selection for staff with
//! several role profiles), and [`proceed`] decides the next step from the request and the
//! session cookie every time, so SSO, `prompt`, `max_age` and `acr_values` live in one place.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Form, FromRequestParts, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sharedcare_kit::jose;

use crate::model::now;
use crate::model::{AuthMethod, EventKind, Grant, SubjectKind, acr_for};
use crate::oauth::{
    AuthzParams, OAuthError, OAuthErrorCode, Presented, Provider, check_authorization, needs_second_factor,
    session_fresh_enough, vtr_satisfied,
};
use crate::pages;
use crate::secrets;
use crate::store::Session;
use sharedcare_kit::nhs::ProofingLevel;

mod authorize;
mod broker;
mod keys;
mod login;
mod logout;
mod mfa;
mod throttle;
mod token;

use authorize::*;
use broker::*;
use keys::*;
use login::*;
use logout::*;
use mfa::*;
use throttle::*;
use token::*;

/// How long a parked authorization request waits for the user to sign in.
const REQUEST_SECS: i64 = 600;

/// HTTP state: the provider, its cookie names and the proxies it believes.
#[derive(Clone)]
pub struct Http {
    /// The provider.
    pub provider: Provider,
    proxies: Arc<[ipnet::IpNet]>,
    session_cookie: Arc<str>,
    csrf_cookie: Arc<str>,
    /// The WebAuthn relying party (passkeys, security keys); `None` when the issuer's host is
    /// not a domain name.
    webauthn: Option<Arc<webauthn_rs::Webauthn>>,
}

/// A parked authorization request (OIDC Core §3.1.2.1 parameters we act on).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AuthRequest {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: String,
    nonce: String,
    code_challenge: String,
    prompt: String,
    max_age: Option<i64>,
    acr_values: String,
    login_hint: String,
    vtr: String,
    /// Upstream provider to sign in with (`kc_idp_hint`, Keycloak's name for it).
    #[serde(default)]
    idp_hint: String,
    /// NHS login's `assertedLoginIdentity` from the NHS App (forwarded upstream).
    #[serde(default)]
    asserted: String,
}

/// The routes identity adds to the process's HTTP server.
pub fn router(provider: Provider) -> Router {
    let prefix = provider.config.cookie_prefix.clone();
    let proxies = provider.config.proxy_networks();
    let https = provider.issuer.starts_with("https://");
    let webauthn = crate::webauthn::relying_party(&provider.issuer);
    if webauthn.is_none() {
        tracing::info!(issuer = %provider.issuer, "passkeys and security keys are off: the issuer's host is not a domain name");
    }
    let state = Http {
        webauthn,
        provider,
        proxies: proxies.into(),
        session_cookie: format!("{prefix}_session").into(),
        csrf_cookie: format!("{prefix}_csrf").into(),
    };
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/oauth2/jwks", get(jwks))
        .route(pages::STYLE_PATH, get(style))
        .merge(sharedcare_kit::nhsuk::router(pages::ASSETS))
        .route("/oauth2/authorize", get(authorize).post(authorize))
        .route("/oauth2/resume", get(resume))
        .route("/oauth2/login", get(login_page).post(login_submit))
        .route("/oauth2/login/otp", get(otp_page).post(otp_submit))
        .route("/oauth2/select-role", get(role_page).post(role_submit))
        .route("/oauth2/token", post(token))
        .route("/oauth2/userinfo", get(userinfo).post(userinfo))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/oauth2/logout", get(logout).post(logout))
        .route("/oauth2/login/key/options", post(sign_in_options))
        .route("/oauth2/login/key", post(sign_in))
        .route(SCRIPT_PATH, get(script))
        .route("/account/totp", get(totp_page).post(totp_submit))
        .route("/account/security-keys", get(keys_page).post(add))
        .route("/account/security-keys/options", post(add_options))
        .route("/oauth2/broker/callback", get(broker_callback))
        .route("/oauth2/broker/{name}", get(broker_start))
        .route("/oauth2/rp/jwks", get(rp_jwks))
        .layer(axum::middleware::map_response(move |mut r: Response| async move {
            // Over https, browsers are told to use nothing else for a year (RFC 6797).
            if https {
                r.headers_mut().insert(
                    header::STRICT_TRANSPORT_SECURITY,
                    HeaderValue::from_static("max-age=31536000; includeSubDomains"),
                );
            }
            r
        }))
        .with_state(state)
}

// ---- small HTTP helpers ---------------------------------------------------------------------

fn html(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
            // No inline script or style: NHS.UK frontend's style sheet (its fonts from
            // assets.nhs.uk, as NHS.UK's own pages load them), identity's few extra styles and
            // the WebAuthn script are files here, and the script talks to this origin only. Forms post here, but after a
            // sign-in the browser is redirected on to the app's registered redirect URI, and
            // browsers hold redirects after a form to form-action too: any http(s) target is
            // allowed for that.
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; img-src 'self' data:; font-src https://assets.nhs.uk; form-action 'self' http: https:; frame-ancestors 'none'; base-uri 'none'"),
        ],
        body,
    )
        .into_response()
}

/// The login pages' style sheet (cached for a day: it changes only with a release).
async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        pages::STYLE,
    )
        .into_response()
}

fn see_other(location: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn json_response(status: u16, body: Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        status,
        [(header::CACHE_CONTROL, "no-store"), (header::PRAGMA, "no-cache")],
        axum::Json(body),
    )
        .into_response()
}

fn oauth_error(e: OAuthError) -> Response {
    let mut r = json_response(
        e.status(),
        json!({"error": e.code.as_str(), "error_description": e.description}),
    );
    if e.code == OAuthErrorCode::InvalidClient {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sharedcare\""),
        );
    }
    if e.code == OAuthErrorCode::InvalidToken {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    r
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn set_cookie(r: &mut Response, name: &str, value: &str, max_age: i64, secure: bool) {
    let secure = if secure { "; Secure" } else { "" };
    let v = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}");
    if let Ok(v) = HeaderValue::from_str(&v) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// `base` with `params` appended to its query, each value form-encoded; empty values are left
/// out. (Registered redirect URIs have no fragment, so the query is the URL's end.)
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut url = base.to_string();
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        if v.is_empty() {
            continue;
        }
        url.push(sep);
        sep = '&';
        url.push_str(k);
        url.push('=');
        url.extend(url::form_urlencoded::byte_serialize(v.as_bytes()));
    }
    url
}

impl Http {
    fn secure(&self) -> bool {
        self.provider.config.secure_cookies || self.provider.issuer.starts_with("https://")
    }

    /// The cookie binding a brokered sign-in to the browser that started it: `__Host-`
    /// (Secure, host-only) when cookies are Secure, else `<prefix>_broker` (plain http in
    /// development).
    fn broker_cookie(&self) -> String {
        let prefix = &self.provider.config.cookie_prefix;
        if self.secure() {
            format!("__Host-{prefix}_broker")
        } else {
            format!("{prefix}_broker")
        }
    }

    /// The browser's CSRF token (double-submit cookie), made when missing.
    fn csrf(&self, headers: &HeaderMap) -> (String, bool) {
        match cookie(headers, &self.csrf_cookie) {
            Some(v) if v.len() >= 16 => (v.to_string(), false),
            _ => (jose::random_token(24), true),
        }
    }

    fn page_with_csrf(&self, headers: &HeaderMap, render: impl FnOnce(&str) -> String) -> Response {
        let (csrf, fresh) = self.csrf(headers);
        let mut r = html(StatusCode::OK, render(&csrf));
        if fresh {
            set_cookie(&mut r, &self.csrf_cookie, &csrf, 3600, self.secure());
        }
        r
    }

    /// The live session named by the cookie (not revoked, within idle and absolute limits).
    async fn session(&self, headers: &HeaderMap) -> Result<Option<Session>, OAuthError> {
        let Some(c) = cookie(headers, &self.session_cookie) else {
            return Ok(None);
        };
        let Some(s) = self.provider.store.session_by_cookie(&jose::sha256_b64(c)).await? else {
            return Ok(None);
        };
        let now = now();
        let idle = self.provider.config.session_idle_secs;
        if s.revoked || s.expires_at <= now || now - s.last_seen >= idle {
            return Ok(None);
        }
        Ok(Some(s))
    }
}

fn csrf_ok(h: &Http, headers: &HeaderMap, form_value: &str) -> bool {
    cookie(headers, &h.csrf_cookie).is_some_and(|c| c.len() >= 16 && c == form_value)
}

/// The parameters of an endpoint that takes them as a GET query or a POST form (the
/// authorization endpoint, OIDC Core §3.1.2.1, and RP-initiated logout).
pub(super) struct Params(HashMap<String, String>);

impl<S: Send + Sync> axum::extract::FromRequest<S> for Params {
    type Rejection = Response;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Self::Rejection> {
        if req.method() == axum::http::Method::POST {
            let Form(q) = Form::<HashMap<String, String>>::from_request(req, state)
                .await
                .map_err(IntoResponse::into_response)?;
            return Ok(Params(q));
        }
        let (mut parts, _) = req.into_parts();
        let Query(q) = Query::<HashMap<String, String>>::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        Ok(Params(q))
    }
}

/// A posted sign-in form's parked request, once its CSRF token matches the cookie.
async fn posted_request(h: &Http, headers: &HeaderMap, csrf: &str, req: &str) -> Result<AuthRequest, Response> {
    if !csrf_ok(h, headers, csrf) {
        return Err(csrf_refused());
    }
    load_request(h, req).await
}

fn csrf_refused() -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::error(
            "The form has expired",
            "The form was not sent from this sign-in page or has expired (missing CSRF token). Go back to the app and try again.",
        ),
    )
}

// ---- discovery and keys ----------------------------------------------------------------------

async fn discovery(State(h): State<Http>) -> Response {
    let i = &*h.provider.issuer;
    let scopes: Vec<&str> = crate::model::USER_SCOPES
        .iter()
        .chain(crate::model::SERVICE_SCOPES)
        .copied()
        .collect();
    let body = json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/oauth2/authorize"),
        "token_endpoint": format!("{i}/oauth2/token"),
        "userinfo_endpoint": format!("{i}/oauth2/userinfo"),
        "jwks_uri": format!("{i}/oauth2/jwks"),
        "revocation_endpoint": format!("{i}/oauth2/revoke"),
        "introspection_endpoint": format!("{i}/oauth2/introspect"),
        "end_session_endpoint": format!("{i}/oauth2/logout"),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256", "RS256"],
        "userinfo_signing_alg_values_supported": ["none"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["ES256"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": scopes,
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid", "azp",
            "name", "given_name", "family_name", "email", "birthdate", "nhsid_useruid", "selected_roleid",
            "nhsid_nrbac_roles", "nhsid_user_orgs", "idassurancelevel", "nhs_number", "identity_proofing_level", "vot"],
        "acr_values_supported": [crate::model::ACR_PASSWORD, crate::model::ACR_MFA],
        "prompt_values_supported": ["none", "login", "select_account"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "frontchannel_logout_supported": false,
    });
    ([(header::CACHE_CONTROL, "public, max-age=300")], axum::Json(body)).into_response()
}

async fn jwks(State(h): State<Http>) -> Response {
    (
        [(header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(h.provider.keys.jwks()),
    )
        .into_response()
}
