//! The HTTP shell shared by the portal and the passport pages: the router, security headers on
//! every page, the session cookie, CSRF, sign-in (code flow with PKCE), sign-out (RP-initiated
//! logout) and back-channel logout.

use sharedcare_kit::edge::Refuse;
use sharedcare_kit::json::Fields;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::Markup;

use crate::error::PortalError;
use crate::forms::{BackChannelLogout, Callback, Confirm, Login, Posted};
use crate::oidc::Rp;
use crate::page::{Area, Chrome, home_of};
use crate::peers::Peers;
use crate::session::{Session, Sessions, Who};
use sharedcare_kit::auth::Principal;

/// The session cookie. `__Host-`: Secure, host-only, path `/` (browsers treat http://localhost
/// and 127.0.0.1 as secure, so it works in development too).
pub const COOKIE: &str = "__Host-sc-portal";

/// The cookie binding a sign-in to the browser that started it (checked at the callback).
pub const SIGNIN_COOKIE: &str = "__Host-sc-signin";

/// The assurance the portal asks identity for when staff sign in (password and a second
/// factor, as every service requires of staff).
pub const STAFF_ACR_VALUES: &str = "AAL2";

/// Scopes the portal asks for: CIS2-style role claims for staff, NHS login's for patients.
const SCOPES: &str = "openid profile nationalrbacaccess selectedrole nhs_number";

/// What every page handler shares.
pub struct Web {
    /// The portal as a client of identity.
    pub rp: Rp,
    /// Sessions and sign-ins under way.
    pub sessions: Sessions,
    /// The services pages read and change.
    pub peers: Peers,
    /// The site's own base URL, as browsers reach it (post-logout redirects).
    pub public_url: String,
    /// HTTPS: HSTS is sent.
    pub https: bool,
    /// The Content-Security-Policy.
    pub csp: String,
    /// Held while a session's tokens are refreshed.
    pub refreshing: tokio::sync::Mutex<()>,
}

/// The shared state.
pub type App = Arc<Web>;

/// A signed-in request: the cookie's token, the session, and whether it is inside the NHS App.
pub struct Signed {
    /// The cookie's token (to save the session again).
    pub token: String,
    /// The session.
    pub session: Session,
    /// Inside the NHS App's web view.
    pub nhs_app: bool,
}

impl Signed {
    /// The page frame for this person in `area`.
    pub fn chrome(&self, area: Area) -> Chrome<'_> {
        let name = match &self.session.who {
            Who::Staff { name, .. } | Who::Patient { name, .. } => name.as_str(),
        };
        Chrome {
            nhs_app: self.nhs_app,
            area,
            signed_in: Some((name, self.session.csrf.as_str())),
        }
    }

    /// Refuses a form without this session's CSRF token.
    pub fn check_csrf(&self, form: &impl Posted) -> Result<(), PortalError> {
        let sent = form.csrf();
        if !sent.is_empty() && sent == self.session.csrf {
            Ok(())
        } else {
            Err(PortalError::Csrf)
        }
    }
}

/// Where a sign-in started by this request comes back to: the page itself for a GET, and for
/// a form (POST) the page it was on, as `form_page` says for the area.
pub(crate) fn return_path(parts: &http::request::Parts, form_page: fn(&str) -> String) -> String {
    let path = parts.uri.path();
    if parts.method == http::Method::GET {
        path.to_string()
    } else {
        form_page(path)
    }
}

/// Whether the request comes from the NHS App's web view (its user agent names it, as the NHS
/// App's web integration guidance describes).
pub fn in_nhs_app(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| {
            let ua = ua.to_ascii_lowercase();
            ua.contains("nhsapp-ios") || ua.contains("nhsapp-android")
        })
        .unwrap_or(false)
}

/// The value of cookie `name` in the request.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
}

