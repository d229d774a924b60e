//! Outbox and inbox conformance, written once and run on SQLite and on Postgres.

use sharedcare_kit::tasks::Tasks;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sharedcare_kit::bus::embedded::EmbeddedBus;
use sharedcare_kit::bus::kafka::{KafkaBus, KafkaConfig};
use sharedcare_kit::bus::{self, Bus, Delivery, Envelope, Handler};
use sharedcare_kit::db::Db;
use sharedcare_kit::inbox;
use sharedcare_kit::outbox::{self, Outbox, OutboxConfig};
use tokio_util::sync::CancellationToken;

use sharedcare_kit::testing::eventually;

fn event(key: &str, n: usize) -> Envelope {
    let mut e = bus::envelope("test.Event", "kit-tests", &format!("{key}:{n}"), key, &());
    e.data = n.to_le_bytes().to_vec();
    e
}

async fn outbox_rows_commit_with_the_transaction_or_not_at_all(db: Db) {
    db.migrate_kit().await.expect("migrate");
    let ob = Outbox::new(db.clone(), OutboxConfig::default(), &Tasks::new());
    let mut tx = db.begin_write().await.expect("begin");
    outbox::enqueue(&mut tx, "t", &event("k", 1)).await.expect("enqueue");
    tx.rollback().await.expect("rollback");
    assert_eq!(
        ob.pending().await.expect("count"),
        0,
        "a rolled-back transaction leaves no event"
    );
    let mut tx = db.begin_write().await.expect("begin");
    outbox::enqueue(&mut tx, "t", &event("k", 1)).await.expect("enqueue");
    outbox::enqueue(&mut tx, "t", &event("k", 2)).await.expect("enqueue");
    tx.commit().await.expect("commit");
    assert_eq!(ob.pending().await.expect("count"), 2);
}

#[derive(Default)]
struct Collect(Mutex<Vec<Envelope>>);

#[async_trait::async_trait]
impl Handler for Collect {
    async fn handle(&self, d: &Delivery) -> sharedcare_kit::Result<()> {
        self.0.lock().expect("lock").push(d.envelope.clone());
        Ok(())
    }
}

async fn relay_publishes_everything_in_order_then_empties(db: Db) {
    db.migrate_kit().await.expect("migrate");
    let dir = tempfile::tempdir().expect("tmp");
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&dir.path().join("events.db")).await.expect("bus"));
    let ob = Outbox::new(
        db.clone(),
        OutboxConfig {
            batch_size: 100,
            poll_interval_ms: 50,
        },
        &Tasks::new(),
    );
    let sent: Vec<Envelope> = (0..1_200).map(|i| event(&format!("k{}", i % 7), i)).collect();
    for chunk in sent.chunks(300) {
        let mut tx = db.begin_write().await.expect("begin");
        for e in chunk {
            outbox::enqueue(&mut tx, "relay.topic", e).await.expect("enqueue");
        }
        tx.commit().await.expect("commit");
    }
    let stop = CancellationToken::new();
    let relay = tokio::spawn(ob.clone().run(bus.clone(), stop.clone()));
    let seen = Arc::new(Collect::default());
    let consumer = {
        let (bus, seen, stop) = (bus.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move { bus.consume("g", "relay.topic", seen, stop).await })
    };
    eventually(Duration::from_secs(30), "1,200 relayed events", || async {
        seen.0.lock().expect("lock").len() >= 1_200
    })
    .await;
    stop.cancel();
    relay.await.expect("relay");
    consumer.await.expect("join").expect("consume");
    let got: Vec<String> = seen.0.lock().expect("lock").iter().map(|e| e.id.clone()).collect();
    let want: Vec<String> = sent.iter().map(|e| e.id.clone()).collect();
    assert_eq!(got, want, "every event once, in commit order");
    assert_eq!(ob.pending().await.expect("count"), 0, "relayed rows are removed");
}

