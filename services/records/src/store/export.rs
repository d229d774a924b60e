//! FHIR Bulk Data `$export`: a background job that writes the record as NDJSON files, one per
//! resource type, for a system with a bulk scope.
//!
//! Patients are taken a chunk at a time (never the whole export in memory): consent decides
//! each patient of the chunk in one `DecideMany` (the national data opt-out applies to the
//! purpose the kick-off named), their current resources are read in one query, those the
//! patient withholds from this caller are left out, one `AccessRecorded` per patient is
//! committed to the outbox, and only then are the chunk's lines appended to the files.
//! Directory data (organisations, practitioners, medications) needs no decision.

use sharedcare_kit::edge::Refuse;
use sharedcare_kit::json::Fields;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use sharedcare_kit::access::Outcome;
use sharedcare_kit::bus::{self, Envelope};
use sharedcare_kit::db::{self, Backend};
use sharedcare_proto::consent::v1::decide_response::Effect;
use sharedcare_proto::events::v1::AccessRecorded;
use sqlx::Row as _;
use tokio::io::AsyncWriteExt;

use super::{ACCESS_RECORDED, Actor, Caller, Engine, Store};
use crate::export_storage::{ExportFile, ExportStorage};
use crate::{NAME, RecordsError, consent, fhir};

/// Patients decided and read together (consent takes up to 1,000 asks a call).
const PATIENTS_PER_CHUNK: usize = 1000;

/// What a kick-off asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Level {
    /// `[base]/$export`: every patient's data and the directory data.
    System,
    /// `[base]/Patient/$export`: every patient's data.
    Patient,
    /// `[base]/Group/{id}/$export`: the data of the Group's member patients.
    Group(String),
}

/// A kick-off.
#[derive(Clone, Debug)]
pub struct ExportRequest {
    /// Which patients.
    pub level: Level,
    /// `_type`: resource types to include (empty = every type).
    pub types: Vec<String>,
    /// `_since`: only resources stored at or after this (µs).
    pub since_us: Option<i64>,
    /// The kick-off URL, echoed in the manifest.
    pub request_url: String,
}

/// Where a job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportStatus {
    /// The job id.
    pub id: String,
    /// in-progress | completed | failed | cancelled
    pub status: String,
    /// Why it failed.
    pub error: String,
    /// The kick-off URL.
    pub request: String,
    /// When the export began (µs): resources stored later may or may not be in it.
    pub transaction_us: i64,
    /// Patients done so far.
    pub patients: i64,
    /// Resources written so far.
    pub resources: i64,
    /// Files written (resource type, line count), when completed.
    pub files: Vec<(String, i64)>,
}

impl Store {
    /// Starts an export for `actor` (a system with the bulk scope) writing under `dir`;
    /// returns the job id. The job runs in the background; [`Store::export_status`] follows it.
    pub async fn start_export(
        &self,
        req: ExportRequest,
        actor: &Actor,
        storage: Arc<dyn ExportStorage>,
    ) -> Result<String, RecordsError> {
        let e = self.engine.clone();
        for t in &req.types {
            fhir::check_type("_type", t)?;
        }
        // A Group is resolved now, so that a missing one is the kick-off's error.
        let members = match &req.level {
            Level::Group(id) => Some(e.group_members(id).await?),
            _ => None,
        };
        let id = uuid::Uuid::new_v4().to_string();
        let now = db::now_us();
        sqlx::query(
            "INSERT INTO exports (id, client_id, request, status, error, transaction_us, finished_us, patients, resources, runner, heartbeat_us) \
             VALUES ($1, $2, $3, 'in-progress', '', $4, 0, 0, 0, $5, $6)",
        )
        .bind(id.clone())
        .bind(actor.id.clone())
        .bind(req.request_url.clone())
        .bind(now)
        .bind(runner().to_string())
        .bind(now)
        .execute(e.db.pool())
        .await?;
        let job = Job {
            id: id.clone(),
            req,
            members,
            caller: Caller::current(actor),
            storage,
            engine: e.clone(),
        };
        tokio::spawn(async move {
            let id = job.id.clone();
            let engine = job.engine.clone();
            let storage = job.storage.clone();
            if let Err(err) = job.run().await {
                tracing::error!(export = %id, error = %err, "export failed");
                let _ = sqlx::query("UPDATE exports SET status = 'failed', error = $1, finished_us = $2 WHERE id = $3 AND status = 'in-progress'")
                    .bind(err.to_string())
                    .bind(db::now_us())
                    .bind(id.clone())
                    .execute(engine.db.pool())
                    .await;
                let _ = storage.remove(&id).await;
            }
        });
        Ok(id)
    }

