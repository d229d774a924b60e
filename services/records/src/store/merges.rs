//! Patient merges: an NHS number merged into another (the survivor) by a Patient written with
//! a `replaced-by` link. Everything held under a merged number stays under it (so consent
//! decides each resource as its own person until it has heard of the merge), and is found
//! through the survivor: a search of either person's data covers the whole group.

use std::collections::HashMap;

use sharedcare_kit::db::Tx;
use sharedcare_kit::edge::Refuse;
use sqlx::Row;

use super::Engine;
use crate::RecordsError;
use crate::fhir::Resource;

/// The `resource_type` a merge row carries in [`Engine::versions_and_merges`]' statement (no
/// resource type starts with `#`).
const MERGE: &str = "#merge";

/// What the record holds about a merged NHS number.
#[derive(Clone, Debug)]
pub(super) struct Merged {
    pub(super) survivor: String,
    pub(super) survivor_patient: String,
}

/// A merge a batch makes: `nhs_number` into `survivor` (whose Patient is `survivor_patient`).
pub(super) struct Merge<'a> {
    pub(super) nhs_number: &'a str,
    pub(super) survivor: &'a str,
    pub(super) survivor_patient: &'a str,
}

impl Engine {
    /// The merges recorded for each of `numbers` that has been merged.
    pub(super) async fn merged(
        &self,
        conn: &mut sqlx::AnyConnection,
        numbers: &[&str],
    ) -> Result<HashMap<String, Merged>, RecordsError> {
        let mut numbers: Vec<&str> = numbers.iter().copied().filter(|n| !n.is_empty()).collect();
        numbers.sort_unstable();
        numbers.dedup();
        let mut out = HashMap::new();
        for chunk in numbers.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let sql = format!(
                "SELECT nhs_number, survivor, survivor_patient FROM merges WHERE nhs_number IN ({})",
                self.db.backend().marks(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for n in chunk {
                q = q.bind(n.to_string());
            }
            for row in q.fetch_all(&mut *conn).await? {
                out.insert(
                    row.try_get::<String, _>(0)?,
                    Merged {
                        survivor: row.try_get(1)?,
                        survivor_patient: row.try_get(2)?,
                    },
                );
            }
        }
        Ok(out)
    }

    /// The newest stored version of each resource in `jobs` (as `current_versions`), and in
    /// the same statement the merges recorded for the NHS numbers of its Patients.
    pub(super) async fn versions_and_merges(
        &self,
        conn: &mut sqlx::AnyConnection,
        jobs: &[super::PutJob],
    ) -> Result<(HashMap<(String, String), i64>, HashMap<String, Merged>), RecordsError> {
        let mut versions = HashMap::new();
        let mut merged = HashMap::new();
        let backend = self.db.backend();
        for chunk in jobs.chunks(sharedcare_kit::db::MAX_ROWS_PER_INSERT) {
            let mut numbers: Vec<String> = chunk
                .iter()
                .filter_map(|j| j.resource.nhs_number.as_ref().map(|n| n.to_string()))
                .collect();
            numbers.sort_unstable();
            numbers.dedup();
            let mut sql = format!(
                "SELECT resource_type, id, MAX(version), '', '' FROM resources WHERE {} GROUP BY resource_type, id",
                self.any_of("", chunk.len())
            );
            if !numbers.is_empty() {
                sql.push_str(&format!(
                    " UNION ALL SELECT '{MERGE}', nhs_number, 0, survivor, survivor_patient FROM merges WHERE nhs_number IN ({})",
                    backend.marks(2 * chunk.len() + 1, numbers.len())
                ));
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for job in chunk {
                q = q.bind(job.resource.resource_type.clone()).bind(job.resource.id.clone());
            }
            for n in numbers {
                q = q.bind(n);
            }
            for row in q.fetch_all(&mut *conn).await? {
                let (kind, key): (String, String) = (row.try_get(0)?, row.try_get(1)?);
                if kind == MERGE {
                    let m = Merged {
                        survivor: row.try_get(3)?,
                        survivor_patient: row.try_get(4)?,
                    };
                    merged.insert(key, m);
                } else {
                    versions.insert((kind, key), row.try_get::<i64, _>(2)?);
                }
            }
        }
        Ok((versions, merged))
    }

    /// The person `nhs` belongs to, as every NHS number held for them: the survivor first, then
    /// the numbers merged into it. An NHS number never merged is a group of one.
    pub(super) async fn group(&self, nhs: &str) -> Result<Vec<String>, RecordsError> {
        let sql = "SELECT $1, g.survivor, g.nhs_number FROM (SELECT 1) one LEFT JOIN merges g \
                   ON g.survivor = COALESCE((SELECT m.survivor FROM merges m WHERE m.nhs_number = $2), $3) \
                   ORDER BY g.nhs_number";
        let q = sqlx::query(sql)
            .bind(nhs.to_string())
            .bind(nhs.to_string())
            .bind(nhs.to_string());
        Ok(self
            .group_of(q)
            .await?
            .map(|(_, g)| g)
            .unwrap_or_else(|| vec![nhs.to_string()]))
    }

    /// The NHS number of the Patient `id` and its person (see [`Engine::group`]), in one
    /// statement; `None` when the record holds no such Patient.
    pub(super) async fn group_of_patient(&self, id: &str) -> Result<Option<(String, Vec<String>)>, RecordsError> {
        let sql = "SELECT p.nhs_number, g.survivor, g.nhs_number FROM patients p LEFT JOIN merges g \
                   ON g.survivor = COALESCE((SELECT m.survivor FROM merges m WHERE m.nhs_number = p.nhs_number), p.nhs_number) \
                   WHERE p.id = $1 ORDER BY g.nhs_number";
        self.group_of(sqlx::query(sql).bind(id.to_string())).await
    }

    /// Rows of (asked number, survivor or NULL, merged number or NULL) as the asked number
    /// and its group; `None` without rows.
    async fn group_of<'q>(
        &self,
        q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ) -> Result<Option<(String, Vec<String>)>, RecordsError> {
        let rows = q
            .fetch_all(self.db.pool())
            .await
            .map_err(|e| RecordsError::Unavailable(e.to_string()))?;
        let mut out: Vec<String> = Vec::with_capacity(rows.len() + 1);
        for row in &rows {
            match (
                row.try_get::<Option<String>, _>(1)?,
                row.try_get::<Option<String>, _>(2)?,
            ) {
                (Some(survivor), Some(merged)) => {
                    if out.is_empty() {
                        out.push(survivor);
                    }
                    out.push(merged);
                }
                _ => out.push(row.try_get::<String, _>(0)?),
            }
        }
        let asked = match rows.first() {
            Some(row) => row.try_get::<String, _>(0)?,
            None => return Ok(None),
        };
        Ok(Some((asked, out)))
    }
}

/// Why a Patient put cannot be applied as written, given the merges already recorded: a
/// `replaced-by` link to a Patient the record does not hold, to one of the same person or to
/// one that was itself merged; a merged number merged again elsewhere; or a Patient of a merged
/// number written without its link (an unmerge, which is refused: see the README).
pub(super) fn check(
    r: &Resource,
    nhs: &str,
    survivor: Option<&str>,
    merged: &HashMap<String, Merged>,
) -> Result<(), RecordsError> {
    let field = || format!("link[{}].other.reference", replaced_by_index(r));
    match (&r.replaced_by, survivor) {
        (Some(id), None) => Err(RecordsError::invalid(
            field(),
            format!("Patient/{id} is not in the shared care record; write the surviving Patient first"),
        )),
        (Some(id), Some(s)) if s == nhs => Err(RecordsError::invalid(
            field(),
            format!("Patient/{id} has the same NHS number ({nhs}): a merge joins two NHS numbers"),
        )),
        (Some(id), Some(s)) => {
            if let Some(m) = merged.get(s) {
                return Err(RecordsError::invalid(
                    field(),
                    format!(
                        "Patient/{id} (NHS number {s}) was itself merged into NHS number {} (Patient/{}): link to the survivor",
                        m.survivor, m.survivor_patient
                    ),
                ));
            }
            match merged.get(nhs) {
                Some(m) if m.survivor != s => Err(RecordsError::invalid(
                    field(),
                    format!(
                        "NHS number {nhs} was already merged into NHS number {} (Patient/{}); a merged record is not merged again elsewhere, nor unmerged",
                        m.survivor, m.survivor_patient
                    ),
                )),
                _ => Ok(()),
            }
        }
        (None, _) => match merged.get(nhs) {
            Some(m) => Err(RecordsError::invalid(
                "link",
                format!(
                    "NHS number {nhs} was merged into NHS number {} (Patient/{}): write to the surviving Patient; \
                     an unmerge (HL7 v2 A37, or a Patient written without its replaced-by link) is not supported",
                    m.survivor, m.survivor_patient
                ),
            )),
            None => Ok(()),
        },
    }
}

fn replaced_by_index(r: &Resource) -> usize {
    r.body
        .get("link")
        .and_then(|l| l.as_array())
        .and_then(|links| {
            links
                .iter()
                .position(|l| l.get("type").and_then(|t| t.as_str()) == Some("replaced-by"))
        })
        .unwrap_or(0)
}

/// Records `merges` in `tx`, keeping the table flat: numbers already merged into a number now
/// merged move to its survivor.
pub(super) async fn record(tx: &mut Tx, merges: &[Merge<'_>], now_us: i64) -> Result<(), RecordsError> {
    for m in merges {
        sqlx::query("UPDATE merges SET survivor = $1, survivor_patient = $2 WHERE survivor = $3")
            .bind(m.survivor.to_string())
            .bind(m.survivor_patient.to_string())
            .bind(m.nhs_number.to_string())
            .execute(&mut **tx)
            .await?;
        sqlx::query(
            "INSERT INTO merges (nhs_number, survivor, survivor_patient, merged_us) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (nhs_number) DO UPDATE SET survivor = excluded.survivor, survivor_patient = excluded.survivor_patient",
        )
        .bind(m.nhs_number.to_string())
        .bind(m.survivor.to_string())
        .bind(m.survivor_patient.to_string())
        .bind(now_us)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Adds a `replaced-by` link to the survivor's Patient to a stored Patient of a merged number
/// that has none (a writer other than the one that merged it holds its own copy).
pub(super) fn point_to(s: &mut super::Stored, survivor_patient: &str) {
    let Ok(serde_json::Value::Object(mut body)) = serde_json::from_str::<serde_json::Value>(&s.body) else {
        return;
    };
    let links = body
        .entry("link")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    let serde_json::Value::Array(links) = links else {
        return;
    };
    if links
        .iter()
        .any(|l| l.get("type").and_then(serde_json::Value::as_str) == Some("replaced-by"))
    {
        return;
    }
    links.push(serde_json::json!({
        "other": {"reference": format!("Patient/{survivor_patient}")},
        "type": "replaced-by",
    }));
    s.body = serde_json::Value::Object(body).to_string();
}