async fn relay_keeps_rows_while_the_bus_is_down(db: Db) {
    db.migrate_kit().await.expect("migrate");
    let ob = Outbox::new(db.clone(), OutboxConfig::default(), &Tasks::new());
    let mut tx = db.begin_write().await.expect("begin");
    for i in 0..5 {
        outbox::enqueue(&mut tx, "down.topic", &event("k", i))
            .await
            .expect("enqueue");
    }
    tx.commit().await.expect("commit");
    // A real Kafka client pointed at a port where no broker listens.
    let down = KafkaBus::new(
        &KafkaConfig {
            brokers: "127.0.0.1:9".into(),
            message_timeout_ms: 500,
            ..KafkaConfig::default()
        },
        "kit-tests",
    )
    .expect("client");
    assert!(
        ob.relay_once(&down).await.is_err(),
        "publishing to an unreachable broker fails"
    );
    assert_eq!(
        ob.pending().await.expect("count"),
        5,
        "nothing is dropped while the bus is down"
    );
    let dir = tempfile::tempdir().expect("tmp");
    let up = EmbeddedBus::open(&dir.path().join("events.db")).await.expect("bus");
    ob.flush(&up).await.expect("flush");
    assert_eq!(ob.pending().await.expect("count"), 0);
}

async fn inbox_claims_an_event_once(db: Db) {
    db.migrate_kit().await.expect("migrate");
    let d = Delivery {
        envelope: event("k", 1),
        topic: "t".into(),
        partition: 3,
        offset: 42,
    };
    let mut tx = db.begin_write().await.expect("begin");
    assert!(inbox::claim(&mut tx, "c", &d).await.expect("claim"));
    tx.rollback().await.expect("rollback");
    let mut tx = db.begin_write().await.expect("begin");
    assert!(
        inbox::claim(&mut tx, "c", &d).await.expect("claim"),
        "a rolled-back claim does not count"
    );
    tx.commit().await.expect("commit");
    let mut tx = db.begin_write().await.expect("begin");
    assert!(
        !inbox::claim(&mut tx, "c", &d).await.expect("claim"),
        "a redelivery is recognised"
    );
    assert!(
        inbox::claim(&mut tx, "other", &d).await.expect("claim"),
        "each consumer has its own inbox"
    );
    tx.commit().await.expect("commit");
}

/// A batch can hold one event twice (a producer resent it after losing the broker's
/// acknowledgement): only its first copy is fresh. Found by `bench chaos`: the audit consumer
/// inserted both copies and retried the failing batch for ever after a Kafka restart.
async fn a_batch_holding_one_event_twice_claims_it_once(db: Db) {
    db.migrate_kit().await.expect("migrate");
    let at = |envelope, offset| Delivery {
        envelope,
        topic: "t".into(),
        partition: 0,
        offset,
    };
    let (a, b) = (event("k", 1), event("k", 2));
    let before = at(event("k", 3), 1);
    let mut tx = db.begin_write().await.expect("begin");
    assert_eq!(inbox::claim_fresh(&mut tx, "c", &[&before]).await.expect("claim"), [0]);
    tx.commit().await.expect("commit");
    let batch = [at(a.clone(), 2), at(b, 3), at(a, 4), before];
    let refs: Vec<&Delivery> = batch.iter().collect();
    let mut tx = db.begin_write().await.expect("begin");
    assert_eq!(
        inbox::claim_fresh(&mut tx, "c", &refs).await.expect("claim"),
        [0, 1],
        "the first copy of a, then b; not a's second copy, nor the event applied before"
    );
    tx.commit().await.expect("commit");
    // Over more rows than one statement takes, positions still index the whole batch.
    let many: Vec<Delivery> = (0..sharedcare_kit::db::MAX_ROWS_PER_INSERT + 5)
        .map(|i| at(event("m", i), i as i64 + 10))
        .collect();
    let mut refs: Vec<&Delivery> = many.iter().collect();
    refs.push(&many[0]);
    let mut tx = db.begin_write().await.expect("begin");
    let fresh = inbox::claim_fresh(&mut tx, "c", &refs).await.expect("claim");
    assert_eq!(fresh, (0..many.len()).collect::<Vec<_>>());
    tx.commit().await.expect("commit");
}

sharedcare_kit::store_suite!(
    "kit_test";
    a_batch_holding_one_event_twice_claims_it_once,
    outbox_rows_commit_with_the_transaction_or_not_at_all,
    relay_publishes_everything_in_order_then_empties,
    relay_keeps_rows_while_the_bus_is_down,
    inbox_claims_an_event_once,
);

