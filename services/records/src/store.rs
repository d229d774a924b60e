//! Resource versions in the records tables, and the events each change or access produces,
//! written to the outbox in the same transaction.

use prost::Message;
use sharedcare_kit::batch::next_batch;
use sharedcare_kit::bus::{self, Envelope};
use sharedcare_kit::db::{self, Db};
use sharedcare_kit::outbox::{self, Outbox};
use sharedcare_proto::events::v1::{AccessRecorded, RecordChanged};
use std::collections::HashMap;

use sharedcare_kit::nhs::NHS_NUMBER_SYSTEM;
use sharedcare_proto::consent::v1::decide_response::Effect;
use sharedcare_proto::consent::v1::{DecideRequest, DecideResponse};
use sqlx::Row;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

use crate::consent::{self, Pdp};
use crate::fhir::{self, Resource};
use crate::{NAME, RecordsError};

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
    /// The resource JSON with `meta` stamped.
    pub body: String,
    /// Its `meta.security` labels when already known (`None`: read them from `body`).
    pub labels: Option<Vec<String>>,
}

/// Who is accessing and why, from their token and request: what consent decides on and
/// what the audit entry records.
#[derive(Debug, Clone, Default)]
pub struct Actor {
    /// "staff" or "service".
    pub kind: &'static str,
    /// Person (staff) or client id (service).
    pub id: String,
    /// ODS code of the actor's organisation.
    pub organisation: String,
    /// Selected role's national RBAC role code.
    pub role: String,
    /// Selected role profile's id.
    pub role_profile: String,
    /// Purpose of use (HL7 v3 PurposeOfUse): TREAT unless the caller says otherwise.
    pub purpose: String,
}

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
}

/// What an access came to: the answer, and what its audit entry says.
struct Verdict<T> {
    answer: Result<T, RecordsError>,
    /// success | denied | withheld | not-found | error
    outcome: &'static str,
    /// Purpose of use as decided (BTG when break-glass was the basis).
    purpose: String,
    /// Why (consent's reason and rules, the break-glass reason, what was withheld).
    reason: String,
}

impl<T> Verdict<T> {
    fn refused(err: RecordsError, outcome: &'static str, purpose: &str, reason: String) -> Self {
        Verdict {
            answer: Err(err),
            outcome,
            purpose: purpose.to_string(),
            reason,
        }
    }
}

/// Most reads looked up in one query.
const GETS_PER_QUERY: usize = 256;

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
    source_organisation: String,
    caller: Caller,
    /// Purpose and reason from consent's decision, for the audit entry.
    purpose: String,
    reason: String,
    /// The version the writer based this put on (0 = none).
    expected_version: i64,
}

/// A put and where its answer goes.
type PendingPut = (PutJob, oneshot::Sender<Result<Stored, RecordsError>>);

const RECORD_CHANGED: &str = "sharedcare.events.v1.RecordChanged";
const ACCESS_RECORDED: &str = "sharedcare.events.v1.AccessRecorded";

impl Store {
    /// The store on `db`, emitting through `outbox`, asking `pdp` before every access to
    /// patient data. Must be called inside the tokio runtime: it starts the writer that
    /// group-commits puts and the reader that batches gets.
    pub fn new(db: Db, outbox: Outbox, pdp: Arc<dyn Pdp>) -> Self {
        let (puts, put_rx) = mpsc::channel(PUTS_PER_COMMIT * 4);
        let (gets, get_rx) = mpsc::channel(GETS_PER_QUERY * 4);
        let engine = Engine {
            db,
            outbox,
            topic: bus::topic(NAME),
            pdp,
        };
        tokio::spawn(engine.clone().write_puts(put_rx));
        tokio::spawn(engine.clone().read_gets(get_rx));
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
        let mut resource = resource;
        self.labeller.apply(&mut resource.body);
        let job = PutJob {
            resource,
            source_organisation: source_organisation.to_string(),
            caller: Caller::current(actor),
            purpose: actor.purpose.clone(),
            reason: String::new(),
            expected_version,
        };
        let (reply, answer) = oneshot::channel();
        self.puts.send((job, reply)).await.map_err(|_| RecordsError::Stopped)?;
        answer.await.map_err(|_| RecordsError::Stopped)?
    }

    /// Stores every resource of `puts` (each with its expected version, 0 = none) in one
    /// transaction, or none of them: the first refusal (consent, validation, version) or
    /// failure is returned with the position of the put that caused it.
    pub async fn put_all(
        &self,
        puts: Vec<(Resource, i64)>,
        source_organisation: &str,
        actor: &Actor,
    ) -> Result<Vec<Stored>, (usize, RecordsError)> {
        let e = &self.engine;
        let jobs: Vec<PutJob> = puts
            .into_iter()
            .map(|(mut resource, expected_version)| {
                self.labeller.apply(&mut resource.body);
                (resource, expected_version)
            })
            .map(|(resource, expected_version)| PutJob {
                resource,
                source_organisation: source_organisation.to_string(),
                caller: Caller::current(actor),
                purpose: actor.purpose.clone(),
                reason: String::new(),
                expected_version,
            })
            .collect();
        let judged = e.judge_puts(jobs).await.map_err(|err| (0, err))?;
        let first_refused = judged.iter().position(|(_, r)| r.is_some());
        let (jobs, refusals): (Vec<PutJob>, Vec<Option<Refusal>>) = judged.into_iter().unzip();
        if let Some(at) = first_refused {
            let refusals: Vec<Refusal> = refusals.into_iter().flatten().collect();
            let first = e.audit_refusals(refusals).await.into_iter().next();
            return Err((at, first.unwrap_or(RecordsError::Stopped)));
        }
        let stored = e.write(&jobs).await.map_err(|err| (0, err))?;
        e.outbox.notify();
        Ok(stored)
    }

