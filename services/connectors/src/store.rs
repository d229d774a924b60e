//! The connectors' own table: each message a sender delivered, with the ACK it got, so that a
//! resend of the same control id is answered the same way and changes nothing, and the raw
//! message is there for its retention period.

use sharedcare_kit::db::Db;
use sqlx::Row;

/// A message as received and answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The configured sender (`application@facility`).
    pub sender: String,
    /// MSH-10.
    pub control_id: String,
    /// When it arrived (µs since the epoch).
    pub received_at: i64,
    /// `TYPE^EVENT`.
    pub message_type: String,
    /// The patient's NHS number, when the message named a valid one.
    pub nhs_number: String,
    /// `AA`, `AE` or `AR`.
    pub ack_code: String,
    /// The ACK sent.
    pub ack: String,
    /// `Type/id` of each resource written, comma-separated.
    pub produced: String,
    /// The message as received.
    pub raw: String,
}

/// The message store.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// The store in `db`.
    pub fn new(db: Db) -> Store {
        Store { db }
    }

    /// The ACK a message from `sender` with `control_id` already got, if it came before.
    pub async fn answered(&self, sender: &str, control_id: &str) -> Result<Option<String>, sqlx::Error> {
        let row = self.by_key("ack", sender, control_id).await?;
        row.map(|r| r.try_get::<String, _>(0)).transpose()
    }

    /// `columns` of the message from `sender` with `control_id`, if there is one.
    async fn by_key(
        &self,
        columns: &str,
        sender: &str,
        control_id: &str,
    ) -> Result<Option<sqlx::any::AnyRow>, sqlx::Error> {
        let b = self.db.backend();
        let sql = format!(
            "SELECT {columns} FROM hl7_messages WHERE sender = {} AND control_id = {}",
            b.placeholder(1),
            b.placeholder(2)
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(sender.to_string())
            .bind(control_id.to_string())
            .fetch_optional(self.db.pool())
            .await
    }

    /// Records `r` and returns the ACK on record for its sender and control id: `r.ack`, or
    /// the one a concurrent delivery of the same message recorded first.
    pub async fn record(&self, r: &Received) -> Result<String, sqlx::Error> {
        self.record_with_numbers(r, "", &[]).await
    }

    /// [`Store::record`], and when `r` was applied (AA, with an NHS number), the local patient
    /// numbers `local` of organisation `ods` it named, each with `r`'s NHS number, in the same
    /// transaction.
    pub async fn record_with_numbers(&self, r: &Received, ods: &str, local: &[String]) -> Result<String, sqlx::Error> {
        let backend = self.db.backend();
        let mut tx = self.db.begin_write().await?;
        let sql = backend.insert_rows(
            "hl7_messages (sender, control_id, received_at, message_type, nhs_number, ack_code, ack, produced, raw)",
            9,
            1,
            "ON CONFLICT (sender, control_id) DO NOTHING",
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(r.sender.clone())
            .bind(r.control_id.clone())
            .bind(r.received_at)
            .bind(r.message_type.clone())
            .bind(r.nhs_number.clone())
            .bind(r.ack_code.clone())
            .bind(r.ack.clone())
            .bind(r.produced.clone())
            .bind(r.raw.clone())
            .execute(&mut *tx)
            .await?;
        let applied = r.ack_code == "AA" && !r.nhs_number.is_empty() && !ods.is_empty();
        let mut local: Vec<&String> = local.iter().filter(|l| !l.is_empty() && applied).collect();
        local.sort_unstable();
        local.dedup();
        for chunk in local.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let sql = backend.insert_rows(
                "patient_numbers (ods, local_id, nhs_number, updated_at)",
                4,
                chunk.len(),
                "ON CONFLICT (ods, local_id) DO UPDATE SET nhs_number = excluded.nhs_number, \
                 updated_at = excluded.updated_at",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for l in chunk {
                q = q
                    .bind(ods.to_string())
                    .bind((*l).clone())
                    .bind(r.nhs_number.clone())
                    .bind(r.received_at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(self
            .answered(&r.sender, &r.control_id)
            .await?
            .unwrap_or_else(|| r.ack.clone()))
    }

    /// The NHS number each of `local` (patient numbers of organisation `ods`) was last sent
    /// with in an applied message; numbers never seen are absent.
    pub async fn nhs_numbers_of(
        &self,
        ods: &str,
        local: &[String],
    ) -> Result<std::collections::HashMap<String, String>, sqlx::Error> {
        let mut out = std::collections::HashMap::new();
        let b = self.db.backend();
        for chunk in local.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let sql = format!(
                "SELECT local_id, nhs_number FROM patient_numbers WHERE ods = {} AND local_id IN ({})",
                b.placeholder(1),
                b.marks(2, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(ods.to_string());
            for l in chunk {
                q = q.bind(l.clone());
            }
            for row in q.fetch_all(self.db.pool()).await? {
                out.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
            }
        }
        Ok(out)
    }

    /// The message on record for `sender` and `control_id`.
    pub async fn get(&self, sender: &str, control_id: &str) -> Result<Option<Received>, sqlx::Error> {
        let columns = "sender, control_id, received_at, message_type, nhs_number, ack_code, ack, produced, raw";
        let row = self.by_key(columns, sender, control_id).await?;
        row.map(|r| {
            Ok(Received {
                sender: r.try_get(0)?,
                control_id: r.try_get(1)?,
                received_at: r.try_get(2)?,
                message_type: r.try_get(3)?,
                nhs_number: r.try_get(4)?,
                ack_code: r.try_get(5)?,
                ack: r.try_get(6)?,
                produced: r.try_get(7)?,
                raw: r.try_get(8)?,
            })
        })
        .transpose()
    }

    /// Forgets messages received before `cutoff_us`; returns how many.
    pub async fn forget_before(&self, cutoff_us: i64) -> Result<u64, sqlx::Error> {
        let sql = format!(
            "DELETE FROM hl7_messages WHERE received_at < {}",
            self.db.backend().placeholder(1)
        );
        let done = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(cutoff_us)
            .execute(self.db.writer())
            .await?;
        Ok(done.rows_affected())
    }
}
