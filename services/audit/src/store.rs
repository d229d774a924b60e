//! The `entries` table: append (idempotent by event id, with the consumer's inbox claim in
//! the same transaction) and list by patient.

use sharedcare_kit::bus::Delivery;
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::inbox;
use sharedcare_kit::sealing::{SealError, Sealer};
use sharedcare_proto::audit::v1::{Alert, AuditEntry};
use sharedcare_proto::events::v1::{AccessRecorded, AuditAlert};
use sqlx::Row;

use crate::tiles::{self, TileId, Tiles};
use crate::{AuditError, NAME, merkle};

/// The advisory lock appenders hold, so each entry gets the next dense leaf index.
const LOG_LOCK: &str = "sharedcare-audit-log";

/// A signed tree head as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredHead {
    /// Tree size.
    pub size: i64,
    /// Root, lower-case hex.
    pub root: String,
    /// When signed (µs).
    pub timestamp_us: i64,
    /// Ed25519 signature over [`crate::log::signed_bytes`], base64.
    pub signature: String,
    /// The same head as a signed checkpoint note (absent for heads signed before checkpoints,
    /// until the service next starts).
    pub checkpoint: Option<String>,
}

/// When appending raises an alert for one person viewing many patients' records.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertRules {
    /// The window (seconds) over which distinct patients are counted.
    pub window_secs: i64,
    /// Distinct patients viewed by one member of staff within the window that raise an alert.
    pub distinct_patients: i64,
}

impl Default for AlertRules {
    fn default() -> Self {
        AlertRules {
            window_secs: 600,
            distinct_patients: 50,
        }
    }
}

/// Actions that view a patient's record (counted for many-patients alerts).
const VIEWS: &[&str] = &["read", "vread", "history", "search"];

/// What a query selects.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Patient.
    pub nhs_number: String,
    /// Person or client.
    pub actor: String,
    /// Acting organisation.
    pub actor_organisation: String,
    /// Outcome.
    pub outcome: String,
    /// From (µs, inclusive).
    pub from_us: Option<i64>,
    /// To (µs, inclusive).
    pub to_us: Option<i64>,
    /// Below this sequence (0 = newest).
    pub before: i64,
    /// Most entries.
    pub limit: i64,
}

/// The audit store.
#[derive(Clone)]
pub struct Store {
    db: Db,
    rules: AlertRules,
    /// Seals the log's signing key.
    sealer: Sealer,
}

/// Where the log's key is stored, as its sealed value is bound to it.
const LOG_KEY: &str = "audit/log_keys/1";

impl Store {
    /// The store on `db`, with the default alert rules, its signing key sealed by `sealer`.
    pub fn new(db: Db, sealer: Sealer) -> Self {
        Store {
            db,
            rules: AlertRules::default(),
            sealer,
        }
    }