    /// Export `id` as its owner (`actor`) sees it; another caller is told it does not exist.
    pub async fn export_status(&self, id: &str, actor: &Actor) -> Result<ExportStatus, RecordsError> {
        let pool = self.engine.db.pool();
        let row = sqlx::query(
            "SELECT status, error, request, transaction_us, patients, resources, client_id FROM exports WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(pool)
        .await?;
        let owner = row.as_ref().map(|r| r.try_get::<String, _>(6)).transpose()?;
        let Some(r) = row.filter(|_| owner.as_deref() == Some(actor.id.as_str())) else {
            return Err(RecordsError::not_found(format!("export {id}")));
        };
        let files =
            sqlx::query("SELECT resource_type, count FROM export_files WHERE export_id = $1 ORDER BY resource_type")
                .bind(id.to_string())
                .fetch_all(pool)
                .await?
                .iter()
                .map(|f| Ok((f.try_get::<String, _>(0)?, f.try_get::<i64, _>(1)?)))
                .collect::<Result<_, sqlx::Error>>()?;
        Ok(ExportStatus {
            id: id.to_string(),
            status: r.try_get(0)?,
            error: r.try_get(1)?,
            request: r.try_get(2)?,
            transaction_us: r.try_get(3)?,
            patients: r.try_get(4)?,
            resources: r.try_get(5)?,
            files,
        })
    }

    /// Cancels export `id` (its owner only) and deletes its files.
    pub async fn cancel_export(
        &self,
        id: &str,
        actor: &Actor,
        storage: &dyn ExportStorage,
    ) -> Result<(), RecordsError> {
        self.export_status(id, actor).await?;
        sqlx::query("UPDATE exports SET status = 'cancelled', finished_us = $1 WHERE id = $2")
            .bind(db::now_us())
            .bind(id.to_string())
            .execute(self.engine.db.pool())
            .await?;
        let _ = storage.remove(id).await;
        Ok(())
    }

    /// Marks as failed the exports this process's runner ([`runner`]) was running before it
    /// restarted: never another replica's. Returns how many. Run at start-up.
    pub async fn fail_interrupted_exports(&self) -> Result<u64, RecordsError> {
        let done = sqlx::query(
            "UPDATE exports SET status = 'failed', error = 'interrupted by a restart of the records service; start it again', \
             finished_us = $1 WHERE status = 'in-progress' AND runner = $2",
        )
        .bind(db::now_us())
        .bind(runner().to_string())
        .execute(self.engine.db.pool())
        .await?;
        Ok(done.rows_affected())
    }

    /// What every replica does every minute: fails exports whose runner stopped saying it
    /// runs them ([`EXPORT_STALE_SECS`]: it died, or its pod is gone), and removes exports
    /// finished more than `keep` ago with their files. Returns (failed, removed).
    pub async fn sweep_exports(
        &self,
        keep: std::time::Duration,
        storage: &dyn ExportStorage,
    ) -> Result<(u64, u64), RecordsError> {
        let pool = self.engine.db.pool();
        let now = db::now_us();
        let failed = sqlx::query(
            "UPDATE exports SET status = 'failed', error = 'the records replica running it stopped; start it again', \
             finished_us = $1 WHERE status = 'in-progress' AND heartbeat_us < $2",
        )
        .bind(now)
        .bind(now - EXPORT_STALE_SECS * 1_000_000)
        .execute(pool)
        .await?
        .rows_affected();
        let expired = sqlx::query("SELECT id FROM exports WHERE status <> 'in-progress' AND finished_us < $1")
            .bind(now - keep.as_micros() as i64)
            .fetch_all(pool)
            .await?;
        let mut removed = 0;
        for row in expired {
            let id: String = row.try_get(0)?;
            // Files first: a row without files is a 404, files without a row would stay.
            storage
                .remove(&id)
                .await
                .map_err(|e| RecordsError::Unavailable(format!("removing export {id}'s files: {e}")))?;
            let mut tx = self.engine.db.begin_write().await?;
            sqlx::query("DELETE FROM export_files WHERE export_id = $1")
                .bind(id.clone())
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM exports WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            removed += 1;
        }
        Ok((failed, removed))
    }
}

/// How long an export may go without its runner's heartbeat (written every chunk, about once a
/// second while it runs) before any replica fails it.
pub const EXPORT_STALE_SECS: i64 = 120;

/// This process as the runner of exports: the pod's name in Kubernetes (`POD_NAME`, so a
/// restarted container fails the exports it was running at once), else host and process id.
pub fn runner() -> &'static str {
    static RUNNER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUNNER.get_or_init(|| match std::env::var("POD_NAME") {
        Ok(pod) if !pod.is_empty() => pod,
        _ => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}:{}", host.trim(), std::process::id())
        }
    })
}

