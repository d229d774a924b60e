//! The transactional outbox.
//!
//! A service writes each event into `kit_outbox` in the same database transaction as the
//! state change it describes ([`enqueue`]), then calls [`Outbox::notify`]. The relay
//! ([`Outbox::run`]) publishes pending rows in order and deletes them once the bus has
//! acknowledged them. A crash between commit and publish loses nothing: the rows are still
//! there at the next start. A crash between publish and delete re-publishes; consumers
//! deduplicate by event id.
//!
//! With several replicas on Postgres, one relay per service is active at a time: it holds a
//! session advisory lock (`pg_try_advisory_lock`) for as long as it runs.

use std::sync::Arc;
use std::time::Duration;

use crate::tasks::Tasks;
use sqlx::pool::PoolConnection;
use sqlx::{Any, Row};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Envelope, Outgoing};
use crate::db::{Db, Tx};
use crate::{Error, Result};

/// Writes `envelope` for `topic` into the outbox inside the caller's transaction.
pub async fn enqueue(tx: &mut Tx, topic: &str, envelope: &Envelope) -> Result<(), sqlx::Error> {
    enqueue_all(tx, &[(topic, envelope)]).await
}

/// Orders this transaction's events for `key` after those of any concurrent transaction with
/// events for the same key. Call it before [`enqueue`]ing events with that key.
///
/// On Postgres, a sequence value is taken at insert but becomes visible at commit, so two
/// transactions could commit their rows for one patient out of sequence order and the relay
/// would publish them out of order. A transaction-scoped advisory lock on the key makes such
/// transactions run one after the other. SQLite has a single writer, so it needs nothing.
pub async fn lock_key(tx: &mut Tx, key: &str) -> Result<(), sqlx::Error> {
    if tx.backend().single_writer() {
        return Ok(());
    }
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))::text")
        .bind(key)
        .fetch_one(&mut **tx)
        .await?;
    Ok(())
}

