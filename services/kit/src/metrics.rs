//! Prometheus metrics, served at `/metrics` in the text exposition format.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a request metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `grpc` or `http`.
    pub protocol: &'static str,
    /// gRPC method path or HTTP route.
    pub path: String,
    /// gRPC status code name or HTTP status.
    pub code: String,
}

/// Labels of a failure that could not be returned to anyone (a write after the answer).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UnreportedLabels {
    /// The service.
    pub service: &'static str,
    /// What could not be done, e.g. `identity_event`.
    pub what: &'static str,
}

/// The process's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests served, by protocol, path and outcome.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency in seconds.
    pub latency: Family<RequestLabels, Histogram>,
    /// Failures no caller could be told of (each also logged), by service and what failed.
    pub unreported: Family<UnreportedLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("sharedcare");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RequestLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 16))
        });
        registry.register("requests", "Requests served", requests.clone());
        registry.register("request_duration_seconds", "Request latency", latency.clone());
        let unreported = Family::<UnreportedLabels, Counter>::default();
        registry.register(
            "unreported_failures",
            "Failures no caller could be told of (each is also logged)",
            unreported.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            unreported,
        }
    }

    /// Records one request.
    pub fn observe(&self, protocol: &'static str, path: &str, code: &str, seconds: f64) {
        let labels = RequestLabels {
            protocol,
            path: path.to_string(),
            code: code.to_string(),
        };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
    }

    /// The counter of `service`'s unreported failures of kind `what`.
    pub fn unreported(&self, service: &'static str, what: &'static str) -> Counter {
        self.unreported
            .get_or_create(&UnreportedLabels { service, what })
            .clone()
    }

    /// The exposition text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        out
    }
}
