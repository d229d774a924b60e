//! The `entries` table: append (idempotent by event id, with the consumer's inbox claim in
//! the same transaction) and list by patient.

use sharedcare_kit::bus::Delivery;
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::inbox;
use sharedcare_proto::audit::v1::AuditEntry;
use sharedcare_proto::events::v1::AccessRecorded;
use sqlx::Row;

use crate::{AuditError, NAME};

/// The audit store.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

impl Store {
    /// The store on `db`.
    pub fn new(db: Db) -> Self {
        Store { db }
    }

    /// Appends `event` delivered as `delivery`; a redelivered event is skipped. Returns whether
    /// it was appended.
    pub async fn append(&self, delivery: &Delivery, event: &AccessRecorded) -> Result<bool, AuditError> {
        Ok(self.append_all(&[(delivery, event.clone())]).await? == 1)
    }

    /// Appends a batch in one transaction, skipping events this consumer already applied
    /// (its inbox claim commits with the entry). Returns how many were new.
    pub async fn append_all(&self, events: &[(&Delivery, AccessRecorded)]) -> Result<usize, AuditError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin_write().await?;
        let mut appended = 0;
        for chunk in events.chunks(db::MAX_ROWS_PER_INSERT) {
            let deliveries: Vec<&Delivery> = chunk.iter().map(|(d, _)| *d).collect();
            let fresh = inbox::claim_all(&mut tx, NAME, &deliveries).await?;
            let new: Vec<&(&Delivery, AccessRecorded)> =
                chunk.iter().filter(|(d, _)| fresh.contains(&d.envelope.id)).collect();
            if new.is_empty() {
                continue;
            }
            let sql = db::insert_rows(
                &tx,
                "entries (event_id, nhs_number, actor, actor_organisation, actor_role, action, resources, \
                 purpose, reason, outcome, time_us, trace_id, service)",
                13,
                new.len(),
                "",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (delivery, event) in &new {
                let resources = serde_json::to_string(&event.resources).unwrap_or_else(|_| "[]".into());
                let time = event.time.as_ref().map(db::micros).unwrap_or_else(db::now_us);
                q = q
                    .bind(delivery.envelope.id.clone())
                    .bind(event.nhs_number.clone())
                    .bind(event.actor.clone())
                    .bind(event.actor_organisation.clone())
                    .bind(event.actor_role.clone())
                    .bind(event.action.clone())
                    .bind(resources)
                    .bind(event.purpose.clone())
                    .bind(event.reason.clone())
                    .bind(event.outcome.clone())
                    .bind(time)
                    .bind(event.trace_id.clone())
                    .bind(event.service.clone());
            }
            q.execute(&mut *tx).await?;
            appended += new.len();
        }
        tx.commit().await?;
        Ok(appended)
    }

    /// Entries for `nhs_number` with sequence below `before` (0 = newest), newest first.
    pub async fn list_by_patient(
        &self,
        nhs_number: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let before = if before <= 0 { i64::MAX } else { before };
        let rows = sqlx::query(
            "SELECT sequence, event_id, actor, actor_organisation, actor_role, action, resources, nhs_number,
                    purpose, reason, outcome, time_us, trace_id, service
             FROM entries WHERE nhs_number = $1 AND sequence < $2 ORDER BY sequence DESC LIMIT $3",
        )
        .bind(nhs_number)
        .bind(before)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| AuditEntry {
                sequence: r.get::<i64, _>(0) as u64,
                event_id: r.get(1),
                actor: r.get(2),
                actor_organisation: r.get(3),
                actor_role: r.get(4),
                action: r.get(5),
                resources: serde_json::from_str(&r.get::<String, _>(6)).unwrap_or_default(),
                nhs_number: r.get(7),
                purpose: r.get(8),
                reason: r.get(9),
                outcome: r.get(10),
                time: Some(db::timestamp(r.get(11))),
                trace_id: r.get(12),
                service: r.get(13),
            })
            .collect())
    }
}