/// Writes several events into the outbox inside the caller's transaction, in order, with one
/// statement per [`crate::db::MAX_ROWS_PER_INSERT`] events.
pub async fn enqueue_all(tx: &mut Tx, events: &[(&str, &Envelope)]) -> Result<(), sqlx::Error> {
    let now = crate::db::now_us();
    for chunk in events.chunks(crate::db::MAX_ROWS_PER_INSERT) {
        let sql = tx.backend().insert_rows(
            "kit_outbox (event_id, topic, event_key, payload, created_us)",
            5,
            chunk.len(),
            "",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (topic, envelope) in chunk {
            let out = Outgoing::new(topic, envelope);
            q = q.bind(out.id).bind(out.topic).bind(out.key).bind(out.payload).bind(now);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Relay settings (`[outbox]`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxConfig {
    /// Rows published per round trip.
    pub batch_size: i64,
    /// How often the relay looks for rows when nobody notified it.
    pub poll_interval_ms: u64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        OutboxConfig {
            batch_size: 500,
            poll_interval_ms: 250,
        }
    }
}

/// A service's outbox: the handle to wake its relay, and the relay itself.
#[derive(Clone)]
pub struct Outbox {
    db: Db,
    wake: Arc<Notify>,
    config: OutboxConfig,
    records: mpsc::Sender<Pending>,
}

/// An event waiting for the group commit, and who to tell when it is durable.
/// One group commit's failure is every waiter's: shared, not copied.
type Pending = (String, Envelope, oneshot::Sender<Result<(), Arc<sqlx::Error>>>);

/// Most events one group commit writes.
const GROUP_COMMIT_MAX: usize = 1024;

impl Outbox {
    /// The outbox in `db` (its `kit_outbox` table). Must be called inside the tokio runtime:
    /// it starts the group-commit writer behind [`Outbox::record`] under `tasks`; the writer
    /// ends when the last handle is dropped or the process stops working.
    pub fn new(db: Db, config: OutboxConfig, tasks: &Tasks) -> Self {
        let wake = Arc::new(Notify::new());
        let (records, rx) = mpsc::channel(GROUP_COMMIT_MAX * 4);
        tasks.spawn(group_commit(db.clone(), wake.clone(), rx));
        Outbox {
            db,
            wake,
            config,
            records,
        }
    }

    /// Durably records an event that goes with no state change (e.g. an access to audit),
    /// returning once it is committed. Concurrent calls share one transaction (group commit),
    /// so a read path that must audit before answering pays one commit per batch, not per read.
    pub async fn record(&self, topic: &str, envelope: Envelope) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.records
            .send((topic.to_string(), envelope, tx))
            .await
            .map_err(|_| Error::Outbox("the outbox writer has stopped".into()))?;
        rx.await
            .map_err(|_| Error::Outbox("the outbox writer has stopped".into()))?
            .map_err(|e| {
                Error::Outbox(format!(
                    "cannot record an event in the {} outbox: {e}",
                    self.db.service()
                ))
            })
    }

    /// Wakes the relay; call after committing a transaction that enqueued events.
    pub fn notify(&self) {
        self.wake.notify_one();
    }

    /// How many events wait to be published.
    pub async fn pending(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM kit_outbox")
            .fetch_one(self.db.pool())
            .await
            .map_err(Error::db("count outbox"))?;
        Ok(row.try_get::<i64, _>(0)?)
    }

    /// How many events wait to be published, and how many seconds the oldest has waited.
    pub async fn backlog(&self) -> Result<(i64, f64)> {
        let row = sqlx::query("SELECT COUNT(*), MIN(created_us) FROM kit_outbox")
            .fetch_one(self.db.pool())
            .await
            .map_err(Error::db("count outbox"))?;
        let oldest: Option<i64> = row.try_get(1)?;
        let age = oldest.map_or(0.0, |us| (crate::db::now_us() - us).max(0) as f64 / 1e6);
        Ok((row.try_get::<i64, _>(0)?, age))
    }

    /// Keeps `metrics`' outbox gauges for this service current (every `every`) until `stop`.
    pub async fn measure(self, metrics: crate::metrics::Metrics, every: Duration, stop: CancellationToken) {
        let service = self.db.service().to_string();
        loop {
            match self.backlog().await {
                Ok((pending, age)) => metrics.outbox(&service, pending, age),
                Err(e) => tracing::debug!(service, error = %e, "cannot measure the outbox"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Publishes one batch of pending events and deletes them; returns how many.
    pub async fn relay_once(&self, bus: &dyn Bus) -> Result<usize> {
        self.relay_batch(bus, None).await
    }

    /// One batch, read on `leader` (the connection holding the relay's lock) when there is
    /// one: a read that succeeds shows the lock was still held, so a replica whose lock
    /// session ended (Postgres restarted, or dropped it across a partition) stops relaying
    /// instead of publishing beside the new leader.
    async fn relay_batch(&self, bus: &dyn Bus, leader: Option<&mut PoolConnection<Any>>) -> Result<usize> {
        let read = sqlx::query("SELECT seq, event_id, topic, event_key, payload FROM kit_outbox ORDER BY seq LIMIT $1")
            .bind(self.config.batch_size);
        let rows = match leader {
            Some(conn) => read.fetch_all(&mut **conn).await,
            None => read.fetch_all(self.db.pool()).await,
        }
        .map_err(Error::db("read outbox"))?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut seqs = Vec::with_capacity(rows.len());
        let mut batch = Vec::with_capacity(rows.len());
        for r in rows {
            seqs.push(r.try_get::<i64, _>(0)?);
            let payload: Vec<u8> = r.try_get(4)?;
            let traceparent = traceparent_of(&payload);
            batch.push(Outgoing {
                id: r.try_get(1)?,
                topic: r.try_get(2)?,
                key: r.try_get(3)?,
                traceparent,
                payload,
            });
        }
        bus.publish(&batch).await?;
        // Anonymous placeholders on SQLite: it looks numbered ones up by name (quadratic).
        let sql = format!(
            "DELETE FROM kit_outbox WHERE seq IN ({})",
            self.db.backend().marks(1, seqs.len())
        );
        // Only numbered placeholders are formatted in; the values are bound.
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in &seqs {
            q = q.bind(*s);
        }
        q.execute(self.db.writer())
            .await
            .map_err(Error::db("mark outbox rows sent"))?;
        Ok(seqs.len())
    }

    /// Publishes until the outbox is empty or an attempt fails (used on shutdown).
    pub async fn flush(&self, bus: &dyn Bus) -> Result<()> {
        while self.relay_once(bus).await? > 0 {}
        Ok(())
    }

    /// Runs the relay until `shutdown`, then flushes what is left (best effort).
    pub async fn run(self, bus: Arc<dyn Bus>, shutdown: CancellationToken) {
        let service = self.db.service().to_string();
        let mut leader = match self.lead(&shutdown).await {
            Some(l) => l,
            None => return,
        };
        let mut backoff = Duration::from_millis(100);
        let poll = Duration::from_millis(self.config.poll_interval_ms);
        while !shutdown.is_cancelled() {
            match self.relay_batch(bus.as_ref(), leader.as_mut()).await {
                Ok(0) => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(poll) => {}
                    }
                }
                Ok(n) => {
                    backoff = Duration::from_millis(100);
                    tracing::debug!(service, n, "outbox relayed");
                }
                Err(e) => {
                    tracing::warn!(service, error = %e, "outbox relay failed; retrying in {backoff:?}");
                    if let Some(conn) = leader.as_mut()
                        && !still_alive(conn).await
                    {
                        tracing::warn!(
                            service,
                            "the outbox lock's connection ended; relaying again once this replica leads"
                        );
                        leader = match self.lead(&shutdown).await {
                            Some(l) => l,
                            None => return,
                        };
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), self.flush(bus.as_ref())).await {
            Ok(Ok(())) => tracing::info!(service, "outbox flushed"),
            Ok(Err(e)) => tracing::warn!(service, error = %e, "outbox not flushed; rows are kept for the next start"),
            Err(_) => tracing::warn!(service, "outbox flush timed out; rows are kept for the next start"),
        }
    }

    /// Becomes the only active relay for this service (Postgres), holding the returned
    /// connection for as long as the relay runs. SQLite files have one writer process.
    async fn lead(&self, shutdown: &CancellationToken) -> Option<Option<PoolConnection<Any>>> {
        if self.db.backend().single_writer() {
            return Some(None);
        }
        let key = format!("sharedcare.outbox.{}", self.db.service());
        loop {
            let attempt = async {
                let mut conn = self.db.pool().acquire().await?;
                // Keepalives on the lock's session: Postgres ends it, and so frees the lock for
                // another replica, about 11 s after this replica stops answering (a partition, a
                // lost node) instead of the system's default two hours.
                let row = sqlx::query(
                    "SELECT pg_try_advisory_lock(hashtext($1)::bigint), \
                     set_config('tcp_keepalives_idle', '5', false), \
                     set_config('tcp_keepalives_interval', '2', false), \
                     set_config('tcp_keepalives_count', '3', false)",
                )
                .bind(&key)
                .fetch_one(&mut *conn)
                .await?;
                Ok::<_, sqlx::Error>(row.try_get::<bool, _>(0)?.then_some(conn))
            };
            match attempt.await {
                Ok(Some(conn)) => return Some(Some(conn)),
                Ok(None) => tracing::debug!(key, "another replica relays this outbox"),
                Err(e) => tracing::warn!(key, error = %e, "cannot take the outbox lock"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
}

/// Whether the relay's lock connection still answers (within 5 s).
async fn still_alive(conn: &mut PoolConnection<Any>) -> bool {
    let ping = sqlx::query("SELECT 1").execute(&mut **conn);
    matches!(tokio::time::timeout(Duration::from_secs(5), ping).await, Ok(Ok(_)))
}

/// The trace context inside an encoded envelope (for the Kafka header).
fn traceparent_of(payload: &[u8]) -> String {
    <Envelope as prost::Message>::decode(payload)
        .map(|e| e.traceparent)
        .unwrap_or_default()
}

/// Writes queued [`Outbox::record`] events, as many per transaction as are waiting.
async fn group_commit(db: Db, wake: Arc<Notify>, mut rx: mpsc::Receiver<Pending>) {
    while let Some(batch) = crate::batch::next_batch(&mut rx, GROUP_COMMIT_MAX).await {
        let written = async {
            let mut tx = db.begin_write().await?;
            let mut keys: Vec<&str> = batch.iter().map(|(_, e, _)| e.key.as_str()).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                lock_key(&mut tx, key).await?;
            }
            let events: Vec<(&str, &Envelope)> = batch.iter().map(|(t, e, _)| (t.as_str(), e)).collect();
            enqueue_all(&mut tx, &events).await?;
            tx.commit().await
        }
        .await
        .map_err(Arc::new);
        if written.is_ok() {
            wake.notify_one();
        }
        for (_, _, reply) in batch {
            let _ = reply.send(written.clone());
        }
    }
}
