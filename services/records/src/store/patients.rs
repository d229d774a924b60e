//! Finding patients by name, birth date, gender and postcode across the record: the
//! demographic index written with each Patient version, and the search over it, which shows
//! only the patients consent lets the caller see and audits what it shows.

use sharedcare_kit::access::Outcome;
use sharedcare_kit::db::{self, Tx};
use sharedcare_kit::edge::Refuse;

use super::decide::{Asks, stored_labels, verdict};
use super::search::{Bind, like_escape, stored_row};
use super::{Actor, Caller, Engine, Store, Stored, Verdict};
use crate::RecordsError;
use crate::consent;
use crate::demographics::{self, Demographics, Match, PatientQuery};

/// A Patient version to index: its id, NHS number, version and demographics.
pub(super) struct Indexed {
    pub(super) id: String,
    pub(super) nhs_number: String,
    pub(super) version: i64,
    pub(super) demographics: Demographics,
}

/// Writes the index rows of `patients` inside `tx` (the put's own transaction): the
/// `patients` row and its names, replacing what an older version left.
pub(super) async fn index(tx: &mut Tx, patients: &[Indexed]) -> Result<(), sqlx::Error> {
    for chunk in patients.chunks(db::MAX_ROWS_PER_INSERT) {
        let sql = tx.backend().insert_rows(
            "patients (id, nhs_number, birth_lo, birth_hi, gender, postcodes, indexed_version)",
            7,
            chunk.len(),
            "ON CONFLICT (id) DO UPDATE SET nhs_number = excluded.nhs_number, birth_lo = excluded.birth_lo, \
             birth_hi = excluded.birth_hi, gender = excluded.gender, postcodes = excluded.postcodes, \
             indexed_version = excluded.indexed_version",
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for p in chunk {
            let (lo, hi) = p.demographics.birth.clone().unwrap_or_default();
            q = q
                .bind(p.id.clone())
                .bind(p.nhs_number.clone())
                .bind(lo)
                .bind(hi)
                .bind(p.demographics.gender.clone())
                .bind(format!(" {} ", p.demographics.postcodes.join(" ")))
                .bind(p.version);
        }
        q.execute(&mut **tx).await?;
        let sql = format!(
            "DELETE FROM patient_names WHERE patient_id IN ({})",
            tx.backend().marks(1, chunk.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for p in chunk {
            q = q.bind(p.id.clone());
        }
        q.execute(&mut **tx).await?;
        let names: Vec<(&Indexed, &str, &str)> = chunk
            .iter()
            .flat_map(|p| {
                p.demographics
                    .names
                    .iter()
                    .map(move |(part, n)| (p, part.as_str(), n.as_str()))
            })
            .collect();
        for names in names.chunks(db::MAX_ROWS_PER_INSERT) {
            let sql = tx.backend().insert_rows(
                "patient_names (patient_id, part, folded, exact, birth_lo, birth_hi)",
                6,
                names.len(),
                "",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (p, part, name) in names {
                let (lo, hi) = p.demographics.birth.clone().unwrap_or_default();
                q = q
                    .bind(p.id.clone())
                    .bind(part.to_string())
                    .bind(demographics::fold(name))
                    .bind(name.to_string())
                    .bind(lo)
                    .bind(hi);
            }
            q.execute(&mut **tx).await?;
        }
    }
    Ok(())
}

/// The first string after every string that starts with `prefix` (for a range scan on an
/// index: `folded >= prefix AND folded < next`), or `None` when there is none.
fn after_prefix(prefix: &str) -> Option<String> {
    let mut chars: Vec<char> = prefix.chars().collect();
    while let Some(last) = chars.pop() {
        if let Some(next) = char::from_u32(last as u32 + 1) {
            chars.push(next);
            return Some(chars.into_iter().collect());
        }
    }
    None
}

/// Patients matched by a search, a page at a time.
#[derive(Debug, Clone, Default)]
pub struct Found {
    /// The current Patient resources the caller may see, by id.
    pub patients: Vec<Stored>,
    /// The id to continue after; empty on the last page.
    pub next_cursor: String,
}

impl Store {
    /// How much the record holds: (patients, current resources), deleted ones left out.
    pub async fn holdings(&self) -> Result<(i64, i64), RecordsError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(CASE WHEN resource_type = 'Patient' THEN 1 ELSE 0 END), 0), COUNT(*) \
             FROM current_resources WHERE deleted = 0",
        )
        .fetch_one(self.engine.db.pool())
        .await?;
        use sqlx::Row;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// Indexes Patients written before the index existed: their `patients` rows still have
    /// `indexed_version` 0 (every put since writes the index in its own transaction), found
    /// through an index, so a start with nothing to do costs one lookup. Returns how many it
    /// indexed.
    pub async fn index_patients(&self) -> Result<usize, RecordsError> {
        let e = &self.engine;
        let mut done = 0;
        loop {
            let rows = sqlx::query(
                "SELECT r.resource_type, r.id, r.version, r.last_updated_us, r.nhs_number, r.body \
                 FROM patients p JOIN current_resources c ON c.resource_type = 'Patient' AND c.id = p.id \
                 JOIN resources r ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version \
                 WHERE p.indexed_version = 0 ORDER BY p.id LIMIT 500",
            )
            .fetch_all(e.db.pool())
            .await?;
            if rows.is_empty() {
                return Ok(done);
            }
            let batch: Vec<Indexed> = rows
                .iter()
                .map(stored_row)
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .map(|s| {
                    let body = match serde_json::from_str::<serde_json::Value>(&s.body) {
                        Ok(serde_json::Value::Object(b)) => b,
                        _ => serde_json::Map::new(),
                    };
                    Indexed {
                        demographics: demographics::of(&body),
                        id: s.id,
                        nhs_number: s.nhs_number,
                        version: s.version,
                    }
                })
                .collect();
            let mut tx = e.db.begin_write().await?;
            index(&mut tx, &batch).await?;
            tx.commit().await?;
            done += batch.len();
        }
    }

    /// The patients matching `q` whom `actor` may see, `page_size` at a time after patient id
    /// `cursor`. Candidates consent does not let the caller see are left out without a trace
    /// (the page is filled past them); each patient shown is audited in their own trail, and
    /// the search as a whole in the service trail, before the answer.
    pub async fn find_patients(
        &self,
        q: &PatientQuery,
        page_size: usize,
        cursor: &str,
        actor: &Actor,
    ) -> Result<Found, RecordsError> {
        if q.is_empty() {
            return Err(RecordsError::invalid(
                "family",
                "name the patient: family, given, name, birthdate, gender, address-postalcode or identifier",
            ));
        }
        let e = &self.engine;
        let caller = Caller::current(actor);
        let purpose = actor.purpose.as_str();
        let mut shown: Vec<(Stored, Verdict<()>)> = Vec::new();
        let mut after = cursor.to_string();
        let mut matched = 0usize;
        let mut more = false;
        for _round in 0..8 {
            let want = page_size + 1 - shown.len();
            let candidates = e.patient_rows(q, &after, want).await?;
            more = candidates.len() == want;
            matched += candidates.len();
            if let Some(last) = candidates.last() {
                after = last.id.clone();
            }
            let mut asks = Asks::default();
            let labelled: Vec<(Vec<String>, usize)> = candidates
                .iter()
                .map(|s| {
                    let labels = stored_labels(s);
                    let i = asks.add(consent::ask(actor, &s.nhs_number, "search", labels.clone()));
                    (labels, i)
                })
                .collect();
            let decisions = asks.decide(e.pdp.as_ref()).await;
            if let Err(err) = &decisions {
                let v = Verdict::no_decision(err, purpose);
                return e.settle(&caller, "search", Vec::new(), "", v).await;
            }
            for (s, (labels, i)) in candidates.into_iter().zip(labelled) {
                let v = verdict(&decisions, i, purpose, &labels, ());
                if v.answer.is_ok() {
                    shown.push((s, v));
                }
            }
            if shown.len() > page_size || !more {
                break;
            }
        }
        let next_cursor = if shown.len() > page_size {
            shown.truncate(page_size);
            shown.last().map(|(s, _)| s.id.clone()).unwrap_or_default()
        } else if more {
            after
        } else {
            String::new()
        };
        // Each patient shown: an entry in their own trail; and the search in the service
        // trail: all recorded together (one commit), before the answer.
        let refs: Vec<String> = shown.iter().map(|(s, _)| format!("Patient/{}", s.id)).collect();
        let summary = Verdict {
            answer: Ok(()),
            outcome: Outcome::Success,
            purpose: purpose.to_string(),
            reason: format!("patient search: {matched} matched, {} shown", refs.len()),
        };
        let each = shown.iter().map(|(s, v)| {
            let entry = Verdict {
                answer: Ok(()),
                outcome: v.outcome,
                purpose: v.purpose.clone(),
                reason: v.reason.clone(),
            };
            let reference = format!("Patient/{}/_history/{}", s.id, s.version);
            e.settle(&caller, "search", vec![reference], &s.nhs_number, entry)
        });
        let whole = e.settle(&caller, "search", refs, "", summary);
        futures::future::try_join(futures::future::try_join_all(each), whole).await?;
        Ok(Found {
            patients: shown.into_iter().map(|(s, _)| s).collect(),
            next_cursor,
        })
    }
}

impl Engine {
    /// Up to `limit` current Patients matching `q` with ids after `after`, by id.
    async fn patient_rows(&self, q: &PatientQuery, after: &str, limit: usize) -> Result<Vec<Stored>, RecordsError> {
        let backend = self.db.backend();
        let mut n = 0;
        let mut mark = || {
            n += 1;
            backend.placeholder(n)
        };
        let mut conditions: Vec<String> = Vec::new();
        let mut binds: Vec<Bind> = Vec::new();
        // The first name criterion drives the search from the names index (`n0`, joined
        // first); the others narrow it.
        for (k, p) in q.names.iter().enumerate() {
            let n = if k == 0 { "n0" } else { "n" };
            let mut any = Vec::new();
            for v in &p.values {
                let test = match p.how {
                    Match::Exact => {
                        binds.push(Bind::Text(v.clone()));
                        format!("{n}.exact = {}", mark())
                    }
                    Match::Contains => {
                        binds.push(Bind::Text(format!("%{}%", like_escape(&demographics::fold(v)))));
                        format!("{n}.folded LIKE {} ESCAPE '!'", mark())
                    }
                    Match::StartsWith => {
                        let folded = demographics::fold(v);
                        let lo = mark();
                        binds.push(Bind::Text(folded.clone()));
                        match after_prefix(&folded) {
                            Some(hi) => {
                                binds.push(Bind::Text(hi));
                                format!("({n}.folded >= {lo} AND {n}.folded < {})", mark())
                            }
                            None => format!("{n}.folded >= {lo}"),
                        }
                    }
                };
                any.push(test);
            }
            // After the values: SQLite's marks are positional.
            let part = match p.part {
                Some(part) => {
                    let m = mark();
                    binds.push(Bind::Text(part.as_str().into()));
                    format!(" AND {n}.part = {m}")
                }
                None => String::new(),
            };
            if k == 0 {
                conditions.push(format!("p.id = n0.patient_id AND ({}){part}", any.join(" OR ")));
            } else {
                conditions.push(format!(
                    "p.id IN (SELECT n.patient_id FROM patient_names n WHERE ({}){part})",
                    any.join(" OR ")
                ));
            }
        }
        // Birth dates are tested on the driving name row when there is one (a copy of the
        // patient's, in the same index), else on the patient.
        let b = if q.names.is_empty() { "p" } else { "n0" };
        for d in &q.birthdate {
            // Text comparison of YYYY-MM-DD is date order; see demographics::date_matches.
            let (lo, hi) = (Bind::Text(d.lo.clone()), Bind::Text(d.hi.clone()));
            let within = |m: &mut dyn FnMut() -> String, binds: &mut Vec<Bind>| {
                let (from, to) = (m(), m());
                binds.push(Bind::Text(d.lo.clone()));
                binds.push(Bind::Text(d.hi.clone()));
                format!("({b}.birth_lo >= {from} AND {b}.birth_hi <= {to})")
            };
            use demographics::Prefix::*;
            let test = match d.prefix {
                Eq => within(&mut mark, &mut binds),
                Ne => format!("NOT {}", within(&mut mark, &mut binds)),
                Gt => {
                    binds.push(hi);
                    format!("{b}.birth_hi > {}", mark())
                }
                Lt => {
                    binds.push(lo);
                    format!("{b}.birth_lo < {}", mark())
                }
                Ge => {
                    binds.push(hi);
                    let m = mark();
                    format!("({b}.birth_hi > {m} OR {})", within(&mut mark, &mut binds))
                }
                Le => {
                    binds.push(lo);
                    let m = mark();
                    format!("({b}.birth_lo < {m} OR {})", within(&mut mark, &mut binds))
                }
                Sa => {
                    binds.push(hi);
                    format!("{b}.birth_lo > {}", mark())
                }
                Eb => {
                    binds.push(lo);
                    format!("{b}.birth_hi < {}", mark())
                }
            };
            conditions.push(format!("{b}.birth_lo <> '' AND {test}"));
        }
        if let Some(g) = &q.gender {
            binds.push(Bind::Text(g.clone()));
            conditions.push(format!("p.gender = {}", mark()));
        }
        if let Some(pc) = &q.postcode {
            binds.push(Bind::Text(format!("% {}%", like_escape(pc))));
            conditions.push(format!("p.postcodes LIKE {} ESCAPE '!'", mark()));
        }
        if let Some(nhs) = &q.nhs_number {
            // A merged NHS number finds the survivor's Patients.
            binds.push(Bind::Text(nhs.clone()));
            binds.push(Bind::Text(nhs.clone()));
            conditions.push(format!(
                "p.nhs_number = COALESCE((SELECT m.survivor FROM merges m WHERE m.nhs_number = {}), {})",
                mark(),
                mark()
            ));
        }
        // A merged person is found once, as the survivor.
        conditions.push("NOT EXISTS (SELECT 1 FROM merges mm WHERE mm.nhs_number = p.nhs_number)".to_string());
        binds.push(Bind::Text(after.to_string()));
        conditions.push(format!("p.id > {}", mark()));
        binds.push(Bind::Int(limit as i64));
        // CROSS JOIN keeps SQLite from scanning every patient in id order instead.
        let from = if q.names.is_empty() {
            "patients p"
        } else {
            "patient_names n0 CROSS JOIN patients p"
        };
        let sql = format!(
            "SELECT DISTINCT p.id FROM {from} WHERE {} ORDER BY p.id LIMIT {}",
            conditions.join(" AND "),
            mark()
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            query = match b {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let unavailable = |e: sqlx::Error| RecordsError::Unavailable(e.to_string());
        let mut conn = self.db.pool().acquire().await.map_err(unavailable)?;
        let ids: Vec<String> = query
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?
            .iter()
            .map(|r| sqlx::Row::try_get(r, 0))
            .collect::<Result<_, _>>()
            .map_err(unavailable)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT r.resource_type, r.id, r.version, r.last_updated_us, r.nhs_number, r.body, c.labels, c.codes \
             FROM current_resources c JOIN resources r \
               ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version \
             WHERE c.resource_type = 'Patient' AND c.deleted = 0 AND c.id IN ({}) ORDER BY c.id",
            backend.marks(1, ids.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(id);
        }
        let rows = query.fetch_all(&mut *conn).await.map_err(unavailable)?;
        rows.iter()
            .map(stored_row)
            .collect::<Result<_, _>>()
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_range_ends_just_after_every_string_it_starts() {
        assert_eq!(after_prefix("smi").as_deref(), Some("smj"));
        assert_eq!(after_prefix("").as_deref(), None);
        let hi = after_prefix("smith").expect("hi");
        assert!("smith" < hi.as_str() && "smithson" < hi.as_str() && "smiti" >= hi.as_str());
    }
}
