//! Resource versions in the records tables, and the events each change or access produces,
//! written to the outbox in the same transaction.
//!
//! - this module: the store's API, the writer that group-commits puts and the reader that
//!   batches gets;
//! - `decide`: consent decisions for a batch of accesses and what each means;
//! - `search`: vread, history and search by patient;
//! - `patients`: the demographic index and search for patients by name, birth date, gender
//!   and postcode.

use sharedcare_kit::batch::{next_batch, next_batch_weighed};
use sharedcare_kit::bus::{self, Envelope};
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::edge::Refuse;
use sharedcare_kit::outbox::{self, Outbox};
use sharedcare_kit::telemetry;
use sharedcare_proto::events::v1::{AccessRecorded, RecordChanged, RecordState};
use std::collections::HashMap;
use tracing::Instrument;

use sqlx::Row;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::consent::Pdp;
use crate::fhir::{self, Resource};
use crate::{NAME, RecordsError};
use sharedcare_kit::access::{NO_DECISION, Outcome};
use sharedcare_kit::pdp::PdpError;

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// `resourceType`.
    pub resource_type: String,
    /// Logical id.
    pub id: String,
    /// `meta.versionId`, from 1.
    pub version: i64,
    /// `meta.lastUpdated`, microseconds since the epoch.
    pub last_updated_us: i64,
    /// The patient's NHS number ("" when not known).
    pub nhs_number: String,
    /// The resource JSON with `meta` stamped (for a deleted version: the content it deleted).
    pub body: String,
    /// What consent decides on, when already known (`None`: read it from `body`): as read, its
    /// categories (labels, `class:` and `code:` tokens); as written, its `meta.security` labels.
    pub labels: Option<Vec<String>>,
    /// This version deletes the resource (FHIR delete).
    pub deleted: bool,
    /// Nothing was written: the put was only if absent ([`ONLY_IF_ABSENT`]) and the record
    /// holds `version` (the other fields but the type and id are empty).
    pub unchanged: bool,
}

/// The expected version of a put (in [`Store::put_all`]) to be written only when the record
/// holds no version of the resource; when it holds one (even deleted), consent decides it as
/// an update (refused and audited like any put), nothing is written, and its [`Stored`] says
/// `unchanged`.
pub const ONLY_IF_ABSENT: i64 = -1;

pub use sharedcare_kit::pdp::Actor;

/// The records store: hands puts and gets to its writer and reader tasks, which end once
/// every clone of the store is gone.
#[derive(Clone)]
pub struct Store {
    puts: mpsc::Sender<PendingPut>,
    gets: mpsc::Sender<PendingGet>,
    engine: Engine,
    labeller: Arc<crate::labels::Labeller>,
}

/// What the writer and reader tasks work with (no senders, so the tasks can end).
#[derive(Clone)]
struct Engine {
    db: Db,
    outbox: Outbox,
    topic: String,
    pdp: Arc<dyn Pdp>,
    /// Which writes may start care relationships.
    care: Arc<crate::care::CarePolicy>,
}

/// What an access came to: the answer, and what its audit entry says.
struct Verdict<T> {
    answer: Result<T, RecordsError>,
    /// success | denied | withheld | not-found | error
    outcome: Outcome,
    /// Purpose of use as decided (BTG when break-glass was the basis).
    purpose: String,
    /// Why (consent's reason and rules, the break-glass reason, what was withheld).
    reason: String,
}

impl<T> Verdict<T> {
    fn refused(err: RecordsError, outcome: Outcome, purpose: &str, reason: String) -> Self {
        Verdict {
            answer: Err(err),
            outcome,
            purpose: purpose.to_string(),
            reason,
        }
    }

    /// The verdict when consent gave no decision: nothing is returned, and the audit entry
    /// says why.
    fn no_decision(e: &PdpError, purpose: &str) -> Self {
        Self::refused(
            RecordsError::Consent(e.clone()),
            Outcome::Error,
            purpose,
            format!("{NO_DECISION}: {e}"),
        )
    }

