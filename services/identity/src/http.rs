//! Identity over HTTP: discovery, JWKS, the OAuth 2.0 / OIDC endpoints and the login pages.
//!
//! The authorization endpoint parks each request under an opaque id while the browser signs
//! in (password, then TOTP when enrolled or asked for, then role selection for staff with
//! several role profiles), and [`proceed`] decides the next step from the request and the
//! session cookie every time, so SSO, `prompt`, `max_age` and `acr_values` live in one place.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sharedcare_kit::jose;

use crate::model::{ACR_PASSWORD, AuthMethod, Grant, SubjectKind, acr_for, check_scope};
use crate::oauth::{OAuthError, Presented, Provider, now};
use crate::pages;
use crate::secrets;
use crate::store::{Lock, Session};

/// How long a parked authorization request waits for the user to sign in.
const REQUEST_SECS: i64 = 600;

/// HTTP state: the provider plus per-process brute-force counters.
#[derive(Clone)]
pub struct Http {
    /// The provider.
    pub provider: Provider,
    failures: Arc<Mutex<HashMap<IpAddr, (i64, u32)>>>,
    session_cookie: Arc<str>,
    csrf_cookie: Arc<str>,
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
    let state = Http {
        provider,
        failures: Arc::new(Mutex::new(HashMap::new())),
        session_cookie: format!("{prefix}_session").into(),
        csrf_cookie: format!("{prefix}_csrf").into(),
    };
    Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/oauth2/jwks", get(jwks))
        .route("/oauth2/authorize", get(authorize_get).post(authorize_post))
        .route("/oauth2/resume", get(resume))
        .route("/oauth2/login", get(login_page).post(login_submit))
        .route("/oauth2/login/otp", get(otp_page).post(otp_submit))
        .route("/oauth2/select-role", get(role_page).post(role_submit))
        .route("/oauth2/token", post(token))
        .route("/oauth2/userinfo", get(userinfo).post(userinfo))
        .route("/oauth2/introspect", post(introspect))
        .route("/oauth2/revoke", post(revoke))
        .route("/oauth2/logout", get(logout).post(logout_post))
        .route("/account/totp", get(totp_page).post(totp_submit))
        .route("/oauth2/broker/callback", get(broker_callback))
        .route("/oauth2/broker/{name}", get(broker_start))
        .route("/oauth2/rp/jwks", get(rp_jwks))
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
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; form-action 'self' http: https:; frame-ancestors 'none'"),
        ],
        body,
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
    let mut r = json_response(e.status(), json!({"error": e.code, "error_description": e.description}));
    if e.code == "invalid_client" {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"sharedcare\""),
        );
    }
    if e.code == "invalid_token" {
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

fn with_query(base: &str, params: &[(&str, &str)]) -> String {
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

    /// Counts a failed login from `addr`; true when the address is over its limit.
    fn address_throttled(&self, addr: IpAddr, count: bool) -> bool {
        let minute = now() / 60;
        let Ok(mut map) = self.failures.lock() else {
            return false;
        };
        if map.len() > 100_000 {
            map.retain(|_, (m, _)| *m == minute);
        }
        let entry = map.entry(addr).or_insert((minute, 0));
        if entry.0 != minute {
            *entry = (minute, 0);
        }
        if count {
            entry.1 += 1;
        }
        entry.1 > self.provider.config.address_failures_per_minute
    }
}

fn csrf_ok(h: &Http, headers: &HeaderMap, form_value: &str) -> bool {
    cookie(headers, &h.csrf_cookie).is_some_and(|c| c.len() >= 16 && c == form_value)
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
    let scopes: Vec<&str> = crate::model::KNOWN_SCOPES.to_vec();
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

// ---- authorization endpoint ------------------------------------------------------------------

async fn authorize_get(
    State(h): State<Http>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    authorize(h, headers, q).await
}

async fn authorize_post(State(h): State<Http>, headers: HeaderMap, Form(q): Form<HashMap<String, String>>) -> Response {
    authorize(h, headers, q).await
}

/// Validates the client and redirect URI first (errors there are shown, never redirected: no
/// open redirects), then every other parameter (errors go back to the client).
async fn authorize(h: Http, headers: HeaderMap, q: HashMap<String, String>) -> Response {
    let f = |k: &str| q.get(k).cloned().unwrap_or_default();
    let client_id = f("client_id");
    let client = match h.provider.client(&client_id).await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return html(
                StatusCode::BAD_REQUEST,
                pages::error(
                    "Unknown app",
                    "client_id does not name a registered app (invalid_client).",
                ),
            );
        }
        Err(e) => {
            return html(
                StatusCode::SERVICE_UNAVAILABLE,
                pages::error("Sign-in is unavailable", &e.description),
            );
        }
    };
    let redirect_uri = f("redirect_uri");
    if !client.settings.redirect_uris.contains(&redirect_uri) {
        return html(
            StatusCode::BAD_REQUEST,
            pages::error(
                "Wrong return address",
                "redirect_uri does not exactly match an address registered for this app (invalid_request).",
            ),
        );
    }
    let state = f("state");
    let back = |code: &'static str, why: &str| {
        see_other(&with_query(
            &redirect_uri,
            &[
                ("error", code),
                ("error_description", why),
                ("state", &state),
                ("iss", &h.provider.issuer),
            ],
        ))
    };
    if f("response_type") != "code" {
        return back("unsupported_response_type", "response_type must be code");
    }
    if !client.allows_grant("authorization_code") {
        return back(
            "unauthorized_client",
            "this client may not use the authorization code flow",
        );
    }
    let scope = match check_scope(&f("scope"), &client.settings.scopes) {
        Ok(s) if s.split(' ').any(|x| x == "openid") => s,
        Ok(_) => return back("invalid_scope", "scope must include openid"),
        Err(e) => return back("invalid_scope", &e),
    };
    let challenge = f("code_challenge");
    let method = f("code_challenge_method");
    if !challenge.is_empty() && method != "S256" {
        return back("invalid_request", "code_challenge_method must be S256");
    }
    if challenge.is_empty() && client.settings.auth_method == AuthMethod::None {
        return back(
            "invalid_request",
            "PKCE with code_challenge_method=S256 is required for public clients",
        );
    }
    if !challenge.is_empty()
        && (challenge.len() != 43
            || base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&challenge)
                .is_err())
    {
        return back(
            "invalid_request",
            "code_challenge must be a base64url SHA-256 (43 characters)",
        );
    }
    let max_age = match f("max_age").as_str() {
        "" => None,
        v => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Some(n),
            _ => return back("invalid_request", "max_age must be a non-negative integer"),
        },
    };
    let prompt = f("prompt");
    if prompt
        .split_whitespace()
        .any(|p| !["none", "login", "select_account", "consent"].contains(&p))
    {
        return back("invalid_request", "prompt must be none, login or select_account");
    }
    let asserted = f("assertedLoginIdentity");
    let mut idp_hint = f("kc_idp_hint");
    if !idp_hint.is_empty() && !h.provider.broker.upstreams().iter().any(|u| u.name == idp_hint) {
        return back("invalid_request", "kc_idp_hint names no configured identity provider");
    }
    if !asserted.is_empty() && idp_hint.is_empty() {
        match h.provider.broker.upstreams().iter().find(|u| u.link_to == "patient") {
            Some(u) => idp_hint = u.name.clone(),
            None => {
                return back(
                    "invalid_request",
                    "assertedLoginIdentity needs an NHS login upstream provider",
                );
            }
        }
    }
    let req = AuthRequest {
        idp_hint,
        asserted,
        client_id,
        redirect_uri: redirect_uri.clone(),
        scope,
        state: state.clone(),
        nonce: f("nonce"),
        code_challenge: challenge,
        prompt,
        max_age,
        acr_values: f("acr_values"),
        login_hint: f("login_hint"),
        vtr: f("vtr"),
    };
    let id = jose::random_token(18);
    let params = serde_json::to_string(&req).unwrap_or_default();
    if let Err(e) = h
        .provider
        .store
        .put_auth_request(&id, &params, now() + REQUEST_SECS)
        .await
    {
        return back("temporarily_unavailable", &OAuthError::from(e).description);
    }
    proceed(&h, &headers, &id, &req, true).await
}