impl Engine {
    /// The NHS numbers of Group `id`'s member patients (`member.entity` references).
    async fn group_members(&self, id: &str) -> Result<Vec<String>, RecordsError> {
        let row = sqlx::query(
            "SELECT r.body FROM current_resources c JOIN resources r \
               ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version \
             WHERE c.resource_type = 'Group' AND c.id = $1 AND c.deleted = 0",
        )
        .bind(id.to_string())
        .fetch_optional(self.db.pool())
        .await?
        .ok_or_else(|| RecordsError::not_found(format!("Group/{id}")))?;
        let body: serde_json::Value = serde_json::from_str(&row.try_get::<String, _>(0)?).unwrap_or_default();
        let ids: Vec<String> = body
            .at("member")
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| {
                m["entity"]
                    .at("reference")
                    .as_str()?
                    .strip_prefix("Patient/")
                    .map(str::to_string)
            })
            .collect();
        let mut nhs = Vec::new();
        for chunk in ids.chunks(db::MAX_ROWS_PER_INSERT) {
            let sql = format!(
                "SELECT DISTINCT nhs_number FROM patients WHERE id IN ({})",
                self.db.backend().marks(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id.clone());
            }
            for r in q.fetch_all(self.db.pool()).await? {
                nhs.push(r.try_get::<String, _>(0)?);
            }
        }
        nhs.sort();
        nhs.dedup();
        Ok(nhs)
    }
}

/// One running export.
struct Job {
    id: String,
    req: ExportRequest,
    members: Option<Vec<String>>,
    caller: Caller,
    storage: Arc<dyn ExportStorage>,
    engine: Engine,
}

/// The open NDJSON files of a job, one per resource type.
#[derive(Default)]
struct Files {
    open: HashMap<String, Box<dyn ExportFile>>,
    counts: HashMap<String, i64>,
}

impl Files {
    /// Appends `n` NDJSON `lines` (without their last newline) to `resource_type`'s file.
    async fn write(
        &mut self,
        storage: &dyn ExportStorage,
        job: &str,
        resource_type: &str,
        lines: &str,
        n: i64,
    ) -> std::io::Result<()> {
        if !self.open.contains_key(resource_type) {
            let f = storage.create(job, &format!("{resource_type}.ndjson")).await?;
            self.open.insert(resource_type.to_string(), f);
        }
        let Some(w) = self.open.get_mut(resource_type) else {
            return Err(std::io::Error::other(format!("the {resource_type} file is not open")));
        };
        w.write_all(lines.as_bytes()).await?;
        w.write_all(b"\n").await?;
        *self.counts.entry(resource_type.to_string()).or_default() += n;
        Ok(())
    }

    async fn finish(self) -> std::io::Result<HashMap<String, i64>> {
        for (_, w) in self.open {
            w.finish().await?;
        }
        Ok(self.counts)
    }
}

/// A chunk decided and read, not yet audited or written.
struct Prepared {
    patients: i64,
    events: Vec<Envelope>,
    /// (resource type, NDJSON lines, how many).
    lines: Vec<(String, String, i64)>,
}

/// Resources of one patient, type and set of categories, read together for the export.
struct Group {
    nhs: String,
    resource_type: String,
    ids: Vec<String>,
    /// Their bodies, one per line (no trailing newline).
    lines: String,
    count: i64,
    categories: Vec<String>,
}

impl Job {
    fn io(&self, err: std::io::Error) -> RecordsError {
        RecordsError::Unavailable(format!("export {} file: {err}", self.id))
    }

