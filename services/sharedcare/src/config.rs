//! The binary's configuration: one typed struct, loaded in layers by the kit.

use sharedcare_kit::config::Invalid;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sharedcare_identity::IdentityConfig;
use sharedcare_kit::auth::AuthConfig;
use sharedcare_kit::bus::kafka::KafkaConfig;
use sharedcare_kit::config::Validate;
use sharedcare_kit::outbox::OutboxConfig;
use sharedcare_kit::telemetry::TelemetryConfig;
use sharedcare_records::RecordsConfig;

/// Everything `sharedcare` can be told. Defaults run `up` with no configuration at all.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Data directory for embedded SQLite databases and the embedded event log.
    pub data_dir: PathBuf,
    /// HTTP server.
    pub http: Listener,
    /// gRPC server.
    pub grpc: Listener,
    /// `/healthz`, `/readyz` and `/metrics` on a port of their own (not served on `http`).
    pub health: HealthListener,
    /// Database for every service (each in its own schema). Empty = SQLite under `data_dir`.
    pub database: DatabaseConfig,
    /// Kafka. Empty `brokers` = the embedded event log.
    pub kafka: KafkaConfig,
    /// The embedded event log.
    pub events: EventsConfig,
    /// Outbox relay.
    pub outbox: OutboxConfig,
    /// Logs and traces.
    pub telemetry: TelemetryConfig,
    /// The identity provider (OIDC issuer, sessions, tokens, keys, lockout, demo seed).
    pub identity: IdentityConfig,
    /// How services check bearer tokens (issuer, JWKS, audience) and their own client.
    pub auth: AuthConfig,
    /// The consent service (where identity's organisation directory is).
    pub consent: sharedcare_consent::ConsentConfig,
    /// The records service (where consent is).
    pub records: RecordsConfig,
    /// The audit service (alert rules).
    pub audit: sharedcare_audit::AuditConfig,
    /// The passport service (where consent is).
    pub passport: sharedcare_passport::PassportConfig,
    /// The web: portal, passport pages and start page.
    pub portal: sharedcare_portal::PortalConfig,
    /// The connectors: HL7 v2 over MLLP from hospital systems.
    pub connectors: sharedcare_connectors::ConnectorsConfig,
    /// The Kubernetes operator (`sharedcare operator run`).
    pub operator: sharedcare_operator::OperatorConfig,
    /// The key-encryption key sealing the private keys identity and audit store. Required
    /// on Postgres; on the embedded store `up` keeps one in `data_dir` when none is set.
    pub key_encryption: sharedcare_kit::sealing::KeyEncryptionConfig,
    /// How long shutdown waits for in-flight work, per phase.
    pub shutdown_grace_ms: u64,
    /// Requests (HTTP and gRPC together) a process serves at once; one more is refused at
    /// once with 503 (Retry-After: 1) or RESOURCE_EXHAUSTED naming this setting, instead of
    /// waiting in an unbounded queue. Health probes and scrapes are never refused.
    pub max_in_flight: usize,
    /// The largest HTTP request body a process takes (a FHIR transaction Bundle, a form); a
    /// larger one is refused with 413 naming this setting, before it is read.
    pub max_body_bytes: usize,
    /// The longest a client may keep a process waiting for its next bytes: a request's head,
    /// the next piece of its body, the first bytes of a new connection, the next request on an
    /// idle keep-alive connection, an answer to a gRPC (HTTP/2) ping. Past it the connection
    /// is closed, or a stalled body answered 408 / DEADLINE_EXCEEDED naming this setting.
    pub client_timeout_ms: u64,
}

/// A listen address.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    /// `host:port`; port 0 picks a free port.
    pub listen: SocketAddr,
}

/// An optional listen address.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HealthListener {
    /// `host:port`, or none: then the HTTP server answers `/healthz`, `/readyz` and `/metrics`.
    pub listen: Option<SocketAddr>,
}

/// Embedded event log settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Hours an event stays in the embedded log (consumers must keep up within it).
    pub retention_hours: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig { retention_hours: 168 }
    }
}

/// Database settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db`, or empty for SQLite files under `data_dir`.
    pub url: String,
    /// Pool size per service.
    pub max_connections: u32,
    /// How long to wait for the database at start before giving up.
    pub connect_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: String::new(),
            max_connections: 16,
            connect_timeout_ms: 5_000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from(".sharedcare"),
            http: Listener {
                listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            },
            grpc: Listener {
                listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            },
            health: HealthListener::default(),
            database: DatabaseConfig::default(),
            kafka: KafkaConfig::default(),
            events: EventsConfig::default(),
            outbox: OutboxConfig::default(),
            telemetry: TelemetryConfig::default(),
            identity: IdentityConfig::default(),
            auth: AuthConfig::default(),
            consent: sharedcare_consent::ConsentConfig::default(),
            records: RecordsConfig::default(),
            audit: sharedcare_audit::AuditConfig::default(),
            passport: sharedcare_passport::PassportConfig::default(),
            portal: sharedcare_portal::PortalConfig::default(),
            connectors: sharedcare_connectors::ConnectorsConfig::default(),
            operator: sharedcare_operator::OperatorConfig::default(),
            key_encryption: Default::default(),
            shutdown_grace_ms: 10_000,
            max_in_flight: 96,
            max_body_bytes: 16 << 20,
            client_timeout_ms: 10_000,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        let url = &self.database.url;
        let known = ["postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|p| url.starts_with(p));
        if !url.is_empty() && !known {
            return Err(Invalid::new(
                "database.url",
                "expected postgres://user:password@host:port/database",
            ));
        }
        if self.database.max_connections == 0 {
            return Err(Invalid::new("database.max_connections", "must be at least 1"));
        }
        self.kafka.validate()?;
        self.operator.validate()?;
        if self.events.retention_hours < 1 {
            return Err(Invalid::new("events.retention_hours", "must be at least 1"));
        }
        if self.outbox.batch_size < 1 {
            return Err(Invalid::new("outbox.batch_size", "must be at least 1"));
        }
        if self.max_in_flight < 1 {
            return Err(Invalid::new("max_in_flight", "must be at least 1"));
        }
        if self.max_body_bytes < 1024 {
            return Err(Invalid::new("max_body_bytes", "must be at least 1024"));
        }
        if self.client_timeout_ms < 100 {
            return Err(Invalid::new("client_timeout_ms", "must be at least 100"));
        }
        self.identity.validate()?;
        self.consent.validate()?;
        self.records.validate()?;
        self.audit.validate()?;
        self.passport.validate()?;
        self.portal.validate()?;
        self.connectors.validate()?;
        for (key, v) in [
            ("auth.issuer", &self.auth.issuer),
            ("auth.jwks_uri", &self.auth.jwks_uri),
            ("auth.token_endpoint", &self.auth.token_endpoint),
        ] {
            if !(v.is_empty() || v.starts_with("http://") || v.starts_with("https://")) {
                return Err(Invalid::new(
                    key,
                    "expected an http(s) URL such as https://id.example.nhs.uk",
                ));
            }
        }
        if self.http.listen == self.grpc.listen && self.http.listen.port() != 0 {
            return Err(Invalid::new(
                "grpc.listen",
                format!("{} is also the HTTP address", self.grpc.listen),
            ));
        }
        if let Some(h) = self
            .health
            .listen
            .filter(|h| h.port() != 0 && (*h == self.http.listen || *h == self.grpc.listen))
        {
            return Err(Invalid::new(
                "health.listen",
                format!("{h} is also the HTTP or gRPC address"),
            ));
        }
        Ok(())
    }
}
