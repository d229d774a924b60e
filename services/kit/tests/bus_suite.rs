//! Bus conformance, written once and run on the embedded log and on Kafka: 10,000 events over
//! many keys (and, on Kafka, several partitions), a consumer killed mid-stream and restarted:
//! nothing lost, nothing applied twice, order kept per key.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sharedcare_kit::bus::embedded::EmbeddedBus;
use sharedcare_kit::bus::{Bus, Delivery, Envelope, Handler, Outgoing};
use tokio_util::sync::CancellationToken;

use sharedcare_kit::testing::{eventually, unique};

const EVENTS: usize = 10_000;
const KEYS: usize = 64;

/// What a consumer's store would hold: applied event ids (its inbox), per-key progress.
#[derive(Default)]
struct Applied {
    deliveries: usize,
    ids: HashSet<String>,
    last_per_key: HashMap<String, usize>,
    out_of_order: Vec<String>,
    partitions: HashSet<i32>,
}

/// Applies events into `Applied`; with `hang_after`, stops making progress once that many are
/// applied (the process "dies" there until the test aborts it).
struct Recorder(Arc<Mutex<Applied>>, Option<usize>);

#[async_trait::async_trait]
impl Handler for Recorder {
    async fn handle(&self, d: &Delivery) -> sharedcare_kit::Result<()> {
        if self.1.is_some_and(|n| self.0.lock().expect("lock").ids.len() >= n) {
            std::future::pending::<()>().await;
        }
        let mut s = self.0.lock().expect("lock");
        s.deliveries += 1;
        s.partitions.insert(d.partition);
        if !s.ids.insert(d.envelope.id.clone()) {
            return Ok(()); // deduplicated by event id
        }
        let (key, n) = d.envelope.subject.split_once(':').expect("subject key:n");
        let n: usize = n.parse().expect("n");
        if let Some(prev) = s.last_per_key.insert(key.to_string(), n)
            && prev >= n
        {
            s.out_of_order.push(format!("{key}: {n} after {prev}"));
        }
        Ok(())
    }
}

fn events(topic: &str) -> Vec<Outgoing> {
    (0..EVENTS)
        .map(|i| {
            let key = format!("patient-{}", i % KEYS);
            let env = Envelope {
                id: uuid::Uuid::now_v7().to_string(),
                r#type: "test.Event".into(),
                source: "kit-tests".into(),
                subject: format!("{key}:{}", i / KEYS),
                key,
                ..Envelope::default()
            };
            Outgoing::new(topic, &env)
        })
        .collect()
}

fn consume(
    bus: &Arc<dyn Bus>,
    group: &str,
    topic: &str,
    state: &Arc<Mutex<Applied>>,
    hang_after: Option<usize>,
    stop: &CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (bus, group, topic, handler, stop) = (
        bus.clone(),
        group.to_string(),
        topic.to_string(),
        Arc::new(Recorder(state.clone(), hang_after)),
        stop.clone(),
    );
    tokio::spawn(async move {
        bus.consume(&group, &topic, handler, stop).await.expect("consume");
    })
}

