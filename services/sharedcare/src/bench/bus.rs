//! `bench bus`: event bus throughput and publish→consume latency (embedded, or Kafka when
//! `kafka.brokers` is configured).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use hdrhistogram::Histogram;
use sharedcare_kit::bus::embedded::EmbeddedBus;
use sharedcare_kit::bus::kafka::KafkaBus;
use sharedcare_kit::bus::{Bus, Delivery, Envelope, Handler, Outgoing};
use tokio_util::sync::CancellationToken;

use super::args::BenchArgs;
use super::harness::{histogram, report};
use crate::config::Config;

/// Records publish→consume latency (microseconds) from the envelope's `subject`.
pub(crate) struct LatencyHandler {
    hist: std::sync::Mutex<Histogram<u64>>,
    seen: AtomicU64,
    origin: Instant,
}

#[async_trait::async_trait]
impl Handler for LatencyHandler {
    async fn handle(&self, d: &Delivery) -> sharedcare_kit::Result<()> {
        if let Ok(sent_us) = d.envelope.subject.parse::<u64>() {
            let now = self.origin.elapsed().as_micros() as u64;
            let _ = self
                .hist
                .lock()
                .map(|mut h| h.record(now.saturating_sub(sent_us).max(1)));
        }
        self.seen.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub(crate) fn event(topic: &str, i: u64, subject: String) -> Outgoing {
    let env = Envelope {
        id: uuid::Uuid::now_v7().to_string(),
        r#type: "bench.Event".into(),
        source: "bench".into(),
        subject,
        key: format!("943{:07}", i % 1000),
        data: vec![0u8; 256],
        ..Envelope::default()
    };
    Outgoing::new(topic, &env)
}

pub(crate) type ConsumerTask = tokio::task::JoinHandle<sharedcare_kit::Result<()>>;

/// Consumes `topic` (group `bench-<topic>`) into a fresh [`LatencyHandler`].
pub(crate) fn start_consumer(
    bus: &Arc<dyn Bus>,
    topic: &'static str,
    origin: Instant,
) -> (Arc<LatencyHandler>, CancellationToken, ConsumerTask) {
    let handler = Arc::new(LatencyHandler {
        hist: std::sync::Mutex::new(histogram()),
        seen: AtomicU64::new(0),
        origin,
    });
    let stop = CancellationToken::new();
    let (b, h, s) = (bus.clone(), handler.clone(), stop.clone());
    let task = tokio::spawn(async move { b.consume(&format!("bench-{topic}"), topic, h, s).await });
    (handler, stop, task)
}

pub(crate) async fn bus(config: &Config, args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (bus, kind): (Arc<dyn Bus>, String) = if config.kafka.brokers.is_empty() {
        (
            Arc::new(EmbeddedBus::open(&dir.path().join("events.db")).await?),
            "embedded".into(),
        )
    } else {
        let mut kc = config.kafka.clone();
        kc.namespace = if kc.namespace.is_empty() {
            format!("bench{}", std::process::id())
        } else {
            format!("{}-bench{}", kc.namespace, std::process::id())
        };
        let k = KafkaBus::new(&kc, "bench")?;
        k.health().await?;
        k.ensure_topics(&["throughput".to_string(), "latency".to_string()])
            .await?;
        (Arc::new(k), format!("kafka {}", config.kafka.brokers))
    };
    println!("bus: {kind}");

    // Throughput: publish in batches of 500 for the phase, then consume everything.
    let origin = Instant::now();
    let started = Instant::now();
    let mut published = 0u64;
    let mut batch_hist = histogram();
    while started.elapsed() < Duration::from_secs(args.seconds) {
        let batch: Vec<Outgoing> = (0..500)
            .map(|i| event("throughput", published + i, String::new()))
            .collect();
        let t = Instant::now();
        bus.publish(&batch).await?;
        batch_hist.record(t.elapsed().as_micros() as u64)?;
        published += 500;
    }
    report("publish (batches of 500)", published, started.elapsed(), &batch_hist);
    let (handler, stop, consumer) = start_consumer(&bus, "throughput", origin);
    let started = Instant::now();
    while handler.seen.load(Ordering::Relaxed) < published {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("consumer did not catch up within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let consumed = started.elapsed();
    println!(
        "{:<28} {:>9.0}/s   (n={published})",
        "consume",
        published as f64 / consumed.as_secs_f64()
    );
    stop.cancel();
    let _ = consumer.await;

    // Latency: a steady rate, each event stamped at publish.
    let (handler, stop, consumer) = start_consumer(&bus, "latency", origin);
    // Let the consumer join its group before the clock starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let total = args.rate * args.seconds;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / args.rate.max(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut sends = tokio::task::JoinSet::new();
    for i in 0..total {
        tick.tick().await;
        let bus = bus.clone();
        let e = event("latency", i, origin.elapsed().as_micros().to_string());
        sends.spawn(async move { bus.publish(&[e]).await });
    }
    while let Some(r) = sends.join_next().await {
        r??;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while handler.seen.load(Ordering::Relaxed) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    let _ = consumer.await;
    let h = handler.hist.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    report(
        &format!("publish→consume @{}/s", args.rate),
        h.len(),
        Duration::from_secs(args.seconds),
        &h,
    );
    Ok(())
}

// ------------------------------------------------------------------------------------ records