    /// The verdict on a resource the record does not hold.
    fn not_found(reference: &str, purpose: &str) -> Self {
        Self::refused(
            RecordsError::not_found(reference.to_string()),
            Outcome::NotFound,
            purpose,
            String::new(),
        )
    }
}

/// Most reads looked up in one query.
const GETS_PER_QUERY: usize = 256;

/// The answer to a put only if absent whose resource the record holds at `version`.
fn held(job: &PutJob, version: i64) -> Stored {
    Stored {
        resource_type: job.resource.resource_type.clone(),
        id: job.resource.id.clone(),
        version,
        last_updated_us: 0,
        nhs_number: String::new(),
        body: String::new(),
        labels: None,
        deleted: false,
        unchanged: true,
    }
}

/// Who asked, and the trace the request belongs to: the writer and reader tasks run outside
/// the request's span, so its events carry this instead of the task's (empty) context.
struct Caller {
    actor: Actor,
    traceparent: String,
    trace_id: String,
}

impl Caller {
    fn current(actor: &Actor) -> Self {
        Caller {
            actor: actor.clone(),
            traceparent: sharedcare_kit::telemetry::current_traceparent(),
            trace_id: sharedcare_kit::telemetry::current_trace_id(),
        }
    }
}

/// A read waiting for the reader.
struct GetJob {
    resource_type: String,
    id: String,
    caller: Caller,
}

/// A read and where its answer goes.
type PendingGet = (GetJob, oneshot::Sender<Result<Stored, RecordsError>>);

/// Most puts written in one transaction.
const PUTS_PER_COMMIT: usize = 256;

/// A put waiting for the writer.
struct PutJob {
    resource: Resource,
    /// A delete: a new version marked deleted, with the content of the one it deletes.
    delete: bool,
    source_organisation: String,
    caller: Caller,
    /// Purpose and reason from consent's decision, for the audit entry.
    purpose: String,
    reason: String,
    /// Whether consent permitted the put only because of a break-glass grant (such a write
    /// records care but starts no relationship).
    break_glass: bool,
    /// The version the writer based this put on (0 = none).
    expected_version: i64,
    /// What the writer took it from (a feed's message), for its Provenance; "" when not said.
    source_document: String,
    /// The version the record holds of a put only if absent, found when it was judged: such a
    /// put is not written.
    held: Option<i64>,
}

/// Puts stored together or not at all (one put, or a transaction's), and where their answer
/// goes: every version stored, or the position of the put that stopped them and why.
type PendingPut = (Vec<PutJob>, decide::Reply);

const RECORD_CHANGED: &str = "sharedcare.events.v1.RecordChanged";
const RECORD_STATE: &str = "sharedcare.events.v1.RecordState";
const ACCESS_RECORDED: &str = "sharedcare.events.v1.AccessRecorded";

mod decide;
pub mod export;
mod merges;
mod patients;
mod provenance;
mod search;

pub use export::{ExportRequest, ExportStatus, Level};
pub use patients::Found;
pub use provenance::Written;
pub use search::{DEFAULT_PAGE, MAX_PAGE, Page, Query, Sort, parse_cursor};

use decide::patient_of;
use search::stored_row;

impl Store {
    /// The store on `db`, emitting through `outbox`, asking `pdp` before every access to
    /// patient data, recording the care relationships `care` trusts. Must be called inside the tokio runtime: it starts the writer that
    /// group-commits puts and the reader that batches gets under `tasks`; they end when the
    /// last handle to the store is dropped or the process stops working.
    pub fn new(
        db: Db,
        outbox: Outbox,
        pdp: Arc<dyn Pdp>,
        care: crate::care::CarePolicy,
        tasks: &sharedcare_kit::tasks::Tasks,
    ) -> Self {
        let (puts, put_rx) = mpsc::channel(PUTS_PER_COMMIT * 4);
        let (gets, get_rx) = mpsc::channel(GETS_PER_QUERY * 4);
        let engine = Engine {
            db,
            outbox,
            topic: bus::topic(NAME),
            pdp,
            care: Arc::new(care),
        };
        tasks.spawn(engine.clone().write_puts(put_rx));
        tasks.spawn(engine.clone().read_gets(get_rx));
        Store {
            puts,
            gets,
            engine,
            labeller: Arc::new(crate::labels::Labeller::default()),
        }
    }

