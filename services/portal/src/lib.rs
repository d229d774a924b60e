//! The web: the clinician portal (`/portal`), the patient's passport pages (`/passport`, also
//! inside the NHS App) and a start page (`/`), rendered on the server with NHS.UK frontend and
//! working without JavaScript. The portal is an OIDC client of identity like any other app;
//! every read and change is made with the signed-in person's own token, so the services decide
//! (consent) and audit it as that person.
//!
//! - this root: the app state assembled and every route (the router, security headers);
//! - [`web`]: the session cookie, sign-in and sign-out;
//! - [`staff`] and [`patient`]: the pages; [`page`]: the frame and components (maud);
//! - [`oidc`]: the relying party; [`session`]: sessions in the portal's own tables;
//! - [`peers`]: the services it calls; [`proof`]: access-log proofs checked against audit's key;
//! - [`assets`]: the vendored NHS.UK frontend; [`handover`]: the sample ICS app.
#![forbid(unsafe_code)]

pub mod assets;
pub mod error;
pub mod forms;
pub mod handover;
pub mod oidc;
pub mod page;
pub mod patient;
pub mod peers;
pub mod proof;
pub mod session;
pub mod staff;
pub mod web;

pub use error::PortalError;

use sharedcare_kit::config::Invalid;
use sharedcare_kit::edge::Refusal;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::Response;
use axum::routing::get;
use http::HeaderMap;
use sharedcare_kit::serve::Mount;

use crate::web::{App, html, in_nhs_app, security_headers};
use sharedcare_kit::db::Migrations;
use sharedcare_kit::service::{Context, MountError};

/// The service's name: its schema and its `serve` argument.
pub const NAME: &str = "portal";

/// The portal's settings (`[portal]`, `SHAREDCARE_PORTAL__*`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PortalConfig {
    /// The site's address as browsers reach it, e.g. `https://care.example-ics.nhs.uk`.
    /// Empty = the issuer (`up`: the same HTTP port as identity).
    pub public_url: String,
    /// The portal's OIDC client at identity.
    pub client_id: String,
    /// Its secret (`client_secret_basic`). Empty in `up` with the demo = the demo's.
    pub client_secret: String,
    /// The passport's gRPC endpoint. Empty = the passport in this process.
    pub passport_url: String,
    /// Consent's gRPC endpoint. Empty = consent in this process.
    pub consent_url: String,
    /// Records' gRPC endpoint. Empty = records in this process.
    pub records_url: String,
    /// Audit's gRPC endpoint (its public key). Empty = audit in this process.
    pub audit_url: String,
    /// Identity's gRPC endpoint (its organisation directory, for organisations' names).
    /// Empty = identity in this process.
    pub identity_url: String,
    /// How long a call to a service may take before the page says it is unavailable.
    pub timeout_ms: u64,
}

impl Default for PortalConfig {
    fn default() -> Self {
        PortalConfig {
            public_url: String::new(),
            client_id: "sharedcare-portal".into(),
            client_secret: String::new(),
            passport_url: String::new(),
            consent_url: String::new(),
            records_url: String::new(),
            audit_url: String::new(),
            identity_url: String::new(),
            timeout_ms: 5_000,
        }
    }
}

impl PortalConfig {
    /// Checks the values, naming the key of the first bad one.
    pub fn validate(&self) -> Result<(), Invalid> {
        if !self.public_url.is_empty() && url::Url::parse(&self.public_url).is_err() {
            return Err(Invalid::new(
                "portal.public_url",
                "expected the site's absolute URL, e.g. https://care.example-ics.nhs.uk",
            ));
        }
        if self.client_id.is_empty() {
            return Err(Invalid::new("portal.client_id", "is required"));
        }
        for (key, url) in [
            ("portal.passport_url", &self.passport_url),
            ("portal.consent_url", &self.consent_url),
            ("portal.records_url", &self.records_url),
            ("portal.audit_url", &self.audit_url),
            ("portal.identity_url", &self.identity_url),
        ] {
            if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
                return Err(Invalid::new(key, "expected a gRPC URL, e.g. http://passport:50051"));
            }
        }
        if self.timeout_ms == 0 {
            return Err(Invalid::new("portal.timeout_ms", "must be at least 1"));
        }
        Ok(())
    }
}

