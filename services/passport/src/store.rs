//! The passport's read model (see `migrations/`), on Postgres and SQLite alike:
//! - `entries`: the newest version of each resource about a patient, applied from records'
//!   `RecordState` events, each event once (inbox) and an older version never over a newer one
//!   (a version that deletes the resource, or enters it in error, hides it);
//! - `sharing`: each person's sharing choices and care team, the latest `SharingState` consent
//!   published (consent publishes them in commit order per person, on one partition).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use prost::Message;
use sharedcare_kit::bus::Delivery;
use sharedcare_kit::db::Db;
use sharedcare_kit::inbox;
use sharedcare_kit::nhs::NhsNumber;
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
    /// What consent's directives can name of it: its security labels, `class:{type}` and
    /// `code:{system}|{code}` for each of its codes.
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
        self.apply_once(events, async |tx, fresh| {
            // One row per resource: the newest version in the chunk (one statement may not
            // touch a row twice), written in one multi-row upsert.
            type Row<'a> = (&'a RecordState, projection::Projected, Vec<String>);
            let mut rows: std::collections::HashMap<(&str, &str), Row> = std::collections::HashMap::new();
            for (_, s) in &fresh {
                if !s.merged_into.is_empty() {
                    sharedcare_kit::merges::record(tx, &s.nhs_number, &s.merged_into).await?;
                }
            }
            for (d, s) in fresh {
                let Ok(serde_json::Value::Object(body)) = serde_json::from_str(&s.resource_json) else {
                    tracing::warn!(event = %d.envelope.id, "RecordState without a JSON object; set aside");
                    continue;
                };
                let Some(p) = projection::project(&s.resource_type, &body) else {
                    continue;
                };
                let key = (s.resource_type.as_str(), s.id.as_str());
                if rows.get(&key).is_none_or(|(held, _, _)| held.version < s.version) {
                    // What consent's directives can name: its labels, class and codes.
                    let codes = sharedcare_kit::pdp::fhir_codes(&body);
                    let categories = sharedcare_kit::pdp::categories(
                        &s.resource_type,
                        s.labels.iter().cloned(),
                        codes.iter().map(String::as_str),
                    );
                    rows.insert(key, (s, p, categories));
                }
            }
            if rows.is_empty() {
                return Ok(());
            }
            let sql = tx.backend().insert_rows(
                "entries (resource_type, id, version, nhs_number, section, summary, clinical_date, \
             status, source_organisation, labels, body, hidden, updated_us)",
                13,
                rows.len(),
                "ON CONFLICT (resource_type, id) DO UPDATE SET version = excluded.version, \
             nhs_number = excluded.nhs_number, section = excluded.section, summary = excluded.summary, \
             clinical_date = excluded.clinical_date, status = excluded.status, \
             source_organisation = excluded.source_organisation, labels = excluded.labels, \
             body = excluded.body, hidden = excluded.hidden, updated_us = excluded.updated_us \
             WHERE entries.version < excluded.version",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (s, p, categories) in rows.into_values() {
                let updated = s
                    .last_updated
                    .as_ref()
                    .map(sharedcare_kit::db::micros)
                    .unwrap_or_default();
                q = q
                    .bind(s.resource_type.clone())
                    .bind(s.id.clone())
                    .bind(s.version)
                    .bind(s.nhs_number.clone())
                    .bind(p.place.as_str())
                    .bind(p.summary)
                    .bind(p.date)
                    .bind(p.status)
                    .bind(s.source_organisation.clone())
                    .bind(categories.join(","))
                    .bind(s.resource_json.clone())
                    .bind(i64::from(p.hidden || s.deleted))
                    .bind(updated);
            }
            q.execute(&mut **tx).await?;
            Ok(())
        })
        .await
    }

    /// Applies a batch of `SharingState` events in one transaction, each once (inbox): the
    /// last one delivered for a person replaces what was held. Returns how many were new.
    pub async fn apply_sharing(&self, events: &[(&Delivery, SharingState)]) -> Result<usize, PassportError> {
        self.apply_once(events, async |tx, fresh| {
            // One row per person: the last state delivered in the chunk.
            let mut rows: std::collections::HashMap<&str, &SharingState> = std::collections::HashMap::new();
            for (_, s) in fresh {
                rows.insert(s.nhs_number.as_str(), s);
            }
            if rows.is_empty() {
                return Ok(());
            }
            let sql = tx.backend().insert_rows(
                "sharing (nhs_number, state, changed_us)",
                3,
                rows.len(),
                "ON CONFLICT (nhs_number) DO UPDATE SET state = excluded.state, changed_us = excluded.changed_us",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (nhs, s) in rows {
                let changed = s.time.as_ref().map(sharedcare_kit::db::micros).unwrap_or_default();
                q = q
                    .bind(nhs.to_string())
                    .bind(B64.encode(s.encode_to_vec()))
                    .bind(changed);
            }
            q.execute(&mut **tx).await?;
            Ok(())
        })
        .await
    }

    /// The one way events reach the passport's tables: in one transaction, a chunk at a time,
    /// each chunk's inbox claims made first and `write` given only the events not seen before,
    /// so what it stores commits with their claims. Returns how many were new.
    async fn apply_once<T>(
        &self,
        events: &[(&Delivery, T)],
        mut write: impl AsyncFnMut(&mut sharedcare_kit::db::Tx, Vec<(&Delivery, &T)>) -> Result<(), PassportError>,
    ) -> Result<usize, PassportError> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut tx = self.db.begin_write().await?;
        let mut fresh_count = 0;
        for chunk in events.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let fresh = claim(&mut tx, chunk).await?;
            fresh_count += fresh.len();
            if !fresh.is_empty() {
                write(&mut tx, fresh).await?;
            }
        }
        tx.commit().await?;
        Ok(fresh_count)
    }

    /// What the passport holds about `patient`: entries and sharing state.
    pub async fn held(&self, patient: &NhsNumber) -> Result<Held, PassportError> {
        let mut all = self.held_many(std::slice::from_ref(patient)).await?;
        Ok(all.remove(patient.as_str()).unwrap_or_default())
    }

    /// What the passport holds about each of `patients`, in one query (a batch of views costs
    /// one round trip): each one's entries, newest first, and sharing state.
    pub async fn held_many(
        &self,
        patients: &[NhsNumber],
    ) -> Result<std::collections::HashMap<String, Held>, PassportError> {
        Ok(self.held_people(patients).await?.0)
    }

    /// [`Store::held_many`], and in the same statement, for each of `patients` that is part of
    /// a merge, every NHS number of their person (survivor first; what is held about the
    /// others is not read).
    pub async fn held_people(
        &self,
        patients: &[NhsNumber],
    ) -> Result<(std::collections::HashMap<String, Held>, Groups), PassportError> {
        let mut out: std::collections::HashMap<String, Held> = std::collections::HashMap::new();
        let mut by_survivor: Groups = Groups::new();
        for chunk in patients.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let backend = self.db.backend();
            let list = |part: usize| backend.marks(part * chunk.len() + 1, chunk.len());
            // Sharing rows ride in the entries' columns: section SHARING, the state as body;
            // merges as section MERGE, the survivor as body.
            let sql = format!(
                "SELECT {COLUMNS}, nhs_number FROM entries WHERE nhs_number IN ({}) AND hidden = 0 \
                 UNION ALL SELECT '', '', 0, '{SHARING}', '', '', '', '', '', state, changed_us, nhs_number \
                 FROM sharing WHERE nhs_number IN ({}) \
                 UNION ALL SELECT '', '', 0, '{MERGE}', '', '', '', '', '', survivor, 0, nhs_number \
                 FROM merges WHERE survivor IN ({}) OR survivor IN (SELECT survivor FROM merges WHERE nhs_number IN ({})) \
                 ORDER BY 6 DESC, 11 DESC, 1, 2",
                list(0),
                list(1),
                list(2),
                list(3),
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for _ in 0..4 {
                for p in chunk {
                    q = q.bind(p.as_str().to_string());
                }
            }
            for r in q.fetch_all(self.db.pool()).await? {
                let nhs: String = r.try_get(11)?;
                let section: String = r.try_get(3)?;
                if section == MERGE {
                    by_survivor.entry(r.try_get(9)?).or_default().push(nhs);
                    continue;
                }
                let held = out.entry(nhs).or_default();
                if section == SHARING {
                    let text: String = r.try_get(9)?;
                    held.sharing = Some(decode_sharing(&text)?);
                } else {
                    held.entries.push(entry_row(&r)?);
                }
            }
        }
        let asked: Vec<&str> = patients.iter().map(NhsNumber::as_str).collect();
        Ok((out, sharedcare_kit::merges::assemble(&asked, by_survivor)))
    }

    /// Everything shown about `patient` (demographics and every section), newest first.
    pub async fn entries(&self, patient: &NhsNumber) -> Result<Vec<Entry>, PassportError> {
        Ok(self.held(patient).await?.entries)
    }
}

