//! A second, small ICS app — a care home's shift handover page — run by
//! `sharedcare sample-app`. It is its own OIDC client of identity, in its own process, so it
//! shows what single sign-on means: someone already signed in to the portal opens it without
//! being asked to sign in again, and logging out of either ends both (back-channel logout).
//! Its sessions live in memory: it is a sample, one process.

use sharedcare_kit::edge::Refuse;
use sharedcare_kit::json::Fields;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use maud::html;

use crate::error::PortalError;
use crate::forms::{BackChannelLogout, Callback, Confirm};
use crate::oidc::{Pending, Rp};
use crate::page::{self, Area, Chrome};
use crate::web::{html, see_other};

/// The cookie (cookies are per host, not per port: a name of its own beside the portal's).
const COOKIE: &str = "__Host-sc-handover";

/// How the sample app runs.
#[derive(Clone, Debug)]
pub struct HandoverConfig {
    /// Where it listens.
    pub listen: SocketAddr,
    /// Its address as browsers reach it (redirect and logout URIs are under it).
    pub public_url: String,
    /// Identity's issuer URL.
    pub issuer: String,
    /// Its client at identity.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
}

#[derive(Clone)]
struct Signed {
    sid: String,
    name: String,
    role: String,
    org: String,
    id_token: String,
    csrf: String,
}

struct Inner {
    rp: Rp,
    public_url: String,
    pending: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<String, Signed>>,
}

type App = Arc<Inner>;

fn signed(app: &App, headers: &HeaderMap) -> Option<(String, Signed)> {
    let token = crate::web::cookie(headers, COOKIE)?.to_string();
    let s = app.sessions.lock().ok()?.get(&token).cloned()?;
    Some((token, s))
}

fn chrome(s: Option<&Signed>) -> Chrome<'_> {
    Chrome {
        nhs_app: false,
        area: Area::Handover,
        signed_in: s.map(|s| (s.name.as_str(), s.csrf.as_str())),
    }
}

async fn home(State(app): State<App>, headers: HeaderMap) -> Response {
    match signed(&app, &headers) {
        Some((_, s)) => html(page::page(
            &chrome(Some(&s)),
            "Shift handover",
            html! {
                span class="nhsuk-caption-l" { (s.role) " at " (s.org) }
                h1 id="handover-title" { "Shift handover" }
                p id="signed-in" { "Signed in as " strong { (s.name) } " through your care record login. You were not asked for a password here if you had already signed in to another ICS app." }
                div class="nhsuk-inset-text" { p { "This is a sample ICS app: it shows single sign-on and single sign-out across the integrated care system's apps." } }
            },
        )),
        None => html(page::page(
            &chrome(None),
            "Sign in",
            html! {
                h1 { "Care home shift handover" }
                p id="signed-out" { "You are not signed in." }
                a class="nhsuk-button" href="/login" id="sign-in" draggable="false" role="button" { "Sign in with your care record login" }
            },
        )),
    }
}

/// The cookie binding the sample app's sign-in to the browser that started it.
const SIGNIN_COOKIE: &str = "__Host-sc-handover-signin";