    /// Reads the current version of `resource_type/id`. The access is recorded in the outbox
    /// (durably) before the resource is returned; if that fails, the caller gets the error.
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
    /// The writer: group-commits queued puts until every [`Store`] is gone. Each batch is
    /// first decided by consent (one call); refused puts are audited and answered, the rest
    /// written together.
    async fn write_puts(self, mut rx: mpsc::Receiver<PendingPut>) {
        while let Some(batch) = next_batch(&mut rx, PUTS_PER_COMMIT).await {
            let (jobs, replies) = self.decide_puts(batch).await;
            if jobs.is_empty() {
                continue;
            }
            match self.write(&jobs).await {
                Ok(stored) => {
                    self.outbox.notify();
                    for (reply, s) in replies.into_iter().zip(stored) {
                        let _ = reply.send(Ok(s));
                    }
                }
                Err(e) if jobs.len() == 1 => {
                    if let Some(reply) = replies.into_iter().next() {
                        let _ = reply.send(Err(e));
                    }
                }
                Err(_) => {
                    for (job, reply) in jobs.iter().zip(replies) {
                        let one = self.write(std::slice::from_ref(job)).await.map(|mut v| v.remove(0));
                        if one.is_ok() {
                            self.outbox.notify();
                        }
                        let _ = reply.send(one);
                    }
                }
            }
        }
    }