    /// The same store labelling resources by `labeller` on write.
    pub fn with_labels(self, labeller: crate::labels::Labeller) -> Self {
        Store {
            labeller: Arc::new(labeller),
            ..self
        }
    }

    /// Stores `resource` as its next version, with its events, atomically. Concurrent puts
    /// are written together (group commit, a few multi-row statements per batch); if a batch
    /// fails, each of its puts is retried alone so one bad put never fails another.
    /// With `expected_version` > 0 the put is refused unless that is the current version.
    pub async fn put(
        &self,
        resource: Resource,
        source_organisation: &str,
        actor: &Actor,
        expected_version: i64,
    ) -> Result<Stored, RecordsError> {
        let job = self.job(resource, source_organisation, actor, expected_version);
        self.one(job).await
    }

    /// Hands `jobs` to the writer as one unit and waits for its answer.
    async fn submit(&self, jobs: Vec<PutJob>) -> Result<Vec<Stored>, (usize, RecordsError)> {
        let (reply, answer) = oneshot::channel();
        self.puts
            .send((jobs, reply))
            .await
            .map_err(|_| (0, RecordsError::Stopped))?;
        answer.await.map_err(|_| (0, RecordsError::Stopped))?
    }

    /// Hands one put to the writer and waits for its version.
    async fn one(&self, job: PutJob) -> Result<Stored, RecordsError> {
        match self.submit(vec![job]).await {
            Ok(stored) => stored.into_iter().next().ok_or(RecordsError::Stopped),
            Err((_, e)) => Err(e),
        }
    }

    /// A put of `resource` (labelled by its codes) for the writer.
    fn job(&self, mut resource: Resource, source_organisation: &str, actor: &Actor, expected_version: i64) -> PutJob {
        self.labeller.apply(&mut resource.body);
        PutJob {
            resource,
            delete: false,
            source_organisation: source_organisation.to_string(),
            caller: Caller::current(actor),
            purpose: actor.purpose.clone(),
            reason: String::new(),
            break_glass: false,
            expected_version,
            source_document: String::new(),
            held: None,
        }
    }

    /// Stores every resource of `puts` (each with its expected version, 0 = none) in one
    /// transaction, or none of them: the first refusal (consent, validation, version) or
    /// failure is returned with the position of the put that caused it. Like single puts, the
    /// writer group-commits it with the other puts waiting (one consent call and one
    /// transaction for the lot); if that transaction fails, it is written alone.
    pub async fn put_all(
        &self,
        puts: Vec<(Resource, i64)>,
        source_organisation: &str,
        actor: &Actor,
    ) -> Result<Vec<Stored>, (usize, RecordsError)> {
        self.put_all_from(puts, source_organisation, actor, "").await
    }

    /// [`Store::put_all`], naming `source_document` (what a feed took them from, e.g. an HL7 v2
    /// message) in each version's Provenance.
    pub async fn put_all_from(
        &self,
        puts: Vec<(Resource, i64)>,
        source_organisation: &str,
        actor: &Actor,
        source_document: &str,
    ) -> Result<Vec<Stored>, (usize, RecordsError)> {
        if puts.is_empty() {
            return Ok(Vec::new());
        }
        let jobs: Vec<PutJob> = puts
            .into_iter()
            .map(|(resource, expected_version)| PutJob {
                source_document: source_document.to_string(),
                ..self.job(resource, source_organisation, actor, expected_version)
            })
            .collect();
        self.submit(jobs).await
    }