/// The events of `chunk` not applied before, claimed in the inbox inside `tx` (the claim
/// commits with what they change), in delivery order.
async fn claim<'a, T>(
    tx: &mut sharedcare_kit::db::Tx,
    chunk: &'a [(&'a Delivery, T)],
) -> Result<Vec<(&'a Delivery, &'a T)>, PassportError> {
    let deliveries: Vec<&Delivery> = chunk.iter().map(|(d, _)| *d).collect();
    Ok(inbox::claim_fresh(tx, crate::NAME, &deliveries)
        .await?
        .into_iter()
        .filter_map(|i| chunk.get(i))
        .map(|(d, e)| (*d, e))
        .collect())
}

/// The `section` the sharing rows of [`Store::held_many`]'s query carry.
const SHARING: &str = "#sharing";
/// The `section` the merge rows of [`Store::held_people`]'s query carry.
const MERGE: &str = "#merge";

/// Each merged patient asked about → every NHS number of their person, the survivor first.
pub type Groups = std::collections::HashMap<String, Vec<String>>;

fn decode_sharing(text: &str) -> Result<SharingState, PassportError> {
    let bytes = B64
        .decode(text)
        .map_err(|e| PassportError::Corrupt(format!("sharing state: {e}")))?;
    SharingState::decode(bytes.as_slice()).map_err(|e| PassportError::Corrupt(format!("sharing state: {e}")))
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