/// Two transactions with events for one key run one after the other (Postgres), so the relay
/// can never publish a patient's events out of commit order; other keys are not held up.
#[tokio::test]
async fn postgres_transactions_for_one_key_are_serialised() {
    let db = sharedcare_kit::testing::postgres_db("kit_test").await;
    db.migrate_kit().await.expect("migrate");
    let mut first = db.begin_write().await.expect("begin");
    outbox::lock_key(&mut first, "9434765919").await.expect("lock");
    let (db2, db3) = (db.clone(), db.clone());
    let same = tokio::spawn(async move {
        let mut tx = db2.begin_write().await.expect("begin");
        outbox::lock_key(&mut tx, "9434765919").await.expect("lock");
        tx.commit().await.expect("commit");
    });
    let mut other = db3.begin_write().await.expect("begin");
    tokio::time::timeout(Duration::from_secs(5), outbox::lock_key(&mut other, "9000000009"))
        .await
        .expect("another key is not blocked")
        .expect("lock");
    other.commit().await.expect("commit");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!same.is_finished(), "the same key waits for the first transaction");
    first.commit().await.expect("commit");
    tokio::time::timeout(Duration::from_secs(5), same)
        .await
        .expect("released at commit")
        .expect("join");
}

/// Two replicas of a service on one Postgres: one relays. When its lock's session ends
/// (Postgres restarted, or ended it across a partition), the other takes over and the first
/// stops relaying instead of publishing beside it: every event once, in order.
#[tokio::test]
async fn postgres_a_relay_that_loses_its_lock_stops_and_another_takes_over() {
    let schema = sharedcare_kit::testing::unique("kit_lead");
    let url = sharedcare_kit::testing::postgres_url();
    let connect = || Db::connect(&url, &schema, 4, Duration::from_secs(5));
    let (a, b) = (connect().await.expect("replica a"), connect().await.expect("replica b"));
    a.migrate_kit().await.expect("migrate");
    let dir = tempfile::tempdir().expect("tmp");
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::open(&dir.path().join("events.db")).await.expect("bus"));
    let config = OutboxConfig {
        batch_size: 20,
        poll_interval_ms: 10,
    };
    let (ob_a, ob_b) = (
        Outbox::new(a.clone(), config.clone(), &Tasks::new()),
        Outbox::new(b.clone(), config, &Tasks::new()),
    );
    let stop = CancellationToken::new();
    let seen = Arc::new(Collect::default());
    let consumer = {
        let (bus, seen, stop) = (bus.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move { bus.consume("g", "lead.topic", seen, stop).await })
    };
    let enqueue = |from: usize, to: usize| {
        let a = a.clone();
        async move {
            for i in from..to {
                let mut tx = a.begin_write().await.expect("begin");
                outbox::enqueue(&mut tx, "lead.topic", &event("k", i))
                    .await
                    .expect("enqueue");
                tx.commit().await.expect("commit");
            }
        }
    };
    let relay_a = tokio::spawn(ob_a.clone().run(bus.clone(), stop.clone()));
    enqueue(0, 50).await;
    eventually(Duration::from_secs(30), "replica a relays", || async {
        seen.0.lock().expect("lock").len() >= 50
    })
    .await;
    let relay_b = tokio::spawn(ob_b.clone().run(bus.clone(), stop.clone()));
    // The leader's lock session ends, as Postgres ends a session across a partition.
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_locks \
         WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())) t",
    )
    .fetch_one(b.pool())
    .await
    .expect("end the lock's session");
    assert!(ended >= 1, "a relay held the lock");
    // Writes go on while the lead changes hands.
    tokio::join!(enqueue(50, 400), enqueue(400, 750));
    eventually(Duration::from_secs(60), "750 relayed events", || async {
        seen.0.lock().expect("lock").len() >= 750 && ob_a.pending().await.expect("count") == 0
    })
    .await;
    // Time for a second relay, were one still running, to publish what it had read.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    relay_a.await.expect("relay a");
    relay_b.await.expect("relay b");
    consumer.await.expect("join").expect("consume");
    let mut got: Vec<usize> = seen
        .0
        .lock()
        .expect("lock")
        .iter()
        .map(|e| usize::from_le_bytes(e.data[..].try_into().expect("a number")))
        .collect();
    let published = got.len();
    got.sort_unstable();
    got.dedup();
    assert_eq!(published, got.len(), "no event published twice");
    assert_eq!(got, (0..750).collect::<Vec<_>>(), "every event published");
}
