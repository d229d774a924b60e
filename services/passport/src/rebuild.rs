//! `sharedcare passport rebuild`: the read model reconstructed from scratch by replaying the
//! state topics it is built from (records' `RecordState`, consent's `SharingState`) from the
//! oldest event the bus retains, through the same consumer that keeps it live.
//!
//! A run has its own consumer group and records, after each batch it applies, how far it has
//! got in each partition (`rebuild_progress`), so an interrupted run resumes where it stopped,
//! and it knows it is done when every partition has reached the end it had when the run
//! began. Events that arrive meanwhile are applied by the live consumer (or, into a separate
//! store, left to the next start of the passport on it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sharedcare_kit::bus::{Bus, Delivery, Extent, Handler};
use sharedcare_kit::db::Db;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::PassportError;
use crate::events::StateConsumer;
use crate::store::Store;

/// The topics the read model is built from.
pub const TOPICS: [&str; 2] = [crate::RECORD_STATE_TOPIC, crate::SHARING_STATE_TOPIC];

/// How long a run waits without any event before it gives up (it can be resumed).
const STALL: Duration = Duration::from_secs(30);

/// What a finished run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// The run's consumer group.
    pub group: String,
    /// Whether it resumed an interrupted run.
    pub resumed: bool,
    /// Events applied by this invocation.
    pub events: u64,
    /// Resources and people in the model at the end.
    pub entries: i64,
    /// People with sharing state in the model at the end.
    pub people: i64,
}

/// Where each (topic, partition) must reach, and where it is.
#[derive(Default)]
struct Tracker {
    target: BTreeMap<(String, i32), i64>,
    reached: BTreeMap<(String, i32), i64>,
    events: u64,
    last_event: Option<Instant>,
}

impl Tracker {
    fn done(&self) -> bool {
        self.target
            .iter()
            .all(|(k, end)| self.reached.get(k).copied().unwrap_or(0) >= *end)
    }

    /// Fraction of the replay done, by offsets (approximate on the embedded bus, whose
    /// offsets are shared by every topic).
    fn fraction(&self, start: &BTreeMap<(String, i32), i64>) -> f64 {
        let (mut total, mut done) = (0i64, 0i64);
        for (k, end) in &self.target {
            let from = start.get(k).copied().unwrap_or(0);
            total += (end - from).max(0);
            done += (self.reached.get(k).copied().unwrap_or(from).min(*end) - from).max(0);
        }
        if total == 0 { 1.0 } else { done as f64 / total as f64 }
    }
}

/// The consumer the run uses on one topic: the live one, then the run's progress in the same
/// store.
struct Replay {
    /// The logical topic (deliveries name the physical one, namespace included).
    topic: &'static str,
    inner: Arc<StateConsumer>,
    db: Db,
    group: String,
    tracker: Arc<Mutex<Tracker>>,
    finished: CancellationToken,
}

#[async_trait::async_trait]
impl Handler for Replay {
    async fn handle(&self, delivery: &Delivery) -> sharedcare_kit::Result<()> {
        self.handle_batch(std::slice::from_ref(delivery)).await
    }

    async fn handle_batch(&self, deliveries: &[Delivery]) -> sharedcare_kit::Result<()> {
        self.inner.handle_batch(deliveries).await?;
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for d in deliveries {
            let n = next.entry((self.topic.to_string(), d.partition)).or_default();
            *n = (*n).max(d.offset + 1);
        }
        record_progress(&self.db, &self.group, &next)
            .await
            .map_err(sharedcare_kit::Error::apply(crate::NAME))?;
        let mut t = self.tracker.lock().unwrap_or_else(|p| p.into_inner());
        t.events += deliveries.len() as u64;
        t.last_event = Some(Instant::now());
        for (k, n) in next {
            let r = t.reached.entry(k).or_default();
            *r = (*r).max(n);
        }
        if t.done() {
            self.finished.cancel();
        }
        Ok(())
    }
}