    async fn run(self) -> Result<(), RecordsError> {
        let mut files = Files::default();
        let (mut patients, mut resources) = (0i64, 0i64);
        let mut after = String::new();
        let mut members = self.members.clone().map(|m| m.into_iter());
        // Two chunks in flight: the next one is decided and read while this one is audited
        // and written.
        let mut ready: Option<Prepared> = None;
        let began = std::time::Instant::now();
        let (mut preparing, mut committing) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
        loop {
            if self.cancelled().await? {
                return Ok(());
            }
            let chunk: Vec<String> = match members.as_mut() {
                Some(m) => m.by_ref().take(PATIENTS_PER_CHUNK).collect(),
                None => self.next_patients(&after).await?,
            };
            if let Some(last) = chunk.last() {
                after = last.clone();
            }
            let next = async {
                let t = std::time::Instant::now();
                let r = match chunk.is_empty() {
                    true => Ok(None),
                    false => self.prepare(&chunk).await.map(Some),
                };
                (r, t.elapsed())
            };
            let done = async {
                let t = std::time::Instant::now();
                let r = match ready.take() {
                    Some(p) => self.commit(p, &mut files, (patients, resources)).await.map(Some),
                    None => Ok(None),
                };
                (r, t.elapsed())
            };
            let ((next, prepared_in), (done, committed_in)) = tokio::join!(next, done);
            preparing += prepared_in;
            committing += committed_in;
            if let Some((n, written)) = done? {
                patients += n;
                resources += written;
            }
            match next? {
                Some(p) => ready = Some(p),
                None => break,
            }
        }
        if self.req.level == Level::System {
            resources += self.export_directory(&mut files).await?;
        }
        let counts = files.finish().await.map_err(|e| self.io(e))?;
        if self.cancelled().await? {
            return Ok(());
        }
        let mut tx = self.engine.db.begin_write().await?;
        for (t, n) in &counts {
            sqlx::query("INSERT INTO export_files (export_id, resource_type, count) VALUES ($1, $2, $3)")
                .bind(self.id.clone())
                .bind(t.clone())
                .bind(*n)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "UPDATE exports SET status = 'completed', finished_us = $1, patients = $2, resources = $3 \
             WHERE id = $4 AND status = 'in-progress'",
        )
        .bind(db::now_us())
        .bind(patients)
        .bind(resources)
        .bind(self.id.clone())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::info!(
            export = %self.id, patients, resources,
            seconds = began.elapsed().as_secs_f64(),
            deciding_and_reading_s = preparing.as_secs_f64(),
            auditing_and_writing_s = committing.as_secs_f64(),
            "export completed"
        );
        Ok(())
    }

    /// Says this runner still runs the export (its heartbeat); `true` when it is no longer in
    /// progress (cancelled by its owner, or failed by a sweep that took this runner for dead).
    async fn cancelled(&self) -> Result<bool, RecordsError> {
        let beat = sqlx::query("UPDATE exports SET heartbeat_us = $1 WHERE id = $2 AND status = 'in-progress'")
            .bind(db::now_us())
            .bind(self.id.clone())
            .execute(self.engine.db.pool())
            .await?;
        Ok(beat.rows_affected() == 0)
    }

    /// The next patients (NHS numbers) after `after`, in order.
    async fn next_patients(&self, after: &str) -> Result<Vec<String>, RecordsError> {
        let rows = sqlx::query(
            "SELECT DISTINCT nhs_number FROM current_resources WHERE nhs_number > $1 ORDER BY nhs_number LIMIT $2",
        )
        .bind(after.to_string())
        .bind(PATIENTS_PER_CHUNK as i64)
        .fetch_all(self.engine.db.pool())
        .await?;
        Ok(rows
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?)
    }

    /// The filters every read of the export applies: `_type` and `_since`, from placeholder
    /// `first` on; (SQL, binds as text or number).
    fn filters(&self, first: usize) -> (String, Vec<super::search::Bind>) {
        use super::search::Bind;
        let backend = self.engine.db.backend();
        let mut sql = String::new();
        let mut binds = Vec::new();
        if !self.req.types.is_empty() {
            sql.push_str(&format!(
                " AND c.resource_type IN ({})",
                backend.marks(first, self.req.types.len())
            ));
            binds.extend(self.req.types.iter().cloned().map(Bind::Text));
        }
        if let Some(since) = self.req.since_us {
            sql.push_str(&format!(
                " AND r.last_updated_us >= {}",
                backend.placeholder(first + binds.len())
            ));
            binds.push(Bind::Int(since));
        }
        (sql, binds)
    }