async fn load_request(h: &Http, id: &str) -> Result<AuthRequest, Response> {
    let expired = || {
        html(
            StatusCode::BAD_REQUEST,
            pages::error(
                "Your sign-in has expired",
                "Go back to the app and start signing in again.",
            ),
        )
    };
    match h.provider.store.auth_request(id, now()).await {
        Ok(Some(p)) => serde_json::from_str(&p).map_err(|_| expired()),
        Ok(None) => Err(expired()),
        Err(e) => Err(html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error("Sign-in is unavailable", &OAuthError::from(e).description),
        )),
    }
}

#[derive(Deserialize)]
struct ReqQuery {
    #[serde(default)]
    req: String,
}

async fn resume(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    match load_request(&h, &q.req).await {
        Ok(req) => proceed(&h, &headers, &q.req, &req, false).await,
        Err(r) => r,
    }
}

fn error_back(h: &Http, req: &AuthRequest, code: &'static str, why: &str) -> Response {
    see_other(&with_query(
        &req.redirect_uri,
        &[
            ("error", code),
            ("error_description", why),
            ("state", &req.state),
            ("iss", &h.provider.issuer),
        ],
    ))
}

fn wants(req: &AuthRequest, prompt: &str) -> bool {
    req.prompt.split_whitespace().any(|p| p == prompt)
}