    /// Deletes `resource_type/id` for `actor`: a new version marked deleted, with the content
    /// of the one it deletes, decided by consent (action `delete`) and audited like a write;
    /// reads then answer Gone and searches leave it out, while its history keeps every
    /// version. Deleting a deleted resource changes nothing and returns its deleted version.
    pub async fn delete(
        &self,
        resource_type: &str,
        id: &str,
        source_organisation: &str,
        actor: &Actor,
    ) -> Result<Stored, RecordsError> {
        // The current version, read here only for its patient, labels and content: nothing
        // of it leaves unless the delete is permitted (and then only its version number).
        let row = sqlx::query(
            "SELECT r.resource_type, r.id, r.version, r.last_updated_us, r.nhs_number, r.body, c.labels, c.codes, c.deleted \
             FROM current_resources c JOIN resources r \
               ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version \
             WHERE c.resource_type = $1 AND c.id = $2",
        )
        .bind(resource_type.to_string())
        .bind(id.to_string())
        .fetch_optional(self.engine.db.pool())
        .await?;
        let Some(current) = row.as_ref().map(search::stored_row).transpose()? else {
            return Err(RecordsError::not_found(format!("{resource_type}/{id}")));
        };
        if current.deleted {
            return Ok(current);
        }
        let resource = fhir::parse(&current.body)?;
        let mut job = self.job(resource, source_organisation, actor, current.version);
        job.delete = true;
        self.one(job).await
    }

    /// Reads the current version of `resource_type/id` (Gone when deleted). The access is
    /// recorded in the outbox (durably) before the resource is returned; if that fails, the
    /// caller gets the error.
    /// Concurrent reads are looked up together (one query per batch) and their accesses share
    /// one group commit.
    pub async fn get(&self, resource_type: &str, id: &str, actor: &Actor) -> Result<Stored, RecordsError> {
        let job = GetJob {
            resource_type: resource_type.to_string(),
            id: id.to_string(),
            caller: Caller::current(actor),
        };
        let (reply, answer) = oneshot::channel();
        self.gets.send((job, reply)).await.map_err(|_| RecordsError::Stopped)?;
        answer.await.map_err(|_| RecordsError::Stopped)?
    }
}

impl Engine {
    /// The writer: group-commits queued units of puts (a single put, or a transaction's)
    /// until every [`Store`] is gone, one batch at a time, so a version check and the write
    /// it checks for never interleave with another batch. Each batch is first decided by
    /// consent (one call); a unit with a refused put is audited and answered, and the rest
    /// are written together in one transaction. If that fails, each unit is written alone, so
    /// one bad unit never fails another.
    async fn write_puts(self, mut rx: mpsc::Receiver<PendingPut>) {
        while let Some(batch) = next_batch_weighed(&mut rx, PUTS_PER_COMMIT, |(jobs, _)| jobs.len()).await {
            let (units, replies) = self.decide_puts(batch).await;
            if units.is_empty() {
                continue;
            }
            // Each unit's answers in order: a put only if absent that found the resource held
            // is answered as it is (`Some`); the others (`None`) by what is written.
            let mut shapes: Vec<Vec<Option<Stored>>> = Vec::with_capacity(units.len());
            let mut jobs: Vec<PutJob> = Vec::new();
            let mut sizes: Vec<usize> = Vec::with_capacity(units.len());
            for unit in units {
                let mut shape = Vec::with_capacity(unit.len());
                let before = jobs.len();
                for job in unit {
                    match job.held {
                        Some(version) => shape.push(Some(held(&job, version))),
                        None => {
                            shape.push(None);
                            jobs.push(job);
                        }
                    }
                }
                shapes.push(shape);
                sizes.push(jobs.len() - before);
            }
            let written = self.write_units(&jobs, &sizes).await;
            for ((reply, shape), written) in replies.into_iter().zip(shapes).zip(written) {
                let answer = written.map(|stored| {
                    let mut stored = stored.into_iter();
                    shape.into_iter().filter_map(|a| a.or_else(|| stored.next())).collect()
                });
                let _ = reply.send(answer.map_err(|e| (0, e)));
            }
        }
    }

