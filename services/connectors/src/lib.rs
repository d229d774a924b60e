//! The connectors service: data in from the systems an ICS already runs.
//!
//! - [`mllp`]: the HL7 v2 listener (MLLP framing, one message at a time per connection).
//! - [`intake`]: one message in, one ACK out — envelope checks, resends answered from the
//!   record, mapping, the write to records, the ACK only once the data is safe.
//! - [`hl7`], [`ack`]: reading messages and writing ACKs with ERR segments that say where.
//! - [`adt`]: ADT events as FHIR Patient and Encounter (UK Core shape).
//! - [`oru`]: ORU^R01 results as laboratory Observations.
//! - [`records`]: the write, as the sender's own client and organisation.
//! - [`store`]: the messages received and the ACKs sent, kept for the retention period.
#![forbid(unsafe_code)]

pub mod ack;
pub mod adt;
pub mod config;
pub mod gpconnect;
pub mod hl7;
pub mod intake;
pub mod mllp;
pub mod oru;
pub mod records;
pub mod store;
pub mod tls;

use std::collections::HashMap;
use std::time::Duration;

pub use config::{ConnectorsConfig, SenderConfig};

use sharedcare_kit::db::Migrations;
use sharedcare_kit::serve::Mount;
use sharedcare_kit::service::{Context, MountError};

/// The service's name: its schema and its `serve` argument.
pub const NAME: &str = "connectors";

/// The connectors service, as the binary mounts it.
pub struct Connectors {
    config: ConnectorsConfig,
    demo: Vec<SenderConfig>,
}

impl Connectors {
    /// The service with `config`; `demo` are senders added when the process seeds the demo
    /// ICS (the demo acute trust's PAS), unless one is configured for the same facility.
    pub fn new(config: ConnectorsConfig, demo: Vec<SenderConfig>) -> Self {
        Connectors { config, demo }
    }
}

#[async_trait::async_trait]
impl sharedcare_kit::service::Service for Connectors {
    fn name(&self) -> &'static str {
        NAME
    }

    fn about(&self) -> &'static str {
        "data in: HL7 v2 ADT and results over MLLP from hospital systems, written to the shared care record"
    }

    fn migrations(&self) -> Migrations {
        Migrations::Portable(sqlx::migrate!("./migrations"))
    }

    fn topics(&self) -> Vec<String> {
        Vec::new()
    }

    /// The MLLP listener (when `connectors.mllp_listen` is set) and the task that forgets
    /// messages past their retention.
    async fn mount(&self, ctx: &Context) -> Result<Mount, MountError> {
        let mut config = self.config.clone();
        if ctx.seed_demo {
            for d in &self.demo {
                if config.sender(&d.application, &d.facility).is_none() {
                    config.senders.push(d.clone());
                }
            }
        }
        let url = ctx.peer_url("records", &config.records_url, "connectors.records_url")?;
        let timeout = Duration::from_millis(config.write_timeout_ms);
        let channel = sharedcare_kit::peer::channel(&url, "connectors.records_url", timeout)?;
        let mut tokens = HashMap::new();
        for s in &config.senders {
            tokens.insert(s.client_id.clone(), {
                let secret = s.secret().map_err(|e| format!("{}: {}", e.key, e.reason))?;
                ctx.client_token(&s.client_id, &secret, "records.write")?
            });
        }
        let mut m = Mount::new(NAME);
        let gp = &config.gp_connect;
        if !gp.endpoint.is_empty() {
            let secret = gp.secret().map_err(|e| format!("{}: {}", e.key, e.reason))?;
            let token = ctx.client_token(&gp.client_id, &secret, "records.write")?;
            let practice =
                records::Writer::new(channel.clone(), HashMap::from([(gp.client_id.clone(), token)]), timeout);
            let pdp = ctx.consent(&config.consent_url, "connectors.consent_url", timeout)?;
            let fetcher = gpconnect::fetch::GpConnect::new(gp.clone(), pdp, practice, ctx.verifier()?)?;
            tracing::info!(endpoint = %gp.endpoint, practice = %gp.ods_code, "GP Connect Access Record: Structured");
            m.http = fetcher.router();
        }
        let writer = records::Writer::new(channel, tokens, timeout);
        let store = store::Store::new(ctx.db.clone());
        let listen = config.mllp_listen.clone();
        let tls = if config.mllp_tls_cert.is_empty() {
            None
        } else {
            Some(tls::acceptor(&config.mllp_tls_cert, &config.mllp_tls_key)?)
        };
        let intake = intake::Intake::new(config, store, writer);
        if !listen.is_empty() {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| format!("connectors.mllp_listen: cannot listen on {listen}: {e}"))?;
            let addr = listener.local_addr()?;
            let kind = if tls.is_some() { "mllps" } else { "mllp" };
            tracing::info!(%addr, "HL7 v2 over MLLP{} on {addr}", if tls.is_some() { " with TLS" } else { "" });
            m.listeners.push((kind, addr));
            ctx.tasks
                .spawn(mllp::serve(listener, intake.clone(), tls, ctx.tasks.clone()));
        }
        ctx.tasks.spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                every.tick().await;
                match intake.forget_old().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(forgotten = n, "HL7 v2 messages past their retention forgotten"),
                    Err(e) => tracing::warn!(error = %e, "could not forget HL7 v2 messages past their retention"),
                }
            }
        });
        Ok(m)
    }
}