fn level(p: &str) -> u8 {
    p.trim_start_matches('P').parse().unwrap_or(0)
}

/// Decides the next step for a parked request: sign in, second factor, role choice, or the
/// code. `fresh` is true on the request's first pass (where `prompt=login` forces a login).
async fn proceed(h: &Http, headers: &HeaderMap, id: &str, req: &AuthRequest, fresh: bool) -> Response {
    let none = wants(req, "none");
    let session = match h.session(headers).await {
        Ok(s) => s,
        Err(e) => return error_back(h, req, "temporarily_unavailable", &e.description),
    };
    let now = now();
    let mut session = match session {
        Some(s) if !(fresh && wants(req, "login")) && req.max_age.is_none_or(|m| now - s.auth_time <= m) => s,
        // To the upstream provider: with prompt=none only for the NHS App's asserted identity.
        _ if !req.idp_hint.is_empty() && (!none || !req.asserted.is_empty()) => {
            return see_other(&format!("/oauth2/broker/{}?req={id}", req.idp_hint));
        }
        _ if none => return error_back(h, req, "login_required", "the user is not signed in"),
        _ => return see_other(&format!("/oauth2/login?req={id}")),
    };
    let needs_mfa =
        req.acr_values.split_whitespace().any(|a| a != ACR_PASSWORD) && acr_for(&session.amr) == ACR_PASSWORD;
    if needs_mfa && !session.mfa_pending {
        let has_totp = match session.subject_kind {
            SubjectKind::Staff => {
                matches!(h.provider.store.person("uid", &session.subject).await, Ok(Some((p, _, _))) if !p.totp_secret.is_empty())
            }
            SubjectKind::Patient => false,
        };
        if !has_totp {
            return error_back(
                h,
                req,
                "unmet_authentication_requirements",
                "the requested acr_values need a second factor this account has not enrolled",
            );
        }
        session.mfa_pending = true;
        if let Err(e) = h.provider.store.update_session(&session).await {
            return error_back(h, req, "temporarily_unavailable", &OAuthError::from(e).description);
        }
    }
    if session.mfa_pending {
        if none {
            return error_back(h, req, "interaction_required", "a second factor is needed");
        }
        return see_other(&format!("/oauth2/login/otp?req={id}"));
    }
    let scoped_role = req.scope.split(' ').any(|s| s == "selectedrole");
    if session.subject_kind == SubjectKind::Staff && scoped_role {
        let roles = match h.provider.store.person("uid", &session.subject).await {
            Ok(Some((p, _, _))) => p.roles,
            _ => return error_back(h, req, "access_denied", "the account no longer exists"),
        };
        let valid = roles.iter().any(|r| r.person_roleid == session.selected_role);
        let choose = (fresh && wants(req, "select_account")) || !valid;
        if choose && roles.len() > 1 {
            if none {
                return error_back(h, req, "interaction_required", "the user must select a role");
            }
            return see_other(&format!("/oauth2/select-role?req={id}"));
        }
        if !valid && let Some(r) = roles.first() {
            session.selected_role = r.person_roleid.clone();
        }
    }
    if session.subject_kind == SubjectKind::Patient && !req.vtr.is_empty() {
        let wanted: Vec<String> = serde_json::from_str(&req.vtr).unwrap_or_default();
        let have = match h.provider.store.patient("nhs_number", &session.subject).await {
            Ok(Some((p, _, _))) => level(&p.proofing_level),
            _ => 0,
        };
        let ok = wanted.is_empty() || wanted.iter().any(|v| level(v.split('.').next().unwrap_or("")) <= have);
        if !ok {
            return error_back(
                h,
                req,
                "access_denied",
                "the identity proofing level does not satisfy vtr",
            );
        }
    }
    session.last_seen = now;
    let grant = Grant {
        client_id: req.client_id.clone(),
        session_id: session.id.clone(),
        subject_kind: session.subject_kind,
        subject: session.subject.clone(),
        scope: req.scope.clone(),
        nonce: req.nonce.clone(),
        redirect_uri: req.redirect_uri.clone(),
        code_challenge: req.code_challenge.clone(),
        auth_time: session.auth_time,
        amr: session.amr.clone(),
        selected_role: session.selected_role.clone(),
    };
    let code = jose::random_token(32);
    let stored = async {
        h.provider.store.update_session(&session).await?;
        h.provider
            .store
            .put_code(&jose::sha256_b64(&code), &grant, now + h.provider.config.code_secs)
            .await?;
        h.provider.store.delete_auth_request(id, now).await
    };
    if let Err(e) = stored.await {
        return error_back(h, req, "temporarily_unavailable", &OAuthError::from(e).description);
    }
    see_other(&with_query(
        &req.redirect_uri,
        &[("code", &code), ("state", &req.state), ("iss", &h.provider.issuer)],
    ))
}

