//! What the operator says about itself: `/healthz` (for the chart's probes) and `/metrics`
//! (Prometheus text format) on `operator.listen`, served by every replica, leader or not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// The kind a reconcile was of.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// `CareOrganisation` or `CareApp`.
    pub kind: &'static str,
}

/// The operator's metrics. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Reconciles run, by kind.
    pub reconciles: Family<KindLabels, Counter>,
    /// Reconciles that failed (and were retried with back-off), by kind.
    pub failures: Family<KindLabels, Counter>,
    /// How long reconciles took, by kind.
    pub duration: Family<KindLabels, Histogram>,
    /// 1 while this replica leads.
    pub leading: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under `sharedcare_operator_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sharedcare_operator");
        let reconciles = Family::<KindLabels, Counter>::default();
        let failures = Family::<KindLabels, Counter>::default();
        let duration = Family::<KindLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.001, 2.0, 14))
        });
        let leading = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_failures", "Reconciles that failed", failures.clone());
        registry.register(
            "reconcile_duration_seconds",
            "How long reconciles took",
            duration.clone(),
        );
        registry.register("leading", "1 while this replica leads", leading.clone());
        Metrics {
            registry: Arc::new(registry),
            reconciles,
            failures,
            duration,
            leading,
        }
    }

    /// Records one reconcile of `kind` that took `took` and `failed` or not.
    pub fn reconciled(&self, kind: &'static str, took: Duration, failed: bool) {
        let labels = KindLabels { kind };
        self.reconciles.get_or_create(&labels).inc();
        if failed {
            self.failures.get_or_create(&labels).inc();
        }
        self.duration.get_or_create(&labels).observe(took.as_secs_f64());
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics could not be encoded");
        }
        out
    }
}

/// `/healthz` and `/metrics`.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(render))
        .with_state(metrics)
}

async fn render(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
}

/// Serves [`router`] on `listen` until `stop`; returns the bound address.
pub async fn serve(listen: SocketAddr, metrics: Metrics, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("operator.listen {listen}: {e}"))?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        let served = axum::serve(listener, router(metrics))
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the operator's health and metrics server failed");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_and_failures_are_counted_by_kind() {
        let m = Metrics::new();
        m.reconciled("CareApp", Duration::from_millis(3), false);
        m.reconciled("CareApp", Duration::from_millis(5), true);
        m.leading.set(1);
        let text = m.render();
        assert!(
            text.contains("sharedcare_operator_reconciles_total{kind=\"CareApp\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("sharedcare_operator_reconcile_failures_total{kind=\"CareApp\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sharedcare_operator_reconcile_duration_seconds_count{kind=\"CareApp\"} 2"),
            "{text}"
        );
        assert!(text.contains("sharedcare_operator_leading 1"), "{text}");
    }
}