/// The portal, as the binary mounts it.
pub struct Portal {
    config: PortalConfig,
    /// The demo's client (id, secret), used in `up` when no secret is configured.
    demo_client: (&'static str, &'static str),
}

impl Portal {
    /// The portal with its settings and the demo ICS's portal client.
    pub fn new(config: PortalConfig, demo_client: (&'static str, &'static str)) -> Self {
        Portal { config, demo_client }
    }
}

#[async_trait::async_trait]
impl sharedcare_kit::service::Service for Portal {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "the web: clinician portal, the patient's passport pages (NHS App ready) and the start page"
    }

    fn migrations(&self) -> Migrations {
        Migrations::Portable(sqlx::migrate!("./migrations"))
    }

    fn topics(&self) -> Vec<String> {
        Vec::new()
    }

    async fn mount(&self, ctx: &Context) -> Result<Mount, MountError> {
        let c = &self.config;
        let issuer = ctx.issuer()?.trim_end_matches('/').to_string();
        let public = if c.public_url.is_empty() {
            issuer.clone()
        } else {
            c.public_url.trim_end_matches('/').to_string()
        };
        let secret = if c.client_secret.is_empty() && ctx.seed_demo && c.client_id == self.demo_client.0 {
            self.demo_client.1.to_string()
        } else {
            c.client_secret.clone()
        };
        if secret.is_empty() {
            return Err(sharedcare_kit::Error::Config(
                "`portal.client_secret` is required: register the portal as a client of identity (redirect URI <public_url>/portal/callback, back-channel logout URI <public_url>/portal/backchannel-logout) and set SHAREDCARE_PORTAL__CLIENT_SECRET".into(),
            )
            .into());
        }
        let rp = oidc::Rp::new(
            &issuer,
            &ctx.auth.token_endpoint,
            &ctx.auth.jwks_uri,
            &c.client_id,
            &secret,
            &format!("{public}/portal/callback"),
        )?;
        let peer = |service: &str, url: &str, setting: &str| ctx.peer_url(service, url, setting);
        let (passport, consent, records, audit, identity) = (
            peer("passport", &c.passport_url, "portal.passport_url")?,
            peer("consent", &c.consent_url, "portal.consent_url")?,
            peer("records", &c.records_url, "portal.records_url")?,
            peer("audit", &c.audit_url, "portal.audit_url")?,
            peer("identity", &c.identity_url, "portal.identity_url")?,
        );
        let peers = peers::Peers::new(
            peers::Endpoints {
                passport: (&passport, "portal.passport_url"),
                consent: (&consent, "portal.consent_url"),
                records: (&records, "portal.records_url"),
                audit: (&audit, "portal.audit_url"),
                identity: (&identity, "portal.identity_url"),
            },
            Duration::from_millis(c.timeout_ms),
            ctx.service_token("audit.read")?,
        )?;
        let sessions = session::Sessions::new(ctx.db.clone());
        let sweeper = sessions.clone();
        let app = Arc::new(web::Web {
            rp,
            sessions,
            peers,
            https: public.starts_with("https://"),
            csp: web::csp(&issuer),
            refreshing: tokio::sync::Mutex::new(()),
            public_url: public,
        });
        let mut m = Mount::new(NAME);
        m.http = router(app);
        m.background.push(Box::new(move |stop| {
            Box::pin(sweeper.sweep_every(Duration::from_secs(300), stop))
        }));
        Ok(m)
    }
}

/// Adds the security headers to every page of the site.
async fn secure_headers(State(app): State<App>, mut r: Response) -> Response {
    security_headers(r.headers_mut(), &app.csp, app.https);
    r
}

/// Every route of the site.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/", get(start))
        .merge(web::routes())
        .merge(crate::staff::routes())
        .merge(crate::patient::routes())
        .merge(crate::assets::router())
        // Anything else under the site's areas: a page that says so, in the site's own words.
        .route("/portal/{*rest}", get(not_found))
        .route("/passport/{*rest}", get(not_found))
        .layer(axum::middleware::map_response_with_state(app.clone(), secure_headers))
        .with_state(app)
}

async fn not_found() -> PortalError {
    PortalError::from(Refusal::NotFound(
        "There is no page at this address. If you typed it, check it; if you followed a link, it may be out of date."
            .into(),
    ))
}

async fn start(headers: HeaderMap) -> Response {
    html(page::start(in_nhs_app(&headers)))
}
