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

pub mod admin;
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
pub mod webauthn;

pub use config::IdentityConfig;
pub use error::IdentityError;

/// The service's name: its schema, its topic (`sharedcare.identity.v1`).
pub const NAME: &str = "identity";

/// The generated gRPC contract.
pub use sharedcare_proto::identity::v1 as api;

use sharedcare_kit::db::Migrations;
use sharedcare_kit::serve::Mount;
use sharedcare_kit::service::{Context, InternalClient, Mode, MountError};

/// The identity service, as the binary mounts it.
pub struct Identity {
    config: IdentityConfig,
}

impl Identity {
    /// The service with its settings (`[identity]`).
    pub fn new(config: IdentityConfig) -> Self {
        Identity { config }
    }
}

/// The issuer identity signs as: `identity.issuer`, else the HTTP base URL it serves on.
pub fn issuer(config: &IdentityConfig, http: std::net::SocketAddr) -> String {
    if config.issuer.is_empty() {
        default_issuer(http)
    } else {
        config.issuer.trim_end_matches('/').to_string()
    }
}

/// The HTTP base URL for a listen address (`localhost` for an unspecified one).
pub fn default_issuer(http: std::net::SocketAddr) -> String {
    if http.ip().is_unspecified() {
        format!("http://localhost:{}", http.port())
    } else {
        format!("http://{http}")
    }
}

/// Whether identity seeds the demo ICS: `identity.seed_demo`, else only under `up`.
pub fn seeds_demo(config: &IdentityConfig, mode: Mode) -> bool {
    config.seed_demo.unwrap_or(mode == Mode::Up)
}

#[async_trait::async_trait]
impl sharedcare_kit::service::Service for Identity {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "the OpenID Connect provider: login pages, tokens, admin API"
    }

    fn migrations(&self) -> Migrations {
        Migrations::Portable(sqlx::migrate!("./migrations"))
    }

    /// Loads (or makes) signing keys, seeds the demo ICS into an empty database when asked,
    /// registers the process's internal client, and returns the HTTP routes, the admin gRPC
    /// API and the maintenance task.
    async fn mount(&self, ctx: &Context) -> Result<Mount, MountError> {
        let config = self.config.clone();
        let issuer = issuer(&config, ctx.http_addr);
        let store = store::Store::new(ctx.db.clone(), ctx.sealer.clone());
        let resealed = store.reseal_keys().await?;
        if resealed > 0 {
            tracing::info!(
                keys = resealed,
                kek = %ctx.sealer.current(),
                "sealed stored private keys under the current key-encryption key"
            );
        }
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
        if ctx.seed_demo && demo::seed(&store, &issuer, &hasher).await? {
            tracing::info!("seeded the demo ICS into identity (see `sharedcare demo`)");
        }
        if let Some(c) = &ctx.internal_client {
            register_internal(&store, c).await?;
        }
        let subject_key = subject_key(&store).await?;
        let provider = oauth::Provider::new(store, keys, config, issuer, ctx.outbox.clone(), hasher)?
            .with_metrics(ctx.metrics.clone())
            .with_subject_key(subject_key.as_bytes());
        let mut m = Mount::new(NAME);
        m.http = http::router(provider.clone());
        m.add_grpc(api::identity_admin_server::IdentityAdminServer::new(
            grpc::AdminApi::new(provider.clone()),
        ));
        m.background
            .push(Box::new(move |stop| Box::pin(maintain(provider, stop))));
        Ok(m)
    }
}

/// Registers (or replaces, with this start's secret) the client the other services of this
/// process use for their own calls.
async fn register_internal(store: &store::Store, c: &InternalClient) -> Result<(), IdentityError> {
    store
        .replace_client(&model::Client {
            id: c.id.clone(),
            name: "Sharedcare services (internal)".into(),
            secret_hash: sharedcare_kit::jose::sha256_b64(&c.secret),
            settings: model::ClientSettings {
                redirect_uris: Vec::new(),
                post_logout_redirect_uris: Vec::new(),
                backchannel_logout_uri: String::new(),
                grant_types: vec!["client_credentials".into()],
                scopes: c.scopes.clone(),
                auth_method: model::AuthMethod::ClientSecretBasic,
                jwks: None,
                jwks_uri: String::new(),
                id_token_alg: String::new(),
                organisation: String::new(),
            },
        })
        .await
}

/// Where the key of patients' pairwise `sub` is kept (beside the broker's relying-party keys).
const SUBJECT_KEY: &str = "~pairwise-subject";

/// The key patients' pairwise `sub` is made with: made once (random) and kept, so every
/// replica, and every restart, gives a patient the same `sub` for a client. Of two replicas
/// making it at once, the first one stored wins and both read it back.
async fn subject_key(store: &store::Store) -> Result<String, MountError> {
    if let Some(k) = store.rp_key(SUBJECT_KEY).await? {
        return Ok(k);
    }
    store
        .put_rp_key(SUBJECT_KEY, &sharedcare_kit::jose::random_token(32))
        .await?;
    store.rp_key(SUBJECT_KEY).await?.ok_or_else(|| {
        MountError::from(error::IdentityError::Internal(
            "the pairwise subject key was not kept".into(),
        ))
    })
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
        let now = model::now();
        if let Err(e) = provider.keys.maintain(now).await {
            tracing::warn!(error = %e, "signing key maintenance failed");
        }
        if let Err(e) = provider.store.purge(now).await {
            tracing::warn!(error = %e, "purging expired identity rows failed");
        }
    }
}
