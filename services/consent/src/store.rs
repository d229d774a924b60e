//! Consent's tables (see `migrations/`), on Postgres and SQLite alike. Every change is written
//! with its `ConsentEvent` and the person's whole `SharingState` ([`crate::state`]) in the same
//! transaction (outbox).

use sharedcare_kit::bus::{envelope, topic};
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::nhs::NhsNumber;
use sharedcare_kit::outbox;
use sharedcare_proto::events::v1::{ConsentEvent, PatientNotification};
use sqlx::Row;
use std::collections::HashMap;

use crate::ConsentError;
use crate::policy::{BreakGlass, Directive, Facts, Provision, Relationship, Representative};

/// A break-glass grant with its stated reason (for the review queue).
#[derive(Clone, Debug)]
pub struct Grant {
    /// Id.
    pub id: String,
    /// Patient.
    pub nhs_number: String,
    /// The grant.
    pub grant: BreakGlass,
    /// Reason code.
    pub reason_code: String,
    /// Free text.
    pub reason_text: String,
}

/// What is known about one patient: the decision's facts, and the break-glass grants with
/// their stated reasons (for the audit entry of a decision that rests on one).
#[derive(Clone, Debug, Default)]
pub struct Known {
    /// The facts [`crate::policy::decide`] reads.
    pub facts: Facts,
    /// Break-glass grants, newest first.
    pub grants: Vec<Grant>,
}

/// Each merged patient asked about → every NHS number of their person, the survivor first.
pub type Groups = HashMap<String, Vec<String>>;

/// Consent's storage.
#[derive(Clone)]
pub struct Store {
    db: Db,
}

/// Who made a change, for its event.
pub struct Actor<'a> {
    /// Person id, NHS number or client id.
    pub id: &'a str,
    /// ODS code, when staff.
    pub org: &'a str,
}

/// One stored version of a Consent.
#[derive(Clone, Debug, PartialEq)]
pub struct ConsentVersion {
    /// Logical id.
    pub id: String,
    /// `meta.versionId`, from 1.
    pub version: i64,
    /// The patient.
    pub nhs_number: String,
    /// `status`.
    pub status: String,
    /// The FHIR Consent JSON, with `id` and `meta` stamped.
    pub resource: String,
    /// When it was stored (unix seconds).
    pub updated_at: i64,
}

fn version_row(r: &sqlx::any::AnyRow) -> Result<ConsentVersion, ConsentError> {
    Ok(ConsentVersion {
        id: r.try_get(0)?,
        version: r.try_get(1)?,
        nhs_number: r.try_get(2)?,
        status: r.try_get(3)?,
        resource: r.try_get(4)?,
        updated_at: r.try_get(5)?,
    })
}