async fn record_progress(db: &Db, group: &str, next: &BTreeMap<(String, i32), i64>) -> Result<(), PassportError> {
    let mut tx = db.begin_write().await?;
    for ((topic, partition), offset) in next {
        sqlx::query(
            "INSERT INTO rebuild_progress (consumer_group, topic, partition_no, next_offset) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (consumer_group, topic, partition_no) DO UPDATE SET next_offset = excluded.next_offset \
             WHERE rebuild_progress.next_offset < excluded.next_offset",
        )
        .bind(group.to_string())
        .bind(topic.clone())
        .bind(i64::from(*partition))
        .bind(*offset)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The run to continue (an unfinished one, unless `fresh`), or a new one on an emptied model.
async fn begin(db: &Db, fresh: bool) -> Result<(String, bool), PassportError> {
    let unfinished = sqlx::query("SELECT consumer_group FROM rebuilds WHERE finished_us = 0 ORDER BY started_us DESC")
        .fetch_optional(db.pool())
        .await?;
    if let (Some(row), false) = (&unfinished, fresh) {
        return Ok((row.try_get(0)?, true));
    }
    let now = sharedcare_kit::db::now_us();
    let group = format!("{}-rebuild-{now}", crate::NAME);
    let mut tx = db.begin_write().await?;
    for sql in [
        "DELETE FROM entries",
        "DELETE FROM sharing",
        "DELETE FROM merges",
        "DELETE FROM rebuild_progress",
        "UPDATE rebuilds SET finished_us = -1 WHERE finished_us = 0",
    ] {
        sqlx::query(sql).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM kit_inbox WHERE consumer = $1")
        .bind(crate::NAME)
        .execute(&mut *tx)
        .await?;
    sqlx::query("INSERT INTO rebuilds (consumer_group, started_us, finished_us) VALUES ($1, $2, 0)")
        .bind(group.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((group, false))
}

/// Rebuilds the model in `db` from `bus`: resumes an interrupted run unless `fresh`, reports
/// progress through `report` about once a second, and returns when every partition has
/// reached the end it had when the run began.
pub async fn run(
    db: Db,
    bus: Arc<dyn Bus>,
    fresh: bool,
    poison: prometheus_client::metrics::counter::Counter,
    report: &(dyn Fn(String) + Sync),
) -> Result<Summary, PassportError> {
    let (group, resumed) = begin(&db, fresh).await?;
    let mut tracker = Tracker::default();
    let mut start: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for topic in TOPICS {
        let extents: Vec<Extent> = bus
            .extent(topic)
            .await
            .map_err(|e| PassportError::Unavailable(format!("the event log: {e}")))?;
        for e in extents.into_iter().filter(|e| !e.is_empty()) {
            tracker.target.insert((topic.to_string(), e.partition), e.next);
            start.insert((topic.to_string(), e.partition), e.first);
        }
    }
    for row in sqlx::query("SELECT topic, partition_no, next_offset FROM rebuild_progress WHERE consumer_group = $1")
        .bind(group.clone())
        .fetch_all(db.pool())
        .await?
    {
        let partition: i64 = row.try_get(1)?;
        tracker
            .reached
            .insert((row.try_get(0)?, partition as i32), row.try_get(2)?);
    }
    let verb = if resumed { "resuming" } else { "starting" };
    report(format!(
        "rebuild: {verb} run {group}: {} partitions of {} to replay",
        tracker.target.len(),
        TOPICS.join(" and ")
    ));
    let tracker = Arc::new(Mutex::new(tracker));
    let finished = CancellationToken::new();
    // Interrupted (the future dropped, e.g. on Ctrl-C): the consumers stop too.
    let _stop_consumers = finished.clone().drop_guard();
    let began = Instant::now();
    if !tracker.lock().unwrap_or_else(|p| p.into_inner()).done() {
        let inner = Arc::new(StateConsumer::new(Store::new(db.clone()), poison));
        let consumers: Vec<_> = TOPICS
            .iter()
            .map(|topic| {
                let replay = Arc::new(Replay {
                    topic,
                    inner: inner.clone(),
                    db: db.clone(),
                    group: group.clone(),
                    tracker: tracker.clone(),
                    finished: finished.clone(),
                });
                let (bus, finished, group) = (bus.clone(), finished.clone(), group.clone());
                tokio::spawn(async move { bus.consume(&group, topic, replay, finished).await })
            })
            .collect();
        let mut stalled = false;
        while !finished.is_cancelled() {
            tokio::select! {
                _ = finished.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let t = tracker.lock().unwrap_or_else(|p| p.into_inner());
            let rate = t.events as f64 / began.elapsed().as_secs_f64().max(0.001);
            report(format!(
                "rebuild: {:.0}% ({} events applied, {rate:.0}/s)",
                t.fraction(&start) * 100.0,
                t.events
            ));
            let idle = t.last_event.map_or(began.elapsed(), |at| at.elapsed());
            if !t.done() && idle > STALL {
                stalled = true;
                finished.cancel();
            }
        }
        for c in consumers {
            c.await
                .map_err(|e| PassportError::Unavailable(format!("replay task: {e}")))?
                .map_err(|e| PassportError::Unavailable(format!("the event log: {e}")))?;
        }
        if stalled {
            return Err(PassportError::Unavailable(format!(
                "no event for {}s before the end of the log was reached; run `sharedcare passport rebuild` again to resume run {group}",
                STALL.as_secs()
            )));
        }
    }
    sqlx::query("UPDATE rebuilds SET finished_us = $1 WHERE consumer_group = $2")
        .bind(sharedcare_kit::db::now_us())
        .bind(group.clone())
        .execute(db.writer())
        .await?;
    let count = |sql: &'static str| {
        let db = db.clone();
        async move {
            let row = sqlx::query(sql).fetch_one(db.pool()).await?;
            Ok::<i64, PassportError>(row.try_get(0)?)
        }
    };
    let events = tracker.lock().unwrap_or_else(|p| p.into_inner()).events;
    Ok(Summary {
        group,
        resumed,
        events,
        entries: count("SELECT COUNT(*) FROM entries").await?,
        people: count("SELECT COUNT(*) FROM sharing").await?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_done_when_every_partition_reaches_its_end() {
        let mut t = Tracker::default();
        let k = |p: i32| ("t".to_string(), p);
        t.target.insert(k(0), 10);
        t.target.insert(k(1), 5);
        let start = BTreeMap::from([(k(0), 0), (k(1), 0)]);
        assert!(!t.done());
        assert_eq!(t.fraction(&start), 0.0);
        t.reached.insert(k(0), 10);
        assert!(!t.done());
        assert!((t.fraction(&start) - 10.0 / 15.0).abs() < 1e-9);
        t.reached.insert(k(1), 5);
        assert!(t.done());
        assert_eq!(Tracker::default().fraction(&start), 1.0, "nothing to replay is done");
    }
}
