//! Patient merges as every service that derives state from records keeps them: a `merges`
//! table of (`nhs_number`, `survivor`), kept flat (a survivor is never itself merged), filled
//! from `RecordChanged.merged_into` / `RecordState.merged_into`. Each service reads its groups
//! in a statement it already runs (rows of survivor and merged number, see [`assemble`]) and
//! decides what a group means for it (consent: the facts of all; audit and the passport: the
//! entries of all).

use std::collections::HashMap;

use crate::db::Tx;

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