async fn ten_thousand_events_survive_a_consumer_crash(bus: Arc<dyn Bus>, topic: &str) -> Arc<Mutex<Applied>> {
    let sent = events(topic);
    for chunk in sent.chunks(500) {
        bus.publish(chunk).await.expect("publish");
    }
    let group = unique("group");
    let state = Arc::new(Mutex::new(Applied::default()));
    let applied = |s: &Arc<Mutex<Applied>>| s.lock().expect("lock").ids.len();

    // The consumer-lag metric's source: a group that has applied nothing lags by everything.
    assert_eq!(bus.lag(&group, topic).await.expect("lag"), EVENTS as i64);
    let first = consume(&bus, &group, topic, &state, Some(3_000), &CancellationToken::new());
    eventually(Duration::from_secs(120), "3,000 events before the crash", || async {
        applied(&state) >= 3_000
    })
    .await;
    first.abort(); // a crash: no graceful commit, no leave
    let _ = first.await;
    let at_crash = applied(&state);
    assert!(
        at_crash < EVENTS,
        "the consumer was killed mid-stream ({at_crash} applied)"
    );

    // Read from the group's committed position, not the dead consumer's memory.
    let behind = bus.lag(&group, topic).await.expect("lag");
    assert!(
        behind >= (EVENTS - at_crash) as i64 && behind < EVENTS as i64,
        "lag after the crash: {behind} ({at_crash} applied)"
    );

    let stop = CancellationToken::new();
    let second = consume(&bus, &group, topic, &state, None, &stop);
    eventually(
        Duration::from_secs(180),
        "all 10,000 events after the restart",
        || async { applied(&state) >= EVENTS },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "no lag once every event is applied",
        || async { bus.lag(&group, topic).await.expect("lag") == 0 },
    )
    .await;
    stop.cancel();
    second.await.expect("second consumer");

    {
        let s = state.lock().expect("lock");
        let want: HashSet<String> = sent.iter().map(|o| o.id.clone()).collect();
        assert_eq!(s.ids, want, "every event applied, none invented");
        assert!(
            s.out_of_order.is_empty(),
            "per-key order broken: {:?}",
            &s.out_of_order[..s.out_of_order.len().min(5)]
        );
        assert!(s.deliveries >= EVENTS, "at-least-once");
    }
    state
}

#[tokio::test]
async fn embedded_bus_delivers_each_event_once_after_a_crash_in_key_order() {
    let dir = tempfile::tempdir().expect("tmp");
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&dir.path().join("events.db")).await.expect("open"));
    ten_thousand_events_survive_a_consumer_crash(bus, "suite.topic").await;
}

#[tokio::test]
async fn kafka_bus_delivers_each_event_once_after_a_crash_in_key_order_across_partitions() {
    let (kafka, config) = sharedcare_kit::testing::kafka_bus();
    kafka
        .health()
        .await
        .expect("kafka reachable (is infra/kafka.sh running?)");
    let topic = "suite.topic".to_string();
    kafka.ensure_topics(std::slice::from_ref(&topic)).await.expect("topic");
    let state = ten_thousand_events_survive_a_consumer_crash(Arc::new(kafka), &topic).await;
    let partitions = state.lock().expect("lock").partitions.len();
    assert_eq!(
        partitions, config.partitions as usize,
        "keys spread over every partition"
    );
}

#[tokio::test]
async fn embedded_log_survives_reopening() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("events.db");
    let sent = events("reopen.topic");
    EmbeddedBus::open(&path)
        .await
        .expect("open")
        .publish(&sent[..10])
        .await
        .expect("publish");
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&path).await.expect("reopen"));
    let state = Arc::new(Mutex::new(Applied::default()));
    let stop = CancellationToken::new();
    let h = consume(&bus, "g", "reopen.topic", &state, None, &stop);
    eventually(Duration::from_secs(10), "10 events from the reopened log", || async {
        state.lock().expect("lock").ids.len() == 10
    })
    .await;
    stop.cancel();
    h.await.expect("join");
}

#[tokio::test]
async fn embedded_log_drops_events_past_retention() {
    let dir = tempfile::tempdir().expect("tmp");
    let bus = EmbeddedBus::open(&dir.path().join("events.db")).await.expect("open");
    let sent = events("retention.topic");
    bus.publish(&sent[..100]).await.expect("publish");
    assert_eq!(bus.prune().await.expect("prune"), 0, "nothing is older than seven days");
    let state = events("records.state.v1");
    bus.publish(&state[..30]).await.expect("publish state");
    let bus = bus.with_retention(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(
        bus.prune().await.expect("prune"),
        100,
        "everything is older than zero, but state topics are kept"
    );
    let kept = bus.extent("records.state.v1").await.expect("extent");
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].next - kept[0].first, 30, "{kept:?}");
    assert!(bus.extent("retention.topic").await.expect("extent")[0].is_empty());
}
