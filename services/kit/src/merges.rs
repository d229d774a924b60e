//! Patient merges as every service that derives state from records keeps them: a `merges`
//! table of (`nhs_number`, `survivor`), kept flat (a survivor is never itself merged), filled
//! from `RecordChanged.merged_into` / `RecordState.merged_into`. Each service decides what a
//! group means for it (consent: the facts of all; audit and the passport: the entries of all).

use std::collections::HashMap;

use sqlx::Row;

use crate::db::{self, Db, Tx};

/// Records in `tx` that `merged` was merged into `survivor`; numbers merged into `merged`
/// before move to `survivor`. Idempotent (an event delivered twice changes nothing).
pub async fn record(tx: &mut Tx, merged: &str, survivor: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE merges SET survivor = $1 WHERE survivor = $2")
        .bind(survivor.to_string())
        .bind(merged.to_string())
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO merges (nhs_number, survivor) VALUES ($1, $2) \
         ON CONFLICT (nhs_number) DO UPDATE SET survivor = excluded.survivor",
    )
    .bind(merged.to_string())
    .bind(survivor.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// For each of `patients` that is part of a merge: every NHS number of its person, the
/// survivor first, then the merged numbers in order. Patients never merged are left out
/// (one query per chunk of patients).
pub async fn groups(db: &Db, patients: &[&str]) -> Result<HashMap<String, Vec<String>>, sqlx::Error> {
    let mut ids: Vec<&str> = patients.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let mut by_survivor: HashMap<String, Vec<String>> = HashMap::new();
    for chunk in ids.chunks(db::MAX_ROWS_PER_INSERT) {
        let backend = db.backend();
        let sql = format!(
            "SELECT survivor, nhs_number FROM merges WHERE survivor IN ({}) \
             OR survivor IN (SELECT survivor FROM merges WHERE nhs_number IN ({}))",
            backend.marks(1, chunk.len()),
            backend.marks(chunk.len() + 1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for _ in 0..2 {
            for id in chunk {
                q = q.bind(id.to_string());
            }
        }
        for r in q.fetch_all(db.pool()).await? {
            let survivor: String = r.try_get(0)?;
            by_survivor.entry(survivor).or_default().push(r.try_get(1)?);
        }
    }
    Ok(assemble(&ids, by_survivor))
}

/// The groups of `asked` (each asked number that is part of a merge → every number of its
/// person, survivor first) from every merged number of their groups by survivor.
pub fn assemble(asked: &[&str], by_survivor: HashMap<String, Vec<String>>) -> HashMap<String, Vec<String>> {
    let mut out = HashMap::new();
    for (survivor, mut merged) in by_survivor {
        merged.sort();
        merged.dedup();
        let mut group = vec![survivor];
        group.extend(merged);
        for n in &group {
            if asked.contains(&n.as_str()) {
                out.insert(n.clone(), group.clone());
            }
        }
    }
    out
}
