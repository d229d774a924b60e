//! A consumer's handler, measured: events applied, batches failed, and the consumer's lag
//! behind the bus (for the chart's alerts and dashboard).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
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
    /// The offset of the last event applied, by partition (since this process started).
    applied: Mutex<BTreeMap<i32, i64>>,
}

impl Measured {
    /// `inner`, consuming `topic` as `group`, measured into `metrics`. Its counters are
    /// exported from now on (at 0), so a rate can be taken from the start.
    pub fn new(inner: Arc<dyn Handler>, group: &str, topic: &str, metrics: Metrics) -> Arc<Measured> {
        let labels = ConsumerLabels {
            group: group.to_string(),
            topic: topic.to_string(),
        };
        metrics.consumed.get_or_create(&labels).inc_by(0);
        metrics.consumer_failures.get_or_create(&labels).inc_by(0);
        metrics.consumer_lag.get_or_create(&labels).set(0);
        Arc::new(Measured {
            inner,
            labels,
            metrics,
            applied: Mutex::new(BTreeMap::new()),
        })
    }

    /// The lag behind `extents` (each partition's next offset): events after the last one
    /// applied, over the partitions applied from. A partition not applied from since start
    /// counts 0: a consumer that starts caught up sees nothing there to apply.
    fn lag(&self, extents: &[super::Extent]) -> i64 {
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        extents
            .iter()
            .filter_map(|e| applied.get(&e.partition).map(|last| (e.next - (last + 1)).max(0)))
            .sum()
    }

    /// Keeps the lag gauge current (every `every`) until `stop`. Kafka: each partition's high
    /// watermark against the last offset applied. The embedded bus numbers events across
    /// topics, so its lag is an upper bound (0 when caught up).
    pub async fn measure_lag(self: Arc<Self>, bus: Arc<dyn Bus>, every: Duration, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match bus.extent(&self.labels.topic).await {
                Ok(extents) => {
                    let lag = self.lag(&extents);
                    self.metrics.consumer_lag.get_or_create(&self.labels).set(lag);
                }
                Err(e) => tracing::debug!(topic = %self.labels.topic, error = %e, "cannot measure the consumer's lag"),
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
                let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
                for d in deliveries {
                    let last = applied.entry(d.partition).or_insert(d.offset);
                    *last = (*last).max(d.offset);
                }
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
    use crate::bus::{Envelope, Extent};

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
    async fn counts_what_it_applies_and_lags_only_behind_partitions_it_applied_from() {
        let metrics = Metrics::new();
        let m = Measured::new(Arc::new(Fails(false)), "audit", "t", metrics.clone());
        m.handle_batch(&[delivery(0, 4), delivery(0, 5), delivery(1, 9)])
            .await
            .expect("applied");
        let extents = [
            Extent {
                partition: 0,
                first: 0,
                next: 10,
            },
            Extent {
                partition: 1,
                first: 0,
                next: 10,
            },
            Extent {
                partition: 2,
                first: 0,
                next: 7,
            },
        ];
        // Partition 0: offsets 6..=9 wait; 1 is caught up; 2 was never applied from.
        assert_eq!(m.lag(&extents), 4);
        let text = metrics.render();
        assert!(
            text.contains(r#"sharedcare_consumed_events_total{group="audit",topic="t"} 3"#),
            "{text}"
        );

        let failing = Measured::new(Arc::new(Fails(true)), "audit", "u", metrics.clone());
        assert!(failing.handle_batch(&[delivery(0, 1)]).await.is_err());
        assert_eq!(failing.lag(&extents), 0, "nothing applied: no partition counted");
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
