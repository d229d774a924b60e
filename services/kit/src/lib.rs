//! The kit: what every Sharedcare service stands on.
//!
//! - [`config`]: layered, typed configuration (defaults → file → `SHAREDCARE_*` env → flags)
//!   whose errors name the key, where it came from and the expected form.
//! - [`telemetry`]: tracing with OpenTelemetry and W3C trace context.
//! - [`serve`]: the gRPC server (health + reflection always) and the HTTP server
//!   (`/healthz`, `/readyz`, `/metrics`), both draining on shutdown.
//! - [`db`]: one database handle per service, Postgres or SQLite chosen by URL, migrations.
//! - [`edge`]: the one mapping of every service's errors to gRPC and HTTP/FHIR answers.
//! - [`bus`] and [`outbox`]: the event bus (Kafka or embedded) and the transactional outbox.
//! - [`service`]: the [`service::Service`] trait every service implements, and its mount context.
//! - [`pdp`]: asking consent (the policy decision point) before patient data leaves a service.
//! - [`shutdown`]: the SIGTERM/SIGINT trigger.
//! - [`nhs`]: NHS domain identifiers shared by every service.
//! - [`text`]: what text every store keeps (no control characters).
#![forbid(unsafe_code)]

pub mod access;
pub mod auth;
pub mod batch;
pub mod bus;
pub mod caller;
pub mod config;
pub mod db;
pub mod directory;
pub mod edge;
pub mod error;
pub mod fhir_elements;
pub mod http_client;
pub mod inbox;
pub mod jose;
pub mod json;
pub mod merges;
pub mod metrics;
pub mod nested;
pub mod nhs;
pub mod nhsuk;
pub mod outbox;
pub mod pdp;
pub mod peer;
pub mod sealing;
pub mod serve;
pub mod service;
pub mod shutdown;
pub mod tasks;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod text;

pub use error::{Error, Result};