fn set_cookie(r: &mut Response, value: &str, max_age: i64) {
    let v = format!("{COOKIE}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    if let Ok(v) = HeaderValue::from_str(&v) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// An HTML page response.
pub fn html(m: Markup) -> Response {
    Html(m.into_string()).into_response()
}

/// A redirect after a form (303: the browser follows with GET).
pub fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

impl Web {
    /// `token`'s session with tokens that are not `expiring`: refreshed here if this replica
    /// wins the claim, else as the replica that won it saved them (taken over if it never does).
    async fn refreshed(
        &self,
        token: &str,
        here: &str,
        expiring: impl Fn(&Session) -> bool,
    ) -> Result<Session, PortalError> {
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(2 * crate::session::REFRESH_CLAIM_MS as u64);
        loop {
            let Some(mut session) = self.sessions.reload(token).await? else {
                return Err(PortalError::SignIn(here.into()));
            };
            if !expiring(&session) {
                return Ok(session);
            }
            if self.sessions.claim_refresh(token).await? {
                // Another replica may have refreshed between the read above and this claim
                // (its save released its claim): read again under the claim, and refresh only
                // tokens that are still expiring, or the rotated-out refresh token would be
                // presented twice and identity would end the session.
                let Some(current) = self.sessions.reload(token).await? else {
                    return Err(PortalError::SignIn(here.into()));
                };
                session = current;
                if !expiring(&session) {
                    // Saving releases the claim.
                    self.sessions.save(token, &session).await?;
                    return Ok(session);
                }
                let rt = session.tokens.refresh_token.clone();
                return match self.rp.refresh(&rt, &session.tokens).await {
                    Ok(t) => {
                        session.tokens = t;
                        self.sessions.save(token, &session).await?;
                        Ok(session)
                    }
                    Err(e) => {
                        tracing::info!(error = %e, "refresh failed: signing in again");
                        self.sessions.end(token).await?;
                        Err(PortalError::SignIn(here.into()))
                    }
                };
            }
            if tokio::time::Instant::now() > deadline {
                return Err(PortalError::Peer(tonic::Status::unavailable(
                    "another portal replica is refreshing this session and has not finished",
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// The signed-in session of this request, with fresh tokens; otherwise sign in and come
    /// back to `here`.
    pub async fn signed(&self, headers: &HeaderMap, here: &str) -> Result<Signed, PortalError> {
        let nhs_app = in_nhs_app(headers);
        let Some(token) = cookie(headers, COOKIE).map(str::to_string) else {
            return Err(PortalError::SignIn(here.into()));
        };
        let Some(mut session) = self.sessions.get(&token).await? else {
            return Err(PortalError::SignIn(here.into()));
        };
        let expiring = |s: &Session| s.tokens.expires_at - 30 < chrono::Utc::now().timestamp();
        if expiring(&session) {
            // One refresh at a time: identity rotates refresh tokens and revokes the whole
            // family when an old one is presented again, so two pages refreshing the same
            // session at once would sign the person out. Within this replica a lock, across
            // replicas a claim on the session's row; the others find the winner's tokens.
            let _one = self.refreshing.lock().await;
            session = self.refreshed(&token, here, expiring).await?;
        }
        Ok(Signed {
            token,
            session,
            nhs_app,
        })
    }
}

/// The headers every page carries: CSP, no referrer, no sniffing, never framed, HSTS over
/// HTTPS, and `no-store` unless the response chose its own caching (static files).
pub fn security_headers(h: &mut HeaderMap, csp: &str, https: bool) {
    if !h.contains_key(header::CACHE_CONTROL) {
        // Pages hold patient data: never kept by the browser or a proxy.
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let Ok(v) = HeaderValue::from_str(csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(), microphone=(), geolocation=()"),
    );
    if https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
}

/// The Content-Security-Policy: this site's own files only, no inline script or style, forms
/// posting here or to identity (sign-out redirects there), never framed.
pub fn csp(issuer: &str) -> String {
    let issuer = url::Url::parse(issuer)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         font-src 'self' https://assets.nhs.uk; connect-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self' {issuer}; frame-ancestors 'none'"
    )
}

/// A path on this site to come back to; anything else is the area's home.
pub fn local_path(p: Option<&String>, default: &str) -> String {
    match p {
        Some(p) if p.starts_with('/') && !p.starts_with("//") && !p.contains('\\') => p.clone(),
        _ => default.into(),
    }
}

/// Signing in and out, for both areas.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/portal/login", get(login))
        .route("/passport/login", get(login))
        .route("/portal/callback", get(callback))
        .route("/portal/logout", post(logout))
        .route("/passport/logout", post(logout))
        .route("/portal/backchannel-logout", post(backchannel_logout))
}

/// `GET /portal/login` and `/passport/login`: off to identity (with `prompt=none` and the
/// assertion when the NHS App sent one).
async fn login(
    State(app): State<App>,
    uri: http::Uri,
    headers: HeaderMap,
    Query(q): Query<Login>,
) -> Result<Response, PortalError> {
    let home = home_of(uri.path());
    let back = local_path(q.return_to.as_ref(), home);
    let mut extra: Vec<(&str, &str)> = Vec::new();
    if !q.asserted_login_identity.is_empty() {
        extra.push(("assertedLoginIdentity", &q.asserted_login_identity));
        extra.push(("prompt", "none"));
    }
    // Staff sign in with a second factor: the platform's services accept nothing less.
    if home == "/portal/" {
        extra.push(("acr_values", STAFF_ACR_VALUES));
    }
    let (binding, fresh) = crate::oidc::browser_binding(cookie(&headers, SIGNIN_COOKIE));
    let (url, state, pending) = app.rp.start(SCOPES, &back, &extra, &binding)?;
    app.sessions.park(&state, &pending).await?;
    let mut r = see_other(&url);
    if fresh {
        bind_browser(&mut r, SIGNIN_COOKIE, &binding);
    }
    Ok(r)
}

/// Sets the sign-in binding cookie (host-only, HttpOnly; Lax, so it comes back on the
/// top-level redirect from identity; it outlives a sign-in by a little).
pub(crate) fn bind_browser(r: &mut Response, name: &str, binding: &str) {
    let v = format!("{name}={binding}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=900");
    if let Ok(v) = HeaderValue::from_str(&v) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
}

/// Who the tokens are for: a patient (NHS number, proofing level) or a member of staff (the
/// selected role), named from the ID token.
fn who(id: &serde_json::Value, p: Principal) -> Result<Who, PortalError> {
    let name = id["name"].as_str().unwrap_or("Signed in").to_string();
    match p {
        Principal::Patient { nhs_number, proofing } => Ok(Who::Patient {
            name,
            nhs_number: nhs_number.to_string(),
            proofing,
        }),
        Principal::Staff { role, .. } => Ok(Who::Staff {
            name,
            role_name: role.role_name,
            org: role.org_code,
            activities: role.activity_codes,
        }),
        Principal::Service { .. } => Err(PortalError::forbidden(
            "a service's token cannot sign in to these pages",
        )),
    }
}

/// `GET /portal/callback`: the code exchanged, the ID token checked, a session made.
async fn callback(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Result<Response, PortalError> {
    let Some(pending) = app.sessions.take(&q.state).await? else {
        return Err(PortalError::invalid(
            "state",
            "this sign-in has expired or was already used: start again",
        ));
    };
    // A callback carried to another browser (login CSRF: someone else's sign-in finishing in
    // this browser) is refused before the code is used.
    if !pending.same_browser(cookie(&headers, SIGNIN_COOKIE)) {
        return Err(PortalError::invalid(
            "state",
            "this sign-in was not started in this browser: start again",
        ));
    }
    let passport = pending.return_to.starts_with("/passport");
    if let Some(error) = &q.error {
        // A sign-in to the passport that could not complete (a silent one from the NHS App
        // with no NHS login session, or none configured): the ordinary sign-in page.
        if passport {
            tracing::info!(error = %error, "passport sign-in not completed: offering the sign-in page");
            return Ok(see_other("/passport/?signin=needed"));
        }
        let why = &q.error_description;
        return Err(PortalError::Rp(crate::oidc::RpError::Refused(format!(
            "{error}: {why}"
        ))));
    }
    let tokens = app.rp.exchange(&q.code, &pending).await?;
    let who = who(&tokens.claims, app.rp.principal(&tokens.access_token).await?)?;
    if tokens.claims.at("sid").as_str().unwrap_or_default().is_empty() {
        // Without it a back-channel logout could not find this session.
        return Err(PortalError::Rp(crate::oidc::RpError::Token(
            "the ID token carries no sid (identity's session id)".into(),
        )));
    }
    let session = Session::new(who, tokens);
    let token = app.sessions.create(&session).await?;
    let mut r = see_other(&pending.return_to);
    set_cookie(&mut r, &token, crate::session::IDLE_SECS * 24);
    Ok(r)
}

/// `POST /portal/logout` and `/passport/logout`: this session ends, then identity's SSO
/// session (which tells every other app by back-channel logout).
async fn logout(
    State(app): State<App>,
    uri: http::Uri,
    headers: HeaderMap,
    Form(form): Form<Confirm>,
) -> Result<Response, PortalError> {
    let home = home_of(uri.path());
    let s = match app.signed(&headers, home).await {
        Ok(s) => s,
        Err(PortalError::SignIn(_)) => return Ok(see_other(home)),
        Err(e) => return Err(e),
    };
    s.check_csrf(&form)?;
    app.sessions.end(&s.token).await?;
    let back = format!("{}{home}", app.public_url);
    let (action, fields) = app.rp.logout_form(&s.session.tokens.id_token, &back);
    let area = if home == "/passport/" {
        crate::page::Area::Passport
    } else {
        crate::page::Area::Portal
    };
    let signed_out = crate::page::Chrome {
        signed_in: None,
        ..s.chrome(area)
    };
    let mut r = html(crate::page::signing_out(&signed_out, &action, &fields));
    set_cookie(&mut r, "", 0);
    Ok(r)
}

/// `POST /portal/backchannel-logout` (OIDC Back-Channel Logout 1.0 §2.5): identity says an SSO
/// session ended; every portal session of it ends.
async fn backchannel_logout(State(app): State<App>, Form(form): Form<BackChannelLogout>) -> Response {
    match app.rp.logout_token(&form.logout_token).await {
        Ok((sid, _)) => match app.sessions.end_sid(&sid).await {
            Ok(n) => {
                tracing::info!(sessions = n, "back-channel logout");
                (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response()
            }
            Err(e) => {
                tracing::error!(error = %e, "back-channel logout could not end sessions");
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            }
        },
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": "invalid_request", "error_description": e.to_string()})),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sharedcare_kit::nhs::ProofingLevel;

    #[test]
    fn pages_over_https_carry_hsts_and_every_page_the_rest() {
        let policy = csp("https://id.example-ics.nhs.uk/");
        assert!(
            policy.contains("form-action 'self' https://id.example-ics.nhs.uk;"),
            "{policy}"
        );
        assert!(
            !policy.contains("unsafe-inline") && policy.contains("frame-ancestors 'none'"),
            "{policy}"
        );
        let mut h = HeaderMap::new();
        security_headers(&mut h, &policy, true);
        assert_eq!(
            h[header::STRICT_TRANSPORT_SECURITY],
            "max-age=31536000; includeSubDomains"
        );
        assert_eq!(h[header::CACHE_CONTROL], "no-store");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        let mut plain = HeaderMap::new();
        plain.insert(header::CACHE_CONTROL, HeaderValue::from_static("public, max-age=60"));
        security_headers(&mut plain, &policy, false);
        assert!(
            !plain.contains_key(header::STRICT_TRANSPORT_SECURITY),
            "no HSTS over http"
        );
        assert_eq!(
            plain[header::CACHE_CONTROL],
            "public, max-age=60",
            "a file's own caching is kept"
        );
    }

    #[test]
    fn only_a_path_on_this_site_is_returned_to() {
        let home = "/portal/";
        for (asked, got) in [
            ("/portal/patients/x", "/portal/patients/x"),
            ("//evil.example/x", home),
            ("https://evil.example/", home),
            ("/\\evil.example", home),
        ] {
            assert_eq!(local_path(Some(&asked.to_string()), home), got, "{asked}");
        }
        assert_eq!(local_path(None, home), home);
    }

    #[test]
    fn the_nhs_app_is_known_by_its_user_agent() {
        let ua = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::USER_AGENT, HeaderValue::from_static(v));
            in_nhs_app(&h)
        };
        assert!(ua(
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) nhsapp-ios/3.12.0"
        ));
        assert!(ua(
            "Mozilla/5.0 (Linux; Android 14) Chrome/131.0 Mobile nhsapp-android/3.12.0"
        ));
        assert!(!ua("Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0"));
    }

    #[test]
    fn tokens_name_a_patient_or_the_staff_role_selected() {
        let id = serde_json::json!({"name": "Amara Okafor"});
        let staff = sharedcare_kit::auth::principal_from_claims(&serde_json::json!({
            "nhsid_useruid": "u1", "selected_roleid": "r2", "acr": "AAL2", "nhsid_nrbac_roles": [
            {"person_roleid": "r1", "org_code": "RX1", "role_code": "R1", "role_name": "Nurse", "activity_codes": []},
            {"person_roleid": "r2", "org_code": "A81001", "role_code": "R0", "role_name": "GP", "activity_codes": ["B0264"]}]}))
        .expect("a staff token");
        assert_eq!(
            who(&id, staff).expect("staff"),
            Who::Staff {
                name: "Amara Okafor".into(),
                role_name: "GP".into(),
                org: "A81001".into(),
                activities: vec!["B0264".into()],
            }
        );
        let patient = sharedcare_kit::auth::principal_from_claims(
            &serde_json::json!({"nhs_number": "9434765919", "identity_proofing_level": "P5"}),
        )
        .expect("a patient token");
        assert!(matches!(who(&id, patient), Ok(Who::Patient { proofing, .. }) if proofing == ProofingLevel::P5));
        let service = Principal::Service {
            client_id: "c".into(),
            scopes: Vec::new(),
        };
        assert!(who(&id, service).is_err(), "a service token signs no one in");
    }
}