async fn insert_version(tx: &mut db::Tx, v: &ConsentVersion) -> Result<(), ConsentError> {
    sqlx::query(
        "INSERT INTO directive_versions (id, version, nhs_number, status, resource, updated_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(v.id.clone())
    .bind(v.version)
    .bind(v.nhs_number.clone())
    .bind(v.status.clone())
    .bind(v.resource.clone())
    .bind(v.updated_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Which kind of row [`Store::add_row`] adds or [`Store::end_row`] ends.
#[derive(Clone, Copy)]
enum Party {
    Representative,
    Relationship,
}

impl Party {
    /// The table and its other party's column.
    fn columns(self) -> (&'static str, &'static str) {
        match self {
            Party::Representative => ("representatives", "representative_nhs"),
            Party::Relationship => ("relationships", "ods_code"),
        }
    }
}

/// A representative or relationship row: the patient, the other party (representative's NHS
/// number or ODS code), its kind and its start.
struct PartyRow {
    nhs: String,
    party: String,
    kind: String,
    start: i64,
}

/// An NHS number consent itself stored (or records validated before publishing): one that
/// does not parse is corrupt data, an internal fault.
fn stored(nhs: &str) -> Result<NhsNumber, ConsentError> {
    NhsNumber::parse(nhs).map_err(|e| ConsentError::Corrupt(format!("stored NHS number: {e}")))
}

async fn event(
    tx: &mut db::Tx,
    kind: &str,
    patient: &NhsNumber,
    actor: &Actor<'_>,
    reason_code: &str,
    detail: &str,
) -> Result<(), ConsentError> {
    let nhs = patient.as_str();
    let e = ConsentEvent {
        kind: kind.into(),
        nhs_number: nhs.into(),
        actor: actor.id.into(),
        actor_organisation: actor.org.into(),
        reason_code: reason_code.into(),
        detail: detail.into(),
        time: Some(db::timestamp(db::now_us())),
    };
    let env = envelope("sharedcare.events.v1.ConsentEvent", crate::NAME, nhs, nhs, &e);
    outbox::lock_key(tx, nhs).await?;
    outbox::enqueue(tx, &topic(crate::NAME), &env).await?;
    crate::state::publish(tx, patient).await
}

/// Records that `e.nhs_number` was merged into `e.merged_into` (moving numbers merged into
/// the former to the survivor, as records does), with a `patients_merged` event for
/// information governance on both numbers.
async fn merge(
    tx: &mut db::Tx,
    e: &sharedcare_proto::events::v1::RecordChanged,
    event_id: &str,
) -> Result<(), ConsentError> {
    let (merged, survivor) = (stored(&e.nhs_number)?, stored(&e.merged_into)?);
    sharedcare_kit::merges::record(tx, merged.as_str(), survivor.as_str()).await?;
    let actor = Actor {
        id: "records",
        org: &e.source_organisation,
    };
    let detail = format!(
        "NHS number {merged} merged into {survivor} (Patient/{} from event {event_id}): the facts of both apply to both, the stricter directive winning",
        e.id
    );
    for patient in [&merged, &survivor] {
        event(tx, "patients_merged", patient, &actor, "", &detail).await?;
    }
    Ok(())
}

impl Store {
    /// Consent's store on `db`.
    pub fn new(db: Db) -> Store {
        Store { db }
    }

    /// Everything the decision needs about `nhs`, read now (no cache: a change binds the next
    /// decision).
    pub async fn facts(&self, patient: &NhsNumber) -> Result<Facts, ConsentError> {
        let mut all = self.facts_many(&[patient.as_str()]).await?;
        Ok(all.remove(patient.as_str()).map(|k| k.facts).unwrap_or_default())
    }

    /// The facts about each of `patients` (see [`Store::facts_many`]) and, for those that are
    /// part of a merge, every NHS number of their person (survivor first), whose facts are
    /// read too. One statement when no patient asked about was merged; two when one was.
    pub async fn people(&self, patients: &[&str]) -> Result<(HashMap<String, Known>, Groups), ConsentError> {
        let mut by_survivor: HashMap<String, Vec<String>> = HashMap::new();
        let mut known = self.read_facts(patients, &mut by_survivor).await?;
        let missing: Vec<String> = by_survivor
            .iter()
            .flat_map(|(s, merged)| std::iter::once(s).chain(merged))
            .filter(|n| !known.contains_key(n.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
            known.extend(self.read_facts(&missing, &mut HashMap::new()).await?);
        }
        Ok((known, sharedcare_kit::merges::assemble(patients, by_survivor)))
    }

    /// The facts about each of `patients`, read now in one statement over every table (a
    /// batch of decisions costs one round trip, not five per patient). Patients nothing is
    /// known about get empty facts.
    pub async fn facts_many(&self, patients: &[&str]) -> Result<HashMap<String, Known>, ConsentError> {
        self.read_facts(patients, &mut HashMap::new()).await
    }

    /// [`Store::facts_many`], adding every merge of the patients' groups to `merges` (merged
    /// numbers by survivor).
    async fn read_facts(
        &self,
        patients: &[&str],
        merges: &mut HashMap<String, Vec<String>>,
    ) -> Result<HashMap<String, Known>, ConsentError> {
        let mut out: HashMap<String, Known> = HashMap::new();
        let mut ids: Vec<&str> = patients.to_vec();
        ids.sort_unstable();
        ids.dedup();
        for id in &ids {
            out.entry((*id).to_string()).or_default();
        }
        let pool = self.db.pool();
        for chunk in ids.chunks(db::MAX_ROWS_PER_INSERT) {
            // One statement for all four tables (each round trip to SQLite costs a thread
            // handoff): rows are (kind, nhs, three texts, two texts, two numbers).
            let backend = self.db.backend();
            let list = |part: usize| backend.marks(part * chunk.len() + 1, chunk.len());
            let sql = format!(
                "SELECT 'd', nhs_number, id, status, provision, '', '', updated_at, 0 FROM directives WHERE nhs_number IN ({}) \
                 UNION ALL SELECT 'f', nhs_number, '', '', '', '', '', national_opt_out, gp_dissent FROM patient_flags WHERE nhs_number IN ({}) \
                 UNION ALL SELECT 'r', nhs_number, ods_code, kind, '', '', '', start_at, end_at FROM relationships WHERE nhs_number IN ({}) \
                 UNION ALL SELECT 'g', nhs_number, id, person_id, ods_code, reason_code, reason_text, start_at, end_at FROM break_glass WHERE nhs_number IN ({}) \
                 UNION ALL SELECT 'p', nhs_number, representative_nhs, kind, '', '', '', start_at, end_at FROM representatives WHERE nhs_number IN ({}) \
                 UNION ALL SELECT 'm', nhs_number, survivor, '', '', '', '', 0, 0 FROM merges WHERE survivor IN ({}) \
                 UNION ALL SELECT 'm', g.nhs_number, g.survivor, '', '', '', '', 0, 0 \
                   FROM merges a JOIN merges g ON g.survivor = a.survivor WHERE a.nhs_number IN ({})",
                list(0),
                list(1),
                list(2),
                list(3),
                list(4),
                list(5),
                list(6)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for _ in 0..7 {
                for id in chunk {
                    q = q.bind(id.to_string());
                }
            }
            let mut directives: Vec<(i64, String, Directive)> = Vec::new();
            for r in q.fetch_all(pool).await? {
                let kind: String = r.try_get(0)?;
                let nhs: String = r.try_get(1)?;
                let text = |i: usize| r.try_get::<String, _>(i);
                let (n1, n2): (i64, i64) = (r.try_get(7)?, r.try_get(8)?);
                match kind.as_str() {
                    "d" => {
                        let provision: Provision = serde_json::from_str(&text(4)?)
                            .map_err(|e| ConsentError::Corrupt(format!("directive provision for {nhs}: {e}")))?;
                        let d = Directive {
                            id: text(2)?,
                            status: text(3)?,
                            provision,
                        };
                        directives.push((n1, nhs, d));
                    }
                    "f" => {
                        let k = out.entry(nhs).or_default();
                        k.facts.national_opt_out = n1 != 0;
                        k.facts.gp_dissent = n2 != 0;
                    }
                    "p" => out.entry(nhs).or_default().facts.representatives.push(Representative {
                        nhs_number: text(2)?,
                        start: n1,
                        end: (n2 != 0).then_some(n2),
                    }),
                    "m" => {
                        merges.entry(text(2)?).or_default().push(nhs);
                        continue;
                    }
                    "r" => out.entry(nhs).or_default().facts.relationships.push(Relationship {
                        org: text(2)?,
                        kind: text(3)?,
                        start: n1,
                        end: (n2 != 0).then_some(n2),
                    }),
                    _ => {
                        let g = Grant {
                            id: text(2)?,
                            nhs_number: nhs.clone(),
                            grant: BreakGlass {
                                person: text(3)?,
                                org: text(4)?,
                                start: n1,
                                end: n2,
                            },
                            reason_code: text(5)?,
                            reason_text: text(6)?,
                        };
                        let k = out.entry(nhs).or_default();
                        k.facts.break_glass.push(g.grant.clone());
                        k.grants.push(g);
                    }
                }
            }
            // Directives apply in the order they were made; grants newest first.
            directives.sort_by_key(|(at, _, _)| *at);
            for (_, nhs, d) in directives {
                out.entry(nhs).or_default().facts.directives.push(d);
            }
        }
        for k in out.values_mut() {
            k.grants.sort_by_key(|g| std::cmp::Reverse(g.grant.start));
            k.facts.break_glass.sort_by_key(|g| std::cmp::Reverse(g.start));
        }
        Ok(out)
    }

    /// Records an authorised representative of `nhs`, with its event.
    pub async fn add_representative(
        &self,
        id: &str,
        patient: &NhsNumber,
        kind: &str,
        r: &Representative,
        actor: &Actor<'_>,
    ) -> Result<(), ConsentError> {
        let detail = format!("{id} {kind} {} from {}", r.nhs_number, r.start);
        let row = PartyRow {
            nhs: patient.as_str().to_string(),
            party: r.nhs_number.clone(),
            kind: kind.to_string(),
            start: r.start,
        };
        self.add_row(Party::Representative, id, &row, r.end, actor, &detail)
            .await
    }

    /// Inserts row `id` of a representative or relationship, with its event.
    async fn add_row(
        &self,
        what: Party,
        id: &str,
        row: &PartyRow,
        end: Option<i64>,
        actor: &Actor<'_>,
        detail: &str,
    ) -> Result<(), ConsentError> {
        let (table, party) = what.columns();
        let kind = match what {
            Party::Representative => "representative_added",
            Party::Relationship => "relationship_changed",
        };
        let mut tx = self.db.begin_write().await?;
        // Only the fixed table and column names are formatted in; values are bound.
        let insert = format!(
            "INSERT INTO {table} (id, nhs_number, {party}, kind, start_at, end_at) VALUES ($1, $2, $3, $4, $5, $6)"
        );
        sqlx::query(sqlx::AssertSqlSafe(insert))
            .bind(id.to_string())
            .bind(row.nhs.clone())
            .bind(row.party.clone())
            .bind(row.kind.clone())
            .bind(row.start)
            .bind(end.unwrap_or(0))
            .execute(&mut *tx)
            .await?;
        event(&mut tx, kind, &stored(&row.nhs)?, actor, "", detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Ends representative `id` at `end`, with its event; returns the patient, the kind and
    /// the ended representative.
    pub async fn end_representative(
        &self,
        id: &str,
        end: i64,
        actor: &Actor<'_>,
    ) -> Result<(String, String, Representative), ConsentError> {
        let e = self.end_row(Party::Representative, id, end, actor).await?;
        let rep = Representative {
            nhs_number: e.party,
            start: e.start,
            end: Some(end),
        };
        Ok((e.nhs, e.kind, rep))
    }

    /// Ends a relationship at `end`; returns it.
    pub async fn end_relationship(
        &self,
        id: &str,
        end: i64,
        actor: &Actor<'_>,
    ) -> Result<(String, Relationship), ConsentError> {
        let e = self.end_row(Party::Relationship, id, end, actor).await?;
        let rel = Relationship {
            org: e.party,
            kind: e.kind,
            start: e.start,
            end: Some(end),
        };
        Ok((e.nhs, rel))
    }

    /// Sets `end_at` on row `id` of a representative or relationship, with its event.
    async fn end_row(&self, what: Party, id: &str, end: i64, actor: &Actor<'_>) -> Result<PartyRow, ConsentError> {
        let (table, party) = what.columns();
        let kind = match what {
            Party::Representative => "representative_ended",
            Party::Relationship => "relationship_changed",
        };
        let mut tx = self.db.begin_write().await?;
        // Only the fixed table and column names are formatted in; values are bound.
        let select = format!("SELECT nhs_number, {party}, kind, start_at FROM {table} WHERE id = $1");
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(select))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Err(ConsentError::not_found(format!("{} {id}", &table[..table.len() - 1])));
        };
        let ended = PartyRow {
            nhs: r.try_get(0)?,
            party: r.try_get(1)?,
            kind: r.try_get(2)?,
            start: r.try_get(3)?,
        };
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET end_at = $1 WHERE id = $2"
        )))
        .bind(end)
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        event(&mut tx, kind, &stored(&ended.nhs)?, actor, "", &format!("{id} ended")).await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// Whether any care relationship is recorded.
    pub async fn has_relationships(&self) -> Result<bool, ConsentError> {
        let row = sqlx::query("SELECT 1 FROM relationships LIMIT 1")
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.is_some())
    }

    /// Creates or replaces a directive: `resource` is its FHIR Consent as written (stamped
    /// here with id, version and time; `None` renders one from `d`, for directives Sharedcare
    /// makes itself), `d` what the policy reads of it. Returns the stored version.
    pub async fn put_directive(
        &self,
        patient: &NhsNumber,
        d: &Directive,
        resource: Option<&serde_json::Map<String, serde_json::Value>>,
        actor: &Actor<'_>,
    ) -> Result<ConsentVersion, ConsentError> {
        let nhs = patient.as_str();
        let provision = serde_json::to_string(&d.provision)
            .map_err(|e| ConsentError::Corrupt(format!("directive provision: {e}")))?;
        let now = chrono::Utc::now().timestamp();
        let mut tx = self.db.begin_write().await?;
        let existing = sqlx::query("SELECT nhs_number, version FROM directives WHERE id = $1")
            .bind(d.id.clone())
            .fetch_optional(&mut *tx)
            .await?;
        let version = match &existing {
            Some(r) => r.try_get::<i64, _>(1)? + 1,
            None => 1,
        };
        let mut body = match resource {
            Some(r) => r.clone(),
            None => crate::fhir::render(&d.id, nhs, &d.status, &d.provision),
        };
        crate::fhir::stamp(&mut body, &d.id, version, now);
        let text = serde_json::Value::Object(body).to_string();
        if let Some(r) = existing {
            if r.try_get::<String, _>(0)? != nhs {
                // Said without telling whose: leave the id out and consent assigns one.
                return Err(ConsentError::invalid(
                    "id",
                    "is already in use; leave it out to have one assigned",
                ));
            }
            sqlx::query(
                "UPDATE directives SET status = $1, provision = $2, updated_at = $3, version = $4, resource = $5 WHERE id = $6",
            )
            .bind(d.status.clone())
            .bind(provision)
            .bind(now)
            .bind(version)
            .bind(text.clone())
            .bind(d.id.clone())
            .execute(&mut *tx)
            .await?;
        } else {
            sqlx::query(
                "INSERT INTO directives (id, nhs_number, status, provision, updated_at, version, resource) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(d.id.clone())
            .bind(nhs.to_string())
            .bind(d.status.clone())
            .bind(provision)
            .bind(now)
            .bind(version)
            .bind(text.clone())
            .execute(&mut *tx)
            .await?;
        }
        let stored = ConsentVersion {
            id: d.id.clone(),
            version,
            nhs_number: nhs.to_string(),
            status: d.status.clone(),
            resource: text,
            updated_at: now,
        };
        insert_version(&mut tx, &stored).await?;
        event(
            &mut tx,
            "directive_changed",
            patient,
            actor,
            "",
            &format!("{} {}", d.id, d.status),
        )
        .await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// The current version of Consent `id`.
    pub async fn consent(&self, id: &str) -> Result<Option<ConsentVersion>, ConsentError> {
        let row =
            sqlx::query("SELECT id, version, nhs_number, status, resource, updated_at FROM directives WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(self.db.pool())
                .await?;
        row.as_ref().map(version_row).transpose()
    }

    /// Every version of Consent `id`, newest first (one: just that version).
    pub async fn consent_versions(&self, id: &str, one: Option<i64>) -> Result<Vec<ConsentVersion>, ConsentError> {
        let rows = sqlx::query(
            "SELECT id, version, nhs_number, status, resource, updated_at FROM directive_versions \
             WHERE id = $1 AND ($2 = 0 OR version = $3) ORDER BY version DESC",
        )
        .bind(id.to_string())
        .bind(one.unwrap_or(0))
        .bind(one.unwrap_or(0))
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(version_row).collect()
    }

    /// The current Consents of `patient`, with `status` when given, oldest first.
    pub async fn consents_of(
        &self,
        patient: &NhsNumber,
        status: Option<&str>,
    ) -> Result<Vec<ConsentVersion>, ConsentError> {
        let rows = sqlx::query(
            "SELECT id, version, nhs_number, status, resource, updated_at FROM directives \
             WHERE nhs_number = $1 AND ($2 = '' OR status = $3) ORDER BY updated_at, id",
        )
        .bind(patient.as_str().to_string())
        .bind(status.unwrap_or("").to_string())
        .bind(status.unwrap_or("").to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.iter().map(version_row).collect()
    }

    /// Renders as FHIR Consents the directives stored before Consent was the format (version
    /// 0), each in its own transaction; returns how many. Run at start-up.
    pub async fn version_directives(&self) -> Result<usize, ConsentError> {
        let rows =
            sqlx::query("SELECT id, nhs_number, status, provision, updated_at FROM directives WHERE version = 0")
                .fetch_all(self.db.pool())
                .await?;
        for r in &rows {
            let (id, nhs, status): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
            let provision: Provision = serde_json::from_str(&r.try_get::<String, _>(3)?)
                .map_err(|e| ConsentError::Corrupt(format!("directive {id}: {e}")))?;
            let updated_at: i64 = r.try_get(4)?;
            let mut body = crate::fhir::render(&id, &nhs, &status, &provision);
            crate::fhir::stamp(&mut body, &id, 1, updated_at);
            let stored = ConsentVersion {
                id,
                version: 1,
                nhs_number: nhs,
                status,
                resource: serde_json::Value::Object(body).to_string(),
                updated_at,
            };
            let mut tx = self.db.begin_write().await?;
            let done = sqlx::query("UPDATE directives SET version = 1, resource = $1 WHERE id = $2 AND version = 0")
                .bind(stored.resource.clone())
                .bind(stored.id.clone())
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 1 {
                insert_version(&mut tx, &stored).await?;
            }
            tx.commit().await?;
        }
        Ok(rows.len())
    }

    /// Sets the national data opt-out and GP dissent flags.
    pub async fn set_flags(
        &self,
        patient: &NhsNumber,
        opt_out: bool,
        dissent: bool,
        actor: &Actor<'_>,
    ) -> Result<(), ConsentError> {
        let nhs = patient.as_str();
        let mut tx = self.db.begin_write().await?;
        sqlx::query("DELETE FROM patient_flags WHERE nhs_number = $1")
            .bind(nhs.to_string())
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO patient_flags (nhs_number, national_opt_out, gp_dissent) VALUES ($1, $2, $3)")
            .bind(nhs.to_string())
            .bind(i64::from(opt_out))
            .bind(i64::from(dissent))
            .execute(&mut *tx)
            .await?;
        let detail = format!("national_opt_out={opt_out} gp_dissent={dissent}");
        event(&mut tx, "flags_changed", patient, actor, "", &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records a relationship.
    pub async fn add_relationship(
        &self,
        id: &str,
        patient: &NhsNumber,
        r: &Relationship,
        actor: &Actor<'_>,
    ) -> Result<(), ConsentError> {
        let detail = format!("{} {} {} started", id, r.kind, r.org);
        let row = PartyRow {
            nhs: patient.as_str().to_string(),
            party: r.org.clone(),
            kind: r.kind.clone(),
            start: r.start,
        };
        self.add_row(Party::Relationship, id, &row, r.end, actor, &detail).await
    }

    /// Applies care relationships from record events in one transaction, each event once
    /// (inbox); the relationship's id is the resource's, so later versions update it.
    pub async fn apply_care_events(
        &self,
        events: &[(
            &sharedcare_kit::bus::Delivery,
            sharedcare_proto::events::v1::RecordChanged,
        )],
    ) -> Result<usize, ConsentError> {
        let mut tx = self.db.begin_write().await?;
        let deliveries: Vec<&sharedcare_kit::bus::Delivery> = events.iter().map(|(d, _)| *d).collect();
        let fresh = sharedcare_kit::inbox::claim_fresh(&mut tx, crate::NAME, &deliveries).await?;
        let mut applied = 0;
        for (d, e) in fresh.into_iter().filter_map(|i| events.get(i)) {
            if !e.merged_into.is_empty() {
                merge(&mut tx, e, &d.envelope.id).await?;
                applied += 1;
            }
            if e.care_kind.is_empty() || e.care_organisation.is_empty() {
                continue;
            }
            let id = format!("{}/{}", e.resource_type, e.id);
            let start = e.care_start.as_ref().map(db::micros).unwrap_or_else(db::now_us) / 1_000_000;
            let end = e.care_end.as_ref().map(|t| db::micros(t) / 1_000_000).unwrap_or(0);
            sqlx::query("DELETE FROM relationships WHERE id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO relationships (id, nhs_number, ods_code, kind, start_at, end_at) VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(id.clone())
            .bind(e.nhs_number.clone())
            .bind(e.care_organisation.clone())
            .bind(e.care_kind.clone())
            .bind(start)
            .bind(end)
            .execute(&mut *tx)
            .await?;
            let actor = Actor {
                id: "records",
                org: &e.care_organisation,
            };
            let detail = format!("{id} from event {}", d.envelope.id);
            event(
                &mut tx,
                "relationship_changed",
                &stored(&e.nhs_number)?,
                &actor,
                "",
                &detail,
            )
            .await?;
            applied += 1;
        }
        tx.commit().await?;
        Ok(applied)
    }

    /// Records a break-glass grant and its alert event.
    pub async fn break_glass(&self, g: &Grant) -> Result<(), ConsentError> {
        let mut tx = self.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO break_glass (id, nhs_number, person_id, ods_code, reason_code, reason_text, start_at, end_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(g.id.clone())
        .bind(g.nhs_number.clone())
        .bind(g.grant.person.clone())
        .bind(g.grant.org.clone())
        .bind(g.reason_code.clone())
        .bind(g.reason_text.clone())
        .bind(g.grant.start)
        .bind(g.grant.end)
        .execute(&mut *tx)
        .await?;
        let actor = Actor {
            id: &g.grant.person,
            org: &g.grant.org,
        };
        // The entry in the patient's trail records the grant's start and end as well as why.
        let at = |t: i64| {
            chrono::DateTime::from_timestamp(t, 0)
                .map(|d| d.to_rfc3339())
                .unwrap_or_default()
        };
        let detail = format!(
            "{} (grant {} from {} until {})",
            g.reason_text,
            g.id,
            at(g.grant.start),
            at(g.grant.end)
        );
        event(
            &mut tx,
            "break_glass_granted",
            &stored(&g.nhs_number)?,
            &actor,
            &g.reason_code,
            &detail,
        )
        .await?;
        // The patient is told (an NHS App message), in the same transaction: no clinical detail.
        let note = PatientNotification {
            kind: "break_glass".into(),
            nhs_number: g.nhs_number.clone(),
            organisation: g.grant.org.clone(),
            time: Some(db::timestamp(g.grant.start.saturating_mul(1_000_000))),
            link: "/passport/access-log".into(),
            notice_id: g.id.clone(),
        };
        let nhs = g.nhs_number.as_str();
        let env = envelope("sharedcare.events.v1.PatientNotification", crate::NAME, nhs, nhs, &note);
        outbox::enqueue(&mut tx, &topic(crate::NAME), &env).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Marks grant `id` reviewed by `reviewer` with `note`, with its event; `None` when there is
    /// no such grant.
    pub async fn review_grant(&self, id: &str, reviewer: &str, note: &str) -> Result<Review, ConsentError> {
        let mut tx = self.db.begin_write().await?;
        let sql = format!("{GRANT_COLUMNS} WHERE id = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(Review::NotFound);
        };
        let g = grant_row(&row)?;
        if g.grant.person == reviewer {
            return Ok(Review::OwnGrant);
        }
        // Once only: the condition holds the row against a concurrent second review too.
        let done = sqlx::query(
            "UPDATE break_glass SET reviewed = 1, reviewed_by = $1, review_note = $2 WHERE id = $3 AND reviewed = 0",
        )
        .bind(reviewer.to_string())
        .bind(note.to_string())
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(Review::AlreadyReviewed);
        }
        let actor = Actor { id: reviewer, org: "" };
        // The review's note is free text: it stays in consent's table, not in the event.
        let detail = format!("grant {id} to {} reviewed", g.grant.person);
        event(
            &mut tx,
            "break_glass_reviewed",
            &stored(&g.nhs_number)?,
            &actor,
            &g.reason_code,
            &detail,
        )
        .await?;
        tx.commit().await?;
        Ok(Review::Done(g))
    }

    /// The organisation a break-glass grant was made at, if there is such a grant.
    pub async fn grant_org(&self, id: &str) -> Result<Option<String>, ConsentError> {
        let row = sqlx::query("SELECT ods_code FROM break_glass WHERE id = $1")
            .bind(id.to_string())
            .fetch_optional(self.db.pool())
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Break-glass grants for `nhs` (all patients when empty); `unreviewed` = the review queue.
    pub async fn grants(&self, nhs: &str, unreviewed: bool) -> Result<Vec<Grant>, ConsentError> {
        let sql = format!(
            "{GRANT_COLUMNS} WHERE ($1 = '' OR nhs_number = $2) AND ($3 = 0 OR reviewed = 0) ORDER BY start_at DESC LIMIT 1000"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(nhs.to_string())
            .bind(nhs.to_string())
            .bind(i64::from(unreviewed))
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(grant_row).collect()
    }
}

/// What a review of a break-glass grant came to.
#[derive(Debug)]
pub enum Review {
    /// Reviewed now.
    Done(Grant),
    /// No grant by that id.
    NotFound,
    /// Reviewed before: a review is never overwritten.
    AlreadyReviewed,
    /// The reviewer is the person the grant was given to.
    OwnGrant,
}

const GRANT_COLUMNS: &str =
    "SELECT id, nhs_number, person_id, ods_code, reason_code, reason_text, start_at, end_at FROM break_glass";

fn grant_row(r: &sqlx::any::AnyRow) -> Result<Grant, ConsentError> {
    Ok(Grant {
        id: r.try_get(0)?,
        nhs_number: r.try_get(1)?,
        grant: BreakGlass {
            person: r.try_get(2)?,
            org: r.try_get(3)?,
            start: r.try_get(6)?,
            end: r.try_get(7)?,
        },
        reason_code: r.try_get(4)?,
        reason_text: r.try_get(5)?,
    })
}
