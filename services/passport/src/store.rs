//! The passport's read model (see `migrations/`), on Postgres and SQLite alike:
//! - `entries`: the newest version of each resource about a patient, applied from records'
//!   `RecordState` events, each event once (inbox) and an older version never over a newer one;
//! - `sharing`: each person's sharing choices and care team, the latest `SharingState` consent
//!   published (consent publishes them in commit order per person, on one partition).

use sharedcare_kit::bus::Delivery;
use sharedcare_kit::db::Db;
use sharedcare_kit::inbox;
use sharedcare_kit::nhs::NhsNumber;
use prost::Message;
use sharedcare_proto::events::v1::{RecordState, SharingState};
use sqlx::Row;

use crate::PassportError;
use crate::projection::{self, Place};

/// The passport's storage.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

/// One resource as the read model keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `resourceType`.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// The newest version applied.
    pub version: i64,
    /// `demographics` or a section's stored name.
    pub place: String,
    /// Plain words for it.
    pub summary: String,
    /// Its clinical date, or "".
    pub date: String,
    /// Its status, or "".
    pub status: String,
    /// ODS code of the writing organisation.
    pub source_organisation: String,
    /// Its security labels.
    pub labels: Vec<String>,
    /// The resource JSON.
    pub body: String,
    /// When the version was stored by records (µs since the epoch).
    pub updated_us: i64,
}

const COLUMNS: &str = "resource_type, id, version, section, summary, clinical_date, status, \
                       source_organisation, labels, body, updated_us";

impl Store {
    /// The passport's store on `db`.
    pub fn new(db: Db) -> Store {
        Store { db }
    }

    /// Applies a batch of `RecordState` events in one transaction, skipping events already
    /// applied (their inbox claim commits with the rows) and versions older than the one kept.
    /// Returns how many events were new.
    pub async fn apply(&self, events: &[(&Delivery, RecordState)]) -> Result<usize, PassportError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin_write().await?;
        let mut fresh_count = 0;
        for chunk in events.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let deliveries: Vec<&Delivery> = chunk.iter().map(|(d, _)| *d).collect();
            let fresh = inbox::claim_all(&mut tx, crate::NAME, &deliveries).await?;
            for (d, s) in chunk.iter().filter(|(d, _)| fresh.contains(&d.envelope.id)) {
                fresh_count += 1;
                let Ok(serde_json::Value::Object(body)) = serde_json::from_str(&s.resource_json) else {
                    tracing::warn!(event = %d.envelope.id, "RecordState without a JSON object; set aside");
                    continue;
                };
                let Some(p) = projection::project(&s.resource_type, &body) else {
                    continue;
                };
                let updated = s
                    .last_updated
                    .as_ref()
                    .map(sharedcare_kit::db::micros)
                    .unwrap_or_default();
                sqlx::query(
                    "INSERT INTO entries (resource_type, id, version, nhs_number, section, summary, clinical_date, \
                     status, source_organisation, labels, body, hidden, updated_us) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
                     ON CONFLICT (resource_type, id) DO UPDATE SET version = excluded.version, \
                     nhs_number = excluded.nhs_number, section = excluded.section, summary = excluded.summary, \
                     clinical_date = excluded.clinical_date, status = excluded.status, \
                     source_organisation = excluded.source_organisation, labels = excluded.labels, \
                     body = excluded.body, hidden = excluded.hidden, updated_us = excluded.updated_us \
                     WHERE entries.version < excluded.version",
                )
                .bind(s.resource_type.clone())
                .bind(s.id.clone())
                .bind(s.version)
                .bind(s.nhs_number.clone())
                .bind(p.place.as_str())
                .bind(p.summary)
                .bind(p.date)
                .bind(p.status)
                .bind(s.source_organisation.clone())
                .bind(s.labels.join(","))
                .bind(s.resource_json.clone())
                .bind(i64::from(p.hidden))
                .bind(updated)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(fresh_count)
    }

    /// Applies a batch of `SharingState` events in one transaction, each once (inbox): the
    /// last one delivered for a person replaces what was held. Returns how many were new.
    pub async fn apply_sharing(&self, events: &[(&Delivery, SharingState)]) -> Result<usize, PassportError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin_write().await?;
        let mut fresh_count = 0;
        for chunk in events.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let deliveries: Vec<&Delivery> = chunk.iter().map(|(d, _)| *d).collect();
            let fresh = inbox::claim_all(&mut tx, crate::NAME, &deliveries).await?;
            for (_, s) in chunk.iter().filter(|(d, _)| fresh.contains(&d.envelope.id)) {
                fresh_count += 1;
                let changed = s.time.as_ref().map(sharedcare_kit::db::micros).unwrap_or_default();
                sqlx::query(
                    "INSERT INTO sharing (nhs_number, state, changed_us) VALUES ($1, $2, $3) \
                     ON CONFLICT (nhs_number) DO UPDATE SET state = excluded.state, changed_us = excluded.changed_us",
                )
                .bind(s.nhs_number.clone())
                .bind(s.encode_to_vec())
                .bind(changed)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(fresh_count)
    }

    /// The sharing state held for each of `patients`, in one query.
    pub async fn sharing_many(
        &self,
        patients: &[NhsNumber],
    ) -> Result<std::collections::HashMap<String, SharingState>, PassportError> {
        let mut out = std::collections::HashMap::new();
        for chunk in patients.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let sql = format!(
                "SELECT nhs_number, state FROM sharing WHERE nhs_number IN ({})",
                self.db.backend().marks(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q.bind(p.as_str().to_string());
            }
            for r in q.fetch_all(self.db.pool()).await? {
                let nhs: String = r.try_get(0)?;
                let bytes: Vec<u8> = r.try_get(1)?;
                let state = SharingState::decode(bytes.as_slice())
                    .map_err(|e| PassportError::Corrupt(format!("sharing state for {nhs}: {e}")))?;
                out.insert(nhs, state);
            }
        }
        Ok(out)
    }

