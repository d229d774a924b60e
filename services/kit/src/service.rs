//! What a service is to the process that runs it. Each service crate implements [`Service`];
//! the binary keeps one registry of them and mounts the ones a command asks for (`up`: all,
//! `serve <name>`: one) through [`mount`], which also gives every service its database,
//! outbox and task tracker in the same way.

use std::net::SocketAddr;

use crate::auth::{AuthConfig, ServiceToken, Verifier};
use crate::db::{Db, Migrations};
use crate::outbox::Outbox;
use crate::serve::Mount;
use crate::tasks::Tasks;
use crate::{Error, Result};

/// How the process was started; services that behave differently in the two say so by
/// matching on it, never by counting the services mounted beside them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `sharedcare up`: every service in one process (the demo ICS is seeded by default).
    Up,
    /// `sharedcare serve <service>`: one service per process.
    Serve,
}

/// Why a service could not be mounted (bad settings, an unreachable dependency, storage).
pub type MountError = Box<dyn std::error::Error + Send + Sync>;

/// One service of the platform: what the binary needs to migrate and mount it.
#[async_trait::async_trait]
pub trait Service: Send + Sync {
    /// Its name: the `serve` argument, its schema or SQLite file, its topic
    /// (`sharedcare.<name>.v1`) and its consumer group.
    fn name(&self) -> &'static str;
    /// One line for `--help`: what it does.
    fn about(&self) -> &'static str;
    /// Its schema.
    fn migrations(&self) -> Migrations;
    /// The topics it publishes to (created on Kafka at start): its own by default.
    fn topics(&self) -> Vec<String> {
        vec![crate::bus::topic(self.name())]
    }
    /// Builds the service on `ctx` (its migrated database, its outbox, …): its gRPC services,
    /// HTTP routes, consumers and background tasks. The database and outbox are added to the
    /// mount by [`mount`]; the service need not.
    async fn mount(&self, ctx: &Context) -> Result<Mount, MountError>;
}

/// The client-credentials client the services of an `up` process use for their own calls,
/// registered by identity with a secret made for this start.
#[derive(Clone, Debug)]
pub struct InternalClient {
    /// client_id.
    pub id: String,
    /// Its secret (random per start).
    pub secret: String,
    /// Scopes it may ask for.
    pub scopes: Vec<String>,
}

/// What a service is given to mount on.
pub struct Context {
    /// The service's own database, migrated.
    pub db: Db,
    /// The service's outbox in that database (relayed by the process).
    pub outbox: Outbox,
    /// `up` or `serve`.
    pub mode: Mode,
    /// Every task the service spawns goes here, so shutdown stops and waits for it.
    pub tasks: Tasks,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Names of the services mounted in this process.
    pub mounted: Vec<&'static str>,
    /// The issuer whose tokens the services trust (`auth.issuer`, or identity in this process).
    pub issuer: Option<String>,
    /// How tokens are checked and this process's own client.
    pub auth: AuthConfig,
    /// The client identity registers for the other services of this process (`up`).
    pub internal_client: Option<InternalClient>,
    /// Whether to seed the demo ICS into empty databases.
    pub seed_demo: bool,
    /// The process's metrics (for counters a service keeps, e.g. unreported failures).
    pub metrics: crate::metrics::Metrics,
    /// Seals the private keys a service stores (identity's signing keys, audit's log key).
    pub sealer: crate::sealing::Sealer,
}

impl Context {
    /// Whether `service` runs in this process.
    pub fn runs(&self, service: &str) -> bool {
        self.mounted.contains(&service)
    }

    /// The trusted issuer, or an error saying how to configure it.
    pub fn issuer(&self) -> Result<&str> {
        self.issuer.as_deref().ok_or_else(|| {
            Error::Config(
                "`auth.issuer` is required when identity runs in another process: set SHAREDCARE_AUTH__ISSUER to the identity service's URL, e.g. http://identity:8080".into(),
            )
        })
    }

    /// A verifier of the bearer tokens callers present.
    pub fn verifier(&self) -> Result<Verifier> {
        self.auth.verifier(self.issuer()?)
    }

    /// A client-credentials token source for calls this service makes with `scope`, or an
    /// error naming the settings when no client is configured.
    pub fn service_token(&self, scope: &str) -> Result<ServiceToken> {
        let issuer = self.issuer()?;
        self.auth.service_token(issuer, scope)?.ok_or_else(|| {
            Error::Config(format!(
                "`auth.client_id` and `auth.client_secret` are required by {} for its calls with scope {scope}: register a client with the client_credentials grant and that scope, then set SHAREDCARE_AUTH__CLIENT_ID and SHAREDCARE_AUTH__CLIENT_SECRET",
                self.db.service()
            ))
        })
    }

    /// A client-credentials token source for another client than this process's own (a
    /// feeding system the service writes for), asking for `scope`.
    pub fn client_token(&self, client_id: &str, secret: &str, scope: &str) -> Result<ServiceToken> {
        let endpoint = self.auth.token_endpoint(self.issuer()?);
        ServiceToken::new(endpoint, client_id, secret, scope)
    }

    /// How this service asks consent: `consent_url` (the `setting` it came from), else the
    /// consent service mounted in the same process, with this process's client-credentials
    /// token; each decision bounded by `timeout`.
    pub fn consent(
        &self,
        consent_url: &str,
        setting: &str,
        timeout: std::time::Duration,
    ) -> Result<std::sync::Arc<dyn crate::pdp::Pdp>> {
        let url = self.peer_url("consent", consent_url, setting)?;
        let token = self.service_token("consent.decide")?;
        let failures = self.metrics.consent_failures(self.db.service());
        Ok(std::sync::Arc::new(
            crate::pdp::GrpcPdp::new(&url, setting, token, timeout)?.counting(failures),
        ))
    }

    /// Where `service` is: `url` (from the setting `setting`) when given, else this process
    /// when `service` is mounted here; otherwise an error naming the setting.
    pub fn peer_url(&self, service: &str, url: &str, setting: &str) -> Result<String> {
        if !url.is_empty() {
            return Ok(url.to_string());
        }
        if self.runs(service) {
            return Ok(self.local_grpc_url());
        }
        let env = format!("SHAREDCARE_{}", setting.to_ascii_uppercase().replace('.', "__"));
        Err(Error::Config(format!(
            "`{setting}` is required when {service} runs in another process: set {env} to its gRPC URL, e.g. http://{service}:50051"
        )))
    }

    /// This process's own gRPC URL (for a service calling another mounted beside it).
    pub fn local_grpc_url(&self) -> String {
        let mut addr = self.grpc_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
        }
        format!("http://{addr}")
    }
}

/// Mounts `service` on `ctx`, adding its database and outbox to what it returns.
pub async fn mount(service: &dyn Service, ctx: &Context) -> Result<Mount, MountError> {
    let mut m = service.mount(ctx).await?;
    m.db = Some(ctx.db.clone());
    m.outbox = Some(ctx.outbox.clone());
    Ok(m)
}
