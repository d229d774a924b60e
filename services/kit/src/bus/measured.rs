//! A consumer's handler, measured: events applied, batches failed, and the consumer's lag
//! behind the bus (for the chart's alerts and dashboard).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Bus, Delivery, Handler};
use crate::Result;
use crate::metrics::{ConsumerLabels, Metrics};

/// Wraps a consumer's handler, counting what it applies and where it has got to.
pub struct Measured {
    inner: Arc<dyn Handler>,
    labels: ConsumerLabels,
    metrics: Metrics,
}

impl Measured {
    /// `inner`, consuming `topic` as `group`, measured into `metrics`. Its counters are
    /// exported from now on (at 0), so a rate can be taken from the start; the lag once it
    /// has been measured (never a 0 that was not).
    pub fn new(inner: Arc<dyn Handler>, group: &str, topic: &str, metrics: Metrics) -> Arc<Measured> {
        let labels = ConsumerLabels {
            group: group.to_string(),
            topic: topic.to_string(),
        };
        metrics.consumed.get_or_create(&labels).inc_by(0);
        metrics.consumer_failures.get_or_create(&labels).inc_by(0);
        Arc::new(Measured { inner, labels, metrics })
    }

    /// Keeps the lag gauge current (every `every`) until `stop`: the group's committed
    /// positions against the end of each partition ([`Bus::lag`]), so a consumer that has
    /// restarted behind shows its lag at once, and every replica of it the same lag.
    pub async fn measure_lag(self: Arc<Self>, bus: Arc<dyn Bus>, every: Duration, stop: CancellationToken) {
        loop {
            match bus.lag(&self.labels.group, &self.labels.topic).await {
                Ok(lag) => {
                    self.metrics.consumer_lag.get_or_create(&self.labels).set(lag);
                }
                Err(e) => tracing::debug!(topic = %self.labels.topic, error = %e, "cannot measure the consumer's lag"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }
}

#[async_trait::async_trait]
impl Handler for Measured {
    async fn handle(&self, delivery: &Delivery) -> Result<()> {
        self.handle_batch(std::slice::from_ref(delivery)).await
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> Result<()> {
        match self.inner.handle_batch(deliveries).await {
            Ok(()) => {
                self.metrics
                    .consumed
                    .get_or_create(&self.labels)
                    .inc_by(deliveries.len() as u64);
                Ok(())
            }
            Err(e) => {
                self.metrics.consumer_failures.get_or_create(&self.labels).inc();
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::Envelope;

    struct Fails(bool);

    #[async_trait::async_trait]
    impl Handler for Fails {
        async fn handle(&self, _: &Delivery) -> Result<()> {
            if self.0 {
                Err(crate::Error::Bus("refused".into()))
            } else {
                Ok(())
            }
        }
    }

    fn delivery(partition: i32, offset: i64) -> Delivery {
        Delivery {
            envelope: Envelope::default(),
            topic: "t".into(),
            partition,
            offset,
        }
    }

    #[tokio::test]
    async fn counts_what_it_applies_and_what_it_fails_to() {
        let metrics = Metrics::new();
        let m = Measured::new(Arc::new(Fails(false)), "audit", "t", metrics.clone());
        m.handle_batch(&[delivery(0, 4), delivery(0, 5), delivery(1, 9)])
            .await
            .expect("applied");
        let text = metrics.render();
        assert!(
            text.contains(r#"sharedcare_consumed_events_total{group="audit",topic="t"} 3"#),
            "{text}"
        );

        let failing = Measured::new(Arc::new(Fails(true)), "audit", "u", metrics.clone());
        assert!(failing.handle_batch(&[delivery(0, 1)]).await.is_err());
        let text = metrics.render();
        assert!(
            text.contains(r#"sharedcare_consumer_failures_total{group="audit",topic="u"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"sharedcare_consumed_events_total{group="audit",topic="u"} 0"#),
            "{text}"
        );
    }
}