    /// Decides and reads one chunk of patients: the lines each may have exported and the
    /// audit entry of each, nothing written yet.
    async fn prepare(&self, chunk: &[String]) -> Result<Prepared, RecordsError> {
        let e = &self.engine;
        let actor = &self.caller.actor;
        let asks = chunk
            .iter()
            .map(|nhs| consent::ask(actor, nhs, "search", Vec::new()))
            .collect();
        let decisions = e.pdp.decide(asks).await.map_err(RecordsError::Consent)?;
        // Who may be exported, and what each withholds from this caller.
        let mut permitted: HashMap<&str, HashSet<&str>> = HashMap::new();
        for (nhs, d) in chunk.iter().zip(&decisions) {
            match Effect::try_from(d.effect).unwrap_or(Effect::Unspecified) {
                Effect::Permit => {
                    permitted.insert(nhs, HashSet::new());
                }
                Effect::PermitWithWithholding => {
                    permitted.insert(nhs, d.withheld_categories.iter().map(String::as_str).collect());
                }
                _ => {}
            }
        }
        let allowed: Vec<&str> = chunk
            .iter()
            .map(String::as_str)
            .filter(|n| permitted.contains_key(n))
            .collect();
        let rows = if allowed.is_empty() {
            Vec::new()
        } else {
            self.read(&allowed).await?
        };
        let mut refs: HashMap<String, Vec<String>> = HashMap::new();
        let mut hid: HashSet<String> = HashSet::new();
        let mut lines: Vec<(String, String, i64)> = Vec::with_capacity(rows.len());
        for g in rows {
            // A patient consent did not permit is not in `rows` (read from `allowed`).
            let Some(withheld) = permitted.get(g.nhs.as_str()) else {
                continue;
            };
            if g.categories.iter().any(|c| withheld.contains(c.as_str())) {
                hid.insert(g.nhs);
            } else {
                let t = &g.resource_type;
                refs.entry(g.nhs)
                    .or_default()
                    .extend(g.ids.iter().map(|id| format!("{t}/{id}")));
                lines.push((g.resource_type, g.lines, g.count));
            }
        }
        let events: Vec<Envelope> = chunk
            .iter()
            .zip(&decisions)
            .map(|(nhs, d)| {
                let (purpose, reason) = sharedcare_kit::pdp::audit_purpose(d, &actor.purpose);
                let outcome = match (permitted.contains_key(nhs.as_str()), hid.contains(nhs)) {
                    (false, _) => Outcome::Denied,
                    (true, true) => Outcome::Withheld,
                    (true, false) => Outcome::Success,
                };
                self.access(nhs, refs.remove(nhs).unwrap_or_default(), purpose, reason, outcome)
            })
            .collect();
        Ok(Prepared {
            patients: chunk.len() as i64,
            events,
            lines,
        })
    }

    /// Commits a prepared chunk: its audit entries (with the job's progress) durably first,
    /// then its lines to the files. Returns (patients, lines written).
    async fn commit(
        &self,
        p: Prepared,
        files: &mut Files,
        (patients, resources): (i64, i64),
    ) -> Result<(i64, i64), RecordsError> {
        let e = &self.engine;
        let written: i64 = p.lines.iter().map(|(_, _, n)| n).sum();
        let mut tx = e.db.begin_write().await?;
        let topic = e.topic.clone();
        let batch: Vec<(&str, &Envelope)> = p.events.iter().map(|env| (topic.as_str(), env)).collect();
        sharedcare_kit::outbox::enqueue_all(&mut tx, &batch)
            .await
            .map_err(|err| RecordsError::Audit(err.to_string()))?;
        sqlx::query("UPDATE exports SET patients = $1, resources = $2 WHERE id = $3")
            .bind(patients + p.patients)
            .bind(resources + written)
            .bind(self.id.clone())
            .execute(&mut *tx)
            .await
            .map_err(|err| RecordsError::Audit(err.to_string()))?;
        tx.commit().await.map_err(|err| RecordsError::Audit(err.to_string()))?;
        e.outbox.notify();
        for (t, lines, n) in &p.lines {
            files
                .write(self.storage.as_ref(), &self.id, t, lines, *n)
                .await
                .map_err(|err| self.io(err))?;
        }
        Ok((p.patients, written))
    }