    /// Writes `jobs`, the puts of units of `sizes` puts each in order, in one transaction; if
    /// that fails, each unit alone. Each unit's versions, or why it was not written.
    async fn write_units(&self, jobs: &[PutJob], sizes: &[usize]) -> Vec<Result<Vec<Stored>, RecordsError>> {
        if jobs.is_empty() {
            return sizes.iter().map(|_| Ok(Vec::new())).collect();
        }
        let e = match self.write(jobs).await {
            Ok(stored) => {
                self.outbox.notify();
                let mut stored = stored.into_iter();
                return sizes.iter().map(|n| Ok(stored.by_ref().take(*n).collect())).collect();
            }
            Err(e) => e,
        };
        if sizes.iter().filter(|n| **n > 0).count() == 1 {
            let mut e = Some(e);
            return sizes
                .iter()
                .map(|n| match n {
                    0 => Ok(Vec::new()),
                    _ => Err(e.take().unwrap_or(RecordsError::Stopped)),
                })
                .collect();
        }
        let mut out = Vec::with_capacity(sizes.len());
        let mut from = 0;
        for n in sizes {
            let unit = jobs.get(from..from + n).unwrap_or_default();
            from += n;
            if unit.is_empty() {
                out.push(Ok(Vec::new()));
                continue;
            }
            let one = self.write(unit).await;
            if one.is_ok() {
                self.outbox.notify();
            }
            out.push(one);
        }
        out
    }