    /// Writes `jobs` in one transaction, in order: each a new version of its resource, then
    /// all their events. Statements are per batch, not per put.
    async fn write(&self, jobs: &[PutJob]) -> Result<Vec<Stored>, RecordsError> {
        let mut tx = self.db.begin_write().await?;
        let mut versions = self.current_versions(&mut tx, jobs).await?;
        let mut nhs_of_patient = self.referenced_patients(&mut tx, jobs).await?;
        let now = db::now_us();
        let mut stored = Vec::with_capacity(jobs.len());
        let mut events = Vec::with_capacity(jobs.len() * 2);
        let mut new_patients: Vec<(String, String)> = Vec::new();
        for job in jobs {
            let r = &job.resource;
            let version = versions.entry((r.resource_type.clone(), r.id.clone())).or_insert(0);
            *version += 1;
            let version = *version;
            let nhs_number = patient_of(r, &mut nhs_of_patient);
            if r.resource_type == "Patient" && !nhs_number.is_empty() {
                new_patients.retain(|(id, _)| id != &r.id);
                new_patients.push((r.id.clone(), nhs_number.clone()));
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
            };
            events.extend(self.put_events(job, &s));
            stored.push(s);
        }
        let mut keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
        keys.sort_unstable();
        keys.dedup();
        for key in keys {
            outbox::lock_key(&mut tx, key).await?;
        }
        for (chunk, jobs) in stored
            .chunks(db::MAX_ROWS_PER_INSERT)
            .zip(jobs.chunks(db::MAX_ROWS_PER_INSERT))
        {
            let sql = db::insert_rows(
                &tx,
                "resources (resource_type, id, version, last_updated_us, nhs_number, source_organisation, author, body)",
                8,
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
                    .bind(s.body.clone());
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
        for chunk in current.chunks(db::MAX_ROWS_PER_INSERT) {
            let sql = db::insert_rows(
                &tx,
                "current_resources (resource_type, id, version, nhs_number, clinical_date_us, codes, labels)",
                7,
                chunk.len(),
                "ON CONFLICT (resource_type, id) DO UPDATE SET version = excluded.version, \
                 nhs_number = excluded.nhs_number, clinical_date_us = excluded.clinical_date_us, codes = excluded.codes, \
                 labels = excluded.labels",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for &n in chunk {
                let (s, body) = (&stored[n], &jobs[n].resource.body);
                let codes = fhir::codes(body);
                q = q
                    .bind(s.resource_type.clone())
                    .bind(s.id.clone())
                    .bind(s.version)
                    .bind(s.nhs_number.clone())
                    .bind(fhir::clinical_date(body).unwrap_or(0))
                    .bind(format!(" {} ", codes.join(" ")))
                    .bind(fhir::security_labels(body).join(","));
            }
            q.execute(&mut *tx).await?;
        }
        for chunk in new_patients.chunks(db::MAX_ROWS_PER_INSERT) {
            let sql = db::insert_rows(
                &tx,
                "patients (id, nhs_number)",
                2,
                chunk.len(),
                "ON CONFLICT (id) DO UPDATE SET nhs_number = excluded.nhs_number",
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, nhs) in chunk {
                q = q.bind(id.clone()).bind(nhs.clone());
            }
            q.execute(&mut *tx).await?;
        }
        let refs: Vec<(&str, &Envelope)> = events.iter().map(|e| (self.topic.as_str(), e)).collect();
        outbox::enqueue_all(&mut tx, &refs).await?;
        tx.commit().await?;
        Ok(stored)
    }

    /// The newest stored version of each resource in `jobs` (absent = none yet).
    async fn current_versions(
        &self,
        tx: &mut sqlx::AnyConnection,
        jobs: &[PutJob],
    ) -> Result<HashMap<(String, String), i64>, RecordsError> {
        let mut out = HashMap::new();
        for chunk in jobs.chunks(db::MAX_ROWS_PER_INSERT) {
            let mut sql = String::from("SELECT resource_type, id, MAX(version) FROM resources WHERE ");
            for (n, _) in chunk.iter().enumerate() {
                if n > 0 {
                    sql.push_str(" OR ");
                }
                sql.push_str(&format!(
                    "(resource_type = {} AND id = {})",
                    db::placeholder(tx, 2 * n + 1),
                    db::placeholder(tx, 2 * n + 2)
                ));
            }
            sql.push_str(" GROUP BY resource_type, id");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for job in chunk {
                q = q.bind(job.resource.resource_type.clone()).bind(job.resource.id.clone());
            }
            for row in q.fetch_all(&mut *tx).await? {
                out.insert((row.get::<String, _>(0), row.get::<String, _>(1)), row.get::<i64, _>(2));
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
        let mut ids: Vec<&str> = jobs.iter().filter_map(|j| j.resource.patient_ref.as_deref()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut out = HashMap::new();
        for chunk in ids.chunks(db::MAX_ROWS_PER_INSERT) {
            let marks: Vec<String> = (1..=chunk.len()).map(|n| db::placeholder(tx, n)).collect();
            let sql = format!("SELECT id, nhs_number FROM patients WHERE id IN ({})", marks.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.to_string());
            }
            for row in q.fetch_all(&mut *tx).await? {
                out.insert(row.get::<String, _>(0), row.get::<String, _>(1));
            }
        }
        Ok(out)
    }

    /// `RecordChanged` and the `create`/`update` `AccessRecorded` for a stored put, in the
    /// trace of the request that made it.
    fn put_events(&self, job: &PutJob, s: &Stored) -> [Envelope; 2] {
        let reference = format!("{}/{}", s.resource_type, s.id);
        let key = if s.nhs_number.is_empty() {
            reference.clone()
        } else {
            s.nhs_number.clone()
        };
        let care = crate::fhir::care_relationship(&job.resource, &job.source_organisation, s.last_updated_us);
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
        };
        let mut changed = bus::envelope(RECORD_CHANGED, NAME, &reference, &key, &changed);
        changed.traceparent = job.caller.traceparent.clone();
        let action = if s.version == 1 { "create" } else { "update" };
        let versioned = format!("{reference}/_history/{}", s.version);
        let done: Verdict<()> = Verdict {
            answer: Ok(()),
            outcome: "success",
            purpose: job.purpose.clone(),
            reason: job.reason.clone(),
        };
        let access = self.access(&job.caller, action, &versioned, &s.nhs_number, &done);
        [changed, access]
    }

    /// The reader: looks up queued gets in batches until every [`Store`] is gone.
    async fn read_gets(self, mut rx: mpsc::Receiver<PendingGet>) {
        while let Some(batch) = next_batch(&mut rx, GETS_PER_QUERY).await {
            let (jobs, replies): (Vec<GetJob>, Vec<_>) = batch.into_iter().unzip();
            match self.newest(&jobs).await {
                // Audit and answer while the next batch is looked up.
                Ok(found) => {
                    let store = self.clone();
                    tokio::spawn(async move { store.decide_audit_answer(jobs, found, replies).await });
                }
                Err(e) => {
                    let msg = e.to_string();
                    for reply in replies {
                        let _ = reply.send(Err(RecordsError::Unavailable(msg.clone())));
                    }
                }
            }
        }
    }

    /// The newest version of each resource asked for, keyed by (type, id).
    async fn newest(&self, jobs: &[GetJob]) -> Result<HashMap<(String, String), Stored>, RecordsError> {
        let mut conn = self.db.pool().acquire().await?;
        let mut out = HashMap::new();
        for chunk in jobs.chunks(db::MAX_ROWS_PER_INSERT) {
            let mut wanted = String::new();
            for (n, _) in chunk.iter().enumerate() {
                if n > 0 {
                    wanted.push_str(" OR ");
                }
                wanted.push_str(&format!(
                    "(c.resource_type = {} AND c.id = {})",
                    db::placeholder(&conn, 2 * n + 1),
                    db::placeholder(&conn, 2 * n + 2)
                ));
            }
            let sql = format!(
                "SELECT r.resource_type, r.id, r.version, r.last_updated_us, r.nhs_number, r.body, c.labels
                 FROM current_resources c JOIN resources r
                   ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version
                 WHERE {wanted}"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for job in chunk {
                q = q.bind(job.resource_type.clone()).bind(job.id.clone());
            }
            for row in q.fetch_all(&mut *conn).await? {
                let s = stored_row(&row);
                out.insert((s.resource_type.clone(), s.id.clone()), s);
            }
        }
        Ok(out)
    }

    /// Asks consent about every found resource of a batch that is patient data (one call,
    /// identical asks once), records every access durably with its outcome, then answers each
    /// caller. Without a decision or a durable audit entry a caller gets an error, never data.
    async fn decide_audit_answer(
        &self,
        jobs: Vec<GetJob>,
        found: HashMap<(String, String), Stored>,
        replies: Vec<oneshot::Sender<Result<Stored, RecordsError>>>,
    ) {
        let mut asks = Asks::default();
        let asked: Vec<Option<usize>> = jobs
            .iter()
            .map(|job| {
                let s = found.get(&(job.resource_type.clone(), job.id.clone()))?;
                if !fhir::is_patient_data(&s.resource_type) {
                    return None;
                }
                let labels = stored_labels(s);
                Some(asks.add(consent::ask(&job.caller.actor, &s.nhs_number, "read", labels)))
            })
            .collect();
        let decisions = asks.decide(self.pdp.as_ref()).await;
        let mut answers = Vec::with_capacity(jobs.len());
        let mut records = Vec::with_capacity(jobs.len());
        for (job, asked) in jobs.iter().zip(asked) {
            let reference = format!("{}/{}", job.resource_type, job.id);
            let purpose = job.caller.actor.purpose.as_str();
            let (v, resource, nhs) = match found.get(&(job.resource_type.clone(), job.id.clone())) {
                None => (
                    Verdict::refused(
                        RecordsError::NotFound(reference.clone()),
                        "not-found",
                        purpose,
                        String::new(),
                    ),
                    reference,
                    String::new(),
                ),
                Some(s) => {
                    let versioned = format!("{reference}/_history/{}", s.version);
                    let v = match asked {
                        None => Verdict {
                            answer: Ok(s.clone()),
                            outcome: "success",
                            purpose: purpose.to_string(),
                            reason: String::new(),
                        },
                        Some(i) => verdict(&decisions, i, purpose, &stored_labels(s), s.clone()),
                    };
                    (v, versioned, s.nhs_number.clone())
                }
            };
            let env = self.access(&job.caller, "read", &resource, &nhs, &v);
            records.push(self.outbox.record(&self.topic, env));
            answers.push(v.answer);
        }
        let recorded = futures::future::join_all(records).await;
        for ((reply, answer), rec) in replies.into_iter().zip(answers).zip(recorded) {
            let _ = reply.send(match rec {
                Ok(()) => answer,
                Err(e) => Err(RecordsError::Audit(e.to_string())),
            });
        }
    }

    /// Asks consent about a batch of puts, refusing those it denies (or cannot decide) and
    /// those about a patient the record does not hold; each refusal is audited and answered
    /// here. Returns the puts to write, with their replies.
    async fn decide_puts(&self, batch: Vec<PendingPut>) -> (Vec<PutJob>, Vec<Reply>) {
        let (jobs, replies): (Vec<PutJob>, Vec<Reply>) = batch.into_iter().unzip();
        let judged = match self.judge_puts(jobs).await {
            Ok(j) => j,
            Err(e) => {
                let msg = e.to_string();
                for reply in replies {
                    let _ = reply.send(Err(RecordsError::Unavailable(msg.clone())));
                }
                return (Vec::new(), Vec::new());
            }
        };
        let mut keep = Vec::with_capacity(judged.len());
        let mut keep_replies = Vec::with_capacity(judged.len());
        let mut refusals = Vec::new();
        for ((job, refusal), reply) in judged.into_iter().zip(replies) {
            match refusal {
                None => {
                    keep.push(job);
                    keep_replies.push(reply);
                }
                Some(r) => refusals.push((r, reply)),
            }
        }
        let (refusals, replies): (Vec<Refusal>, Vec<Reply>) = refusals.into_iter().unzip();
        for (reply, answer) in replies.into_iter().zip(self.audit_refusals(refusals).await) {
            let _ = reply.send(Err(answer));
        }
        (keep, keep_replies)
    }

    /// Records the audit entries of refused puts; each comes back as the error its caller gets
    /// (the audit failure instead, when the entry could not be recorded).
    async fn audit_refusals(&self, refusals: Vec<Refusal>) -> Vec<RecordsError> {
        let mut pending = Vec::new();
        for r in &refusals {
            if let Some(env) = &r.audit {
                pending.push(self.outbox.record(&self.topic, env.clone()));
            }
        }
        let mut recorded = futures::future::join_all(pending).await.into_iter();
        refusals
            .into_iter()
            .map(|r| {
                if r.audit.is_none() {
                    return r.error;
                }
                match recorded.next() {
                    Some(Err(audit)) => RecordsError::Audit(audit.to_string()),
                    _ => r.error,
                }
            })
            .collect()
    }

    /// Decides each put: patient data needs a patient the record holds and consent's permit;
    /// an update with an expected version needs that to be the current one. Permitted puts
    /// get the purpose and reason their audit entry records.
    async fn judge_puts(&self, mut jobs: Vec<PutJob>) -> Result<Vec<(PutJob, Option<Refusal>)>, RecordsError> {
        let mut conn = self.db.pool().acquire().await?;
        let versions = self.current_versions(&mut conn, &jobs).await?;
        let mut patients = self.referenced_patients(&mut conn, &jobs).await?;
        drop(conn);
        let action_of = |r: &Resource| {
            if versions.contains_key(&(r.resource_type.clone(), r.id.clone())) {
                "update"
            } else {
                "create"
            }
        };
        // A put's patient: its own NHS number, or the stored (or same-batch) Patient it names.
        let mut checks: Vec<(Result<Option<usize>, RecordsError>, String)> = Vec::with_capacity(jobs.len());
        let mut asks = Asks::default();
        for job in &jobs {
            let r = &job.resource;
            let nhs = patient_of(r, &mut patients);
            let current = versions
                .get(&(r.resource_type.clone(), r.id.clone()))
                .copied()
                .unwrap_or(0);
            let check = if job.expected_version > 0 && job.expected_version != current {
                Err(RecordsError::VersionMismatch {
                    reference: format!("{}/{}", r.resource_type, r.id),
                    expected: job.expected_version,
                    current,
                })
            } else if !fhir::is_patient_data(&r.resource_type) {
                Ok(None)
            } else if nhs.is_empty() {
                Err(unknown_patient(r))
            } else {
                let labels = fhir::security_labels(&r.body);
                Ok(Some(asks.add(consent::ask(
                    &job.caller.actor,
                    &nhs,
                    action_of(r),
                    labels,
                ))))
            };
            checks.push((check, nhs));
        }
        let decisions = asks.decide(self.pdp.as_ref()).await;
        let mut out = Vec::with_capacity(jobs.len());
        for (mut job, (check, nhs)) in jobs.drain(..).zip(checks) {
            let purpose = job.caller.actor.purpose.clone();
            let v = match check {
                Err(error) => {
                    out.push((job, Some(Refusal { error, audit: None })));
                    continue;
                }
                Ok(None) => Verdict {
                    answer: Ok(()),
                    outcome: "success",
                    purpose,
                    reason: String::new(),
                },
                Ok(Some(i)) => verdict(&decisions, i, &purpose, &[], ()),
            };
            let refusal = match &v.answer {
                Ok(()) => None,
                Err(e) => {
                    let r = &job.resource;
                    let reference = format!("{}/{}", r.resource_type, r.id);
                    let env = self.access(&job.caller, action_of(r), &reference, &nhs, &v);
                    let error = match e {
                        RecordsError::Denied(why) => RecordsError::Denied(why.clone()),
                        RecordsError::Consent(why) => RecordsError::Consent(why.clone()),
                        _ => RecordsError::Withheld,
                    };
                    Some(Refusal {
                        error,
                        audit: Some(env),
                    })
                }
            };
            if refusal.is_none() {
                job.purpose = v.purpose;
                job.reason = v.reason;
            }
            out.push((job, refusal));
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
            outcome: v.outcome.to_string(),
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

/// Why a put was refused, and its audit entry (none for input the record cannot hold).
struct Refusal {
    error: RecordsError,
    audit: Option<Envelope>,
}

/// The NHS number a resource is about: a Patient's own, or that of the Patient it references
/// (from `known`: stored patients and those earlier in the same batch, which a Patient adds
/// itself to). Empty when unknown.
fn patient_of(r: &Resource, known: &mut HashMap<String, String>) -> String {
    let nhs = match (&r.nhs_number, &r.patient_ref) {
        (Some(n), _) => n.to_string(),
        (None, Some(pid)) => known.get(pid).cloned().unwrap_or_default(),
        (None, None) => String::new(),
    };
    if r.resource_type == "Patient" && !nhs.is_empty() {
        known.insert(r.id.clone(), nhs.clone());
    }
    nhs
}

/// Where a put's answer goes.
type Reply = oneshot::Sender<Result<Stored, RecordsError>>;

/// The labels of a stored resource (its stored body always parses: it was validated).
fn stored_labels(s: &Stored) -> Vec<String> {
    if let Some(l) = &s.labels {
        return l.clone();
    }
    match serde_json::from_str::<serde_json::Value>(&s.body) {
        Ok(serde_json::Value::Object(body)) => fhir::security_labels(&body),
        _ => Vec::new(),
    }
}

/// The error for patient data whose patient the record does not hold.
fn unknown_patient(r: &Resource) -> RecordsError {
    match &r.patient_ref {
        Some(pid) => {
            let element = if r.body.contains_key("subject") {
                "subject"
            } else {
                "patient"
            };
            RecordsError::invalid(
                format!("{element}.reference"),
                format!(
                    "Patient/{pid} is not in the shared care record; write the Patient (with its NHS number) first"
                ),
            )
        }
        None if r.resource_type == "Patient" => RecordsError::invalid(
            "identifier",
            format!("a Patient in the shared care record needs an NHS number identifier (system {NHS_NUMBER_SYSTEM})"),
        ),
        None => RecordsError::invalid(
            "subject",
            format!(
                "a {} is about a patient: subject (or patient) must reference one",
                r.resource_type
            ),
        ),
    }
}

/// A batch's decision requests, each distinct one asked once.
#[derive(Default)]
struct Asks {
    asks: Vec<DecideRequest>,
    index: HashMap<String, usize>,
}

impl Asks {
    /// Adds `ask` (or finds the identical one) and returns its position.
    fn add(&mut self, ask: DecideRequest) -> usize {
        let key = [
            ask.principal_kind.as_str(),
            &ask.person_id,
            &ask.client_id,
            &ask.ods_code,
            &ask.role_code,
            &ask.nhs_number,
            &ask.action,
            &ask.purpose,
            &ask.categories.join(","),
        ]
        .join("|");
        let next = self.asks.len();
        *self.index.entry(key).or_insert_with(|| {
            self.asks.push(ask);
            next
        })
    }

    /// Consent's decisions, in order (none asked = none needed).
    async fn decide(self, pdp: &dyn Pdp) -> Result<Vec<DecideResponse>, String> {
        if self.asks.is_empty() {
            return Ok(Vec::new());
        }
        pdp.decide(self.asks).await
    }
}

/// What decision `i` of `decisions` means for data labelled `labels` asked for `purpose`.
fn verdict<T>(
    decisions: &Result<Vec<DecideResponse>, String>,
    i: usize,
    purpose: &str,
    labels: &[String],
    data: T,
) -> Verdict<T> {
    let d = match decisions {
        Ok(d) => &d[i],
        Err(e) => {
            return Verdict::refused(
                RecordsError::Consent(e.clone()),
                "error",
                purpose,
                format!("no consent decision: {e}"),
            );
        }
    };
    let why = format!("{} [{}]", d.reason, d.rules.join(", "));
    let (purpose, reason) = if d.break_glass {
        (
            "BTG".to_string(),
            format!("break-glass: {}; {why}", d.break_glass_reason),
        )
    } else {
        (purpose.to_string(), why)
    };
    let permitted = |purpose, reason| Verdict {
        answer: Ok(data),
        outcome: "success",
        purpose,
        reason,
    };
    match Effect::try_from(d.effect).unwrap_or(Effect::Unspecified) {
        Effect::Permit => permitted(purpose, reason),
        Effect::PermitWithWithholding => {
            let hidden: Vec<&str> = d
                .withheld_categories
                .iter()
                .filter(|c| labels.contains(c))
                .map(String::as_str)
                .collect();
            if hidden.is_empty() {
                permitted(purpose, reason)
            } else {
                let what = hidden.join(", ");
                Verdict::refused(
                    RecordsError::Withheld,
                    "withheld",
                    &purpose,
                    format!("withheld {what}; {reason}"),
                )
            }
        }
        Effect::Deny | Effect::Unspecified => {
            Verdict::refused(RecordsError::Denied(d.reason.clone()), "denied", &purpose, reason)
        }
    }
}

/// A stored version from a `SELECT resource_type, id, version, last_updated_us, nhs_number,
/// body` row.
fn stored_row(row: &sqlx::any::AnyRow) -> Stored {
    Stored {
        resource_type: row.get(0),
        id: row.get(1),
        version: row.get(2),
        last_updated_us: row.get(3),
        nhs_number: row.get(4),
        body: row.get(5),
        labels: (row.len() > 6).then(|| {
            let l: String = row.get(6);
            l.split(',').filter(|x| !x.is_empty()).map(str::to_string).collect()
        }),
    }
}

/// Most results in one page of history or search.
pub const MAX_PAGE: usize = 500;
/// Results in a page when the caller names no size.
pub const DEFAULT_PAGE: usize = 50;

/// A page of history or search results.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The resources (versions) the caller may see.
    pub items: Vec<Stored>,
    /// Where the next page starts; empty on the last.
    pub next_cursor: String,
    /// The patient withholds some categories from this caller (independent of the record).
    pub some_withheld: bool,
}

/// A search of one patient's current resources.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The patient's NHS number (already checked), or empty when `patient` names them.
    pub nhs_number: String,
    /// A Patient resource id.
    pub patient: String,
    /// Resource types; empty = all.
    pub types: Vec<String>,
    /// Clinical date range, inclusive (µs).
    pub date_from: Option<i64>,
    /// End of the range.
    pub date_to: Option<i64>,
    /// `system|code` or `code`.
    pub code: String,
    /// 1..=MAX_PAGE.
    pub page_size: usize,
    /// `type/id` of the last resource of the previous page.
    pub cursor: String,
}

/// What consent said about a set of label sets, plus the whole-record notice ask.
struct Judged {
    /// Decision per label set, by the set's position.
    decisions: Vec<DecideResponse>,
    /// The decision for every sensitive label at once: whole-record deny, or the notice.
    overall: DecideResponse,
}

impl Judged {
    fn effect(d: &DecideResponse) -> Effect {
        Effect::try_from(d.effect).unwrap_or(Effect::Unspecified)
    }

    /// Whether data labelled like set `i` may be shown.
    fn shows(&self, i: usize, labels: &[String]) -> bool {
        let d = &self.decisions[i];
        match Judged::effect(d) {
            Effect::Permit => true,
            Effect::PermitWithWithholding => !d.withheld_categories.iter().any(|c| labels.contains(c)),
            Effect::Deny | Effect::Unspecified => false,
        }
    }

    fn denied(&self) -> bool {
        matches!(Judged::effect(&self.overall), Effect::Deny | Effect::Unspecified)
    }

    fn notice(&self) -> bool {
        Judged::effect(&self.overall) == Effect::PermitWithWithholding
    }

    fn purpose_and_reason(&self, purpose: &str) -> (String, String) {
        let d = &self.overall;
        let why = format!("{} [{}]", d.reason, d.rules.join(", "));
        if d.break_glass {
            ("BTG".into(), format!("break-glass: {}; {why}", d.break_glass_reason))
        } else {
            (purpose.to_string(), why)
        }
    }
}

impl Store {
    /// Reads version `version` of `resource_type/id`, decided and audited like [`Store::get`].
    pub async fn vread(
        &self,
        resource_type: &str,
        id: &str,
        version: i64,
        actor: &Actor,
    ) -> Result<Stored, RecordsError> {
        let e = &self.engine;
        let caller = Caller::current(actor);
        let reference = format!("{resource_type}/{id}/_history/{version}");
        let row = sqlx::query(
            "SELECT resource_type, id, version, last_updated_us, nhs_number, body FROM resources \
             WHERE resource_type = $1 AND id = $2 AND version = $3",
        )
        .bind(resource_type.to_string())
        .bind(id.to_string())
        .bind(version)
        .fetch_optional(e.db.pool())
        .await
        .map_err(|err| RecordsError::Unavailable(err.to_string()))?;
        let purpose = actor.purpose.as_str();
        let (v, nhs) = match row.as_ref().map(stored_row) {
            None => (
                Verdict::refused(
                    RecordsError::NotFound(reference.clone()),
                    "not-found",
                    purpose,
                    String::new(),
                ),
                String::new(),
            ),
            Some(s) if !fhir::is_patient_data(&s.resource_type) => {
                let nhs = s.nhs_number.clone();
                (
                    Verdict {
                        answer: Ok(s),
                        outcome: "success",
                        purpose: purpose.to_string(),
                        reason: String::new(),
                    },
                    nhs,
                )
            }
            Some(s) => {
                let labels = stored_labels(&s);
                let mut asks = Asks::default();
                let i = asks.add(consent::ask(actor, &s.nhs_number, "vread", labels.clone()));
                let decisions = asks.decide(e.pdp.as_ref()).await;
                let nhs = s.nhs_number.clone();
                (verdict(&decisions, i, purpose, &labels, s), nhs)
            }
        };
        e.settle(&caller, "vread", vec![reference], &nhs, v).await
    }

    /// Every version of `resource_type/id`, newest first, from below version `cursor` (empty
    /// = the newest). Denied as a whole when consent denies the record; versions with a
    /// withheld category are left out.
    pub async fn history(
        &self,
        resource_type: &str,
        id: &str,
        page_size: usize,
        cursor: &str,
        actor: &Actor,
    ) -> Result<Page, RecordsError> {
        let e = &self.engine;
        let caller = Caller::current(actor);
        let below: i64 = if cursor.is_empty() {
            i64::MAX
        } else {
            cursor
                .parse()
                .map_err(|_| RecordsError::invalid("cursor", "not a cursor from a previous page"))?
        };
        let rows = sqlx::query(
            "SELECT resource_type, id, version, last_updated_us, nhs_number, body FROM resources \
             WHERE resource_type = $1 AND id = $2 AND version < $3 ORDER BY version DESC LIMIT $4",
        )
        .bind(resource_type.to_string())
        .bind(id.to_string())
        .bind(below)
        .bind((page_size + 1) as i64)
        .fetch_all(e.db.pool())
        .await
        .map_err(|err| RecordsError::Unavailable(err.to_string()))?;
        let mut versions: Vec<Stored> = rows.iter().map(stored_row).collect();
        let reference = format!("{resource_type}/{id}");
        let purpose = actor.purpose.as_str();
        if versions.is_empty() {
            let v = Verdict::refused(
                RecordsError::NotFound(reference.clone()),
                "not-found",
                purpose,
                String::new(),
            );
            return e.settle(&caller, "history", vec![reference], "", v).await;
        }
        let more = versions.len() > page_size;
        versions.truncate(page_size);
        let next_cursor = if more {
            versions.last().map(|s| s.version.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        let nhs = versions[0].nhs_number.clone();
        let v = if fhir::is_patient_data(resource_type) {
            e.judge_page(actor, &nhs, "history", versions, purpose).await
        } else {
            Verdict {
                answer: Ok((versions, false)),
                outcome: "success",
                purpose: purpose.to_string(),
                reason: String::new(),
            }
        };
        let refs = match &v.answer {
            Ok((items, _)) => items
                .iter()
                .map(|s| format!("{}/{}/_history/{}", s.resource_type, s.id, s.version))
                .collect(),
            Err(_) => vec![reference],
        };
        let (items, some_withheld) = e.settle(&caller, "history", refs, &nhs, v).await?;
        Ok(Page {
            items,
            next_cursor,
            some_withheld,
        })
    }

    /// One patient's current resources matching `q`, a page at a time. The page is filled
    /// past withheld resources, so its length says nothing about what was left out.
    pub async fn search(&self, q: &Query, actor: &Actor) -> Result<Page, RecordsError> {
        let e = &self.engine;
        let caller = Caller::current(actor);
        let purpose = actor.purpose.as_str();
        let nhs = if q.nhs_number.is_empty() {
            let row = sqlx::query("SELECT nhs_number FROM patients WHERE id = $1")
                .bind(q.patient.clone())
                .fetch_optional(e.db.pool())
                .await
                .map_err(|err| RecordsError::Unavailable(err.to_string()))?;
            match row {
                Some(r) => r.get::<String, _>(0),
                None => {
                    let reference = format!("Patient/{}", q.patient);
                    let v = Verdict::refused(
                        RecordsError::NotFound(reference.clone()),
                        "not-found",
                        purpose,
                        String::new(),
                    );
                    return e.settle(&caller, "search", vec![reference], "", v).await;
                }
            }
        } else {
            q.nhs_number.clone()
        };
        // Read a page and one more, judge it, and read on only while withheld resources leave
        // the page short (at most eight rounds).
        let mut cursor = q.cursor.clone();
        let mut items: Vec<Stored> = Vec::new();
        let mut notice = false;
        let mut full = false;
        let mut judged: Option<(&'static str, String, String)> = None;
        for _round in 0..8 {
            let want = q.page_size + 1 - items.len();
            let rows = e.search_rows(&nhs, q, &cursor, want).await?;
            full = rows.len() == want;
            if let Some(last) = rows.last() {
                cursor = format!("{}/{}", last.resource_type, last.id);
            }
            let v = e.judge_page(actor, &nhs, "search", rows, purpose).await;
            match v.answer {
                Ok((shown, withheld)) => {
                    items.extend(shown);
                    notice |= withheld;
                    // Keep the reason that says what was withheld, if a round withheld anything.
                    if judged.as_ref().is_none_or(|(_, _, r)| !r.starts_with("withheld")) {
                        judged = Some((v.outcome, v.purpose, v.reason));
                    }
                }
                Err(err) => {
                    let v = Verdict {
                        answer: Err(err),
                        outcome: v.outcome,
                        purpose: v.purpose,
                        reason: v.reason,
                    };
                    return e.settle(&caller, "search", Vec::new(), &nhs, v).await;
                }
            }
            if items.len() > q.page_size || !full {
                break;
            }
        }
        let next_cursor = if items.len() > q.page_size {
            items.truncate(q.page_size);
            items
                .last()
                .map(|s| format!("{}/{}", s.resource_type, s.id))
                .unwrap_or_default()
        } else if full {
            // Eight rounds were mostly withheld: the next page carries on after them.
            cursor
        } else {
            String::new()
        };
        let (outcome, purpose, reason) = judged.unwrap_or(("success", purpose.to_string(), String::new()));
        let v = Verdict {
            answer: Ok((items, notice)),
            outcome,
            purpose,
            reason,
        };
        let refs = match &v.answer {
            Ok((items, _)) => items.iter().map(|s| format!("{}/{}", s.resource_type, s.id)).collect(),
            Err(_) => Vec::new(),
        };
        let (items, some_withheld) = e.settle(&caller, "search", refs, &nhs, v).await?;
        Ok(Page {
            items,
            next_cursor,
            some_withheld,
        })
    }
}

impl Engine {
    /// Records an access durably, then hands back its answer; without the audit entry the
    /// caller gets an error, never the data.
    async fn settle<T>(
        &self,
        caller: &Caller,
        action: &str,
        resources: Vec<String>,
        nhs: &str,
        v: Verdict<T>,
    ) -> Result<T, RecordsError> {
        let first = resources.first().cloned().unwrap_or_default();
        let mut env = self.access(caller, action, &first, nhs, &v);
        if resources.len() != 1 {
            let mut event = AccessRecorded::decode(env.data.as_slice()).unwrap_or_default();
            event.resources = resources;
            env.data = event.encode_to_vec();
        }
        self.outbox
            .record(&self.topic, env)
            .await
            .map_err(|e| RecordsError::Audit(e.to_string()))?;
        v.answer
    }

    /// Asks consent once about a page of one patient's data: each distinct label set, plus all
    /// sensitive labels at once (whole-record deny, and whether to tell the caller something may
    /// be withheld). Returns the items the caller may see and that notice.
    async fn judge_page(
        &self,
        actor: &Actor,
        nhs: &str,
        action: &str,
        items: Vec<Stored>,
        purpose: &str,
    ) -> Verdict<(Vec<Stored>, bool)> {
        let mut asks = Asks::default();
        let all: Vec<String> = fhir::SENSITIVE_LABELS.iter().map(|l| l.to_string()).collect();
        let overall = asks.add(consent::ask(actor, nhs, action, all));
        let labelled: Vec<(Vec<String>, usize)> = items
            .iter()
            .map(|s| {
                let labels = stored_labels(s);
                let i = asks.add(consent::ask(actor, nhs, action, labels.clone()));
                (labels, i)
            })
            .collect();
        let decisions = match asks.decide(self.pdp.as_ref()).await {
            Ok(d) => d,
            Err(e) => {
                return Verdict::refused(
                    RecordsError::Consent(e.clone()),
                    "error",
                    purpose,
                    format!("no consent decision: {e}"),
                );
            }
        };
        let judged = Judged {
            overall: decisions[overall].clone(),
            decisions,
        };
        let (purpose, reason) = judged.purpose_and_reason(purpose);
        if judged.denied() {
            let why = judged.overall.reason.clone();
            return Verdict::refused(RecordsError::Denied(why), "denied", &purpose, reason);
        }
        let mut hidden: Vec<String> = Vec::new();
        let mut shown = Vec::with_capacity(items.len());
        for (s, (labels, i)) in items.into_iter().zip(labelled) {
            if judged.shows(i, &labels) {
                shown.push(s);
            } else {
                if labels.is_empty() {
                    hidden.push("uncategorised".into());
                }
                hidden.extend(labels);
            }
        }
        hidden.sort();
        hidden.dedup();
        let notice = judged.notice() || !hidden.is_empty();
        let reason = if hidden.is_empty() {
            reason
        } else {
            format!("withheld {}; {reason}", hidden.join(", "))
        };
        Verdict {
            answer: Ok((shown, notice)),
            outcome: "success",
            purpose,
            reason,
        }
    }

    /// Up to `limit` current resources of `nhs` matching `q` after `cursor` (`type/id`).
    async fn search_rows(&self, nhs: &str, q: &Query, cursor: &str, limit: usize) -> Result<Vec<Stored>, RecordsError> {
        let mut conn = self
            .db
            .pool()
            .acquire()
            .await
            .map_err(|e| RecordsError::Unavailable(e.to_string()))?;
        let mut n = 0;
        let mut mark = |conn: &sqlx::AnyConnection| {
            n += 1;
            db::placeholder(conn, n)
        };
        let mut sql = format!(
            "SELECT r.resource_type, r.id, r.version, r.last_updated_us, r.nhs_number, r.body, c.labels \
             FROM current_resources c JOIN resources r \
               ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version \
             WHERE c.nhs_number = {}",
            mark(&conn)
        );
        let mut binds: Vec<Bind> = vec![Bind::Text(nhs.to_string())];
        if !q.types.is_empty() {
            let marks: Vec<String> = q.types.iter().map(|_| mark(&conn)).collect();
            sql.push_str(&format!(" AND c.resource_type IN ({})", marks.join(", ")));
            binds.extend(q.types.iter().cloned().map(Bind::Text));
        }
        if q.date_from.is_some() || q.date_to.is_some() {
            sql.push_str(&format!(
                " AND c.clinical_date_us <> 0 AND c.clinical_date_us >= {} AND c.clinical_date_us <= {}",
                mark(&conn),
                mark(&conn)
            ));
            binds.push(Bind::Int(q.date_from.unwrap_or(i64::MIN + 1)));
            binds.push(Bind::Int(q.date_to.unwrap_or(i64::MAX)));
        }
        if !q.code.is_empty() {
            // "system|code" matches that token; a bare code matches it in any system.
            let pattern = if q.code.contains('|') {
                format!("% {} %", like_escape(&q.code))
            } else {
                format!("%|{} %", like_escape(&q.code))
            };
            sql.push_str(&format!(" AND c.codes LIKE {} ESCAPE '!'", mark(&conn)));
            binds.push(Bind::Text(pattern));
        }
        if let Some((t, id)) = cursor.split_once('/') {
            let (a, b, c) = (mark(&conn), mark(&conn), mark(&conn));
            sql.push_str(&format!(
                " AND (c.resource_type > {a} OR (c.resource_type = {b} AND c.id > {c}))"
            ));
            binds.extend([Bind::Text(t.into()), Bind::Text(t.into()), Bind::Text(id.into())]);
        }
        sql.push_str(&format!(" ORDER BY c.resource_type, c.id LIMIT {}", mark(&conn)));
        binds.push(Bind::Int(limit as i64));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for b in binds {
            query = match b {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
            };
        }
        let rows = query
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| RecordsError::Unavailable(e.to_string()))?;
        Ok(rows.iter().map(stored_row).collect())
    }
}

/// A bind value of a query built at run time.
enum Bind {
    Text(String),
    Int(i64),
}

/// Escapes `%`, `_` and the escape character for `LIKE … ESCAPE '!'`.
fn like_escape(s: &str) -> String {
    s.replace('!', "!!").replace('%', "!%").replace('_', "!_")
}