// ---- login pages ----------------------------------------------------------------------------

async fn client_name(h: &Http, req: &AuthRequest) -> String {
    match h.provider.client(&req.client_id).await {
        Ok(Some(c)) => c.name,
        _ => req.client_id.clone(),
    }
}

async fn login_page(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    let req = match load_request(&h, &q.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = client_name(&h, &req).await;
    let upstreams = upstream_buttons(&h);
    h.page_with_csrf(&headers, |csrf| {
        pages::login(&q.req, csrf, &name, &req.login_hint, "", &upstreams)
    })
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    req: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// Who a username belongs to, with their password hash, lock state and TOTP enrolment.
struct Account {
    kind: SubjectKind,
    subject: String,
    hash: String,
    lock: Lock,
    totp: bool,
}

async fn find_account(h: &Http, username: &str) -> Result<Option<Account>, OAuthError> {
    if let Some((p, hash, lock)) = h.provider.store.person("username", username).await? {
        return Ok(Some(Account {
            kind: SubjectKind::Staff,
            subject: p.uid,
            hash,
            lock,
            totp: !p.totp_secret.is_empty(),
        }));
    }
    if let Some((p, hash, lock)) = h.provider.store.patient("username", username).await? {
        return Ok(Some(Account {
            kind: SubjectKind::Patient,
            subject: p.nhs_number,
            hash,
            lock,
            totp: false,
        }));
    }
    Ok(None)
}

async fn login_submit(
    State(h): State<Http>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !csrf_ok(&h, &headers, &form.csrf) {
        return csrf_refused();
    }
    let req = match load_request(&h, &form.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let name = client_name(&h, &req).await;
    let upstreams = upstream_buttons(&h);
    let again = |h: &Http, msg: &str, status: StatusCode| {
        let mut r = h.page_with_csrf(&headers, |csrf| {
            pages::login(&form.req, csrf, &name, &form.username, msg, &upstreams)
        });
        *r.status_mut() = status;
        r
    };
    let source = addr.ip().to_string();
    if h.address_throttled(addr.ip(), false) {
        return again(
            &h,
            "Too many failed sign-in attempts from your network. Wait a minute and try again.",
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let username = form.username.trim().to_string();
    let account = match find_account(&h, &username).await {
        Ok(a) => a,
        Err(e) => return again(&h, &e.description, StatusCode::SERVICE_UNAVAILABLE),
    };
    let now = now();
    if let Some(a) = &account
        && a.lock.until > now
    {
        h.provider
            .event(
                "login_failed",
                a.kind.as_str(),
                &a.subject,
                &req.client_id,
                &source,
                "account locked",
                &[],
                "",
            )
            .await;
        return again(
            &h,
            "This account is locked after too many failed sign-in attempts. Try again later or contact your administrator.",
            StatusCode::FORBIDDEN,
        );
    }
    // Unknown usernames still cost one Argon2 verification, so timing does not reveal accounts.
    let hash = account.as_ref().map(|a| a.hash.clone()).unwrap_or_default();
    let ok = h.provider.hasher.verify(form.password.clone(), hash).await;
    let Some(account) = account.filter(|_| ok) else {
        h.address_throttled(addr.ip(), true);
        if let Some(a) = find_account(&h, &username).await.ok().flatten() {
            let failed = a.lock.failed + 1;
            let after = h.provider.config.lockout_after;
            let until = if failed % after == 0 {
                let doublings = u32::try_from((failed / after - 1).min(10)).unwrap_or(10);
                now + h.provider.config.lockout_secs * (1i64 << doublings)
            } else {
                0
            };
            let _ = h
                .provider
                .store
                .set_lock(a.kind, &a.subject, Lock { failed, until })
                .await;
            h.provider
                .event(
                    "login_failed",
                    a.kind.as_str(),
                    &a.subject,
                    &req.client_id,
                    &source,
                    "wrong password",
                    &[],
                    "",
                )
                .await;
            if until > 0 {
                h.provider
                    .event(
                        "account_locked",
                        a.kind.as_str(),
                        &a.subject,
                        &req.client_id,
                        &source,
                        &format!("locked until {until}"),
                        &[],
                        "",
                    )
                    .await;
            }
        }
        return again(&h, "Incorrect username or password.", StatusCode::UNAUTHORIZED);
    };
    if let Err(e) = h
        .provider
        .store
        .set_lock(account.kind, &account.subject, Lock { failed: 0, until: 0 })
        .await
    {
        return again(&h, &OAuthError::from(e).description, StatusCode::SERVICE_UNAVAILABLE);
    }
    let signed_in = h
        .sign_in(
            account.kind,
            &account.subject,
            vec!["pwd".into()],
            account.totp,
            &req.client_id,
            &source,
            "",
        )
        .await;
    match signed_in {
        Ok(cookie) => h.resume_with_cookie(&form.req, &cookie),
        Err(e) => again(&h, &e.description, StatusCode::SERVICE_UNAVAILABLE),
    }
}

impl Http {
    /// Starts a session for a subject who has just authenticated; returns the cookie value.
    /// The login event is written now unless a second factor is still owed.
    #[allow(clippy::too_many_arguments)]
    async fn sign_in(
        &self,
        kind: SubjectKind,
        subject: &str,
        amr: Vec<String>,
        mfa_pending: bool,
        client_id: &str,
        source: &str,
        detail: &str,
    ) -> Result<String, OAuthError> {
        let now = now();
        let cookie_value = jose::random_token(32);
        let session = Session {
            id: jose::random_token(16),
            subject_kind: kind,
            subject: subject.to_string(),
            auth_time: now,
            last_seen: now,
            expires_at: now + self.provider.config.session_absolute_secs,
            amr,
            mfa_pending,
            selected_role: String::new(),
            revoked: false,
        };
        self.provider
            .store
            .insert_session(&session, &jose::sha256_b64(&cookie_value))
            .await?;
        if !mfa_pending {
            self.provider
                .event(
                    "login_succeeded",
                    kind.as_str(),
                    subject,
                    client_id,
                    source,
                    detail,
                    &session.amr,
                    acr_for(&session.amr),
                )
                .await;
        }
        Ok(cookie_value)
    }

    /// Sets the session cookie and continues the parked request.
    fn resume_with_cookie(&self, req: &str, cookie: &str) -> Response {
        let mut r = see_other(&format!("/oauth2/resume?req={req}"));
        set_cookie(
            &mut r,
            &self.session_cookie,
            cookie,
            self.provider.config.session_absolute_secs,
            self.secure(),
        );
        r
    }
}

fn upstream_buttons(h: &Http) -> Vec<(String, String)> {
    h.provider
        .broker
        .upstreams()
        .iter()
        .map(|u| (u.name.clone(), u.display_name.clone()))
        .collect()
}

// ---- brokering -------------------------------------------------------------------------------

async fn broker_start(
    State(h): State<Http>,
    axum::extract::Path(name): axum::extract::Path<String>,
    Query(q): Query<ReqQuery>,
) -> Response {
    let req = match load_request(&h, &q.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match h
        .provider
        .broker
        .start(&name, &q.req, &req.asserted, &req.login_hint)
        .await
    {
        Ok(url) => see_other(&url),
        Err(e) => {
            tracing::warn!(upstream = %name, error = %e, "brokered sign-in could not start");
            if req.asserted.is_empty() {
                html(StatusCode::BAD_GATEWAY, pages::error("Sign-in is unavailable", &e))
            } else {
                error_back(
                    &h,
                    &req,
                    "temporarily_unavailable",
                    "the NHS login provider is unavailable",
                )
            }
        }
    }
}

async fn broker_callback(
    State(h): State<Http>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match h.provider.broker.finish(&q).await {
        Ok(linked) => {
            let Ok(req) = load_request(&h, &linked.req).await else {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::error(
                        "Your sign-in has expired",
                        "Go back to the app and start signing in again.",
                    ),
                );
            };
            let detail = format!("via upstream provider {}", req.idp_hint);
            let source = addr.ip().to_string();
            match h
                .sign_in(
                    linked.kind,
                    &linked.subject,
                    linked.amr,
                    false,
                    &req.client_id,
                    &source,
                    &detail,
                )
                .await
            {
                Ok(cookie) => h.resume_with_cookie(&linked.req, &cookie),
                Err(e) => error_back(&h, &req, "temporarily_unavailable", &e.description),
            }
        }
        Err(crate::broker::BrokerError::Upstream { req, code }) => match load_request(&h, &req).await {
            Ok(r) => {
                let code: &'static str = match code.as_str() {
                    "login_required" => "login_required",
                    "interaction_required" => "interaction_required",
                    "consent_required" => "consent_required",
                    "temporarily_unavailable" => "temporarily_unavailable",
                    _ => "access_denied",
                };
                error_back(&h, &r, code, "the upstream identity provider did not sign the user in")
            }
            Err(resp) => resp,
        },
        Err(crate::broker::BrokerError::Failed(why)) => {
            tracing::warn!(error = %why, "brokered sign-in failed");
            html(
                StatusCode::BAD_GATEWAY,
                pages::error("Sign-in with the other provider failed", &why),
            )
        }
    }
}

async fn rp_jwks(State(h): State<Http>) -> Response {
    match h.provider.broker.rp_jwks().await {
        Ok(set) => axum::Json(set).into_response(),
        Err(e) => oauth_error(OAuthError::from(e)),
    }
}

async fn otp_page(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    if let Err(r) = load_request(&h, &q.req).await {
        return r;
    }
    h.page_with_csrf(&headers, |csrf| pages::otp(&q.req, csrf, ""))
}

#[derive(Deserialize)]
struct OtpForm {
    #[serde(default)]
    req: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    code: String,
}

async fn otp_submit(
    State(h): State<Http>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<OtpForm>,
) -> Response {
    if !csrf_ok(&h, &headers, &form.csrf) {
        return csrf_refused();
    }
    let req = match load_request(&h, &form.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut session = match h.session(&headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff => s,
        _ => return see_other(&format!("/oauth2/login?req={}", form.req)),
    };
    let source = addr.ip().to_string();
    let again = |msg: &str| {
        let mut r = h.page_with_csrf(&headers, |csrf| pages::otp(&form.req, csrf, msg));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r
    };
    if h.address_throttled(addr.ip(), false) {
        return again("Too many failed attempts from your network. Wait a minute and try again.");
    }
    let Ok(Some((person, _, _))) = h.provider.store.person("uid", &session.subject).await else {
        return see_other(&format!("/oauth2/login?req={}", form.req));
    };
    let code = form.code.trim();
    let step_ok = match secrets::totp_step(&person.totp_secret, code, now()) {
        Some(step) => h.provider.store.use_totp_step(&person.uid, step).await.unwrap_or(false),
        None => false,
    };
    let ok = step_ok
        || (code.len() > 6
            && h.provider
                .store
                .use_recovery_code(&person.uid, &jose::sha256_b64(code))
                .await
                .unwrap_or(false));
    if !ok {
        h.address_throttled(addr.ip(), true);
        h.provider
            .event(
                "login_failed",
                "staff",
                &person.uid,
                &req.client_id,
                &source,
                "wrong security code",
                &session.amr,
                "",
            )
            .await;
        return again("The security code is not right. Check your authenticator app and try again.");
    }
    session.mfa_pending = false;
    if !session.amr.iter().any(|m| m == "otp") {
        session.amr.push("otp".into());
    }
    if let Err(e) = h.provider.store.update_session(&session).await {
        return again(&OAuthError::from(e).description);
    }
    h.provider
        .event(
            "login_succeeded",
            "staff",
            &person.uid,
            &req.client_id,
            &source,
            "",
            &session.amr,
            acr_for(&session.amr),
        )
        .await;
    see_other(&format!("/oauth2/resume?req={}", form.req))
}

async fn role_page(State(h): State<Http>, headers: HeaderMap, Query(q): Query<ReqQuery>) -> Response {
    if let Err(r) = load_request(&h, &q.req).await {
        return r;
    }
    let session = match h.session(&headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff => s,
        _ => return see_other(&format!("/oauth2/login?req={}", q.req)),
    };
    let Ok(Some((person, _, _))) = h.provider.store.person("uid", &session.subject).await else {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error("Sign-in is unavailable", "Try again shortly."),
        );
    };
    let codes: Vec<&str> = person.roles.iter().map(|r| r.org_code.as_str()).collect();
    let names = h.provider.store.organisation_names(&codes).await.unwrap_or_default();
    h.page_with_csrf(&headers, |csrf| pages::select_role(&q.req, csrf, &person.roles, &names))
}

#[derive(Deserialize)]
struct RoleForm {
    #[serde(default)]
    req: String,
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    role: String,
}

async fn role_submit(State(h): State<Http>, headers: HeaderMap, Form(form): Form<RoleForm>) -> Response {
    if !csrf_ok(&h, &headers, &form.csrf) {
        return csrf_refused();
    }
    let req = match load_request(&h, &form.req).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let mut session = match h.session(&headers).await {
        Ok(Some(s)) if s.subject_kind == SubjectKind::Staff && !s.mfa_pending => s,
        _ => return see_other(&format!("/oauth2/login?req={}", form.req)),
    };
    let Ok(Some((person, _, _))) = h.provider.store.person("uid", &session.subject).await else {
        return see_other(&format!("/oauth2/login?req={}", form.req));
    };
    if !person.roles.iter().any(|r| r.person_roleid == form.role) {
        return html(
            StatusCode::BAD_REQUEST,
            pages::error("Choose a role", "role: not one of your role profiles."),
        );
    }
    session.selected_role = form.role.clone();
    if let Err(e) = h.provider.store.update_session(&session).await {
        return error_back(&h, &req, "temporarily_unavailable", &OAuthError::from(e).description);
    }
    h.provider
        .event(
            "role_selected",
            "staff",
            &person.uid,
            &req.client_id,
            "",
            &form.role,
            &[],
            "",
        )
        .await;
    // Not "fresh": prompt=select_account has been answered.
    proceed(&h, &headers, &form.req, &req, false).await
}

// ---- TOTP enrolment --------------------------------------------------------------------------

async fn totp_page(State(h): State<Http>, headers: HeaderMap) -> Response {
    let Ok(Some(session)) = h.session(&headers).await else {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::error(
                "Sign in first",
                "Sign in to an app, then come back to set up two-step sign in.",
            ),
        );
    };
    if session.subject_kind != SubjectKind::Staff || session.mfa_pending {
        return html(
            StatusCode::FORBIDDEN,
            pages::error("Not available", "Two-step sign in is for staff accounts."),
        );
    }
    let secret = secrets::new_totp_secret();
    let uri = secrets::otpauth_uri("Sharedcare", &session.subject, &secret);
    h.page_with_csrf(&headers, |csrf| pages::totp_enrol(csrf, &secret, &uri, ""))
}

#[derive(Deserialize)]
struct TotpForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    secret: String,
    #[serde(default)]
    code: String,
}

async fn totp_submit(State(h): State<Http>, headers: HeaderMap, Form(form): Form<TotpForm>) -> Response {
    if !csrf_ok(&h, &headers, &form.csrf) {
        return csrf_refused();
    }
    let Ok(Some(mut session)) = h.session(&headers).await else {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::error("Sign in first", "Your session has ended."),
        );
    };
    if session.subject_kind != SubjectKind::Staff
        || session.mfa_pending
        || secrets::unbase32(&form.secret).is_none_or(|b| b.len() < 16)
    {
        return html(
            StatusCode::BAD_REQUEST,
            pages::error("Not available", "secret: not a valid TOTP key."),
        );
    }
    let Some(step) = secrets::totp_step(&form.secret, &form.code, now()) else {
        let uri = secrets::otpauth_uri("Sharedcare", &session.subject, &form.secret);
        let mut r = html(
            StatusCode::BAD_REQUEST,
            pages::totp_enrol(
                &form.csrf,
                &form.secret,
                &uri,
                "The code is not right. Enter the code your app shows now.",
            ),
        );
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let codes: Vec<String> = (0..8).map(|_| jose::random_token(9)).collect();
    let hashes: Vec<String> = codes.iter().map(|c| jose::sha256_b64(c)).collect();
    if let Err(e) = h
        .provider
        .store
        .set_totp(&session.subject, &form.secret, &hashes, step)
        .await
    {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error("Try again", &OAuthError::from(e).description),
        );
    }
    if !session.amr.iter().any(|m| m == "otp") {
        session.amr.push("otp".into());
        let _ = h.provider.store.update_session(&session).await;
    }
    h.provider
        .event("totp_enrolled", "staff", &session.subject, "", "", "", &session.amr, "")
        .await;
    html(StatusCode::OK, pages::recovery_codes(&codes))
}

// ---- token, userinfo, introspection, revocation ---------------------------------------------

fn presented(headers: &HeaderMap, form: &HashMap<String, String>) -> Result<Presented, OAuthError> {
    let f = |k: &str| form.get(k).cloned().unwrap_or_default();
    let mut p = Presented {
        basic: None,
        client_id: f("client_id"),
        client_secret: f("client_secret"),
        assertion_type: f("client_assertion_type"),
        assertion: f("client_assertion"),
    };
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
        && let Some((scheme, b64)) = v.split_once(' ')
        && scheme.eq_ignore_ascii_case("basic")
    {
        let bad = || OAuthError::new("invalid_client", "Authorization: Basic is not base64 of id:secret");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (id, secret) = text.split_once(':').ok_or_else(bad)?;
        // RFC 6749 §2.3.1: both parts are form-urlencoded.
        let dec = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let (id, secret) = (dec(id), dec(secret));
        if !p.client_id.is_empty() && p.client_id != id {
            return Err(OAuthError::new(
                "invalid_request",
                "client_id in the body differs from HTTP Basic",
            ));
        }
        p.basic = Some((id, secret));
    }
    Ok(p)
}

async fn authenticated(
    h: &Http,
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<crate::model::Client, Response> {
    let p = presented(headers, form).map_err(oauth_error)?;
    h.provider.authenticate(&p).await.map_err(oauth_error)
}

async fn token(State(h): State<Http>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let client = match authenticated(&h, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match h.provider.token(&client, &form).await {
        Ok(body) => json_response(200, body),
        Err(e) => oauth_error(e),
    }
}

async fn userinfo(State(h): State<Http>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(sharedcare_kit::auth::bearer);
    let Some(token) = token else {
        return oauth_error(OAuthError::new("invalid_token", "missing bearer token"));
    };
    match h.provider.userinfo(token).await {
        Ok(body) => json_response(200, body),
        Err(e) => oauth_error(e),
    }
}

async fn introspect(State(h): State<Http>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let client = match authenticated(&h, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if client.settings.auth_method == AuthMethod::None {
        return oauth_error(OAuthError::new("invalid_client", "public clients may not introspect"));
    }
    match h
        .provider
        .introspect(form.get("token").map(String::as_str).unwrap_or_default())
        .await
    {
        Ok(body) => json_response(200, body),
        Err(e) => oauth_error(e),
    }
}

async fn revoke(State(h): State<Http>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let client = match authenticated(&h, &headers, &form).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    match h
        .provider
        .revoke(&client, form.get("token").map(String::as_str).unwrap_or_default())
        .await
    {
        Ok(()) => json_response(200, json!({})),
        Err(e) => oauth_error(e),
    }
}

// ---- logout ---------------------------------------------------------------------------------

async fn logout(State(h): State<Http>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    end(h, headers, q).await
}

async fn logout_post(State(h): State<Http>, headers: HeaderMap, Form(q): Form<HashMap<String, String>>) -> Response {
    end(h, headers, q).await
}

/// RP-initiated logout (OIDC RP-Initiated Logout 1.0): ends the browser's session, tells every
/// app that shared it over the back channel, and returns to a registered address only.
async fn end(h: Http, headers: HeaderMap, q: HashMap<String, String>) -> Response {
    let f = |k: &str| q.get(k).cloned().unwrap_or_default();
    // The hint is checked for signature and issuer, not expiry (it is usually expired).
    let hint = f("id_token_hint");
    let hinted = if hint.is_empty() {
        None
    } else {
        match jose::verify_with(&hint, &h.provider.keys.jwks()) {
            Ok(c) if c["iss"].as_str() == Some(&*h.provider.issuer) => Some(c),
            _ => {
                return html(
                    StatusCode::BAD_REQUEST,
                    pages::error("Sign-out failed", "id_token_hint is not an ID token from this service."),
                );
            }
        }
    };
    let client_id = match (&hinted, f("client_id")) {
        (Some(c), _) => c["aud"].as_str().unwrap_or_default().to_string(),
        (None, id) => id,
    };
    let session = match h.session(&headers).await {
        Ok(Some(s)) => Some(s),
        _ => match hinted.as_ref().and_then(|c| c["sid"].as_str()) {
            Some(sid) => h.provider.store.session(sid).await.ok().flatten(),
            None => None,
        },
    };
    if let Some(s) = session
        && let Err(e) = h.provider.end_session(&s, "session_ended").await
    {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            pages::error("Sign-out failed", &e.description),
        );
    }
    let target = f("post_logout_redirect_uri");
    let allowed = if target.is_empty() || client_id.is_empty() {
        false
    } else {
        matches!(h.provider.client(&client_id).await, Ok(Some(c)) if c.settings.post_logout_redirect_uris.contains(&target))
    };
    let mut r = if allowed {
        see_other(&with_query(&target, &[("state", &f("state"))]))
    } else {
        html(StatusCode::OK, pages::signed_out())
    };
    set_cookie(&mut r, &h.session_cookie, "", 0, h.secure());
    r
}