    /// The current, undeleted resources of `patients`, grouped by patient, type and
    /// categories (the database joins each group's bodies into NDJSON lines: a row per
    /// resource costs more to hand over than the query itself).
    async fn read(&self, patients: &[&str]) -> Result<Vec<Group>, RecordsError> {
        let backend = self.engine.db.backend();
        let (filters, binds) = self.filters(patients.len() + 1);
        let (ids, bodies) = match backend {
            Backend::Sqlite => ("group_concat(r.id, ' ')", "group_concat(r.body, char(10))"),
            Backend::Postgres => ("string_agg(r.id, ' ')", "string_agg(r.body, E'\\n')"),
        };
        let sql = format!(
            "SELECT c.nhs_number, c.resource_type, c.labels, c.codes, {ids}, {bodies}, COUNT(*) \
             FROM current_resources c JOIN resources r \
               ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version \
             WHERE c.nhs_number IN ({}) AND c.deleted = 0{filters} \
             GROUP BY c.nhs_number, c.resource_type, c.labels, c.codes",
            backend.marks(1, patients.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for p in patients {
            q = q.bind(p.to_string());
        }
        for b in binds {
            q = match b {
                super::search::Bind::Text(t) => q.bind(t),
                super::search::Bind::Int(i) => q.bind(i),
            };
        }
        let rows = q.fetch_all(self.engine.db.pool()).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let resource_type: String = r.try_get(1)?;
                let labels: String = r.try_get(2)?;
                let codes: String = r.try_get(3)?;
                let categories = sharedcare_kit::pdp::categories(
                    &resource_type,
                    labels.split(',').filter(|l| !l.is_empty()).map(str::to_string),
                    codes.split_whitespace(),
                );
                let ids: String = r.try_get(4)?;
                Ok(Group {
                    nhs: r.try_get(0)?,
                    resource_type,
                    ids: ids.split(' ').map(str::to_string).collect(),
                    lines: r.try_get(5)?,
                    count: r.try_get(6)?,
                    categories,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?)
    }

    /// Directory data (no patient): written without a decision, in pages.
    async fn export_directory(&self, files: &mut Files) -> Result<i64, RecordsError> {
        let backend = self.engine.db.backend();
        let mut written = 0;
        let (mut after_type, mut after_id) = (String::new(), String::new());
        loop {
            // Placeholders in text order (SQLite's are positional): type, type, id, filters.
            let (filters, binds) = self.filters(4);
            let sql = format!(
                "SELECT r.resource_type, r.id, r.body FROM current_resources c JOIN resources r \
                   ON r.resource_type = c.resource_type AND r.id = c.id AND r.version = c.version \
                 WHERE c.nhs_number = '' AND c.deleted = 0 \
                   AND (c.resource_type > {} OR (c.resource_type = {} AND c.id > {})){filters} \
                 ORDER BY c.resource_type, c.id LIMIT 1000",
                backend.placeholder(1),
                backend.placeholder(2),
                backend.placeholder(3),
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(after_type.clone())
                .bind(after_type.clone())
                .bind(after_id.clone());
            for b in binds {
                q = match b {
                    super::search::Bind::Text(t) => q.bind(t),
                    super::search::Bind::Int(i) => q.bind(i),
                };
            }
            let rows = q.fetch_all(self.engine.db.pool()).await?;
            if rows.is_empty() {
                return Ok(written);
            }
            for r in &rows {
                let (t, body): (String, String) = (r.try_get(0)?, r.try_get(2)?);
                files
                    .write(self.storage.as_ref(), &self.id, &t, &body, 1)
                    .await
                    .map_err(|e| self.io(e))?;
                written += 1;
            }
            if let Some(last) = rows.last() {
                (after_type, after_id) = (last.try_get(0)?, last.try_get(1)?);
            }
        }
    }

    /// The audit entry of one patient's part of the export.
    fn access(&self, nhs: &str, resources: Vec<String>, purpose: String, reason: String, outcome: Outcome) -> Envelope {
        let actor = &self.caller.actor;
        let event = AccessRecorded {
            actor: actor.id.clone(),
            actor_organisation: actor.organisation.clone(),
            actor_role: actor.role.clone(),
            action: "export".into(),
            resources,
            nhs_number: nhs.to_string(),
            purpose,
            reason: if reason.is_empty() {
                format!("bulk export {}", self.id)
            } else {
                format!("bulk export {}: {reason}", self.id)
            },
            outcome: outcome.as_str().into(),
            time: Some(db::timestamp(db::now_us())),
            trace_id: self.caller.trace_id.clone(),
            service: NAME.into(),
        };
        let mut env = bus::envelope(ACCESS_RECORDED, NAME, &format!("$export/{}", self.id), nhs, &event);
        env.traceparent = self.caller.traceparent.clone();
        env
    }
}