async fn login(State(app): State<App>, headers: HeaderMap) -> Response {
    let (binding, fresh) = crate::oidc::browser_binding(crate::web::cookie(&headers, SIGNIN_COOKIE));
    let scope = "openid profile nationalrbacaccess selectedrole";
    let acr = [("acr_values", crate::web::STAFF_ACR_VALUES)];
    let (url, state, pending) = match app.rp.start(scope, "/", &acr, &binding) {
        Ok(started) => started,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    if let Ok(mut p) = app.pending.lock() {
        p.insert(state, pending);
    }
    let mut r = see_other(&url);
    if fresh {
        crate::web::bind_browser(&mut r, SIGNIN_COOKIE, &binding);
    }
    r
}

async fn callback(
    State(app): State<App>,
    headers: HeaderMap,
    Query(q): Query<Callback>,
) -> Result<Response, PortalError> {
    let pending = app.pending.lock().ok().and_then(|mut p| p.remove(&q.state));
    let Some(pending) = pending else {
        return Err(PortalError::invalid(
            "state",
            "this sign-in has expired or was already used",
        ));
    };
    if !pending.same_browser(crate::web::cookie(&headers, SIGNIN_COOKIE)) {
        return Err(PortalError::invalid(
            "state",
            "this sign-in was not started in this browser: start again",
        ));
    }
    if let Some(e) = q.error {
        return Err(PortalError::Rp(crate::oidc::RpError::Refused(e)));
    }
    let t = app.rp.exchange(&q.code, &pending).await?;
    let (role, org) = match app.rp.principal(&t.access_token).await? {
        sharedcare_kit::auth::Principal::Staff { role, .. } => (role.role_name, role.org_code),
        _ => return Err(PortalError::forbidden("the handover page is for care staff")),
    };
    let s = Signed {
        sid: t.claims.at("sid").as_str().unwrap_or_default().into(),
        name: t.claims.at("name").as_str().unwrap_or("Signed in").into(),
        role,
        org,
        id_token: t.id_token.clone(),
        csrf: sharedcare_kit::jose::random_token(24),
    };
    let token = sharedcare_kit::jose::random_token(32);
    if let Ok(mut m) = app.sessions.lock() {
        m.insert(token.clone(), s);
    }
    let mut r = see_other(&pending.return_to);
    if let Ok(v) = HeaderValue::from_str(&format!("{COOKIE}={token}; Path=/; Secure; HttpOnly; SameSite=Lax")) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    Ok(r)
}

async fn logout(State(app): State<App>, headers: HeaderMap, Form(form): Form<Confirm>) -> Response {
    let Some((token, s)) = signed(&app, &headers) else {
        return see_other("/");
    };
    if form.csrf.is_empty() || form.csrf != s.csrf {
        return PortalError::Csrf.into_response();
    }
    if let Ok(mut m) = app.sessions.lock() {
        m.remove(&token);
    }
    let (action, fields) = app.rp.logout_form(&s.id_token, &format!("{}/", app.public_url));
    html(page::signing_out(&chrome(None), &action, &fields))
}

async fn backchannel(State(app): State<App>, Form(form): Form<BackChannelLogout>) -> Response {
    match app.rp.logout_token(&form.logout_token).await {
        Ok((sid, _)) => {
            if let Ok(mut m) = app.sessions.lock() {
                m.retain(|_, s| s.sid != sid);
            }
            StatusCode::OK.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn headers_for_pages(mut r: Response) -> Response {
    let h = r.headers_mut();
    for (k, v) in [
        (
            "content-security-policy",
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self' https://assets.nhs.uk; object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
        ),
        ("referrer-policy", "no-referrer"),
        ("x-content-type-options", "nosniff"),
        ("cache-control", "no-store"),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    r
}

/// The sample app's router.
pub fn router(config: &HandoverConfig) -> sharedcare_kit::Result<Router> {
    let public = config.public_url.trim_end_matches('/').to_string();
    let app = Arc::new(Inner {
        rp: Rp::new(
            &config.issuer,
            "",
            "",
            &config.client_id,
            &config.client_secret,
            &format!("{public}/callback"),
        )?,
        public_url: public,
        pending: Mutex::new(HashMap::new()),
        sessions: Mutex::new(HashMap::new()),
    });
    Ok(Router::new()
        .route("/", get(home))
        .route("/login", get(login))
        .route("/callback", get(callback))
        .route("/logout", post(logout))
        .route("/backchannel-logout", post(backchannel))
        .layer(axum::middleware::map_response(headers_for_pages))
        .merge(crate::assets::router())
        .with_state(app))
}

/// Serves the sample app on `listener` until `stop` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: &HandoverConfig,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(config).map_err(std::io::Error::other)?;
    axum::serve(listener, app).with_graceful_shutdown(stop).await
}