    /// What the passport holds about `patient`: entries and sharing state.
    pub async fn held(&self, patient: &NhsNumber) -> Result<Held, PassportError> {
        let mut all = self.held_many(std::slice::from_ref(patient)).await?;
        Ok(all.remove(patient.as_str()).unwrap_or_default())
    }

    /// What the passport holds about each of `patients`: two queries for the lot.
    pub async fn held_many(
        &self,
        patients: &[NhsNumber],
    ) -> Result<std::collections::HashMap<String, Held>, PassportError> {
        let mut entries = self.entries_many(patients).await?;
        let mut sharing = self.sharing_many(patients).await?;
        Ok(patients
            .iter()
            .map(|p| {
                let held = Held {
                    entries: entries.remove(p.as_str()).unwrap_or_default(),
                    sharing: sharing.remove(p.as_str()),
                };
                (p.as_str().to_string(), held)
            })
            .collect())
    }

    /// Everything shown about `patient` (demographics and every section), newest first.
    pub async fn entries(&self, patient: &NhsNumber) -> Result<Vec<Entry>, PassportError> {
        let mut all = self.entries_many(std::slice::from_ref(patient)).await?;
        Ok(all.remove(patient.as_str()).unwrap_or_default())
    }

    /// Everything shown about each of `patients`, in one query (a batch of views costs one
    /// round trip): the entries of each, newest first, under its NHS number.
    pub async fn entries_many(
        &self,
        patients: &[NhsNumber],
    ) -> Result<std::collections::HashMap<String, Vec<Entry>>, PassportError> {
        let mut out: std::collections::HashMap<String, Vec<Entry>> = std::collections::HashMap::new();
        for chunk in patients.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let sql = format!(
                "SELECT {COLUMNS}, nhs_number FROM entries WHERE nhs_number IN ({}) AND hidden = 0 \
                 ORDER BY clinical_date DESC, updated_us DESC, resource_type, id",
                self.db.backend().marks(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for p in chunk {
                q = q.bind(p.as_str().to_string());
            }
            for r in q.fetch_all(self.db.pool()).await? {
                let nhs: String = r.try_get(11)?;
                out.entry(nhs).or_default().push(entry_row(&r)?);
            }
        }
        Ok(out)
    }
}

fn entry_row(r: &sqlx::any::AnyRow) -> Result<Entry, PassportError> {
    let labels: String = r.try_get(8)?;
    Ok(Entry {
        resource_type: r.try_get(0)?,
        id: r.try_get(1)?,
        version: r.try_get(2)?,
        place: r.try_get(3)?,
        summary: r.try_get(4)?,
        date: r.try_get(5)?,
        status: r.try_get(6)?,
        source_organisation: r.try_get(7)?,
        labels: labels
            .split(',')
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect(),
        body: r.try_get(9)?,
        updated_us: r.try_get(10)?,
    })
}

/// What the read model holds about one person.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    /// Their record's entries, newest first.
    pub entries: Vec<Entry>,
    /// Their sharing choices and care team, once consent has published any.
    pub sharing: Option<SharingState>,
}

impl Held {
    /// Nothing is held about the person.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.sharing.is_none()
    }
}

/// Whether `entry` is the person's demographics.
pub fn is_demographics(entry: &Entry) -> bool {
    entry.place == Place::Demographics.as_str()
}

/// A lookup waiting for the [`Reader`], and where its entries go.
type Lookup = (
    NhsNumber,
    tokio::sync::oneshot::Sender<Result<Held, PassportError>>,
);

/// Most views whose lookups share one query.
const LOOKUPS_PER_QUERY: usize = 128;

/// Read-model lookups of concurrent views answered together: one query per batch, answered
/// before the next batch is taken, so batches grow with the load.
#[derive(Clone)]
pub struct Reader {
    waiting: tokio::sync::mpsc::Sender<Lookup>,
}

impl Reader {
    /// Reads `store` from a task under `tasks`.
    pub fn new(store: Store, tasks: &sharedcare_kit::serve::Tasks) -> Reader {
        let (waiting, mut rx) = tokio::sync::mpsc::channel::<Lookup>(LOOKUPS_PER_QUERY * 4);
        tasks.spawn(async move {
            while let Some(batch) = sharedcare_kit::batch::next_batch(&mut rx, LOOKUPS_PER_QUERY).await {
                let mut patients: Vec<NhsNumber> = batch.iter().map(|(p, _)| p.clone()).collect();
                patients.sort();
                patients.dedup();
                match store.held_many(&patients).await {
                    Ok(found) => {
                        for (p, reply) in batch {
                            let _ = reply.send(Ok(found.get(p.as_str()).cloned().unwrap_or_default()));
                        }
                    }
                    Err(e) => {
                        let why = e.to_string();
                        for (_, reply) in batch {
                            let _ = reply.send(Err(PassportError::Unavailable(why.clone())));
                        }
                    }
                }
            }
        });
        Reader { waiting }
    }

    /// What the read model holds about `patient`.
    pub async fn held(&self, patient: &NhsNumber) -> Result<Held, PassportError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let stopped = || PassportError::Unavailable("the passport is stopping".into());
        self.waiting
            .send((patient.clone(), reply))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}