    /// Writes `jobs` in one transaction, in order: each a new version of its resource, then
    /// all their events. Statements are per batch, not per put.
    async fn write(&self, jobs: &[PutJob]) -> Result<Vec<Stored>, RecordsError> {
        let mut tx = self.db.begin_write().await?;
        let mut versions = self.current_versions(&mut tx, jobs).await?;
        let mut nhs_of_patient = self.referenced_patients(&mut tx, jobs).await?;
        let now = db::now_us();
        let mut stored = Vec::with_capacity(jobs.len());
        let mut events: Vec<(&str, Envelope)> = Vec::with_capacity(jobs.len() * 3);
        let mut new_patients: Vec<patients::Indexed> = Vec::new();
        // (merged NHS number, survivor, survivor's Patient id), checked by `judge_puts`.
        let mut merges: Vec<(String, String, String)> = Vec::new();
        for job in jobs {
            let r = &job.resource;
            let version = versions.entry((r.resource_type.clone(), r.id.clone())).or_insert(0);
            *version += 1;
            let version = *version;
            let survivor = match job.delete {
                true => None,
                false => r
                    .replaced_by
                    .as_ref()
                    .and_then(|id| Some((id, nhs_of_patient.get(id)?.clone()))),
            };
            let nhs_number = patient_of(r, &mut nhs_of_patient);
            if r.resource_type == "Patient" && !nhs_number.is_empty() && !job.delete {
                new_patients.retain(|p| p.id != r.id);
                new_patients.push(patients::Indexed {
                    id: r.id.clone(),
                    nhs_number: nhs_number.clone(),
                    version,
                    demographics: crate::demographics::of(&r.body),
                });
            }
            let mut body = r.body.clone();
            fhir::stamp(&mut body, &r.id, version, now);
            let s = Stored {
                resource_type: r.resource_type.clone(),
                id: r.id.clone(),
                version,
                last_updated_us: now,
                nhs_number,
                labels: Some(fhir::security_labels(&body)),
                body: serde_json::Value::Object(body).to_string(),
                deleted: job.delete,
                unchanged: false,
            };
            let merged_into = survivor.as_ref().map(|(_, n)| n.as_str()).unwrap_or_default();
            self.put_events(job, &s, merged_into, &mut events);
            if let Some((id, n)) = survivor {
                merges.push((s.nhs_number.clone(), n, id.clone()));
            }
            stored.push(s);
        }
        let mut keys: Vec<&str> = events.iter().map(|(_, e)| e.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            outbox::lock_key(&mut tx, key).await?;
        }
        for (chunk, jobs) in stored
            .chunks(db::MAX_ROWS_PER_INSERT)
            .zip(jobs.chunks(db::MAX_ROWS_PER_INSERT))
        {
            let sql = tx.backend().insert_rows(
                "resources (resource_type, id, version, last_updated_us, nhs_number, source_organisation, author, body, deleted, provenance_id, source_document)",
                11,
                chunk.len(),
                "",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (s, job) in chunk.iter().zip(jobs) {
                q = q
                    .bind(s.resource_type.clone())
                    .bind(s.id.clone())
                    .bind(s.version)
                    .bind(s.last_updated_us)
                    .bind(s.nhs_number.clone())
                    .bind(job.source_organisation.clone())
                    .bind(job.caller.actor.id.clone())
                    .bind(s.body.clone())
                    .bind(i64::from(s.deleted))
                    .bind(uuid::Uuid::new_v4().simple().to_string())
                    .bind(job.source_document.clone());
            }
            match q.execute(&mut *tx).await {
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                    let what = chunk
                        .first()
                        .map(|s| format!("{}/{}", s.resource_type, s.id))
                        .unwrap_or_default();
                    return Err(RecordsError::Conflict(what));
                }
                other => other?,
            };
        }
        // The current version of each resource written (the last put of a resource in the batch
        // wins: one statement may not update a row twice).
        let mut latest: HashMap<(&str, &str), usize> = HashMap::new();
        for (n, s) in stored.iter().enumerate() {
            latest.insert((s.resource_type.as_str(), s.id.as_str()), n);
        }
        let mut current: Vec<usize> = latest.into_values().collect();
        current.sort_unstable();
        // `stored` is one version per job, in the jobs' order.
        let current: Vec<_> = current
            .into_iter()
            .filter_map(|n| Some((stored.get(n)?, &jobs.get(n)?.resource.body)))
            .collect();
        for chunk in current.chunks(db::MAX_ROWS_PER_INSERT) {
            let sql = tx.backend().insert_rows(
                "current_resources (resource_type, id, version, nhs_number, clinical_date_us, codes, labels, deleted)",
                8,
                chunk.len(),
                "ON CONFLICT (resource_type, id) DO UPDATE SET version = excluded.version, \
                 nhs_number = excluded.nhs_number, clinical_date_us = excluded.clinical_date_us, codes = excluded.codes, \
                 labels = excluded.labels, deleted = excluded.deleted",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for &(s, body) in chunk {
                let codes = fhir::codes(body);
                q = q
                    .bind(s.resource_type.clone())
                    .bind(s.id.clone())
                    .bind(s.version)
                    .bind(s.nhs_number.clone())
                    .bind(fhir::clinical_date(body).unwrap_or(0))
                    .bind(format!(" {} ", codes.join(" ")))
                    .bind(fhir::security_labels(body).join(","))
                    .bind(i64::from(s.deleted));
            }
            q.execute(&mut *tx).await?;
        }
        patients::index(&mut tx, &new_patients).await?;
        let merges: Vec<merges::Merge> = merges
            .iter()
            .map(|(n, s, p)| merges::Merge {
                nhs_number: n,
                survivor: s,
                survivor_patient: p,
            })
            .collect();
        merges::record(&mut tx, &merges, now).await?;
        let refs: Vec<(&str, &Envelope)> = events.iter().map(|(t, e)| (*t, e)).collect();
        outbox::enqueue_all(&mut tx, &refs).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// `(type = ? AND id = ?) OR …` for `count` resources (columns prefixed by `alias`), whose
    /// type and id are bound in that order.
    fn any_of(&self, alias: &str, count: usize) -> String {
        let backend = self.db.backend();
        (0..count)
            .map(|n| {
                format!(
                    "({alias}resource_type = {} AND {alias}id = {})",
                    backend.placeholder(2 * n + 1),
                    backend.placeholder(2 * n + 2)
                )
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }

    /// The newest stored version of each resource in `jobs` (absent = none yet).
    async fn current_versions(
        &self,
        tx: &mut sqlx::AnyConnection,
        jobs: &[PutJob],
    ) -> Result<HashMap<(String, String), i64>, RecordsError> {
        let mut out = HashMap::new();
        for chunk in jobs.chunks(db::MAX_ROWS_PER_INSERT) {
            let sql = format!(
                "SELECT resource_type, id, MAX(version) FROM resources WHERE {} GROUP BY resource_type, id",
                self.any_of("", chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for job in chunk {
                q = q.bind(job.resource.resource_type.clone()).bind(job.resource.id.clone());
            }
            for row in q.fetch_all(&mut *tx).await? {
                out.insert(
                    (row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?),
                    row.try_get::<i64, _>(2)?,
                );
            }
        }
        Ok(out)
    }

    /// The NHS numbers of the stored patients that resources in `jobs` refer to.
    async fn referenced_patients(
        &self,
        tx: &mut sqlx::AnyConnection,
        jobs: &[PutJob],
    ) -> Result<HashMap<String, String>, RecordsError> {
        let mut ids: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.resource.patient_ref.as_deref().or(j.resource.replaced_by.as_deref()))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out = HashMap::new();
        for chunk in ids.chunks(db::MAX_ROWS_PER_INSERT) {
            let sql = format!(
                "SELECT id, nhs_number FROM patients WHERE id IN ({})",
                self.db.backend().marks(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *tx).await? {
                out.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
            }
        }
        Ok(out)
    }

    /// `RecordChanged`, the `create`/`update` `AccessRecorded` and, for patient data, the
    /// `RecordState` read models keep, for a stored put, in the trace of the request that
    /// made it.
    fn put_events<'a>(&'a self, job: &PutJob, s: &Stored, merged_into: &str, out: &mut Vec<(&'a str, Envelope)>) {
        let reference = format!("{}/{}", s.resource_type, s.id);
        let key = if s.nhs_number.is_empty() {
            reference.clone()
        } else {
            s.nhs_number.clone()
        };
        // A delete changes no care relationship (the one recorded stays until it ends), nor
        // does a write by someone the care policy does not trust to start one.
        let care = match job.delete {
            true => None,
            false => crate::fhir::care_relationship(&job.resource, &job.source_organisation, s.last_updated_us)
                .and_then(|shown| {
                    self.care
                        .admit(shown, &job.caller.actor, job.break_glass, s.last_updated_us)
                }),
        };
        let changed = RecordChanged {
            resource_type: s.resource_type.clone(),
            id: s.id.clone(),
            version: s.version,
            nhs_number: s.nhs_number.clone(),
            source_organisation: job.source_organisation.clone(),
            last_updated: Some(db::timestamp(s.last_updated_us)),
            care_kind: care.as_ref().map(|c| c.kind.to_string()).unwrap_or_default(),
            care_organisation: care.as_ref().map(|c| c.organisation.clone()).unwrap_or_default(),
            care_start: care.as_ref().map(|c| db::timestamp(c.start_us)),
            care_end: care.as_ref().and_then(|c| c.end_us.map(db::timestamp)),
            deleted: s.deleted,
            merged_into: merged_into.to_string(),
        };
        let mut changed = bus::envelope(RECORD_CHANGED, NAME, &reference, &key, &changed);
        changed.traceparent = job.caller.traceparent.clone();
        let action = match (job.delete, s.version) {
            (true, _) => "delete",
            (false, 1) => "create",
            (false, _) => "update",
        };
        let versioned = format!("{reference}/_history/{}", s.version);
        let done: Verdict<()> = Verdict {
            answer: Ok(()),
            outcome: Outcome::Success,
            purpose: job.purpose.clone(),
            reason: job.reason.clone(),
        };
        let access = self.access(&job.caller, action, &versioned, &s.nhs_number, &done);
        out.push((self.topic.as_str(), changed));
        out.push((self.topic.as_str(), access));
        if !s.nhs_number.is_empty() {
            let state = RecordState {
                resource_type: s.resource_type.clone(),
                id: s.id.clone(),
                version: s.version,
                nhs_number: s.nhs_number.clone(),
                source_organisation: job.source_organisation.clone(),
                last_updated: Some(db::timestamp(s.last_updated_us)),
                resource_json: s.body.clone(),
                labels: s.labels.clone().unwrap_or_default(),
                deleted: s.deleted,
                merged_into: merged_into.to_string(),
            };
            let mut e = bus::envelope(RECORD_STATE, NAME, &reference, &key, &state);
            e.traceparent = job.caller.traceparent.clone();
            out.push((crate::STATE_TOPIC, e));
        }
    }

    /// The reader: takes the gets queued so far as one batch — looked up in one query, decided
    /// in one consent call, audited in one commit — and answers them before taking the next.
    /// One batch at a time lets the batches grow with the load: measured on 2 cores, this
    /// serves 6,400 reads/s at p99 9.5 ms where overlapping the batches served 5,000 at 13 ms.
    /// Runs until every [`Store`] is gone.
    async fn read_gets(self, mut rx: mpsc::Receiver<PendingGet>) {
        while let Some(batch) = next_batch(&mut rx, GETS_PER_QUERY).await {
            let (jobs, replies): (Vec<GetJob>, Vec<_>) = batch.into_iter().unzip();
            // In the callers' traces: consent's decision and the audit entry follow from them.
            let span = tracing::info_span!("read batch", reads = jobs.len());
            let callers = jobs.iter().map(|j| telemetry::context_of(&j.caller.traceparent));
            telemetry::serve_callers(&span, callers);
            async {
                match self.newest(&jobs).await {
                    Ok(found) => self.decide_audit_answer(jobs, found, replies).await,
                    Err(e) => {
                        let msg = e.to_string();
                        for reply in replies {
                            let _ = reply.send(Err(RecordsError::Unavailable(msg.clone())));
                        }
                    }
                }
            }
            .instrument(span)
            .await;
        }
    }

    /// The newest version of each resource asked for, keyed by (type, id). A Patient of a
    /// merged number comes with a `replaced-by` link to the survivor's Patient, even a copy
    /// its writer did not link (the merge is found in the same statement).
    async fn newest(&self, jobs: &[GetJob]) -> Result<HashMap<(String, String), Stored>, RecordsError> {
        let mut conn = self.db.pool().acquire().await?;
        let mut out = HashMap::new();
        for chunk in jobs.chunks(db::MAX_ROWS_PER_INSERT) {
            let wanted = self.any_of("c.", chunk.len());
            let sql = format!(
                "SELECT r.resource_type, r.id, r.version, r.last_updated_us, r.nhs_number, r.body, c.labels, c.codes, c.deleted, \
                        COALESCE(m.survivor_patient, '')
                 FROM current_resources c JOIN resources r
                   ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version
                 LEFT JOIN merges m ON c.resource_type = 'Patient' AND m.nhs_number = c.nhs_number
                 WHERE {wanted}"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for job in chunk {
                q = q.bind(job.resource_type.clone()).bind(job.id.clone());
            }
            for row in q.fetch_all(&mut *conn).await? {
                let mut s = stored_row(&row)?;
                let survivor: String = row.try_get(9)?;
                if !survivor.is_empty() && !s.deleted {
                    merges::point_to(&mut s, &survivor);
                }
                out.insert((s.resource_type.clone(), s.id.clone()), s);
            }
        }
        Ok(out)
    }

    /// The `AccessRecorded` event for one access by `caller`, in the caller's trace.
    fn access<T>(&self, caller: &Caller, action: &str, resource: &str, nhs_number: &str, v: &Verdict<T>) -> Envelope {
        let actor = &caller.actor;
        let event = AccessRecorded {
            actor: if actor.id.is_empty() {
                "unauthenticated".into()
            } else {
                actor.id.clone()
            },
            actor_organisation: actor.organisation.clone(),
            actor_role: actor.role.clone(),
            action: action.to_string(),
            resources: vec![resource.to_string()],
            nhs_number: nhs_number.to_string(),
            purpose: v.purpose.clone(),
            reason: v.reason.clone(),
            outcome: v.outcome.as_str().into(),
            time: Some(db::timestamp(db::now_us())),
            trace_id: caller.trace_id.clone(),
            service: NAME.into(),
        };
        let key = if nhs_number.is_empty() {
            resource.to_string()
        } else {
            nhs_number.to_string()
        };
        let mut envelope = bus::envelope(ACCESS_RECORDED, NAME, resource, &key, &event);
        envelope.traceparent = caller.traceparent.clone();
        envelope
    }
}
