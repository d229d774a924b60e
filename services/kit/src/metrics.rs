//! Prometheus metrics, served at `/metrics` in the text exposition format.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// The service (`component`: Prometheus gives scraped series a `service` label of its own).
    pub component: &'static str,
    /// What could not be done, e.g. `identity_event`.
    pub what: &'static str,
}

/// Labels of a per-service metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    /// The service (`component`, as in the pods' `app.kubernetes.io/component`: Prometheus
    /// gives every scraped series a `service` label of its own, the Kubernetes Service).
    pub component: String,
}

/// Labels of a consumer's metric.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    /// Consumer group (the consuming service, e.g. `audit`).
    pub group: String,
    /// The topic it consumes (logical name, without a Kafka namespace prefix).
    pub topic: String,
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
    /// Events in a service's outbox not yet published to the bus.
    pub outbox_pending: Family<ServiceLabels, Gauge>,
    /// Age of the oldest event in a service's outbox (0 when empty).
    pub outbox_oldest_age: Family<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Events on the bus a consumer has not applied yet, over the partitions it has applied
    /// from since it started.
    pub consumer_lag: Family<ConsumerLabels, Gauge>,
    /// Events a consumer applied.
    pub consumed: Family<ConsumerLabels, Counter>,
    /// Batches a consumer's handler failed to apply (each is retried).
    pub consumer_failures: Family<ConsumerLabels, Counter>,
    /// Consent decisions a service asked for and did not get (consent unreachable, timed out,
    /// refused the call or answered short): each such request was refused, with no data.
    pub consent_failures: Family<ServiceLabels, Counter>,
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
        let outbox_pending = Family::<ServiceLabels, Gauge>::default();
        registry.register(
            "outbox_pending",
            "Events in the service's outbox not yet published to the bus",
            outbox_pending.clone(),
        );
        let outbox_oldest_age = Family::<ServiceLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "outbox_oldest_age_seconds",
            "Age of the oldest event in the service's outbox (0 when empty)",
            outbox_oldest_age.clone(),
        );
        let consumer_lag = Family::<ConsumerLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Events on the bus the consumer group has not applied (partitions it applied from since start)",
            consumer_lag.clone(),
        );
        let consumed = Family::<ConsumerLabels, Counter>::default();
        registry.register("consumed_events", "Events the consumer applied", consumed.clone());
        let consumer_failures = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_failures",
            "Batches the consumer failed to apply (each is retried)",
            consumer_failures.clone(),
        );
        let consent_failures = Family::<ServiceLabels, Counter>::default();
        registry.register(
            "consent_failures",
            "Consent decisions asked for and not had: each such request was refused with no data",
            consent_failures.clone(),
        );
        Metrics {
            registry: Arc::new(registry),
            requests,
            latency,
            unreported,
            outbox_pending,
            outbox_oldest_age,
            consumer_lag,
            consumed,
            consumer_failures,
            consent_failures,
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
            .get_or_create(&UnreportedLabels {
                component: service,
                what,
            })
            .clone()
    }

    /// The counter of `service`'s failed consent decisions, exported from now on (as 0 until
    /// the first failure, so a rate can be taken from the start).
    pub fn consent_failures(&self, service: &str) -> Counter {
        self.consent_failures
            .get_or_create(&ServiceLabels {
                component: service.to_string(),
            })
            .clone()
    }

    /// Sets `service`'s outbox gauges: `pending` events, the oldest `oldest_age` seconds old.
    pub fn outbox(&self, service: &str, pending: i64, oldest_age: f64) {
        let labels = ServiceLabels {
            component: service.to_string(),
        };
        self.outbox_pending.get_or_create(&labels).set(pending);
        self.outbox_oldest_age.get_or_create(&labels).set(oldest_age);
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
