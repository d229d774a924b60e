//! The identity service: an OpenID Connect provider for every ICS app.
//!
//! - [`model`]: organisations, staff with CIS2-style role profiles, NHS login-style patients,
//!   clients and grants (the domain core, no I/O).
//! - [`oauth`]: the protocol — client authentication, grants, tokens, introspection,
//!   revocation, logout (apart from HTTP).
//! - [`http`]: discovery, JWKS, the OAuth endpoints and the server-rendered login pages.
//! - [`store`]: identity's own tables; [`keys`]: the rotating ES256 signing keys.
//! - [`demo`]: the demo ICS `sharedcare up` seeds on first start.
#![forbid(unsafe_code)]

pub mod broker;
pub mod config;
pub mod demo;
pub mod error;
pub mod grpc;
pub mod http;
pub mod keys;
pub mod model;
pub mod oauth;
pub mod pages;
pub mod secrets;
pub mod store;

pub use config::IdentityConfig;
pub use error::IdentityError;

/// The service's name: its schema, its topic (`sharedcare.identity.v1`).
pub const NAME: &str = "identity";

/// The generated gRPC contract.
pub use sharedcare_proto::identity::v1 as api;

use sharedcare_kit::db::Db;
use sharedcare_kit::outbox::{Outbox, OutboxConfig};
use sharedcare_kit::serve::Mount;

/// Applies identity's schema to `db`.
pub async fn migrate(db: &Db) -> sharedcare_kit::Result<()> {
    // The same portable SQL serves both back ends (one directory, no copies to drift apart).
    db.migrate(sqlx::migrate!("./migrations"), sqlx::migrate!("./migrations"))
        .await
}

/// Builds the service: loads (or makes) signing keys, seeds the demo ICS into an empty
/// database when configured, and returns the HTTP routes, the admin gRPC API and the outbox.
/// `issuer` is used when the configuration names none; `seed_by_default` applies when
/// `identity.seed_demo` is unset. `internal` is the client the other services in this process
/// use for their own calls (registered afresh, with its new secret, at every start).
pub async fn mount(
    db: Db,
    outbox: OutboxConfig,
    config: IdentityConfig,
    issuer: String,
    seed_by_default: bool,
    internal: Option<InternalClient>,
) -> Result<Mount, IdentityError> {
    let issuer = if config.issuer.is_empty() {
        issuer
    } else {
        config.issuer.clone()
    };
    let issuer = issuer.trim_end_matches('/').to_string();
    let store = store::Store::new(db.clone());
    let keys = keys::KeyRing::load(
        store.clone(),
        config.key_rotation_hours * 3600,
        config.access_token_secs.max(120),
        config.key_prepublish_secs,
    )
    .await?;
    let hasher = std::sync::Arc::new(secrets::Hasher::new(secrets::PasswordCost {
        memory_kib: config.argon2_memory_kib,
        iterations: config.argon2_iterations,
    }));
    if config.seed_demo.unwrap_or(seed_by_default) && demo::seed(&store, &issuer, &hasher).await? {
        tracing::info!("seeded the demo ICS into identity (see `sharedcare demo`)");
    }
    if let Some(c) = internal {
        store
            .replace_client(&model::Client {
                id: c.id,
                name: "Sharedcare services (internal)".into(),
                secret_hash: sharedcare_kit::jose::sha256_b64(&c.secret),
                settings: model::ClientSettings {
                    redirect_uris: Vec::new(),
                    post_logout_redirect_uris: Vec::new(),
                    backchannel_logout_uri: String::new(),
                    grant_types: vec!["client_credentials".into()],
                    scopes: c.scopes,
                    auth_method: model::AuthMethod::ClientSecretBasic,
                    jwks: None,
                    jwks_uri: String::new(),
                    id_token_alg: String::new(),
                },
            })
            .await?;
    }
    let outbox = Outbox::new(db.clone(), outbox);
    let provider = oauth::Provider::new(store, keys, config, issuer, outbox.clone(), hasher);
    let mut m = Mount::new(NAME);
    m.http = http::router(provider.clone());
    m.add_grpc(api::identity_admin_server::IdentityAdminServer::new(
        grpc::AdminApi::new(provider.clone()),
    ));
    m.outbox = Some(outbox);
    m.db = Some(db);
    m.background
        .push(Box::new(move |stop| Box::pin(maintain(provider, stop))));
    Ok(m)
}

/// A client-credentials client for services running in the same process as identity.
#[derive(Clone, Debug)]
pub struct InternalClient {
    /// client_id.
    pub id: String,
    /// Its secret (random per start).
    pub secret: String,
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
}

/// Rotates keys when due and purges expired codes and tokens, every minute until stopped.
async fn maintain(provider: oauth::Provider, stop: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = oauth::now();
        if let Err(e) = provider.keys.maintain(now).await {
            tracing::warn!(error = %e, "signing key maintenance failed");
        }
        if let Err(e) = provider.store.purge(now).await {
            tracing::warn!(error = %e, "purging expired identity rows failed");
        }
    }
}
