//! The embedded bus: a durable, append-only log in one SQLite file (`events.db` under the
//! data directory), shared by every service running in the `sharedcare up` process.
//!
//! Each topic is one ordered log (one "partition"), so order is kept for every key. A consumer
//! group's position per topic is stored in the same file and advanced only after the handler
//! returns `Ok`, giving the same at-least-once contract as Kafka.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{Bus, Delivery, Handler, Outgoing};
use crate::{Error, Result};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS log (
    seq      INTEGER PRIMARY KEY AUTOINCREMENT,
    topic    TEXT NOT NULL,
    key      TEXT NOT NULL,
        event_id TEXT NOT NULL,
    payload  BLOB NOT NULL,
    appended_us INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS log_topic_seq ON log (topic, seq);
-- What retention may delete, by age: a prune reads only what it deletes. (Without it each
-- prune scanned the whole log holding the write lock: 8.7 s at 2 GB, every append waiting.)
CREATE INDEX IF NOT EXISTS log_prunable ON log (appended_us) WHERE topic NOT LIKE '%.state.v1';
CREATE TABLE IF NOT EXISTS positions (
    grp   TEXT NOT NULL,
    topic TEXT NOT NULL,
    seq   INTEGER NOT NULL,
    PRIMARY KEY (grp, topic)
);";

/// How many log entries a consumer reads (and hands its handler) at a time.
const FETCH: i64 = 512;

/// Rows per multi-row INSERT when appending.
const APPEND_CHUNK: usize = 200;

/// The in-process bus, durable in a SQLite file.
#[derive(Clone)]
pub struct EmbeddedBus {
    pool: SqlitePool,
    head: Arc<watch::Sender<i64>>,
    path: String,
    retention: Duration,
}

/// Default time an event stays in the embedded log (like Kafka's `retention.ms`).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Deletes what retention lets go. The condition is the partial index `log_prunable`'s, word
/// for word, so that SQLite uses it; state topics are never pruned (read models are rebuilt
/// from them).
const PRUNE: &str = "DELETE FROM log WHERE appended_us < ?1 AND topic NOT LIKE '%.state.v1'";

/// The log is pruned each time its sequence passes a multiple of this.
const PRUNE_EVERY: i64 = 10_000;

impl EmbeddedBus {
    /// Opens (creating if needed) the log at `path`.
    pub async fn open(path: &Path) -> Result<Self> {
        let what = format!("open embedded event log {}", path.display());
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(Error::db(what.clone()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(Error::db(what.clone()))?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await.map_err(Error::db(what))?;
        let (head, _) = watch::channel(0);
        Ok(EmbeddedBus {
            pool,
            head: Arc::new(head),
            path: path.display().to_string(),
            retention: DEFAULT_RETENTION,
        })
    }

    /// Keeps events for `retention` (time-based, whether or not every group has read them,
    /// as Kafka does).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Deletes events older than the retention; returns how many.
    pub async fn prune(&self) -> Result<u64> {
        let cutoff = crate::db::now_us() - i64::try_from(self.retention.as_micros()).unwrap_or(i64::MAX);
        let done = sqlx::query(PRUNE)
            .bind(cutoff)
            .execute(&self.pool)
            .await
            .map_err(Error::db("prune event log"))?;
        Ok(done.rows_affected())
    }

    async fn position(&self, group: &str, topic: &str) -> Result<i64> {
        let row = sqlx::query("SELECT seq FROM positions WHERE grp = ?1 AND topic = ?2")
            .bind(group)
            .bind(topic)
            .fetch_optional(&self.pool)
            .await
            .map_err(Error::db("read consumer position"))?;
        Ok(row.map(|r| r.try_get::<i64, _>(0)).transpose()?.unwrap_or(0))
    }

    async fn commit(&self, group: &str, topic: &str, seq: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO positions (grp, topic, seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (grp, topic) DO UPDATE SET seq = excluded.seq",
        )
        .bind(group)
        .bind(topic)
        .bind(seq)
        .execute(&self.pool)
        .await
        .map_err(Error::db("store consumer position"))?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl Bus for EmbeddedBus {
    async fn publish(&self, batch: &[Outgoing]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(Error::db("append to event log"))?;
        let now = crate::db::now_us();
        let mut last = 0;
        for chunk in batch.chunks(APPEND_CHUNK) {
            let mut q = sqlx::QueryBuilder::new("INSERT INTO log (topic, key, event_id, payload, appended_us) ");
            q.push_values(chunk, |mut row, m| {
                row.push_bind(&m.topic)
                    .push_bind(&m.key)
                    .push_bind(&m.id)
                    .push_bind(&m.payload)
                    .push_bind(now);
            });
            let r = q
                .build()
                .execute(&mut *tx)
                .await
                .map_err(Error::db("append to event log"))?;
            last = r.last_insert_rowid();
        }
        tx.commit().await.map_err(Error::db("append to event log"))?;
        self.head.send_replace(last);
        let first = last - batch.len() as i64 + 1;
        if (first - 1) / PRUNE_EVERY != last / PRUNE_EVERY {
            let pruned = self.prune().await?;
            tracing::debug!(pruned, "event log pruned");
        }
        Ok(())
    }

    async fn consume(
        &self,
        group: &str,
        topic: &str,
        handler: Arc<dyn Handler>,
        shutdown: CancellationToken,
    ) -> Result<()> {
        let mut head = self.head.subscribe();
        let mut pos = self.position(group, topic).await?;
        while !shutdown.is_cancelled() {
            let rows = sqlx::query("SELECT seq, payload FROM log WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
                .bind(topic)
                .bind(pos)
                .bind(FETCH)
                .fetch_all(&self.pool)
                .await
                .map_err(Error::db("read event log"))?;
            if rows.is_empty() {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = head.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            let mut batch = Vec::with_capacity(rows.len());
            let mut last = pos;
            for row in rows {
                let seq: i64 = row.try_get(0)?;
                let payload: Vec<u8> = row.try_get(1)?;
                last = seq;
                match super::decode(&payload, topic, seq) {
                    Ok(envelope) => batch.push(Delivery {
                        envelope,
                        topic: topic.to_string(),
                        partition: 0,
                        offset: seq,
                    }),
                    Err(e) => tracing::error!(error = %e, "skipping undecodable event"),
                }
            }
            if !super::handle_with_retry(handler.as_ref(), &batch, &shutdown).await {
                return Ok(());
            }
            self.commit(group, topic, last).await?;
            pos = last;
        }
        Ok(())
    }

    /// One partition; offsets are log sequence numbers, shared by every topic, so a topic's
    /// messages are not dense within its range.
    async fn extent(&self, topic: &str) -> Result<Vec<super::Extent>> {
        let row = sqlx::query("SELECT COALESCE(MIN(seq), 0), COALESCE(MAX(seq), -1) FROM log WHERE topic = ?1")
            .bind(topic)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("read event log extent"))?;
        let (first, last): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok(vec![super::Extent {
            partition: 0,
            first,
            next: (last + 1).max(first),
        }])
    }

    async fn lag(&self, group: &str, topic: &str) -> Result<i64> {
        let position = self.position(group, topic).await?;
        let row = sqlx::query("SELECT COUNT(*) FROM log WHERE topic = ?1 AND seq > ?2")
            .bind(topic)
            .bind(position)
            .fetch_one(&self.pool)
            .await
            .map_err(Error::db("count unconsumed events"))?;
        Ok(row.try_get(0)?)
    }

    async fn health(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(Error::db("embedded event log"))?;
        Ok(())
    }

    fn describe(&self) -> String {
        format!("embedded event log {}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_prune_reads_only_what_it_may_delete() {
        assert!(
            PRUNE.contains(&format!("'%{}'", super::super::STATE_TOPIC_SUFFIX)),
            "the prune keeps every state topic"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let bus = EmbeddedBus::open(&dir.path().join("events.db")).await.expect("open");
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {PRUNE}")))
                .bind(0i64)
                .fetch_all(&bus.pool)
                .await
                .expect("plan");
        let detail: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert_eq!(
            detail,
            ["SEARCH log USING INDEX log_prunable (appended_us<?)"],
            "not a scan of the log"
        );
    }
}