    /// The same store raising alerts by `rules`.
    pub fn with_rules(self, rules: AlertRules) -> Self {
        Store { rules, ..self }
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
        // One appender at a time gives each entry the next dense leaf index (Postgres: an
        // advisory lock; SQLite has one writer).
        sharedcare_kit::outbox::lock_key(&mut tx, LOG_LOCK).await?;
        let (mut next, tiled) = catch_up(&mut tx).await?;
        if tiled > next as u64 {
            return Err(AuditError::Corrupt(format!(
                "the tree holds {tiled} leaves but the entries table only {next}: entries were removed; \
                 nothing is appended until `sharedcare audit verify` has been run and the log restored"
            )));
        }
        let start = next as u64;
        let mut appended = 0;
        let mut added: Vec<AuditEntry> = Vec::new();
        let mut leaves: Vec<merkle::Hash> = Vec::new();
        for chunk in events.chunks(db::MAX_ROWS_PER_INSERT) {
            let deliveries: Vec<&Delivery> = chunk.iter().map(|(d, _)| *d).collect();
            let new: Vec<&(&Delivery, AccessRecorded)> = inbox::claim_fresh(&mut tx, NAME, &deliveries)
                .await?
                .into_iter()
                .filter_map(|i| chunk.get(i))
                .collect();
            if new.is_empty() {
                continue;
            }
            let sql = tx.backend().insert_rows(
                "entries (event_id, nhs_number, actor, actor_organisation, actor_role, action, resources, \
                 purpose, reason, outcome, time_us, trace_id, service, leaf_index)",
                14,
                new.len(),
                "",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (delivery, event) in &new {
                let resources = serde_json::to_string(&event.resources).unwrap_or_else(|_| "[]".into());
                let time = event.time.as_ref().map(db::micros).unwrap_or_else(db::now_us);
                let entry = AuditEntry {
                    event_id: delivery.envelope.id.clone(),
                    nhs_number: event.nhs_number.clone(),
                    actor: event.actor.clone(),
                    actor_organisation: event.actor_organisation.clone(),
                    actor_role: event.actor_role.clone(),
                    action: event.action.clone(),
                    resources: event.resources.clone(),
                    purpose: event.purpose.clone(),
                    reason: event.reason.clone(),
                    outcome: event.outcome.clone(),
                    time: Some(db::timestamp(time)),
                    trace_id: event.trace_id.clone(),
                    service: event.service.clone(),
                    leaf_index: next as u64,
                    sequence: 0,
                };
                leaves.push(merkle::leaf_hash(crate::leaf::leaf_data(&entry).as_bytes()));
                added.push(entry.clone());
                next += 1;
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
                    .bind(event.service.clone())
                    .bind(entry.leaf_index as i64);
            }
            q.execute(&mut *tx).await?;
            appended += new.len();
        }
        extend_tiles(&mut tx, start, &leaves).await?;
        self.raise_alerts(&mut tx, &added).await?;
        tx.commit().await?;
        Ok(appended)
    }

    /// Raises the alerts `added` calls for, in the appending transaction: each stored once (by
    /// id) with its `AuditAlert` event in the outbox. Break-glass and denied access alert per
    /// entry; a member of staff who has viewed `distinct_patients` patients within
    /// `window_secs` raises one alert per window.
    async fn raise_alerts(&self, tx: &mut db::Tx, added: &[AuditEntry]) -> Result<(), AuditError> {
        let mut alerts: Vec<Alert> = Vec::new();
        let alert = |id: String, kind: &str, e: &AuditEntry, nhs: &str, detail: String| Alert {
            id,
            kind: kind.into(),
            actor: e.actor.clone(),
            actor_organisation: e.actor_organisation.clone(),
            nhs_number: nhs.to_string(),
            detail,
            time: e.time,
            leaf_index: e.leaf_index,
        };
        for e in added {
            let what = e.resources.join(", ");
            if e.outcome == "denied" {
                let detail = format!("{} of {what} denied: {}", e.action, e.reason);
                alerts.push(alert(
                    format!("access-denied:{}", e.event_id),
                    "access-denied",
                    e,
                    &e.nhs_number,
                    detail,
                ));
            }
            if e.action == "break-glass" || (e.purpose == "BTG" && e.action == "read" && e.outcome == "success") {
                let id = if e.action == "break-glass" {
                    format!("break-glass:{}", e.event_id)
                } else {
                    // Reads under a grant: one alert per person, patient and day.
                    let day = e.time.as_ref().map(db::micros).unwrap_or(0) / 86_400_000_000;
                    format!("break-glass-read:{}:{}:{day}", e.actor, e.nhs_number)
                };
                alerts.push(alert(
                    id,
                    "break-glass",
                    e,
                    &e.nhs_number,
                    format!("{}: {}", e.action, e.reason),
                ));
            }
        }
        // Staff (entries with a role) who viewed records in this batch, latest entry each.
        let mut viewers: std::collections::HashMap<&str, &AuditEntry> = std::collections::HashMap::new();
        for e in added
            .iter()
            .filter(|e| !e.actor_role.is_empty() && VIEWS.contains(&e.action.as_str()))
        {
            viewers.insert(e.actor.as_str(), e);
        }
        let window_us = self.rules.window_secs.max(1) * 1_000_000;
        for (actor, e) in viewers {
            let at = e.time.as_ref().map(db::micros).unwrap_or(0);
            let count: i64 = sqlx::query(
                "SELECT COUNT(DISTINCT nhs_number) FROM entries WHERE actor = $1 AND time_us >= $2 \
                 AND nhs_number <> '' AND action IN ('read', 'vread', 'history', 'search')",
            )
            .bind(actor.to_string())
            .bind(at - window_us)
            .fetch_one(&mut **tx)
            .await?
            .try_get(0)?;
            if count >= self.rules.distinct_patients {
                let detail = format!(
                    "{count} patients' records viewed within {} minutes (threshold {})",
                    self.rules.window_secs / 60,
                    self.rules.distinct_patients
                );
                let id = format!("many-patients:{actor}:{}", at / window_us);
                alerts.push(alert(id, "many-patients", e, "", detail));
            }
        }
        let topic = sharedcare_kit::bus::topic(NAME);
        for a in alerts {
            let time_us = a.time.as_ref().map(db::micros).unwrap_or_else(db::now_us);
            let inserted = sqlx::query(
                "INSERT INTO alerts (id, kind, actor, actor_organisation, nhs_number, detail, time_us, leaf_index) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
            )
            .bind(a.id.clone())
            .bind(a.kind.clone())
            .bind(a.actor.clone())
            .bind(a.actor_organisation.clone())
            .bind(a.nhs_number.clone())
            .bind(a.detail.clone())
            .bind(time_us)
            .bind(a.leaf_index as i64)
            .execute(&mut **tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                continue;
            }
            let event = AuditAlert {
                kind: a.kind.clone(),
                actor: a.actor.clone(),
                actor_organisation: a.actor_organisation.clone(),
                nhs_number: a.nhs_number.clone(),
                detail: a.detail.clone(),
                time: a.time,
                leaf_index: a.leaf_index,
            };
            let key = if a.nhs_number.is_empty() {
                a.actor.clone()
            } else {
                a.nhs_number.clone()
            };
            let env = sharedcare_kit::bus::envelope("sharedcare.events.v1.AuditAlert", NAME, &a.id, &key, &event);
            sharedcare_kit::outbox::enqueue(tx, &topic, &env).await?;
            // The detail can carry a break-glass reason's free text, and the alert's id and entry
            // an NHS number: none is logged; the leaf index leads to them for those allowed.
            tracing::warn!(kind = %a.kind, actor = %a.actor, leaf = a.leaf_index, "audit alert");
        }
        Ok(())
    }

    /// Entries matching `f`, newest first.
    pub async fn query(&self, f: &Filter) -> Result<Vec<AuditEntry>, AuditError> {
        let mut clauses: Vec<String> = Vec::new();
        let mut texts: Vec<(usize, String)> = Vec::new();
        let mut ints: Vec<(usize, i64)> = Vec::new();
        let mut n = 0;
        let mut next = || {
            n += 1;
            n
        };
        for (column, value) in [
            ("nhs_number", &f.nhs_number),
            ("actor", &f.actor),
            ("actor_organisation", &f.actor_organisation),
            ("outcome", &f.outcome),
        ] {
            if !value.is_empty() {
                let i = next();
                clauses.push(format!("{column} = ${i}"));
                texts.push((i, value.clone()));
            }
        }
        for (clause, value) in [("time_us >=", f.from_us), ("time_us <=", f.to_us)] {
            if let Some(v) = value {
                let i = next();
                clauses.push(format!("{clause} ${i}"));
                ints.push((i, v));
            }
        }
        let i = next();
        clauses.push(format!("sequence < ${i}"));
        ints.push((i, if f.before <= 0 { i64::MAX } else { f.before }));
        let limit = next();
        ints.push((limit, f.limit));
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE {} ORDER BY sequence DESC LIMIT ${limit}",
            clauses.join(" AND ")
        );
        // Bind in placeholder order.
        let mut binds: Vec<(usize, Result<String, i64>)> = texts.into_iter().map(|(i, t)| (i, Ok(t))).collect();
        binds.extend(ints.into_iter().map(|(i, v)| (i, Err(v))));
        binds.sort_by_key(|(i, _)| *i);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (_, b) in binds {
            q = match b {
                Ok(t) => q.bind(t),
                Err(v) => q.bind(v),
            };
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        Ok(rows.iter().map(entry).collect::<Result<_, _>>()?)
    }

    /// Alerts, newest first (of one organisation when given).
    pub async fn alerts(&self, organisation: &str, limit: i64) -> Result<Vec<Alert>, AuditError> {
        let rows = sqlx::query(
            "SELECT id, kind, actor, actor_organisation, nhs_number, detail, time_us, leaf_index FROM alerts \
             WHERE ($1 = '' OR actor_organisation = $2) ORDER BY time_us DESC LIMIT $3",
        )
        .bind(organisation.to_string())
        .bind(organisation.to_string())
        .bind(limit)
        .fetch_all(self.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| {
                Ok(Alert {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    actor_organisation: r.try_get(3)?,
                    nhs_number: r.try_get(4)?,
                    detail: r.try_get(5)?,
                    time: Some(db::timestamp(r.try_get(6)?)),
                    leaf_index: r.try_get::<i64, _>(7)? as u64,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Records that `merged` was merged into `survivor` (numbers merged into `merged` move to
    /// the survivor). Idempotent, so a redelivered event changes nothing.
    pub async fn merge(&self, merged: &str, survivor: &str) -> Result<(), AuditError> {
        let mut tx = self.db.begin_write().await?;
        sharedcare_kit::merges::record(&mut tx, merged, survivor).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Entries for `nhs_number`'s person (with every NHS number merged into theirs) with
    /// sequence below `before` (0 = newest), newest first.
    pub async fn list_by_patient(
        &self,
        nhs_number: &str,
        before: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, AuditError> {
        let before = if before <= 0 { i64::MAX } else { before };
        // Every NHS number of the person: the survivor and the numbers merged into it.
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE nhs_number IN ( \
                 SELECT g.nhs_number FROM merges g WHERE g.survivor = COALESCE((SELECT m.survivor FROM merges m WHERE m.nhs_number = $1), $2) \
                 UNION SELECT COALESCE((SELECT m.survivor FROM merges m WHERE m.nhs_number = $3), $4)) \
             AND sequence < $5 ORDER BY sequence DESC LIMIT $6"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(nhs_number)
            .bind(nhs_number)
            .bind(nhs_number)
            .bind(nhs_number)
            .bind(before)
            .bind(limit)
            .fetch_all(self.db.pool())
            .await?;
        Ok(rows.iter().map(entry).collect::<Result<_, _>>()?)
    }

    /// The entry at `leaf_index`.
    pub async fn entry_at(&self, leaf_index: i64) -> Result<Option<AuditEntry>, AuditError> {
        let sql = format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE leaf_index = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(leaf_index)
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.as_ref().map(entry).transpose()?)
    }

    /// The entries at `leaf_indexes` (those that exist), by leaf index.
    pub async fn entries_at(
        &self,
        leaf_indexes: &[u64],
    ) -> Result<std::collections::HashMap<u64, AuditEntry>, AuditError> {
        if leaf_indexes.is_empty() {
            return Ok(Default::default());
        }
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE leaf_index IN ({})",
            self.db.backend().marks(1, leaf_indexes.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for i in leaf_indexes {
            q = q.bind(*i as i64);
        }
        let rows = q.fetch_all(self.db.pool()).await?;
        Ok(rows
            .iter()
            .map(|r| entry(r).map(|e| (e.leaf_index, e)))
            .collect::<Result<_, _>>()?)
    }

    /// Entries with leaf index in `from..to`, in leaf order (for verification).
    pub async fn entries_between(&self, from: i64, to: i64) -> Result<Vec<AuditEntry>, AuditError> {
        entries_between(&mut *self.db.pool().acquire().await?, from, to).await
    }

    /// How many entries the `entries` table holds (its next leaf index).
    pub async fn entry_count(&self) -> Result<i64, AuditError> {
        next_leaf(&mut *self.db.pool().acquire().await?).await
    }

    /// How many leaves the tree (its tiles) holds.
    pub async fn size(&self) -> Result<u64, AuditError> {
        tiled_size(&mut *self.db.pool().acquire().await?).await
    }

    /// The stored tiles among `ids` (a tile not stored is absent).
    pub async fn tiles(&self, ids: &std::collections::BTreeSet<TileId>) -> Result<Tiles, AuditError> {
        read_tiles(&mut *self.db.pool().acquire().await?, ids).await
    }

    /// Up to `limit` tiles of `level` from index `from`, in order (for verification).
    pub async fn tiles_from(&self, level: u32, from: u64, limit: i64) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        tiles_from(&mut *self.db.pool().acquire().await?, level, from, limit).await
    }

    /// A consistent, read-only view of the whole log (one transaction: REPEATABLE READ on
    /// Postgres, a read transaction's snapshot on SQLite), so that `verify` on a live log
    /// sees entries, tiles and heads as of one moment.
    pub async fn snapshot(&self) -> Result<Snapshot, AuditError> {
        let mut tx = self.db.pool().begin().await?;
        if self.db.backend() == db::Backend::Postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(Snapshot { tx })
    }

    /// Converts a log stored before tiles (leaf hashes only in `entries`) into tiles, under
    /// the appenders' lock; a log already tiled is left as it is. Returns the leaves tiled.
    pub async fn convert_to_tiles(&self) -> Result<u64, AuditError> {
        let mut tx = self.db.begin_write().await?;
        sharedcare_kit::outbox::lock_key(&mut tx, LOG_LOCK).await?;
        let before = tiled_size(&mut tx).await?;
        let (_, after) = catch_up(&mut tx).await?;
        tx.commit().await?;
        Ok(after.saturating_sub(before))
    }

    /// Computes leaf hashes for entries stored before the log was a Merkle tree (those beyond
    /// the tiles with none; entries appended since tiles keep theirs only in the tiles).
    pub async fn backfill_leaf_hashes(&self) -> Result<usize, AuditError> {
        let from = self.size().await? as i64;
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM entries WHERE leaf_index >= $1 AND leaf_hash IS NULL ORDER BY leaf_index"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(from)
            .fetch_all(self.db.pool())
            .await?;
        for r in &rows {
            let e = entry(r)?;
            sqlx::query("UPDATE entries SET leaf_hash = $1 WHERE leaf_index = $2")
                .bind(hex(&merkle::leaf_hash(crate::leaf::leaf_data(&e).as_bytes())))
                .bind(e.leaf_index as i64)
                .execute(self.db.writer())
                .await?;
        }
        Ok(rows.len())
    }

    /// Signed tree heads stored before checkpoints (without one).
    pub async fn heads_without_checkpoint(&self) -> Result<Vec<StoredHead>, AuditError> {
        let rows = sqlx::query(
            "SELECT tree_size, root_hash, timestamp_us, signature, checkpoint FROM tree_heads \
             WHERE checkpoint IS NULL ORDER BY tree_size",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(stored_head).collect()
    }

    /// Up to `limit` signed tree heads larger than `after`, smallest first (for verification).
    pub async fn heads_after(&self, after: i64, limit: i64) -> Result<Vec<StoredHead>, AuditError> {
        heads_after(&mut *self.db.pool().acquire().await?, after, limit).await
    }

    /// The newest signed tree head.
    pub async fn latest_head(&self) -> Result<Option<StoredHead>, AuditError> {
        let row = sqlx::query(
            "SELECT tree_size, root_hash, timestamp_us, signature, checkpoint FROM tree_heads \
             ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(self.db.pool())
        .await?;
        row.as_ref().map(stored_head).transpose()
    }

    /// Stores the checkpoint note of the head of `size` (one signed before checkpoints).
    pub async fn set_checkpoint(&self, size: i64, note: &str) -> Result<(), AuditError> {
        sqlx::query("UPDATE tree_heads SET checkpoint = $1 WHERE tree_size = $2 AND checkpoint IS NULL")
            .bind(note.to_string())
            .bind(size)
            .execute(self.db.writer())
            .await?;
        Ok(())
    }

    /// Stores a signed tree head (a head for a size already signed is kept as it was).
    pub async fn insert_head(&self, head: &StoredHead) -> Result<(), AuditError> {
        sqlx::query(
            "INSERT INTO tree_heads (tree_size, root_hash, timestamp_us, signature, checkpoint) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(head.size)
        .bind(head.root.clone())
        .bind(head.timestamp_us)
        .bind(head.signature.clone())
        .bind(head.checkpoint.clone())
        .execute(self.db.writer())
        .await?;
        Ok(())
    }

    /// The log's signing key (PKCS#8, base64), stored on first use, sealed under the
    /// key-encryption key ([`sharedcare_kit::sealing`]).
    pub async fn log_key(&self, make: impl FnOnce() -> (String, String)) -> Result<String, AuditError> {
        self.reseal_log_key().await?;
        if let Some(stored) = self.stored_log_key().await? {
            return self.open_log_key(&stored).await;
        }
        let (pkcs8, public) = make();
        let sealed = self
            .sealer
            .seal(pkcs8.as_bytes(), LOG_KEY)
            .await
            .map_err(|e| AuditError::Corrupt(format!("sealing the log key: {e}")))?;
        sqlx::query("INSERT INTO log_keys (id, pkcs8, public_key) VALUES (1, $1, $2) ON CONFLICT DO NOTHING")
            .bind(sealed)
            .bind(public)
            .execute(self.db.writer())
            .await?;
        // Of two replicas making it at once, the first one stored wins.
        match self.stored_log_key().await? {
            Some(stored) => self.open_log_key(&stored).await,
            None => Err(AuditError::Corrupt("log_keys: the key was not kept".into())),
        }
    }

    /// Re-seals the log key when it is not sealed under the current key-encryption key (stored
    /// in the clear by an older release, or under a previous KEK): 1 if it was, else 0. Run at
    /// every start and by `sharedcare keys rewrap`.
    pub async fn reseal_log_key(&self) -> Result<u64, AuditError> {
        let Some(stored) = self.stored_log_key().await? else {
            return Ok(0);
        };
        let Some(sealed) = sharedcare_kit::sealing::reseal(self.sealer.as_ref(), &stored, LOG_KEY)
            .await
            .map_err(|e| AuditError::Corrupt(format!("log_keys.pkcs8: the log key {e}")))?
        else {
            return Ok(0);
        };
        sqlx::query("UPDATE log_keys SET pkcs8 = $1 WHERE id = 1 AND pkcs8 = $2")
            .bind(sealed)
            .bind(stored)
            .execute(self.db.writer())
            .await?;
        Ok(1)
    }

    async fn stored_log_key(&self) -> Result<Option<String>, AuditError> {
        let row = sqlx::query("SELECT pkcs8 FROM log_keys WHERE id = 1")
            .fetch_optional(self.db.writer())
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn open_log_key(&self, stored: &str) -> Result<String, AuditError> {
        let bad = |e: SealError| AuditError::Corrupt(format!("log_keys.pkcs8: the log key {e}"));
        let opened = self.sealer.open(stored, LOG_KEY).await.map_err(bad)?;
        String::from_utf8(opened).map_err(|_| bad(SealError::Corrupt(self.sealer.current())))
    }
}

fn stored_head(r: &sqlx::any::AnyRow) -> Result<StoredHead, AuditError> {
    Ok(StoredHead {
        size: r.try_get(0)?,
        root: r.try_get(1)?,
        timestamp_us: r.try_get(2)?,
        signature: r.try_get(3)?,
        checkpoint: r.try_get(4)?,
    })
}

/// The log as of one moment (see [`Store::snapshot`]): the reads `verify` makes.
pub struct Snapshot {
    tx: sqlx::Transaction<'static, sqlx::Any>,
}

impl Snapshot {
    /// How many entries the `entries` table holds (its next leaf index).
    pub async fn entry_count(&mut self) -> Result<i64, AuditError> {
        next_leaf(&mut self.tx).await
    }

    /// How many leaves the tree (its tiles) holds.
    pub async fn size(&mut self) -> Result<u64, AuditError> {
        tiled_size(&mut self.tx).await
    }

    /// Entries with leaf indexes in `from..to`, in order.
    pub async fn entries_between(&mut self, from: i64, to: i64) -> Result<Vec<AuditEntry>, AuditError> {
        entries_between(&mut self.tx, from, to).await
    }

    /// The stored tiles among `ids`.
    pub async fn tiles(&mut self, ids: &std::collections::BTreeSet<TileId>) -> Result<Tiles, AuditError> {
        read_tiles(&mut self.tx, ids).await
    }

    /// Up to `limit` tiles of `level` from index `from`, in order.
    pub async fn tiles_from(&mut self, level: u32, from: u64, limit: i64) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
        tiles_from(&mut self.tx, level, from, limit).await
    }

    /// Up to `limit` signed tree heads larger than `after`, smallest first.
    pub async fn heads_after(&mut self, after: i64, limit: i64) -> Result<Vec<StoredHead>, AuditError> {
        heads_after(&mut self.tx, after, limit).await
    }
}

async fn entries_between(conn: &mut sqlx::AnyConnection, from: i64, to: i64) -> Result<Vec<AuditEntry>, AuditError> {
    let sql =
        format!("SELECT {ENTRY_COLUMNS} FROM entries WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(from)
        .bind(to)
        .fetch_all(conn)
        .await?;
    Ok(rows.iter().map(entry).collect::<Result<_, _>>()?)
}

async fn tiles_from(
    conn: &mut sqlx::AnyConnection,
    level: u32,
    from: u64,
    limit: i64,
) -> Result<Vec<(u64, Vec<u8>)>, AuditError> {
    let rows = sqlx::query("SELECT idx, hashes FROM tiles WHERE level = $1 AND idx >= $2 ORDER BY idx LIMIT $3")
        .bind(i64::from(level))
        .bind(from as i64)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|r| Ok((r.try_get::<i64, _>(0)? as u64, r.try_get(1)?)))
        .collect()
}

async fn heads_after(conn: &mut sqlx::AnyConnection, after: i64, limit: i64) -> Result<Vec<StoredHead>, AuditError> {
    let rows = sqlx::query(
        "SELECT tree_size, root_hash, timestamp_us, signature, checkpoint FROM tree_heads \
         WHERE tree_size > $1 ORDER BY tree_size LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(conn)
    .await?;
    rows.iter().map(stored_head).collect()
}

/// The next leaf index of the `entries` table.
async fn next_leaf(conn: &mut sqlx::AnyConnection) -> Result<i64, AuditError> {
    Ok(sqlx::query("SELECT COALESCE(MAX(leaf_index) + 1, 0) FROM entries")
        .fetch_one(conn)
        .await?
        .try_get(0)?)
}

/// Leaves held by the level-0 tiles (the last tile's index and width).
async fn tiled_size(conn: &mut sqlx::AnyConnection) -> Result<u64, AuditError> {
    let row = sqlx::query("SELECT idx, length(hashes) FROM tiles WHERE level = 0 ORDER BY idx DESC LIMIT 1")
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        None => 0,
        Some(r) => r.try_get::<i64, _>(0)? as u64 * tiles::WIDTH + r.try_get::<i64, _>(1)? as u64 / 32,
    })
}

/// The tiles among `ids` that are stored.
async fn read_tiles(
    conn: &mut sqlx::AnyConnection,
    ids: &std::collections::BTreeSet<TileId>,
) -> Result<Tiles, AuditError> {
    let mut out = Tiles::default();
    if ids.is_empty() {
        return Ok(out);
    }
    let clauses: Vec<String> = (0..ids.len())
        .map(|i| format!("(level = ${} AND idx = ${})", 2 * i + 1, 2 * i + 2))
        .collect();
    let sql = format!("SELECT level, idx, hashes FROM tiles WHERE {}", clauses.join(" OR "));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for id in ids {
        q = q.bind(i64::from(id.level)).bind(id.index as i64);
    }
    for r in q.fetch_all(conn).await? {
        let id = TileId {
            level: r.try_get::<i64, _>(0)? as u32,
            index: r.try_get::<i64, _>(1)? as u64,
        };
        out.0.insert(id, r.try_get(2)?);
    }
    Ok(out)
}

/// Appends `leaves` to the tree of `size` leaves: reads its right edge, rewrites it and stores
/// any tiles completed, in the caller's transaction.
async fn extend_tiles(tx: &mut db::Tx, size: u64, leaves: &[merkle::Hash]) -> Result<(), AuditError> {
    if leaves.is_empty() {
        return Ok(());
    }
    let edge = read_tiles(tx, &tiles::right_edge(size).into_iter().collect()).await?;
    let changed = tiles::append(size, &edge, leaves).map_err(AuditError::from)?;
    for chunk in changed.chunks(db::MAX_ROWS_PER_INSERT) {
        let sql = tx.backend().insert_rows(
            "tiles (level, idx, hashes)",
            3,
            chunk.len(),
            "ON CONFLICT (level, idx) DO UPDATE SET hashes = excluded.hashes",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (id, hashes) in chunk {
            q = q.bind(i64::from(id.level)).bind(id.index as i64).bind(hashes.clone());
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Brings the tiles up to the `entries` table (a log stored before tiles keeps its leaf hashes
/// in `entries.leaf_hash`; those hashes, not recomputed ones, are what its heads signed, so an
/// entry altered before the conversion is still found by `verify`). Returns the entries' next
/// leaf index and the leaves tiled (more than the entries only if entries were removed, which
/// is left for `verify` to name). Run under the appenders' lock.
async fn catch_up(tx: &mut db::Tx) -> Result<(i64, u64), AuditError> {
    let entries = next_leaf(tx).await?;
    let mut size = tiled_size(tx).await?;
    const PAGE: i64 = 65_536;
    while (size as i64) < entries {
        let to = (size as i64 + PAGE).min(entries);
        let rows = sqlx::query(
            "SELECT leaf_index, leaf_hash FROM entries WHERE leaf_index >= $1 AND leaf_index < $2 ORDER BY leaf_index",
        )
        .bind(size as i64)
        .bind(to)
        .fetch_all(&mut **tx)
        .await?;
        let mut leaves = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let index: i64 = r.try_get(0)?;
            let hash: Option<String> = r.try_get(1)?;
            let expected = size as i64 + i as i64;
            let leaf = unhex(hash.as_deref().unwrap_or_default()).filter(|_| index == expected);
            leaves.push(leaf.ok_or_else(|| {
                AuditError::Corrupt(format!(
                    "converting to tiles: leaf {expected} is missing or has no stored leaf hash"
                ))
            })?);
        }
        if leaves.len() as i64 != to - size as i64 {
            return Err(AuditError::Corrupt(format!(
                "converting to tiles: leaves {size}..{to} are not all present"
            )));
        }
        extend_tiles(tx, size, &leaves).await?;
        size = to as u64;
    }
    Ok((entries, size))
}

const ENTRY_COLUMNS: &str = "sequence, event_id, actor, actor_organisation, actor_role, action, resources, nhs_number, \
     purpose, reason, outcome, time_us, trace_id, service, leaf_index";

fn entry(r: &sqlx::any::AnyRow) -> Result<AuditEntry, sqlx::Error> {
    Ok(AuditEntry {
        sequence: r.try_get::<i64, _>(0)? as u64,
        event_id: r.try_get(1)?,
        actor: r.try_get(2)?,
        actor_organisation: r.try_get(3)?,
        actor_role: r.try_get(4)?,
        action: r.try_get(5)?,
        resources: serde_json::from_str(&r.try_get::<String, _>(6)?).unwrap_or_default(),
        nhs_number: r.try_get(7)?,
        purpose: r.try_get(8)?,
        reason: r.try_get(9)?,
        outcome: r.try_get(10)?,
        time: Some(db::timestamp(r.try_get(11)?)),
        trace_id: r.try_get(12)?,
        service: r.try_get(13)?,
        leaf_index: r.try_get::<Option<i64>, _>(14).ok().flatten().unwrap_or(-1) as u64,
    })
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A 32-byte hash from hex.
pub fn unhex(s: &str) -> Option<merkle::Hash> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
